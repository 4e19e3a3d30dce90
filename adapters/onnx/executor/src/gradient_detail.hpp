// Internal to int4q::onnx: the vector-Jacobian products of stretch_gradient (gradient.hpp), one
// per operator, by the executor's registry key.
#ifndef INT4Q_ONNX_SRC_GRADIENT_DETAIL_HPP
#define INT4Q_ONNX_SRC_GRADIENT_DETAIL_HPP

#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "executor_detail.hpp"

namespace int4q {
namespace onnx {
namespace exec {

/// What a VJP gets for one node.
struct vjp_args {
  const node_context& c;
  const model& m;
  /// The node's forward inputs (nullptr: an absent optional input).
  const inputs_t& in;
  /// Its forward outputs (nullptr: an unnamed output, not kept).
  const std::vector<const value*>& out;
  /// dL/d(output k) for each float output that has a value (zeros where nothing flowed back);
  /// nullptr for the others.
  const std::vector<const value*>& grad;
  /// The inputs whose gradient is wanted (float inputs that depend on a wrt name).
  const std::vector<bool>& need;
};

/// Sets gin[k] (sized like in) to dL/d(input k), of input k's shape, for every k with need[k].
using vjp_fn = std::function<void(const vjp_args&, std::vector<std::optional<value>>& gin)>;

/// Adds the VJPs of gradient_attention.cpp (com.microsoft MultiHeadAttention,
/// GroupQueryAttention).
void add_attention_vjps(std::unordered_map<std::string, vjp_fn>& v);

/// The operators with a VJP, by registry key (op_key).
const std::unordered_map<std::string, vjp_fn>& vjp_registry();

/// g (of a broadcast shape) summed over the axes along which a value of `target` shape was
/// broadcast to it: the gradient of a broadcast operand. In double, in a fixed order.
value sum_to_shape(const value& g, const shape_t& target);

}  // namespace exec
}  // namespace onnx
}  // namespace int4q

#endif  // INT4Q_ONNX_SRC_GRADIENT_DETAIL_HPP
