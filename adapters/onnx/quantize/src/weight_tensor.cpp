// The stored tensor of a weight and its logical values W[K, N].
#include "weight_tensor.hpp"

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include <int4q/onnx/graph.hpp>

#include "const_path.hpp"

namespace int4q {
namespace onnx {
namespace detail {

const ::onnx::TensorProto& weight_tensor(const model& m, const weight_info& w) {
  const ::onnx::GraphProto& g = graph_at(m.proto.graph(), w.defined_in);
  if (w.from_constant_node) {
    const ::onnx::NodeProto& n = g.node(w.constant_node_index);
    const auto* a = find_attr(n, "value");
    if (!a || !a->has_t()) {
      throw model_error(model_error::kind::invalid, "Constant node '" + n.name() +
                                                        "' holding weight '" + w.name +
                                                        "' has no tensor 'value' attribute");
    }
    return a->t();
  }
  const std::string& source = w.source.empty() ? w.name : w.source;
  for (const auto& t : g.initializer())
    if (t.name() == source) return t;
  throw model_error(model_error::kind::invalid, "weight '" + source + "' is not an initializer");
}

::onnx::TensorProto* mutable_weight_tensor(model& m, const weight_info& w) {
  ::onnx::GraphProto& g = graph_at(*m.proto.mutable_graph(), w.defined_in);
  if (w.from_constant_node) {
    ::onnx::NodeProto& n = *g.mutable_node(w.constant_node_index);
    for (auto& a : *n.mutable_attribute())
      if (a.name() == "value") return a.mutable_t();
    return nullptr;
  }
  const std::string& source = w.source.empty() ? w.name : w.source;
  for (auto& t : *g.mutable_initializer())
    if (t.name() == source) return &t;
  return nullptr;
}

namespace {

/// B of a weight on a constant path: the source's values through the path's nodes, [B0, B1].
xt::xtensor<float, 2> path_matrix(const model& m, const weight_info& w) {
  const ::onnx::GraphProto& g = graph_at(m.proto.graph(), w.defined_in);
  std::vector<float> values = read_floats(m, weight_tensor(m, w));
  std::vector<std::int64_t> dims = w.source_dims;
  elem_type type = w.source_type;
  for (const int i : w.path_nodes) apply_path_node(m, g, g.node(i), dims, type, values);
  if (dims.size() != 2) {
    throw model_error(model_error::kind::invalid,
                      "weight '" + w.name + "': its constant path from '" + w.source + "' gives " +
                          dims_string(dims) + ", not a matrix");
  }
  xt::xtensor<float, 2> out({static_cast<std::size_t>(dims[0]), static_cast<std::size_t>(dims[1])});
  std::copy(values.begin(), values.end(), out.begin());
  return out;
}

}  // namespace

xt::xtensor<float, 2> logical_weight(const model& m, const weight_info& w, float alpha) {
  xt::xtensor<float, 2> stored =
      w.path_nodes.empty() ? read_matrix(m, weight_tensor(m, w)) : path_matrix(m, w);
  const bool trans = !w.uses.empty() && w.uses.front().trans_b;
  xt::xtensor<float, 2> lw =
      trans ? xt::xtensor<float, 2>(xt::transpose(stored)) : std::move(stored);
  if (lw.shape()[0] != w.k || lw.shape()[1] != w.n) {
    throw model_error(model_error::kind::invalid,
                      "weight '" + w.name + "' holds [" + std::to_string(lw.shape()[0]) + ", " +
                          std::to_string(lw.shape()[1]) + "] but its nodes need K = " +
                          std::to_string(w.k) + ", N = " + std::to_string(w.n));
  }
  if (alpha != 1.0f) {
    for (auto& v : lw) v *= alpha;
  }
  return lw;
}

value stored_weight_values(const weight_info& w, float alpha, const float* d, const float* s) {
  const bool trans = !w.uses.empty() && w.uses.front().trans_b;
  const std::size_t K = w.k, N = w.n;
  std::vector<float> v(K * N);
  for (std::size_t k = 0; k < K; ++k) {
    for (std::size_t n = 0; n < N; ++n) {
      const float x = s ? d[k * N + n] / s[k] : d[k * N + n];
      v[trans ? n * K + k : k * N + n] = x / alpha;
    }
  }
  using shape_t = std::vector<std::int64_t>;
  return value::floats(
      trans ? shape_t{std::int64_t(N), std::int64_t(K)} : shape_t{std::int64_t(K), std::int64_t(N)},
      std::move(v));
}

}  // namespace detail
}  // namespace onnx
}  // namespace int4q
