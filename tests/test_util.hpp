// Shared test helpers: named tolerances (each with its reason), seeded random weights, and
// failure messages that say expected, actual, tolerance, index, dtype, bits and seed.
#ifndef INT4Q_TESTS_TEST_UTIL_HPP
#define INT4Q_TESTS_TEST_UTIL_HPP

#include <gtest/gtest.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include <int4q/quant.hpp>

namespace int4q_test {

// ---- Named tolerances ----------------------------------------------------------------------
// Exact comparisons (codes, packed bytes, presets) use no tolerance at all. These are for
// quantities that go through different but equally valid float evaluation orders.

/// Relative error allowed between a float-accumulated statistic and its double reference:
/// sums of up to ~1e6 float terms lose about sqrt(n) * eps(float) ~ 1e-4 relative.
constexpr double tol_float_sum_rel = 1e-4;
/// |dequant - reference| for one element in float: one rounding of (code - zp) * scale,
/// i.e. half an ulp of the result; we allow 1 ulp of the largest representable magnitude.
constexpr double tol_dequant_ulps = 1.0;
/// RTN reconstruction error bound: |w - q| <= scale / 2 (nearest code), plus float slack of
/// 4 ulps of the weight for the rounding of w / scale.
constexpr double tol_rtn_half_step_slack_ulps = 4.0;

// ---- Seeds and data ------------------------------------------------------------------------

/// Fixed seeds used by property tests; a failure message prints the seed that failed.
inline std::vector<std::uint32_t> seeds() { return {1u, 7u, 42u, 1234u, 20261122u}; }

enum class dist {
  normal,      ///< N(0, 1) * 0.02 (typical LLM weight magnitude)
  uniform,     ///< U(-1, 1)
  outliers,    ///< normal with 1% of entries x 50
  positive,    ///< |N(0,1)| (no negative values)
  negative,    ///< -|N(0,1)|
  fp16_grid,   ///< normal rounded to fp16 (many exact ties after scaling)
  small_ints,  ///< integers in [-8, 8] (exact ties for power-of-two scales)
};

inline const char* to_string(dist d) {
  switch (d) {
    case dist::normal: return "normal";
    case dist::uniform: return "uniform";
    case dist::outliers: return "outliers";
    case dist::positive: return "positive";
    case dist::negative: return "negative";
    case dist::fp16_grid: return "fp16_grid";
    case dist::small_ints: return "small_ints";
  }
  return "?";
}

/// A [rows, cols] weight of T drawn from `d` with `seed` (deterministic across platforms:
/// values come from std::mt19937 bits mapped by explicit formulas, not std distributions).
template <class T>
xt::xtensor<T, 2> random_weight(std::size_t rows, std::size_t cols, dist d, std::uint32_t seed) {
  std::mt19937 gen(seed);
  auto u01 = [&]() { return (static_cast<double>(gen()) + 0.5) / 4294967296.0; };
  auto normal = [&]() {  // Box-Muller
    const double a = u01(), b = u01();
    return std::sqrt(-2.0 * std::log(a)) * std::cos(6.283185307179586 * b);
  };
  auto w = xt::xtensor<T, 2>::from_shape({rows, cols});
  for (std::size_t i = 0; i < w.size(); ++i) {
    double v = 0;
    switch (d) {
      case dist::normal: v = 0.02 * normal(); break;
      case dist::uniform: v = 2.0 * u01() - 1.0; break;
      case dist::outliers: v = 0.02 * normal() * (u01() < 0.01 ? 50.0 : 1.0); break;
      case dist::positive: v = std::abs(normal()); break;
      case dist::negative: v = -std::abs(normal()); break;
      case dist::fp16_grid:
        v = int4q::half_bits_to_float(
            int4q::float_to_half_bits(static_cast<float>(0.02 * normal())));
        break;
      case dist::small_ints: v = std::floor(u01() * 17.0) - 8.0; break;
    }
    w.data()[i] = static_cast<T>(v);
  }
  return w;
}

template <class T>
const char* type_name() {
  if (std::is_same<T, float>::value) return "float";
  if (std::is_same<T, double>::value) return "double";
  return "?";
}

/// One line describing a config, for failure messages.
inline std::string describe(const int4q::quant_config& c) {
  std::ostringstream s;
  s << "bits=" << c.bits << " group="
    << (c.granularity == int4q::grouping::per_channel ? std::string("per_channel")
                                                      : std::to_string(c.group_size))
    << " scheme=" << int4q::to_string(c.scheme) << " rounding=" << int4q::to_string(c.rounding)
    << " dtype=" << int4q::to_string(c.data_type) << " zp="
    << (c.zero_point_rounding == int4q::zero_point_rounding::before_rounding ? "before" : "after")
    << " div=" << (c.scale_division == int4q::scale_division::divide ? "divide" : "reciprocal")
    << " scale_type=" << static_cast<int>(c.scale_type) << " clip=" << c.clip_ratio;
  return s.str();
}

/// Asserts two equally shaped tensors are identical element by element; reports the first
/// mismatch with its [row, col] and the context string.
template <class A, class B>
::testing::AssertionResult all_equal(const A& expected, const B& actual,
                                     const std::string& context) {
  if (expected.shape() != actual.shape()) {
    return ::testing::AssertionFailure() << context << ": shapes differ";
  }
  const std::size_t cols = expected.dimension() == 2 ? expected.shape()[1] : 1;
  std::size_t mismatches = 0, first = 0;
  for (std::size_t i = 0; i < expected.size(); ++i) {
    const auto e = expected.data()[i];
    const auto a = actual.data()[i];
    const bool same = std::is_floating_point<std::decay_t<decltype(e)>>::value
                          ? (e == a || (e != e && a != a))
                          : e == a;
    if (!same) {
      if (mismatches == 0) first = i;
      ++mismatches;
    }
  }
  if (mismatches == 0) return ::testing::AssertionSuccess();
  std::ostringstream s;
  s.precision(9);
  s << context << ": " << mismatches << " of " << expected.size() << " differ; first at ["
    << first / cols << ", " << first % cols << "]: expected " << +expected.data()[first]
    << ", actual " << +actual.data()[first];
  return ::testing::AssertionFailure() << s.str();
}

}  // namespace int4q_test

#endif  // INT4Q_TESTS_TEST_UTIL_HPP
