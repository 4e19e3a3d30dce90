#include <int4q/onnx/apply_plan.hpp>

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <int4q/onnx/weights.hpp>

namespace int4q {
namespace onnx {

void check_plan(const model& m, const quant_plan& plan) {
  std::set<std::string> quantizable;
  for (const auto& w : find_weights(m))
    if (w.quantizable) quantizable.insert(w.name);
  for (std::size_t i = 0; i < plan.weights.size(); ++i) {
    if (quantizable.count(plan.weights[i].weight)) continue;
    throw model_error(model_error::kind::invalid,
                      "plan: weights[" + std::to_string(i) + "]: '" + plan.weights[i].weight +
                          "' is not a quantizable weight of this model (a plan is made for one "
                          "model: make one for this model with `auto_plan`)");
  }
}

quantize_options with_plan(quantize_options options, const quant_plan& plan) {
  std::vector<node_override> ov = plan_overrides(plan);
  ov.insert(ov.end(), options.overrides.begin(), options.overrides.end());
  options.overrides = std::move(ov);
  return options;
}

quantize_options plan_selection(quantize_options options, const quant_plan& plan) {
  std::vector<node_override> ov;
  for (node_override& o : plan_overrides(plan))
    if (o.skip) ov.push_back(std::move(o));
  ov.insert(ov.end(), options.overrides.begin(), options.overrides.end());
  options.overrides = std::move(ov);
  return options;
}

std::optional<double> achieved_effective_bits(const quant_plan& plan,
                                              const quantize_report& report) {
  std::set<std::string> in_plan;
  for (const auto& w : plan.weights) in_plan.insert(w.weight);
  std::uint64_t bits = 0, weights = 0;
  for (const auto& t : report.tensors) {
    if (!in_plan.count(t.weight)) continue;
    bits += 8u * (t.quantized ? t.bytes_after : t.bytes_before);
    weights += std::uint64_t(t.k) * t.n;
  }
  if (weights == 0) return std::nullopt;
  return double(bits) / double(weights);
}

}  // namespace onnx
}  // namespace int4q
