// quantize_model: checks everything, quantizes every selected weight into new tensors, and only
// then edits the graph, so that any error leaves the model as it was.
#include <int4q/onnx/quantize_model.hpp>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <int4q/onnx/awq_fold.hpp>
#include <int4q/onnx/opset.hpp>
#include <int4q/onnx/temp_files.hpp>

#include "awq_fold_detail.hpp"
#include "calibration_passes.hpp"
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

/// Quantizes (calibration passes) and packs (writers) every weight into new tensors, one weight
/// at a time, in the passes' order (the model is only read).
void quantize_jobs(const model& m, const quantize_options& options, detail::calibration_passes& cal,
                   std::vector<detail::weight_job>& jobs, detail::name_set& names,
                   std::optional<spill_writer>& spill, quantize_report& report) {
  const auto references = detail::count_references(m.proto.graph());
  for (std::size_t step = 0; step < jobs.size(); ++step) {
    detail::weight_job& job = jobs[cal.order()[step]];
    cal.quantize(job);  // sequential: before the runs go on to the next weight
    detail::build_tensors(m, options, job, names, report.tensors[job.report_index], references);
    if (spill) spill->spill(job.tensors);  // memory: one weight's new tensors at a time
    if (options.on_progress) options.on_progress(step + 1, jobs.size(), job.info->name);
  }
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

quantize_report quantize_model(model& m, const quantize_options& options) {
  const auto start = std::chrono::steady_clock::now();

  // 1. Options, regexes and overrides (throws before anything else).
  const detail::compiled_selection selection = detail::validate_options(options);

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
  detail::calibration_passes cal(m, options, jobs, report);
  quantize_jobs(m, options, cal, jobs, names, spill, report);
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

  add_totals(report);
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

}  // namespace onnx
}  // namespace int4q
