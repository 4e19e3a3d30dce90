// measure_error against a plain scalar loop written from the definitions (one double sum each).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>

#include <xtensor/xtensor.hpp>
#include <xtensor/xview.hpp>

#include <int4q/quant.hpp>

#include "test_util.hpp"

namespace {

using int4q_test::dist;
using int4q_test::random_weight;

// The definitions, summed in one chain: mse = mean (w - q)^2, max_abs = max |w - q|,
// relative_l2 = ||w - q|| / ||w||, sqnr_db = 10 log10(||w||^2 / ||w - q||^2).
struct reference_stats {
  double mse = 0, max_abs = 0, relative_l2 = 0, sqnr_db = 0;
};

template <class A, class B>
reference_stats reference_error(const A& w, const B& q) {
  double sig = 0, err = 0, max_abs = 0;
  for (std::size_t i = 0; i < w.shape()[0]; ++i) {
    for (std::size_t j = 0; j < w.shape()[1]; ++j) {
      const double x = static_cast<double>(w(i, j));
      const double d = x - static_cast<double>(q(i, j));
      sig += x * x;
      err += d * d;
      max_abs = std::max(max_abs, std::fabs(d));
    }
  }
  reference_stats r;
  const double n = static_cast<double>(w.size());
  r.mse = err / n;
  r.max_abs = max_abs;
  r.relative_l2 = std::sqrt(err / sig);
  r.sqnr_db = 10.0 * std::log10(sig / err);
  return r;
}

// int4q sums in four lanes, the reference in one chain: the sums of n positive terms agree to a
// few n * 2^-53 relative.
constexpr double kSumOrderTolerance = 1e-12;

void expect_close(double got, double want, const char* what) {
  EXPECT_NEAR(got, want, kSumOrderTolerance * std::fabs(want)) << what;
}

TEST(MeasureError, AgreesWithTheDefinitions) {
  for (std::size_t N : {std::size_t(1), std::size_t(3), std::size_t(7), std::size_t(300)}) {
    const auto w = random_weight<float>(53, N, dist::outliers, 11);
    const auto q = int4q::qdq(w, int4q::quant_config{});
    const auto s = int4q::measure_error(w, q);
    const reference_stats r = reference_error(w, q);
    EXPECT_EQ(s.count, w.size());
    EXPECT_EQ(s.max_abs, r.max_abs);  // a max does not depend on the order
    expect_close(s.mse, r.mse, "mse");
    expect_close(s.rmse, std::sqrt(r.mse), "rmse");
    expect_close(s.relative_l2, r.relative_l2, "relative_l2");
    expect_close(s.sqnr_db, r.sqnr_db, "sqnr_db");
    // The quantized overload measures the same thing without a dequantized copy.
    const auto qs = int4q::measure_error(w, int4q::quant_tensor(w, int4q::quant_config{}));
    EXPECT_EQ(qs.mse, s.mse);
    EXPECT_EQ(qs.max_abs, s.max_abs);
  }
}

TEST(MeasureError, ViewsAndMixedTypesUseTheIteratorPath) {
  const auto w = random_weight<double>(40, 30, dist::normal, 4);
  auto q = xt::xtensor<float, 2>::from_shape({40, 30});
  for (std::size_t i = 0; i < w.size(); ++i) q.data()[i] = static_cast<float>(w.data()[i]) * 1.01f;
  auto wv = xt::view(w, xt::range(1, 40, 3), xt::range(0, 30, 2));
  auto qv = xt::view(q, xt::range(1, 40, 3), xt::range(0, 30, 2));
  const auto s = int4q::measure_error(wv, qv);
  const reference_stats r = reference_error(wv, qv);
  EXPECT_EQ(s.count, wv.size());
  EXPECT_EQ(s.max_abs, r.max_abs);
  expect_close(s.mse, r.mse, "mse");
  expect_close(s.relative_l2, r.relative_l2, "relative_l2");
}

TEST(MeasureError, ExactAndEmptyAndMismatched) {
  const auto w = random_weight<float>(8, 5, dist::normal, 2);
  const auto exact = int4q::measure_error(w, w);
  EXPECT_EQ(exact.mse, 0.0);
  EXPECT_EQ(exact.relative_l2, 0.0);
  EXPECT_EQ(exact.sqnr_db, std::numeric_limits<double>::infinity());
  const xt::xtensor<float, 2> zeros = xt::zeros<float>({4, 4});
  EXPECT_EQ(int4q::measure_error(zeros, zeros).relative_l2, 0.0);  // ||W|| = 0
  const xt::xtensor<float, 2> other = xt::zeros<float>({8, 4});
  EXPECT_THROW(int4q::measure_error(w, other), int4q::shape_error);
}

}  // namespace
