// <int4q/onnx/eval_metrics.hpp>: token NLL and perplexity against a plain reference written from
// the definition (softmax probabilities, then -log p, in long double), and output_error against
// its formulas.
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include <int4q/onnx/eval_metrics.hpp>

namespace {

namespace ox = int4q::onnx;

/// -log(exp(z_t) / sum_v exp(z_v)), the definition, without the max shift (long double holds
/// exp of the logits used here).
double reference_nll(const std::vector<float>& z, std::size_t target) {
  long double total = 0;
  for (const float v : z) total += std::exp(static_cast<long double>(v));
  const long double p = std::exp(static_cast<long double>(z[target])) / total;
  return static_cast<double>(-std::log(p));
}

TEST(EvalMetrics, TokenNllMatchesTheDefinition) {
  const unsigned seed = 20261203;
  std::mt19937 rng(seed);
  std::normal_distribution<float> logit(0.0f, 4.0f);
  const std::size_t rows = 37, vocab = 301;
  std::vector<float> logits(rows * vocab);
  for (float& v : logits) v = logit(rng);
  std::vector<std::int64_t> targets(rows);
  for (std::size_t r = 0; r < rows; ++r) targets[r] = static_cast<std::int64_t>((r * 97) % vocab);
  double expected_sum = 0;
  for (std::size_t r = 0; r < rows; ++r) {
    const std::vector<float> row(logits.begin() + long(r * vocab),
                                 logits.begin() + long((r + 1) * vocab));
    const double expected = reference_nll(row, static_cast<std::size_t>(targets[r]));
    expected_sum += expected;
    // Both in double or wider: agreement to a few ulps of the log-sum-exp's size.
    EXPECT_NEAR(ox::token_nll(row.data(), vocab, static_cast<std::size_t>(targets[r])), expected,
                1e-12 * (1 + std::fabs(expected)))
        << "row " << r << ", seed " << seed;
  }
  const double sum = ox::sum_token_nll(logits.data(), rows, vocab, targets.data());
  EXPECT_NEAR(sum, expected_sum, 1e-11 * expected_sum) << "seed " << seed;
  EXPECT_NEAR(ox::perplexity(sum / rows), std::exp(expected_sum / rows),
              1e-10 * std::exp(expected_sum / rows));
}

TEST(EvalMetrics, TokenNllIsStableForLargeLogits) {
  // exp(1000) overflows a double: the shift by the maximum keeps it finite.
  const std::vector<float> z = {1000.0f, 999.0f, 990.0f};
  const double expected = std::log(1 + std::exp(-1.0) + std::exp(-10.0));  // target = argmax
  EXPECT_NEAR(ox::token_nll(z.data(), z.size(), 0), expected, 1e-12);
  EXPECT_NEAR(ox::token_nll(z.data(), z.size(), 2), expected + 10, 1e-12);
  // A uniform row: log(vocab) for every target; perplexity = vocab.
  const std::vector<float> flat(256, -3.5f);
  EXPECT_NEAR(ox::token_nll(flat.data(), flat.size(), 17), std::log(256.0), 1e-12);
  EXPECT_NEAR(ox::perplexity(std::log(256.0)), 256.0, 1e-9);
}

TEST(EvalMetrics, OutputErrorFollowsItsFormulas) {
  const std::vector<float> a = {1.0f, -2.0f, 0.5f, 4.0f};
  const std::vector<float> b = {1.5f, -2.0f, 0.0f, 3.0f};
  ox::output_error e;
  e.add(a, b);
  double diff_sq = 0, a_sq = 0, b_sq = 0, dot = 0, abs_sum = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double d = double(a[i]) - double(b[i]);
    diff_sq += d * d;
    a_sq += double(a[i]) * a[i];
    b_sq += double(b[i]) * b[i];
    dot += double(a[i]) * b[i];
    abs_sum += std::fabs(d);
  }
  EXPECT_EQ(e.count, 4u);
  EXPECT_DOUBLE_EQ(e.max_abs, 1.0);
  EXPECT_DOUBLE_EQ(e.max_rel(), 1.0 / 4.0);
  EXPECT_DOUBLE_EQ(e.rel_l2(), std::sqrt(diff_sq / a_sq));
  EXPECT_DOUBLE_EQ(e.cosine(), dot / std::sqrt(a_sq * b_sq));
  EXPECT_DOUBLE_EQ(e.mean_abs(), abs_sum / 4);

  ox::output_error zeros;
  zeros.add(std::vector<std::int64_t>{0, 0}, std::vector<std::int64_t>{0, 0});
  EXPECT_EQ(zeros.max_rel(), 0.0);
  EXPECT_EQ(zeros.cosine(), 1.0);
  ox::output_error only_candidate;
  only_candidate.add(std::vector<std::int64_t>{0, 0}, std::vector<std::int64_t>{0, 3});
  EXPECT_EQ(only_candidate.max_rel(), std::numeric_limits<double>::infinity());
  EXPECT_EQ(only_candidate.cosine(), 0.0);
  EXPECT_EQ(only_candidate.rel_l2(), 3.0);
}

}  // namespace
