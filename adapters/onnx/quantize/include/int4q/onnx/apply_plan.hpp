// Applying a quant_plan (auto_plan's, or one read by plan_from_json) to quantize_options: its
// check against the model, its overrides, the selection it makes, and the effective bits a
// quantize_model run achieved on its weights.
#ifndef INT4Q_ONNX_APPLY_PLAN_HPP
#define INT4Q_ONNX_APPLY_PLAN_HPP

#include <optional>

#include <int4q/onnx/auto_quantize.hpp>
#include <int4q/onnx/model.hpp>
#include <int4q/onnx/quantize_model.hpp>

namespace int4q {
namespace onnx {

/// Throws model_error(invalid) "plan: weights[i]: 'w' is not a quantizable weight of this
/// model ..." when a weight of `plan` is none of find_weights(m)'s quantizable weights (a plan is
/// made for one model).
void check_plan(const model& m, const quant_plan& plan);

/// `options` with the plan's overrides (plan_overrides) before its own: the options that
/// quantize_model applies the plan with. overrides[i] for i < plan.weights.size() is the plan's
/// weights[i].
quantize_options with_plan(quantize_options options, const quant_plan& plan);

/// `options` with only the plan's overrides that keep a weight in float before its own: the
/// selection of weights a run of the plan quantizes, before its grids are checked (for
/// validate_model's NaN/Inf check).
quantize_options plan_selection(quantize_options options, const quant_plan& plan);

/// The achieved effective bits of a plan: stored bits (8 * bytes_after of a quantized weight,
/// 8 * bytes_before of one left in float) over k * n, summed over the plan's weights in
/// `report`; nullopt when the report holds none of them.
std::optional<double> achieved_effective_bits(const quant_plan& plan,
                                              const quantize_report& report);

}  // namespace onnx
}  // namespace int4q

#endif  // INT4Q_ONNX_APPLY_PLAN_HPP
