// quantize_model: checks everything, quantizes every selected weight into new tensors, and only
// then edits the graph, so that any error leaves the model as it was.
#include <int4q/onnx/quantize_model.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <int4q/onnx/awq_fold.hpp>
#include <int4q/onnx/opset.hpp>
#include <int4q/onnx/option_error.hpp>
#include <int4q/onnx/temp_files.hpp>

#include "awq_fold_detail.hpp"
#include "block_tuning.hpp"
#include "calibration_passes.hpp"
#include "resume_journal.hpp"
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

/// What each weight gets: a report entry per weight, a job per weight to quantize.
std::vector<detail::weight_job> plan_jobs(const model& m, const quantize_options& options,
                                          const detail::compiled_selection& selection,
                                          const std::vector<weight_info>& weights,
                                          quantize_report& report) {
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
        r.constant_path = detail::describe_path(m, w);
        job.report_index = report.tensors.size();
        jobs.push_back(std::move(job));
      }
    }
    r.bytes_after = r.bytes_before;  // until quantized
    report.tensors.push_back(std::move(r));
  }
  return jobs;
}

/// The progress after the weight at `step` of the passes' order is done; the cost model's rows
/// are those the first calibrated weight saw.
void report_progress(const quantize_options& options, const detail::calibration_passes& cal,
                     const std::vector<detail::weight_job>& jobs, const quantize_report& report,
                     std::size_t step, bool restored, double seconds, quantize_progress& p) {
  std::size_t rows = 0;
  for (const tensor_report& r : report.tensors)
    if (rows == 0 && r.calibration_rows > 0) rows = r.calibration_rows;
  const detail::weight_job& job = jobs[cal.order()[step]];
  const weight_info& w = *job.info;
  p.done = step + 1;
  p.total = jobs.size();
  p.weight = w.name;
  p.layer = display_name(w.uses.front());
  p.restored += restored ? 1 : 0;
  p.seconds += restored ? 0.0 : seconds;
  p.cost_done = p.cost_total = 0;
  if (restored) p.cost_restored += weight_cost(w.k, w.n, job.algo, rows, options.awq);
  for (std::size_t i = 0; i < jobs.size(); ++i) {
    const detail::weight_job& j = jobs[cal.order()[i]];
    const double c = weight_cost(j.info->k, j.info->n, j.algo, rows, options.awq);
    p.cost_total += c;
    p.cost_done += i <= step ? c : 0.0;
  }
  options.on_progress(p);
}

/// Quantizes (calibration passes) and packs (writers) every weight into new tensors, one weight
/// at a time, in the passes' order (the model is only read). Returns the weights restored from
/// the resume journal.
std::size_t quantize_jobs(const model& m, const quantize_options& options,
                          detail::calibration_passes& cal, std::vector<detail::weight_job>& jobs,
                          detail::name_set& names, std::optional<spill_writer>& spill,
                          quantize_report& report) {
  const auto references = detail::count_references(m.proto.graph());
  quantize_progress progress;
  std::size_t restored = 0, journaled = 0;
  for (std::size_t step = 0; step < jobs.size(); ++step) {
    detail::weight_job& job = jobs[cal.order()[step]];
    const auto start = std::chrono::steady_clock::now();
    const bool from_journal = cal.quantize(job);  // sequential: before the runs go on
    restored += from_journal ? 1 : 0;
    detail::build_tensors(m, options, job, names, report.tensors[job.report_index], references);
    if (spill) spill->spill(job.tensors);  // memory: one weight's new tensors at a time
    if (options.on_progress) {
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      report_progress(options, cal, jobs, report, step, from_journal, seconds, progress);
    }
    if (!from_journal && ++journaled == options.resume.stop_after && step + 1 < jobs.size()) {
      throw resume_stopped(model_error::kind::io, "stopped after " + std::to_string(journaled) +
                                                      " weights journaled in '" +
                                                      options.resume.journal.string() +
                                                      "' (resume.stop_after, for tests)");
    }
  }
  return restored;
}

/// quantize_jobs for a distributed run (options.comm): the weights ready at the same point are
/// quantized together (their solves spread over the ranks), then packed one by one.
void quantize_jobs_distributed(const model& m, const quantize_options& options,
                               detail::calibration_passes& cal,
                               std::vector<detail::weight_job>& jobs, detail::name_set& names,
                               std::optional<spill_writer>& spill, quantize_report& report) {
  const auto references = detail::count_references(m.proto.graph());
  quantize_progress progress;
  for (std::size_t first = 0; first < jobs.size();) {
    const std::size_t last = cal.set_end(first);
    const auto start = std::chrono::steady_clock::now();
    cal.quantize_set(first, last);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    for (std::size_t step = first; step < last; ++step) {
      detail::weight_job& job = jobs[cal.order()[step]];
      // The report's seconds: an equal share of the set's time, then its own packing.
      job.started = std::chrono::steady_clock::now() -
                    std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                        std::chrono::duration<double>(seconds / double(last - first)));
      detail::build_tensors(m, options, job, names, report.tensors[job.report_index], references);
      if (spill) spill->spill(job.tensors);
      if (options.on_progress)
        report_progress(options, cal, jobs, report, step, false,
                        seconds / static_cast<double>(last - first), progress);
    }
    first = last;
  }
}

/// Method block: the blocks tune their weights in graph order (block_tuning.hpp), each packed
/// as soon as its block is done.
void quantize_block_jobs(const model& m, const quantize_options& options,
                         std::vector<detail::weight_job>& jobs, detail::name_set& names,
                         std::optional<spill_writer>& spill, quantize_report& report) {
  const auto references = detail::count_references(m.proto.graph());
  quantize_progress progress;
  progress.total = jobs.size();
  for (const detail::weight_job& j : jobs)
    progress.cost_total += weight_cost(j.info->k, j.info->n, j.algo, 0, options.awq);
  detail::tune_blocks(m, options, jobs, report, [&](std::size_t j, double seconds) {
    detail::weight_job& job = jobs[j];
    const weight_info& w = *job.info;
    detail::build_tensors(m, options, job, names, report.tensors[job.report_index], references);
    if (spill) spill->spill(job.tensors);  // memory: one weight's new tensors at a time
    if (!options.on_progress) return;
    progress.done += 1;
    progress.weight = w.name;
    progress.layer = display_name(w.uses.front());
    progress.seconds += seconds;
    progress.cost_done += weight_cost(w.k, w.n, job.algo, 0, options.awq);
    options.on_progress(progress);
  });
}

/// The report's totals: weights quantized, bytes before and after (embedding tables included).
void add_totals(quantize_report& report) {
  for (const tensor_report& r : report.tensors) {
    report.weights_quantized += r.quantized ? 1 : 0;
    report.bytes_before += r.bytes_before;
    report.bytes_after += r.bytes_after;
  }
  for (const embedding_report& e : report.embeddings) {
    report.bytes_before += e.tensor.bytes_before;
    report.bytes_after += e.tensor.bytes_after;
  }
}

}  // namespace

double weight_cost(std::size_t k, std::size_t n, method m, std::size_t rows,
                   const awq_settings& awq) {
  const double K = static_cast<double>(k), N = static_cast<double>(n);
  const double R = static_cast<double>(rows);
  double cost = 8 * K * N;
  if (m == method::rtn) return cost;
  cost += 2 * R * K * N;
  if (m == method::gptq || m == method::awq_gptq) cost += R * K * K + K * K * K + K * K * N;
  const double samples = static_cast<double>(std::min(rows, awq.samples));
  // Grid points: alphas 0, step, ..., alpha_max; ratios 1, 1 - step, ..., clip_min.
  const auto points = [](double span, double step) {
    return step > 0 ? std::floor(span / step + 1e-9) + 1 : 1.0;
  };
  if (m == method::awq_lite || m == method::awq_full || m == method::awq_gptq)
    cost += 2 * samples * K * N * points(awq.scales.alpha_max, awq.scales.alpha_step);
  if (m == method::awq_clip || m == method::awq_full)
    cost += 2 * samples * K * N * points(1.0 - awq.clip.clip_min, awq.clip.clip_step);
  return cost;
}

double eta_seconds(const quantize_progress& p) {
  const double fresh = p.cost_done - p.cost_restored;
  if (!(fresh > 0)) return std::numeric_limits<double>::quiet_NaN();
  return p.seconds / fresh * std::max(0.0, p.cost_total - p.cost_done);
}

quantize_report quantize_model(model& m, const quantize_options& options) {
  const auto start = std::chrono::steady_clock::now();

  // 1. Options, regexes and overrides (throws before anything else).
  const detail::compiled_selection selection = detail::validate_options(options);
  if (distributed(options.comm)) {
    if (!options.resume.journal.empty())
      throw option_error(model_error::kind::invalid, "resume.journal",
                         "`resume.journal` is for one process: a distributed run (" +
                             std::to_string(options.comm->size()) +
                             " ranks) cannot resume; run it without a journal");
    check_same_on_all_ranks(*options.comm, digest_of(detail::resume_fingerprint(m, options).dump()),
                            "the model (its graph) or the options");
  }

  // 2. What each weight gets.
  const std::vector<weight_info> weights = find_weights(m);
  quantize_report report;
  report.config = detail::options_json(options);
  std::vector<detail::weight_job> jobs = plan_jobs(m, options, selection, weights, report);

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
  std::optional<spill_writer> spill;
  if (!options.spill_file.empty() && !jobs.empty())
    spill.emplace(options.spill_file, options.spill_min_bytes);
  std::vector<awq_fold_plan> folds;
  if (std::any_of(jobs.begin(), jobs.end(),
                  [](const detail::weight_job& j) { return j.algo == method::block; })) {
    if (!options.resume.journal.empty())
      throw option_error(model_error::kind::invalid, "resume.journal",
                         "`resume.journal` is not implemented for method block: run it without "
                         "a journal");
    if (distributed(options.comm))
      throw option_error(model_error::kind::invalid, "comm",
                         "method block runs in one process: run it without MPI ranks");
    quantize_block_jobs(m, options, jobs, names, spill, report);
    detail::build_embeddings(m, options, emb_jobs, names, report);
  } else {
    // A journal of another run is refused before the calibration reads any data.
    std::optional<detail::resume_journal> journal;
    if (!options.resume.journal.empty() && !jobs.empty())
      journal.emplace(options.resume.journal, detail::resume_fingerprint(m, options));
    detail::calibration_passes cal(m, options, jobs, report);
    if (journal) cal.set_journal(&*journal);
    if (distributed(options.comm))
      quantize_jobs_distributed(m, options, cal, jobs, names, spill, report);
    else
      report.weights_resumed = quantize_jobs(m, options, cal, jobs, names, spill, report);
    detail::build_embeddings(m, options, emb_jobs, names, report);
    // Where each AWQ scale's 1/s goes (reads the model; may still throw).
    folds = cal.fold_plans();
  }

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

  add_totals(report);
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

}  // namespace onnx
}  // namespace int4q
