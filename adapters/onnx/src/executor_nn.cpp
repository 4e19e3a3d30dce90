// The executor's neural-network operators (convolution, pooling, normalization, resize, ...).
#include "executor_detail.hpp"

namespace int4q {
namespace onnx {
namespace exec {

void add_nn_ops(std::unordered_map<std::string, op_fn>& ops) { (void)ops; }

}  // namespace exec
}  // namespace onnx
}  // namespace int4q
