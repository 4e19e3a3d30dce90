// The raw kernels of detail/kernels.hpp: the xsimd path (simd_tag) against its scalar twin
// (scalar_tag) and against plain loops written from the kernels' documented formulas, on every
// length 0..70 (all SIMD tails), rows 1..5, ties, +-0, clamping and non-finite values. Also the
// rounding helpers of detail/simd.hpp.
#include <gtest/gtest.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <int4q/quant.hpp>  // the only header of the single-include build

#include "reference.hpp"
#include "test_util.hpp"

namespace {

using int4q::detail::quantize_mode;
using int4q::detail::scalar_tag;
using int4q::detail::simd_tag;

constexpr std::size_t kMaxLen = 70;
constexpr std::size_t kMaxRows = 5;

template <class T>
std::string where(const char* what, std::size_t rows, std::size_t n, std::uint32_t seed) {
  return std::string(what) + " type=" + int4q_test::type_name<T>() +
         " rows=" + std::to_string(rows) + " n=" + std::to_string(n) +
         " seed=" + std::to_string(seed);
}

/// Values with ties, signed zeros, huge magnitudes and ordinary random numbers.
template <class T>
std::vector<T> kernel_values(std::size_t count, std::uint32_t seed) {
  std::mt19937 gen(seed);
  std::vector<T> v(count);
  for (auto& x : v) {
    const int k = static_cast<int>(gen() % 41) - 20;
    switch (gen() % 8) {
      case 0: x = static_cast<T>(k) + T(0.5); break;   // tie
      case 1: x = -static_cast<T>(k) - T(0.5); break;  // negative tie
      case 2: x = T(0); break;
      case 3: x = -T(0); break;
      case 4: x = (gen() % 2 ? T(1) : T(-1)) * T(1e30); break;  // clamps
      case 5: x = static_cast<T>(k); break;
      default: x = static_cast<T>((static_cast<double>(gen()) / 4294967296.0 - 0.5) * 40.0);
    }
  }
  return v;
}

// ---- minmax_columns ---------------------------------------------------------------------------

template <class T>
void check_minmax() {
  for (std::size_t rows = 1; rows <= kMaxRows; ++rows) {
    for (std::size_t n = 0; n <= kMaxLen; ++n) {
      const std::uint32_t seed = static_cast<std::uint32_t>(rows * 100 + n);
      const std::size_t ld = n + 3;  // a row stride wider than n
      const auto w = kernel_values<T>(rows * ld, seed);
      std::vector<T> lo_v(n + 1, T(7)), hi_v(n + 1, T(7)), lo_s(n + 1, T(7)), hi_s(n + 1, T(7));
      const bool fv = int4q::detail::minmax_columns(simd_tag{}, w.data(), ld, rows, n, lo_v.data(),
                                                    hi_v.data());
      const bool fs = int4q::detail::minmax_columns(scalar_tag{}, w.data(), ld, rows, n,
                                                    lo_s.data(), hi_s.data());
      const std::string ctx = where<T>("minmax", rows, n, seed);
      EXPECT_TRUE(fv) << ctx;
      EXPECT_TRUE(fs) << ctx;
      for (std::size_t j = 0; j < n; ++j) {
        T lo = w[j], hi = w[j];
        for (std::size_t i = 1; i < rows; ++i) {
          lo = w[i * ld + j] < lo ? w[i * ld + j] : lo;
          hi = w[i * ld + j] > hi ? w[i * ld + j] : hi;
        }
        // == : +0 and -0 compare equal; the sign of a zero min/max may differ between the
        // SIMD and scalar paths (see the report), which no code or scale depends on.
        ASSERT_EQ(lo_v[j], lo) << ctx << " column " << j;
        ASSERT_EQ(hi_v[j], hi) << ctx << " column " << j;
        ASSERT_EQ(lo_s[j], lo) << ctx << " column " << j;
        ASSERT_EQ(hi_s[j], hi) << ctx << " column " << j;
      }
      EXPECT_EQ(lo_v[n], T(7)) << ctx << " wrote past n";
      EXPECT_EQ(hi_v[n], T(7)) << ctx << " wrote past n";
    }
  }
}

TEST(KernelMinmax, SimdEqualsScalarEqualsLoopFloat) { check_minmax<float>(); }
TEST(KernelMinmax, SimdEqualsScalarEqualsLoopDouble) { check_minmax<double>(); }

template <class T>
void check_non_finite_lanes() {
  const T bads[] = {std::numeric_limits<T>::quiet_NaN(), std::numeric_limits<T>::infinity(),
                    -std::numeric_limits<T>::infinity()};
  for (std::size_t rows = 1; rows <= 3; ++rows) {
    for (std::size_t n = 1; n <= kMaxLen; ++n) {
      for (std::size_t r = 0; r < rows; ++r) {
        for (std::size_t p = 0; p < n; ++p) {
          for (T bad : bads) {
            std::vector<T> w = kernel_values<T>(rows * n, static_cast<std::uint32_t>(n + r));
            w[r * n + p] = bad;
            std::vector<T> lo(n), hi(n);
            const std::string ctx = where<T>("non-finite", rows, n, 0) + " at row " +
                                    std::to_string(r) + " lane " + std::to_string(p) + " value " +
                                    std::to_string(bad);
            ASSERT_FALSE(int4q::detail::minmax_columns(simd_tag{}, w.data(), n, rows, n, lo.data(),
                                                       hi.data()))
                << ctx;
            ASSERT_FALSE(int4q::detail::minmax_columns(scalar_tag{}, w.data(), n, rows, n,
                                                       lo.data(), hi.data()))
                << ctx;
            // Outside the n columns read, a non-finite value is not seen.
            if (p + 1 == n && n > 1) {
              ASSERT_TRUE(int4q::detail::minmax_columns(simd_tag{}, w.data(), n, rows, n - 1,
                                                        lo.data(), hi.data()))
                  << ctx;
            }
          }
        }
      }
    }
  }
  // The largest finite values are finite (x * 0 is 0 for them).
  for (std::size_t n : {1, 5, 16, 33}) {
    std::vector<T> w(n, std::numeric_limits<T>::max());
    w[0] = std::numeric_limits<T>::lowest();
    std::vector<T> lo(n), hi(n);
    EXPECT_TRUE(int4q::detail::minmax_columns(simd_tag{}, w.data(), n, 1, n, lo.data(), hi.data()));
    EXPECT_TRUE(
        int4q::detail::minmax_columns(scalar_tag{}, w.data(), n, 1, n, lo.data(), hi.data()));
  }
}

TEST(KernelMinmax, NonFiniteDetectedInEveryLaneFloat) { check_non_finite_lanes<float>(); }
TEST(KernelMinmax, NonFiniteDetectedInEveryLaneDouble) { check_non_finite_lanes<double>(); }

// ---- quantize_columns ---------------------------------------------------------------------------

/// The kernel's documented formula (kernels.hpp): t = w / div or w * div; before: code =
/// round(t + zp) clamped; after: code = round(t) + zp clamped. Rounding from reference.hpp.
template <class T>
std::uint8_t kernel_reference(T x, T div, T zp, T qmax, quantize_mode m) {
  const T t = m.reciprocal ? x * div : x / div;
  const int4q::rounding r =
      m.half_even ? int4q::rounding::half_to_even : int4q::rounding::half_away_from_zero;
  T q = m.zp_before_round ? int4q_ref::round_by(t + zp, r) : int4q_ref::round_by(t, r) + zp;
  q = q < T(0) ? T(0) : (q > qmax ? qmax : q);
  return static_cast<std::uint8_t>(q);
}

template <class T>
void check_quantize_columns() {
  std::mt19937 gen(5);
  for (int key = 0; key < 8; ++key) {
    quantize_mode m;
    m.reciprocal = key & 4;
    m.zp_before_round = key & 2;
    m.half_even = key & 1;
    for (int bits : {2, 4, 8}) {
      const T qmax = static_cast<T>((1 << bits) - 1);
      for (std::size_t rows = 1; rows <= kMaxRows; ++rows) {
        for (std::size_t n = 0; n <= kMaxLen; ++n) {
          const std::uint32_t seed = static_cast<std::uint32_t>(key * 10000 + bits * 1000 + n);
          const std::size_t ld = n + 1, ldc = n + 2;
          const auto w = kernel_values<T>(rows * ld, seed);
          std::vector<T> div(n), zp(n);
          for (std::size_t j = 0; j < n; ++j) {
            // powers of two keep the ties of kernel_values exact; also a few other divisors,
            // the zero-scale divisors (inf for divide, 0 for reciprocal) and negative scales
            const int e = static_cast<int>(gen() % 7) - 3;
            T d = std::ldexp(T(1), e);
            if (j % 5 == 1) d = -d;
            if (j % 7 == 2) d = T(0.3);
            if (j % 11 == 3) d = m.reciprocal ? T(0) : std::numeric_limits<T>::infinity();
            div[j] = d;
            zp[j] = static_cast<T>(gen() % (static_cast<unsigned>(qmax) + 1));
          }
          std::vector<std::uint8_t> cv(rows * ldc, 0xAB), cs(rows * ldc, 0xAB);
          int4q::detail::quantize_columns(simd_tag{}, w.data(), ld, rows, n, div.data(), zp.data(),
                                          qmax, m, cv.data(), ldc);
          int4q::detail::quantize_columns(scalar_tag{}, w.data(), ld, rows, n, div.data(),
                                          zp.data(), qmax, m, cs.data(), ldc);
          const std::string ctx = where<T>("quantize_columns", rows, n, seed) +
                                  " mode=" + std::to_string(key) + " bits=" + std::to_string(bits);
          for (std::size_t i = 0; i < rows; ++i) {
            for (std::size_t j = 0; j < ldc; ++j) {
              if (j >= n) {  // padding between rows untouched
                ASSERT_EQ(cv[i * ldc + j], 0xAB) << ctx;
                ASSERT_EQ(cs[i * ldc + j], 0xAB) << ctx;
                continue;
              }
              const T x = w[i * ld + j];
              const int want = kernel_reference(x, div[j], zp[j], qmax, m);
              ASSERT_EQ(cv[i * ldc + j], want) << ctx << " [" << i << ", " << j << "] w=" << x
                                               << " div=" << div[j] << " zp=" << zp[j] << " (simd)";
              ASSERT_EQ(cs[i * ldc + j], want)
                  << ctx << " [" << i << ", " << j << "] w=" << x << " div=" << div[j]
                  << " zp=" << zp[j] << " (scalar)";
            }
          }
        }
      }
    }
  }
}

TEST(KernelQuantize, AllModesSimdEqualsScalarEqualsFormulaFloat) {
  check_quantize_columns<float>();
}
TEST(KernelQuantize, AllModesSimdEqualsScalarEqualsFormulaDouble) {
  check_quantize_columns<double>();
}

TEST(KernelQuantize, TiesByMode) {
  // Hand-derived: div 1, zp 8, qmax 15; w = 2.5, -2.5, 0.5, -0.5
  //   after  + even: 2+8=10, -2+8=6, 0+8=8, -0+8=8
  //   after  + away: 3+8=11, -3+8=5, 1+8=9, -1+8=7
  //   before + even: round(10.5)=10, round(5.5)=6, round(8.5)=8, round(7.5)=8
  //   before + away: round(10.5)=11, round(5.5)=6, round(8.5)=9, round(7.5)=8
  const float w[4] = {2.5f, -2.5f, 0.5f, -0.5f};
  const float div[4] = {1, 1, 1, 1}, zp[4] = {8, 8, 8, 8};
  const int want[4][4] = {{10, 6, 8, 8}, {11, 5, 9, 7}, {10, 6, 8, 8}, {11, 6, 9, 8}};
  for (int c = 0; c < 4; ++c) {
    quantize_mode m;
    m.zp_before_round = c >= 2;
    m.half_even = (c % 2) == 0;
    for (bool recip : {false, true}) {
      m.reciprocal = recip;
      std::uint8_t out[4];
      int4q::detail::quantize_columns(simd_tag{}, w, 4, 1, 4, div, zp, 15.0f, m, out, 4);
      for (int j = 0; j < 4; ++j) EXPECT_EQ(out[j], want[c][j]) << "case " << c << " j " << j;
      int4q::detail::quantize_columns(scalar_tag{}, w, 4, 1, 4, div, zp, 15.0f, m, out, 4);
      for (int j = 0; j < 4; ++j) EXPECT_EQ(out[j], want[c][j]) << "case " << c << " j " << j;
    }
  }
}

// ---- dequant_columns
// -------------------------------------------------------------------------------

template <class T>
void check_dequant_columns() {
  std::mt19937 gen(17);
  for (std::size_t rows = 1; rows <= kMaxRows; ++rows) {
    for (std::size_t n = 0; n <= kMaxLen; ++n) {
      const std::size_t ldc = n + 3, ldo = n + 1;
      std::vector<std::uint8_t> codes(rows * ldc);
      for (auto& c : codes) c = static_cast<std::uint8_t>(gen() % 256);
      std::vector<T> scale(n), zp(n);
      for (std::size_t j = 0; j < n; ++j) {
        scale[j] = static_cast<T>((static_cast<double>(gen()) / 4294967296.0 - 0.3) * 0.1);
        if (j % 9 == 4) scale[j] = T(0);
        if (j % 13 == 5) scale[j] = -T(0);
        zp[j] = static_cast<T>(gen() % 256);
      }
      std::vector<T> ov(rows * ldo, T(-7)), os(rows * ldo, T(-7));
      int4q::detail::dequant_columns(simd_tag{}, codes.data(), ldc, rows, n, scale.data(),
                                     zp.data(), ov.data(), ldo);
      int4q::detail::dequant_columns(scalar_tag{}, codes.data(), ldc, rows, n, scale.data(),
                                     zp.data(), os.data(), ldo);
      const std::string ctx = where<T>("dequant_columns", rows, n, 0);
      for (std::size_t i = 0; i < rows; ++i) {
        for (std::size_t j = 0; j < ldo; ++j) {
          if (j >= n) {
            ASSERT_EQ(ov[i * ldo + j], T(-7)) << ctx;
            continue;
          }
          const T want = (static_cast<T>(codes[i * ldc + j]) - zp[j]) * scale[j];
          ASSERT_EQ(ov[i * ldo + j], want) << ctx << " [" << i << ", " << j << "]";
          ASSERT_EQ(os[i * ldo + j], want) << ctx << " [" << i << ", " << j << "]";
          ASSERT_EQ(std::signbit(ov[i * ldo + j]), std::signbit(os[i * ldo + j]))
              << ctx << " [" << i << ", " << j << "]";
        }
      }
    }
  }
}

TEST(KernelDequant, SimdEqualsScalarEqualsFormulaFloat) { check_dequant_columns<float>(); }
TEST(KernelDequant, SimdEqualsScalarEqualsFormulaDouble) { check_dequant_columns<double>(); }

// ---- Rounding helpers
// --------------------------------------------------------------------------------

/// Values for the rounding helpers: every tie k + 0.5 and its neighbours for |k| <= 300, random
/// values, +-0, and values near the documented limits (|x| < 2^22 (float) / 2^51 (double) for
/// the magic-number ties-to-even; |x| < 2^31 for ties-away's int32 truncation).
template <class T>
std::vector<T> rounding_values(T limit) {
  std::vector<T> v = {T(0), -T(0), T(0.5), -T(0.5), T(1.5), -T(1.5), T(0.49999997), -T(0.49999997)};
  for (int k = -300; k <= 300; ++k) {
    const T tie = static_cast<T>(k) + T(0.5);
    v.push_back(tie);
    v.push_back(std::nextafter(tie, T(1e9)));
    v.push_back(std::nextafter(tie, T(-1e9)));
    v.push_back(static_cast<T>(k));
  }
  std::mt19937 gen(3);
  for (int i = 0; i < 4000; ++i) {
    const double u = static_cast<double>(gen()) / 4294967296.0 * 2.0 - 1.0;
    v.push_back(static_cast<T>(u * 600.0));
    v.push_back(static_cast<T>(u * static_cast<double>(limit)));
  }
  for (T big : {limit - T(0.5), limit - T(1), limit - T(1.5), limit / 2 + T(0.5)}) {
    v.push_back(big);
    v.push_back(-big);
  }
  return v;
}

template <class T>
void check_rounding_helpers(T even_limit, T away_limit) {
  using V = int4q::detail::vec_ops<T>;
  constexpr std::size_t W = V::width;
  for (int which = 0; which < 2; ++which) {
    auto values = rounding_values<T>(which == 0 ? even_limit : away_limit);
    while (values.size() % W) values.push_back(T(0.5));
    for (std::size_t i = 0; i < values.size(); i += W) {
      alignas(64) T out[W];
      const auto x = V::load(values.data() + i);
      V::store(out, which == 0 ? V::round_half_even(x) : V::round_half_away(x));
      for (std::size_t l = 0; l < W; ++l) {
        const T v = values[i + l];
        const T scalar = which == 0 ? int4q::detail::round_half_even_scalar(v)
                                    : int4q::detail::round_half_away_scalar(v);
        const T ref = which == 0 ? int4q_ref::round_half_even(v) : int4q_ref::round_half_away(v);
        // == : the SIMD ties-to-even returns +0 where nearbyint returns -0 (e.g. -0.3);
        // codes are integers, so the sign of a zero never matters.
        ASSERT_EQ(out[l], scalar) << (which ? "half_away" : "half_even") << " x=" << v
                                  << " type=" << int4q_test::type_name<T>();
        ASSERT_EQ(scalar, ref) << (which ? "half_away" : "half_even") << " x=" << v;
      }
    }
  }
}

TEST(KernelRounding, VectorHelpersEqualScalarFloat) {
  check_rounding_helpers<float>(std::ldexp(1.0f, 22), std::ldexp(1.0f, 30));
}
TEST(KernelRounding, VectorHelpersEqualScalarDouble) {
  check_rounding_helpers<double>(std::ldexp(1.0, 51), std::ldexp(1.0, 30));
}

TEST(KernelRounding, HandComputedTies) {
  using V = int4q::detail::vec_ops<float>;
  constexpr std::size_t W = V::width;
  const float xs[] = {0.5f, 1.5f, 2.5f, -0.5f, -1.5f, -2.5f, 255.5f, -255.5f};
  const float even[] = {0, 2, 2, 0, -2, -2, 256, -256};
  const float away[] = {1, 2, 3, -1, -2, -3, 256, -256};
  for (std::size_t i = 0; i < 8; ++i) {
    alignas(64) float in[W], out_e[W], out_a[W];
    for (std::size_t l = 0; l < W; ++l) in[l] = xs[i];
    V::store(out_e, V::round_half_even(V::load(in)));
    V::store(out_a, V::round_half_away(V::load(in)));
    for (std::size_t l = 0; l < W; ++l) {
      EXPECT_EQ(out_e[l], even[i]) << xs[i];
      EXPECT_EQ(out_a[l], away[i]) << xs[i];
    }
  }
}

}  // namespace
