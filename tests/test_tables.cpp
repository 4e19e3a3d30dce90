// NF4 / FP4 lookup tables: the values (QLoRA NF4, OCP E2M1), the nearest-entry rule with ties
// to the lower value at every midpoint, quant_tensor with table data types against the
// reference, and the bits restriction.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include <xtensor/xtensor.hpp>

#include <int4q/quant.hpp>

#include "reference.hpp"
#include "test_util.hpp"

namespace {

using int4q::data_type;
using int4q::quant_config;
using int4q_test::all_equal;
using int4q_test::describe;
using int4q_test::dist;
using int4q_test::random_weight;

/// Agreement of the NF4 table with its construction recomputed here in double: bitsandbytes
/// evaluates torch.linspace in float32 (probabilities off by up to ~6e-8, times the quantile
/// function's slope of up to ~14 at p = 0.9677) and stores float32 values; 2e-6 covers both.
constexpr double tol_nf4_construction = 2e-6;

/// Inverse of the standard normal CDF by bisection on 0.5 * erfc(-x / sqrt(2)).
double normal_quantile(double p) {
  double lo = -10.0, hi = 10.0;
  for (int i = 0; i < 200; ++i) {
    const double mid = 0.5 * (lo + hi);
    (0.5 * std::erfc(-mid / std::sqrt(2.0)) < p ? lo : hi) = mid;
  }
  return 0.5 * (lo + hi);
}

TEST(Tables, Nf4IsTheQloraTable) {
  const auto& t = int4q::nf4_table;
  ASSERT_EQ(t.size(), 16u);
  for (int c = 0; c < 16; ++c) EXPECT_EQ(t[c], int4q_ref::nf4_values()[c]) << "code " << c;
  EXPECT_EQ(t[0], -1.0);
  EXPECT_EQ(t[7], 0.0);
  EXPECT_EQ(t[15], 1.0);
  for (int c = 1; c < 16; ++c) EXPECT_LT(t[c - 1], t[c]) << "ascending at " << c;
  for (int c = 0; c < 16; ++c) {
    EXPECT_EQ(static_cast<double>(static_cast<float>(t[c])), t[c]) << "float32 value " << c;
  }
  // QLoRA's construction (bitsandbytes create_normal_map, offset 0.9677083): 8 positive
  // quantiles at linspace(offset, 0.5, 9)[:-1], 7 negative at linspace(offset, 0.5, 8)[:-1],
  // plus 0, all divided by the largest.
  const double offset = 0.9677083;
  std::vector<double> v = {0.0};
  for (int i = 0; i < 8; ++i) v.push_back(normal_quantile(offset + (0.5 - offset) * i / 8.0));
  for (int i = 0; i < 7; ++i) v.push_back(-normal_quantile(offset + (0.5 - offset) * i / 7.0));
  std::sort(v.begin(), v.end());
  const double top = v.back();
  for (int c = 0; c < 16; ++c) {
    EXPECT_NEAR(t[c], v[c] / top, tol_nf4_construction) << "code " << c;
  }
}

TEST(Tables, Fp4IsE2M1WithSignBit) {
  const auto& t = int4q::fp4_e2m1_table;
  const double magnitudes[8] = {0, 0.5, 1, 1.5, 2, 3, 4, 6};
  for (int c = 0; c < 16; ++c) {
    EXPECT_EQ(t[c], int4q_ref::fp4_e2m1_value(c)) << "code " << c;  // decoded from the bits
    EXPECT_EQ(std::abs(t[c]), magnitudes[c & 7]) << "code " << c;
    EXPECT_EQ(std::signbit(t[c]), c >= 8) << "code " << c;
  }
  EXPECT_EQ(int4q::table_max(data_type::nf4), 1.0);
  EXPECT_EQ(int4q::table_max(data_type::fp4), 6.0);
  EXPECT_THROW(int4q::table_of(data_type::integer), int4q::config_error);
}

// ---- Nearest entry, ties to the lower value
// ---------------------------------------------------------

/// t values at and around every midpoint of adjacent entries (as T), plus the entries.
template <class T>
std::vector<T> probes(data_type d) {
  std::vector<T> entries;
  for (int c = 0; c < 16; ++c) {
    if (d == data_type::fp4 && c == 8) continue;
    entries.push_back(static_cast<T>(int4q_ref::table_value(d, c)));
  }
  std::sort(entries.begin(), entries.end());
  std::vector<T> out;
  const T inf = std::numeric_limits<T>::infinity();
  for (std::size_t i = 0; i + 1 < entries.size(); ++i) {
    using W = int4q_ref::wide_t<T>;
    const W exact = (static_cast<W>(entries[i]) + static_cast<W>(entries[i + 1])) / 2;
    const T m = static_cast<T>(exact);  // the exact midpoint when representable
    for (T x : {m, std::nextafter(m, -inf), std::nextafter(m, inf),
                std::nextafter(std::nextafter(m, inf), inf)}) {
      out.push_back(x);
    }
  }
  for (T e : entries) out.push_back(e);
  for (T x : {T(-1e30), T(1e30), T(-0.0), T(1e-30), T(-1e-30), T(7), T(-7)}) out.push_back(x);
  return out;
}

template <class T>
void check_nearest(data_type d) {
  const int4q::detail::sorted_table<T> table(d);
  using W = int4q_ref::wide_t<T>;
  int exact_ties = 0, rounded_midpoints = 0;
  for (T t : probes<T>(d)) {
    const int got = table.nearest(t);
    ASSERT_EQ(got, int4q_ref::nearest_table_code(t, d))
        << int4q::to_string(d) << " " << int4q_test::type_name<T>() << " t=" << t;
    if (std::abs(t) > static_cast<T>(int4q_ref::table_max(d))) continue;
    // The rule in exact arithmetic: no entry is strictly nearer, and on an exact tie the chosen
    // entry is the lower value. The one exception allowed: t is the T rounding of a midpoint that
    // T cannot represent (then the rounded-midpoint rule may pick the farther neighbour).
    const auto value = [&](int c) {
      return static_cast<W>(static_cast<T>(int4q_ref::table_value(d, c)));
    };
    const W tw = t;
    for (int c = 0; c < 16; ++c) {
      if (d == data_type::fp4 && c == 8) continue;
      const W dg = std::abs(tw - value(got)), dc = std::abs(tw - value(c));
      if (dc < dg) {
        const W mid = (value(got) + value(c)) / 2;
        ASSERT_TRUE(static_cast<T>(mid) == t && static_cast<W>(t) != mid)
            << int4q::to_string(d) << " " << int4q_test::type_name<T>() << " t=" << t << ": code "
            << c << " is nearer than " << got;
        ++rounded_midpoints;
      } else if (dc == dg && c != got) {
        ++exact_ties;
        ASSERT_LT(value(got), value(c)) << "tie at t=" << t << " must pick the lower value";
      }
    }
  }
  EXPECT_GT(exact_ties, 0) << "no exact midpoint was probed";
  if (d == data_type::fp4) {
    EXPECT_EQ(rounded_midpoints, 0) << "fp4 midpoints are exact in any T";
  }
}

TEST(TablesNearest, Nf4Float) { check_nearest<float>(data_type::nf4); }
TEST(TablesNearest, Nf4Double) { check_nearest<double>(data_type::nf4); }
TEST(TablesNearest, Fp4Float) { check_nearest<float>(data_type::fp4); }
TEST(TablesNearest, Fp4Double) { check_nearest<double>(data_type::fp4); }

TEST(TablesNearest, QuantTensorAtMidpoints) {
  // scale 1: nf4 needs amax 1, fp4 amax 6; the first row sets it.
  for (data_type d : {data_type::nf4, data_type::fp4}) {
    const auto p = probes<float>(d);
    std::vector<float> col;
    for (float x : p) {
      if (std::abs(x) <= static_cast<float>(int4q_ref::table_max(d))) col.push_back(x);
    }
    xt::xtensor<float, 2> w = xt::xtensor<float, 2>::from_shape({col.size() + 1, 1});
    w(0, 0) = static_cast<float>(int4q_ref::table_max(d));
    for (std::size_t i = 0; i < col.size(); ++i) w(i + 1, 0) = col[i];
    quant_config c;
    c.data_type = d;
    c.granularity = int4q::grouping::per_channel;
    const auto q = int4q::quant_tensor(w, c);
    ASSERT_EQ(q.scales(0, 0), 1.0f);
    for (std::size_t i = 0; i < w.shape()[0]; ++i) {
      EXPECT_EQ(q.codes(i, 0), int4q_ref::nearest_table_code(w(i, 0), d))
          << int4q::to_string(d) << " t=" << w(i, 0);
    }
  }
}

TEST(TablesNearest, HandComputed) {
  // fp4, amax 6 -> scale 1: 6 -> code 7; -3 -> 8|5 = 13; 1.25 ties 1 (code 2) and 1.5 (code 3)
  // -> lower: 2; -1.25 ties -1.5 (code 11) and -1 (code 10) -> lower value -1.5: 11; 0 -> 0;
  // -0 -> 0 (never 8); 0.2 -> 0; -0.3 (past -0.25) -> -0.5: code 9; 5 ties 4 and 6 -> 4: code 6
  const xt::xtensor<float, 2> w = {{6},     {-3},   {1.25f}, {-1.25f}, {0},
                                   {-0.0f}, {0.2f}, {-0.3f}, {5}};
  quant_config c;
  c.data_type = data_type::fp4;
  c.group_size = 16;
  const auto q = int4q::quant_tensor(w, c);
  const int want[] = {7, 13, 2, 11, 0, 0, 0, 9, 6};
  for (int i = 0; i < 9; ++i) EXPECT_EQ(q.codes(i, 0), want[i]) << "row " << i;
  // nf4, amax 1 -> scale 1: 1 -> 15, -1 -> 0, 0 -> 7, 0.5 (below the 0.4407 / 0.5626 midpoint
  // 0.5017) -> 12, -0.05 (past the -0.0455 midpoint) -> 6
  c.data_type = data_type::nf4;
  const xt::xtensor<float, 2> wn = {{1}, {-1}, {0}, {0.5f}, {-0.05f}};
  const auto qn = int4q::quant_tensor(wn, c);
  const int want_n[] = {15, 0, 7, 12, 6};
  for (int i = 0; i < 5; ++i) EXPECT_EQ(qn.codes(i, 0), want_n[i]) << "row " << i;
}

// ---- quant_tensor with tables
// ----------------------------------------------------------------------

template <class T>
void check_table_quant() {
  const std::vector<dist> dists = {dist::normal,   dist::uniform,   dist::outliers,  dist::positive,
                                   dist::negative, dist::fp16_grid, dist::small_ints};
  for (data_type d : {data_type::nf4, data_type::fp4}) {
    for (int m = 0; m < 8; ++m) {
      for (std::size_t group :
           {std::size_t(1), std::size_t(3), std::size_t(32), std::size_t(128), std::size_t(0)}) {
        for (dist di : dists) {
          quant_config c;
          c.data_type = d;
          if (group == 0) {
            c.granularity = int4q::grouping::per_channel;
          } else {
            c.group_size = group;
          }
          // rounding and zero-point placement do not apply to tables; division does.
          c.scale_division =
              (m & 1) ? int4q::scale_division::multiply_reciprocal : int4q::scale_division::divide;
          c.scale_type = static_cast<int4q::scale_type>((m / 2) % 3);
          c.clip_ratio = m >= 6 ? 0.7 : 1.0;
          c.zero_range = static_cast<int4q::zero_range_policy>(m % 3);
          c.min_range = (m == 5) ? 0.3 : 0.0;
          const std::size_t K = 37, N = 19;
          const std::uint32_t seed = 500u + static_cast<std::uint32_t>(di);
          auto w = random_weight<T>(K, N, di, seed);
          for (std::size_t k = 0; k < K; ++k) w(k, 2) = 0;  // an all-zero column
          const std::string where = describe(c) + " type=" + int4q_test::type_name<T>() +
                                    " data=" + int4q_test::to_string(di) +
                                    " seed=" + std::to_string(seed);
          const auto q = int4q::quant_tensor(w, c);
          const auto r = int4q_ref::quantize(w, c);
          ASSERT_TRUE(all_equal(r.scales, q.scales, where + " [scales]"));
          ASSERT_TRUE(all_equal(r.zero_points, q.zero_points, where + " [zero points]"));
          ASSERT_TRUE(all_equal(r.codes, q.codes, where + " [codes]"));
          if (d == data_type::fp4) {
            for (auto code : q.codes) ASSERT_NE(code, 8) << where << ": fp4 -0 produced";
          }
          ASSERT_TRUE(all_equal(int4q_ref::dequantize(q.codes, q.scales, q.zero_points, c),
                                int4q::dequant(q), where + " [dequant]"));
        }
      }
    }
  }
}

TEST(TablesQuantize, MatchesReferenceFloat) { check_table_quant<float>(); }
TEST(TablesQuantize, MatchesReferenceDouble) { check_table_quant<double>(); }

TEST(TablesQuantize, Fp4NeverProducesNegativeZero) {
  // Negative values that round to zero, -0 itself, and a zero-scale group.
  const xt::xtensor<float, 2> w = {{-6, 0}, {-0.0f, 0}, {-1e-20f, -0.0f}, {-0.24f, 0}, {-0.25f, 0}};
  for (auto zr : {int4q::zero_range_policy::unit_scale, int4q::zero_range_policy::zero_scale,
                  int4q::zero_range_policy::unit_range}) {
    quant_config c;
    c.data_type = data_type::fp4;
    c.group_size = 8;
    c.zero_range = zr;
    const auto q = int4q::quant_tensor(w, c);
    for (auto code : q.codes) EXPECT_NE(code, 8);
    EXPECT_EQ(q.codes(1, 0), 0);
    EXPECT_EQ(q.codes(2, 0), 0);
    EXPECT_EQ(q.codes(3, 0), 0);
    EXPECT_EQ(q.codes(4, 0), 9);  // -0.25: tie between -0.5 (code 9) and 0 -> the lower, -0.5
  }
}

TEST(TablesQuantize, BitsOtherThanFourRejected) {
  const auto w = random_weight<float>(8, 3, dist::normal, 1);
  for (data_type d : {data_type::nf4, data_type::fp4}) {
    for (int bits : {2, 3, 5, 8}) {
      quant_config c;
      c.data_type = d;
      c.bits = bits;
      EXPECT_THROW(int4q::validate(c), int4q::config_error);
      EXPECT_THROW((void)int4q::quant_tensor(w, c), int4q::config_error);
    }
  }
}

}  // namespace
