// validate_model: the whole-model checks run before any work (see validate.hpp for the list).
#include <int4q/onnx/validate.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <system_error>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include <int4q/onnx/tensor_types.hpp>

#include "writers.hpp"

namespace int4q {
namespace onnx {

namespace {

using ::onnx::AttributeProto;
using ::onnx::GraphProto;
using ::onnx::NodeProto;
using ::onnx::SparseTensorProto;
using ::onnx::TensorProto;
using ::onnx::ValueInfoProto;
using kind = model_error::kind;

/// Bytes read from an external data file at a time by the NaN/Inf scan.
constexpr std::size_t scan_chunk_bytes = std::size_t{4} << 20;

std::string dims_text(const TensorProto& t) {
  return detail::dims_string(std::vector<std::int64_t>(t.dims().begin(), t.dims().end()));
}

std::string shape_text(const std::vector<std::int64_t>& s) {
  std::string out = "[";
  for (std::size_t i = 0; i < s.size(); ++i)
    out += (i ? ", " : "") + (s[i] < 0 ? std::string("?") : std::to_string(s[i]));
  return out + "]";
}

std::uint64_t saturating_mul(std::uint64_t a, std::uint64_t b) {
  if (a != 0 && b > std::numeric_limits<std::uint64_t>::max() / a)
    return std::numeric_limits<std::uint64_t>::max();
  return a * b;
}

std::string node_text(const NodeProto& n, int index) {
  return n.op_type() + " '" +
         (n.name().empty() ? n.op_type() + "#" + std::to_string(index) : n.name()) + "'";
}

/// Every subgraph of a node: (attribute name, graph).
std::vector<std::pair<std::string, const GraphProto*>> subgraphs_of(const NodeProto& n) {
  std::vector<std::pair<std::string, const GraphProto*>> out;
  for (const AttributeProto& a : n.attribute()) {
    if (a.has_g()) out.emplace_back(a.name(), &a.g());
    for (const GraphProto& g : a.graphs()) out.emplace_back(a.name(), &g);
  }
  return out;
}

/// Where a subgraph lies, for messages: " (in the 'then_branch' of If 'if0')", nested ones
/// outermost first (" (in the 'body' of Loop 'l', in the 'then_branch' of If 'i')"); "" is the
/// main graph.
std::string in_subgraph(const std::string& outer_where, const NodeProto& n, int index,
                        const std::string& attribute) {
  const std::string step = "in the '" + attribute + "' of " + node_text(n, index) + ")";
  if (outer_where.empty()) return " (" + step;
  return outer_where.substr(0, outer_where.size() - 1) + ", " + step;
}

/// Names read by a graph's nodes, its subgraphs included (over-approximates the outer names).
void names_read(const GraphProto& g, std::unordered_set<std::string>& out) {
  for (const NodeProto& n : g.node()) {
    for (const std::string& name : n.input())
      if (!name.empty()) out.insert(name);
    for (const auto& sub : subgraphs_of(n)) names_read(*sub.second, out);
  }
}

/// The shared state of one validation.
struct validator {
  const model& m;
  const validate_options& options;
  validation_report& report;
  std::string file;  ///< "'path': " or "" for a model built in memory
  std::set<std::string> quantized;
  /// Every MatMul/Gemm B operand and Gather table stored as a constant (find_weights,
  /// find_embeddings), quantized or not.
  std::set<std::string> weights;

  [[noreturn]] void fail(kind k, const std::string& message) const {
    throw model_error(k, file + message);
  }

  // ---- 1. Graph structure ---------------------------------------------------------------------

  /// One graph on the walk inwards: the names visible so far and every node output's producer.
  struct level {
    const GraphProto* g = nullptr;
    std::string where;
    std::unordered_set<std::string> defined;
    std::unordered_map<std::string, int> producer;
  };

  static bool visible(const std::vector<const level*>& chain, const std::string& name) {
    for (const level* l : chain)
      if (l->defined.count(name)) return true;
    return false;
  }

  void check_graph(const GraphProto& g, const std::string& where,
                   std::vector<const level*>& chain) {
    level l;
    l.g = &g;
    l.where = where;
    std::unordered_set<std::string> inputs, initializers;
    for (const ValueInfoProto& v : g.input()) {
      if (v.name().empty()) fail(kind::invalid, "a graph input has no name" + where);
      if (!inputs.insert(v.name()).second) {
        fail(kind::invalid, "graph input '" + v.name() + "' is declared twice" + where +
                                ": names must be unique; fix the model");
      }
    }
    auto add_initializer = [&](const std::string& name, const char* what) {
      if (name.empty()) fail(kind::invalid, std::string("a ") + what + " has no name" + where);
      if (!initializers.insert(name).second) {
        fail(kind::invalid, std::string(what) + " '" + name + "' is defined twice" + where +
                                ": initializer names must be unique; fix the model");
      }
    };
    for (const TensorProto& t : g.initializer()) add_initializer(t.name(), "initializer");
    for (const SparseTensorProto& s : g.sparse_initializer())
      add_initializer(s.values().name(), "sparse initializer");
    l.defined = inputs;
    l.defined.insert(initializers.begin(), initializers.end());
    for (int i = 0; i < g.node_size(); ++i) {
      const NodeProto& n = g.node(i);
      for (const std::string& out : n.output()) {
        if (out.empty()) continue;
        const auto [it, fresh] = l.producer.emplace(out, i);
        if (!fresh) {
          fail(kind::invalid, node_text(g.node(it->second), it->second) + " and " +
                                  node_text(n, i) + " both produce '" + out + "'" + where +
                                  ": every value has one producer; fix the model");
        }
        if (inputs.count(out) || initializers.count(out)) {
          fail(kind::invalid, node_text(n, i) + " produces '" + out + "', which is also " +
                                  (inputs.count(out) ? "a graph input" : "an initializer") + where +
                                  ": every value has one producer; fix the model");
        }
      }
    }
    chain.insert(chain.begin(), &l);  // innermost first
    for (int i = 0; i < g.node_size(); ++i) {
      const NodeProto& n = g.node(i);
      ++report.nodes;
      for (const std::string& in : n.input()) {
        if (in.empty() || visible(chain, in)) continue;
        const auto p = l.producer.find(in);
        if (p != l.producer.end()) order_error(g, where, i, in, p->second);
        for (std::size_t k = 1; k < chain.size(); ++k) {
          const auto q = chain[k]->producer.find(in);
          if (q != chain[k]->producer.end()) {
            fail(kind::invalid, node_text(n, i) + where + " reads '" + in + "', which " +
                                    node_text(chain[k]->g->node(q->second), q->second) +
                                    " computes only after the node holding this subgraph: "
                                    "fix the model");
          }
        }
        fail(kind::invalid, node_text(n, i) + where + " reads '" + in +
                                "', which no node, initializer or graph input defines: the "
                                "model is incomplete; fix or re-export it");
      }
      for (const auto& [attribute, sub] : subgraphs_of(n))
        check_graph(*sub, in_subgraph(where, n, i, attribute), chain);
      for (const std::string& out : n.output())
        if (!out.empty()) l.defined.insert(out);
    }
    for (const ValueInfoProto& v : g.output()) {
      if (!visible(chain, v.name())) {
        fail(kind::invalid, "graph output '" + v.name() + "'" + where +
                                " is not computed by any node, initializer or graph input: fix "
                                "the model");
      }
    }
    chain.erase(chain.begin());
  }

  /// Node `i` reads `name`, produced by node `j` >= i of the same graph: a cycle or nodes out of
  /// order. Tells which (Kahn's algorithm over the graph's nodes, names read inside a node's
  /// subgraphs counted as its inputs).
  [[noreturn]] void order_error(const GraphProto& g, const std::string& where, int i,
                                const std::string& name, int j) {
    const int count = g.node_size();
    std::unordered_map<std::string, int> producer;
    for (int k = 0; k < count; ++k)
      for (const std::string& out : g.node(k).output())
        if (!out.empty()) producer.emplace(out, k);
    std::vector<std::vector<int>> deps(static_cast<std::size_t>(count));
    std::vector<std::vector<int>> users(static_cast<std::size_t>(count));
    for (int k = 0; k < count; ++k) {
      std::unordered_set<std::string> reads;
      for (const std::string& in : g.node(k).input())
        if (!in.empty()) reads.insert(in);
      for (const auto& sub : subgraphs_of(g.node(k))) names_read(*sub.second, reads);
      std::set<int> from;
      for (const std::string& r : reads) {
        const auto p = producer.find(r);
        if (p != producer.end()) from.insert(p->second);
      }
      for (const int f : from) {
        deps[static_cast<std::size_t>(k)].push_back(f);
        users[static_cast<std::size_t>(f)].push_back(k);
      }
    }
    std::vector<std::size_t> pending(static_cast<std::size_t>(count));
    std::vector<int> ready;
    for (int k = 0; k < count; ++k) {
      pending[static_cast<std::size_t>(k)] = deps[static_cast<std::size_t>(k)].size();
      if (pending[static_cast<std::size_t>(k)] == 0) ready.push_back(k);
    }
    std::size_t sorted = 0;
    while (!ready.empty()) {
      const int k = ready.back();
      ready.pop_back();
      ++sorted;
      for (const int u : users[static_cast<std::size_t>(k)])
        if (--pending[static_cast<std::size_t>(u)] == 0) ready.push_back(u);
    }
    const NodeProto& reader = g.node(i);
    if (sorted == static_cast<std::size_t>(count)) {
      fail(kind::invalid,
           node_text(reader, i) + where + " reads '" + name + "', which " +
               node_text(g.node(j), j) +
               " computes later in the node list: ONNX requires nodes "
               "in topological order (onnx.checker refuses this model; int4q does not reorder "
               "it); sort the nodes (e.g. with onnx-simplifier) and retry");
    }
    // Every node left has a dependency left: follow them until one repeats, which closes a
    // cycle. Start from the reader when it is on one.
    int cur = pending[static_cast<std::size_t>(i)] ? i : -1;
    for (int k = 0; cur < 0 && k < count; ++k)
      if (pending[static_cast<std::size_t>(k)]) cur = k;
    std::vector<int> walk;
    std::unordered_map<int, std::size_t> position;
    while (!position.count(cur)) {
      position[cur] = walk.size();
      walk.push_back(cur);
      for (const int d : deps[static_cast<std::size_t>(cur)]) {
        if (pending[static_cast<std::size_t>(d)]) {
          cur = d;
          break;
        }
      }
    }
    // walk[position[cur]..] is the cycle, each node reading from the next: print it in data
    // flow order (producer -> consumer).
    std::vector<int> cycle(walk.begin() + static_cast<std::ptrdiff_t>(position[cur]), walk.end());
    std::reverse(cycle.begin(), cycle.end());
    std::string path;
    for (const int k : cycle) path += node_text(g.node(k), k) + " -> ";
    path += node_text(g.node(cycle.front()), cycle.front());
    fail(kind::invalid, "the graph" + where + " has a cycle: " + path +
                            ": an ONNX graph must be acyclic; fix the model");
  }

  // ---- 2. Tensors -----------------------------------------------------------------------------

  /// A dense tensor checked by check_tensor, for the memory and value checks.
  struct dense_tensor {
    const TensorProto* t = nullptr;
    std::string label;       ///< "initializer 'w'", "tensor of Constant 'c' attribute 'value'"
    std::string value_name;  ///< the value it defines (initializer / Constant output name)
    bool is_initializer = false;
  };
  std::vector<dense_tensor> dense;

  /// Checks type, dims, size and payload of `t`; `label` names it in messages.
  void check_tensor(const TensorProto& t, const std::string& label) {
    ++report.tensors;
    const int dt = t.data_type();
    if (dt == TensorProto::UNDEFINED) {
      fail(kind::invalid, label + " has no data type (UNDEFINED): fix the model (re-export it)");
    }
    if (dt < 0 || dt > onnx_last_data_type) {
      fail(dt < 0 ? kind::invalid : kind::unsupported,
           label + " has data type " + std::to_string(dt) +
               ", which int4q does not know (it reads ONNX types 1 to " +
               std::to_string(onnx_last_data_type) + "): re-export it with a standard type");
    }
    for (const std::int64_t d : t.dims()) {
      if (d < 0) {
        fail(kind::invalid, label + " has a negative dimension " + std::to_string(d) + " in dims " +
                                dims_text(t) + ": fix the model (re-export it)");
      }
    }
    const auto count = tensor_element_count(t);
    const auto bytes = tensor_payload_bytes(t);
    if (!count || (dt != TensorProto::STRING && !bytes)) {
      fail(kind::invalid, label + " has dims " + dims_text(t) + " whose " +
                              (count ? "byte size" : "element count") +
                              " overflows 64 bits: fix the model (re-export it)");
    }
    const std::string what = label + " " + dims_text(t) + " " + onnx_type_word(dt);
    const int typed = t.float_data_size() + t.int32_data_size() + t.int64_data_size() +
                      t.double_data_size() + t.uint64_data_size() + t.string_data_size();
    if (is_external(t)) {
      try {
        detail::parse_external_ref(t);
      } catch (const model_error& e) {
        fail(e.what_kind(), label + ": " + e.what());
      }
      if (dt == TensorProto::STRING) {
        fail(kind::invalid, what +
                                " is stored externally: ONNX keeps strings inline; fix the "
                                "model");
      }
      if (t.has_raw_data() || typed) {
        fail(kind::invalid, what + " is stored externally and inline at once: fix the model");
      }
      return;  // the range in its file: load_model
    }
    if (t.has_raw_data()) {
      if (dt == TensorProto::STRING) {
        fail(kind::invalid, what +
                                " holds raw_data: ONNX stores strings in string_data; fix "
                                "the model");
      }
      if (typed) {
        fail(kind::invalid,
             what + " holds both raw_data and typed values: keep one; fix the model");
      }
      if (t.raw_data().size() != *bytes) {
        fail(kind::invalid, what + " holds " + std::to_string(t.raw_data().size()) +
                                " bytes of raw_data but its dims need " + std::to_string(*bytes) +
                                ": fix the model (re-export it)");
      }
      return;
    }
    // Typed fields: which one holds the type, and how many entries the dims need.
    const char* field = "int32_data";
    std::uint64_t have = static_cast<std::uint64_t>(t.int32_data_size());
    std::uint64_t need = *count;
    switch (dt) {
      case TensorProto::FLOAT:
      case TensorProto::COMPLEX64:
        field = "float_data";
        have = static_cast<std::uint64_t>(t.float_data_size());
        need = dt == TensorProto::COMPLEX64 ? saturating_mul(*count, 2) : *count;
        break;
      case TensorProto::DOUBLE:
      case TensorProto::COMPLEX128:
        field = "double_data";
        have = static_cast<std::uint64_t>(t.double_data_size());
        need = dt == TensorProto::COMPLEX128 ? saturating_mul(*count, 2) : *count;
        break;
      case TensorProto::INT64:
        field = "int64_data";
        have = static_cast<std::uint64_t>(t.int64_data_size());
        break;
      case TensorProto::UINT32:
      case TensorProto::UINT64:
        field = "uint64_data";
        have = static_cast<std::uint64_t>(t.uint64_data_size());
        break;
      case TensorProto::STRING:
        field = "string_data";
        have = static_cast<std::uint64_t>(t.string_data_size());
        break;
      case onnx_uint4:
      case onnx_int4:
      case onnx_float4e2m1:
        need = *count / 2 + (*count & 1);
        break;  // two 4-bit values per int32_data entry
      default: break;
    }
    if (have != need || static_cast<std::uint64_t>(typed) != have) {
      fail(kind::invalid,
           what + " holds " + std::to_string(have) + " values in " + field +
               (static_cast<std::uint64_t>(typed) != have ? " (and values in other fields)" : "") +
               " but its dims need " + std::to_string(need) + ": fix the model (re-export it)");
    }
  }

  void check_sparse(const SparseTensorProto& s, const std::string& label) {
    for (const std::int64_t d : s.dims()) {
      if (d < 0) {
        fail(kind::invalid, label + " has a negative dimension " + std::to_string(d) +
                                ": fix the model (re-export it)");
      }
    }
    check_tensor(s.values(), label + " values");
    if (s.has_indices()) check_tensor(s.indices(), label + " indices");
  }

  void check_attribute_tensors(const NodeProto& n, int index, const std::string& where) {
    for (const AttributeProto& a : n.attribute()) {
      const std::string label =
          "tensor of " + node_text(n, index) + " attribute '" + a.name() + "'" + where;
      const bool constant_value = n.op_type() == "Constant" && a.name() == "value" &&
                                  n.output_size() > 0 &&
                                  (n.domain().empty() || n.domain() == "ai.onnx");
      if (a.has_t()) {
        check_tensor(a.t(), label);
        dense.push_back({&a.t(), label, constant_value ? n.output(0) : std::string(), false});
      }
      for (const TensorProto& t : a.tensors()) {
        check_tensor(t, label);
        dense.push_back({&t, label, std::string(), false});
      }
      if (a.has_sparse_tensor()) check_sparse(a.sparse_tensor(), "sparse " + label);
      for (const SparseTensorProto& s : a.sparse_tensors()) check_sparse(s, "sparse " + label);
    }
  }

  void check_tensors(const GraphProto& g, const std::string& where) {
    for (const TensorProto& t : g.initializer()) {
      const std::string label = "initializer '" + t.name() + "'" + where;
      check_tensor(t, label);
      dense.push_back({&t, label, t.name(), true});
    }
    for (const SparseTensorProto& s : g.sparse_initializer())
      check_sparse(s, "sparse initializer '" + s.values().name() + "'" + where);
    for (int i = 0; i < g.node_size(); ++i) {
      const NodeProto& n = g.node(i);
      check_attribute_tensors(n, i, where);
      for (const auto& [attribute, sub] : subgraphs_of(n))
        check_tensors(*sub, in_subgraph(where, n, i, attribute));
    }
  }

  // ---- 3. MatMul / Gemm shapes ----------------------------------------------------------------

  using shape = std::vector<std::int64_t>;  // -1: unknown dimension

  struct shape_level {
    std::unordered_set<std::string> names;  // defined so far in this graph
    std::unordered_map<std::string, shape> shapes;
    std::unordered_map<std::string, const TensorProto*> constants;
  };

  /// The innermost graph defining `name` decides (subgraph names shadow outer ones).
  static const shape_level* owner(const std::vector<shape_level*>& chain, const std::string& name) {
    for (const shape_level* l : chain)
      if (l->names.count(name)) return l;
    return nullptr;
  }
  static const shape* shape_of(const std::vector<shape_level*>& chain, const std::string& name) {
    const shape_level* l = owner(chain, name);
    if (!l) return nullptr;
    const auto it = l->shapes.find(name);
    return it == l->shapes.end() ? nullptr : &it->second;
  }
  static const TensorProto* constant_of(const std::vector<shape_level*>& chain,
                                        const std::string& name) {
    const shape_level* l = owner(chain, name);
    if (!l) return nullptr;
    const auto it = l->constants.find(name);
    return it == l->constants.end() ? nullptr : it->second;
  }

  static void add_value_info(shape_level& l, const ValueInfoProto& v) {
    if (!v.type().has_tensor_type() || !v.type().tensor_type().has_shape()) return;
    shape s;
    for (const auto& d : v.type().tensor_type().shape().dim())
      s.push_back(d.has_dim_value() && d.dim_value() >= 0 ? d.dim_value() : -1);
    l.shapes.emplace(v.name(), std::move(s));
  }

  static std::int64_t attr_or(const NodeProto& n, const char* name, std::int64_t dflt) {
    for (const AttributeProto& a : n.attribute())
      if (a.name() == name) return a.i();
    return dflt;
  }

  void check_shapes(const GraphProto& g, const std::string& where,
                    std::vector<shape_level*>& chain) {
    shape_level l;
    for (const ValueInfoProto& v : g.input()) {
      l.names.insert(v.name());
      add_value_info(l, v);
    }
    for (const ValueInfoProto& v : g.value_info()) add_value_info(l, v);
    for (const ValueInfoProto& v : g.output()) add_value_info(l, v);
    for (const TensorProto& t : g.initializer()) {
      l.names.insert(t.name());
      l.shapes[t.name()] = shape(t.dims().begin(), t.dims().end());
      l.constants[t.name()] = &t;
    }
    for (const SparseTensorProto& s : g.sparse_initializer()) l.names.insert(s.values().name());
    chain.insert(chain.begin(), &l);
    for (int i = 0; i < g.node_size(); ++i) {
      const NodeProto& n = g.node(i);
      const bool default_domain = n.domain().empty() || n.domain() == "ai.onnx";
      if (default_domain && n.op_type() == "Constant" && n.output_size() > 0) {
        for (const AttributeProto& a : n.attribute()) {
          if (a.name() == "value" && a.has_t()) {
            l.shapes[n.output(0)] = shape(a.t().dims().begin(), a.t().dims().end());
            l.constants[n.output(0)] = &a.t();
          }
        }
      }
      if (default_domain && n.op_type() == "MatMul" && n.input_size() == 2 && n.output_size() > 0) {
        check_matmul(n, i, where, chain, l);
      }
      if (default_domain && n.op_type() == "Gemm" && n.input_size() >= 2 && n.output_size() > 0) {
        check_gemm(n, i, where, chain, l);
      }
      for (const auto& [attribute, sub] : subgraphs_of(n))
        check_shapes(*sub, in_subgraph(where, n, i, attribute), chain);
      for (const std::string& out : n.output())
        if (!out.empty()) l.names.insert(out);
    }
    chain.erase(chain.begin());
  }

  void check_matmul(const NodeProto& n, int i, const std::string& where,
                    const std::vector<shape_level*>& chain, shape_level& l) {
    const TensorProto* b = constant_of(chain, n.input(1));
    if (!b) return;
    const shape bs(b->dims().begin(), b->dims().end());
    const std::string node = node_text(n, i) + where;
    if (bs.empty()) {
      fail(kind::invalid, node + ": its weight '" + n.input(1) +
                              "' is a scalar; MatMul multiplies tensors of at least 1 dimension: "
                              "fix the model");
    }
    const std::int64_t k = bs.size() == 1 ? bs[0] : bs[bs.size() - 2];
    const shape* as = shape_of(chain, n.input(0));
    if (!as) return;
    if (as->empty()) {
      fail(kind::invalid, node + ": its input '" + n.input(0) +
                              "' is a scalar; MatMul multiplies tensors of at least 1 dimension: "
                              "fix the model");
    }
    if (as->back() >= 0 && as->back() != k) {
      fail(kind::invalid, node + " multiplies '" + n.input(0) + "' " + shape_text(*as) +
                              " by the weight '" + n.input(1) + "' " + shape_text(bs) +
                              ": the last dimension of '" + n.input(0) + "' (" +
                              std::to_string(as->back()) + ") must equal the weight's K (" +
                              std::to_string(k) +
                              "); the model is inconsistent (ONNX Runtime refuses it): fix or "
                              "re-export it");
    }
    if (as->size() >= 2 && bs.size() == 2) {
      shape out(as->begin(), as->end() - 1);
      out.push_back(bs[1]);
      l.shapes.emplace(n.output(0), std::move(out));
    }
  }

  void check_gemm(const NodeProto& n, int i, const std::string& where,
                  const std::vector<shape_level*>& chain, shape_level& l) {
    const TensorProto* b = constant_of(chain, n.input(1));
    if (!b) return;
    const shape bs(b->dims().begin(), b->dims().end());
    const std::string node = node_text(n, i) + where;
    if (bs.size() != 2) {
      fail(kind::invalid, node + ": its weight '" + n.input(1) + "' is " +
                              std::to_string(bs.size()) + "-D " + shape_text(bs) +
                              "; Gemm multiplies 2-D matrices: fix the model");
    }
    const bool trans_a = attr_or(n, "transA", 0) != 0;
    const bool trans_b = attr_or(n, "transB", 0) != 0;
    const std::int64_t k = trans_b ? bs[1] : bs[0];
    const std::int64_t cols = trans_b ? bs[0] : bs[1];
    const std::string attrs =
        " (transA = " + std::to_string(trans_a) + ", transB = " + std::to_string(trans_b) + ")";
    std::int64_t rows = -1;
    if (const shape* as = shape_of(chain, n.input(0))) {
      if (as->size() != 2) {
        fail(kind::invalid, node + ": its input '" + n.input(0) + "' is " +
                                std::to_string(as->size()) + "-D " + shape_text(*as) +
                                "; Gemm multiplies 2-D matrices: fix the model");
      }
      const std::int64_t ka = trans_a ? (*as)[0] : (*as)[1];
      rows = trans_a ? (*as)[1] : (*as)[0];
      if (ka >= 0 && ka != k) {
        fail(kind::invalid,
             node + attrs + " multiplies '" + n.input(0) + "' " + shape_text(*as) +
                 " by the weight '" + n.input(1) + "' " + shape_text(bs) + ", read as [K, N] = [" +
                 std::to_string(k) + ", " + std::to_string(cols) + "]: the K of '" + n.input(0) +
                 "' (" + std::to_string(ka) + ") must equal the weight's (" + std::to_string(k) +
                 "); check transA/transB or re-export the model");
      }
    }
    if (n.input_size() >= 3 && !n.input(2).empty()) {
      if (const shape* cs = shape_of(chain, n.input(2))) {
        const bool bad_rank = cs->size() > 2;
        const bool bad_n = !cs->empty() && cs->back() >= 0 && cs->back() != 1 && cs->back() != cols;
        const bool bad_m =
            cs->size() == 2 && (*cs)[0] >= 0 && rows >= 0 && (*cs)[0] != 1 && (*cs)[0] != rows;
        if (bad_rank || bad_n || bad_m) {
          fail(kind::invalid,
               node + attrs + ": its bias '" + n.input(2) + "' " + shape_text(*cs) +
                   " does not broadcast to the output [M, N] = " + shape_text({rows, cols}) +
                   "; check transB and the bias, or re-export the model");
        }
      }
    }
    l.shapes.emplace(n.output(0), shape{rows, cols});
  }

  // ---- 4. Memory ------------------------------------------------------------------------------

  void check_memory() const {
    const std::uint64_t available = options.available_memory_bytes;
    if (available == 0) return;
    for (const dense_tensor& d : dense) {
      const TensorProto& t = *d.t;
      if (t.data_type() == TensorProto::STRING) continue;
      const bool q = !d.value_name.empty() && quantized.count(d.value_name);
      if (!q && !options.materializes_all) continue;
      const std::uint64_t fp32 = saturating_mul(*tensor_element_count(t), sizeof(float));
      const std::uint64_t need = q ? saturating_mul(fp32, 2) : fp32;
      if (need <= available) continue;
      fail(kind::invalid,
           d.label + " " + dims_text(t) + " " + onnx_type_word(t.data_type()) + " needs " +
               std::to_string(need) + " bytes of memory (" +
               (q ? "twice its float32 size while it is quantized"
                  : "its float32 size when int4q computes with it") +
               "), more than this machine's " + std::to_string(available) +
               " bytes: run int4q on a machine with more memory" +
               (q ? std::string(" or leave the weight in float (`exclude`)") : std::string()));
    }
  }

  // ---- 5. Non-finite values -------------------------------------------------------------------

  /// Non-finite values found in one tensor.
  struct finding {
    std::uint64_t count = 0;
    std::uint64_t nan_count = 0;
    std::uint64_t first = 0;  ///< flat index of the first
    const char* first_kind = "";
  };

  static bool is_nonfinite(std::uint64_t bits, elem_type type) {
    switch (type) {
      case elem_type::float32: return (bits & 0x7F800000u) == 0x7F800000u;
      case elem_type::float16: return (bits & 0x7C00u) == 0x7C00u;
      case elem_type::bfloat16: return (bits & 0x7F80u) == 0x7F80u;
      case elem_type::float64: return (bits & 0x7FF0000000000000ull) == 0x7FF0000000000000ull;
      case elem_type::other: return false;
    }
    return false;
  }
  static const char* kind_of(std::uint64_t bits, elem_type type) {
    bool nan = false, negative = false;
    switch (type) {
      case elem_type::float32:
        nan = (bits & 0x007FFFFFu) != 0;
        negative = (bits >> 31) & 1u;
        break;
      case elem_type::float16:
        nan = (bits & 0x03FFu) != 0;
        negative = (bits >> 15) & 1u;
        break;
      case elem_type::bfloat16:
        nan = (bits & 0x007Fu) != 0;
        negative = (bits >> 15) & 1u;
        break;
      case elem_type::float64:
        nan = (bits & 0x000FFFFFFFFFFFFFull) != 0;
        negative = (bits >> 63) & 1u;
        break;
      case elem_type::other: break;
    }
    return nan ? "NaN" : negative ? "-Inf" : "+Inf";
  }

  /// Scans `count` little-endian elements of `size` bytes at `p`, the first having flat index
  /// `base`. A counting pass the compiler vectorizes; the first one is located only when found.
  template <class Bits>
  static void scan_as(const std::uint8_t* p, std::size_t count, elem_type type, std::uint64_t base,
                      finding& f) {
    std::size_t found = 0;
    for (std::size_t e = 0; e < count; ++e) {
      Bits b;
      std::memcpy(&b, p + e * sizeof(Bits), sizeof(Bits));
      found += is_nonfinite(b, type) ? 1 : 0;
    }
    if (found == 0) return;
    for (std::size_t e = 0; e < count; ++e) {  // rare: where, and how many are NaN
      Bits b;
      std::memcpy(&b, p + e * sizeof(Bits), sizeof(Bits));
      if (!is_nonfinite(b, type)) continue;
      const char* k = kind_of(b, type);
      if (f.count++ == 0) {
        f.first = base + e;
        f.first_kind = k;
      }
      if (k[0] == 'N') ++f.nan_count;
    }
  }

  static void scan_bytes(const std::uint8_t* p, std::size_t count, elem_type type,
                         std::uint64_t base, finding& f) {
    switch (type) {
      case elem_type::float32: scan_as<std::uint32_t>(p, count, type, base, f); break;
      case elem_type::float16:
      case elem_type::bfloat16: scan_as<std::uint16_t>(p, count, type, base, f); break;
      case elem_type::float64: scan_as<std::uint64_t>(p, count, type, base, f); break;
      case elem_type::other: break;
    }
  }

  /// The external data file open now (one at a time: a model saved with one file per tensor
  /// can have more files than a process may hold open), and its path.
  int fd = -1;
  std::string fd_path;
  std::vector<std::uint8_t> buffer;

  ~validator() {
    if (fd >= 0) ::close(fd);
  }
  validator(const model& model_, const validate_options& o, validation_report& r)
      : m(model_), options(o), report(r) {}
  validator(const validator&) = delete;
  validator& operator=(const validator&) = delete;

  std::filesystem::path external_path(const std::string& location) const {
    if (!m.spill_location.empty() && location == m.spill_location) return m.spill_path;
    return m.base_dir.empty() ? std::filesystem::path(location) : m.base_dir / location;
  }

  finding scan_external(const TensorProto& t, const std::string& label, elem_type type) {
    const detail::external_ref ref = detail::parse_external_ref(t);
    const std::filesystem::path path = external_path(ref.location);
    if (fd < 0 || fd_path != path.string()) {
      if (fd >= 0) ::close(fd);
      fd_path = path.string();
      fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) {
        const int e = errno;
        fail(kind::io, label + ": cannot open its external data file '" + path.string() + "' (" +
                           std::error_code(e, std::generic_category()).message() +
                           "): keep the data file next to the model");
      }
    }
    const std::size_t size = elem_size(type);
    const std::uint64_t length = ref.length.value_or(*tensor_payload_bytes(t));
    buffer.resize(scan_chunk_bytes);
    finding f;
    std::uint64_t done = 0;
    while (done < length) {
      const auto want =
          static_cast<std::size_t>(std::min<std::uint64_t>(buffer.size(), length - done));
      std::size_t got = 0;
      while (got < want) {
        const ssize_t n = ::pread(fd, buffer.data() + got, want - got,
                                  static_cast<off_t>(ref.offset + done + got));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
          fail(kind::io, label + ": cannot read " + std::to_string(length) + " bytes at offset " +
                             std::to_string(ref.offset) + " of '" + path.string() +
                             "': the data file is truncated or changed");
        }
        got += static_cast<std::size_t>(n);
      }
      scan_bytes(buffer.data(), want / size, type, done / size, f);
      done += want;
    }
    report.scanned_bytes += length;
    return f;
  }

  finding scan_inline(const TensorProto& t, elem_type type) {
    finding f;
    if (t.has_raw_data()) {
      const std::string& raw = t.raw_data();
      scan_bytes(reinterpret_cast<const std::uint8_t*>(raw.data()), raw.size() / elem_size(type),
                 type, 0, f);
      report.scanned_bytes += raw.size();
      return f;
    }
    switch (type) {
      case elem_type::float32:
        scan_bytes(reinterpret_cast<const std::uint8_t*>(t.float_data().data()),
                   static_cast<std::size_t>(t.float_data_size()), type, 0, f);
        break;
      case elem_type::float64:
        scan_bytes(reinterpret_cast<const std::uint8_t*>(t.double_data().data()),
                   static_cast<std::size_t>(t.double_data_size()), type, 0, f);
        break;
      case elem_type::float16:
      case elem_type::bfloat16: {  // the 16 bits of each value in the low half of an int32
        std::uint64_t index = 0;
        for (const std::int32_t v : t.int32_data()) {
          const auto bits = static_cast<std::uint16_t>(static_cast<std::uint32_t>(v) & 0xFFFFu);
          scan_bytes(reinterpret_cast<const std::uint8_t*>(&bits), 1, type, index++, f);
        }
        break;
      }
      case elem_type::other: break;
    }
    report.scanned_bytes += *tensor_payload_bytes(t);
    return f;
  }

  static std::string index_text(const TensorProto& t, std::uint64_t flat) {
    std::vector<std::uint64_t> idx(static_cast<std::size_t>(t.dims_size()));
    for (int d = t.dims_size() - 1; d >= 0; --d) {
      const auto extent = static_cast<std::uint64_t>(t.dims(d));
      idx[static_cast<std::size_t>(d)] = extent ? flat % extent : 0;
      flat = extent ? flat / extent : 0;
    }
    std::string s = "[";
    for (std::size_t d = 0; d < idx.size(); ++d) s += (d ? ", " : "") + std::to_string(idx[d]);
    return s + "]";
  }

  void check_values() {
    for (const dense_tensor& d : dense) {
      const TensorProto& t = *d.t;
      const elem_type type = elem_type_of(t.data_type());
      if (type == elem_type::other) continue;
      const finding f = is_external(t) ? scan_external(t, d.label, type) : scan_inline(t, type);
      if (f.count == 0) continue;
      const bool q = !d.value_name.empty() && quantized.count(d.value_name);
      // A Constant node's +-Inf is how exporters write attention masks (devgpt has four): only
      // NaN is reported there, unless the Constant is a MatMul/Gemm weight or Gather table.
      const bool weight = !d.value_name.empty() && weights.count(d.value_name);
      if (!q && !weight && !d.is_initializer && f.nan_count == 0) continue;
      const std::string what = d.label + " " + dims_text(t) + " " + onnx_type_word(t.data_type()) +
                               " holds " + std::to_string(f.count) + " non-finite value" +
                               (f.count == 1 ? "" : "s") + " (the first, " + f.first_kind +
                               ", at " + index_text(t, f.first) + ")";
      if (q) {
        fail(kind::invalid, what +
                                ", and int4q would quantize it: fix the weights, or leave it in "
                                "float (`exclude`)");
      }
      report.warnings.push_back(file + what +
                                ": it is kept as is, but the model's outputs may be NaN");
    }
  }
};

}  // namespace

validation_report validate_model(const model& m, const validate_options& options) {
  const auto start = std::chrono::steady_clock::now();
  validation_report report;
  validator v(m, options, report);
  if (!m.path.empty()) v.file = "'" + m.path.string() + "': ";
  if (!m.proto.has_graph()) v.fail(kind::invalid, "the model has no graph: re-export it");
  const GraphProto& g = m.proto.graph();

  std::vector<const validator::level*> chain;
  v.check_graph(g, "", chain);
  v.check_tensors(g, "");
  for (const auto& f : m.proto.functions()) {
    // A function body is a graph of its own (it sees only its inputs): the same structure
    // checks on a graph made of its inputs, nodes and outputs.
    {
      GraphProto body;
      for (const std::string& in : f.input()) body.add_input()->set_name(in);
      *body.mutable_node() = f.node();
      for (const std::string& out : f.output()) body.add_output()->set_name(out);
      std::vector<const validator::level*> own;
      v.check_graph(body, " (in function '" + f.name() + "')", own);
    }
    for (int i = 0; i < f.node_size(); ++i) {
      const std::string where = " (in function '" + f.name() + "')";
      v.check_attribute_tensors(f.node(i), i, where);
      for (const auto& [attribute, sub] : subgraphs_of(f.node(i)))
        v.check_tensors(*sub, in_subgraph(where, f.node(i), i, attribute));
    }
  }
  std::vector<validator::shape_level*> shape_chain;
  v.check_shapes(g, "", shape_chain);

  v.quantized = options.quantize ? quantized_tensors(m, *options.quantize) : options.quantized;
  if (options.quantize) {
    // A weight or table on a constant path is stored as its source: checked under that name.
    for (const weight_info& w : find_weights(m))
      if (!w.path_nodes.empty() && v.quantized.count(w.name)) v.quantized.insert(w.source);
    for (const embedding_info& e : find_embeddings(m))
      if (!e.path_nodes.empty() && v.quantized.count(e.name)) v.quantized.insert(e.source);
  }
  v.check_memory();
  if (options.check_values) {
    for (const weight_info& w : find_weights(m)) {
      v.weights.insert(w.name);
      if (!w.source.empty()) v.weights.insert(w.source);
    }
    for (const embedding_info& e : find_embeddings(m)) {
      v.weights.insert(e.name);
      v.weights.insert(e.source);
    }
    v.check_values();
  }
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

std::set<std::string> quantized_tensors(const model& m, const quantize_options& options) {
  const detail::compiled_selection selection = detail::validate_options(options);
  const std::vector<weight_info> weights = find_weights(m);
  std::set<std::string> out;
  for (const weight_info& w : weights) {
    const detail::weight_choice choice = detail::choose(w, options, selection);
    if (!choice.quantize) continue;
    detail::weight_job job;
    job.info = &w;
    job.config = choice.config;
    job.algo = choice.algo;
    if (detail::plan_writes(m, w, options.format, job).empty()) out.insert(w.name);
  }
  const std::vector<embedding_info> tables = find_embeddings(m);
  quantize_report unused;
  for (const auto& job : detail::plan_embeddings(m, options, selection, tables, unused))
    out.insert(job.info->name);
  return out;
}

}  // namespace onnx
}  // namespace int4q
