// quantize_model: checks everything, quantizes every selected weight into new tensors, and only
// then edits the graph, so that any error leaves the model as it was.
#include <int4q/onnx/quantize_model.hpp>

#include <chrono>
#include <string>
#include <vector>

#include <int4q/onnx/opset.hpp>

#include "writers.hpp"

namespace int4q {
namespace onnx {

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
  const bool raise_opset = options.format == output_format::qdq && !jobs.empty();
  if (raise_opset) check_opset_upgrade_to_21(m.proto);

  // 4. Quantize and pack every weight into new tensors (the model is only read).
  detail::name_set names(m.proto);
  const auto references = detail::count_references(m.proto.graph());
  for (std::size_t i = 0; i < jobs.size(); ++i) {
    detail::weight_job& job = jobs[i];
    detail::build_tensors(m, options, job, names, report.tensors[job.report_index], references);
    if (options.on_progress) options.on_progress(i + 1, jobs.size(), job.info->name);
  }

  // 5. Edit the graph (cannot fail from here on).
  detail::rewrite_graph(m, options, jobs, names);
  if (raise_opset) upgrade_opset_to_21(m.proto);

  for (const tensor_report& r : report.tensors) {
    report.weights_quantized += r.quantized ? 1 : 0;
    report.bytes_before += r.bytes_before;
    report.bytes_after += r.bytes_after;
  }
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

}  // namespace onnx
}  // namespace int4q
