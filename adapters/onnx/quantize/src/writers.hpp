// Internal to the quantization passes: weight selection, the report's config and the writers used
// by quantize_model (quantize_model.cpp orchestrates; select.cpp, writers.cpp, embeddings.cpp
// implement). Graph helpers are in <int4q/onnx/graph.hpp> (model layer).
#ifndef INT4Q_ONNX_SRC_WRITERS_HPP
#define INT4Q_ONNX_SRC_WRITERS_HPP

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include <onnx/onnx_pb.h>
#include <xtensor/xtensor.hpp>

#include <int4q/config.hpp>
#include <int4q/metrics.hpp>
#include <int4q/onnx/graph.hpp>
#include <int4q/onnx/model.hpp>
#include <int4q/onnx/quantize_model.hpp>
#include <int4q/onnx/weights.hpp>

namespace int4q {
namespace onnx {
namespace detail {

// ---- Selection (select.cpp) -------------------------------------------------------------------

/// Regexes compiled once.
struct compiled_selection {
  std::vector<std::regex> include, exclude, overrides;
};

/// Checks the options (and every override combined with them) against the output format;
/// compiles the regexes. Throws model_error before anything is changed.
compiled_selection validate_options(const quantize_options& options);

/// The decision for one weight.
struct weight_choice {
  bool quantize = false;
  std::string reason;  ///< when !quantize
  int4q::quant_config config;
  method algo = method::rtn;
};

/// Selection, overrides, lm_head policy, preset and scale type for one quantizable weight.
weight_choice choose(const weight_info& w, const quantize_options& options,
                     const compiled_selection& sel);

/// Largest power of two <= min(256, k), at least 16: the block MatMulNBits uses for an int8
/// lm_head (MatMulNBits has no per-channel form).
std::size_t int8_lm_head_block(std::size_t k) noexcept;

// ---- Report (report.cpp)
// -------------------------------------------------------------------------

/// The options as the report's "config" object.
nlohmann::json options_json(const quantize_options& options);

// ---- Writers (writers.cpp)
// ------------------------------------------------------------------------

/// How a Gemm bias reaches the MatMulNBits node.
struct bias_plan {
  enum class kind { none, fold, add } how = kind::none;
  std::string c;                         ///< the Gemm's C input
  std::vector<graph_step> c_defined_in;  ///< fold: the graph holding C
  float beta = 1.0f;
  std::vector<float> folded;  ///< fold: beta * C broadcast to [N]
  bool reuse_c = false;       ///< fold: C is already [N] in the weight's type and beta == 1
};

/// Everything decided about one weight before the model is touched.
struct weight_job {
  const weight_info* info = nullptr;
  std::size_t report_index = 0;
  int4q::quant_config config;
  method algo = method::rtn;
  float alpha = 1.0f;
  std::vector<bias_plan> bias;  ///< per use (matmulnbits)
  /// Quantizes the logical weight [K, N] (alpha folded) instead of quant_tensor (calibrated
  /// methods); empty: RTN.
  std::function<int4q::quantized<float>(const xt::xtensor<float, 2>&)> quantize;
  /// AWQ: scales the logical weight in place (diag(s) W) before it is quantized, measured and
  /// written; empty: unchanged.
  std::function<void(xt::xtensor<float, 2>&)> scale_weight;
  // Filled by build_tensors:
  std::vector<::onnx::TensorProto> tensors;  ///< new initializers, in the order written
  std::string data_name, scales_name, zero_points_name;
  bool in_place = false;  ///< fake: the weight's own tensor gets the values
  std::vector<std::int64_t> stored_dims;
};

/// Format-specific reasons a quantizable weight cannot be written (float64 for real formats,
/// Gemm uses that disagree on alpha, a constant bias not broadcastable to [N], ...); fills the
/// job's alpha and bias plans. Returns "" when it can be written.
std::string plan_writes(const model& m, const weight_info& w, output_format format,
                        weight_job& job);

/// Fills a quantized weight's report entry: its grid (K rows), the error measured against the
/// float values, the bytes written and the time since `start`.
void record_quantized(tensor_report& report, const int4q::quant_config& c, std::size_t k,
                      const int4q::error_stats& stats, std::size_t bytes_after,
                      std::chrono::steady_clock::time_point start);

/// Reads, quantizes and packs one weight into job.tensors (no change to the model). Returns the
/// report entry's measurements.
void build_tensors(const model& m, const quantize_options& options, weight_job& job,
                   name_set& names, tensor_report& report,
                   const std::map<std::string, int>& references);

/// Applies every job to the graph (nodes replaced/inserted, initializers added, originals
/// removed when nothing else reads them). Cannot fail.
void rewrite_graph(model& m, const quantize_options& options, std::vector<weight_job>& jobs,
                   name_set& names);

/// MatMulNBits (plus Mul/Add for a non-constant bias) in place of one MatMul/Gemm `orig` using
/// the job's data/scales/zero_points names; new initializers (a folded bias) go to `g`.
std::vector<::onnx::NodeProto> matmulnbits_nodes(::onnx::GraphProto& g,
                                                 const ::onnx::NodeProto& orig,
                                                 const quantize_options& options,
                                                 const weight_job& job, const weight_use& u,
                                                 const bias_plan& b, name_set& names);

// ---- Embeddings (embeddings.cpp) ----------------------------------------------------------------

/// One embedding table to quantize (--embeddings quantize), decided before the model changes.
struct embedding_job {
  const embedding_info* info = nullptr;
  std::size_t report_index = 0;  ///< into quantize_report::embeddings
  int4q::quant_config config;
  /// The tied MatMul/Gemm nodes as one weight (table^T, [K = D, N = V]) and their MatMulNBits
  /// plan (bias folds); used by the matmulnbits format only.
  weight_info tied_info;
  weight_job tied_job;
  // Filled by build_embeddings:
  std::vector<::onnx::TensorProto> tensors;
  std::string data_name, scales_name, zero_points_name;
  std::string shape_name, reshaped_name;  ///< matmulnbits, tied: B = Reshape(data, shape)
  // Nodes are found again by output name at rewrite time (indices change in rewrite_graph).
  std::vector<std::string> gather_outputs, tied_outputs, transpose_outputs;
};

/// Embedding tables to quantize (empty with --embeddings keep), with their report entries (and
/// the tied weights' entries in report.tensors pointed at them). Throws nothing on a table that
/// cannot be written: it gets a reason instead.
std::vector<embedding_job> plan_embeddings(const model& m, const quantize_options& options,
                                           const compiled_selection& sel,
                                           const std::vector<embedding_info>& embeddings,
                                           quantize_report& report);

/// Reads, quantizes and packs every table (the model is only read); fills the report entries.
void build_embeddings(const model& m, const quantize_options& options,
                      std::vector<embedding_job>& jobs, name_set& names, quantize_report& report);

/// Rewrites the Gathers (and tied nodes) of every job. Runs after rewrite_graph. Cannot fail.
void rewrite_embeddings(model& m, const quantize_options& options, std::vector<embedding_job>& jobs,
                        name_set& names);

}  // namespace detail
}  // namespace onnx
}  // namespace int4q

#endif  // INT4Q_ONNX_SRC_WRITERS_HPP
