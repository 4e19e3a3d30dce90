// quantize_model: the rewrite of a model's MatMul/Gemm weights to MatMulNBits, to
// DequantizeLinear-21 + MatMul/Gemm, or to fake-quant weights; with a report.
#ifndef INT4Q_ONNX_QUANTIZE_MODEL_HPP
#define INT4Q_ONNX_QUANTIZE_MODEL_HPP

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <int4q/awq.hpp>
#include <int4q/config.hpp>
#include <int4q/gptq.hpp>
#include <int4q/onnx/calibrate.hpp>
#include <int4q/onnx/model.hpp>
#include <int4q/onnx/weights.hpp>
#include <int4q/tuned_rounding.hpp>

namespace int4q {
namespace onnx {

/// What a quantized weight becomes in the output model.
enum class output_format {
  matmulnbits,  ///< com.microsoft MatMulNBits (Gemm bias folded into its bias input)
  qdq,          ///< DequantizeLinear (opset 21, INT4/UINT4 blocked) feeding the original node
  fake,         ///< the original node with its weight replaced by dequantized values (evaluation)
};
const char* to_string(output_format f) noexcept;

/// Quantization method.
enum class method {
  rtn,   ///< round to nearest on the grid (no data)
  gptq,  ///< GPTQ (int4q/gptq.hpp) on the Hessian X^T X of calibration activations
  /// AWQ (int4q/awq.hpp): per-input-channel scales s searched on calibration activations, the
  /// weight quantized as diag(s) W and 1/s folded into the producer of its input (or a Mul).
  awq_lite,
  awq_clip,  ///< AWQ clip search only: per (group, column) clip ratios, no scaling
  awq_full,  ///< awq_lite, then awq_clip on the scaled weight
  awq_gptq,  ///< awq_lite scaling, then GPTQ on the scaled weight (Hessian of x / s)
  /// Block-wise output-aware tuning (int4q/tuned_rounding.hpp): for each block of the graph
  /// between two points of its residual stream (find_blocks), every weight's rounding offsets
  /// and group range factors are tuned by signed gradient descent on the mean squared error
  /// between the block's output and the float model's, the block's input coming from the
  /// already quantized blocks; gradients by int4q's own reverse mode (stretch_gradient).
  block,
};
const char* to_string(method m) noexcept;

/// Which activations a calibrated weight sees.
enum class calibration_mode {
  /// Weights in graph order, each calibrated on the activations that flow through the already
  /// quantized earlier weights (GPTQ's own recipe). Memory: the live activations of all
  /// calibration batches at the current point of the graph (those beyond
  /// calibration_options::activation_budget_bytes in a scratch file), plus one weight's
  /// statistics.
  sequential,
  /// Every weight calibrated on the float model's activations (as ONNX Runtime's and INC's
  /// GPTQ do): one pass; memory: the statistics of every calibrated weight at once.
  parallel,
};
const char* to_string(calibration_mode m) noexcept;

/// Calibration data and mode, for the methods that need activations (gptq).
struct calibration_options {
  /// Batches of model inputs; required when any weight uses a calibrated method.
  batch_source data;
  /// Starts `data` over from its first batch. Parallel mode reads the data once per pass, one
  /// pass per set of weights whose statistics fit in parallel_stats_bytes; without `rewind`,
  /// one pass collects every weight's statistics whatever their size.
  std::function<void()> rewind;
  calibration_mode mode = calibration_mode::sequential;
  /// Parallel mode: the most bytes of statistics held at once (H is K x K doubles per weight).
  std::uint64_t parallel_stats_bytes = std::uint64_t(1) << 30;
  /// Sequential mode: the most bytes of paused runs' activations held in memory; the others
  /// go to a scratch file in `scratch_dir` (collect_options::activation_budget_bytes). The
  /// output does not depend on it. Default: no limit (the CLI defaults to half the physical
  /// memory, --calib-memory).
  std::uint64_t activation_budget_bytes = std::numeric_limits<std::uint64_t>::max();
  /// Where that scratch file goes (an existing directory); empty: the system's temporary
  /// directory.
  std::filesystem::path scratch_dir;
  /// For the report: what the data is (a file, random inputs, ...).
  std::string description;
};

/// Per-node settings from a JSON config file ({"overrides": [{"match": regex, "bits": 8, ...}]}).
/// For each weight the first override whose `match` is found (std::regex_search, ECMAScript) in
/// the display name of one of its nodes or in the weight's name applies; later ones are ignored.
struct node_override {
  std::string match;  ///< regex searched in the node's display name (or the weight name)
  std::optional<int> bits;
  std::optional<std::size_t> group_size;  ///< 0 = per-channel
  std::optional<int4q::scheme> scheme;
  std::optional<bool> skip;    ///< true: leave the node unquantized
  std::optional<method> algo;  ///< "method" in JSON
};

/// What to do with the final projection to the logits ("lm_head").
enum class lm_head_policy {
  keep,      ///< leave it in float (default; see docs/onnx.md for the measured reason)
  quantize,  ///< quantize it like every other weight
  int8,      ///< quantize it to 8 bits per-channel whatever the base config
};

/// What to do with embedding tables (constant tables read by Gather): see docs/onnx.md.
enum class embedding_policy {
  keep,      ///< leave them in float (default)
  quantize,  ///< MatMulNBits format: GatherBlockQuantized; qdq: DequantizeLinear + Gather;
             ///< fake: dequantized values. A tied lm_head shares the quantized table.
};
const char* to_string(embedding_policy p) noexcept;

/// AWQ's settings (methods awq_lite, awq_clip, awq_full, awq_gptq).
struct awq_settings {
  /// The scale search: alpha_step (default 0.1), form (default activation_weight, ModelOpt
  /// awq_lite). `threads` is taken from quantize_options.
  int4q::awq_options scales;
  /// The clip search: clip_step (0.05), clip_min (0.5).
  int4q::awq_clip_options clip;
  /// Weights sharing one input (q/k/v, gate/up) get one joint scale on their summed loss, so
  /// that 1/s can be folded into the input's producer; false: one scale per weight (each
  /// then reads its own x / s through an inserted Mul).
  bool per_subgraph = true;
  /// Rows of the input sampled (uniformly, over all calibration rows) for the losses.
  std::size_t samples = 512;
};

/// Block-wise tuning's settings (method block).
struct block_settings {
  /// Signed-gradient steps per block, each on one calibration batch (AutoRound's default: 200).
  std::size_t iterations = 200;
  /// Step size at the first step, decaying linearly towards 0; 0: 1 / iterations.
  double learning_rate = 0;
  /// Limits of the offsets and range factors.
  int4q::tuned_rounding_options limits;
  /// The order the batches are visited in (a shuffle per pass over them) comes from it.
  std::uint64_t seed = 0;
};

/// Where a long run stands, after each weight (quantize_options::on_progress).
struct quantize_progress {
  std::size_t done = 0, total = 0;  ///< weights quantized (restored included) and to quantize
  std::size_t restored = 0;         ///< of `done`, taken from the resume journal
  std::string weight;               ///< the weight just done
  std::string layer;                ///< the display name of its first node
  /// weight_cost of the weights done, of those restored (part of cost_done) and of all; rows
  /// are the calibration rows the first calibrated weight saw (0 before: forward terms absent).
  double cost_done = 0, cost_restored = 0, cost_total = 0;
  /// Seconds spent on the weights this run quantized (restored ones excluded): each from the
  /// start of its calibration to its tensors being packed (and spilled).
  double seconds = 0;
};

/// A run that keeps a journal of the weights it has finished, so that a run that dies (a
/// signal, an error, a power cut) continues where it stopped: the same call with the same
/// model, options and data restores the journaled weights instead of calibrating them again
/// and writes output byte-identical to a run that was never interrupted. Sequential calibration
/// still runs the data through the restored weights' nodes, with their quantized values, as
/// the uninterrupted run did; AWQ's scales (and so its folds) are restored with them.
struct resume_options {
  /// The journal's data file (the quantized codes, scales and zero points of each finished
  /// weight, appended); its manifest is the same path + ".json" (what each weight's data is,
  /// and the fingerprint), replaced atomically after each weight once its data is on disk.
  /// Empty: no journal. When the manifest exists, its weights are restored; the caller removes
  /// both files once the output is saved (resume_manifest_path names the second).
  std::filesystem::path journal;
  /// What the caller knows of the run's inputs beyond the options and the model's graph (file
  /// names, sizes and modification times of the model and of the calibration data, ...). The
  /// journal records it with int4q's version, the options that change the output and a hash of
  /// the graph; a journal whose record differs is refused (option_error naming the fields).
  nlohmann::json fingerprint;
  /// For tests: after this many weights journaled by this run, stop with resume_stopped
  /// (0: never), as a run that died there would.
  std::size_t stop_after = 0;
};

/// The manifest of a journal: `journal` + ".json".
std::filesystem::path resume_manifest_path(const std::filesystem::path& journal);

/// Thrown by quantize_model when resume_options::stop_after weights were journaled (tests).
class resume_stopped : public model_error {
 public:
  using model_error::model_error;
};

struct quantize_options {
  int4q::quant_config config;  ///< base grid for every selected weight
  bool ort_preset = false;  ///< use presets::ort_matmulnbits / ort_qdq grids (bit-exact with ORT)
  output_format format = output_format::matmulnbits;
  method algo = method::rtn;
  calibration_options calibration;  ///< for the calibrated methods (gptq, awq_*)
  awq_settings awq;
  block_settings block;  ///< method block
  /// GPTQ's settings (block, damping, act_order, ...). int4q's default differs from the core's
  /// (the reference algorithm's): act_order with static groups, which scores better on devgpt
  /// (docs/quantization.md has the measurements) and decodes with plain contiguous groups.
  int4q::gptq_options gptq = [] {
    int4q::gptq_options g;
    g.act_order = true;
    g.static_groups = true;
    g.rtn_loss = false;  // the RTN comparison costs one more K x K x N product: on request
    return g;
  }();
  std::optional<int>
      accuracy_level;                ///< MatMulNBits accuracy_level attribute (0-4); unset = absent
  std::vector<std::string> include;  ///< regexes on node display names; empty = all
  std::vector<std::string> exclude;  ///< regexes on node display names
  std::vector<node_override> overrides;
  lm_head_policy lm_head = lm_head_policy::keep;
  embedding_policy embeddings = embedding_policy::keep;  ///< Gather tables (and tied lm_heads)
  std::size_t threads = 0;  ///< 0 = all cores; the output does not depend on it
  /// Low memory for large models: when set, each new tensor of at least `spill_min_bytes` is
  /// appended to this scratch file (created, or truncated) as soon as its weight is quantized,
  /// and stays in the model as an external reference to it (model::spill_location/spill_path),
  /// so memory holds the tensors of one weight at a time instead of the whole output. save_model
  /// copies them into the output like any external tensor. The caller removes the file once
  /// the model is saved (or dropped); put it next to the output so that copy is a local one.
  std::filesystem::path spill_file;
  std::size_t spill_min_bytes = std::size_t(1) << 20;
  /// Inputs (model and external data) of at least this many bytes are worth spilling: the
  /// CLI's `--spill auto` and the e2e benchmark use it.
  static constexpr std::uint64_t spill_input_bytes = std::uint64_t(512) << 20;
  /// A run that can continue after it dies (resume_options).
  resume_options resume;
  /// Called after each weight with what is done and what is left (eta_seconds estimates the
  /// time left from it).
  std::function<void(const quantize_progress&)> on_progress;
  /// The ranks of a distributed run (MPI: int4q::onnx::mpi_communicator; null: this process
  /// alone). Every rank calls quantize_model with the same model and options: the calibration
  /// batches are spread over the ranks (collect_options::comm), the GPTQ solves and AWQ searches
  /// of the weights ready at the same point are divided among them and their results sent to
  /// all, so every rank ends with the same quantized model, byte for byte the one a single
  /// process makes (the caller saves it on one rank). Ranks that disagree about the model or the
  /// options get a model_error before any work. Not with `resume` (one journal per run).
  communicator* comm = nullptr;
};

/// Expected cost of quantizing one weight [K, N] with method `m` on `rows` calibration rows, in
/// floating-point operations (2 per multiply-add), for progress and ETAs: RTN 8 K N; the
/// calibrated methods add the forward through the weight's node (2 rows K N); GPTQ (gptq,
/// awq_gptq) the Hessian (rows K^2, its upper triangle), its Cholesky inverse (K^3) and the
/// column updates (K^2 N); AWQ's scale search (awq_lite, awq_full, awq_gptq) 2 samples K N per
/// grid alpha, its clip search (awq_clip, awq_full) 2 samples K N per grid ratio; `samples` =
/// min(rows, awq.samples). A model, not a measurement: only the ratios between weights matter.
double weight_cost(std::size_t k, std::size_t n, method m, std::size_t rows,
                   const awq_settings& awq = {});

/// The time left, in seconds: the seconds spent on the weights this run quantized (restored
/// ones excluded) per unit of their cost, times the cost of the weights left. NaN until this
/// run has quantized a weight of non-zero cost.
double eta_seconds(const quantize_progress& p);

/// One weight in the report.
struct tensor_report {
  std::string weight;
  std::vector<std::string> nodes;
  /// A weight on a constant path (weights.hpp): "'<source>' -> Cast 'c' -> Transpose 't'", the
  /// nodes the writers fold into the quantized weight ("" otherwise). The path's nodes and
  /// source are removed when nothing else reads them, kept when something does.
  std::string constant_path;
  std::size_t k = 0, n = 0;
  bool quantized = false;
  std::string reason;  ///< why not, when !quantized
  int bits = 0;
  std::size_t group_size = 0;  ///< rows per group (K for per-channel)
  std::string scheme;
  double rmse = 0, max_abs = 0, relative_l2 = 0, sqnr_db = 0;
  std::string method = "rtn";  ///< the method that quantized it
  /// Calibrated methods: rows of activations seen, and the Hessian-weighted loss
  /// trace((W - Q)^T H (W - Q)) of the method and of RTN on the same H (NaN otherwise).
  std::size_t calibration_rows = 0;
  double hessian_loss = std::numeric_limits<double>::quiet_NaN();
  double rtn_hessian_loss = std::numeric_limits<double>::quiet_NaN();
  std::size_t damp_retries = 0;  ///< GPTQ: Cholesky failures before the damping that worked
  /// AWQ scaling (awq_lite, awq_full, awq_gptq): the chosen alpha, the AWQ loss
  /// sum_j || X W_j - (X / s) Q(diag(s) W_j) ||^2 on the sampled rows at it and at s = 1 (RTN),
  /// summed over the weights sharing the input when they share one scale (NaN for the other
  /// methods), and where 1/s went ("LayerNormalization 'ln'", "Mul 'scale_x' (inserted)", ...).
  double awq_alpha = std::numeric_limits<double>::quiet_NaN();
  double awq_loss = std::numeric_limits<double>::quiet_NaN();
  double awq_rtn_loss = std::numeric_limits<double>::quiet_NaN();
  std::string awq_fold;
  /// awq_clip, awq_full: the clip search's output error at the chosen ratios and at ratio 1.
  double clip_loss = std::numeric_limits<double>::quiet_NaN();
  double clip_rtn_loss = std::numeric_limits<double>::quiet_NaN();
  /// block: the mean squared error of its block's output against the float model's, on the
  /// batch of the first step (round to nearest) and the lowest seen (the parameters kept).
  /// (calibration_rows: the rows of the block's output over all batches.)
  double block_loss_start = std::numeric_limits<double>::quiet_NaN();
  double block_loss = std::numeric_limits<double>::quiet_NaN();
  std::size_t bytes_before = 0, bytes_after = 0;
  double seconds = 0;
};

/// One embedding table in the report (--embeddings quantize, or found and kept).
struct embedding_report {
  tensor_report tensor;           ///< weight = the table, nodes = its Gathers, k = D, n = V
  std::vector<std::string> tied;  ///< display names of the tied MatMul/Gemm nodes sharing it
  bool shared = false;            ///< the tied nodes read the same quantized tensors as the Gathers
  /// Bytes the tied nodes' own quantized copy would take (saved by sharing; 0 when not tied).
  std::size_t bytes_saved_by_sharing = 0;
};

struct quantize_report {
  nlohmann::json config;  ///< the options, echoed
  std::vector<tensor_report> tensors;
  std::vector<embedding_report> embeddings;  ///< every Gather table found (empty with keep)
  std::size_t weights_quantized = 0;
  std::size_t weights_resumed = 0;  ///< restored from the resume journal (resume_options)
  std::size_t bytes_before = 0, bytes_after = 0;  ///< of the weights considered
  double seconds = 0;
};

/// Rewrites `m` in place. Throws model_error (unsupported form, opset that cannot be raised,
/// an option the format cannot hold such as a MatMulNBits group size that is not a power of two
/// in 16..256) before changing anything.
quantize_report quantize_model(model& m, const quantize_options& options);

/// The report as JSON (the CLI adds peak memory and timings of load/save).
nlohmann::json to_json(const quantize_report& report);

/// Parses a --config JSON file's content into overrides (and base settings it may contain).
/// Throws model_error(invalid) naming the key that is wrong.
std::vector<node_override> parse_overrides(const nlohmann::json& config);

/// Applies a --config JSON file to `options`: its base settings ("format", "bits",
/// "group_size", "scheme", "rounding", "method", "preset", "include", "exclude", "lm_head",
/// "accuracy_level"; each optional) and its "overrides" (appended). Schema: docs/onnx.md.
/// Throws model_error(invalid) naming the key that is wrong; `options` is unchanged then.
void apply_config(const nlohmann::json& config, quantize_options& options);

}  // namespace onnx
}  // namespace int4q

#endif  // INT4Q_ONNX_QUANTIZE_MODEL_HPP
