// quantize_model: checks everything, quantizes every selected weight into new tensors, and only
// then edits the graph, so that any error leaves the model as it was.
#include <int4q/onnx/quantize_model.hpp>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <numeric>
#include <optional>
#include <string>
#include <vector>

#include <int4q/dequant.hpp>
#include <int4q/onnx/opset.hpp>
#include <int4q/quantize.hpp>

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
    out_.open(path_, std::ios::binary | std::ios::trunc);
    if (!out_) fail();
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

/// The calibrated methods' side of quantize_model: the order weights are quantized in, their
/// activation statistics (sequential: paused runs; parallel: one pass up front), and each
/// job's quantize function (GPTQ on the statistics, then, sequentially, the quantized values
/// swapped into the runs for the weights after it).
class calibration {
 public:
  std::vector<std::size_t> order;  ///< indices into jobs, in the order to quantize them

  calibration(const model& m, const quantize_options& options,
              std::vector<detail::weight_job>& jobs, quantize_report& report)
      : options_(options), report_(report) {
    order.resize(jobs.size());
    std::iota(order.begin(), order.end(), std::size_t(0));
    std::vector<const weight_info*> calibrated;
    for (const detail::weight_job& job : jobs)
      if (job.algo != method::rtn) calibrated.push_back(job.info);
    if (calibrated.empty()) return;
    if (!options.calibration.data) {
      throw model_error(model_error::kind::invalid,
                        std::string("method ") + to_string(method::gptq) +
                            " needs calibration data: give the model inputs (int4q quantize "
                            "--calib FILE|DIR)");
    }
    collect_options co;
    co.stats.hessian = true;
    co.threads = options.threads;
    if (options.calibration.mode == calibration_mode::sequential) {
      // Graph order of the first main-graph use (weights only in subgraphs last): the paused
      // runs only go forward.
      auto first_use = [](const weight_info& w) {
        int first = std::numeric_limits<int>::max();
        for (const weight_use& u : w.uses)
          if (u.path.empty()) first = std::min(first, u.node_index);
        return first;
      };
      std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
        return first_use(*jobs[a].info) < first_use(*jobs[b].info);
      });
      sequential_ =
          std::make_unique<sequential_calibration>(m, calibrated, options.calibration.data, co);
    } else {
      parallel_ = collect_activation_stats(m, calibrated, options.calibration.data, co);
    }
  }

  /// Sets job.quantize for a calibrated job.
  void prepare(detail::weight_job& job) {
    if (job.algo == method::rtn) return;
    job.quantize = [this, &job](const xt::xtensor<float, 2>& lw) {
      tensor_report& r = report_.tensors[job.report_index];
      activation_stats stats = statistics(*job.info);
      r.calibration_rows = stats.rows();
      if (stats.rows() == 0) {
        // A branch the data never took: no activations to weigh the error with.
        r.method = "rtn";
        r.reason = "no calibration rows reached it (a branch the data never took): RTN";
        int4q::quant_options qo;
        qo.threads = options_.threads;
        return int4q::quant_tensor(lw, job.config, qo);
      }
      auto result = int4q::gptq(lw, stats.hessian(), job.config, options_.gptq);
      r.method = to_string(job.algo);
      r.hessian_loss = result.report.loss;
      r.rtn_hessian_loss = result.report.rtn_loss;
      r.damp_retries = result.report.retries;
      if (sequential_) sequential_->replace(*job.info, stored_values(*job.info, job, result.q));
      return std::move(result.q);
    };
  }

 private:
  activation_stats statistics(const weight_info& w) {
    if (sequential_) return sequential_->stats_for(w);
    const auto it = parallel_.find(w.name);
    activation_stats s = std::move(it->second);
    parallel_.erase(it);  // memory: freed as the weights are done
    return s;
  }

  /// The dequantized weight in the tensor's stored layout and scale: what the float model's
  /// node must multiply with to compute what the quantized node will ([N, K] for Gemm transB,
  /// Gemm alpha divided out again).
  static value stored_values(const weight_info& w, const detail::weight_job& job,
                             const quantized<float>& q) {
    const xt::xtensor<float, 2> d = int4q::dequant(q);  // [K, N], alpha folded in
    const bool trans = w.uses.front().trans_b;
    const std::size_t K = w.k, N = w.n;
    std::vector<float> v(K * N);
    for (std::size_t k = 0; k < K; ++k)
      for (std::size_t n = 0; n < N; ++n) v[trans ? n * K + k : k * N + n] = d(k, n) / job.alpha;
    return value::floats(trans ? shape_t{std::int64_t(N), std::int64_t(K)}
                               : shape_t{std::int64_t(K), std::int64_t(N)},
                         std::move(v));
  }

  using shape_t = std::vector<std::int64_t>;
  const quantize_options& options_;
  quantize_report& report_;
  std::unique_ptr<sequential_calibration> sequential_;
  std::map<std::string, activation_stats> parallel_;
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
  const bool raise_opset = options.format == output_format::qdq && !jobs.empty();
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

  // 5. Edit the graph (cannot fail from here on).
  if (spill) {
    m.spill_location = spill->location();
    m.spill_path = spill->path();
  }
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
