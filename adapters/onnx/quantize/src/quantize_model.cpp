// quantize_model: checks everything, quantizes every selected weight into new tensors, and only
// then edits the graph, so that any error leaves the model as it was.
#include <int4q/onnx/quantize_model.hpp>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <numeric>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <int4q/awq.hpp>
#include <int4q/dequant.hpp>
#include <int4q/onnx/awq_fold.hpp>
#include <int4q/onnx/opset.hpp>
#include <int4q/onnx/temp_files.hpp>
#include <int4q/quantize.hpp>

#include "awq_fold_detail.hpp"
#include "writers.hpp"

namespace int4q {
namespace onnx {

namespace {

/// quantize_options::spill_file: appends tensor payloads to the scratch file (64-byte aligned)
/// and turns the tensors into external references to it.
class spill_writer {
 public:
  spill_writer(const std::filesystem::path& file, std::size_t min_bytes)
      : path_(std::filesystem::absolute(file)), min_bytes_(min_bytes) {
    // Opened (created when the caller has not made it) inside a section: a signal handler
    // removing the registered temporary files either finds it or has closed the table, and
    // then nothing is created behind it.
    const temp_file_section section;
    if (section.allowed()) out_.open(path_, std::ios::binary | std::ios::trunc);
    if (!out_.is_open() || !out_) fail();
  }

  void spill(std::vector<::onnx::TensorProto>& tensors) {
    static const char zeros[64] = {};
    for (::onnx::TensorProto& t : tensors) {
      if (!t.has_raw_data() || t.raw_data().size() < min_bytes_) continue;
      const std::uint64_t pad = (64 - offset_ % 64) % 64;
      out_.write(zeros, static_cast<std::streamsize>(pad));
      offset_ += pad;
      const std::string& raw = t.raw_data();
      out_.write(raw.data(), static_cast<std::streamsize>(raw.size()));
      if (!out_) fail();
      auto entry = [&t](const char* key, const std::string& value) {
        auto* e = t.add_external_data();
        e->set_key(key);
        e->set_value(value);
      };
      entry("location", location());
      entry("offset", std::to_string(offset_));
      entry("length", std::to_string(raw.size()));
      offset_ += raw.size();
      std::string().swap(*t.mutable_raw_data());  // frees the buffer (clear() would keep it)
      t.clear_raw_data();
      t.set_data_location(::onnx::TensorProto::EXTERNAL);
    }
    out_.flush();  // save_model reads the file by name
    if (!out_) fail();
  }

  std::string location() const { return path_.filename().string(); }
  const std::filesystem::path& path() const { return path_; }

 private:
  [[noreturn]] void fail() const {
    throw model_error(model_error::kind::io, "cannot write the scratch file '" + path_.string() +
                                                 "' (" + std::strerror(errno) +
                                                 "): check the free space of its directory");
  }
  std::filesystem::path path_;
  std::size_t min_bytes_;
  std::ofstream out_;
  std::uint64_t offset_ = 0;
};

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

/// The logical weight W[K, N] times Gemm alpha, read as build_tensors reads it (writers.cpp).
xt::xtensor<float, 2> logical_weight_of(const model& m, const detail::weight_job& job) {
  const weight_info& w = *job.info;
  const ::onnx::TensorProto* t =
      detail::constant_tensor(graph_at(m.proto.graph(), w.defined_in), w.name);
  if (!t) throw model_error(model_error::kind::invalid, "weight '" + w.name + "' is not constant");
  xt::xtensor<float, 2> stored = read_matrix(m, *t);
  xt::xtensor<float, 2> lw =
      w.uses.front().trans_b ? xt::xtensor<float, 2>(xt::transpose(stored)) : std::move(stored);
  if (job.alpha != 1.0f)
    for (auto& v : lw) v *= job.alpha;
  return lw;
}

/// The calibrated methods' side of quantize_model: the order weights are quantized in, their
/// activation statistics (sequential: paused runs; parallel: one pass up front), and each
/// job's quantize function (GPTQ or AWQ on the statistics, then, sequentially, the quantized
/// values swapped into the runs for the weights after it).
///
/// AWQ scaling: the jobs whose one use reads the same main-graph input form a group (one
/// group per job without per_subgraph); the group's scales are searched when its first member
/// is quantized (its statistics are those of the shared input), every member is quantized as
/// diag(s) W (job.scale_weight, so the writers measure and store the scaled weight), and
/// fold_plans() says where each group's 1/s goes once all weights are done.
class calibration {
 public:
  std::vector<std::size_t> order;  ///< indices into jobs, in the order to quantize them

  calibration(const model& m, const quantize_options& options,
              std::vector<detail::weight_job>& jobs, quantize_report& report)
      : m_(m), options_(options), report_(report), jobs_(jobs) {
    order.resize(jobs.size());
    std::iota(order.begin(), order.end(), std::size_t(0));
    std::vector<const weight_info*> calibrated;
    const detail::weight_job* first = nullptr;
    bool hessian = false, awq = false;
    for (const detail::weight_job& job : jobs) {
      if (job.algo == method::rtn) continue;
      calibrated.push_back(job.info);
      if (!first) first = &job;
      hessian = hessian || needs_hessian(job.algo);
      awq = awq || is_awq(job.algo);
    }
    if (calibrated.empty()) return;
    if (!options.calibration.data) {
      throw model_error(model_error::kind::invalid,
                        std::string("method ") + to_string(first->algo) + " (weight '" +
                            first->info->name +
                            "') needs calibration data: give the model inputs "
                            "(`calibration.data`)");
    }
    if (awq) check_awq_options();
    group_awq_jobs();
    collect_options co;
    co.stats.hessian = hessian;
    co.stats.sample_rows = awq ? options.awq.samples : 0;
    co.threads = options.threads;
    if (options.calibration.mode == calibration_mode::sequential) {
      // Graph order of the first main-graph use (weights only in subgraphs last): the paused
      // runs only go forward.
      auto first_use = [](const weight_info& w) {
        int earliest = std::numeric_limits<int>::max();
        for (const weight_use& u : w.uses)
          if (u.path.empty()) earliest = std::min(earliest, u.node_index);
        return earliest;
      };
      std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
        return first_use(*jobs[a].info) < first_use(*jobs[b].info);
      });
      sequential_ =
          std::make_unique<sequential_calibration>(m, calibrated, options.calibration.data, co);
    } else {
      // Passes over the data, each for the next weights (in the order they are quantized) whose
      // statistics fit in the budget: statistics(w) runs one when w's are not there yet.
      co_ = co;
      for (const std::size_t i : order)
        if (jobs[i].algo != method::rtn) pending_.push_back(jobs[i].info);
    }
  }

  /// Sets job.quantize (and, for AWQ scaling, job.scale_weight) for a calibrated job.
  void prepare(detail::weight_job& job) {
    if (job.algo == method::rtn) return;
    const std::size_t index = static_cast<std::size_t>(&job - jobs_.data());
    const auto g = group_of_.find(index);
    if (g != group_of_.end()) {
      const std::size_t gi = g->second;
      job.scale_weight = [this, &job, gi](xt::xtensor<float, 2>& lw) {
        current_ = std::make_unique<activation_stats>(statistics(*job.info));
        awq_group& group = groups_[gi];
        if (!group.searched) search(group, *current_);
        if (!group.active) return;
        const float* s = group.result.scales.data();
        for (std::size_t k = 0; k < lw.shape()[0]; ++k)
          for (std::size_t n = 0; n < lw.shape()[1]; ++n) lw(k, n) *= s[k];
      };
    }
    job.quantize = [this, &job, index](const xt::xtensor<float, 2>& lw) {
      tensor_report& r = report_.tensors[job.report_index];
      activation_stats stats = current_ ? std::move(*current_) : statistics(*job.info);
      current_.reset();
      r.calibration_rows = stats.rows();
      int4q::quant_options qo;
      qo.threads = options_.threads;
      if (stats.rows() == 0) {
        // A branch the data never took: no activations to weigh the error with.
        r.method = "rtn";
        r.reason = "no calibration rows reached it (a branch the data never took): RTN";
        return int4q::quant_tensor(lw, job.config, qo);
      }
      r.method = to_string(job.algo);
      const awq_group* group = nullptr;
      const auto found = group_of_.find(index);
      if (found != group_of_.end()) group = &groups_[found->second];
      const float* s = group && group->active ? group->result.scales.data() : nullptr;
      if (group && group->searched && group->result.scales.size() > 0) {
        r.awq_alpha = group->result.identity ? 0.0 : group->result.alpha;
        r.awq_loss = group->result.loss;
        r.awq_rtn_loss = group->result.rtn_loss;
      }
      quantized<float> q;
      try {
        if (needs_hessian(job.algo)) {
          // GPTQ reads H's upper triangle: in place (no K x K copy) unless AWQ scaled x.
          xt::xtensor<double, 2> scaled;
          if (s) {  // the Hessian of x / s
            scaled = stats.hessian();
            for (std::size_t a = 0; a < scaled.shape()[0]; ++a)
              for (std::size_t b = 0; b < scaled.shape()[1]; ++b)
                scaled(a, b) /= static_cast<double>(s[a]) * static_cast<double>(s[b]);
          }
          auto result = s ? int4q::gptq(lw, scaled, job.config, options_.gptq)
                          : int4q::gptq(lw, stats.hessian_upper(), job.config, options_.gptq);
          r.hessian_loss = result.report.loss;
          r.rtn_hessian_loss = result.report.rtn_loss;
          r.damp_retries = result.report.retries;
          q = std::move(result.q);
        } else if (job.algo == method::awq_lite) {
          q = int4q::quant_tensor(lw, job.config, qo);
        } else {  // awq_clip, awq_full: the clip search on x (awq_full: x / s, W scaled)
          xt::xtensor<float, 2> x = stats.sample();
          if (s) {
            for (std::size_t t = 0; t < x.shape()[0]; ++t)
              for (std::size_t k = 0; k < x.shape()[1]; ++k) x(t, k) /= s[k];
          }
          int4q::awq_clip_options co = options_.awq.clip;
          co.threads = options_.threads;
          const auto clip = int4q::search_awq_clip(x, lw, job.config, co);
          r.clip_loss = clip.loss;
          r.clip_rtn_loss = clip.loss_at_max;
          q = int4q::quant_tensor(lw, job.config, clip.ratios, qo);
        }
      } catch (const int4q::non_finite_error&) {
        throw;  // build_tensors names the weight
      } catch (const std::exception& e) {
        throw model_error(
            model_error::kind::invalid,
            std::string(to_string(job.algo)) + " on weight '" + job.info->name + "': " + e.what());
      }
      if (sequential_) sequential_->replace(*job.info, stored_values(*job.info, job, q, s));
      return q;
    };
  }

  /// Where each scaled group's 1/s goes (reads the model only; call after every weight is
  /// quantized); records it in the members' reports.
  std::vector<awq_fold_plan> fold_plans() {
    std::vector<awq_fold_plan> plans;
    std::set<std::string> frozen;
    for (const detail::weight_job& job : jobs_) frozen.insert(job.info->name);
    for (awq_group& g : groups_) {
      if (!g.active) continue;
      std::vector<int> consumers;
      for (const std::size_t j : g.members)
        consumers.push_back(jobs_[j].info->uses.front().node_index);
      std::vector<double> s(g.result.scales.begin(), g.result.scales.end());
      plans.push_back(plan_awq_fold(m_, g.activation, consumers, s,
                                    jobs_[g.members.front()].info->type, frozen));
      for (const std::size_t j : g.members)
        report_.tensors[jobs_[j].report_index].awq_fold = plans.back().description();
    }
    return plans;
  }

 private:
  struct awq_group {
    std::string activation;            ///< the shared input x
    std::vector<std::size_t> members;  ///< job indices
    bool searched = false;
    bool active = false;  ///< scales found and not all 1: the weights are scaled, 1/s folded
    int4q::awq_scales<float> result;
  };

  void check_awq_options() const {
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
      throw model_error(
          model_error::kind::invalid,
          std::string("AWQ options: ") + e.what() +
              " (`awq.scales.alpha_step`, `awq.clip.clip_step`, `awq.clip.clip_min`)");
    }
  }

  /// The scaled AWQ jobs by shared input (and grid); the others get the reason in the report.
  void group_awq_jobs() {
    std::map<std::string, std::vector<std::size_t>> by_input;
    for (std::size_t i = 0; i < jobs_.size(); ++i) {
      const detail::weight_job& job = jobs_[i];
      if (!awq_scales_weight(job.algo)) continue;
      const weight_info& w = *job.info;
      tensor_report& r = report_.tensors[job.report_index];
      if (w.uses.size() != 1 || !w.uses.front().path.empty()) {
        r.awq_fold = "none: AWQ scales a weight with one use in the main graph only (this one " +
                     std::string(w.uses.size() != 1 ? "is shared" : "is in a subgraph") +
                     "); quantized unscaled";
        continue;
      }
      const ::onnx::NodeProto& node = m_.proto.graph().node(w.uses.front().node_index);
      const std::string& x = node.input(0);
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
      group_of_[i] = gi;
    }
  }

  /// The group's joint scale search on the statistics of its shared input.
  void search(awq_group& g, const activation_stats& stats) {
    g.searched = true;
    if (stats.rows() == 0) return;  // no data reached it: unscaled (the job falls back to RTN)
    std::vector<xt::xtensor<float, 2>> ws;
    for (const std::size_t j : g.members) ws.push_back(logical_weight_of(m_, jobs_[j]));
    int4q::awq_options o = options_.awq.scales;
    o.threads = options_.threads;
    const detail::weight_job& first = jobs_[g.members.front()];
    try {
      g.result = int4q::search_awq_scales(stats.sample(), stats.mean_abs(), ws, first.config, o);
    } catch (const std::exception& e) {
      throw model_error(model_error::kind::invalid, "AWQ scale search for input '" + g.activation +
                                                        "' (weight '" + first.info->name +
                                                        "'): " + e.what());
    }
    g.active = !g.result.identity;
    if (g.active) {
      bool all_one = true;
      for (const float v : g.result.scales) all_one = all_one && v == 1.0f;
      g.active = !all_one;
    }
    if (!g.active) {
      for (const std::size_t j : g.members)
        report_.tensors[jobs_[j].report_index].awq_fold = "none: RTN's loss was the lowest (s = 1)";
    }
  }

  /// Bytes of one weight's statistics.
  std::uint64_t stats_bytes(const weight_info& w) const {
    const std::uint64_t k = w.k;
    return (co_.stats.hessian ? k * k * 8 : 0) + co_.stats.sample_rows * k * 4 + k * 24;
  }

  /// One pass over the data for the pending weights from `w` on that fit in the budget (all of
  /// them when the data cannot be rewound).
  void parallel_pass(const weight_info& w) {
    const calibration_options& c = options_.calibration;
    std::vector<const weight_info*> batch;
    std::uint64_t bytes = 0;
    bool started = false;
    for (const weight_info* p : pending_) {
      started = started || p == &w;
      if (!started || done_.count(p)) continue;
      if (!batch.empty() && c.rewind && bytes + stats_bytes(*p) > c.parallel_stats_bytes) break;
      batch.push_back(p);
      bytes += stats_bytes(*p);
    }
    if (passes_ > 0) {
      if (!c.rewind)
        throw model_error(model_error::kind::invalid,
                          "parallel calibration needs a second pass over the data but cannot "
                          "start it over (calibration_options::rewind)");
      c.rewind();
    }
    ++passes_;
    for (const weight_info* p : batch) done_.insert(p);
    auto stats = collect_activation_stats(m_, batch, c.data, co_);
    for (auto& [name, s] : stats) parallel_.emplace(name, std::move(s));
  }

  activation_stats statistics(const weight_info& w) {
    if (sequential_) return sequential_->stats_for(w);
    if (!parallel_.count(w.name)) parallel_pass(w);
    const auto it = parallel_.find(w.name);
    activation_stats s = std::move(it->second);
    parallel_.erase(it);  // memory: freed as the weights are done
    return s;
  }

  /// The dequantized weight in the tensor's stored layout and scale: what the float model's
  /// node must multiply with to compute what the quantized node will ([N, K] for Gemm transB,
  /// Gemm alpha divided out again; AWQ: row k divided by s[k], the node's input being x / s).
  static value stored_values(const weight_info& w, const detail::weight_job& job,
                             const quantized<float>& q, const float* s) {
    const xt::xtensor<float, 2> d = int4q::dequant(q);  // [K, N], alpha folded in
    const bool trans = w.uses.front().trans_b;
    const std::size_t K = w.k, N = w.n;
    std::vector<float> v(K * N);
    for (std::size_t k = 0; k < K; ++k) {
      for (std::size_t n = 0; n < N; ++n) {
        const float x = s ? d(k, n) / s[k] : d(k, n);
        v[trans ? n * K + k : k * N + n] = x / job.alpha;
      }
    }
    return value::floats(trans ? shape_t{std::int64_t(N), std::int64_t(K)}
                               : shape_t{std::int64_t(K), std::int64_t(N)},
                         std::move(v));
  }

  using shape_t = std::vector<std::int64_t>;
  const model& m_;
  const quantize_options& options_;
  quantize_report& report_;
  std::vector<detail::weight_job>& jobs_;
  std::unique_ptr<sequential_calibration> sequential_;
  std::map<std::string, activation_stats> parallel_;
  collect_options co_;
  std::vector<const weight_info*> pending_;  ///< parallel: calibrated weights, in order
  std::set<const weight_info*> done_;        ///< parallel: statistics collected (or held)
  std::size_t passes_ = 0;
  std::vector<awq_group> groups_;
  std::map<std::size_t, std::size_t> group_of_;  ///< job index -> group
  /// The statistics scale_weight fetched for the job being quantized (its quantize uses them).
  std::unique_ptr<activation_stats> current_;
};

}  // namespace

quantize_report quantize_model(model& m, const quantize_options& options) {
  const auto start = std::chrono::steady_clock::now();

  // 1. Options, regexes and overrides (throws before anything else).
  const detail::compiled_selection selection = detail::validate_options(options);

  // 2. What each weight gets.
  const std::vector<weight_info> weights = find_weights(m);
  quantize_report report;
  report.config = detail::options_json(options);
  std::vector<detail::weight_job> jobs;
  for (const weight_info& w : weights) {
    tensor_report r;
    r.weight = w.name;
    for (const auto& u : w.uses) r.nodes.push_back(display_name(u));
    r.k = w.k;
    r.n = w.n;
    r.bytes_before = w.k * w.n * elem_size(w.type);
    const detail::weight_choice choice = detail::choose(w, options, selection);
    r.reason = choice.reason;
    if (choice.quantize) {
      detail::weight_job job;
      job.info = &w;
      job.config = choice.config;
      job.algo = choice.algo;
      r.reason = detail::plan_writes(m, w, options.format, job);
      if (r.reason.empty()) {
        job.report_index = report.tensors.size();
        jobs.push_back(std::move(job));
      }
    }
    r.bytes_after = r.bytes_before;  // until quantized
    report.tensors.push_back(std::move(r));
  }

  // 3. DequantizeLinear-21 needs opset 21: refuse now if the model cannot be raised.
  // Embedding tables (--embeddings quantize; tied lm_heads share them).
  const std::vector<embedding_info> tables = find_embeddings(m);
  std::vector<detail::embedding_job> emb_jobs =
      detail::plan_embeddings(m, options, selection, tables, report);

  const bool raise_opset =
      options.format == output_format::qdq && (!jobs.empty() || !emb_jobs.empty());
  if (raise_opset) check_opset_upgrade_to_21(m.proto);

  // 4. Quantize and pack every weight into new tensors (the model is only read).
  detail::name_set names(m.proto);
  const auto references = detail::count_references(m.proto.graph());
  std::optional<spill_writer> spill;
  if (!options.spill_file.empty() && !jobs.empty())
    spill.emplace(options.spill_file, options.spill_min_bytes);
  calibration cal(m, options, jobs, report);
  for (std::size_t step = 0; step < jobs.size(); ++step) {
    const std::size_t i = cal.order[step];
    detail::weight_job& job = jobs[i];
    cal.prepare(job);
    detail::build_tensors(m, options, job, names, report.tensors[job.report_index], references);
    if (spill) spill->spill(job.tensors);  // memory: one weight's new tensors at a time
    if (options.on_progress) options.on_progress(step + 1, jobs.size(), job.info->name);
  }
  detail::build_embeddings(m, options, emb_jobs, names, report);
  // Where each AWQ scale's 1/s goes (reads the model; may still throw).
  const std::vector<awq_fold_plan> folds = cal.fold_plans();

  // 5. Edit the graph (cannot fail from here on).
  if (spill) {
    m.spill_location = spill->location();
    m.spill_path = spill->path();
  }
  std::vector<::onnx::NodeProto> awq_muls = detail::fold_awq_constants(m, folds, names);
  detail::rewrite_graph(m, options, jobs, names);
  detail::insert_awq_muls(m, awq_muls);
  detail::rewrite_embeddings(m, options, emb_jobs, names);
  if (raise_opset) upgrade_opset_to_21(m.proto);

  for (const tensor_report& r : report.tensors) {
    report.weights_quantized += r.quantized ? 1 : 0;
    report.bytes_before += r.bytes_before;
    report.bytes_after += r.bytes_after;
  }
  for (const embedding_report& e : report.embeddings) {
    report.bytes_before += e.tensor.bytes_before;
    report.bytes_after += e.tensor.bytes_after;
  }
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

}  // namespace onnx
}  // namespace int4q
