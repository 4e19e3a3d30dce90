// dequant against the reference value (code - zp) * scale / table[code] * scale (one rounding
// in T, so compared exactly); qdq bit-identical to dequant(quant_tensor); inconsistent inputs.
#include <gtest/gtest.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <xtensor/xtensor.hpp>
#include <xtensor/xview.hpp>

#include <int4q/quant.hpp>

#include "reference.hpp"
#include "test_util.hpp"

namespace {

using int4q::data_type;
using int4q::grouping;
using int4q::quant_config;
using int4q::rounding;
using int4q::scale_division;
using int4q::scale_type;
using int4q::scheme;
using int4q::zero_point_rounding;
using int4q::zero_range_policy;
using int4q_test::all_equal;
using int4q_test::describe;
using int4q_test::dist;
using int4q_test::random_weight;

const std::vector<dist> kDists = {dist::normal,   dist::uniform,   dist::outliers,  dist::positive,
                                  dist::negative, dist::fp16_grid, dist::small_ints};
const std::vector<scheme> kSchemes = {scheme::asymmetric, scheme::symmetric,
                                      scheme::symmetric_full_range, scheme::symmetric_offset};

/// kind 0..3: integer schemes; 4: nf4; 5: fp4 (bits forced to 4).
quant_config config_of(int kind, int bits, std::size_t group, int mode_bits) {
  quant_config c;
  c.bits = kind >= 4 ? 4 : bits;
  c.scheme = kind < 4 ? kSchemes[kind] : scheme::asymmetric;
  if (kind == 4) c.data_type = data_type::nf4;
  if (kind == 5) c.data_type = data_type::fp4;
  if (group == 0) {
    c.granularity = grouping::per_channel;
  } else {
    c.group_size = group;
  }
  c.rounding = (mode_bits & 1) ? rounding::half_away_from_zero : rounding::half_to_even;
  c.zero_point_rounding =
      (mode_bits & 2) ? zero_point_rounding::before_rounding : zero_point_rounding::after_rounding;
  c.scale_division = (mode_bits & 4) ? scale_division::multiply_reciprocal : scale_division::divide;
  return c;
}

template <class T>
std::string context(const quant_config& c, const std::string& data, std::uint32_t seed,
                    std::size_t K, std::size_t N) {
  return describe(c) + " type=" + int4q_test::type_name<T>() + " data=" + data +
         " seed=" + std::to_string(seed) + " K=" + std::to_string(K) + " N=" + std::to_string(N);
}

// ---- dequant == reference ---------------------------------------------------------------------

/// Arbitrary codes, scales (negative, zero, subnormal, large) and zero points: dequant is
/// exactly (code - zp) * scale (or table[code] * scale) rounded once in T.
template <class T>
void check_arbitrary_structs() {
  std::mt19937 gen(2024);
  for (int kind = 0; kind < 6; ++kind) {
    for (int bits = 2; bits <= 8; ++bits) {
      if (kind >= 4 && bits != 4) continue;
      for (std::size_t group : {std::size_t(1), std::size_t(5), std::size_t(64), std::size_t(0)}) {
        for (std::size_t N : {std::size_t(1), std::size_t(13), std::size_t(70), std::size_t(260)}) {
          const std::size_t K = 37;
          const quant_config c = config_of(kind, bits, group, 0);
          const std::size_t G = c.num_groups(K);
          int4q::quantized<T> q;
          q.config = c;
          q.codes = xt::xtensor<std::uint8_t, 2>::from_shape({K, N});
          q.scales = xt::xtensor<T, 2>::from_shape({G, N});
          q.zero_points = xt::xtensor<std::uint8_t, 2>::from_shape({G, N});
          for (auto& v : q.codes) v = static_cast<std::uint8_t>(gen() % (c.qmax() + 1));
          for (auto& v : q.zero_points) v = static_cast<std::uint8_t>(gen() % (c.qmax() + 1));
          std::size_t i = 0;
          for (auto& s : q.scales) {
            const double u = (static_cast<double>(gen()) + 0.5) / 4294967296.0;
            switch (i++ % 6) {
              case 0: s = static_cast<T>(u * 0.01); break;
              case 1: s = static_cast<T>(-u); break;
              case 2: s = T(0); break;
              case 3: s = std::numeric_limits<T>::denorm_min() * T(3); break;
              case 4: s = static_cast<T>(u) * (std::numeric_limits<T>::max() / T(512)); break;
              default: s = static_cast<T>(std::ldexp(1.0, static_cast<int>(gen() % 20) - 10));
            }
          }
          const std::string where = context<T>(c, "arbitrary codes", 2024, K, N);
          const auto want = int4q_ref::dequantize(q.codes, q.scales, q.zero_points, c);
          ASSERT_TRUE(all_equal(want, int4q::dequant(q), where));
          if (std::is_same<T, float>::value && kind < 4) {
            // Independent check in double: (code - zp) * scale is exact in double (8-bit
            // integer times 24-bit mantissa), so its rounding to float is the one rounding.
            for (std::size_t k = 0; k < K; ++k) {
              for (std::size_t n = 0; n < N; ++n) {
                const std::size_t g = k / c.effective_group_size(K);
                const double exact = (static_cast<double>(q.codes(k, n)) - q.zero_points(g, n)) *
                                     static_cast<double>(q.scales(g, n));
                ASSERT_EQ(static_cast<T>(exact), want(k, n))
                    << where << " [" << k << ", " << n << "]";
              }
            }
          }
        }
      }
    }
  }
}

TEST(DequantVsReference, ArbitraryStructsFloat) { check_arbitrary_structs<float>(); }
TEST(DequantVsReference, ArbitraryStructsDouble) { check_arbitrary_structs<double>(); }

template <class T>
void check_quantized_weights() {
  const std::size_t K = 41, N = 23;
  for (int kind = 0; kind < 6; ++kind) {
    for (int bits : {2, 3, 4, 7, 8}) {
      if (kind >= 4 && bits != 4) continue;
      for (int mode_bits = 0; mode_bits < 8; ++mode_bits) {
        for (dist d : kDists) {
          const quant_config c = config_of(kind, bits, mode_bits % 2 ? 8 : 0, mode_bits);
          const std::uint32_t seed = 100u + static_cast<std::uint32_t>(d);
          const auto w = random_weight<T>(K, N, d, seed);
          const auto q = int4q::quant_tensor(w, c);
          const std::string where = context<T>(c, int4q_test::to_string(d), seed, K, N);
          ASSERT_TRUE(all_equal(int4q_ref::dequantize(q.codes, q.scales, q.zero_points, c),
                                int4q::dequant(q), where));
        }
      }
    }
  }
}

TEST(DequantVsReference, QuantizedWeightsFloat) { check_quantized_weights<float>(); }
TEST(DequantVsReference, QuantizedWeightsDouble) { check_quantized_weights<double>(); }

TEST(DequantVsReference, HandComputed) {
  // asymmetric 4-bit, one group of 3 rows, 2 columns; scale 0.5 / 0.25, zp 3 / 0:
  // column 0: (0 - 3) * 0.5 = -1.5, (3 - 3) * 0.5 = 0, (15 - 3) * 0.5 = 6
  // column 1: 0 * 0.25 = 0, 1 * 0.25 = 0.25, 15 * 0.25 = 3.75
  int4q::quantized<float> q;
  q.config.group_size = 4;
  q.codes = {{0, 0}, {3, 1}, {15, 15}};
  q.scales = {{0.5f, 0.25f}};
  q.zero_points = {{3, 0}};
  const xt::xtensor<float, 2> want = {{-1.5f, 0.0f}, {0.0f, 0.25f}, {6.0f, 3.75f}};
  EXPECT_TRUE(all_equal(want, int4q::dequant(q), "hand asym"));
  // fp4 codes 7 (6), 13 (-3), 8 (-0), 1 (0.5) with scale 2: 12, -6, -0, 1
  q.config.data_type = data_type::fp4;
  q.codes = {{7, 13}, {8, 1}, {0, 0}};
  q.scales = {{2.0f, 2.0f}};
  q.zero_points = {{0, 0}};
  const auto fp4 = int4q::dequant(q);
  EXPECT_EQ(fp4(0, 0), 12.0f);
  EXPECT_EQ(fp4(0, 1), -6.0f);
  EXPECT_EQ(fp4(1, 0), 0.0f);
  EXPECT_EQ(fp4(1, 1), 1.0f);
  // nf4 codes 0 (-1), 15 (1), 7 (0) with scale 0.5
  q.config.data_type = data_type::nf4;
  q.codes = {{0, 15}, {7, 7}, {15, 0}};
  q.scales = {{0.5f, -0.5f}};
  const xt::xtensor<float, 2> nf4 = {{-0.5f, -0.5f}, {0.0f, 0.0f}, {0.5f, 0.5f}};
  EXPECT_TRUE(all_equal(nf4, int4q::dequant(q), "hand nf4"));
}

// ---- qdq
// ------------------------------------------------------------------------------------------

template <class T>
void check_qdq() {
  for (int kind = 0; kind < 6; ++kind) {
    for (int bits : {2, 4, 5, 8}) {
      if (kind >= 4 && bits != 4) continue;
      for (int mode_bits = 0; mode_bits < 8; ++mode_bits) {
        for (dist d : kDists) {
          for (std::size_t group : {std::size_t(1), std::size_t(16), std::size_t(0)}) {
            quant_config c = config_of(kind, bits, group, mode_bits);
            c.scale_type = static_cast<scale_type>((mode_bits + static_cast<int>(d)) % 3);
            c.zero_range = static_cast<zero_range_policy>(mode_bits % 3);
            c.clip_ratio = (static_cast<int>(d) % 2) ? 0.9 : 1.0;
            const std::size_t K = 35, N = 19;
            const std::uint32_t seed = 300u + static_cast<std::uint32_t>(d);
            auto w = random_weight<T>(K, N, d, seed);
            for (std::size_t k = 0; k < K; ++k) w(k, 3) = 0;  // an all-zero column
            const std::string where = context<T>(c, int4q_test::to_string(d), seed, K, N);
            const auto two_step = int4q::dequant(int4q::quant_tensor(w, c));
            const auto one_pass = int4q::qdq(w, c);
            ASSERT_EQ(std::memcmp(two_step.data(), one_pass.data(), two_step.size() * sizeof(T)), 0)
                << where << "\n"
                << all_equal(two_step, one_pass, where).message();
          }
        }
      }
    }
  }
}

TEST(Qdq, BitIdenticalToDequantOfQuantTensorFloat) { check_qdq<float>(); }
TEST(Qdq, BitIdenticalToDequantOfQuantTensorDouble) { check_qdq<double>(); }

TEST(Qdq, WideAndOddShapesAndInputTypes) {
  for (int kind = 0; kind < 6; ++kind) {
    const quant_config c = config_of(kind, 3, 32, kind + 1);
    SCOPED_TRACE(describe(c));
    for (std::size_t N : {std::size_t(1), std::size_t(255), std::size_t(257), std::size_t(300)}) {
      const auto w = random_weight<float>(70, N, dist::fp16_grid, 8);
      const auto a = int4q::qdq(w, c);
      const auto b = int4q::dequant(int4q::quant_tensor(w, c));
      ASSERT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0) << "N " << N;
    }
    // fp16 input and a strided view go through the same conversion as quant_tensor.
    const auto src = random_weight<float>(50, 30, dist::normal, 9);
    auto h = xt::xtensor<int4q::float16_t, 2>::from_shape({50, 30});
    for (std::size_t i = 0; i < src.size(); ++i) h.data()[i] = int4q::float16_t(src.data()[i]);
    const auto ah = int4q::qdq(h, c);
    const auto bh = int4q::dequant(int4q::quant_tensor(h, c));
    EXPECT_EQ(std::memcmp(ah.data(), bh.data(), ah.size() * sizeof(float)), 0);
    auto view = xt::view(src, xt::range(0, 50, 3), xt::range(1, 30, 2));
    const auto av = int4q::qdq(view, c);
    const auto bv = int4q::dequant(int4q::quant_tensor(view, c));
    EXPECT_EQ(std::memcmp(av.data(), bv.data(), av.size() * sizeof(float)), 0);
  }
}

// ---- measure_error(w, q): the error without a dequantized copy --------------------------------

void expect_same_stats(const int4q::error_stats& a, const int4q::error_stats& b,
                       const std::string& where) {
  EXPECT_EQ(a.count, b.count) << where;
  EXPECT_EQ(a.mse, b.mse) << where;  // the same sums in the same order: equal to the bit
  EXPECT_EQ(a.max_abs, b.max_abs) << where;
  EXPECT_EQ(a.relative_l2, b.relative_l2) << where;
  EXPECT_EQ(a.sqnr_db, b.sqnr_db) << where;
}

TEST(MeasureErrorOfQuantized, EqualsTheErrorOfDequant) {
  for (int kind = 0; kind < 6; ++kind) {
    for (std::size_t group : {std::size_t(1), std::size_t(16), std::size_t(0)}) {
      const quant_config c = config_of(kind, 4, group, kind + 3);
      for (std::size_t N : {std::size_t(1), std::size_t(19), std::size_t(300)}) {
        const std::size_t K = 37;  // ragged at 16
        const auto w = random_weight<float>(K, N, dist::outliers, 21);
        const auto q = int4q::quant_tensor(w, c);
        const std::string where = describe(c) + " N " + std::to_string(N);
        const auto ref = int4q::measure_error(w, int4q::dequant(q));
        expect_same_stats(int4q::measure_error(w, q), ref, where);
        if (group != 1) {  // groups of 1 can be exact
          EXPECT_GT(ref.mse, 0.0) << where;
        }
      }
    }
  }
  // A strided view as the reference, and double weights.
  const auto src = random_weight<double>(60, 40, dist::normal, 5);
  auto view = xt::view(src, xt::range(0, 60, 2), xt::range(0, 40, 3));
  const quant_config c;
  const auto qv = int4q::quant_tensor(view, c);
  expect_same_stats(int4q::measure_error(view, qv),
                    int4q::measure_error(xt::xtensor<double, 2>(view), int4q::dequant(qv)), "view");
  // An exact quantization measures zero error.
  xt::xtensor<float, 2> ints = xt::zeros<float>({32, 4});
  for (std::size_t k = 0; k < 32; ++k) ints(k, 1) = static_cast<float>(k % 16);
  const auto exact = int4q::measure_error(ints, int4q::quant_tensor(ints, c));
  EXPECT_EQ(exact.max_abs, 0.0);
  EXPECT_EQ(exact.count, 128u);
}

TEST(MeasureErrorOfQuantized, ShapeMismatchThrows) {
  const auto w = random_weight<float>(32, 8, dist::normal, 1);
  const auto q = int4q::quant_tensor(w, quant_config{});
  const auto other = random_weight<float>(32, 9, dist::normal, 1);
  EXPECT_THROW(int4q::measure_error(other, q), int4q::shape_error);
}

// ---- Inconsistent inputs ------------------------------------------------------------------------

TEST(DequantErrors, InconsistentQuantizedThrows) {
  const auto w = random_weight<float>(20, 6, dist::normal, 4);
  quant_config c;
  c.group_size = 8;  // G = 3
  const auto good = int4q::quant_tensor(w, c);
  EXPECT_NO_THROW((void)int4q::dequant(good));

  auto q = good;
  q.scales = xt::ones<float>({2, 6});
  EXPECT_THROW((void)int4q::dequant(q), int4q::shape_error);
  q = good;
  q.scales = xt::ones<float>({3, 5});
  EXPECT_THROW((void)int4q::dequant(q), int4q::shape_error);
  q = good;
  q.zero_points = xt::zeros<std::uint8_t>({3, 7});
  EXPECT_THROW((void)int4q::dequant(q), int4q::shape_error);
  q = good;
  q.zero_points = xt::zeros<std::uint8_t>({4, 6});
  EXPECT_THROW((void)int4q::dequant(q), int4q::shape_error);
  q = good;
  q.config.group_size = 4;  // the codes now need 5 groups
  EXPECT_THROW((void)int4q::dequant(q), int4q::shape_error);
  q = good;
  q.config.granularity = grouping::per_channel;  // 1 group
  EXPECT_THROW((void)int4q::dequant(q), int4q::shape_error);
  q = good;
  q.codes = xt::zeros<std::uint8_t>({21, 6});  // K = 21 still has 3 groups: consistent
  EXPECT_NO_THROW((void)int4q::dequant(q));
  q.codes = xt::zeros<std::uint8_t>({25, 6});  // 4 groups
  EXPECT_THROW((void)int4q::dequant(q), int4q::shape_error);
  q = good;
  q.config.bits = 9;
  EXPECT_THROW((void)int4q::dequant(q), int4q::config_error);
  q = good;
  q.config.group_size = 0;
  EXPECT_THROW((void)int4q::dequant(q), int4q::config_error);
  q = good;
  q.config.data_type = data_type::nf4;
  q.config.bits = 3;
  EXPECT_THROW((void)int4q::dequant(q), int4q::config_error);
}

}  // namespace
