// Method block: the blocks, the float and quantized runs, and the signed-gradient loop.
#include "block_tuning.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <map>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <int4q/dequant.hpp>
#include <int4q/onnx/blocks.hpp>
#include <int4q/onnx/executor.hpp>
#include <int4q/onnx/gradient.hpp>
#include <int4q/quantize.hpp>
#include <int4q/tuned_rounding.hpp>

#include "weight_tensor.hpp"

namespace int4q {
namespace onnx {
namespace detail {

namespace {

using steady = std::chrono::steady_clock;

double seconds_since(steady::time_point t) {
  return std::chrono::duration<double>(steady::now() - t).count();
}

/// The block holding main-graph node `node` (blocks cover every node, in order).
std::size_t block_of(const std::vector<graph_block>& blocks, int node) {
  const auto it = std::upper_bound(blocks.begin(), blocks.end(), node,
                                   [](int n, const graph_block& b) { return n < b.end_node; });
  return static_cast<std::size_t>(it - blocks.begin());
}

/// The main-graph node of a use: the node itself, or the one holding its subgraph.
int main_graph_node(const weight_use& u) {
  return u.path.empty() ? u.node_index : u.path.front().node_index;
}

/// Why a weight cannot be tuned ("" when it can): the block sees the weight as a value it can
/// replace, so it must be the B input itself (no constant path), read in the main graph, by
/// nodes of one block.
std::string untunable_reason(const weight_info& w, const std::vector<graph_block>& blocks) {
  if (!w.path_nodes.empty() || w.from_constant_node)
    return "computed by a constant path or a Constant node";
  std::set<std::size_t> in;
  for (const weight_use& u : w.uses) {
    if (!u.path.empty()) return "used inside a subgraph";
    in.insert(block_of(blocks, u.node_index));
  }
  if (in.size() > 1) return "used in " + std::to_string(in.size()) + " blocks";
  return "";
}

/// Inverse Fisher-Yates with a 64-bit generator (std::shuffle's draws are the library's own).
void shuffle(std::vector<std::size_t>& v, std::mt19937_64& gen) {
  for (std::size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[gen() % i]);
}

/// The weights swapped into the quantized runs, by name, as run hooks.
struct replacements {
  std::map<std::string, value> values;
  run_hooks hooks() {
    run_hooks h;
    h.replaces = [this](const ::onnx::NodeProto&, const std::string& name) {
      return values.count(name) > 0;
    };
    h.before_node = [this](int, const ::onnx::NodeProto& n, std::vector<const value*>& in) {
      for (int k = 0; k < n.input_size() && static_cast<std::size_t>(k) < in.size(); ++k) {
        const auto it = values.find(n.input(k));
        if (it != values.end()) in[static_cast<std::size_t>(k)] = &it->second;
      }
    };
    return h;
  }
};

int4q::quant_options quant_opts(const quantize_options& o) {
  int4q::quant_options qo;
  qo.threads = o.threads;
  return qo;
}

void check_jobs(const quantize_options& options, const std::vector<weight_job>& jobs) {
  for (const weight_job& j : jobs) {
    if (j.algo != method::rtn && j.algo != method::block)
      throw model_error(model_error::kind::invalid,
                        std::string("method block cannot run with another calibrated method in "
                                    "one run: weight '") +
                            j.info->name + "' uses " + to_string(j.algo) +
                            " (an override); quantize with one of them");
  }
  if (!options.calibration.data)
    throw model_error(model_error::kind::invalid,
                      "method block needs calibration data: give the model inputs "
                      "(`calibration.data`)");
  if (options.block.iterations == 0)
    throw model_error(model_error::kind::invalid, "method block: `block.iterations` must be >= 1");
  if (!(options.block.learning_rate >= 0) || !std::isfinite(options.block.learning_rate))
    throw model_error(model_error::kind::invalid,
                      "method block: `block.learning_rate` must be finite and >= 0 (0: 1 / "
                      "iterations)");
}

/// One weight being tuned.
struct tuned_weight {
  std::size_t job = 0;
  int4q::tuned_rounding<float> t;
  int4q::tuned_rounding<float>::state best;
  std::vector<float> buffer;  ///< [K, N]
  value stored;               ///< the current dequantized values in the stored layout
};

/// The loop of one block (step 2 of block_tuning.hpp): returns the first and the lowest loss.
std::pair<double, double> tune(const stretch_gradient& sg, std::vector<tuned_weight>& tw,
                               const std::vector<weight_job>& jobs,
                               const std::vector<std::map<std::string, const value*>>& inputs,
                               const std::vector<std::map<std::string, value>>& targets,
                               const block_settings& settings, std::uint64_t seed) {
  const std::size_t batches = inputs.size();
  std::vector<std::string> wrt;
  for (const tuned_weight& w : tw) wrt.push_back(jobs[w.job].info->name);
  std::vector<std::size_t> order(batches);
  std::mt19937_64 gen(seed);
  const std::size_t iterations = settings.iterations;
  const double lr0 = settings.learning_rate > 0 ? settings.learning_rate : 1.0 / double(iterations);
  double first = std::numeric_limits<double>::quiet_NaN();
  double best = std::numeric_limits<double>::infinity();
  for (std::size_t it = 0; it < iterations; ++it) {
    if (it % batches == 0) {
      for (std::size_t b = 0; b < batches; ++b) order[b] = b;
      if (it > 0) shuffle(order, gen);  // the first pass in the data's order
    }
    const std::size_t b = order[it % batches];
    std::map<std::string, const value*> params;
    for (tuned_weight& w : tw) {
      const weight_job& job = jobs[w.job];
      w.t.dequantized(w.buffer.data());
      w.stored = stored_weight_values(*job.info, job.alpha, w.buffer.data(), nullptr);
      params[job.info->name] = &w.stored;
    }
    stretch_gradient::pass pass = sg.forward(inputs[b], params, wrt);
    // L = sum (y - target)^2 / count over every float output; dL/dy = 2 (y - target) / count.
    std::size_t count = 0;
    for (const auto& [name, target] : targets[b]) count += target.f.size();
    double sum = 0;
    std::map<std::string, value> grads;
    for (const auto& [name, target] : targets[b]) {
      const value& y = sg.output(pass, name);
      value g = value::floats(y.shape, std::vector<float>(y.f.size()));
      for (std::size_t e = 0; e < y.f.size(); ++e) {
        const double d = double(y.f[e]) - double(target.f[e]);
        sum += d * d;
        g.f[e] = static_cast<float>(2.0 * d / double(count));
      }
      grads.emplace(name, std::move(g));
    }
    const double loss = count ? sum / double(count) : 0.0;
    if (it == 0) first = loss;
    if (loss < best) {
      best = loss;
      for (tuned_weight& w : tw) w.best = w.t.parameters();
    }
    const std::map<std::string, value> dw = sg.backward(pass, grads);
    const double lr = lr0 * (1.0 - double(it) / double(iterations));
    for (tuned_weight& w : tw) {
      const weight_job& job = jobs[w.job];
      const weight_info& info = *job.info;
      const auto found = dw.find(info.name);
      if (found == dw.end()) continue;  // the loss does not reach it (no gradient)
      // dL/dW (logical [K, N]) from dL/dB (stored: [N, K] for transB, alpha divided out).
      const bool trans = info.uses.front().trans_b;
      const std::vector<float>& g = found->second.f;
      for (std::size_t k = 0; k < info.k; ++k)
        for (std::size_t n = 0; n < info.n; ++n)
          w.buffer[k * info.n + n] = g[trans ? n * info.k + k : k * info.n + n] / job.alpha;
      w.t.backward(w.buffer.data());
      w.t.step(lr);
    }
  }
  return {first, best};
}

}  // namespace

void tune_blocks(const model& m, const quantize_options& options, std::vector<weight_job>& jobs,
                 quantize_report& report,
                 const std::function<void(std::size_t job, double seconds)>& done) {
  check_jobs(options, jobs);
  const std::vector<graph_block> blocks = find_blocks(m);

  // Which block tunes which weight; the others are quantized to nearest now and swapped into
  // the quantized runs from their first block to their last.
  std::vector<std::vector<std::size_t>> tuned(blocks.size());
  std::vector<std::vector<std::size_t>> rtn_from(blocks.size()), rtn_until(blocks.size());
  for (std::size_t j = 0; j < jobs.size(); ++j) {
    weight_job& job = jobs[j];
    const weight_info& w = *job.info;
    tensor_report& r = report.tensors[job.report_index];
    if (job.algo == method::block) {
      const std::string why = untunable_reason(w, blocks);
      if (why.empty()) {
        tuned[block_of(blocks, w.uses.front().node_index)].push_back(j);
        continue;
      }
      r.reason = "not tuned (" + why + "): round to nearest";
    }
    std::size_t lo = blocks.size(), hi = 0;
    for (const weight_use& u : w.uses) {
      const std::size_t b = block_of(blocks, main_graph_node(u));
      lo = std::min(lo, b);
      hi = std::max(hi, b);
    }
    rtn_from[lo].push_back(j);
    rtn_until[hi].push_back(j);
  }

  // The calibration batches, and a float and a quantized run of each at the graph's start.
  std::vector<std::map<std::string, value>> batches;
  for (;;) {
    std::map<std::string, value> in;
    if (!options.calibration.data(in)) break;
    batches.push_back(std::move(in));
  }
  if (batches.empty())
    throw model_error(model_error::kind::invalid, "method block: the calibration data is empty");
  executor_options eo;
  eo.threads = options.threads;
  const executor ex(m, eo);
  std::vector<executor::session> fruns, qruns;
  for (const auto& b : batches) {
    fruns.push_back(ex.start(b));
    qruns.push_back(ex.start(b));
  }
  replacements swapped;
  const run_hooks qhooks = swapped.hooks();

  const auto finish_rtn = [&](std::size_t j) {
    weight_job& job = jobs[j];
    job.started = steady::now();
    job.weight = logical_weight(m, *job.info, job.alpha);
    try {
      job.q = int4q::quant_tensor(job.weight, job.config, quant_opts(options));
    } catch (const int4q::non_finite_error& e) {
      throw model_error(model_error::kind::invalid, "weight '" + job.info->name + "': " + e.what());
    }
    report.tensors[job.report_index].method = "rtn";
    const xt::xtensor<float, 2> d = int4q::dequant(job.q);
    swapped.values[job.info->name] = stored_weight_values(*job.info, job.alpha, d.data(), nullptr);
    done(j, seconds_since(job.started));
  };

  // The runs stop after the last block with a weight (a kept lm_head is not run).
  std::size_t blocks_to_run = 0;
  for (std::size_t bi = 0; bi < blocks.size(); ++bi)
    if (!tuned[bi].empty() || !rtn_from[bi].empty() || !rtn_until[bi].empty())
      blocks_to_run = bi + 1;
  for (std::size_t bi = 0; bi < blocks_to_run; ++bi) {
    const graph_block& blk = blocks[bi];
    for (const std::size_t j : rtn_from[bi]) finish_rtn(j);
    if (tuned[bi].empty()) {
      for (auto& s : fruns) ex.advance(s, blk.end_node);
      for (auto& s : qruns) ex.advance(s, blk.end_node, qhooks);
    } else {
      const auto start = steady::now();
      const stretch_gradient sg(m, blk.first_node, blk.end_node, options.threads);
      // 1. The targets: the float runs' outputs of the block.
      std::vector<std::map<std::string, value>> targets(batches.size());
      for (std::size_t b = 0; b < batches.size(); ++b) {
        ex.advance(fruns[b], blk.end_node);
        for (const std::string& name : sg.outputs()) {
          const value* v = fruns[b].find(name);
          if (v && v->type == value_type::float32) targets[b].emplace(name, *v);
        }
      }
      // The block's inputs in the quantized runs, and the rows its output carries (the stream
      // point, or the tail's first float output).
      std::vector<std::map<std::string, const value*>> inputs(batches.size());
      std::size_t rows = 0;
      for (std::size_t b = 0; b < batches.size(); ++b) {
        for (const std::string& name : sg.external_inputs()) {
          const value* v = qruns[b].find(name);
          if (!v)
            throw model_error(model_error::kind::invalid,
                              "method block: block " + std::to_string(bi) + " reads '" + name +
                                  "', which the run does not hold at its first node");
          inputs[b][name] = v;
        }
        auto it = targets[b].find(blk.output);
        if (it == targets[b].end()) it = targets[b].begin();
        if (it != targets[b].end() && !it->second.shape.empty() && it->second.shape.back() > 0)
          rows += it->second.size() / static_cast<std::size_t>(it->second.shape.back());
      }
      // 2. The tuners, at round to nearest.
      std::vector<tuned_weight> tw;
      for (const std::size_t j : tuned[bi]) {
        weight_job& job = jobs[j];
        job.started = start;
        job.weight = logical_weight(m, *job.info, job.alpha);
        try {
          tw.push_back(tuned_weight{
              j,
              int4q::tuned_rounding<float>(job.weight, job.config, options.block.limits),
              {},
              std::vector<float>(job.info->k * job.info->n),
              value()});
        } catch (const int4q::error& e) {
          throw model_error(model_error::kind::invalid,
                            "weight '" + job.info->name + "': " + e.what());
        }
        tw.back().best = tw.back().t.parameters();
      }
      const auto [first, best] =
          tune(sg, tw, jobs, inputs, targets, options.block, options.block.seed + bi);
      // 3. The kept parameters, the weights' results and the quantized runs past the block.
      for (tuned_weight& w : tw) {
        weight_job& job = jobs[w.job];
        w.t.set_parameters(w.best);
        job.q = w.t.result();
        tensor_report& r = report.tensors[job.report_index];
        r.method = "block";
        r.calibration_rows = rows;
        r.block_loss_start = first;
        r.block_loss = best;
        const xt::xtensor<float, 2> d = int4q::dequant(job.q);
        swapped.values[job.info->name] =
            stored_weight_values(*job.info, job.alpha, d.data(), nullptr);
      }
      targets.clear();
      inputs.clear();
      for (auto& s : qruns) ex.advance(s, blk.end_node, qhooks);
      const double seconds = seconds_since(start);
      for (const tuned_weight& w : tw) {
        swapped.values.erase(jobs[w.job].info->name);
        done(w.job, seconds / static_cast<double>(tw.size()));
      }
    }
    for (const std::size_t j : rtn_until[bi]) swapped.values.erase(jobs[j].info->name);
  }
}

}  // namespace detail
}  // namespace onnx
}  // namespace int4q
