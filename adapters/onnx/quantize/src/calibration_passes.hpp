// Internal to quantize_model: the calibration passes that run before the writers. They decide
// the order weights are quantized in, gather their activation statistics (sequential: paused
// runs; parallel: passes over the data that fit the statistics budget), run each job's method
// (RTN, GPTQ, AWQ) and leave the result in the job for build_tensors, which only packs it.
#ifndef INT4Q_ONNX_SRC_CALIBRATION_PASSES_HPP
#define INT4Q_ONNX_SRC_CALIBRATION_PASSES_HPP

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <int4q/awq.hpp>
#include <int4q/onnx/awq_fold.hpp>
#include <int4q/onnx/calibrate.hpp>

#include "resume_journal.hpp"
#include "writers.hpp"

namespace int4q {
namespace onnx {
namespace detail {

/// Bytes of one weight's statistics: H (K x K doubles) when accumulated, the row sample
/// (sample_rows x K floats) and the per-channel sums (3 K doubles).
std::uint64_t stats_bytes(const weight_info& w, const activation_stats_options& what);

/// "Parallel" statistics in passes over the data: `weights` (in order) cut into runs of
/// consecutive weights whose statistics fit `budget_bytes` together (a pass holds at least one
/// weight); one pass for all when the data cannot be read again (`rewindable` false).
std::vector<std::vector<const weight_info*>> split_into_passes(
    const std::vector<const weight_info*>& weights, const activation_stats_options& what,
    std::uint64_t budget_bytes, bool rewindable);

/// AWQ scaling: the jobs whose one use reads the same main-graph input form a group (one group
/// per job without per_subgraph); the group's scales are searched when its first member is
/// quantized (its statistics are those of the shared input), every member is quantized as
/// diag(s) W (job.weight holds the scaled weight, so the writers measure and store it), and
/// fold_plans() says where each group's 1/s goes once all weights are done.
class calibration_passes {
 public:
  /// Checks that the calibrated methods have data (and AWQ valid options), groups the AWQ jobs
  /// and plans the passes. Throws model_error(invalid) before anything runs.
  calibration_passes(const model& m, const quantize_options& options, std::vector<weight_job>& jobs,
                     quantize_report& report);
  ~calibration_passes();
  calibration_passes(const calibration_passes&) = delete;
  calibration_passes& operator=(const calibration_passes&) = delete;

  /// Indices into the jobs, in the order to quantize them (sequential: graph order).
  const std::vector<std::size_t>& order() const { return order_; }

  /// Fills job.weight and job.q: the logical weight (AWQ: scaled) and its quantized form (RTN,
  /// or the job's method on its statistics). Sequential: the quantized values then replace the
  /// float ones in the runs for the weights after it, so call it in order(). With a journal,
  /// a weight it holds is restored from it instead (returns true), and one quantized here is
  /// appended to it.
  bool quantize(weight_job& job);

  /// Distributed runs (quantize_options::comm): the end (an index into order()) of the set of
  /// weights from order()[first] on that are ready at the same point (sequential: consecutive
  /// weights reading the same input; parallel: of the same pass; an RTN weight alone).
  std::size_t set_end(std::size_t first) const;
  /// Distributed: quantize() for the weights order()[first, last), with their AWQ searches and
  /// solves divided among the ranks and the results sent to every rank.
  void quantize_set(std::size_t first, std::size_t last);

  /// The resume journal (null: none), kept by the caller for the passes' lifetime.
  void set_journal(resume_journal* journal) { journal_ = journal; }

  /// Where each scaled group's 1/s goes (reads the model only; call after every weight is
  /// quantized); records it in the members' reports.
  std::vector<awq_fold_plan> fold_plans();

 private:
  struct awq_group {
    std::string activation;            ///< the shared input x
    std::vector<std::size_t> members;  ///< job indices
    bool searched = false;
    bool active = false;  ///< scales found and not all 1: the weights are scaled, 1/s folded
    int4q::awq_scales<float> result;
  };

  void check_calibration_data() const;
  void check_awq_options() const;
  void sort_sequential(const std::vector<weight_job>& jobs);
  void group_awq_jobs();
  awq_group* group_of(const weight_job& job);
  void search(awq_group& g, const activation_stats& stats);
  void adopt_search(awq_group& g);
  void quantize_fresh(weight_job& job);
  void restore(weight_job& job, journaled_weight& saved);
  void scale_weight(weight_job& job, awq_group& g, const activation_stats* stats);
  void quantize_calibrated(weight_job& job, activation_stats stats);
  void solve(weight_job& job, const activation_stats& stats);
  void replace_in_runs(weight_job& job);
  int4q::quantized<float> run_method(weight_job& job, const activation_stats& stats, const float* s,
                                     tensor_report& r);
  int4q::quantized<float> run_gptq(const weight_job& job, const activation_stats& stats,
                                   const float* s, tensor_report& r) const;
  int4q::quantized<float> run_awq_clip(const weight_job& job, const activation_stats& stats,
                                       const float* s, tensor_report& r) const;
  activation_stats statistics(const weight_info& w);
  void share_search(awq_group& g, int owner);
  void share_result(weight_job& job, int owner);
  std::string set_key(const weight_job& job) const;
  int4q::quant_options quant_opts() const;

  const model& m_;
  const quantize_options& options_;
  quantize_report& report_;
  std::vector<weight_job>& jobs_;
  std::vector<std::size_t> order_;
  collect_options co_;
  std::unique_ptr<sequential_calibration> sequential_;
  /// Parallel: the passes over the data (calibrated weights, in order) and the statistics of
  /// the pass run last, taken out as the weights are done.
  std::vector<std::vector<const weight_info*>> passes_;
  std::map<const weight_info*, std::size_t> pass_of_;
  std::size_t passes_run_ = 0;
  std::map<std::string, activation_stats> parallel_;
  std::vector<awq_group> groups_;
  std::map<std::size_t, std::size_t> group_index_;  ///< job index -> group
  resume_journal* journal_ = nullptr;
};

}  // namespace detail
}  // namespace onnx
}  // namespace int4q

#endif  // INT4Q_ONNX_SRC_CALIBRATION_PASSES_HPP
