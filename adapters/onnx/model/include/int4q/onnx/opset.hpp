// Raising a model's default-domain opset to 21 (what DequantizeLinear with INT4/UINT4 blocks
// needs), converting the node forms that changed on the way or refusing them clearly.
#ifndef INT4Q_ONNX_OPSET_HPP
#define INT4Q_ONNX_OPSET_HPP

#include <cstdint>
#include <string>
#include <vector>

#include <onnx/onnx_pb.h>

#include <int4q/onnx/model.hpp>

namespace int4q {
namespace onnx {

/// The opset version `m` imports for `domain` ("" and "ai.onnx" are the default domain), or -1.
std::int64_t opset_version(const ::onnx::ModelProto& m, const std::string& domain = "");

/// Throws model_error(unsupported) naming the first node (main graph and subgraphs, graph order)
/// whose operator changed incompatibly between the model's default-domain opset and 21 and
/// that upgrade_opset_to_21 cannot convert; the message suggests `--format matmulnbits`, which
/// needs no opset change. Changes nothing. (Table of conversions and refusals: docs/onnx.md.)
void check_opset_upgrade_to_21(const ::onnx::ModelProto& m);

/// Sets the default-domain opset to 21 (when it is lower) after converting every node whose
/// form changed (attributes that became inputs, renamed operators, ...), and raises
/// ir_version to at least 10. Throws before changing anything when a node cannot be converted
/// (as check_opset_upgrade_to_21). Returns one line per converted node ("Clip 'c1': min/max
/// attributes -> inputs"); empty when nothing needed converting.
std::vector<std::string> upgrade_opset_to_21(::onnx::ModelProto& m);

}  // namespace onnx
}  // namespace int4q

#endif  // INT4Q_ONNX_OPSET_HPP
