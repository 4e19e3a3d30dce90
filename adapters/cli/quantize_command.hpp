// `int4q quantize IN -o OUT`: load a model, rewrite its MatMul/Gemm weights, save it, report.
#ifndef INT4Q_CLI_QUANTIZE_COMMAND_HPP
#define INT4Q_CLI_QUANTIZE_COMMAND_HPP

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <int4q/config.hpp>
#include <int4q/onnx/model.hpp>
#include <int4q/onnx/quantize_model.hpp>

#include "calib_args.hpp"

namespace int4q {
namespace cli {

/// The command line of `int4q quantize`, as parsed (checked further by to_quantize_options).
/// Settings a --config file may also hold are optional: unset = the config file's value, else
/// int4q's default; a flag on the command line wins over the config file.
struct quantize_command_options {
  std::filesystem::path input;
  std::filesystem::path output;
  std::optional<int4q::onnx::output_format> format;  ///< default matmulnbits
  std::optional<int> bits;                           ///< default 4
  std::optional<int4q::grouping> granularity;        ///< with group_size; default group 128
  std::size_t group_size = 128;
  std::optional<int4q::scheme> scheme;      ///< default asymmetric
  std::optional<int4q::rounding> rounding;  ///< default half to even
  std::optional<std::string> method;        ///< default rtn
  bool ort_preset = false;
  std::vector<std::string> include;   ///< empty: the config file's, else every node
  std::vector<std::string> exclude;   ///< empty: the config file's, else none
  std::filesystem::path config_file;  ///< empty: none
  std::optional<int4q::onnx::lm_head_policy> lm_head;  ///< default keep
  std::optional<int> accuracy_level;                   ///< default absent
  /// --embeddings; default keep
  std::optional<int4q::onnx::embedding_policy> embeddings;
  int4q::onnx::external_data external = int4q::onnx::external_data::automatic;
  /// Quantized tensors to a scratch file as they are made (low memory): auto = inputs of at
  /// least quantize_options::spill_input_bytes on disk.
  enum class spill_mode { automatic, always, never } spill = spill_mode::automatic;
  std::string report;  ///< "" none, "-" stdout, else a file
  /// Calibration (--method gptq): the data, its samples and window length, the batch per run.
  data_args calib;
  std::size_t calib_batch = 8;
  int4q::onnx::calibration_mode calib_mode = int4q::onnx::calibration_mode::sequential;
  /// --calib-memory: paused runs' activations held in memory (sequential), the rest in a
  /// scratch file next to the output; unset: half the physical memory.
  std::optional<std::uint64_t> calib_memory;
  std::size_t gptq_block = 128;
  double damp = 0.01;
  bool act_order = true;  ///< GPTQ (default on, see quantize_options::gptq)
  bool static_groups = true;
  bool compare_rtn = false;  ///< report RTN's Hessian-weighted loss next to GPTQ's
  /// --auto: a format per weight under --effective-bits (int4q/onnx/auto_quantize.hpp), from
  /// --auto-candidates (empty: the defaults); --plan applies a plan file instead (no
  /// calibration); --plan-out writes the plan used.
  bool auto_plan = false;
  std::optional<double> effective_bits;
  std::vector<std::string> auto_candidates;
  std::filesystem::path plan_in, plan_out;
  /// AWQ (--method awq_*): the alpha grid step, the clip grid step and smallest ratio, one joint
  /// scale for weights sharing an input, rows sampled for the losses.
  double awq_alpha_step = 0.1;
  double awq_clip_step = 0.05;
  double awq_clip_min = 0.5;
  bool awq_per_subgraph = true;
  std::size_t awq_samples = 512;
  /// --method block: signed-gradient steps per block and the first step's size (0: 1 / steps).
  std::size_t block_iters = 200;
  double block_lr = 0;
  std::size_t threads = 0;
  bool quiet = false;
  /// --resume: keep a journal of the finished weights next to OUT (resume_journal_path) and
  /// continue from it when it exists; --test-stop-after N (hidden, for tests): stop after N
  /// weights journaled, as a run that died there would.
  bool resume = false;
  std::size_t test_stop_after = 0;
};

/// Adds the `quantize` subcommand to `app`; parsing it runs run_quantize.
void setup_quantize(CLI::App& app);

/// Runs `int4q quantize`. Throws usage_error (the library's option_error and config_error
/// become one, written with flags) or int4q::onnx::model_error; main maps them to exit codes.
void run_quantize(const quantize_command_options& options);

/// The library options for a command line and the content of its --config file (null: none),
/// checked by the library against the output format (the checks that need no model). Throws
/// usage_error.
int4q::onnx::quantize_options to_quantize_options(const quantize_command_options& options,
                                                  const nlohmann::json& config);

}  // namespace cli
}  // namespace int4q

#endif  // INT4Q_CLI_QUANTIZE_COMMAND_HPP
