// Evaluation metrics of a quantized model against its reference: the next-token negative
// log-likelihood from logits (perplexity = exp(mean NLL)) and the error of one output against the
// reference's. All sums are in double; the functions neither allocate nor throw (the caller
// checks the targets against the vocabulary).
#ifndef INT4Q_ONNX_EVAL_METRICS_HPP
#define INT4Q_ONNX_EVAL_METRICS_HPP

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

namespace int4q {
namespace onnx {

/// NLL of token `target` under one row of logits z [vocab]: -log softmax(z)[target]
/// = m + log(sum_v exp(z_v - m)) - z_target with m = max_v z_v (the log-sum-exp shifted by the
/// maximum, so no exp overflows), in double. Requires target < vocab.
inline double token_nll(const float* z, std::size_t vocab, std::size_t target) noexcept {
  double mx = -std::numeric_limits<double>::infinity(), s = 0;
  for (std::size_t v = 0; v < vocab; ++v) mx = std::max(mx, double(z[v]));
  for (std::size_t v = 0; v < vocab; ++v) s += std::exp(z[v] - mx);
  return mx + std::log(s) - z[target];
}

/// Sum of token_nll over `rows` rows: logits [rows, vocab], targets [rows], each in [0, vocab).
template <class Target>
double sum_token_nll(const float* logits, std::size_t rows, std::size_t vocab,
                     const Target* targets) noexcept {
  double sum = 0;
  for (std::size_t r = 0; r < rows; ++r) {
    sum += token_nll(logits + r * vocab, vocab, static_cast<std::size_t>(targets[r]));
  }
  return sum;
}

/// Perplexity of a mean NLL in nats per token: exp(mean NLL).
inline double perplexity(double mean_nll) noexcept { return std::exp(mean_nll); }

/// Running error of a candidate output against the reference's (a = reference, b = candidate),
/// accumulated in double over every element added.
struct output_error {
  double max_abs = 0;      ///< max |a - b|
  double ref_max_abs = 0;  ///< max |a|
  double dot = 0;          ///< sum a b
  double ref_sq = 0;       ///< sum a^2
  double cand_sq = 0;      ///< sum b^2
  double diff_sq = 0;      ///< sum (a - b)^2
  double sum_abs = 0;      ///< sum |a - b|
  std::uint64_t count = 0;

  template <class T>
  void add(const std::vector<T>& ref, const std::vector<T>& cand) noexcept {
    for (std::size_t e = 0; e < ref.size(); ++e) {
      const double a = static_cast<double>(ref[e]), b = static_cast<double>(cand[e]);
      max_abs = std::max(max_abs, std::fabs(a - b));
      ref_max_abs = std::max(ref_max_abs, std::fabs(a));
      dot += a * b;
      ref_sq += a * a;
      cand_sq += b * b;
      diff_sq += (a - b) * (a - b);
      sum_abs += std::fabs(a - b);
    }
    count += ref.size();
  }
  /// max |a - b| / max |a| over the whole output (0 when both are 0, infinite when only the
  /// reference is all zeros).
  double max_rel() const noexcept {
    if (ref_max_abs > 0) return max_abs / ref_max_abs;
    return max_abs > 0 ? std::numeric_limits<double>::infinity() : 0.0;
  }
  /// ||a - b|| / ||a|| (||a - b|| when the reference is all zeros).
  double rel_l2() const noexcept {
    return ref_sq > 0 ? std::sqrt(diff_sq / ref_sq) : std::sqrt(diff_sq);
  }
  /// Cosine similarity a.b / (||a|| ||b||) of the flattened outputs (1 when both are all zeros,
  /// 0 when one is).
  double cosine() const noexcept {
    if (ref_sq > 0 && cand_sq > 0) return dot / std::sqrt(ref_sq * cand_sq);
    return ref_sq == 0 && cand_sq == 0 ? 1.0 : 0.0;
  }
  /// mean |a - b|.
  double mean_abs() const noexcept { return count ? sum_abs / static_cast<double>(count) : 0.0; }
};

}  // namespace onnx
}  // namespace int4q

#endif  // INT4Q_ONNX_EVAL_METRICS_HPP
