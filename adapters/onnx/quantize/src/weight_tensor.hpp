// Internal to the quantization passes: the stored tensor of a weight and its logical values
// W[K, N], read the one way the writers, the calibration passes and the auto plan share.
#ifndef INT4Q_ONNX_SRC_WEIGHT_TENSOR_HPP
#define INT4Q_ONNX_SRC_WEIGHT_TENSOR_HPP

#include <onnx/onnx_pb.h>
#include <xtensor/xtensor.hpp>

#include <int4q/onnx/executor.hpp>
#include <int4q/onnx/model.hpp>
#include <int4q/onnx/weights.hpp>

namespace int4q {
namespace onnx {
namespace detail {

/// The stored tensor of a weight: the initializer or the Constant node's value. Throws
/// model_error(invalid) when neither holds it.
const ::onnx::TensorProto& weight_tensor(const model& m, const weight_info& w);

/// The same tensor for writing (nullptr when neither holds it).
::onnx::TensorProto* mutable_weight_tensor(model& m, const weight_info& w);

/// The logical weight W[K, N] as the nodes multiply it: the stored tensor, transposed from
/// [N, K] for Gemm transB = 1, times `alpha` (Gemm alpha, the same for every use). Throws
/// model_error(invalid) when the stored shape is not [K, N] (or [N, K]).
xt::xtensor<float, 2> logical_weight(const model& m, const weight_info& w, float alpha);

/// The inverse of logical_weight for values `d` [K, N] (row-major): what the nodes must read as
/// B so that they multiply with d ([N, K] for Gemm transB, Gemm alpha divided out); `s` (K
/// values, or nullptr): row k divided by s[k] as well (AWQ: the node's input is then x / s).
value stored_weight_values(const weight_info& w, float alpha, const float* d, const float* s);

}  // namespace detail
}  // namespace onnx
}  // namespace int4q

#endif  // INT4Q_ONNX_SRC_WEIGHT_TENSOR_HPP
