// Constant weight paths: the shape and values after Cast/Transpose/Reshape/Flatten/Squeeze/
// Unsqueeze/Identity nodes applied to a stored tensor.
#include "const_path.hpp"

#include <algorithm>
#include <cstring>
#include <numeric>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <int4q/float16.hpp>
#include <int4q/onnx/graph.hpp>

namespace int4q {
namespace onnx {
namespace detail {

using ::onnx::GraphProto;
using ::onnx::NodeProto;
using ::onnx::TensorProto;

namespace {

std::string label(const NodeProto& n) { return n.op_type() + " '" + n.name() + "'"; }

/// The int64 values of constant input `name` of `g`; false when it is not an INT64 constant.
bool constant_ints(const model& m, const GraphProto& g, const std::string& name,
                   std::vector<std::int64_t>& out) {
  const TensorProto* t = constant_tensor(g, name);
  if (!t || t->data_type() != TensorProto::INT64) return false;
  const std::vector<std::uint8_t> bytes = read_tensor_bytes(m, *t);
  out.resize(bytes.size() / sizeof(std::int64_t));
  if (!out.empty()) std::memcpy(out.data(), bytes.data(), out.size() * sizeof(std::int64_t));
  return true;
}

/// Squeeze/Unsqueeze axes: input 1 (opset >= 13) or the `axes` attribute (older opsets).
bool axes_of(const model& m, const GraphProto& g, const NodeProto& n,
             std::vector<std::int64_t>& axes, bool& given) {
  given = true;
  if (n.input_size() > 1 && !n.input(1).empty()) return constant_ints(m, g, n.input(1), axes);
  const auto* a = find_attr(n, "axes");
  if (!a) {
    given = false;
    return true;
  }
  axes.assign(a->ints().begin(), a->ints().end());
  return true;
}

/// Normalizes `axes` against `rank`; false when one is out of range or repeated.
bool normalize_axes(std::vector<std::int64_t>& axes, std::int64_t rank) {
  std::set<std::int64_t> seen;
  for (auto& a : axes) {
    if (a < 0) a += rank;
    if (a < 0 || a >= rank || !seen.insert(a).second) return false;
  }
  std::sort(axes.begin(), axes.end());
  return true;
}

std::int64_t product(const std::vector<std::int64_t>& d, std::size_t from, std::size_t to) {
  std::int64_t p = 1;
  for (std::size_t i = from; i < to; ++i) p *= d[i];
  return p;
}

/// Transpose's permutation (default: reversed axes); empty when invalid for `rank`.
std::vector<std::int64_t> permutation(const NodeProto& n, std::size_t rank) {
  std::vector<std::int64_t> perm(rank);
  const auto* a = find_attr(n, "perm");
  if (a) {
    perm.assign(a->ints().begin(), a->ints().end());
  } else {
    for (std::size_t i = 0; i < rank; ++i) perm[i] = static_cast<std::int64_t>(rank - 1 - i);
  }
  std::vector<std::int64_t> sorted = perm;
  std::sort(sorted.begin(), sorted.end());
  for (std::size_t i = 0; i < sorted.size(); ++i)
    if (sorted[i] != static_cast<std::int64_t>(i)) return {};
  return perm.size() == rank ? perm : std::vector<std::int64_t>{};
}

}  // namespace

bool is_path_op(const NodeProto& n) {
  static const std::set<std::string> ops = {"Cast",    "Transpose", "Reshape", "Flatten",
                                            "Squeeze", "Unsqueeze", "Identity"};
  return ops.count(n.op_type()) && (n.domain().empty() || n.domain() == "ai.onnx") &&
         n.output_size() == 1 && n.input_size() >= 1 && !n.input(0).empty();
}

std::vector<std::string> path_aux_inputs(const NodeProto& n) {
  std::vector<std::string> out;
  for (int i = 1; i < n.input_size(); ++i)
    if (!n.input(i).empty()) out.push_back(n.input(i));
  return out;
}

std::string path_node_shape(const model& m, const GraphProto& g, const NodeProto& n,
                            std::vector<std::int64_t>& dims, elem_type& type) {
  const std::string& op = n.op_type();
  const auto rank = static_cast<std::int64_t>(dims.size());
  if (op == "Identity") return "";
  if (op == "Cast") {
    const elem_type to = elem_type_of(static_cast<int>(attr_int(n, "to", 0)));
    if (to == elem_type::other) return label(n) + " casts to a non-float type";
    type = to;
    return "";
  }
  if (op == "Transpose") {
    const auto perm = permutation(n, dims.size());
    if (perm.empty()) return label(n) + " has an invalid perm";
    std::vector<std::int64_t> out(dims.size());
    for (std::size_t i = 0; i < perm.size(); ++i) out[i] = dims[static_cast<std::size_t>(perm[i])];
    dims = std::move(out);
    return "";
  }
  if (op == "Reshape") {
    std::vector<std::int64_t> shape;
    if (n.input_size() < 2 || !constant_ints(m, g, n.input(1), shape))
      return label(n) + "'s shape is not an int64 constant";
    const bool allowzero = attr_int(n, "allowzero", 0) != 0;
    const std::int64_t total = product(dims, 0, dims.size());
    int infer = -1;
    std::int64_t known = 1;
    for (std::size_t i = 0; i < shape.size(); ++i) {
      if (shape[i] == 0 && !allowzero) {
        if (static_cast<std::int64_t>(i) >= rank) return label(n) + " copies a missing dim";
        shape[i] = dims[i];
      }
      if (shape[i] == -1) {
        if (infer >= 0) return label(n) + " has two -1 dims";
        infer = static_cast<int>(i);
      } else if (shape[i] < 0) {
        return label(n) + " has a negative dim";
      } else {
        known *= shape[i];
      }
    }
    if (infer >= 0) {
      if (known == 0 || total % known != 0) return label(n) + " cannot infer its -1 dim";
      shape[static_cast<std::size_t>(infer)] = total / known;
    } else if (known != total) {
      return label(n) + " changes the element count";
    }
    dims = std::move(shape);
    return "";
  }
  if (op == "Flatten") {
    std::int64_t axis = attr_int(n, "axis", 1);
    if (axis < 0) axis += rank;
    if (axis < 0 || axis > rank) return label(n) + " has an axis out of range";
    const auto a = static_cast<std::size_t>(axis);
    dims = {product(dims, 0, a), product(dims, a, dims.size())};
    return "";
  }
  // Squeeze / Unsqueeze
  std::vector<std::int64_t> axes;
  bool given = false;
  if (!axes_of(m, g, n, axes, given)) return label(n) + "'s axes are not an int64 constant";
  if (op == "Squeeze") {
    if (!given) {
      dims.erase(std::remove(dims.begin(), dims.end(), std::int64_t{1}), dims.end());
      return "";
    }
    if (!normalize_axes(axes, rank)) return label(n) + " has invalid axes";
    for (auto it = axes.rbegin(); it != axes.rend(); ++it) {
      if (dims[static_cast<std::size_t>(*it)] != 1) return label(n) + " squeezes a dim != 1";
      dims.erase(dims.begin() + *it);
    }
    return "";
  }
  if (!given || !normalize_axes(axes, rank + static_cast<std::int64_t>(axes.size())))
    return label(n) + " has invalid axes";
  for (const std::int64_t a : axes) dims.insert(dims.begin() + a, 1);
  return "";
}

void apply_path_node(const model& m, const GraphProto& g, const NodeProto& n,
                     std::vector<std::int64_t>& dims, elem_type& type, std::vector<float>& values) {
  const std::vector<std::int64_t> in = dims;
  const std::string why = path_node_shape(m, g, n, dims, type);
  if (!why.empty()) throw model_error(model_error::kind::invalid, why);
  if (n.op_type() == "Cast") {
    // The stored values are already floats: only a narrowing Cast changes them.
    if (type == elem_type::float16) {
      for (float& v : values) v = half_bits_to_float(float_to_half_bits(v));
    } else if (type == elem_type::bfloat16) {
      for (float& v : values) v = bfloat16_bits_to_float(float_to_bfloat16_bits(v));
    }
    return;
  }
  if (n.op_type() != "Transpose") return;  // the others keep the row-major order
  const auto perm = permutation(n, in.size());
  const std::size_t rank = in.size();
  // out[i_0..i_r] = in[j] with j_perm[d] = i_d: walk the output in order, stepping the input
  // index by the input strides of the permuted axes.
  std::vector<std::int64_t> in_stride(rank, 1);
  for (std::size_t d = rank; d-- > 1;) in_stride[d - 1] = in_stride[d] * in[d];
  std::vector<float> out(values.size());
  std::vector<std::int64_t> idx(rank, 0);
  for (std::size_t o = 0; o < out.size(); ++o) {
    std::int64_t src = 0;
    for (std::size_t d = 0; d < rank; ++d)
      src += idx[d] * in_stride[static_cast<std::size_t>(perm[d])];
    out[o] = values[static_cast<std::size_t>(src)];
    for (std::size_t d = rank; d-- > 0;) {
      if (++idx[d] < dims[d]) break;
      idx[d] = 0;
    }
  }
  values = std::move(out);
}

}  // namespace detail
}  // namespace onnx
}  // namespace int4q
