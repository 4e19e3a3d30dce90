// find_weights: MatMul/Gemm nodes and their B operand, with whether it can be quantized.
#include <int4q/onnx/weights.hpp>

#include <algorithm>
#include <cstddef>
#include <map>
#include <set>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "writers.hpp"

namespace int4q {
namespace onnx {

namespace {

using ::onnx::GraphProto;
using ::onnx::NodeProto;
using ::onnx::TensorProto;

// Ops a logits tensor may pass through on its way to a graph output and still be "the logits":
// shape-only ops, casts, and the normalizations that turn logits into (log-)probabilities.
const std::set<std::string>& pass_through_ops() {
  static const std::set<std::string> ops = {"Identity", "Reshape",    "Flatten",
                                            "Squeeze",  "Unsqueeze",  "Cast",
                                            "Softmax",  "LogSoftmax", "Sigmoid"};
  return ops;
}
// How many ops the lm_head rule follows from the projection before giving up.
constexpr int lm_head_max_hops = 8;

std::string node_label(const NodeProto& node, int index, const std::string& scope = "") {
  weight_use u;
  u.scope = scope;
  u.node_index = index;
  u.node_name = node.name();
  u.op_type = node.op_type();
  return node.op_type() + " '" + display_name(u) + "'";
}

std::string type_name(int data_type) {
  switch (data_type) {
    case 21: return "UINT4";
    case 22: return "INT4";
    default: break;
  }
  if (::onnx::TensorProto_DataType_IsValid(data_type)) {
    return ::onnx::TensorProto_DataType_Name(static_cast<::onnx::TensorProto_DataType>(data_type));
  }
  return "type " + std::to_string(data_type);
}

// Whether `name` reaches a graph output through pass-through ops or a constant-bias Add/Sub.
bool reaches_output(const std::string& name,
                    const std::unordered_multimap<std::string, int>& consumers, const GraphProto& g,
                    const std::unordered_set<std::string>& outputs,
                    const std::unordered_set<std::string>& constants, int hops) {
  if (outputs.count(name)) return true;
  if (hops >= lm_head_max_hops) return false;
  const auto range = consumers.equal_range(name);
  for (auto it = range.first; it != range.second; ++it) {
    const NodeProto& node = g.node(it->second);
    if (node.output_size() == 0) continue;
    bool passes = false;
    if (pass_through_ops().count(node.op_type())) {
      passes = node.input_size() > 0 && node.input(0) == name;
    } else if (node.op_type() == "Add" || node.op_type() == "Sub") {
      // logits + bias: the other operand is a constant.
      passes =
          node.input_size() == 2 && ((node.input(0) == name && constants.count(node.input(1))) ||
                                     (node.input(1) == name && constants.count(node.input(0))));
    }
    if (passes && reaches_output(node.output(0), consumers, g, outputs, constants, hops + 1)) {
      return true;
    }
  }
  return false;
}

bool is_matmul_or_gemm(const NodeProto& node) {
  return (node.op_type() == "MatMul" || node.op_type() == "Gemm") &&
         (node.domain().empty() || node.domain() == "ai.onnx");
}

/// One graph on the walk from the main graph inwards, with the names it defines.
struct scope {
  const GraphProto* g = nullptr;
  std::vector<graph_step> path;
  std::string label;  // "" for the main graph
  std::string key;    // unique per graph: the path as text
  std::unordered_map<std::string, const TensorProto*> initializers;
  std::unordered_set<std::string> inputs;
  std::unordered_map<std::string, int> producer;  // node output -> node index
};

scope make_scope(const GraphProto& g, std::vector<graph_step> path, std::string label) {
  scope s;
  s.g = &g;
  s.key = detail::path_key(path);
  s.path = std::move(path);
  s.label = std::move(label);
  for (const TensorProto& t : g.initializer()) s.initializers.emplace(t.name(), &t);
  for (const auto& v : g.input()) s.inputs.insert(v.name());
  for (int i = 0; i < g.node_size(); ++i) {
    for (const std::string& out : g.node(i).output()) {
      if (!out.empty()) s.producer.emplace(out, i);
    }
  }
  return s;
}

bool defines(const scope& s, const std::string& name) {
  return s.initializers.count(name) || s.inputs.count(name) || s.producer.count(name);
}

/// The innermost scope defining `name`, or -1.
int resolve(const std::vector<scope>& stack, const std::string& name) {
  for (int i = static_cast<int>(stack.size()) - 1; i >= 0; --i) {
    if (defines(stack[i], name)) return i;
  }
  return -1;
}

std::string weight_key(const std::vector<scope>& stack, int level, const std::string& name) {
  return (level < 0 ? std::string("?") : stack[level].key) + "\n" + name;
}

/// Where the walk collects everything.
struct walk_state {
  std::vector<weight_info> weights;
  std::vector<const TensorProto*> tensors;  // per weight: its stored value (nullptr: none)
  std::vector<std::string> def_reason;      // per weight: why its definition is not a constant
  std::vector<std::string> keys;            // per weight: its key
  std::unordered_map<std::string, std::size_t> index_of;   // weight key -> index in `weights`
  std::unordered_map<std::string, std::string> other_use;  // tensor key -> first other read
};

/// Fills the definition of a new weight `w` that lives at `level` of `stack` (-1: nowhere).
void define_weight(const std::vector<scope>& stack, int level, weight_info& w,
                   const TensorProto*& t) {
  std::string reason;
  if (level < 0) {
    w.reason = "'" + w.name + "' is not defined in the graph (an outer-scope or missing tensor)";
    return;
  }
  const scope& s = stack[level];
  const std::string where = s.label.empty() ? std::string() : " of subgraph " + s.label;
  w.defined_in = s.path;
  const auto init = s.initializers.find(w.name);
  const auto prod = s.producer.find(w.name);
  if (init != s.initializers.end() && prod == s.producer.end()) {
    t = init->second;
    if (s.inputs.count(w.name)) {
      reason = "'" + w.name + "' is also a graph input" + where +
               " (an overridable initializer): its value can change at run time";
    }
  } else if (prod != s.producer.end() && s.g->node(prod->second).op_type() == "Constant") {
    const NodeProto& c = s.g->node(prod->second);
    w.from_constant_node = true;
    w.constant_node_index = prod->second;
    const auto* value = detail::find_attr(c, "value");
    if (value && value->has_t()) {
      t = &value->t();
    } else {
      reason = node_label(c, prod->second, s.label) + " holds no tensor 'value' attribute";
    }
  } else if (prod != s.producer.end()) {
    reason = "'" + w.name + "' is computed at run time by " +
             node_label(s.g->node(prod->second), prod->second, s.label) + ", not a constant weight";
  } else {
    reason = "'" + w.name + "' is a graph input" + where + ", not a constant weight";
  }
  w.reason = reason;
}

void walk(std::vector<scope>& stack, walk_state& st) {
  // Copies: `stack` grows (and may reallocate) while subgraphs are walked.
  const GraphProto& g = *stack.back().g;
  const std::vector<graph_step> path_here = stack.back().path;
  const std::string label = stack.back().label;
  for (int i = 0; i < g.node_size(); ++i) {
    const NodeProto& node = g.node(i);
    const bool b_slot_op = is_matmul_or_gemm(node);
    if (b_slot_op && node.input_size() >= 2) {  // fewer: malformed, ONNX Runtime rejects it
      const bool is_gemm = node.op_type() == "Gemm";
      weight_use u;
      u.path = path_here;
      u.scope = label;
      u.node_index = i;
      u.node_name = node.name();
      u.op_type = node.op_type();
      if (is_gemm) {
        u.trans_b = detail::attr_int(node, "transB", 0) != 0;
        u.alpha = detail::attr_float(node, "alpha", 1.0f);
        u.beta = detail::attr_float(node, "beta", 1.0f);
        if (node.input_size() > 2) u.bias = node.input(2);
      }
      const std::string& b = node.input(1);
      const int level = resolve(stack, b);
      const std::string key = weight_key(stack, level, b);
      auto found = st.index_of.find(key);
      if (found == st.index_of.end()) {
        found = st.index_of.emplace(key, st.weights.size()).first;
        st.keys.push_back(key);
        st.weights.emplace_back();
        st.tensors.push_back(nullptr);
        st.weights.back().name = b;
        define_weight(stack, level, st.weights.back(), st.tensors.back());
        // Kept apart: w.reason collects the Gemm transA reason below.
        st.def_reason.emplace_back();
        st.def_reason.back().swap(st.weights.back().reason);
      }
      weight_info& w = st.weights[found->second];
      w.uses.push_back(u);
      if (is_gemm && detail::attr_int(node, "transA", 0) != 0 && w.reason.empty()) {
        w.reason = node_label(node, i, label) +
                   " has transA = 1 (int4q rewrites Gemm with transA = 0 only)";
      }
    }
    // Every other read: another operand slot, another op.
    for (int j = 0; j < node.input_size(); ++j) {
      const std::string& in = node.input(j);
      if (in.empty() || (b_slot_op && j == 1)) continue;
      const int level = resolve(stack, in);
      if (level < 0) continue;
      st.other_use.emplace(
          weight_key(stack, level, in),
          node_label(node, i, label) +
              (b_slot_op ? " (as input " + std::to_string(j) + ")" : std::string()));
    }
    // Subgraphs, right after their node.
    for (const auto& a : node.attribute()) {
      const std::string base =
          (label.empty() ? std::string() : label + "/") +
          (node.name().empty() ? node.op_type() + "#" + std::to_string(i) : node.name()) + "/" +
          a.name();
      auto enter = [&](const GraphProto& sub, int index) {
        std::vector<graph_step> path = path_here;
        path.push_back(graph_step{i, a.name(), index});
        stack.push_back(make_scope(sub, std::move(path),
                                   index < 0 ? base : base + "[" + std::to_string(index) + "]"));
        walk(stack, st);
        stack.pop_back();
      };
      if (a.has_g()) enter(a.g(), -1);
      for (int k = 0; k < a.graphs_size(); ++k) enter(a.graphs(k), k);
    }
  }
  // A graph's outputs read their names too (a subgraph may output an outer-scope tensor).
  const scope& here = stack.back();
  for (const auto& v : here.g->output()) {
    const int level = resolve(stack, v.name());
    if (level < 0) continue;
    st.other_use.emplace(weight_key(stack, level, v.name()),
                         here.label.empty() ? std::string("the graph outputs")
                                            : "the outputs of subgraph " + here.label);
  }
}

}  // namespace

const GraphProto& graph_at(const GraphProto& main, const std::vector<graph_step>& path) {
  const GraphProto* g = &main;
  for (const graph_step& s : path) {
    if (s.node_index < 0 || s.node_index >= g->node_size()) {
      throw model_error(model_error::kind::invalid,
                        "subgraph path: no node " + std::to_string(s.node_index));
    }
    const ::onnx::AttributeProto* a = detail::find_attr(g->node(s.node_index), s.attribute);
    if (!a || (s.graph_index < 0 && !a->has_g()) ||
        (s.graph_index >= 0 && s.graph_index >= a->graphs_size())) {
      throw model_error(model_error::kind::invalid,
                        "subgraph path: node " + std::to_string(s.node_index) +
                            " has no graph attribute '" + s.attribute + "'");
    }
    g = s.graph_index < 0 ? &a->g() : &a->graphs(s.graph_index);
  }
  return *g;
}

GraphProto& graph_at(GraphProto& main, const std::vector<graph_step>& path) {
  const GraphProto& g = graph_at(static_cast<const GraphProto&>(main), path);
  return const_cast<GraphProto&>(g);  // reached from a mutable `main`
}

std::string display_name(const weight_use& u) {
  if (!u.node_name.empty()) return u.node_name;
  return (u.scope.empty() ? std::string() : u.scope + "/") + u.op_type + "#" +
         std::to_string(u.node_index);
}

std::vector<weight_info> find_weights(const model& m) {
  const GraphProto& g = m.proto.graph();

  walk_state st;
  std::vector<scope> stack;
  stack.push_back(make_scope(g, {}, ""));
  walk(stack, st);
  const scope& main_scope = stack.front();

  // lm_head: main-graph consumers, outputs and constants.
  std::unordered_set<std::string> graph_outputs;
  for (const auto& v : g.output()) graph_outputs.insert(v.name());
  std::unordered_multimap<std::string, int> consumers;
  for (int i = 0; i < g.node_size(); ++i) {
    for (const std::string& in : g.node(i).input()) {
      if (!in.empty()) consumers.emplace(in, i);
    }
  }
  std::unordered_set<std::string> constants;  // initializers (not inputs) and Constant outputs
  for (const auto& [name, t] : main_scope.initializers) {
    if (!main_scope.inputs.count(name)) constants.insert(name);
  }
  for (const auto& [name, index] : main_scope.producer) {
    if (g.node(index).op_type() == "Constant") constants.insert(name);
  }

  for (std::size_t wi = 0; wi < st.weights.size(); ++wi) {
    weight_info& w = st.weights[wi];
    const TensorProto* t = st.tensors[wi];
    std::string reason = st.def_reason[wi];

    if (t) {
      w.type = elem_type_of(t->data_type());
      w.dims.assign(t->dims().begin(), t->dims().end());
    }
    const weight_use& first = w.uses.front();
    if (w.dims.size() == 2) {
      const auto d0 = static_cast<std::size_t>(std::max<std::int64_t>(w.dims[0], 0));
      const auto d1 = static_cast<std::size_t>(std::max<std::int64_t>(w.dims[1], 0));
      w.k = first.trans_b ? d1 : d0;
      w.n = first.trans_b ? d0 : d1;
    }
    if (reason.empty() && t) {
      const int dt = t->data_type();
      if (w.type == elem_type::float64) {
        reason = "'" + w.name +
                 "' is float64: int4q quantizes float32, float16 and bfloat16 "
                 "weights";
      } else if (w.type == elem_type::other) {
        reason = "'" + w.name + "' has data type " + type_name(dt) +
                 ", not a float type (already quantized?)";
      } else if (w.dims.size() != 2) {
        reason = "'" + w.name + "' is " + std::to_string(w.dims.size()) + "-D " +
                 detail::dims_string(w.dims) + ": only 2-D weights are quantized";
      } else if (w.k == 0 || w.n == 0) {
        reason = "'" + w.name + "' " + detail::dims_string(w.dims) + " is empty";
      }
    }
    if (reason.empty()) reason = w.reason;  // Gemm transA, found by the walk
    if (reason.empty()) {
      // Uses must agree on the layout: the stored tensor is [K, N] for MatMul and Gemm
      // transB = 0, [N, K] for Gemm transB = 1.
      for (const weight_use& u : w.uses) {
        if (u.trans_b != first.trans_b) {
          reason = "'" + w.name + "' is used as [K, N] by " + display_name(first) + " (" +
                   first.op_type + (first.trans_b ? " transB = 1" : "") + ") and transposed by " +
                   display_name(u) + " (" + u.op_type + (u.trans_b ? " transB = 1" : "") +
                   "): uses disagree on the layout";
          break;
        }
      }
    }
    if (reason.empty()) {
      const auto other = st.other_use.find(st.keys[wi]);
      if (other != st.other_use.end()) {
        reason = "'" + w.name + "' is also used by " + other->second +
                 " (a tied embedding or another consumer): int4q quantizes weights used only "
                 "as MatMul/Gemm B (tied embeddings: issue 7)";
      }
    }
    w.quantizable = reason.empty();
    w.reason = w.quantizable ? std::string() : reason;

    // lm_head: a main-graph use whose output reaches a graph output (see weights.hpp).
    for (const weight_use& u : w.uses) {
      if (!u.path.empty()) continue;
      const NodeProto& node = g.node(u.node_index);
      if (node.output_size() > 0 &&
          reaches_output(node.output(0), consumers, g, graph_outputs, constants, 0)) {
        w.is_lm_head = true;
      }
    }
  }
  return std::move(st.weights);
}

}  // namespace onnx
}  // namespace int4q
