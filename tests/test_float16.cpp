// fp16 and bf16 conversions of float16.hpp against independent references: brute force over all
// 16-bit patterns (decoded in double from the format definitions, nearest value, ties to the
// even pattern) for a sample of floats with every boundary, and a formula reference
// (tests/reference.hpp) for a large strided sweep of all float bit patterns.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <int4q/quant.hpp>  // the only header of the single-include build

#include "reference.hpp"
#include "test_util.hpp"

namespace {

float float_of_bits(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
std::uint32_t bits_of_float(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

/// A 16-bit float format: `exp_bits` exponent bits, `man_bits` mantissa bits, IEEE semantics.
struct format16 {
  int exp_bits;
  int man_bits;
  const char* name;
  int bias() const { return (1 << (exp_bits - 1)) - 1; }
  int exp_all_ones() const { return (1 << exp_bits) - 1; }
  /// Value of a bit pattern, from the definition: subnormal m * 2^(1 - bias - man_bits),
  /// normal (1 + m / 2^man_bits) * 2^(e - bias), Inf, NaN.
  double decode(std::uint16_t h) const {
    const bool neg = (h >> 15) & 1;
    const int e = (h >> man_bits) & exp_all_ones();
    const int m = h & ((1 << man_bits) - 1);
    double v;
    if (e == exp_all_ones()) {
      v = m ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
    } else if (e == 0) {
      v = std::ldexp(static_cast<double>(m), 1 - bias() - man_bits);
    } else {
      v = std::ldexp(1.0 + std::ldexp(static_cast<double>(m), -man_bits), e - bias());
    }
    return neg ? -v : v;
  }
  bool is_nan(std::uint16_t h) const {
    return ((h >> man_bits) & exp_all_ones()) == exp_all_ones() && (h & ((1 << man_bits) - 1));
  }
  std::uint16_t inf_bits() const { return static_cast<std::uint16_t>(exp_all_ones() << man_bits); }
  /// Nearest pattern to f by exhaustive search over all finite magnitudes; an exact tie picks
  /// the even pattern; beyond the largest finite value by half an ulp or more: Inf.
  std::uint16_t brute_nearest(float f) const {
    static thread_local std::vector<double> values;  // decode() of every magnitude, per format
    static thread_local const format16* cached = nullptr;
    if (cached != this) {
      values.clear();
      for (std::uint32_t h = 0; h < inf_bits(); ++h)
        values.push_back(decode(static_cast<std::uint16_t>(h)));
      cached = this;
    }
    const std::uint16_t sign = std::signbit(f) ? 0x8000 : 0;
    if (std::isnan(f)) return 0xFFFF;  // any NaN; callers check is_nan
    const double a = std::abs(static_cast<double>(f));
    const std::uint16_t max_finite = static_cast<std::uint16_t>(inf_bits() - 1);
    const double max_v = decode(max_finite);
    const double overflow = max_v + std::ldexp(1.0, exp_all_ones() - 1 - bias() - man_bits - 1);
    if (a >= overflow) return static_cast<std::uint16_t>(sign | inf_bits());
    std::uint16_t best = 0;
    double best_d = std::numeric_limits<double>::infinity();
    for (std::uint32_t h = 0; h <= max_finite; ++h) {
      const double d = std::abs(a - values[h]);  // exact where it matters (close values)
      if (d < best_d || (d == best_d && (h & 1u) == 0)) {
        best_d = d;
        best = static_cast<std::uint16_t>(h);
      }
    }
    return static_cast<std::uint16_t>(sign | best);
  }
};

const format16 kHalf{5, 10, "fp16"};
const format16 kBf16{8, 7, "bf16"};

/// Floats around every boundary of a format plus random ones.
std::vector<float> sample_floats(const format16& fmt) {
  std::vector<float> v = {0.0f,
                          -0.0f,
                          1.0f,
                          -1.0f,
                          std::numeric_limits<float>::max(),
                          -std::numeric_limits<float>::max(),
                          std::numeric_limits<float>::min(),
                          std::numeric_limits<float>::denorm_min(),
                          -std::numeric_limits<float>::denorm_min(),
                          std::numeric_limits<float>::infinity(),
                          -std::numeric_limits<float>::infinity(),
                          65504.0f,
                          65519.99f,
                          65520.0f,
                          -65520.0f,
                          65536.0f,
                          std::ldexp(1.0f, -24),
                          std::ldexp(1.0f, -25),
                          std::ldexp(3.0f, -26),
                          std::ldexp(1.0f, -14),
                          std::ldexp(1023.5f, -24),
                          std::ldexp(1.0f, -126),
                          std::ldexp(1.0f, -133),
                          std::ldexp(1.0f, -134),
                          0.1f,
                          1.0f / 3.0f};
  // Every pattern's value, the midpoints to its neighbours and the floats just beside them, for
  // every 97th pattern of the format (every exponent is visited).
  for (std::uint32_t h = 0; h + 1 < fmt.inf_bits(); h += 97) {
    const double a = fmt.decode(static_cast<std::uint16_t>(h));
    const double b = fmt.decode(static_cast<std::uint16_t>(h + 1));
    const float mid = static_cast<float>((a + b) / 2);  // exact: a few more bits than the format
    for (float x : {static_cast<float>(a), mid, std::nextafter(mid, 0.0f),
                    std::nextafter(mid, std::numeric_limits<float>::infinity())}) {
      v.push_back(x);
      v.push_back(-x);
    }
  }
  std::mt19937 gen(11);
  for (int i = 0; i < 200; ++i) v.push_back(float_of_bits(gen()));
  return v;
}

// ---- fp16
// -----------------------------------------------------------------------------------------

TEST(Float16, ToHalfMatchesBruteForceNearestEven) {
  for (float f : sample_floats(kHalf)) {
    const std::uint16_t got = int4q::float_to_half_bits(f);
    if (std::isnan(f)) {
      EXPECT_TRUE(kHalf.is_nan(got)) << "NaN -> 0x" << std::hex << got;
      continue;
    }
    ASSERT_EQ(got, kHalf.brute_nearest(f))
        << "f=" << f << " (0x" << std::hex << bits_of_float(f) << ")";
  }
}

TEST(Float16, HandComputedBoundaries) {
  struct c {
    float f;
    std::uint16_t h;
  };
  const c cases[] = {
      {0.0f, 0x0000},
      {-0.0f, 0x8000},
      {1.0f, 0x3C00},                               // exponent 15, mantissa 0
      {65504.0f, 0x7BFF},                           // largest finite
      {65519.99f, 0x7BFF},                          // below the overflow midpoint
      {65520.0f, 0x7C00},                           // midpoint to 2^16: ties to even -> Inf
      {-65520.0f, 0xFC00},                          //
      {std::ldexp(1.0f, -24), 0x0001},              // smallest subnormal
      {std::ldexp(1.0f, -25), 0x0000},              // tie between 0 and 2^-24 -> 0 (even)
      {std::ldexp(3.0f, -26), 0x0001},              // 0.75 * 2^-24 -> 2^-24
      {std::ldexp(3.0f, -25), 0x0002},              // 1.5 * 2^-24: tie between 1 and 2 -> 2 (even)
      {std::ldexp(1023.0f, -24), 0x03FF},           // largest subnormal
      {std::ldexp(1023.5f, -24), 0x0400},           // tie -> smallest normal (even)
      {std::ldexp(1.0f, -14), 0x0400},              // smallest normal
      {1.0f + std::ldexp(1.0f, -11), 0x3C00},       // tie -> even mantissa 0
      {1.0f + std::ldexp(3.0f, -11), 0x3C02},       // tie -> even mantissa 2
      {std::numeric_limits<float>::max(), 0x7C00},  // overflow
      {std::numeric_limits<float>::infinity(), 0x7C00},
      {-std::numeric_limits<float>::infinity(), 0xFC00},
      {std::numeric_limits<float>::denorm_min(), 0x0000},
      {-std::numeric_limits<float>::denorm_min(), 0x8000},
  };
  for (const c& x : cases) {
    EXPECT_EQ(int4q::float_to_half_bits(x.f), x.h) << "f=" << x.f;
    EXPECT_EQ(int4q::float16_t(x.f).bits, x.h) << "f=" << x.f;
  }
  for (float nan :
       {std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::quiet_NaN(),
        std::numeric_limits<float>::signaling_NaN(), float_of_bits(0x7F800001u)}) {
    const std::uint16_t h = int4q::float_to_half_bits(nan);
    EXPECT_TRUE(kHalf.is_nan(h)) << std::hex << h;
    EXPECT_EQ(h >> 15, bits_of_float(nan) >> 31) << "sign of NaN kept";
  }
}

TEST(Float16, StridedSweepOfAllFloatsMatchesFormulaReference) {
  // Every 1999th float bit pattern (about 2.1 million), against round_to_half (reference.hpp),
  // which the brute-force test above validates independently of the library.
  for (std::uint64_t u = 0; u < (1ull << 32); u += 1999) {
    const float f = float_of_bits(static_cast<std::uint32_t>(u));
    if (std::isnan(f)) continue;
    const float want = static_cast<float>(int4q_ref::round_to_half(f));
    const float got = int4q::half_bits_to_float(int4q::float_to_half_bits(f));
    ASSERT_EQ(bits_of_float(got), bits_of_float(want))
        << "f=" << f << " (0x" << std::hex << u << ")";
  }
}

TEST(Float16, AllPatternsDecodeExactlyAndRoundTrip) {
  for (std::uint32_t h = 0; h < 65536; ++h) {
    const auto b = static_cast<std::uint16_t>(h);
    const float f = int4q::half_bits_to_float(b);
    const double want = kHalf.decode(b);
    if (kHalf.is_nan(b)) {
      ASSERT_TRUE(std::isnan(f)) << std::hex << h;
      const std::uint16_t back = int4q::float_to_half_bits(f);
      ASSERT_TRUE(kHalf.is_nan(back)) << std::hex << h << " -> " << back;
      ASSERT_EQ(back & 0x8000u, h & 0x8000u) << std::hex << h;
      continue;
    }
    ASSERT_EQ(static_cast<double>(f), want) << std::hex << h;
    ASSERT_EQ(std::signbit(f), (h & 0x8000u) != 0) << std::hex << h;
    ASSERT_EQ(int4q::float_to_half_bits(f), b) << std::hex << h;
    ASSERT_EQ(static_cast<float>(int4q::float16_t::from_bits(b)), f) << std::hex << h;
  }
}

// ---- bf16
// -------------------------------------------------------------------------------------------

TEST(Bfloat16, ToBfloat16MatchesBruteForceNearestEven) {
  for (float f : sample_floats(kBf16)) {
    const std::uint16_t got = int4q::float_to_bfloat16_bits(f);
    if (std::isnan(f)) {
      EXPECT_TRUE(kBf16.is_nan(got)) << "NaN -> 0x" << std::hex << got;
      continue;
    }
    ASSERT_EQ(got, kBf16.brute_nearest(f))
        << "f=" << f << " (0x" << std::hex << bits_of_float(f) << ")";
  }
}

TEST(Bfloat16, HandComputedBoundaries) {
  struct c {
    float f;
    std::uint16_t b;
  };
  const c cases[] = {
      {0.0f, 0x0000},
      {-0.0f, 0x8000},
      {1.0f, 0x3F80},
      {1.0f + std::ldexp(1.0f, -8), 0x3F80},                          // tie -> even mantissa 0
      {1.0f + std::ldexp(3.0f, -8), 0x3F82},                          // tie -> even mantissa 2
      {1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20), 0x3F81},  // above the tie
      {std::numeric_limits<float>::max(), 0x7F80},  // above (2 - 2^-8) * 2^127: Inf
      {float_of_bits(0x7F7F7FFFu), 0x7F7F},         // just below that midpoint
      {float_of_bits(0x7F7F8000u), 0x7F80},         // the midpoint: ties to even -> Inf
      {std::numeric_limits<float>::infinity(), 0x7F80},
      {-std::numeric_limits<float>::infinity(), 0xFF80},
      {std::numeric_limits<float>::denorm_min(), 0x0000},  // 2^-149: far below half 2^-133
      {float_of_bits(0x00008000u), 0x0000},                // 2^-134: tie -> 0
      {float_of_bits(0x00018000u), 0x0002},                // 3 * 2^-134: tie -> 2 (even)
      {float_of_bits(0x00010000u), 0x0001},                // smallest bf16 subnormal 2^-133
  };
  for (const c& x : cases) {
    EXPECT_EQ(int4q::float_to_bfloat16_bits(x.f), x.b) << "f=" << x.f;
    EXPECT_EQ(int4q::bfloat16_t(x.f).bits, x.b) << "f=" << x.f;
  }
  for (float nan :
       {std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::quiet_NaN(),
        float_of_bits(0x7F800001u), float_of_bits(0xFF800001u)}) {
    const std::uint16_t b = int4q::float_to_bfloat16_bits(nan);
    EXPECT_TRUE(kBf16.is_nan(b)) << std::hex << b;  // truncation alone would give Inf for these
    EXPECT_EQ(b >> 15, bits_of_float(nan) >> 31) << "sign of NaN kept";
  }
}

TEST(Bfloat16, StridedSweepOfAllFloatsMatchesFormulaReference) {
  for (std::uint64_t u = 0; u < (1ull << 32); u += 1999) {
    const float f = float_of_bits(static_cast<std::uint32_t>(u));
    if (std::isnan(f)) continue;
    const float want = static_cast<float>(int4q_ref::round_to_bfloat16(f));
    const float got = int4q::bfloat16_bits_to_float(int4q::float_to_bfloat16_bits(f));
    ASSERT_EQ(bits_of_float(got), bits_of_float(want))
        << "f=" << f << " (0x" << std::hex << u << ")";
  }
}

TEST(Bfloat16, AllPatternsDecodeExactlyAndRoundTrip) {
  for (std::uint32_t h = 0; h < 65536; ++h) {
    const auto b = static_cast<std::uint16_t>(h);
    const float f = int4q::bfloat16_bits_to_float(b);
    if (kBf16.is_nan(b)) {
      ASSERT_TRUE(std::isnan(f)) << std::hex << h;
      const std::uint16_t back = int4q::float_to_bfloat16_bits(f);
      ASSERT_TRUE(kBf16.is_nan(back)) << std::hex << h << " -> " << back;
      ASSERT_EQ(back & 0x8000u, h & 0x8000u) << std::hex << h;
      continue;
    }
    ASSERT_EQ(static_cast<double>(f), kBf16.decode(b)) << std::hex << h;
    ASSERT_EQ(std::signbit(f), (h & 0x8000u) != 0) << std::hex << h;
    ASSERT_EQ(int4q::float_to_bfloat16_bits(f), b) << std::hex << h;
    ASSERT_EQ(static_cast<float>(int4q::bfloat16_t::from_bits(b)), f) << std::hex << h;
  }
}

TEST(Float16Reference, FormulaReferenceAgreesWithBruteForce) {
  // The formula references used by other tests (round_to_half / round_to_bfloat16) agree with
  // the brute force on the boundary sample, so they are trustworthy where brute force is slow.
  for (const format16* fmt : {&kHalf, &kBf16}) {
    for (float f : sample_floats(*fmt)) {
      if (std::isnan(f)) continue;
      const double r =
          fmt == &kHalf ? int4q_ref::round_to_half(f) : int4q_ref::round_to_bfloat16(f);
      const double b = fmt->decode(fmt->brute_nearest(f));
      ASSERT_EQ(r, b) << fmt->name << " f=" << f;
      ASSERT_EQ(std::signbit(r), std::signbit(b)) << fmt->name << " f=" << f;
    }
  }
}

}  // namespace
