// Calibration: the activations that reach each quantizable weight, gathered while int4q's
// executor runs the model on calibration data, as the core's streaming activation_stats
// (Hessian X^T X, mean and max |x| per input channel, a bounded row sample).
//
// Two ways to see a weight's input, both needed by GPTQ and AWQ:
//   collect_activation_stats  "parallel": every weight sees the float model's activations (one
//                             pass over the data, statistics of all weights at once).
//   sequential_calibration    "sequential": weights in graph order, each one calibrated on the
//                             activations that flow through the already quantized earlier
//                             weights (the data's runs pause before each weight's node).
#ifndef INT4Q_ONNX_CALIBRATE_HPP
#define INT4Q_ONNX_CALIBRATE_HPP

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <int4q/activation_stats.hpp>
#include <int4q/onnx/communicator.hpp>
#include <int4q/onnx/executor.hpp>
#include <int4q/onnx/model.hpp>
#include <int4q/onnx/weights.hpp>

namespace int4q {
namespace onnx {

/// Calibration data: one call per batch; fills the inputs and returns true, or returns false
/// after the last batch. Read once.
using batch_source = std::function<bool(std::map<std::string, value>& inputs)>;

/// The rows a use of `w` multiplies with the weight, from the node's inputs: MatMul and Gemm
/// (transA = 0) input A, viewed as [rows, K]. Throws model_error when its last axis is not K.
struct activation_rows {
  const float* data = nullptr;
  std::size_t rows = 0;
};
activation_rows rows_of(const weight_info& w, const ::onnx::NodeProto& node, const value& a);

struct collect_options {
  activation_stats_options stats;  ///< what to accumulate (H, row sample)
  std::size_t threads = 0;         ///< of the executor (0 = all cores)
  /// Called after each batch with the number of batches done.
  std::function<void(std::size_t batches)> on_progress;
  /// Sequential calibration: the most bytes of paused runs' live values (activations) kept in
  /// memory. A run whose values would pass it, once advanced, has them written to a scratch file
  /// and read back when it is advanced again; 0 writes every run but the one being advanced.
  /// The output does not depend on it. Default: no limit (the CLI's --calib-memory sets one).
  std::uint64_t activation_budget_bytes = std::numeric_limits<std::uint64_t>::max();
  /// Where that scratch file is created (".int4q-activations-XXXXXXXX", removed when the
  /// calibration ends, by an error too); empty: the system's temporary directory.
  std::filesystem::path scratch_dir;
  /// The ranks of a distributed run (null or one rank: this process alone). Data parallel: batch
  /// b runs on rank b % size only; its rows go to every rank (broadcast, in batch order), and
  /// each rank accumulates its share of H's tiles, joined by a sum at the end. Every rank then
  /// holds the statistics, byte for byte, that one process computes alone. Every rank must read
  /// the same batches (it keeps the inputs of its own).
  communicator* comm = nullptr;
};

/// "Parallel" statistics of every weight in `weights` (by weight name; the rows of all uses of
/// a shared weight pool, uses inside If branches included) over every batch of `source`, with
/// the float model. Memory: the statistics and one batch's live activations.
std::map<std::string, activation_stats> collect_activation_stats(
    const model& m, const std::vector<const weight_info*>& weights, const batch_source& source,
    const collect_options& options = {});

/// "Sequential" calibration. Holds one paused run per batch: the live activations of all
/// batches at the current point of the graph, those beyond options.activation_budget_bytes in a
/// scratch file (one record per run, rewritten in its place), and each replaced weight until
/// the runs have passed its last main-graph use. For weights in graph order:
///
///   stats = seq.stats_for(w);        // runs every batch up to w's first node
///   ...quantize w with stats...
///   seq.replace(w, dequantized);     // from now on the runs multiply with these values
///
/// Weights used only inside subgraphs (If branches) are not seen by the paused main-graph
/// runs: stats_for gives them the statistics of a full run of the float model instead
/// (parallel, with the replacements made so far), computed once on first need from a copy of
/// the batches' inputs kept for that purpose. Until that pass has run, every replacement is
/// kept (the pass runs the whole graph with them).
class sequential_calibration {
 public:
  sequential_calibration(const model& m, const std::vector<const weight_info*>& weights,
                         const batch_source& source, const collect_options& options = {});
  ~sequential_calibration();
  sequential_calibration(const sequential_calibration&) = delete;
  sequential_calibration& operator=(const sequential_calibration&) = delete;

  /// The statistics of `w`'s input as it is now (earlier replacements applied). Weights must
  /// be asked for in the order of their first main-graph use.
  activation_stats stats_for(const weight_info& w);
  /// Replaces the weight's values for the rest of the runs: `stored` in the tensor's stored
  /// layout and shape (dims of weight_info), as floats.
  void replace(const weight_info& w, value stored);
  /// For a weight whose result is known already (a resumed run): what stats_for does to the
  /// runs, without the statistics. The runs advance up to w's first node (replace() then applies
  /// before it runs), and a weight used only inside subgraphs has the subgraph pass made first,
  /// as stats_for would have made it, so that the weights after it see the same activations as
  /// in a run that computed w's statistics.
  void pass(const weight_info& w);

  /// Memory diagnostics: replaced weights still held, and runs whose values are in the
  /// scratch file now.
  std::size_t replacements_held() const noexcept;
  std::size_t runs_spilled() const noexcept;

 private:
  struct impl;
  std::unique_ptr<impl> p_;
};

}  // namespace onnx
}  // namespace int4q

#endif  // INT4Q_ONNX_CALIBRATE_HPP
