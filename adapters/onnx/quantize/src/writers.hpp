// Internal to the quantization passes: weight selection, the report's config and the writers used
// by quantize_model (quantize_model.cpp orchestrates, calibration_passes.cpp quantizes; select.cpp,
// writers.cpp with writer_<format>.cpp, embeddings.cpp implement). Graph helpers are in
// <int4q/onnx/graph.hpp> (model layer).
#ifndef INT4Q_ONNX_SRC_WRITERS_HPP
#define INT4Q_ONNX_SRC_WRITERS_HPP

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <regex>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <onnx/onnx_pb.h>
#include <xtensor/xtensor.hpp>

#include <int4q/config.hpp>
#include <int4q/metrics.hpp>
#include <int4q/onnx/graph.hpp>
#include <int4q/onnx/model.hpp>
#include <int4q/onnx/quantize_model.hpp>
#include <int4q/onnx/weights.hpp>
#include <int4q/quantize.hpp>

namespace int4q {
namespace onnx {
namespace detail {

// ---- Selection (select.cpp) -------------------------------------------------------------------

/// Regexes compiled once.
struct compiled_selection {
  std::vector<std::regex> include, exclude, overrides;
};

/// Compiles the --include, --exclude and override regexes (model_error(invalid) naming a bad
/// one); checks nothing else.
compiled_selection compile_selection(const quantize_options& options);

/// Checks the options (and every override combined with them) against the output format;
/// compiles the regexes. Throws model_error before anything is changed.
compiled_selection validate_options(const quantize_options& options);

/// The decision for one weight.
struct weight_choice {
  bool quantize = false;
  std::string reason;  ///< when !quantize
  int4q::quant_config config;
  method algo = method::rtn;
  /// The lm_head policy int8 fixed the grid (8 bits, whatever overrides say): not a weight the
  /// auto plan chooses a grid for.
  bool grid_fixed = false;
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
  // Filled by the calibration passes (calibration_passes::quantize) before build_tensors,
  // released by it:
  std::chrono::steady_clock::time_point started;  ///< when the weight's quantization began
  xt::xtensor<float, 2> weight;  ///< the logical weight [K, N] as quantized (alpha folded; AWQ:
                                 ///< diag(s) W)
  int4q::quantized<float> q;     ///< its codes, scales and zero points
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

/// Packs one quantized weight (job.q, measured against job.weight, both then released) into
/// job.tensors (no change to the model); fills the report entry's measurements.
void build_tensors(const model& m, const quantize_options& options, weight_job& job,
                   name_set& names, tensor_report& report,
                   const std::map<std::string, int>& references);

/// New nodes for one graph's node list, by the index of an existing node: inserted before it,
/// or in its place.
struct node_list_edit {
  std::map<int, std::vector<::onnx::NodeProto>> before, replacement;
};

/// Rebuilds the node list of `g` in order: the inserted nodes before their node, replacements
/// in place (the new nodes are moved out of `e`). The kept nodes are moved by pointer, so the
/// subgraphs they hold stay where they are (other edits may hold pointers to them).
void apply_node_list_edit(::onnx::GraphProto& g, node_list_edit& e);

/// Applies every job to the graph (nodes replaced/inserted, initializers added, originals
/// removed when nothing else reads them). Cannot fail.
void rewrite_graph(model& m, const quantize_options& options, std::vector<weight_job>& jobs,
                   name_set& names);

// ---- Shared by the writers (writers.cpp)
// ---------------------------------------------------------

/// The ONNX element type of DequantizeLinear codes: INT4/UINT4 (4 bits) or INT8/UINT8,
/// signed when symmetric (no zero points).
int qdq_code_type(int bits, bool symmetric);

/// A size as an ONNX dimension.
std::int64_t to_dim(std::size_t v);

/// The values of a matrix, row-major.
std::vector<float> float_values(const xt::xtensor<float, 2>& x);

/// The name new nodes for use `u` of node `n` are named after.
std::string node_base_name(const ::onnx::NodeProto& n, const weight_use& u);

/// Moves `t` into the graph's initializers.
void add_initializer(::onnx::GraphProto& g, ::onnx::TensorProto&& t);

/// The weight's stored dims: [K, N], or [N, K] for Gemm transB = 1.
std::vector<std::int64_t> stored_dims_of(const weight_info& w);

/// rewrite_graph's state while the writers add their nodes: the node-list edit of every graph
/// (each graph found before any node list changes) and the originals to remove once nothing
/// reads them.
struct graph_rewrite {
  model& m;
  const quantize_options& options;
  name_set& names;
  std::map<std::string, std::pair<::onnx::GraphProto*, node_list_edit>> edits;  ///< by path_key
  std::vector<std::pair<::onnx::GraphProto*, std::string>> released;
  /// Constant path nodes (by output name) to remove once nothing reads their output, in order.
  std::vector<std::pair<::onnx::GraphProto*, std::string>> released_nodes;

  ::onnx::GraphProto& graph(const std::vector<graph_step>& path);
  node_list_edit& edit_of(const std::vector<graph_step>& path);
  ::onnx::NodeProto& node_of(const weight_use& u);
};

/// The weight's originals for removal once nothing reads them: the stored tensor, or on a
/// constant path its nodes (B side first), their constant shape/axes inputs and the source.
void release_weight(graph_rewrite& r, const weight_info& w);

/// "<source> -> Cast 'c' -> Transpose 't'" for a weight on a constant path, "" otherwise.
std::string describe_path(const model& m, const weight_info& w);

// ---- MatMulNBits (writer_matmulnbits.cpp)
// --------------------------------------------------------

/// MatMulNBits' reasons a weight cannot be written (Gemm transA, a constant bias not
/// broadcastable to [N]); fills the job's bias plans. "" when it can.
std::string plan_matmulnbits(const model& m, const weight_info& w, weight_job& job);

/// B, scales and zero points of job.q into job.tensors; returns the bytes stored.
std::size_t matmulnbits_tensors(weight_job& job, name_set& names);

/// MatMulNBits (plus Mul/Add for a non-constant bias) in place of one MatMul/Gemm `orig` using
/// the job's data/scales/zero_points names; new initializers (a folded bias) go to `g`.
std::vector<::onnx::NodeProto> matmulnbits_nodes(::onnx::GraphProto& g,
                                                 const ::onnx::NodeProto& orig,
                                                 const quantize_options& options,
                                                 const weight_job& job, const weight_use& u,
                                                 const bias_plan& b, name_set& names);

/// The job's tensors into the weight's graph, MatMulNBits in place of every use.
void write_matmulnbits(graph_rewrite& r, weight_job& job);

/// Adds the com.microsoft opset import (version 1) when the model has none.
void add_microsoft_opset(model& m);

// ---- DequantizeLinear-21 (writer_qdq.cpp)
// --------------------------------------------------------

/// Packed codes, scales and zero points of job.q in the stored layout; returns the bytes stored.
std::size_t qdq_tensors(weight_job& job, name_set& names);

/// The job's tensors and one DequantizeLinear before the first use; every use reads its output.
void write_qdq(graph_rewrite& r, weight_job& job);

// ---- Fake quantization (writer_fake.cpp)
// ---------------------------------------------------------

/// The dequantized values in the stored layout (in place when only the uses read the weight);
/// returns the bytes stored.
std::size_t fake_tensors(const model& m, const quantize_options& options, weight_job& job,
                         name_set& names, const std::map<std::string, int>& references);

/// The values into the weight's tensor (or a new one the uses read).
void write_fake(graph_rewrite& r, weight_job& job);

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
  /// The table's constant path: its nodes' outputs (source side first) and shape/axes inputs.
  std::vector<std::string> path_outputs, path_aux;
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
