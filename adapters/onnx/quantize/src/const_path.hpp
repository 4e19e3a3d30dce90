// Internal to the quantization passes: constant weight paths (issue 16). Exporters often write a
// MatMul/Gemm B operand as a stored tensor followed by value-preserving or layout ops: Cast
// between float types (mixed-precision exports), Transpose (torch.onnx without constant
// folding), Reshape, Flatten, Squeeze, Unsqueeze, Identity. Such a B is still a constant; these
// functions give its shape (discovery, weights.cpp) and its values (weight_tensor.cpp).
#ifndef INT4Q_ONNX_SRC_CONST_PATH_HPP
#define INT4Q_ONNX_SRC_CONST_PATH_HPP

#include <cstdint>
#include <string>
#include <vector>

#include <onnx/onnx_pb.h>

#include <int4q/onnx/model.hpp>

namespace int4q {
namespace onnx {
namespace detail {

/// Whether `n` is an op a constant path may go through (default domain, one output).
bool is_path_op(const ::onnx::NodeProto& n);

/// The inputs of path node `n` other than its data input 0 (Reshape's shape, Squeeze/Unsqueeze
/// axes): they must be constants of the node's graph.
std::vector<std::string> path_aux_inputs(const ::onnx::NodeProto& n);

/// The shape and element type after path node `n` (of graph `g`) given those of its input;
/// returns "" or why the node cannot be folded (a Cast to a non-float type, a non-constant
/// Reshape shape, a bad permutation, ...).
std::string path_node_shape(const model& m, const ::onnx::GraphProto& g, const ::onnx::NodeProto& n,
                            std::vector<std::int64_t>& dims, elem_type& type);

/// Applies path node `n` to `values` (row-major, shape `dims`): a Transpose permutes, a Cast to
/// float16/bfloat16 rounds each value to nearest even in that type (a Cast to float32 or
/// float64 of float values is exact), the other ops change `dims` only. The node must have passed
/// path_node_shape.
void apply_path_node(const model& m, const ::onnx::GraphProto& g, const ::onnx::NodeProto& n,
                     std::vector<std::int64_t>& dims, elem_type& type, std::vector<float>& values);

}  // namespace detail
}  // namespace onnx
}  // namespace int4q

#endif  // INT4Q_ONNX_SRC_CONST_PATH_HPP
