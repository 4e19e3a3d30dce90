// Calibration statistics from executor runs: parallel (one pass) and sequential (paused runs).
#include <int4q/onnx/calibrate.hpp>

#include <algorithm>
#include <limits>
#include <unordered_map>
#include <utility>

#include <int4q/onnx/graph.hpp>

namespace int4q {
namespace onnx {

namespace {

/// The nodes using each weight, by the address of their NodeProto (the executor's hooks see
/// the model's own NodeProto objects, in the main graph and in subgraphs alike).
std::unordered_map<const ::onnx::NodeProto*, std::vector<const weight_info*>> uses_by_node(
    const model& m, const std::vector<const weight_info*>& weights) {
  std::unordered_map<const ::onnx::NodeProto*, std::vector<const weight_info*>> out;
  for (const weight_info* w : weights)
    for (const weight_use& u : w->uses)
      out[&graph_at(m.proto.graph(), u.path).node(u.node_index)].push_back(w);
  return out;
}

}  // namespace

activation_rows rows_of(const weight_info& w, const ::onnx::NodeProto& node, const value& a) {
  if (a.type != value_type::float32 || a.shape.empty() ||
      a.shape.back() != static_cast<std::int64_t>(w.k)) {
    throw model_error(model_error::kind::invalid,
                      node.op_type() + " node '" + node.name() + "': its input '" + node.input(0) +
                          "' has shape " + detail::dims_string(a.shape) + ", not [..., " +
                          std::to_string(w.k) + "] as weight '" + w.name + "' needs");
  }
  return {a.f.data(), a.size() / w.k};
}

std::map<std::string, activation_stats> collect_activation_stats(
    const model& m, const std::vector<const weight_info*>& weights, const batch_source& source,
    const collect_options& options) {
  std::map<std::string, activation_stats> stats;
  for (const weight_info* w : weights)
    stats.emplace(w->name, activation_stats(w->k, options.stats));
  const auto by_node = uses_by_node(m, weights);
  const executor ex(m, options.threads);
  run_hooks hooks;
  hooks.before_node = [&](int, const ::onnx::NodeProto& node, std::vector<const value*>& in) {
    const auto it = by_node.find(&node);
    if (it == by_node.end() || in.empty() || !in[0]) return;
    for (const weight_info* w : it->second) {
      const activation_rows r = rows_of(*w, node, *in[0]);
      stats.at(w->name).add(r.data, r.rows);
    }
  };
  std::map<std::string, value> batch;
  std::size_t done = 0;
  while (source(batch)) {
    ex.run(batch, hooks);
    batch.clear();
    if (options.on_progress) options.on_progress(++done);
  }
  return stats;
}

// ---- sequential ------------------------------------------------------------------------------

struct sequential_calibration::impl {
  const model& m;
  collect_options options;
  executor ex;
  std::vector<std::map<std::string, value>> inputs;  ///< kept for the subgraph-only pass
  std::vector<executor::session> runs;
  std::map<std::string, value> replacements;  ///< weight name -> stored values
  run_hooks hooks;
  /// The last statistics computed, by activation name: siblings sharing an input (q/k/v) reuse
  /// them. A name's value never changes once computed and the runs never go back, so they stay
  /// valid.
  std::string cached_name;
  std::unique_ptr<activation_stats> cached;
  /// Per activation name: the weights (first main-graph uses) that have yet to ask for it.
  std::map<std::string, std::size_t> readers;
  std::vector<const weight_info*> subgraph_only;
  std::map<std::string, activation_stats> subgraph_stats;
  bool subgraph_done = false;

  impl(const model& model_, const collect_options& o)
      : m(model_), options(o), ex(model_, o.threads) {
    hooks.before_node = [this](int, const ::onnx::NodeProto& node, std::vector<const value*>& in) {
      if (replacements.empty()) return;
      for (int k = 0; k < node.input_size() && k < static_cast<int>(in.size()); ++k) {
        const auto it = replacements.find(node.input(k));
        if (it != replacements.end()) in[static_cast<std::size_t>(k)] = &it->second;
      }
    };
  }
};

namespace {

int first_main_use(const weight_info& w) {
  int first = std::numeric_limits<int>::max();
  for (const weight_use& u : w.uses)
    if (u.path.empty()) first = std::min(first, u.node_index);
  return first == std::numeric_limits<int>::max() ? -1 : first;
}

}  // namespace

sequential_calibration::sequential_calibration(const model& m,
                                               const std::vector<const weight_info*>& weights,
                                               const batch_source& source,
                                               const collect_options& options)
    : p_(std::make_unique<impl>(m, options)) {
  for (const weight_info* w : weights) {
    const int first = first_main_use(*w);
    if (first < 0) {
      p_->subgraph_only.push_back(w);
    } else {
      ++p_->readers[m.proto.graph().node(first).input(0)];
    }
  }
  std::map<std::string, value> batch;
  while (source(batch)) {
    if (!p_->subgraph_only.empty()) p_->inputs.push_back(batch);
    p_->runs.push_back(p_->ex.start(batch));
    batch.clear();
  }
}

sequential_calibration::~sequential_calibration() = default;

activation_stats sequential_calibration::stats_for(const weight_info& w) {
  impl& p = *p_;
  const int node_index = first_main_use(w);
  if (node_index < 0) {  // only inside subgraphs: one parallel pass with the replacements so far
    if (!p.subgraph_done) {
      std::size_t next = 0;
      const batch_source again = [&](std::map<std::string, value>& b) {
        if (next >= p.inputs.size()) return false;
        b = p.inputs[next++];
        return true;
      };
      // One run per batch with the replacements made so far (p.hooks), collecting the rows of
      // the weights used only inside subgraphs.
      std::map<std::string, activation_stats> stats;
      for (const weight_info* s : p.subgraph_only)
        stats.emplace(s->name, activation_stats(s->k, p.options.stats));
      const auto by_node = uses_by_node(p.m, p.subgraph_only);
      run_hooks hooks;
      hooks.before_node = [&](int k, const ::onnx::NodeProto& node, std::vector<const value*>& in) {
        p.hooks.before_node(k, node, in);
        const auto it = by_node.find(&node);
        if (it == by_node.end() || in.empty() || !in[0]) return;
        for (const weight_info* s : it->second) {
          const activation_rows r = rows_of(*s, node, *in[0]);
          stats.at(s->name).add(r.data, r.rows);
        }
      };
      std::map<std::string, value> b;
      while (again(b)) p.ex.run(b, hooks);
      p.subgraph_stats = std::move(stats);
      p.subgraph_done = true;
    }
    return p.subgraph_stats.at(w.name);
  }
  const ::onnx::NodeProto& node = p.m.proto.graph().node(node_index);
  const std::string& name = node.input(0);
  // Weights still to ask for this activation after this one: the last reader takes the cached
  // statistics (no copy: H is K x K doubles).
  const std::size_t others = --p.readers[name];
  if (p.cached && p.cached_name == name) {
    for (executor::session& s : p.runs) p.ex.advance(s, node_index, p.hooks);
    if (others > 0) return *p.cached;
    activation_stats last = std::move(*p.cached);
    p.cached.reset();
    return last;
  }
  activation_stats stats(w.k, p.options.stats);
  for (executor::session& s : p.runs) {
    if (s.next_node() > node_index)
      throw model_error(model_error::kind::invalid,
                        "sequential calibration: weight '" + w.name +
                            "' was asked for after the runs passed its node '" + node.name() +
                            "' (ask in graph order)");
    p.ex.advance(s, node_index, p.hooks);
    const value* a = s.find(name);
    if (!a)
      throw model_error(model_error::kind::invalid, "sequential calibration: input '" + name +
                                                        "' of node '" + node.name() +
                                                        "' is not computed");
    const activation_rows r = rows_of(w, node, *a);
    stats.add(r.data, r.rows);
  }
  p.cached.reset();
  if (others > 0) {
    p.cached_name = name;
    p.cached = std::make_unique<activation_stats>(stats);
  }
  return stats;
}

void sequential_calibration::replace(const weight_info& w, value stored) {
  p_->replacements[w.name] = std::move(stored);
}

void sequential_calibration::pass(const weight_info& w) {
  impl& p = *p_;
  const int node_index = first_main_use(w);
  if (node_index < 0) {
    if (!p.subgraph_done) stats_for(w);  // the one subgraph pass, with the replacements so far
    return;
  }
  // The reader count and the siblings' cache as stats_for leaves them.
  const std::string& name = p.m.proto.graph().node(node_index).input(0);
  if (--p.readers[name] == 0 && p.cached && p.cached_name == name) p.cached.reset();
  for (executor::session& s : p.runs)
    if (s.next_node() <= node_index) p.ex.advance(s, node_index, p.hooks);
}

}  // namespace onnx
}  // namespace int4q
