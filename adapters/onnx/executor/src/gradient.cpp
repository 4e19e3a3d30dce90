// stretch_gradient: forward over a stretch of main-graph nodes with the executor's operators,
// backward through the VJPs of gradient_ops.cpp.
#include <int4q/onnx/gradient.hpp>

#include <algorithm>
#include <mutex>
#include <set>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "executor_detail.hpp"
#include "gradient_detail.hpp"

namespace int4q {
namespace onnx {

using namespace exec;

namespace {

[[noreturn]] void fail(const std::string& what) {
  throw model_error(model_error::kind::invalid, "stretch_gradient: " + what);
}

/// Sets the executor's thread count and buffer pool for the operators on this thread for a
/// scope, restoring the caller's after.
struct thread_scope {
  thread_scope(std::size_t threads, buffer_pool* pool)
      : saved_threads(current_threads_slot()), saved_pool(current_pool_slot()) {
    current_threads_slot() = threads;
    current_pool_slot() = pool;
  }
  ~thread_scope() {
    current_threads_slot() = saved_threads;
    current_pool_slot() = saved_pool;
  }
  thread_scope(const thread_scope&) = delete;
  thread_scope& operator=(const thread_scope&) = delete;
  std::size_t saved_threads;
  buffer_pool* saved_pool;
};

}  // namespace

struct stretch_gradient::impl {
  const model& m;
  int first = 0, end = 0;
  std::size_t threads = 0;
  std::vector<std::string> external, outs;
  std::unordered_map<std::string, const TensorProto*> initializers;
  /// Initializers converted so far (kept: the weights of one block).
  mutable std::mutex mutex;
  mutable std::unordered_map<std::string, std::shared_ptr<const value>> converted;
  /// Float buffers of the last backward()'s freed values, for the next pass's values (a
  /// fresh allocation's first write faults in every page: see exec::buffer_pool). At most the
  /// bytes of one pass. Taken whole by a pass (under the mutex) and given back by backward().
  mutable std::mutex pool_mutex;
  mutable buffer_pool spare;

  buffer_pool take_pool() const {
    buffer_pool p;
    const std::lock_guard<std::mutex> lock(pool_mutex);
    std::swap(p, spare);
    return p;
  }
  void give_pool(buffer_pool& p) const {
    const std::lock_guard<std::mutex> lock(pool_mutex);
    if (p.bytes() > spare.bytes()) std::swap(p, spare);
  }

  impl(const model& model_, int first_node, int end_node, std::size_t threads_)
      : m(model_), first(first_node), end(end_node), threads(threads_) {}

  std::shared_ptr<const value> initializer(const std::string& name) const {
    const auto t = initializers.find(name);
    if (t == initializers.end()) return nullptr;
    {
      const std::lock_guard<std::mutex> lock(mutex);
      const auto c = converted.find(name);
      if (c != converted.end()) return c->second;
    }
    auto v = std::make_shared<const value>(to_value(m, *t->second));
    const std::lock_guard<std::mutex> lock(mutex);
    return converted.emplace(name, std::move(v)).first->second;
  }
};

struct stretch_gradient::pass::state {
  /// Values computed by the stretch, by name.
  std::unordered_map<std::string, value> env;
  /// Values read from outside (inputs, params, initializers), by name.
  std::unordered_map<std::string, const value*> bound;
  std::vector<std::shared_ptr<const value>> pins;  ///< initializers read
  /// Each node's inputs as the forward read them.
  std::vector<inputs_t> node_inputs;
  /// Nodes whose VJP backward applies.
  std::vector<bool> on_path;
  /// Float names that depend on a wrt name.
  std::unordered_set<std::string> requires_grad;
  std::vector<std::string> wrt;
  bool consumed = false;
  /// Buffers for this pass's new values (from the stretch's spare ones).
  buffer_pool pool;
};

stretch_gradient::pass::pass() = default;
stretch_gradient::pass::pass(pass&&) noexcept = default;
stretch_gradient::pass& stretch_gradient::pass::operator=(pass&&) noexcept = default;
stretch_gradient::pass::~pass() = default;

stretch_gradient::stretch_gradient(const model& m, int first_node, int end_node,
                                   std::size_t threads)
    : d_(std::make_unique<impl>(m, first_node, end_node, threads)) {
  const auto& g = m.proto.graph();
  if (first_node < 0 || end_node > g.node_size() || first_node >= end_node)
    throw model_error(model_error::kind::invalid,
                      "stretch_gradient: nodes [" + std::to_string(first_node) + ", " +
                          std::to_string(end_node) + ") are not a non-empty range of the " +
                          std::to_string(g.node_size()) + " nodes of the main graph");
  for (const TensorProto& t : g.initializer()) d_->initializers[t.name()] = &t;
  std::set<std::string> computed, external, outs;
  for (int k = first_node; k < end_node; ++k) {
    const NodeProto& n = g.node(k);
    if (!registry().count(op_key(n)))
      throw model_error(model_error::kind::unsupported,
                        "stretch_gradient: the executor does not implement " + op_key(n) +
                            " (node '" + n.name() + "')");
    for (const AttributeProto& a : n.attribute())
      if (a.has_g() || a.graphs_size() > 0)
        throw model_error(model_error::kind::unsupported,
                          "stretch_gradient: node '" + n.name() + "' (" + n.op_type() +
                              ") has a subgraph; stretches of subgraph-free nodes only");
    for (const std::string& name : n.input())
      if (!name.empty() && !computed.count(name) && !d_->initializers.count(name))
        external.insert(name);
    for (const std::string& name : n.output())
      if (!name.empty()) computed.insert(name);
  }
  // Read after the stretch (by a node or a subgraph of one, approximated by every name a later
  // node's subgraphs read) or a graph output.
  std::set<std::string> later;
  for (int k = end_node; k < g.node_size(); ++k) {
    for (const std::string& name : g.node(k).input()) later.insert(name);
    for (const AttributeProto& a : g.node(k).attribute()) {
      std::vector<const ::onnx::GraphProto*> graphs;
      if (a.has_g()) graphs.push_back(&a.g());
      for (const auto& sg : a.graphs()) graphs.push_back(&sg);
      for (const auto* sg : graphs)
        for (const NodeProto& sn : sg->node())
          for (const std::string& name : sn.input()) later.insert(name);
    }
  }
  for (const auto& o : g.output()) later.insert(o.name());
  for (const std::string& name : computed)
    if (later.count(name)) outs.insert(name);
  d_->external.assign(external.begin(), external.end());
  d_->outs.assign(outs.begin(), outs.end());
}

stretch_gradient::~stretch_gradient() = default;

const std::vector<std::string>& stretch_gradient::external_inputs() const { return d_->external; }
const std::vector<std::string>& stretch_gradient::outputs() const { return d_->outs; }

stretch_gradient::pass stretch_gradient::forward(const std::map<std::string, const value*>& inputs,
                                                 const std::map<std::string, const value*>& params,
                                                 const std::vector<std::string>& wrt) const {
  const auto& g = d_->m.proto.graph();
  pass p;
  p.s_ = std::make_unique<pass::state>();
  pass::state& s = *p.s_;
  s.pool = d_->take_pool();
  const thread_scope scope(d_->threads, &s.pool);
  // A name from outside the stretch: params, then inputs, then the model's initializers.
  auto bind = [&](const std::string& name) -> const value* {
    const auto b = s.bound.find(name);
    if (b != s.bound.end()) return b->second;
    const value* v = nullptr;
    const auto pi = params.find(name);
    const auto ii = inputs.find(name);
    if (pi != params.end()) {
      v = pi->second;
    } else if (ii != inputs.end()) {
      v = ii->second;
    } else if (auto init = d_->initializer(name)) {
      s.pins.push_back(init);
      v = init.get();
    }
    if (v) s.bound[name] = v;
    return v;
  };
  for (const std::string& w : wrt) {
    const value* v = bind(w);
    if (!v)
      fail("wrt name '" + w +
           "' is not an initializer, a param or an external input of the stretch");
    if (v->type != value_type::float32) fail("wrt name '" + w + "' is not a float value");
    s.requires_grad.insert(w);
  }
  s.wrt = wrt;
  const auto& vjps = vjp_registry();
  std::vector<value> results;
  for (int k = d_->first; k < d_->end; ++k) {
    const NodeProto& n = g.node(k);
    const node_context c{n, nullptr, nullptr};
    inputs_t in;
    bool path = false;
    for (const std::string& name : n.input()) {
      if (name.empty()) {
        in.push_back(nullptr);
        continue;
      }
      const auto e = s.env.find(name);
      const value* v = e != s.env.end() ? &e->second : bind(name);
      if (!v) fail("no value for '" + name + "', an input of node '" + n.name() + "'");
      if (v->type == value_type::float32 && s.requires_grad.count(name)) path = true;
      in.push_back(v);
    }
    results.clear();
    registry().at(op_key(n))(c, d_->m, in, results);
    if (results.size() < static_cast<std::size_t>(n.output_size()))
      c.fail("produced fewer outputs than the node has");
    bool float_out = false;
    for (int o = 0; o < n.output_size(); ++o)
      float_out |=
          !n.output(o).empty() && results[static_cast<std::size_t>(o)].type == value_type::float32;
    path = path && float_out;  // a node with no float output passes no gradient back
    if (path && !vjps.count(op_key(n)))
      throw model_error(model_error::kind::unsupported,
                        "stretch_gradient: cannot differentiate through " + op_key(n) + " node '" +
                            n.name() + "' (no VJP for the operator) on the way to " +
                            "the wrt values");
    for (int o = 0; o < n.output_size(); ++o) {
      const std::string& name = n.output(o);
      if (name.empty()) continue;
      value& r = results[static_cast<std::size_t>(o)];
      if (path && r.type == value_type::float32) s.requires_grad.insert(name);
      s.env[name] = std::move(r);
    }
    s.node_inputs.push_back(std::move(in));
    s.on_path.push_back(path);
  }
  return p;
}

const value& stretch_gradient::output(const pass& p, const std::string& name) const {
  if (!p.s_) fail("output() of an empty pass");
  if (!std::binary_search(d_->outs.begin(), d_->outs.end(), name))
    fail("'" + name + "' is not an output of the stretch");
  const auto e = p.s_->env.find(name);
  if (e == p.s_->env.end()) fail("output '" + name + "' is no longer held (after backward())");
  return e->second;
}

namespace {

/// acc += v (same shapes).
void accumulate(value& acc, const value& v) {
  parallel_ranges(acc.f.size(), kElementChunk, [&](std::size_t e0, std::size_t e1) {
    for (std::size_t e = e0; e < e1; ++e) acc.f[e] += v.f[e];
  });
}

value zeros(const shape_t& shape) {
  return value::floats(shape, std::vector<float>(numel(shape), 0.0f));
}

}  // namespace

std::map<std::string, value> stretch_gradient::backward(
    pass& p, const std::map<std::string, value>& output_grads) const {
  if (!p.s_) fail("backward() of an empty pass");
  pass::state& s = *p.s_;
  if (s.consumed) fail("backward() was already called on this pass");
  s.consumed = true;
  const thread_scope scope(d_->threads, &s.pool);
  // The pool may keep what the pass holds: freed values serve the gradients, then the next pass.
  std::size_t held = 0;
  for (const auto& [name, v] : s.env) held += v.f.capacity() * sizeof(float);
  s.pool.raise_limit(held);
  const auto& g = d_->m.proto.graph();
  std::unordered_map<std::string, value> grads;
  for (const auto& [name, gv] : output_grads) {
    if (!std::binary_search(d_->outs.begin(), d_->outs.end(), name))
      fail("gradient given for '" + name + "', which is not an output of the stretch");
    const value& y = s.env.at(name);
    if (y.type != value_type::float32 || gv.type != value_type::float32 || gv.shape != y.shape)
      fail("gradient for '" + name + "' has shape " + dims_string(gv.shape) + ", the output " +
           dims_string(y.shape) + (y.type == value_type::float32 ? "" : " (not float)"));
    if (s.requires_grad.count(name)) grads[name] = gv;
  }
  const auto& vjps = vjp_registry();
  std::vector<std::optional<value>> gin;
  std::vector<const value*> outs, gout;
  std::vector<value> zero_grads;
  std::vector<bool> need;
  for (int k = d_->end; k-- > d_->first;) {
    const NodeProto& n = g.node(k);
    const auto local = static_cast<std::size_t>(k - d_->first);
    if (s.on_path[local]) {
      outs.clear();
      gout.clear();
      zero_grads.clear();
      zero_grads.reserve(static_cast<std::size_t>(n.output_size()));
      bool any = false;
      for (int o = 0; o < n.output_size(); ++o) {
        const std::string& name = n.output(o);
        const auto e = name.empty() ? s.env.end() : s.env.find(name);
        const value* y = e == s.env.end() ? nullptr : &e->second;
        outs.push_back(y);
        const auto gi = y ? grads.find(name) : grads.end();
        any |= gi != grads.end();
        gout.push_back(gi != grads.end() ? &gi->second : nullptr);
      }
      if (any) {
        for (std::size_t o = 0; o < outs.size(); ++o) {
          if (!gout[o] && outs[o] && outs[o]->type == value_type::float32) {
            zero_grads.push_back(zeros(outs[o]->shape));
            gout[o] = &zero_grads.back();
          }
        }
        const inputs_t& in = s.node_inputs[local];
        need.assign(in.size(), false);
        for (std::size_t q = 0; q < in.size(); ++q)
          need[q] = in[q] && in[q]->type == value_type::float32 &&
                    s.requires_grad.count(n.input(static_cast<int>(q)));
        gin.assign(in.size(), std::nullopt);
        const node_context c{n, nullptr, nullptr};
        vjps.at(op_key(n))(vjp_args{c, d_->m, in, outs, gout, need}, gin);
        for (std::size_t q = 0; q < in.size(); ++q) {
          if (!need[q] || !gin[q]) continue;
          if (gin[q]->shape != in[q]->shape || gin[q]->f.size() != in[q]->size())
            c.fail("internal: the gradient of input " + std::to_string(q) + " has shape " +
                   dims_string(gin[q]->shape) + ", the input " + dims_string(in[q]->shape));
          const std::string& name = n.input(static_cast<int>(q));
          const auto acc = grads.find(name);
          if (acc == grads.end()) {
            grads.emplace(name, std::move(*gin[q]));
          } else {
            accumulate(acc->second, *gin[q]);
          }
        }
      }
    }
    // The node's outputs and their gradients are no longer needed: every reader came after it.
    for (const std::string& name : n.output()) {
      if (name.empty()) continue;
      const auto gi = grads.find(name);
      if (gi != grads.end()) {
        s.pool.recycle(gi->second.f);
        grads.erase(gi);
      }
      const auto e = s.env.find(name);
      if (e != s.env.end()) {
        s.pool.recycle(e->second.f);
        s.env.erase(e);
      }
    }
  }
  std::map<std::string, value> result;
  for (const std::string& w : s.wrt) {
    if (result.count(w)) continue;  // named twice
    const auto gi = grads.find(w);
    result[w] = gi != grads.end() ? std::move(gi->second) : zeros(s.bound.at(w)->shape);
    if (gi != grads.end()) grads.erase(gi);
  }
  s.env.clear();
  s.node_inputs.clear();
  for (auto& [name, v] : grads) s.pool.recycle(v.f);
  d_->give_pool(s.pool);
  return result;
}

}  // namespace onnx
}  // namespace int4q
