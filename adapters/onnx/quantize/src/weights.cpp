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

#include <int4q/onnx/graph.hpp>
#include <int4q/onnx/tensor_types.hpp>

#include "const_path.hpp"

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

/// Throws model_error(invalid) when the stored tensor's dims are negative or its size overflows
/// 64 bits (load_model refuses such files; a model built in memory can still hold them), so
/// that K, N and byte counts computed from the dims are sound.
void check_weight_dims(const TensorProto& t) {
  bool ok = tensor_element_count(t).has_value();
  if (ok && elem_type_of(t.data_type()) != elem_type::other)
    ok = tensor_payload_bytes(t).has_value();
  if (!ok) {
    throw model_error(
        model_error::kind::invalid,
        "tensor '" + t.name() + "' has dims " +
            detail::dims_string(std::vector<std::int64_t>(t.dims().begin(), t.dims().end())) +
            " that are negative or whose size overflows 64 bits: fix the model");
  }
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
  const model* m = nullptr;
  std::vector<weight_info> weights;
  std::vector<const TensorProto*> tensors;  // per weight: its stored value (nullptr: none)
  std::vector<std::string> def_reason;      // per weight: why its definition is not a constant
  std::vector<std::string> keys;            // per weight: its key
  std::unordered_map<std::string, std::size_t> index_of;  // weight key -> index in `weights`
  /// tensor key -> every read other than a MatMul/Gemm B: (node id, label); node id is
  /// "<graph key>#<index>", "" for a graph output.
  std::unordered_map<std::string, std::vector<std::pair<std::string, std::string>>> reads;
};

std::string node_id(const std::string& graph_key, int index) {
  return graph_key + "#" + std::to_string(index);
}

// The longest constant path followed back from a B operand.
constexpr std::size_t max_path_nodes = 32;

/// Follows B = `w.name`, computed by path node `first` of scope `s`, back to its stored source:
/// fills w.source, w.path_nodes, w.source_type/dims, w.type/dims (B's) and `t`; returns "" or
/// why B is not a constant path.
std::string trace_path(const model& m, const scope& s, int first, weight_info& w,
                       const TensorProto*& t) {
  const std::string where = s.label.empty() ? std::string() : " of subgraph " + s.label;
  std::vector<int> nodes;
  std::string cur = w.name;
  int index = first;
  // A path that starts at a run-time tensor: named after the node computing B, as any B
  // computed at run time.
  auto run_time = [&](const std::string& what) {
    return "'" + w.name + "' is computed at run time by " +
           node_label(s.g->node(first), first, s.label) + " (from '" + cur + "', " + what +
           "), not a constant weight";
  };
  while (true) {
    const NodeProto& n = s.g->node(index);
    if (n.op_type() == "Constant") {
      const auto* value = detail::find_attr(n, "value");
      if (!value || !value->has_t())
        return node_label(n, index, s.label) + " holds no tensor 'value' attribute";
      t = &value->t();
      w.from_constant_node = true;
      w.constant_node_index = index;
      break;
    }
    if (!detail::is_path_op(n)) return run_time("computed by " + node_label(n, index, s.label));
    if (nodes.size() >= max_path_nodes)
      return "'" + w.name + "' is computed by more than " + std::to_string(max_path_nodes) +
             " Cast/Transpose/Reshape nodes";
    nodes.push_back(index);
    cur = n.input(0);
    const auto prod = s.producer.find(cur);
    if (prod != s.producer.end()) {
      index = prod->second;
      continue;
    }
    const auto init = s.initializers.find(cur);
    if (init == s.initializers.end()) return run_time("a graph input" + where);
    if (s.inputs.count(cur))
      return "'" + cur + "' (the source of '" + w.name + "') is also a graph input" + where +
             " (an overridable initializer): its value can change at run time";
    t = init->second;
    break;
  }
  // A constant source: the shapes and axes the path reads must be constants too.
  for (const int i : nodes) {
    const NodeProto& n = s.g->node(i);
    for (const std::string& aux : detail::path_aux_inputs(n)) {
      if (!detail::constant_tensor(*s.g, aux))
        return node_label(n, i, s.label) + " on the path of '" + w.name + "' reads '" + aux +
               "', not a constant";
    }
  }
  std::reverse(nodes.begin(), nodes.end());
  w.source = cur;
  w.path_nodes = nodes;
  check_weight_dims(*t);
  w.source_type = elem_type_of(t->data_type());
  w.source_dims.assign(t->dims().begin(), t->dims().end());
  if (w.source_type == elem_type::other)
    return "'" + cur + "' (the source of '" + w.name + "') has data type " +
           onnx_type_name(t->data_type()) + ", not a float type";
  w.type = w.source_type;
  w.dims = w.source_dims;
  for (const int i : nodes) {
    const std::string why = detail::path_node_shape(m, *s.g, s.g->node(i), w.dims, w.type);
    if (!why.empty()) return why + " (on the constant path of '" + w.name + "')";
  }
  return "";
}

/// Fills the definition of a new weight `w` that lives at `level` of `stack` (-1: nowhere).
void define_weight(const model& m, const std::vector<scope>& stack, int level, weight_info& w,
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
  } else if (prod != s.producer.end() && detail::is_path_op(s.g->node(prod->second))) {
    reason = trace_path(m, s, prod->second, w, t);
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
        define_weight(*st.m, stack, level, st.weights.back(), st.tensors.back());
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
      const std::string read =
          node_label(node, i, label) +
          (b_slot_op ? " (as input " + std::to_string(j) + ")" : std::string());
      st.reads[weight_key(stack, level, in)].emplace_back(node_id(stack.back().key, i), read);
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
    const std::string read = here.label.empty() ? std::string("the graph outputs")
                                                : "the outputs of subgraph " + here.label;
    st.reads[weight_key(stack, level, v.name())].emplace_back("", read);
  }
}

/// The first read of one of `keys` by a node not in `allowed` (or a graph output); "" if none.
std::string first_other_read(const walk_state& st, const std::vector<std::string>& keys,
                             const std::unordered_set<std::string>& allowed) {
  for (const std::string& key : keys) {
    const auto it = st.reads.find(key);
    if (it == st.reads.end()) continue;
    for (const auto& [id, read] : it->second)
      if (id.empty() || !allowed.count(id)) return read;
  }
  return "";
}

}  // namespace

std::string display_name(const weight_use& u) {
  if (!u.node_name.empty()) return u.node_name;
  return (u.scope.empty() ? std::string() : u.scope + "/") + u.op_type + "#" +
         std::to_string(u.node_index);
}

std::vector<weight_info> find_weights(const model& m) {
  const GraphProto& g = m.proto.graph();

  walk_state st;
  st.m = &m;
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

  // Every node on a constant path that leads to a weight: it may read a path's tensors.
  std::unordered_set<std::string> path_node_ids;
  for (std::size_t wi = 0; wi < st.weights.size(); ++wi) {
    if (!st.def_reason[wi].empty()) continue;
    const std::string key = detail::path_key(st.weights[wi].defined_in);
    for (const int i : st.weights[wi].path_nodes) path_node_ids.insert(node_id(key, i));
  }

  for (std::size_t wi = 0; wi < st.weights.size(); ++wi) {
    weight_info& w = st.weights[wi];
    const TensorProto* t = st.tensors[wi];
    std::string reason = st.def_reason[wi];

    if (t && w.path_nodes.empty()) {
      w.source = w.name;
      check_weight_dims(*t);
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
        reason = "'" + w.name + "' has data type " + onnx_type_name(dt) +
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
      // B, and on a constant path the source and the tensors between, are read only by the
      // uses and by path nodes (of this weight or of others sharing a prefix).
      const std::string graph_key = detail::path_key(w.defined_in);
      std::vector<std::string> keys = {st.keys[wi]};
      if (!w.path_nodes.empty()) {
        keys.push_back(graph_key + "\n" + w.source);
        const GraphProto& dg = graph_at(g, w.defined_in);
        for (std::size_t p = 0; p + 1 < w.path_nodes.size(); ++p)
          keys.push_back(graph_key + "\n" + dg.node(w.path_nodes[p]).output(0));
      }
      const std::string other = first_other_read(st, keys, path_node_ids);
      if (!other.empty()) {
        reason = "'" + w.name + "' is also used by " + other +
                 " (a tied embedding or another consumer): int4q quantizes weights used only "
                 "as MatMul/Gemm B (a table also read by a Gather: `embeddings = quantize`)";
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

namespace {

void collect_subgraph_reads(const GraphProto& g, std::unordered_set<std::string>& reads) {
  for (const NodeProto& n : g.node()) {
    for (const std::string& in : n.input()) reads.insert(in);
    for (const auto& a : n.attribute()) {
      if (a.has_g()) collect_subgraph_reads(a.g(), reads);
      for (const auto& sub : a.graphs()) collect_subgraph_reads(sub, reads);
    }
  }
  for (const auto& v : g.output()) reads.insert(v.name());
}

bool is_default_domain(const NodeProto& n) { return n.domain().empty() || n.domain() == "ai.onnx"; }

weight_use main_use(const NodeProto& node, int index) {
  weight_use u;
  u.node_index = index;
  u.node_name = node.name();
  u.op_type = node.op_type();
  if (node.op_type() == "Gemm") {
    u.trans_b = detail::attr_int(node, "transB", 0) != 0;
    u.alpha = detail::attr_float(node, "alpha", 1.0f);
    u.beta = detail::attr_float(node, "beta", 1.0f);
    if (node.input_size() > 2) u.bias = node.input(2);
  }
  return u;
}

}  // namespace

std::vector<embedding_info> find_embeddings(const model& m) {
  const GraphProto& g = m.proto.graph();
  std::unordered_set<std::string> inputs, outputs, sub_reads;
  for (const auto& v : g.input()) inputs.insert(v.name());
  for (const auto& v : g.output()) outputs.insert(v.name());
  std::unordered_map<std::string, const TensorProto*> initializers;
  for (const TensorProto& t : g.initializer()) initializers.emplace(t.name(), &t);
  std::unordered_map<std::string, int> producer;
  // name -> (node index, input slot) of every main-graph read, in graph order.
  std::unordered_map<std::string, std::vector<std::pair<int, int>>> readers;
  for (int i = 0; i < g.node_size(); ++i) {
    const NodeProto& n = g.node(i);
    for (const std::string& o : n.output())
      if (!o.empty()) producer.emplace(o, i);
    for (int j = 0; j < n.input_size(); ++j)
      if (!n.input(j).empty()) readers[n.input(j)].emplace_back(i, j);
    for (const auto& a : n.attribute()) {
      if (a.has_g()) collect_subgraph_reads(a.g(), sub_reads);
      for (const auto& sub : a.graphs()) collect_subgraph_reads(sub, sub_reads);
    }
  }
  auto reads_of = [&](const std::string& name) -> const std::vector<std::pair<int, int>>& {
    static const std::vector<std::pair<int, int>> none;
    const auto it = readers.find(name);
    return it == readers.end() ? none : it->second;
  };
  auto label = [&](int index) { return node_label(g.node(index), index); };

  std::vector<embedding_info> out;
  std::unordered_set<std::string> seen;
  for (int i = 0; i < g.node_size(); ++i) {
    const NodeProto& gather = g.node(i);
    if (gather.op_type() != "Gather" || !is_default_domain(gather) || gather.input_size() < 2)
      continue;
    const std::string& name = gather.input(0);
    if (seen.count(name)) continue;
    // Only constant tables: a Gather on a computed tensor (Shape -> Gather) is no embedding. A
    // table may be a constant path's output: followed back to its stored source.
    const TensorProto* t = nullptr;
    embedding_info e;
    std::string cur = name;
    std::vector<int> path;
    while (true) {
      const auto prod = producer.find(cur);
      if (prod == producer.end()) {
        const auto init = initializers.find(cur);
        if (init != initializers.end()) t = init->second;
        break;
      }
      const NodeProto& n = g.node(prod->second);
      if (n.op_type() == "Constant") {
        const auto* value = detail::find_attr(n, "value");
        if (value && value->has_t()) {
          t = &value->t();
          e.from_constant_node = true;
          e.constant_node_index = prod->second;
        }
        break;
      }
      if (!detail::is_path_op(n) || path.size() >= max_path_nodes) break;
      path.push_back(prod->second);
      cur = n.input(0);
    }
    if (!t) continue;
    // Through a path, only float sources are tables (a Cast of int64 constants is no embedding).
    if (!path.empty() && elem_type_of(t->data_type()) == elem_type::other) continue;
    check_weight_dims(*t);
    seen.insert(name);
    e.name = name;
    e.source = cur;
    e.path_nodes.assign(path.rbegin(), path.rend());
    e.source_type = elem_type_of(t->data_type());
    e.source_dims.assign(t->dims().begin(), t->dims().end());
    e.type = e.source_type;
    e.dims = e.source_dims;
    std::string reason;
    for (const int p : e.path_nodes) {
      const NodeProto& n = g.node(p);
      for (const std::string& aux : detail::path_aux_inputs(n)) {
        if (reason.empty() && !detail::constant_tensor(g, aux))
          reason = label(p) + " on the path of '" + name + "' reads '" + aux + "', not a constant";
      }
      if (!reason.empty()) break;
      reason = detail::path_node_shape(m, g, n, e.dims, e.type);
      if (!reason.empty()) reason += " (on the constant path of '" + name + "')";
    }
    // The table's type after the path (a path from a float source only Casts to float types).
    const int table_type = e.path_nodes.empty() ? t->data_type() : TensorProto::DOUBLE;
    if (!reason.empty()) {
      // the path's
    } else if (inputs.count(e.source)) {
      reason = "'" + e.source + "'" +
               (e.path_nodes.empty() ? "" : " (the source of '" + name + "')") +
               " is also a graph input (an overridable initializer)";
    } else if (e.type == elem_type::other || e.type == elem_type::float64) {
      reason = "'" + name + "' has data type " + onnx_type_name(table_type) +
               ": int4q quantizes float32, float16 and bfloat16 tables";
    } else if (e.dims.size() != 2) {
      reason = "'" + name + "' is " + std::to_string(e.dims.size()) + "-D " +
               detail::dims_string(e.dims) + ": only 2-D tables [vocabulary, hidden] are quantized";
    } else if (e.dims[0] <= 0 || e.dims[1] <= 0) {
      reason = "'" + name + "' " + detail::dims_string(e.dims) + " is empty";
    }
    if (e.dims.size() == 2) {
      e.rows = static_cast<std::size_t>(std::max<std::int64_t>(e.dims[0], 0));
      e.cols = static_cast<std::size_t>(std::max<std::int64_t>(e.dims[1], 0));
    }
    if (reason.empty() && outputs.count(name)) reason = "'" + name + "' is a graph output";
    if (reason.empty() && sub_reads.count(name))
      reason = "'" + name + "' is read inside a subgraph";
    for (const auto& [j, slot] : reads_of(name)) {
      const NodeProto& r = g.node(j);
      if (r.op_type() == "Gather" && is_default_domain(r) && slot == 0) {
        std::int64_t axis = detail::attr_int(r, "axis", 0);
        if (axis < 0) axis += static_cast<std::int64_t>(e.dims.size());
        if (axis != 0 && reason.empty())
          reason = label(j) + " gathers '" + name + "' on axis " + std::to_string(axis) +
                   " (embeddings are gathered on axis 0)";
        e.gathers.push_back(main_use(r, j));
      } else if (is_matmul_or_gemm(r) && slot == 1) {
        e.tied.push_back(main_use(r, j));
        if (r.op_type() == "Gemm" && detail::attr_int(r, "transA", 0) != 0 && reason.empty())
          reason = label(j) + " (tied) has transA = 1";
      } else if (r.op_type() == "Transpose" && is_default_domain(r) && slot == 0 &&
                 r.output_size() == 1) {
        const auto* perm = detail::find_attr(r, "perm");
        const bool swap =
            !perm || (perm->ints_size() == 2 && perm->ints(0) == 1 && perm->ints(1) == 0);
        const std::string& tout = r.output(0);
        std::string bad;
        if (!swap) bad = label(j) + " permutes '" + name + "' other than [1, 0]";
        if (outputs.count(tout) || sub_reads.count(tout))
          bad = label(j) + "'s output is a graph output or read inside a subgraph";
        for (const auto& [k, kslot] : reads_of(tout)) {
          const NodeProto& mm = g.node(k);
          if (!is_matmul_or_gemm(mm) || kslot != 1) {
            if (bad.empty())
              bad = "'" + name + "' is transposed for " + label(k) + ", not a MatMul/Gemm B";
            continue;
          }
          weight_use u = main_use(mm, k);
          u.trans_b = !u.trans_b;  // the node multiplies by table^T (or, Gemm transB, the table)
          if (mm.op_type() == "Gemm" && detail::attr_int(mm, "transA", 0) != 0 && bad.empty())
            bad = label(k) + " (tied) has transA = 1";
          e.tied.push_back(u);
        }
        e.transposes.push_back(j);
        if (reason.empty()) reason = bad;
      } else if (reason.empty()) {
        reason = "'" + name + "' is also read by " + label(j) + " (input " + std::to_string(slot) +
                 "): only Gather, MatMul/Gemm B and a Transpose feeding "
                 "them can share a quantized table";
      }
    }
    e.quantizable = reason.empty();
    e.reason = reason;
    out.push_back(std::move(e));
  }
  return out;
}

}  // namespace onnx
}  // namespace int4q
