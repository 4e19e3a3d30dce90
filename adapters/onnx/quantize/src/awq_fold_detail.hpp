// Internal to int4q::onnx: apply_awq_folds in two steps around quantize_model's rewrite_graph
// (which replaces the consumers by node index): the constants and the consumers' inputs first
// (node indices unchanged), the inserted Mul nodes after it.
#ifndef INT4Q_ONNX_SRC_AWQ_FOLD_DETAIL_HPP
#define INT4Q_ONNX_SRC_AWQ_FOLD_DETAIL_HPP

#include <vector>

#include <onnx/onnx_pb.h>

#include <int4q/onnx/awq_fold.hpp>

#include "writers.hpp"

namespace int4q {
namespace onnx {
namespace detail {

/// Divides the producers' constants by s and points inserted_mul plans' consumers at a new
/// name; returns the Mul nodes to insert (their 1/s initializers are added to the main graph).
std::vector<::onnx::NodeProto> fold_awq_constants(model& m, const std::vector<awq_fold_plan>& plans,
                                                  name_set& names);

/// Inserts each Mul right before the first main-graph node that reads its output.
void insert_awq_muls(model& m, std::vector<::onnx::NodeProto>& muls);

}  // namespace detail
}  // namespace onnx
}  // namespace int4q

#endif  // INT4Q_ONNX_SRC_AWQ_FOLD_DETAIL_HPP
