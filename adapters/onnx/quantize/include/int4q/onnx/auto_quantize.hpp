// auto_quantize: a per-weight choice of format (int4 g32, int4 g128, int8, unquantized, ...)
// under an effective-bits budget, without gradients (ModelOpt's auto_quantize with a
// Hessian-weighted score). Search is separate from apply: auto_plan returns a plan; its
// overrides (plan_overrides) go into quantize_options::overrides for quantize_model.
//
//   cost(weight, candidate)  bits the output format stores for the weight: codes, scales (in the
//                            weight's float type, as the writers store them) and zero points
//                            (packed as the writers store them); unquantized = the stored float
//                            bits (32 for float32, 16 for float16/bfloat16).
//   score(weight, candidate) trace(dW^T H dW), dW = W - dequant(quant_tensor(W, candidate)),
//                            H = X^T X of the weight's input on calibration data (float model).
//   groups                   weights whose MatMul/Gemm nodes read the same input tensor share a
//                            candidate; a group's cost and score are its members' sums.
//   solver                   exact multiple-choice knapsack: the least total score with
//                            total cost <= budget * total weights (solve_choice).
#ifndef INT4Q_ONNX_AUTO_QUANTIZE_HPP
#define INT4Q_ONNX_AUTO_QUANTIZE_HPP

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <int4q/onnx/model.hpp>
#include <int4q/onnx/quantize_model.hpp>
#include <int4q/onnx/weights.hpp>

namespace int4q {
namespace onnx {

/// One format a weight may take.
struct auto_candidate {
  std::string name;            ///< "int4-g32", "int8-g128", "int8-channel", "none", ...
  bool quantize = true;        ///< false: left in float
  int bits = 4;                ///< when quantize
  std::size_t group_size = 0;  ///< rows per group; 0 = per-channel
};

/// Parses "none" (also "float", "fp"), "int<B>-g<N>" or "int<B>-channel". Throws config_error.
auto_candidate parse_candidate(const std::string& text);

/// int4 g32, int4 g128, int8 (matmulnbits: group 128, the format has no per-channel; qdq and
/// fake: per-channel), unquantized.
std::vector<auto_candidate> default_candidates(output_format format);

/// Bits `format` stores for weight `w` as candidate `c` (codes, scales, zero points), with the
/// base grid `base` (its scheme decides whether zero points are stored).
std::uint64_t candidate_bits(const weight_info& w, const auto_candidate& c,
                             const int4q::quant_config& base, output_format format);

/// One item of a choice group for the solver.
struct choice_item {
  std::uint64_t cost = 0;
  double score = 0;
};

/// Exact multiple-choice knapsack: one item per group, minimising the summed score subject to
/// the summed cost <= capacity (ties: the smaller cost, then the earlier items). Returns the
/// index chosen in each group. Dynamic programming over the Pareto frontier (cost, score) of
/// the groups taken so far: exact for any integer costs. Throws config_error when even the
/// cheapest items exceed the capacity, or when a group is empty.
std::vector<std::size_t> solve_choice(const std::vector<std::vector<choice_item>>& groups,
                                      std::uint64_t capacity);

struct auto_options {
  double effective_bits = 4.8;             ///< the budget: total bits <= this * total weights
  std::vector<auto_candidate> candidates;  ///< empty: default_candidates(format)
  /// Called after each calibration batch.
  std::function<void(std::size_t batches)> on_progress;
};

/// One weight in a plan.
struct plan_weight {
  std::string weight;
  std::vector<std::string> nodes;  ///< display names
  std::string input;               ///< the input tensor its group shares
  std::size_t k = 0, n = 0;
  auto_candidate choice;
  double score = 0;                  ///< trace(dW^T H dW) of the choice (NaN: unknown)
  std::uint64_t bits = 0;            ///< stored bits of the choice
  std::vector<double> scores;        ///< per candidate of the plan (empty when read from a file)
  std::vector<std::uint64_t> costs;  ///< per candidate
};

struct quant_plan {
  std::vector<auto_candidate> candidates;
  std::vector<plan_weight> weights;  ///< the weights the plan covers, in model order
  double budget = 0;                 ///< requested effective bits
  std::uint64_t total_bits = 0, total_weights = 0;
  double effective_bits = 0;  ///< total_bits / total_weights
  double total_score = 0;
  std::string format;  ///< output format the costs were computed for
};

/// The weights quantize_model would quantize under `options` (its own selection: include/exclude,
/// overrides with skip, lm_head policy keep) whose grid a plan may choose: an lm_head under
/// policy int8 is quantized at 8 bits outside the plan.
std::vector<const weight_info*> plan_candidates(const std::vector<weight_info>& weights,
                                                const quantize_options& options);

/// auto_plan's checks of its options, before any work: throws config_error when effective_bits
/// is not a positive number, option_error (field "candidates") when the output format cannot
/// store a candidate on the base grid.
void check_auto_options(const quantize_options& options, const auto_options& a);

/// Scores every (weight, candidate) on `options.calibration.data` (parallel statistics of the
/// float model) and solves for the budget. Throws config_error for an infeasible budget (naming
/// the smallest feasible one), model_error without calibration data.
quant_plan auto_plan(const model& m, const quantize_options& options, const auto_options& a);

/// The plan as overrides (anchored on each weight's name), to put before any other overrides.
std::vector<node_override> plan_overrides(const quant_plan& plan);

nlohmann::json to_json(const quant_plan& plan);
/// Reads a plan written by to_json. Throws model_error(invalid) naming what is wrong.
quant_plan plan_from_json(const nlohmann::json& j);

}  // namespace onnx
}  // namespace int4q

#endif  // INT4Q_ONNX_AUTO_QUANTIZE_HPP
