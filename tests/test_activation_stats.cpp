// activation_stats against plain loops written from the definitions (double accumulation).
#include <gtest/gtest.h>

#include <cmath>
#include <cstddef>
#include <limits>
#include <set>
#include <string>
#include <vector>

#include <xtensor/xtensor.hpp>
#include <xtensor/xview.hpp>

#include <int4q/quant.hpp>

#include "test_util.hpp"

namespace {

using int4q::activation_stats;
using int4q::activation_stats_options;
using int4q_test::dist;
using int4q_test::random_weight;

// mean_abs sums in double, the reference too, in another order: a few rows * 2^-53 per entry.
constexpr double kSumOrderTolerance = 1e-12;
// H sums each block of B rows in float (sgemm), then the blocks in double: a float sum of B
// products is within (B + 1) * 2^-24 of its magnitude sum (the bound for recursive summation;
// blocked sgemm sums do better), the double levels add far less.
constexpr double kHessianTolerance =
    double(int4q::activation_stats::hessian_block_rows + 1) * 0x1p-24 + 1e-12;

/// Feeds `x` [rows, K] in batches of `batch` rows.
void feed(activation_stats& s, const xt::xtensor<float, 2>& x, std::size_t batch) {
  const std::size_t K = x.shape()[1];
  for (std::size_t r = 0; r < x.shape()[0]; r += batch) {
    const std::size_t n = std::min(batch, x.shape()[0] - r);
    s.add(x.data() + r * K, n);
  }
}

TEST(ActivationStats, AgreeWithTheDefinitions) {
  // Several float blocks of H (1100 rows = 2 full blocks and a partial one) and several tiles
  // (K = 300: tiles of 256 and 44 columns, one off-diagonal).
  const std::size_t rows = 1100, K = 300;
  ASSERT_GT(rows, 2 * activation_stats::hessian_block_rows);
  ASSERT_GT(K, activation_stats::hessian_tile);
  const auto x = random_weight<float>(rows, K, dist::outliers, 3);
  for (std::size_t batch : {std::size_t(7), std::size_t(600), rows}) {
    activation_stats s(K);
    feed(s, x, batch);
    EXPECT_EQ(s.rows(), rows);
    const auto h = s.hessian();
    const auto mean = s.mean_abs();
    const auto upper = s.hessian_upper();  // in place: the same values above the diagonal
    ASSERT_EQ(upper.shape()[0], K);
    ASSERT_EQ(upper.shape()[1], K);
    const auto mx = s.max_abs();
    for (std::size_t a = 0; a < K; ++a) {
      double sum_abs = 0;
      float max_abs = 0;
      for (std::size_t r = 0; r < rows; ++r) {
        sum_abs += std::fabs(double(x(r, a)));
        max_abs = std::max(max_abs, std::fabs(x(r, a)));
      }
      EXPECT_NEAR(mean(a), sum_abs / rows, kSumOrderTolerance * sum_abs / rows) << a;
      EXPECT_EQ(mx(a), max_abs) << a;
      for (std::size_t b = 0; b < K; ++b) {
        double ref = 0, mag = 0;
        for (std::size_t r = 0; r < rows; ++r) {
          ref += double(x(r, a)) * double(x(r, b));
          mag += std::fabs(double(x(r, a)) * double(x(r, b)));
        }
        EXPECT_NEAR(h(a, b), ref, kHessianTolerance * mag) << a << ", " << b;
        EXPECT_EQ(h(a, b), h(b, a));
        if (b >= a) {
          EXPECT_EQ(upper(a, b), h(a, b)) << a << ", " << b;
        }
      }
    }
  }
}

TEST(ActivationStats, HigherRankInputsUseTheLastAxis) {
  xt::xtensor<double, 3> x = xt::zeros<double>({2, 3, 4});
  for (std::size_t i = 0; i < x.size(); ++i) x.data()[i] = double(i) - 10.0;
  activation_stats s(4);
  s.add(x);
  EXPECT_EQ(s.rows(), 6u);
  // Channel c holds the elements i = c, c + 4, ... (values i - 10): channel 0 is -10 ... 10,
  // channel 3 is -7 ... 13.
  EXPECT_EQ(s.max_abs()(0), 10.0f);
  EXPECT_EQ(s.max_abs()(3), 13.0f);
  EXPECT_THROW(s.add(xt::xtensor<float, 2>(xt::zeros<float>({2, 5}))), int4q::shape_error);
}

TEST(ActivationStats, SampleIsUniformDeterministicAndBatchIndependent) {
  const std::size_t rows = 500, K = 3, cap = 40;
  xt::xtensor<float, 2> x = xt::zeros<float>({rows, K});
  for (std::size_t r = 0; r < rows; ++r) x(r, 0) = static_cast<float>(r);  // row id
  activation_stats_options o;
  o.sample_rows = cap;
  o.seed = 11;
  o.hessian = false;
  activation_stats a(K, o), b(K, o);
  feed(a, x, 1);
  feed(b, x, 64);
  const auto sa = a.sample(), sb = b.sample();
  ASSERT_EQ(sa.shape()[0], cap);
  EXPECT_TRUE(sa == sb) << "the sample must not depend on the batch sizes";
  std::set<float> ids;
  for (std::size_t i = 0; i < cap; ++i) ids.insert(sa(i, 0));
  EXPECT_EQ(ids.size(), cap) << "rows are sampled without replacement";
  EXPECT_THROW(a.hessian(), int4q::config_error);
  // Uniform: over many seeds each row is kept with probability cap / rows = 0.08.
  std::vector<int> kept(rows, 0);
  const int trials = 400;
  for (int t = 0; t < trials; ++t) {
    o.seed = static_cast<std::uint64_t>(t);
    activation_stats s(K, o);
    feed(s, x, 100);
    const auto smp = s.sample();
    for (std::size_t i = 0; i < cap; ++i) ++kept[static_cast<std::size_t>(smp(i, 0))];
  }
  // Early and late rows alike (Algorithm R without its bias would favour the first rows).
  double early = 0, late = 0;
  for (std::size_t r = 0; r < 100; ++r) early += kept[r];
  for (std::size_t r = rows - 100; r < rows; ++r) late += kept[r];
  const double expected = 100.0 * trials * double(cap) / double(rows);  // 3200
  EXPECT_NEAR(early, expected, 0.1 * expected);
  EXPECT_NEAR(late, expected, 0.1 * expected);
  // Fewer rows than the capacity: all of them, in order.
  activation_stats small(K, o);
  feed(small, xt::xtensor<float, 2>(xt::view(x, xt::range(0, 5), xt::all())), 2);
  ASSERT_EQ(small.sample().shape()[0], 5u);
  for (std::size_t i = 0; i < 5; ++i) EXPECT_EQ(small.sample()(i, 0), float(i));
}

TEST(ActivationStats, NonFiniteActivationNamesRowAndChannelAndAddsNothing) {
  activation_stats s(2);
  const float good[] = {1, 2, 3, 4};
  s.add(good, 2);
  const float bad[] = {1, std::numeric_limits<float>::quiet_NaN()};
  try {
    s.add(bad, 1);
    FAIL() << "expected non_finite_error";
  } catch (const int4q::non_finite_error& e) {
    EXPECT_EQ(e.row(), 2u);
    EXPECT_EQ(e.col(), 1u);
    EXPECT_NE(std::string(e.what()).find("activation row 2, channel 1 is NaN"), std::string::npos);
  }
  EXPECT_EQ(s.rows(), 2u);
  EXPECT_EQ(s.hessian()(1, 1), 2.0 * 2 + 4.0 * 4);
  EXPECT_THROW(activation_stats(0), int4q::shape_error);
}

TEST(ActivationStats, HessianIsTheSameForAnyBatchSizesAndThreadCounts) {
  // Blocks count rows from the first one and each tile is one gemm on one thread: the bytes of H
  // depend on the rows only.
  const std::size_t rows = 1300, K = 520;
  const auto x = random_weight<float>(rows, K, dist::normal, 5);
  activation_stats_options one;
  one.threads = 1;
  activation_stats want(K, one);
  feed(want, x, rows);
  const auto h = want.hessian();
  for (std::size_t threads : {std::size_t(1), std::size_t(2), std::size_t(5)}) {
    for (std::size_t batch :
         {std::size_t(1), std::size_t(100), std::size_t(512), std::size_t(513)}) {
      activation_stats_options o;
      o.threads = threads;
      activation_stats s(K, o);
      feed(s, x, batch);
      EXPECT_TRUE(s.hessian() == h) << "threads " << threads << ", batches of " << batch;
    }
  }
}

TEST(ActivationStats, ReadingTheHessianAddsThePendingRows) {
  // 3 rows, less than a block: H is read before any block is full, then more rows come.
  activation_stats s(2);
  const float first[] = {1, 2, 3, 4, 5, 6};
  s.add(first, 3);
  EXPECT_EQ(s.hessian()(0, 1), 1.0 * 2 + 3.0 * 4 + 5.0 * 6);
  const float more[] = {-1, 1};
  s.add(more, 1);
  EXPECT_EQ(s.hessian()(0, 1), 1.0 * 2 + 3.0 * 4 + 5.0 * 6 - 1.0);
  EXPECT_EQ(s.hessian_upper()(1, 1), 2.0 * 2 + 4.0 * 4 + 6.0 * 6 + 1.0);
}

}  // namespace
