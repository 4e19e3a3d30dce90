// graph_builder: small ONNX models built in code, for the adapter's and the CLI's tests.
//
//   int4q::test::graph_builder g;                       // opset 17 (default domain), IR 8
//   g.input("x", onnx_float, {-1, 64});                 // -1 = symbolic dimension
//   g.initializer("w", onnx_float, {64, 32}, int4q::test::random_values(64 * 32, 1));
//   g.matmul("mm0", "x", "w", "y");
//   g.output("y", onnx_float, {-1, 32});
//   int4q::onnx::model m = g.model();                   // or g.proto() / g.build()
//
// Tensors are stored in raw_data (little endian). Float initializers/constants take float values
// and are converted to fp16/bf16 (round to nearest even) for those types. Self-contained: it uses
// no function of the int4q::onnx library (only its `model` struct), so it works before model.cpp
// does.
#ifndef INT4Q_TESTS_ONNX_GRAPH_BUILDER_HPP
#define INT4Q_TESTS_ONNX_GRAPH_BUILDER_HPP

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include <onnx/onnx_pb.h>

#include <int4q/float16.hpp>
#include <int4q/onnx/model.hpp>

namespace int4q {
namespace test {

/// ONNX TensorProto data types, short names.
constexpr int onnx_float = ::onnx::TensorProto_DataType_FLOAT;        // 1
constexpr int onnx_uint8 = ::onnx::TensorProto_DataType_UINT8;        // 2
constexpr int onnx_int8 = ::onnx::TensorProto_DataType_INT8;          // 3
constexpr int onnx_int32 = ::onnx::TensorProto_DataType_INT32;        // 6
constexpr int onnx_int64 = ::onnx::TensorProto_DataType_INT64;        // 7
constexpr int onnx_bool = ::onnx::TensorProto_DataType_BOOL;          // 9
constexpr int onnx_float16 = ::onnx::TensorProto_DataType_FLOAT16;    // 10
constexpr int onnx_double = ::onnx::TensorProto_DataType_DOUBLE;      // 11
constexpr int onnx_bfloat16 = ::onnx::TensorProto_DataType_BFLOAT16;  // 16
constexpr int onnx_uint4 = 21;                                        // UINT4 (IR 10)
constexpr int onnx_int4 = 22;                                         // INT4 (IR 10)

/// `count` deterministic pseudo-random values, uniform in [-scale, scale), from `seed`.
inline std::vector<float> random_values(std::size_t count, std::uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<float> v(count);
  for (auto& x : v) x = dist(rng);
  return v;
}

/// Float values -> raw little-endian bytes of `data_type` (FLOAT, FLOAT16, BFLOAT16, DOUBLE).
inline std::string float_bytes(int data_type, const std::vector<float>& values) {
  std::string out;
  switch (data_type) {
    case onnx_float:
      out.resize(values.size() * 4);
      std::memcpy(&out[0], values.data(), out.size());
      break;
    case onnx_double: {
      out.resize(values.size() * 8);
      for (std::size_t i = 0; i < values.size(); ++i) {
        const double d = values[i];
        std::memcpy(&out[i * 8], &d, 8);
      }
      break;
    }
    case onnx_float16:
    case onnx_bfloat16: {
      out.resize(values.size() * 2);
      for (std::size_t i = 0; i < values.size(); ++i) {
        const std::uint16_t b = data_type == onnx_float16
                                    ? int4q::float_to_half_bits(values[i])
                                    : int4q::float_to_bfloat16_bits(values[i]);
        std::memcpy(&out[i * 2], &b, 2);
      }
      break;
    }
    default:
      throw std::invalid_argument("graph_builder: not a float data type: " +
                                  std::to_string(data_type));
  }
  return out;
}

/// Values rounded through `data_type` (what a float initializer of that type holds), as float.
inline std::vector<float> rounded_to(int data_type, std::vector<float> values) {
  for (auto& v : values) {
    if (data_type == onnx_float16) v = int4q::half_bits_to_float(int4q::float_to_half_bits(v));
    if (data_type == onnx_bfloat16)
      v = int4q::bfloat16_bits_to_float(int4q::float_to_bfloat16_bits(v));
  }
  return values;
}

/// A float TensorProto (raw_data) of `data_type` from float values.
inline ::onnx::TensorProto float_tensor(const std::string& name, int data_type,
                                        const std::vector<std::int64_t>& dims,
                                        const std::vector<float>& values) {
  ::onnx::TensorProto t;
  t.set_name(name);
  t.set_data_type(data_type);
  for (auto d : dims) t.add_dims(d);
  t.set_raw_data(float_bytes(data_type, values));
  return t;
}

/// An INT64 TensorProto (raw_data).
inline ::onnx::TensorProto int64_tensor(const std::string& name,
                                        const std::vector<std::int64_t>& dims,
                                        const std::vector<std::int64_t>& values) {
  ::onnx::TensorProto t;
  t.set_name(name);
  t.set_data_type(onnx_int64);
  for (auto d : dims) t.add_dims(d);
  std::string raw(values.size() * 8, '\0');
  if (!values.empty()) std::memcpy(&raw[0], values.data(), raw.size());
  t.set_raw_data(raw);
  return t;
}

// ---- Attributes ------------------------------------------------------------------------------

inline ::onnx::AttributeProto& add_attr(::onnx::NodeProto& n, const std::string& name) {
  auto* a = n.add_attribute();
  a->set_name(name);
  return *a;
}
inline void set_attr(::onnx::NodeProto& n, const std::string& name, std::int64_t v) {
  auto& a = add_attr(n, name);
  a.set_type(::onnx::AttributeProto::INT);
  a.set_i(v);
}
inline void set_attr(::onnx::NodeProto& n, const std::string& name, int v) {
  set_attr(n, name, static_cast<std::int64_t>(v));
}
inline void set_attr(::onnx::NodeProto& n, const std::string& name, float v) {
  auto& a = add_attr(n, name);
  a.set_type(::onnx::AttributeProto::FLOAT);
  a.set_f(v);
}
inline void set_attr(::onnx::NodeProto& n, const std::string& name, const std::string& v) {
  auto& a = add_attr(n, name);
  a.set_type(::onnx::AttributeProto::STRING);
  a.set_s(v);
}
inline void set_attr(::onnx::NodeProto& n, const std::string& name, const char* v) {
  set_attr(n, name, std::string(v));
}
inline void set_attr(::onnx::NodeProto& n, const std::string& name,
                     const std::vector<std::int64_t>& v) {
  auto& a = add_attr(n, name);
  a.set_type(::onnx::AttributeProto::INTS);
  for (auto x : v) a.add_ints(x);
}
inline void set_attr(::onnx::NodeProto& n, const std::string& name, const std::vector<float>& v) {
  auto& a = add_attr(n, name);
  a.set_type(::onnx::AttributeProto::FLOATS);
  for (auto x : v) a.add_floats(x);
}
inline void set_attr(::onnx::NodeProto& n, const std::string& name, const ::onnx::TensorProto& v) {
  auto& a = add_attr(n, name);
  a.set_type(::onnx::AttributeProto::TENSOR);
  *a.mutable_t() = v;
}

/// Makes `t` point to external data: `location`, and `offset` / `length` unless negative (absent).
inline void set_external(::onnx::TensorProto& t, const std::string& location, std::int64_t offset,
                         std::int64_t length) {
  t.clear_raw_data();
  t.set_data_location(::onnx::TensorProto::EXTERNAL);
  auto add = [&](const char* k, const std::string& v) {
    auto* e = t.add_external_data();
    e->set_key(k);
    e->set_value(v);
  };
  add("location", location);
  if (offset >= 0) add("offset", std::to_string(offset));
  if (length >= 0) add("length", std::to_string(length));
}

// ---- Lookups in a built or rewritten model ---------------------------------------------------

/// The initializer named `name`, or nullptr.
inline const ::onnx::TensorProto* find_initializer(const ::onnx::ModelProto& m,
                                                   const std::string& name) {
  for (const auto& t : m.graph().initializer())
    if (t.name() == name) return &t;
  return nullptr;
}
/// The first node named `name`, or nullptr.
inline const ::onnx::NodeProto* find_node(const ::onnx::ModelProto& m, const std::string& name) {
  for (const auto& n : m.graph().node())
    if (n.name() == name) return &n;
  return nullptr;
}
/// Every node of `op_type` (any domain), in graph order.
inline std::vector<const ::onnx::NodeProto*> find_nodes(const ::onnx::ModelProto& m,
                                                        const std::string& op_type) {
  std::vector<const ::onnx::NodeProto*> out;
  for (const auto& n : m.graph().node())
    if (n.op_type() == op_type) out.push_back(&n);
  return out;
}
/// The attribute `name` of `n`, or nullptr.
inline const ::onnx::AttributeProto* find_attr(const ::onnx::NodeProto& n,
                                               const std::string& name) {
  for (const auto& a : n.attribute())
    if (a.name() == name) return &a;
  return nullptr;
}
/// The opset version imported for `domain` ("" = default), or -1.
inline std::int64_t opset_of(const ::onnx::ModelProto& m, const std::string& domain = "") {
  for (const auto& o : m.opset_import())
    if (o.domain() == domain || (domain.empty() && o.domain() == "ai.onnx")) return o.version();
  return -1;
}

// ---- The builder -------------------------------------------------------------------------------

/// Options of a Gemm node (ONNX defaults).
struct gemm_attrs {
  bool trans_a = false;
  bool trans_b = false;
  float alpha = 1.0f;
  float beta = 1.0f;
  bool write_defaults = false;  ///< also write attributes that equal their default
};

class graph_builder {
 public:
  /// A model with the default-domain opset `opset` and `ir_version`.
  explicit graph_builder(std::int64_t opset = 17, std::int64_t ir_version = 8) {
    proto_.set_ir_version(ir_version);
    proto_.set_producer_name("int4q-tests");
    proto_.mutable_graph()->set_name("test_graph");
    set_opset(opset);
  }

  /// Sets (or adds) the opset import of `domain` ("" = default domain).
  graph_builder& set_opset(std::int64_t version, const std::string& domain = "") {
    for (auto& o : *proto_.mutable_opset_import()) {
      if (o.domain() == domain) {
        o.set_version(version);
        return *this;
      }
    }
    auto* o = proto_.add_opset_import();
    o->set_domain(domain);
    o->set_version(version);
    return *this;
  }
  graph_builder& set_ir_version(std::int64_t v) {
    proto_.set_ir_version(v);
    return *this;
  }

  /// A graph input / output of element type `data_type`; a negative dimension is symbolic
  /// ("d0", "d1", ... by position).
  graph_builder& input(const std::string& name, int data_type,
                       const std::vector<std::int64_t>& dims) {
    fill_value_info(*proto_.mutable_graph()->add_input(), name, data_type, dims);
    return *this;
  }
  graph_builder& output(const std::string& name, int data_type,
                        const std::vector<std::int64_t>& dims) {
    fill_value_info(*proto_.mutable_graph()->add_output(), name, data_type, dims);
    return *this;
  }

  /// A float initializer (FLOAT, FLOAT16, BFLOAT16 or DOUBLE) from float values (row-major).
  /// Returns its name.
  std::string initializer(const std::string& name, int data_type,
                          const std::vector<std::int64_t>& dims, const std::vector<float>& values) {
    check_count(name, dims, values.size());
    *proto_.mutable_graph()->add_initializer() = float_tensor(name, data_type, dims, values);
    return name;
  }
  /// An INT64 initializer.
  std::string initializer_i64(const std::string& name, const std::vector<std::int64_t>& dims,
                              const std::vector<std::int64_t>& values) {
    check_count(name, dims, values.size());
    *proto_.mutable_graph()->add_initializer() = int64_tensor(name, dims, values);
    return name;
  }
  /// Any prepared TensorProto as an initializer.
  std::string initializer(const ::onnx::TensorProto& t) {
    *proto_.mutable_graph()->add_initializer() = t;
    return t.name();
  }

  /// A Constant node (named `output + "_const"`) whose `value` attribute is a float tensor.
  /// Returns the output name.
  std::string constant(const std::string& output, int data_type,
                       const std::vector<std::int64_t>& dims, const std::vector<float>& values) {
    check_count(output, dims, values.size());
    auto& n = node("Constant", {}, {output}, output + "_const");
    set_attr(n, "value", float_tensor(output, data_type, dims, values));
    return output;
  }
  /// A Constant node holding an INT64 tensor.
  std::string constant_i64(const std::string& output, const std::vector<std::int64_t>& dims,
                           const std::vector<std::int64_t>& values) {
    check_count(output, dims, values.size());
    auto& n = node("Constant", {}, {output}, output + "_const");
    set_attr(n, "value", int64_tensor(output, dims, values));
    return output;
  }

  /// Appends a node; set attributes on the returned reference with set_attr (valid until the
  /// next node is added). "" in `inputs` is an omitted optional input.
  ::onnx::NodeProto& node(const std::string& op_type, const std::vector<std::string>& inputs,
                          const std::vector<std::string>& outputs, const std::string& name = "",
                          const std::string& domain = "") {
    auto* n = proto_.mutable_graph()->add_node();
    n->set_op_type(op_type);
    n->set_name(name);
    if (!domain.empty()) n->set_domain(domain);
    for (const auto& i : inputs) n->add_input(i);
    for (const auto& o : outputs) n->add_output(o);
    return *n;
  }

  /// Y = A @ B.
  ::onnx::NodeProto& matmul(const std::string& name, const std::string& a, const std::string& b,
                            const std::string& y) {
    return node("MatMul", {a, b}, {y}, name);
  }
  /// Y = alpha * A' @ B' + beta * C; `c` "" = no bias input. Attributes equal to their defaults
  /// are omitted unless attrs.write_defaults.
  ::onnx::NodeProto& gemm(const std::string& name, const std::string& a, const std::string& b,
                          const std::string& c, const std::string& y,
                          const gemm_attrs& attrs = {}) {
    std::vector<std::string> inputs{a, b};
    if (!c.empty()) inputs.push_back(c);
    auto& n = node("Gemm", inputs, {y}, name);
    if (attrs.alpha != 1.0f || attrs.write_defaults) set_attr(n, "alpha", attrs.alpha);
    if (attrs.beta != 1.0f || attrs.write_defaults) set_attr(n, "beta", attrs.beta);
    if (attrs.trans_a || attrs.write_defaults) set_attr(n, "transA", attrs.trans_a ? 1 : 0);
    if (attrs.trans_b || attrs.write_defaults) set_attr(n, "transB", attrs.trans_b ? 1 : 0);
    return n;
  }

  /// The model built so far (a copy; the builder can go on).
  ::onnx::ModelProto build() const { return proto_; }
  /// The model as the adapter's `model` (path and base_dir empty: built in memory).
  int4q::onnx::model model() const {
    int4q::onnx::model m;
    m.proto = proto_;
    return m;
  }
  /// Direct access for anything the helpers do not cover.
  ::onnx::ModelProto& proto() { return proto_; }
  ::onnx::GraphProto& graph() { return *proto_.mutable_graph(); }

 private:
  static void check_count(const std::string& name, const std::vector<std::int64_t>& dims,
                          std::size_t count) {
    std::size_t n = 1;
    for (auto d : dims) n *= static_cast<std::size_t>(d);
    if (n != count)
      throw std::invalid_argument("graph_builder: " + name + " has " + std::to_string(count) +
                                  " values for " + std::to_string(n) + " elements");
  }
  static void fill_value_info(::onnx::ValueInfoProto& vi, const std::string& name, int data_type,
                              const std::vector<std::int64_t>& dims) {
    vi.set_name(name);
    auto* tt = vi.mutable_type()->mutable_tensor_type();
    tt->set_elem_type(data_type);
    auto* shape = tt->mutable_shape();
    for (std::size_t i = 0; i < dims.size(); ++i) {
      auto* d = shape->add_dim();
      if (dims[i] < 0)
        d->set_dim_param("d" + std::to_string(i));
      else
        d->set_dim_value(dims[i]);
    }
  }

  ::onnx::ModelProto proto_;
};

}  // namespace test
}  // namespace int4q

#endif  // INT4Q_TESTS_ONNX_GRAPH_BUILDER_HPP
