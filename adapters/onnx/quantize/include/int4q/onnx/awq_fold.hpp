// AWQ folding: after a weight W [K, N] is replaced by diag(s) W, its input x must become x / s.
// plan_awq_fold decides where 1/s goes (reading the model only); apply_awq_folds edits the graph.
//
// 1/s goes into the producer of x when every reader of x takes the same s (all of them are the
// given consumers: x is no graph output and no other node or subgraph reads it; Shape and Size
// nodes, which read only x's shape, do not count):
//   LayerNormalization (axis -1)            gamma and beta divided by s
//   SimplifiedLayerNormalization (axis -1)  gamma divided by s
//   SkipLayerNormalization, SkipSimplifiedLayerNormalization (com.microsoft, output 0): the
//                                           same (gamma input 2, beta input 3); the sum output
//                                           is unchanged
//   Mul by a constant [K] (or [1, .., K])   the constant divided by s (the decomposed RMSNorm's
//                                           final `* gamma` is this case)
//   MatMul / Gemm with a constant weight    its output columns (and Gemm's [K] bias) divided
// provided the constants it changes are read by that node only and are not `frozen` (weights
// being quantized). Otherwise one Mul by 1/s (a new initializer) is inserted in front of the
// consumers, which then read its output; other readers of x keep reading x.
//
// 1/s is computed in double and each changed value rounded once to its tensor's type, so the
// fold is exact up to that rounding (exact when the s_k are powers of two).
#ifndef INT4Q_ONNX_AWQ_FOLD_HPP
#define INT4Q_ONNX_AWQ_FOLD_HPP

#include <set>
#include <string>
#include <vector>

#include <int4q/onnx/model.hpp>

namespace int4q {
namespace onnx {

/// Where 1/s went.
enum class awq_fold_kind {
  layer_norm,             ///< (Skip)LayerNormalization gamma and beta
  simplified_layer_norm,  ///< (Skip)SimplifiedLayerNormalization gamma
  mul_constant,           ///< the constant operand of a Mul (RMSNorm's gamma)
  matmul,                 ///< a MatMul's constant weight, columns
  gemm,                   ///< a Gemm's constant weight, columns, and its bias
  inserted_mul,           ///< a new Mul node in front of the consumers
};
const char* to_string(awq_fold_kind k) noexcept;

/// One fold, decided by plan_awq_fold.
struct awq_fold_plan {
  awq_fold_kind kind = awq_fold_kind::inserted_mul;
  std::string activation;      ///< x: a tensor of the main graph
  std::vector<int> consumers;  ///< main-graph nodes reading x as input 0 that must see x / s
  std::vector<double> scales;  ///< s [K]
  int producer = -1;           ///< producer folds: the main-graph node computing x
  std::string producer_name;   ///< its name (or op_type#index), for reports
  /// Producer folds: constants divided by s along their last axis (gamma, beta, Mul's constant,
  /// Gemm's bias), and a MatMul/Gemm weight divided along its output axis.
  std::vector<std::string> divided;
  std::string weight;
  bool weight_trans = false;            ///< Gemm transB = 1: the weight is stored [K, K'] (rows)
  elem_type type = elem_type::float32;  ///< inserted_mul: the type of 1/s (that of x)
  std::string why_not_producer;         ///< inserted_mul: why the producer could not take 1/s
  /// "LayerNormalization 'ln'", "Mul 'x_awq_mul' (inserted: ...)": for reports.
  std::string description() const;
};

/// Decides where 1/s [K] goes for the main-graph nodes `consumers` (each reads `activation` as
/// input 0), `type` the float type of x. Reads the model only. Throws model_error (invalid)
/// when a consumer does not read x, when `scales` has a non-positive or non-finite entry, or
/// when x is not a main-graph tensor.
awq_fold_plan plan_awq_fold(const model& m, const std::string& activation,
                            const std::vector<int>& consumers, const std::vector<double>& scales,
                            elem_type type = elem_type::float32,
                            const std::set<std::string>& frozen = {});

/// Applies the plans (made on this model, before any of them is applied; plans for different
/// activations, or for disjoint consumers of one). Cannot fail.
void apply_awq_folds(model& m, const std::vector<awq_fold_plan>& plans);

}  // namespace onnx
}  // namespace int4q

#endif  // INT4Q_ONNX_AWQ_FOLD_HPP
