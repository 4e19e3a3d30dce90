// Internal to int4q::onnx: what the neural-network operator files executor_nn*.cpp share.
#ifndef INT4Q_ONNX_SRC_EXECUTOR_NN_HPP
#define INT4Q_ONNX_SRC_EXECUTOR_NN_HPP

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "executor_detail.hpp"

namespace int4q {
namespace onnx {
namespace exec {

/// Conv, ConvTranspose and the pools (executor_nn_conv.cpp).
void add_nn_conv_ops(std::unordered_map<std::string, op_fn>& ops);
/// Resize, Upsample and Pad (executor_nn_resize.cpp).
void add_nn_resize_ops(std::unordered_map<std::string, op_fn>& ops);
/// Index operators: GatherElements, Scatter*, ArgMax/ArgMin, TopK, NonZero, OneHot, CumSum,
/// Einsum (executor_nn_index.cpp).
void add_nn_index_ops(std::unordered_map<std::string, op_fn>& ops);

/// The input `k` as a float tensor, or a failure naming `what`.
inline const value& need_float(const node_context& c, const inputs_t& in, std::size_t k,
                               const char* what) {
  const value& v = need(c, in, k);
  if (v.type != value_type::float32) c.fail(std::string(what) + " must be a float tensor");
  return v;
}

/// A scalar or 1-element tensor of either type as a double.
inline double scalar_of(const node_context& c, const value& v, const char* what) {
  if (v.size() != 1) c.fail(std::string(what) + " must hold one value");
  return v.type == value_type::float32 ? double(v.f[0]) : double(v.i[0]);
}

/// Product of shape[from, to).
inline std::size_t span_of(const shape_t& s, std::size_t from, std::size_t to) {
  std::size_t n = 1;
  for (std::size_t k = from; k < to; ++k) n *= static_cast<std::size_t>(s[k]);
  return n;
}

}  // namespace exec
}  // namespace onnx
}  // namespace int4q

#endif  // INT4Q_ONNX_SRC_EXECUTOR_NN_HPP
