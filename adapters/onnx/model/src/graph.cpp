// Graph helpers (int4q/onnx/graph.hpp): subgraph paths, names, references, attributes, tensors.
#include <cstring>
#include <string>
#include <vector>

#include <int4q/float16.hpp>

#include <int4q/onnx/graph.hpp>

namespace int4q {
namespace onnx {

const ::onnx::GraphProto& graph_at(const ::onnx::GraphProto& main,
                                   const std::vector<graph_step>& path) {
  const ::onnx::GraphProto* g = &main;
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

::onnx::GraphProto& graph_at(::onnx::GraphProto& main, const std::vector<graph_step>& path) {
  const ::onnx::GraphProto& g = graph_at(static_cast<const ::onnx::GraphProto&>(main), path);
  return const_cast<::onnx::GraphProto&>(g);  // reached from a mutable `main`
}

namespace detail {

using ::onnx::AttributeProto;
using ::onnx::GraphProto;
using ::onnx::ModelProto;
using ::onnx::NodeProto;
using ::onnx::TensorProto;

namespace {

template <class F>
void for_each_subgraph(const NodeProto& n, F&& f) {
  for (const auto& a : n.attribute()) {
    if (a.has_g()) f(a.g());
    for (const auto& g : a.graphs()) f(g);
  }
}

void count_graph(const GraphProto& g, std::map<std::string, int>& refs) {
  for (const auto& n : g.node()) {
    for (const auto& i : n.input())
      if (!i.empty()) ++refs[i];
    for_each_subgraph(n, [&](const GraphProto& sub) { count_graph(sub, refs); });
  }
  for (const auto& o : g.output()) ++refs[o.name()];
}

}  // namespace

name_set::name_set(const ModelProto& m) { add_graph(m.graph()); }

void name_set::add_graph(const GraphProto& g) {
  for (const auto& t : g.initializer()) used_.insert(t.name());
  for (const auto& v : g.input()) used_.insert(v.name());
  for (const auto& v : g.output()) used_.insert(v.name());
  for (const auto& v : g.value_info()) used_.insert(v.name());
  for (const auto& n : g.node()) {
    used_.insert(n.name());
    for (const auto& i : n.input()) used_.insert(i);
    for (const auto& o : n.output()) used_.insert(o);
    for_each_subgraph(n, [&](const GraphProto& sub) { add_graph(sub); });
  }
}

std::string name_set::unique(const std::string& base) {
  std::string name = base;
  for (std::size_t i = 1; used_.count(name); ++i) name = base + "_" + std::to_string(i);
  used_.insert(name);
  return name;
}

std::map<std::string, int> count_references(const GraphProto& g) {
  std::map<std::string, int> refs;
  count_graph(g, refs);
  return refs;
}

const TensorProto* constant_tensor(const GraphProto& g, const std::string& name) {
  if (name.empty()) return nullptr;
  for (const auto& v : g.input())
    if (v.name() == name) return nullptr;
  for (const auto& t : g.initializer())
    if (t.name() == name) return &t;
  for (const auto& n : g.node()) {
    if (n.op_type() != "Constant" || n.output_size() != 1 || n.output(0) != name) continue;
    if (!n.domain().empty() && n.domain() != "ai.onnx") continue;
    const AttributeProto* a = find_attr(n, "value");
    return a && a->has_t() ? &a->t() : nullptr;
  }
  return nullptr;
}

const TensorProto* constant_tensor_in_scope(const GraphProto& main,
                                            const std::vector<graph_step>& path,
                                            const std::string& name,
                                            std::vector<graph_step>* defined_in) {
  if (name.empty()) return nullptr;
  for (std::size_t depth = path.size() + 1; depth-- > 0;) {
    const std::vector<graph_step> prefix(path.begin(), path.begin() + depth);
    const GraphProto& g = graph_at(main, prefix);
    bool defined = false;
    for (const auto& v : g.input()) defined = defined || v.name() == name;
    for (const auto& t : g.initializer()) defined = defined || t.name() == name;
    for (const auto& n : g.node())
      for (const auto& o : n.output()) defined = defined || o == name;
    if (!defined) continue;
    const TensorProto* t = constant_tensor(g, name);
    if (t && defined_in) *defined_in = prefix;
    return t;
  }
  return nullptr;
}

namespace {
template <class T, class P>
void erase_if(google::protobuf::RepeatedPtrField<T>* f, P pred) {
  int out = 0;
  for (int i = 0; i < f->size(); ++i) {
    if (pred(f->Get(i))) continue;
    if (out != i) f->SwapElements(out, i);
    ++out;
  }
  f->DeleteSubrange(out, f->size() - out);
}
}  // namespace

void remove_tensor(GraphProto& g, const std::string& name) {
  erase_if(g.mutable_initializer(), [&](const TensorProto& t) { return t.name() == name; });
  erase_if(g.mutable_node(), [&](const NodeProto& n) {
    return n.op_type() == "Constant" && n.output_size() == 1 && n.output(0) == name;
  });
  erase_if(g.mutable_input(), [&](const ::onnx::ValueInfoProto& v) { return v.name() == name; });
  erase_if(g.mutable_value_info(),
           [&](const ::onnx::ValueInfoProto& v) { return v.name() == name; });
}

const AttributeProto* find_attr(const NodeProto& n, const std::string& name) {
  for (const auto& a : n.attribute())
    if (a.name() == name) return &a;
  return nullptr;
}

std::int64_t attr_int(const NodeProto& n, const std::string& name, std::int64_t dflt) {
  const AttributeProto* a = find_attr(n, name);
  return a ? a->i() : dflt;
}

float attr_float(const NodeProto& n, const std::string& name, float dflt) {
  const AttributeProto* a = find_attr(n, name);
  return a ? a->f() : dflt;
}

namespace {
AttributeProto& mutable_attr(NodeProto& n, const std::string& name) {
  for (auto& a : *n.mutable_attribute())
    if (a.name() == name) return a;
  auto* a = n.add_attribute();
  a->set_name(name);
  return *a;
}
}  // namespace

void set_attr_int(NodeProto& n, const std::string& name, std::int64_t v) {
  auto& a = mutable_attr(n, name);
  a.Clear();
  a.set_name(name);
  a.set_type(AttributeProto::INT);
  a.set_i(v);
}

void set_attr_float(NodeProto& n, const std::string& name, float v) {
  auto& a = mutable_attr(n, name);
  a.Clear();
  a.set_name(name);
  a.set_type(AttributeProto::FLOAT);
  a.set_f(v);
}

void set_attr_string(NodeProto& n, const std::string& name, const std::string& v) {
  auto& a = mutable_attr(n, name);
  a.Clear();
  a.set_name(name);
  a.set_type(AttributeProto::STRING);
  a.set_s(v);
}

void remove_attr(NodeProto& n, const std::string& name) {
  erase_if(n.mutable_attribute(), [&](const AttributeProto& a) { return a.name() == name; });
}

int onnx_type_of(elem_type t) noexcept {
  switch (t) {
    case elem_type::float32: return TensorProto::FLOAT;
    case elem_type::float16: return TensorProto::FLOAT16;
    case elem_type::bfloat16: return TensorProto::BFLOAT16;
    case elem_type::float64: return TensorProto::DOUBLE;
    case elem_type::other: break;
  }
  return TensorProto::UNDEFINED;
}

std::vector<float> read_floats(const model& m, const TensorProto& t) {
  const elem_type type = elem_type_of(t.data_type());
  const std::size_t size = elem_size(type);
  if (size == 0) {
    throw model_error(model_error::kind::invalid, "tensor '" + t.name() +
                                                      "' is not a float tensor (data_type " +
                                                      std::to_string(t.data_type()) + ")");
  }
  const std::vector<std::uint8_t> bytes = read_tensor_bytes(m, t);
  std::vector<float> out(bytes.size() / size);
  for (std::size_t i = 0; i < out.size(); ++i) {
    const std::uint8_t* p = bytes.data() + i * size;
    if (type == elem_type::float32) {
      std::memcpy(&out[i], p, 4);
    } else if (type == elem_type::float64) {
      double d;
      std::memcpy(&d, p, 8);
      out[i] = static_cast<float>(d);
    } else {
      std::uint16_t h;
      std::memcpy(&h, p, 2);
      out[i] = type == elem_type::float16 ? half_bits_to_float(h) : bfloat16_bits_to_float(h);
    }
  }
  return out;
}

TensorProto float_tensor(const std::string& name, elem_type type,
                         const std::vector<std::int64_t>& dims, const std::vector<float>& values) {
  if (type == elem_type::float64) {  // make_float_tensor covers the 32- and 16-bit types
    const std::vector<double> wide(values.begin(), values.end());
    return make_tensor(name, TensorProto::DOUBLE, dims, wide.data(), wide.size() * 8);
  }
  return make_float_tensor(name, type, dims, values.data(), values.size());
}

TensorProto int64_tensor(const std::string& name, const std::vector<std::int64_t>& dims,
                         const std::vector<std::int64_t>& values) {
  return make_tensor(name, TensorProto::INT64, dims, values.data(), values.size() * 8);
}

std::string path_key(const std::vector<graph_step>& path) {
  std::string k;
  for (const graph_step& s : path) {
    k += std::to_string(s.node_index) + "." + s.attribute + "." + std::to_string(s.graph_index) +
         "/";
  }
  return k;
}

std::string dims_string(const std::vector<std::int64_t>& dims) {
  std::string s = "[";
  for (std::size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

}  // namespace detail
}  // namespace onnx
}  // namespace int4q
