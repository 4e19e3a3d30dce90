// The calibration passes of quantize_model: statistics, scheduling and the calibrated methods.
#include "calibration_passes.hpp"

#include <algorithm>
#include <array>
#include <chrono>
#include <limits>
#include <numeric>
#include <utility>

#include <int4q/dequant.hpp>
#include <int4q/gptq.hpp>
#include <int4q/onnx/option_error.hpp>
#include <int4q/quantize.hpp>
#include <xtensor/xadapt.hpp>

#include "weight_tensor.hpp"

namespace int4q {
namespace onnx {
namespace detail {

namespace {

bool is_awq(method a) {
  return a == method::awq_lite || a == method::awq_clip || a == method::awq_full ||
         a == method::awq_gptq;
}
/// The AWQ methods that scale the weight (and fold 1/s into the graph).
bool awq_scales_weight(method a) {
  return a == method::awq_lite || a == method::awq_full || a == method::awq_gptq;
}
bool needs_hessian(method a) { return a == method::gptq || a == method::awq_gptq; }

/// Weights may share one AWQ scale only when they are quantized on the same grid.
bool same_grid(const quant_config& a, const quant_config& b) {
  return a.bits == b.bits && a.granularity == b.granularity &&
         a.effective_group_size(1u << 30) == b.effective_group_size(1u << 30) &&
         a.scheme == b.scheme && a.rounding == b.rounding && a.data_type == b.data_type &&
         a.scale_type == b.scale_type && a.clip_ratio == b.clip_ratio;
}

/// The dequantized weight in the tensor's stored layout and scale: what the float model's node
/// must multiply with to compute what the quantized node will ([N, K] for Gemm transB, Gemm
/// alpha divided out again; AWQ: row k divided by s[k], the node's input being x / s).
value stored_values(const weight_job& job, const float* s) {
  const xt::xtensor<float, 2> d = int4q::dequant(job.q);  // [K, N], alpha folded in
  return stored_weight_values(*job.info, job.alpha, d.data(), s);
}

/// Graph order of the first main-graph use (weights only in subgraphs last).
int first_main_graph_use(const weight_info& w) {
  int earliest = std::numeric_limits<int>::max();
  for (const weight_use& u : w.uses)
    if (u.path.empty()) earliest = std::min(earliest, u.node_index);
  return earliest;
}

}  // namespace

std::uint64_t stats_bytes(const weight_info& w, const activation_stats_options& what) {
  const std::uint64_t k = w.k;
  // H (K^2 doubles) and its pending float block, the row sample, the channel sums.
  const std::uint64_t block = activation_stats::hessian_block_rows;
  return (what.hessian ? k * k * 8 + block * k * 4 : 0) + what.sample_rows * k * 4 + k * 24;
}

std::vector<std::vector<const weight_info*>> split_into_passes(
    const std::vector<const weight_info*>& weights, const activation_stats_options& what,
    std::uint64_t budget_bytes, bool rewindable) {
  std::vector<std::vector<const weight_info*>> passes;
  std::uint64_t held = 0;
  for (const weight_info* w : weights) {
    const std::uint64_t bytes = stats_bytes(*w, what);
    if (passes.empty() || (rewindable && held + bytes > budget_bytes)) {
      passes.emplace_back();
      held = 0;
    }
    passes.back().push_back(w);
    held += bytes;
  }
  return passes;
}

calibration_passes::calibration_passes(const model& m, const quantize_options& options,
                                       std::vector<weight_job>& jobs, quantize_report& report)
    : m_(m), options_(options), report_(report), jobs_(jobs) {
  order_.resize(jobs.size());
  std::iota(order_.begin(), order_.end(), std::size_t(0));
  bool hessian = false, awq = false;
  for (const weight_job& job : jobs) {
    hessian = hessian || needs_hessian(job.algo);
    awq = awq || is_awq(job.algo);
  }
  if (!std::any_of(jobs.begin(), jobs.end(),
                   [](const weight_job& j) { return j.algo != method::rtn; }))
    return;
  check_calibration_data();
  if (awq) check_awq_options();
  group_awq_jobs();
  co_.stats.hessian = hessian;
  co_.stats.sample_rows = awq ? options.awq.samples : 0;
  co_.threads = options.threads;
  co_.stats.threads = options.threads;
  co_.activation_budget_bytes = options.calibration.activation_budget_bytes;
  co_.scratch_dir = options.calibration.scratch_dir;
  co_.comm = options.comm;  // distributed: data-parallel statistics
  std::vector<const weight_info*> calibrated;
  for (const weight_job& job : jobs)
    if (job.algo != method::rtn) calibrated.push_back(job.info);
  if (options.calibration.mode == calibration_mode::sequential) {
    // The paused runs only go forward: weights in graph order.
    sort_sequential(jobs);
    sequential_ =
        std::make_unique<sequential_calibration>(m, calibrated, options.calibration.data, co_);
    return;
  }
  // Passes over the data, each for the next weights (in the order they are quantized, the
  // jobs' order) whose statistics fit in the budget; statistics(w) runs w's pass when w's
  // statistics are not there yet.
  passes_ = split_into_passes(calibrated, co_.stats, options.calibration.parallel_stats_bytes,
                              static_cast<bool>(options.calibration.rewind));
  for (std::size_t p = 0; p < passes_.size(); ++p)
    for (const weight_info* w : passes_[p]) pass_of_[w] = p;
}

calibration_passes::~calibration_passes() = default;

void calibration_passes::check_calibration_data() const {
  if (options_.calibration.data) return;
  const auto first = std::find_if(jobs_.begin(), jobs_.end(),
                                  [](const weight_job& j) { return j.algo != method::rtn; });
  throw model_error(model_error::kind::invalid,
                    std::string("method ") + to_string(first->algo) + " (weight '" +
                        first->info->name +
                        "') needs calibration data: give the model inputs "
                        "(`calibration.data`)");
}

void calibration_passes::check_awq_options() const {
  const awq_settings& a = options_.awq;
  if (a.samples == 0) {
    throw model_error(model_error::kind::invalid,
                      "AWQ needs sampled activation rows for its losses: `awq.samples` must be "
                      ">= 1 (default 512)");
  }
  try {
    int4q::detail::validate(a.scales);
    int4q::detail::validate(a.clip);
  } catch (const int4q::config_error& e) {
    throw model_error(model_error::kind::invalid,
                      std::string("AWQ options: ") + e.what() +
                          " (`awq.scales.alpha_step`, `awq.clip.clip_step`, `awq.clip.clip_min`)");
  }
}

void calibration_passes::sort_sequential(const std::vector<weight_job>& jobs) {
  std::stable_sort(order_.begin(), order_.end(), [&](std::size_t a, std::size_t b) {
    return first_main_graph_use(*jobs[a].info) < first_main_graph_use(*jobs[b].info);
  });
}

/// The scaled AWQ jobs by shared input (and grid); the others get the reason in the report.
void calibration_passes::group_awq_jobs() {
  std::map<std::string, std::vector<std::size_t>> by_input;
  for (std::size_t i = 0; i < jobs_.size(); ++i) {
    const weight_job& job = jobs_[i];
    if (!awq_scales_weight(job.algo)) continue;
    const weight_info& w = *job.info;
    if (w.uses.size() != 1 || !w.uses.front().path.empty()) {
      report_.tensors[job.report_index].awq_fold =
          "none: AWQ scales a weight with one use in the main graph only (this one " +
          std::string(w.uses.size() != 1 ? "is shared" : "is in a subgraph") +
          "); quantized unscaled";
      continue;
    }
    const std::string& x = m_.proto.graph().node(w.uses.front().node_index).input(0);
    std::vector<std::size_t>* candidates = options_.awq.per_subgraph ? &by_input[x] : nullptr;
    std::size_t gi = groups_.size();
    if (candidates) {
      for (const std::size_t c : *candidates)
        if (same_grid(jobs_[groups_[c].members.front()].config, job.config)) gi = c;
    }
    if (gi == groups_.size()) {
      groups_.push_back(awq_group{});
      groups_.back().activation = x;
      if (candidates) candidates->push_back(gi);
    }
    groups_[gi].members.push_back(i);
    group_index_[i] = gi;
  }
}

calibration_passes::awq_group* calibration_passes::group_of(const weight_job& job) {
  const auto found = group_index_.find(static_cast<std::size_t>(&job - jobs_.data()));
  return found == group_index_.end() ? nullptr : &groups_[found->second];
}

/// The group's joint scale search on the statistics of its shared input.
void calibration_passes::search(awq_group& g, const activation_stats& stats) {
  g.searched = true;
  if (stats.rows() == 0) return;  // no data reached it: unscaled (the job falls back to RTN)
  std::vector<xt::xtensor<float, 2>> ws;
  for (const std::size_t j : g.members)
    ws.push_back(logical_weight(m_, *jobs_[j].info, jobs_[j].alpha));
  int4q::awq_options o = options_.awq.scales;
  o.threads = options_.threads;
  const weight_job& first = jobs_[g.members.front()];
  try {
    g.result = int4q::search_awq_scales(stats.sample(), stats.mean_abs(), ws, first.config, o);
  } catch (const std::exception& e) {
    throw model_error(model_error::kind::invalid, "AWQ scale search for input '" + g.activation +
                                                      "' (weight '" + first.info->name +
                                                      "'): " + e.what());
  }
  adopt_search(g);
}

/// Whether the group's searched scales are used, and the reports' words when they are not.
void calibration_passes::adopt_search(awq_group& g) {
  g.active = !g.result.identity && std::any_of(g.result.scales.begin(), g.result.scales.end(),
                                               [](float v) { return v != 1.0f; });
  if (!g.active) {
    for (const std::size_t j : g.members)
      report_.tensors[jobs_[j].report_index].awq_fold = "none: RTN's loss was the lowest (s = 1)";
  }
}

/// diag(s) W for an AWQ group's member (the search runs on its first member's statistics,
/// `stats`; null once the group is searched).
void calibration_passes::scale_weight(weight_job& job, awq_group& g,
                                      const activation_stats* stats) {
  if (!g.searched) search(g, *stats);
  if (!g.active) return;
  const float* s = g.result.scales.data();
  xt::xtensor<float, 2>& lw = job.weight;
  for (std::size_t k = 0; k < lw.shape()[0]; ++k)
    for (std::size_t n = 0; n < lw.shape()[1]; ++n) lw(k, n) *= s[k];
}

bool calibration_passes::quantize(weight_job& job) {
  job.started = std::chrono::steady_clock::now();
  job.weight = logical_weight(m_, *job.info, job.alpha);
  if (journal_) {
    journaled_weight saved;
    if (journal_->restore(job, saved, report_.tensors[job.report_index])) {
      restore(job, saved);
      return true;
    }
  }
  quantize_fresh(job);
  if (journal_) {
    const awq_group* g = group_of(job);
    journal_->append(job, report_.tensors[job.report_index], g ? &g->result : nullptr);
  }
  return false;
}

/// A journaled weight: its group's AWQ search, its scaled weight, its codes and, sequential,
/// the runs taken past its node with its quantized values, as quantize_fresh left them.
void calibration_passes::restore(weight_job& job, journaled_weight& saved) {
  awq_group* g = group_of(job);
  if (g && !saved.has_awq) {
    throw option_error(model_error::kind::invalid, "resume.journal",
                       "`resume.journal`: weight '" + job.info->name +
                           "' was journaled without its AWQ scales; remove the journal to start "
                           "over");
  }
  if (g && !g->searched) {
    g->searched = true;
    g->result = std::move(saved.awq);
    if (g->result.scales.size() > 0) adopt_search(*g);  // else: no rows reached it
  }
  if (g) scale_weight(job, *g, nullptr);
  job.q = std::move(saved.q);
  job.q.config = job.config;
  if (!sequential_ || job.algo == method::rtn) return;
  sequential_->pass(*job.info);
  if (report_.tensors[job.report_index].calibration_rows > 0)
    sequential_->replace(*job.info,
                         stored_values(job, g && g->active ? g->result.scales.data() : nullptr));
}

void calibration_passes::quantize_fresh(weight_job& job) {
  if (job.algo == method::rtn) {
    try {
      job.q = int4q::quant_tensor(job.weight, job.config, quant_opts());
    } catch (const int4q::non_finite_error& e) {
      throw model_error(model_error::kind::invalid, "weight '" + job.info->name + "': " + e.what());
    }
    return;
  }
  awq_group* g = group_of(job);
  if (!g) {
    try {
      quantize_calibrated(job, statistics(*job.info));
    } catch (const int4q::non_finite_error& e) {
      throw model_error(model_error::kind::invalid, "weight '" + job.info->name + "': " + e.what());
    }
    return;
  }
  activation_stats stats = statistics(*job.info);
  scale_weight(job, *g, &stats);
  try {
    quantize_calibrated(job, std::move(stats));
  } catch (const int4q::non_finite_error& e) {
    throw model_error(model_error::kind::invalid, "weight '" + job.info->name + "': " + e.what());
  }
}

/// The job's method on its statistics (RTN when no data reached it); sequential: the quantized
/// values swapped into the runs for the weights after it.
void calibration_passes::quantize_calibrated(weight_job& job, activation_stats stats) {
  solve(job, stats);
  replace_in_runs(job);
}

/// Sequential: the job's quantized values (AWQ: divided by s again) replace the weight in the
/// runs for the weights after it; not when no rows reached it (its RTN fallback).
void calibration_passes::replace_in_runs(weight_job& job) {
  if (!sequential_ || report_.tensors[job.report_index].calibration_rows == 0) return;
  const awq_group* group = group_of(job);
  sequential_->replace(
      *job.info,
      stored_values(job, group && group->active ? group->result.scales.data() : nullptr));
}

/// The job's method on its statistics (RTN when no data reached it), without the replacement.
void calibration_passes::solve(weight_job& job, const activation_stats& stats) {
  tensor_report& r = report_.tensors[job.report_index];
  r.calibration_rows = stats.rows();
  if (stats.rows() == 0) {
    // A branch the data never took: no activations to weigh the error with.
    r.method = "rtn";
    r.reason = "no calibration rows reached it (a branch the data never took): RTN";
    job.q = int4q::quant_tensor(job.weight, job.config, quant_opts());
    return;
  }
  r.method = to_string(job.algo);
  const awq_group* group = group_of(job);
  const float* s = group && group->active ? group->result.scales.data() : nullptr;
  if (group && group->searched && group->result.scales.size() > 0) {
    r.awq_alpha = group->result.identity ? 0.0 : group->result.alpha;
    r.awq_loss = group->result.loss;
    r.awq_rtn_loss = group->result.rtn_loss;
  }
  job.q = run_method(job, stats, s, r);
}

int4q::quantized<float> calibration_passes::run_method(weight_job& job,
                                                       const activation_stats& stats,
                                                       const float* s, tensor_report& r) {
  try {
    if (needs_hessian(job.algo)) return run_gptq(job, stats, s, r);
    if (job.algo == method::awq_lite)
      return int4q::quant_tensor(job.weight, job.config, quant_opts());
    return run_awq_clip(job, stats, s, r);
  } catch (const int4q::non_finite_error&) {
    throw;  // quantize() names the weight
  } catch (const std::exception& e) {
    throw model_error(
        model_error::kind::invalid,
        std::string(to_string(job.algo)) + " on weight '" + job.info->name + "': " + e.what());
  }
}

/// GPTQ on H = X^T X (AWQ: the Hessian of x / s, H[a][b] / (s[a] s[b])).
int4q::quantized<float> calibration_passes::run_gptq(const weight_job& job,
                                                     const activation_stats& stats, const float* s,
                                                     tensor_report& r) const {
  // GPTQ reads H's upper triangle: in place (no K x K copy) unless AWQ scaled x.
  xt::xtensor<double, 2> scaled;
  if (s) {
    scaled = stats.hessian();
    for (std::size_t a = 0; a < scaled.shape()[0]; ++a)
      for (std::size_t b = 0; b < scaled.shape()[1]; ++b)
        scaled(a, b) /= static_cast<double>(s[a]) * static_cast<double>(s[b]);
  }
  int4q::gptq_options go = options_.gptq;
  go.threads = options_.threads;  // the same result for any count
  auto result = s ? int4q::gptq(job.weight, scaled, job.config, go)
                  : int4q::gptq(job.weight, stats.hessian_upper(), job.config, go);
  r.hessian_loss = result.report.loss;
  r.rtn_hessian_loss = result.report.rtn_loss;
  r.damp_retries = result.report.retries;
  return std::move(result.q);
}

/// awq_clip, awq_full: the clip search on the sampled x (awq_full: x / s, W scaled).
int4q::quantized<float> calibration_passes::run_awq_clip(const weight_job& job,
                                                         const activation_stats& stats,
                                                         const float* s, tensor_report& r) const {
  xt::xtensor<float, 2> x = stats.sample();
  if (s) {
    for (std::size_t t = 0; t < x.shape()[0]; ++t)
      for (std::size_t k = 0; k < x.shape()[1]; ++k) x(t, k) /= s[k];
  }
  int4q::awq_clip_options co = options_.awq.clip;
  co.threads = options_.threads;
  const auto clip = int4q::search_awq_clip(x, job.weight, job.config, co);
  r.clip_loss = clip.loss;
  r.clip_rtn_loss = clip.loss_at_max;
  return int4q::quant_tensor(job.weight, job.config, clip.ratios, quant_opts());
}

/// The weight's statistics: sequential from the paused runs; parallel from its pass (run now,
/// after a rewind, when the weight is the first of its pass to be asked for).
activation_stats calibration_passes::statistics(const weight_info& w) {
  if (sequential_) return sequential_->stats_for(w);
  if (!parallel_.count(w.name)) {
    if (passes_run_ > 0) options_.calibration.rewind();
    ++passes_run_;
    parallel_ =
        collect_activation_stats(m_, passes_[pass_of_.at(&w)], options_.calibration.data, co_);
  }
  const auto it = parallel_.find(w.name);
  activation_stats s = std::move(it->second);
  parallel_.erase(it);  // memory: freed as the weights are done
  return s;
}

// ---- distributed runs ---------------------------------------------------------------------

namespace {

/// Owners of `costs.size()` units on `ranks` ranks: the longest first, each to the rank with the
/// least work so far (the lowest on ties). The same on every rank: it reads only the costs.
std::vector<int> assign_owners(const std::vector<double>& costs, int ranks) {
  std::vector<std::size_t> by_cost(costs.size());
  std::iota(by_cost.begin(), by_cost.end(), std::size_t(0));
  std::stable_sort(by_cost.begin(), by_cost.end(),
                   [&](std::size_t a, std::size_t b) { return costs[a] > costs[b]; });
  std::vector<double> load(static_cast<std::size_t>(ranks), 0.0);
  std::vector<int> owner(costs.size(), 0);
  for (const std::size_t u : by_cost) {
    const auto least = std::min_element(load.begin(), load.end()) - load.begin();
    owner[u] = static_cast<int>(least);
    load[static_cast<std::size_t>(least)] += costs[u];
  }
  return owner;
}

template <class T>
void broadcast_tensor(communicator& comm, xt::xtensor<T, 2>& t, int root) {
  std::array<std::uint64_t, 2> shape{t.shape()[0], t.shape()[1]};
  comm.broadcast(shape.data(), sizeof shape, root);
  if (comm.rank() != root) t = xt::xtensor<T, 2>::from_shape({shape[0], shape[1]});
  if (t.size() > 0) comm.broadcast(t.data(), t.size() * sizeof(T), root);
}

}  // namespace

std::string calibration_passes::set_key(const weight_job& job) const {
  if (job.algo == method::rtn) return {};
  if (sequential_) {
    const int first = first_main_graph_use(*job.info);
    if (first == std::numeric_limits<int>::max()) return {};  // subgraph-only: alone
    return "input:" + m_.proto.graph().node(first).input(0);
  }
  return "pass:" + std::to_string(pass_of_.at(job.info));
}

std::size_t calibration_passes::set_end(std::size_t first) const {
  const std::string key = set_key(jobs_[order_[first]]);
  std::size_t last = first + 1;
  if (key.empty()) return last;
  while (last < order_.size() && set_key(jobs_[order_[last]]) == key) ++last;
  return last;
}

/// The owner's search result of group g to every rank.
void calibration_passes::share_search(awq_group& g, int owner) {
  communicator& comm = *options_.comm;
  std::vector<float> scales(g.result.scales.begin(), g.result.scales.end());
  broadcast_vector(comm, scales, owner);
  std::array<double, 4> v{g.result.alpha, g.result.identity ? 1.0 : 0.0, g.result.loss,
                          g.result.rtn_loss};
  comm.broadcast(v.data(), sizeof v, owner);
  if (comm.rank() == owner) return;
  g.searched = true;
  g.result.scales = xt::adapt(scales, {scales.size()});
  g.result.alpha = v[0];
  g.result.identity = v[1] != 0.0;
  g.result.loss = v[2];
  g.result.rtn_loss = v[3];
  if (g.result.scales.size() > 0) adopt_search(g);  // else: no rows reached it (as search())
}

/// The owner's codes, scales, zero points and report fields of `job` to every rank.
void calibration_passes::share_result(weight_job& job, int owner) {
  communicator& comm = *options_.comm;
  broadcast_tensor(comm, job.q.codes, owner);
  broadcast_tensor(comm, job.q.scales, owner);
  broadcast_tensor(comm, job.q.zero_points, owner);
  tensor_report& r = report_.tensors[job.report_index];
  std::string fields = comm.rank() == owner ? report_fields(r).dump() : std::string();
  broadcast_string(comm, fields, owner);
  if (comm.rank() == owner) return;
  job.q.config = job.config;
  restore_report_fields(nlohmann::json::parse(fields), r);
}

void calibration_passes::quantize_set(std::size_t first, std::size_t last) {
  communicator& comm = *options_.comm;
  const int me = comm.rank();
  std::vector<weight_job*> set;
  for (std::size_t i = first; i < last; ++i) set.push_back(&jobs_[order_[i]]);
  for (weight_job* job : set) {
    job->started = std::chrono::steady_clock::now();
    job->weight = logical_weight(m_, *job->info, job->alpha);
  }
  if (set.front()->algo == method::rtn) {  // alone; cheap: every rank quantizes it
    quantize_fresh(*set.front());
    return;
  }
  // 1. Statistics on every rank (collectives): sequential, the set shares one input, computed
  // for its first weight (stats_for would hand the others the same values); parallel, its pass.
  std::vector<activation_stats> held;
  std::vector<const activation_stats*> stats;
  if (sequential_) {
    held.push_back(statistics(*set.front()->info));
    stats.assign(set.size(), &held.front());
  } else {
    held.reserve(set.size());
    for (weight_job* job : set) {
      held.push_back(statistics(*job->info));
      stats.push_back(&held.back());
    }
  }
  // 2. The AWQ searches of the groups first met here, divided among the ranks.
  std::vector<std::pair<awq_group*, std::size_t>> searches;  // group, member in the set
  for (std::size_t i = 0; i < set.size(); ++i) {
    awq_group* g = group_of(*set[i]);
    if (!g || g->searched) continue;
    if (std::none_of(searches.begin(), searches.end(), [&](const auto& s) { return s.first == g; }))
      searches.emplace_back(g, i);
  }
  std::vector<double> costs;
  for (const auto& s : searches) {
    const weight_info& w = *set[s.second]->info;
    costs.push_back(weight_cost(w.k, w.n, method::awq_lite, stats[s.second]->rows(), options_.awq));
  }
  const std::vector<int> search_owner = assign_owners(costs, comm.size());
  for (std::size_t u = 0; u < searches.size(); ++u)
    if (search_owner[u] == me) search(*searches[u].first, *stats[searches[u].second]);
  for (std::size_t u = 0; u < searches.size(); ++u)
    share_search(*searches[u].first, search_owner[u]);
  for (weight_job* job : set)
    if (awq_group* g = group_of(*job)) scale_weight(*job, *g, nullptr);
  // 3. The solves, divided among the ranks, then every result to every rank.
  costs.clear();
  for (std::size_t i = 0; i < set.size(); ++i) {
    const weight_info& w = *set[i]->info;
    costs.push_back(weight_cost(w.k, w.n, set[i]->algo, stats[i]->rows(), options_.awq));
  }
  const std::vector<int> owner = assign_owners(costs, comm.size());
  for (std::size_t i = 0; i < set.size(); ++i) {
    if (owner[i] != me) continue;
    try {
      solve(*set[i], *stats[i]);
    } catch (const int4q::non_finite_error& e) {
      throw model_error(model_error::kind::invalid,
                        "weight '" + set[i]->info->name + "': " + e.what());
    }
  }
  for (std::size_t i = 0; i < set.size(); ++i) share_result(*set[i], owner[i]);
  // 4. Sequential: every rank's runs go on with the quantized values, weight by weight, as
  // quantize() makes them go (the runs pass each weight's node with the earlier ones replaced).
  if (!sequential_) return;
  for (std::size_t i = 0; i < set.size(); ++i) {
    weight_job& job = *set[i];
    if (i > 0) sequential_->pass(*job.info);
    replace_in_runs(job);
  }
}
int4q::quant_options calibration_passes::quant_opts() const {
  int4q::quant_options qo;
  qo.threads = options_.threads;
  return qo;
}

std::vector<awq_fold_plan> calibration_passes::fold_plans() {
  std::vector<awq_fold_plan> plans;
  std::set<std::string> frozen;
  for (const weight_job& job : jobs_) frozen.insert(job.info->name);
  for (awq_group& g : groups_) {
    if (!g.active) continue;
    std::vector<int> consumers;
    for (const std::size_t j : g.members)
      consumers.push_back(jobs_[j].info->uses.front().node_index);
    std::vector<double> s(g.result.scales.begin(), g.result.scales.end());
    plans.push_back(
        plan_awq_fold(m_, g.activation, consumers, s, jobs_[g.members.front()].info->type, frozen));
    for (const std::size_t j : g.members)
      report_.tensors[jobs_[j].report_index].awq_fold = plans.back().description();
  }
  return plans;
}

}  // namespace detail
}  // namespace onnx
}  // namespace int4q
