// quant_tensor / quant_weight_w_scale against the scalar reference of tests/reference.hpp
// (codes, scales and zero points bit for bit), exact invariants, edge groups, errors, inputs
// of every element type and layout, thread determinism.
#include <gtest/gtest.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <xtensor/xmanipulation.hpp>
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
/// Group sizes of the sweeps; 0 stands for per-channel.
const std::vector<std::size_t> kGroups = {1, 3, 32, 128, 0};

struct mode {
  rounding r;
  zero_point_rounding z;
  scale_division d;
};
std::vector<mode> all_modes() {
  std::vector<mode> m;
  for (rounding r : {rounding::half_to_even, rounding::half_away_from_zero})
    for (zero_point_rounding z :
         {zero_point_rounding::after_rounding, zero_point_rounding::before_rounding})
      for (scale_division d : {scale_division::divide, scale_division::multiply_reciprocal})
        m.push_back({r, z, d});
  return m;
}

quant_config make_config(int bits, scheme s, mode m, std::size_t group) {
  quant_config c;
  c.bits = bits;
  c.scheme = s;
  c.rounding = m.r;
  c.zero_point_rounding = m.z;
  c.scale_division = m.d;
  if (group == 0) {
    c.granularity = grouping::per_channel;
  } else {
    c.group_size = group;
  }
  return c;
}

template <class T>
std::string context(const quant_config& c, const std::string& data, std::uint32_t seed,
                    std::size_t K, std::size_t N) {
  return describe(c) + " zero_range=" + std::to_string(static_cast<int>(c.zero_range)) +
         " includes_zero=" + std::to_string(c.range_includes_zero) +
         " min_range=" + std::to_string(c.min_range) + " type=" + int4q_test::type_name<T>() +
         " data=" + data + " seed=" + std::to_string(seed) + " K=" + std::to_string(K) +
         " N=" + std::to_string(N);
}

/// quant_tensor(w, c) equals the reference bit for bit (scales, zero points, codes).
template <class T>
::testing::AssertionResult matches_reference(const xt::xtensor<T, 2>& w, const quant_config& c,
                                             const std::string& where) {
  const auto q = int4q::quant_tensor(w, c);
  const auto r = int4q_ref::quantize(w, c);
  auto a = all_equal(r.scales, q.scales, where + " [scales]");
  if (!a) return a;
  a = all_equal(r.zero_points, q.zero_points, where + " [zero_points]");
  if (!a) return a;
  return all_equal(r.codes, q.codes, where + " [codes]");
}

/// Codes within [0, 2^bits - 1]; the restricted symmetric grid (clip ratio 1) never uses code 0
/// (its signed range is [-(2^(b-1) - 1), 2^(b-1) - 1]); fp4 never produces -0 (code 8).
template <class T>
::testing::AssertionResult codes_in_range(const int4q::quantized<T>& q, const std::string& where) {
  const quant_config& c = q.config;
  for (std::size_t i = 0; i < q.codes.size(); ++i) {
    const int code = q.codes.data()[i];
    const bool bad = code > c.qmax() ||
                     (c.data_type == data_type::integer && c.scheme == scheme::symmetric &&
                      c.clip_ratio == 1.0 && code == 0) ||
                     (c.data_type == data_type::fp4 && code == 8);
    if (bad) {
      return ::testing::AssertionFailure()
             << where << ": code " << code << " at [" << i / q.cols() << ", " << i % q.cols()
             << "] is outside the grid's range";
    }
  }
  return ::testing::AssertionSuccess();
}

template <class T>
T ulp_of(T x) {
  x = std::abs(x);
  return std::nextafter(x, std::numeric_limits<T>::infinity()) - x;
}

// ---- Bit-exact against the reference: every mode ------------------------------------------------

class ModeSweep : public ::testing::TestWithParam<std::tuple<int, scheme>> {};

template <class T>
void sweep_modes(int bits, scheme s) {
  // K = 37: not a multiple of 3 or 32, smaller than 128; N = 19: not a multiple of any SIMD width.
  const std::size_t K = 37, N = 19;
  std::size_t run = 0;
  for (dist d : kDists) {
    const std::uint32_t seed = int4q_test::seeds()[(static_cast<int>(d) + bits) % 5];
    const xt::xtensor<T, 2> w = random_weight<T>(K, N, d, seed);
    for (const mode& m : all_modes()) {
      for (std::size_t g : kGroups) {
        const quant_config c = make_config(bits, s, m, g);
        const std::string where = context<T>(c, int4q_test::to_string(d), seed, K, N);
        ASSERT_TRUE(matches_reference(w, c, where));
        ASSERT_TRUE(codes_in_range(int4q::quant_tensor(w, c), where));
        ++run;
      }
    }
  }
  EXPECT_EQ(run, kDists.size() * 8 * kGroups.size());
}

TEST_P(ModeSweep, MatchesReferenceFloatAndDouble) {
  const int bits = std::get<0>(GetParam());
  const scheme s = std::get<1>(GetParam());
  sweep_modes<float>(bits, s);
  sweep_modes<double>(bits, s);
}

INSTANTIATE_TEST_SUITE_P(QuantizeVsReference, ModeSweep,
                         ::testing::Combine(::testing::Range(2, 9), ::testing::ValuesIn(kSchemes)));

// ---- Bit-exact against the reference: options and edge groups -----------------------------------

/// K rows of 16 kinds of columns (all zero, constant, outlier, +-0, ties, ...), repeating with
/// period 16 so that with N = 21 the first kinds fall both in SIMD lanes and in the scalar tail.
template <class T>
xt::xtensor<T, 2> edge_weight(std::size_t K, std::size_t N, std::uint32_t seed) {
  const auto normal = random_weight<T>(K, N, dist::normal, seed);
  const auto ints = random_weight<T>(K, N, dist::small_ints, seed + 1);
  const auto grid = random_weight<T>(K, N, dist::fp16_grid, seed + 2);
  const auto pos = random_weight<T>(K, N, dist::positive, seed + 3);
  auto w = xt::xtensor<T, 2>::from_shape({K, N});
  for (std::size_t k = 0; k < K; ++k) {
    for (std::size_t n = 0; n < N; ++n) {
      T v = 0;
      switch (n % 16) {
        case 0: v = 0; break;         // all zero
        case 1: v = T(0.75); break;   // constant positive
        case 2: v = T(-1.25); break;  // constant negative
        case 3: v = k == K / 2 ? T(100) * normal(k, n) + T(3) : normal(k, n); break;  // outlier
        case 4: v = pos(k, n); break;                      // no negative value
        case 5: v = -pos(k, n); break;                     // no positive value
        case 6: v = ints(k, n); break;                     // exact ties
        case 7: v = grid(k, n); break;                     // fp16 values
        case 8: v = normal(k, n) * T(1e-4); break;         // tiny
        case 9: v = (k % 2) ? T(0) : -T(0); break;         // +0 and -0
        case 10: v = -T(0); break;                         // all -0
        case 11: v = (k == K - 1) ? T(0.5) : T(0); break;  // one value in ragged tail
        case 12: v = (k % 3 == 0) ? T(2) : ((k % 3 == 1) ? T(-2) : T(1)); break;  // |lo| == hi
        case 13: v = T(1000) * normal(k, n); break;                               // large
        case 14: v = (k % 2) ? T(3) : T(5); break;            // positive, raw range
        default: v = T(0.25) * ints(k, n) + T(0.125); break;  // ties off zero
      }
      w(k, n) = v;
    }
  }
  return w;
}

template <class T>
void sweep_options() {
  const std::size_t K = 40, N = 21;  // groups of 16: two whole and one ragged group of 8
  const std::uint32_t seed = 42;
  const xt::xtensor<T, 2> w = edge_weight<T>(K, N, seed);
  const std::vector<mode> modes = {
      {rounding::half_to_even, zero_point_rounding::after_rounding, scale_division::divide},
      {rounding::half_away_from_zero, zero_point_rounding::before_rounding,
       scale_division::multiply_reciprocal}};
  for (int bits : {2, 4, 8})
    for (int kind = 0; kind < 6; ++kind)  // 4 integer schemes, then nf4 and fp4
      for (scale_type st : {scale_type::native, scale_type::float16, scale_type::bfloat16})
        for (zero_range_policy zr : {zero_range_policy::unit_scale, zero_range_policy::zero_scale,
                                     zero_range_policy::unit_range})
          for (bool includes_zero : {true, false})
            for (double min_range : {0.0, 1e-5, 0.5})
              for (double clip : {1.0, 0.9, 0.37})
                for (const mode& m : modes) {
                  if (kind >= 4 && bits != 4) continue;
                  quant_config c =
                      make_config(bits, kind < 4 ? kSchemes[kind] : scheme::asymmetric, m, 16);
                  if (kind == 4) c.data_type = data_type::nf4;
                  if (kind == 5) c.data_type = data_type::fp4;
                  c.scale_type = st;
                  c.zero_range = zr;
                  c.range_includes_zero = includes_zero;
                  c.min_range = min_range;
                  c.clip_ratio = clip;
                  const std::string where = context<T>(c, "edge_weight", seed, K, N);
                  ASSERT_TRUE(matches_reference(w, c, where));
                  ASSERT_TRUE(codes_in_range(int4q::quant_tensor(w, c), where));
                }
}

TEST(QuantizeVsReference, OptionsAndEdgeGroupsFloat) { sweep_options<float>(); }
TEST(QuantizeVsReference, OptionsAndEdgeGroupsDouble) { sweep_options<double>(); }

TEST(QuantizeVsReference, ShapesAndTails) {
  // K around group boundaries and smaller than the group; N around SIMD widths and across the
  // 256-column tile (N = 300, 513).
  const std::vector<std::size_t> Ks = {1, 2, 31, 32, 33, 64, 127, 129, 300};
  const std::vector<std::size_t> Ns = {1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 33, 63, 65, 70};
  const std::vector<quant_config> configs = {
      make_config(
          4, scheme::asymmetric,
          {rounding::half_to_even, zero_point_rounding::after_rounding, scale_division::divide},
          32),
      make_config(3, scheme::symmetric_full_range,
                  {rounding::half_away_from_zero, zero_point_rounding::before_rounding,
                   scale_division::multiply_reciprocal},
                  128),
      make_config(8, scheme::symmetric,
                  {rounding::half_to_even, zero_point_rounding::after_rounding,
                   scale_division::multiply_reciprocal},
                  0)};
  for (const quant_config& c : configs) {
    for (std::size_t K : Ks) {
      for (std::size_t N : Ns) {
        const std::uint32_t seed = static_cast<std::uint32_t>(K * 1000 + N);
        const auto w = random_weight<float>(K, N, dist::fp16_grid, seed);
        ASSERT_TRUE(matches_reference(w, c, context<float>(c, "fp16_grid", seed, K, N)));
      }
    }
    for (std::size_t N : {256, 257, 300, 513}) {
      const std::uint32_t seed = static_cast<std::uint32_t>(N);
      const auto w = random_weight<float>(33, N, dist::small_ints, seed);
      ASSERT_TRUE(matches_reference(w, c, context<float>(c, "small_ints", seed, 33, N)));
      const auto wd = random_weight<double>(33, N, dist::outliers, seed);
      ASSERT_TRUE(matches_reference(wd, c, context<double>(c, "outliers", seed, 33, N)));
    }
  }
}

TEST(QuantizeVsReference, EmptyWeights) {
  for (std::size_t g : {std::size_t(4), std::size_t(0)}) {
    quant_config c = make_config(4, scheme::asymmetric, all_modes()[0], g);
    for (auto shape : {std::vector<std::size_t>{0, 5}, std::vector<std::size_t>{7, 0},
                       std::vector<std::size_t>{0, 0}}) {
      const xt::xtensor<float, 2> w = xt::zeros<float>({shape[0], shape[1]});
      const auto q = int4q::quant_tensor(w, c);
      EXPECT_EQ(q.codes.shape()[0], shape[0]);
      EXPECT_EQ(q.codes.shape()[1], shape[1]);
      EXPECT_EQ(q.scales.shape()[0], c.num_groups(shape[0]));
      EXPECT_EQ(q.scales.shape()[1], shape[1]);
      EXPECT_EQ(int4q::dequant(q).size(), 0u);
    }
  }
}

// ---- Hand-computed cases ------------------------------------------------------------------------

struct hand_case {
  const char* what;
  quant_config config;
  std::vector<float> w;  // one group: a column of w.size() rows
  float scale;
  int zero_point;
  std::vector<int> codes;
};

quant_config hand_config(scheme s, rounding r, zero_point_rounding z) {
  quant_config c;
  c.bits = 4;
  c.group_size = 8;
  c.scheme = s;
  c.rounding = r;
  c.zero_point_rounding = z;
  return c;
}

TEST(QuantizeHandComputed, SmallGroups) {
  const auto even = rounding::half_to_even;
  const auto away = rounding::half_away_from_zero;
  const auto after = zero_point_rounding::after_rounding;
  const auto before = zero_point_rounding::before_rounding;
  const std::vector<hand_case> cases = {
      // asym: lo -2, hi 13, scale 15/15 = 1, zp = round(2) = 2; codes w + 2 (13 -> 15)
      {"asym exact",
       hand_config(scheme::asymmetric, even, after),
       {-2, 0, 5, 13},
       1,
       2,
       {0, 2, 7, 15}},
      // ties 0.5 / -0.5 with zp 2: after+even: 0+2, -0+2; after+away: 1+2, -1+2;
      // before+even: round(2.5) = 2, round(1.5) = 2; before+away: round(2.5) = 3, round(1.5) = 2
      {"asym ties after even",
       hand_config(scheme::asymmetric, even, after),
       {-2, 13, 0.5, -0.5},
       1,
       2,
       {0, 15, 2, 2}},
      {"asym ties after away",
       hand_config(scheme::asymmetric, away, after),
       {-2, 13, 0.5, -0.5},
       1,
       2,
       {0, 15, 3, 1}},
      {"asym ties before even",
       hand_config(scheme::asymmetric, even, before),
       {-2, 13, 0.5, -0.5},
       1,
       2,
       {0, 15, 2, 2}},
      {"asym ties before away",
       hand_config(scheme::asymmetric, away, before),
       {-2, 13, 0.5, -0.5},
       1,
       2,
       {0, 15, 3, 2}},
      // asym, all positive: range widened to [0, 7.5], scale 0.5, zp 0; 1.25 / 0.5 = 2.5
      {"asym positive",
       hand_config(scheme::asymmetric, even, after),
       {7.5, 1.25, 1.75, 3},
       0.5,
       0,
       {15, 2, 4, 6}},
      // sym: amax 7, scale 7 / 7 = 1, zp 8; 3.5 -> 4 either way; 2.5 -> 2 (even) / 3 (away)
      {"sym even",
       hand_config(scheme::symmetric, even, after),
       {-7, 3.5, 0, 2.5},
       1,
       8,
       {1, 12, 8, 10}},
      {"sym away",
       hand_config(scheme::symmetric, away, after),
       {-7, 3.5, 0, 2.5},
       1,
       8,
       {1, 12, 8, 11}},
      // full range: |lo| 8 > |hi| 7, extreme -8, scale = -(-8) / 8 = 1; 7 -> 15
      {"full range negative extreme",
       hand_config(scheme::symmetric_full_range, even, after),
       {-8, 4, 0, 7},
       1,
       8,
       {0, 12, 8, 15}},
      // full range: |hi| 8 > |lo| 7, extreme +8, scale -8 / 8 = -1: 8 -> t -8 -> code 0,
      // -4 -> t 4 -> 12, 1 -> t -1 -> 7, -7 -> t 7 -> 15
      {"full range positive extreme",
       hand_config(scheme::symmetric_full_range, even, after),
       {8, -4, 1, -7},
       -1,
       8,
       {0, 12, 7, 15}},
      // full range tie |lo| == |hi|: the extreme is lo = -4, scale 0.5: 4 / 0.5 = 8 -> clamps 15
      {"full range tie picks lo",
       hand_config(scheme::symmetric_full_range, even, after),
       {4, -4, 1, 0},
       0.5,
       8,
       {15, 0, 10, 8}},
      // offset: amax 7.5, range [-7.5, 7.5], scale 15 / 15 = 1, zp 8; 7.5 -> 7.5 clamps to 7
      {"sym offset",
       hand_config(scheme::symmetric_offset, even, after),
       {-3.75, 7.5, 0, 1.5},
       1,
       8,
       {4, 15, 8, 10}},
      // offset without a negative value: range [0, 15], scale 1, zp 8: 15 clamps to 7 (GPTQ)
      {"sym offset positive",
       hand_config(scheme::symmetric_offset, even, after),
       {15, 3, 0, 7},
       1,
       8,
       {15, 11, 8, 15}},
  };
  for (const hand_case& h : cases) {
    SCOPED_TRACE(h.what);
    xt::xtensor<float, 2> w = xt::xtensor<float, 2>::from_shape({h.w.size(), 1});
    for (std::size_t i = 0; i < h.w.size(); ++i) w(i, 0) = h.w[i];
    const auto q = int4q::quant_tensor(w, h.config);
    EXPECT_EQ(q.scales(0, 0), h.scale);
    EXPECT_EQ(q.zero_points(0, 0), h.zero_point);
    for (std::size_t i = 0; i < h.codes.size(); ++i) EXPECT_EQ(q.codes(i, 0), h.codes[i]) << i;
  }
}

TEST(QuantizeHandComputed, RoundingOfScaleDivision) {
  // w = 0.3, scale = 0.6 / 1 (bits 2 symmetric: amax 0.6 / (2 - 1)): 0.3f / 0.6f and
  // 0.3f * (1 / 0.6f) are both 0.5 or adjacent values; the codes differ from the reference
  // only if the library evaluates another expression than the configured one.
  for (scale_division d : {scale_division::divide, scale_division::multiply_reciprocal}) {
    for (std::uint32_t seed : int4q_test::seeds()) {
      quant_config c = make_config(2, scheme::symmetric, all_modes()[0], 4);
      c.scale_division = d;
      const auto w = random_weight<float>(64, 33, dist::uniform, seed);
      EXPECT_TRUE(matches_reference(w, c, context<float>(c, "uniform", seed, 64, 33)));
    }
  }
}

// ---- Exact invariants
// ------------------------------------------------------------------------------

/// Re-quantizing dequant(q) against q's own scales returns q's codes. This holds whenever the
/// scales are normal numbers: dequant is (code - zp) * s with one rounding (relative error
/// <= 2^-24), so dequant / s is within 2^-22 of the integer code - zp (or of the table entry,
/// whose neighbours are >= 0.08 apart), far from the rounding boundaries. It can fail only for
/// subnormal scales (w of magnitude < ~1e-37 in float) where the product loses its precision,
/// or for a reciprocal 1 / s that overflows; those are excluded by the data here.
template <class T>
void check_requantize() {
  const std::size_t K = 45, N = 23;
  for (int kind = 0; kind < 6; ++kind) {
    for (const mode& m : all_modes()) {
      for (int bits : {2, 4, 5, 8}) {
        if (kind >= 4 && bits != 4) continue;
        for (dist d : kDists) {
          for (std::size_t g : {std::size_t(1), std::size_t(16), std::size_t(0)}) {
            quant_config c =
                make_config(bits, kind < 4 ? kSchemes[kind] : scheme::asymmetric, m, g);
            if (kind == 4) c.data_type = data_type::nf4;
            if (kind == 5) c.data_type = data_type::fp4;
            c.clip_ratio = (bits == 5) ? 0.8 : 1.0;  // clipped values requantize too
            if (bits == 2) c.scale_type = scale_type::float16;
            const std::uint32_t seed = 7u * static_cast<std::uint32_t>(d) + bits;
            const auto w = random_weight<T>(K, N, d, seed);
            const auto q = int4q::quant_tensor(w, c);
            const auto dq = int4q::dequant(q);
            const auto q2 = int4q::quant_weight_w_scale(dq, q.scales, q.zero_points, c);
            const std::string where = context<T>(c, int4q_test::to_string(d), seed, K, N);
            ASSERT_TRUE(all_equal(q.codes, q2.codes, where + " [requantized codes]"));
          }
        }
      }
    }
  }
}

TEST(QuantizeInvariants, RequantizingDequantGivesSameCodesFloat) { check_requantize<float>(); }
TEST(QuantizeInvariants, RequantizingDequantGivesSameCodesDouble) { check_requantize<double>(); }

/// Lowest and highest value of the grid of one group ((0 - zp) * s and (qmax - zp) * s, ordered).
template <class T>
std::pair<T, T> grid_span(T s, int zp, int qmax) {
  const T a = static_cast<T>(0 - zp) * s, b = static_cast<T>(qmax - zp) * s;
  return {std::min(a, b), std::max(a, b)};
}

/// RTN error: |w - dequant(w)| <= |s| / 2 + slack for every w inside the grid's reach
/// [lowest - |s|/2, highest + |s|/2]. Slack: tol_rtn_half_step_slack_ulps ulps of the larger of
/// |w| and |dequant| (the roundings of w / s and of (code - zp) * s) plus one ulp of qmax times
/// |s| (before_rounding rounds t + zp in T first). Also checks, at clip ratio 1, that the grid
/// reaches the whole [min, max] of each group where the scheme promises it: asymmetric through
/// zero, symmetric; full range on the side of the extreme; symmetric_offset when the group has
/// a negative value (without one its grid stops at (2^(b-1) - 1) / (2^b - 1) * max: GPTQ's rule).
template <class T>
void check_half_step() {
  const std::size_t K = 50, N = 19, gs = 16;
  for (scheme s : kSchemes) {
    for (const mode& m : all_modes()) {
      for (int bits : {2, 3, 4, 8}) {
        for (double clip : {1.0, 0.85}) {
          for (dist d : kDists) {
            quant_config c = make_config(bits, s, m, gs);
            c.clip_ratio = clip;
            const std::uint32_t seed = 11u * static_cast<std::uint32_t>(d) + bits;
            const auto w = random_weight<T>(K, N, d, seed);
            const auto q = int4q::quant_tensor(w, c);
            const auto dq = int4q::dequant(q);
            const std::string where = context<T>(c, int4q_test::to_string(d), seed, K, N);
            for (std::size_t n = 0; n < N; ++n) {
              for (std::size_t g = 0; g < q.num_groups(); ++g) {
                const T sc = q.scales(g, n);
                const auto span = grid_span(sc, q.zero_points(g, n), c.qmax());
                const T half = std::abs(sc) / 2;
                const T slack_zp = ulp_of(static_cast<T>(c.qmax())) * std::abs(sc);
                T lo = w(g * gs, n), hi = lo;
                for (std::size_t k = g * gs; k < std::min(K, g * gs + gs); ++k) {
                  lo = std::min(lo, w(k, n));
                  hi = std::max(hi, w(k, n));
                  const T x = w(k, n), y = dq(k, n);
                  if (x < span.first - half || x > span.second + half) continue;
                  const T slack = static_cast<T>(int4q_test::tol_rtn_half_step_slack_ulps) *
                                      ulp_of(std::max(std::abs(x), std::abs(y))) +
                                  slack_zp;
                  ASSERT_LE(std::abs(x - y), half + slack)
                      << where << " at [" << k << ", " << n << "] w=" << x << " dequant=" << y
                      << " scale=" << sc << " slack=" << slack;
                }
                if (clip != 1.0) continue;
                const T tol = half + slack_zp +
                              static_cast<T>(int4q_test::tol_rtn_half_step_slack_ulps) *
                                  ulp_of(std::max(std::abs(lo), std::abs(hi)));
                bool lo_covered = true, hi_covered = true;
                if (s == scheme::symmetric_full_range) {
                  (std::abs(hi) > std::abs(lo) ? lo_covered : hi_covered) = false;
                }
                if (s == scheme::symmetric_offset && lo >= T(0)) hi_covered = false;
                if (lo_covered) {
                  ASSERT_GE(lo, span.first - tol) << where << " group " << g;
                }
                if (hi_covered) {
                  ASSERT_LE(hi, span.second + tol) << where << " group " << g;
                }
              }
            }
          }
        }
      }
    }
  }
}

TEST(QuantizeInvariants, ErrorWithinHalfStepFloat) { check_half_step<float>(); }
TEST(QuantizeInvariants, ErrorWithinHalfStepDouble) { check_half_step<double>(); }

// ---- Edge groups
// ------------------------------------------------------------------------------------

TEST(QuantizeEdge, AllZeroGroupEveryPolicy) {
  // Column 0 is zero in group 1 only (rows 4..7) and random elsewhere.
  auto w = random_weight<float>(10, 3, dist::normal, 5);
  for (std::size_t k = 4; k < 8; ++k) w(k, 0) = 0.0f;
  for (int kind = 0; kind < 6; ++kind) {
    for (zero_range_policy zr : {zero_range_policy::unit_scale, zero_range_policy::zero_scale,
                                 zero_range_policy::unit_range}) {
      for (int bits : {2, 4, 8}) {
        if (kind >= 4 && bits != 4) continue;
        quant_config c = make_config(bits, kind < 4 ? kSchemes[kind] : scheme::asymmetric,
                                     all_modes()[kind % 8], 4);
        if (kind == 4) c.data_type = data_type::nf4;
        if (kind == 5) c.data_type = data_type::fp4;
        c.zero_range = zr;
        SCOPED_TRACE(describe(c) + " policy " + std::to_string(static_cast<int>(zr)));
        const auto q = int4q::quant_tensor(w, c);
        const float s = q.scales(1, 0);
        const int zp = q.zero_points(1, 0);
        EXPECT_TRUE(std::isfinite(s));
        // The scale each policy documents (hand formulas: qmax = 2^b - 1, mid = 2^(b-1)).
        const float qmax = static_cast<float>(c.qmax()), mid = static_cast<float>(c.mid());
        float want = 1.0f;
        if (zr == zero_range_policy::zero_scale) want = 0.0f;
        if (zr == zero_range_policy::unit_range) {
          if (kind == 0 || kind == 3) want = 2.0f / qmax;  // [-1, 1]
          if (kind == 1) want = 1.0f / (mid - 1.0f);       // amax 1
          if (kind == 2) want = 1.0f / mid;                // extreme -1
          if (kind == 4) want = 1.0f;                      // nf4: amax 1
          if (kind == 5) want = 1.0f / 6.0f;               // fp4: amax / 6
        }
        EXPECT_EQ(s, want);
        const auto dq = int4q::dequant(q);
        for (std::size_t k = 4; k < 8; ++k) {
          EXPECT_EQ(dq(k, 0), 0.0f) << "row " << k;
          if (zr == zero_range_policy::zero_scale && kind < 4) {
            EXPECT_EQ(q.codes(k, 0), zp);
          }
        }
        if (kind == 0 && zr != zero_range_policy::unit_range) {
          EXPECT_EQ(zp, 0);
        }
        if (kind == 0 && zr == zero_range_policy::unit_range) {
          // zp = round(1 / (2 / qmax)) ~ qmax / 2 (the float quotient decides the tie)
          EXPECT_GE(zp, c.mid() - 1);
          EXPECT_LE(zp, c.mid());
        }
        EXPECT_TRUE(matches_reference(w, c, describe(c)));
      }
    }
  }
}

TEST(QuantizeEdge, ConstantGroups) {
  // Constant groups: range through zero makes them exact-ish (|c - dequant| <= half a step);
  // a raw range (range_includes_zero = false, min_range 0) is widened through zero as well
  // (group_params.hpp), so the constant is still represented.
  for (float value : {3.0f, -0.7f, 1e-3f, 250.0f}) {
    for (int kind = 0; kind < 6; ++kind) {
      for (bool includes_zero : {true, false}) {
        quant_config c =
            make_config(4, kind < 4 ? kSchemes[kind] : scheme::asymmetric, all_modes()[0], 8);
        if (kind == 4) c.data_type = data_type::nf4;
        if (kind == 5) c.data_type = data_type::fp4;
        c.range_includes_zero = includes_zero;
        SCOPED_TRACE(describe(c) + " value " + std::to_string(value) + " includes_zero " +
                     std::to_string(includes_zero));
        const xt::xtensor<float, 2> w = xt::ones<float>({12, 5}) * value;
        ASSERT_TRUE(matches_reference(w, c, describe(c)));
        const auto q = int4q::quant_tensor(w, c);
        const auto dq = int4q::dequant(q);
        for (std::size_t i = 0; i < w.size(); ++i) {
          const float s = std::abs(q.scales(i / 5 / 8, i % 5));
          if (kind == 3 && value > 0) {
            // symmetric_offset without negative values: grid tops out at 7 / 15 of the range
            EXPECT_FLOAT_EQ(dq.data()[i], 7.0f * s);
            continue;
          }
          EXPECT_LE(std::abs(dq.data()[i] - value), s / 2 + 4 * ulp_of(value)) << i;
        }
      }
    }
  }
}

TEST(QuantizeEdge, OneLargeOutlier) {
  for (int kind = 0; kind < 6; ++kind) {
    quant_config c =
        make_config(4, kind < 4 ? kSchemes[kind] : scheme::asymmetric, all_modes()[3], 32);
    if (kind == 4) c.data_type = data_type::nf4;
    if (kind == 5) c.data_type = data_type::fp4;
    for (float outlier : {1e3f, -1e3f, 3e30f}) {
      auto w = random_weight<float>(64, 17, dist::normal, 3);
      w(40, 9) = outlier;
      SCOPED_TRACE(describe(c) + " outlier " + std::to_string(outlier));
      ASSERT_TRUE(matches_reference(w, c, describe(c)));
      const auto q = int4q::quant_tensor(w, c);
      const auto dq = int4q::dequant(q);
      // The outlier itself is reproduced to within half a step (it sets the range)...
      EXPECT_LE(std::abs(dq(40, 9) - outlier), std::abs(q.scales(1, 9)) / 2 + 4 * ulp_of(outlier))
          << "scale " << q.scales(1, 9);
      // ... and the other groups and columns do not see it.
      const auto clean = int4q::quant_tensor(random_weight<float>(64, 17, dist::normal, 3), c);
      for (std::size_t n = 0; n < 17; ++n) {
        if (n != 9) {
          EXPECT_EQ(q.scales(1, n), clean.scales(1, n));
        }
        EXPECT_EQ(q.scales(0, n), clean.scales(0, n));
      }
    }
  }
}

TEST(QuantizeEdge, ScaleThatDoesNotFitFloat16Throws) {
  // asymmetric 4-bit over [-1e6, 1e6]: scale 133333 > 65504 overflows fp16.
  xt::xtensor<float, 2> w = {{-1e6f, 1e6f}, {0.0f, 1.0f}};
  quant_config c;
  c.group_size = 2;
  c.scale_type = scale_type::float16;
  EXPECT_THROW(int4q::quant_tensor(w, c), int4q::config_error);
  c.scale_type = scale_type::bfloat16;  // bf16 has float's range
  EXPECT_NO_THROW(int4q::quant_tensor(w, c));
  c.scale_type = scale_type::native;
  const xt::xtensor<float, 2> huge = {{-3e38f}, {3e38f}};  // max - min overflows float
  EXPECT_THROW(int4q::quant_tensor(huge, c), int4q::error);
}

// ---- Errors
// ------------------------------------------------------------------------------------------

template <class T>
void check_non_finite_position(std::size_t K, std::size_t N, std::size_t group, T bad) {
  quant_config c;
  c.group_size = group;
  for (std::size_t trial = 0; trial < 40; ++trial) {
    auto w = random_weight<T>(K, N, dist::normal, static_cast<std::uint32_t>(trial));
    const std::size_t r = (trial * 7919) % K, col = (trial * 104729) % N;
    w(r, col) = bad;
    for (std::size_t threads : {std::size_t(1), std::size_t(3)}) {
      int4q::quant_options o;
      o.threads = threads;
      try {
        (void)int4q::quant_tensor(w, c, o);
        ADD_FAILURE() << "no non_finite_error for " << bad << " at [" << r << ", " << col << "]";
      } catch (const int4q::non_finite_error& e) {
        EXPECT_EQ(e.row(), r) << bad << " threads " << threads;
        EXPECT_EQ(e.col(), col) << bad << " threads " << threads;
      }
      EXPECT_THROW((void)int4q::qdq(w, c, o), int4q::non_finite_error);
    }
  }
}

TEST(QuantizeErrors, NonFiniteNamesItsPosition) {
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity()}) {
    check_non_finite_position<float>(37, 19, 8, bad);
    check_non_finite_position<float>(20, 300, 128, bad);
    check_non_finite_position<double>(37, 19, 1, static_cast<double>(bad));
  }
}

TEST(QuantizeErrors, SeveralNonFiniteReportARealOne) {
  // Several non-finite values: the one reported is one of them; within one group and column
  // tile it is the row-major first; any thread count reports the same one.
  for (std::uint32_t seed : int4q_test::seeds()) {
    std::mt19937 gen(seed);
    auto w = random_weight<float>(64, 300, dist::normal, seed);
    std::vector<std::pair<std::size_t, std::size_t>> bad;
    for (int i = 0; i < 5; ++i) {
      const std::size_t r = gen() % 64, col = gen() % 300;
      w(r, col) = (i % 2) ? std::numeric_limits<float>::infinity()
                          : std::numeric_limits<float>::quiet_NaN();
      bad.emplace_back(r, col);
    }
    quant_config c;
    c.group_size = 16;
    std::size_t first_row = 0, first_col = 0;
    for (std::size_t threads : {std::size_t(1), std::size_t(2), std::size_t(0)}) {
      int4q::quant_options o;
      o.threads = threads;
      try {
        (void)int4q::quant_tensor(w, c, o);
        ADD_FAILURE() << "no error, seed " << seed;
      } catch (const int4q::non_finite_error& e) {
        EXPECT_FALSE(std::isfinite(w(e.row(), e.col()))) << "seed " << seed;
        if (threads == 1) {
          first_row = e.row();
          first_col = e.col();
        } else {
          EXPECT_EQ(e.row(), first_row) << "seed " << seed << " threads " << threads;
          EXPECT_EQ(e.col(), first_col) << "seed " << seed << " threads " << threads;
        }
      }
    }
  }
  // Two in one group (rows 0..15) and one tile: the row-major first of them.
  auto w = random_weight<float>(32, 40, dist::normal, 1);
  w(9, 3) = std::numeric_limits<float>::quiet_NaN();
  w(4, 30) = -std::numeric_limits<float>::infinity();
  w(4, 31) = std::numeric_limits<float>::quiet_NaN();
  quant_config c;
  c.group_size = 16;
  try {
    (void)int4q::quant_tensor(w, c);
    ADD_FAILURE() << "no error";
  } catch (const int4q::non_finite_error& e) {
    EXPECT_EQ(e.row(), 4u);
    EXPECT_EQ(e.col(), 30u);
    EXPECT_NE(std::string(e.what()).find("-Inf"), std::string::npos) << e.what();
  }
}

TEST(QuantizeErrors, InvalidConfigs) {
  const auto w = random_weight<float>(8, 4, dist::normal, 1);
  std::vector<std::pair<std::string, quant_config>> bad;
  quant_config c;
  c.bits = 1;
  bad.emplace_back("bits 1", c);
  c.bits = 9;
  bad.emplace_back("bits 9", c);
  c = quant_config{};
  c.group_size = 0;
  bad.emplace_back("group 0", c);
  c = quant_config{};
  c.data_type = data_type::nf4;
  c.bits = 3;
  bad.emplace_back("nf4 bits 3", c);
  c.data_type = data_type::fp4;
  c.bits = 8;
  bad.emplace_back("fp4 bits 8", c);
  c = quant_config{};
  c.clip_ratio = 0.0;
  bad.emplace_back("clip 0", c);
  c.clip_ratio = 1.5;
  bad.emplace_back("clip 1.5", c);
  c.clip_ratio = std::nan("");
  bad.emplace_back("clip NaN", c);
  c = quant_config{};
  c.min_range = -1.0;
  bad.emplace_back("min_range -1", c);
  for (const auto& b : bad) {
    SCOPED_TRACE(b.first);
    EXPECT_THROW(int4q::validate(b.second), int4q::config_error);
    EXPECT_THROW((void)int4q::quant_tensor(w, b.second), int4q::config_error);
    EXPECT_THROW((void)int4q::qdq(w, b.second), int4q::config_error);
    EXPECT_THROW((void)int4q::quant_weight_w_scale(w, xt::ones<float>({1, 4}),
                                                   xt::zeros<std::uint8_t>({1, 4}), b.second),
                 int4q::config_error);
  }
}

TEST(QuantizeErrors, WeightMustBeTwoDimensional) {
  const xt::xtensor<float, 1> v = {1.0f, 2.0f};
  const xt::xtensor<float, 3> t = xt::zeros<float>({2, 2, 2});
  EXPECT_THROW((void)int4q::quant_tensor(xt::xarray<float>(v), quant_config{}), int4q::shape_error);
  EXPECT_THROW((void)int4q::quant_tensor(xt::xarray<float>(t), quant_config{}), int4q::shape_error);
}

// ---- Inputs: layouts and element types ---------------------------------------------------------

TEST(QuantizeInputs, NonContiguousViewsEqualContiguousCopy) {
  const std::vector<quant_config> configs = {
      make_config(4, scheme::asymmetric, all_modes()[0], 16),
      make_config(3, scheme::symmetric_full_range, all_modes()[7], 0)};
  for (const quant_config& c : configs) {
    SCOPED_TRACE(describe(c));
    const auto big = random_weight<float>(90, 70, dist::uniform, 9);
    // Strided view: every 2nd row from 1, every 3rd column from 2 -> [45, 23]
    auto strided = xt::view(big, xt::range(1, 90, 2), xt::range(2, 70, 3));
    const xt::xtensor<float, 2> strided_copy = strided;
    const auto a = int4q::quant_tensor(strided, c);
    const auto b = int4q::quant_tensor(strided_copy, c);
    EXPECT_TRUE(all_equal(b.codes, a.codes, "strided codes"));
    EXPECT_TRUE(all_equal(b.scales, a.scales, "strided scales"));
    EXPECT_TRUE(all_equal(b.zero_points, a.zero_points, "strided zero points"));
    // Transpose of a [N, K] tensor
    const auto wt = random_weight<float>(23, 45, dist::fp16_grid, 10);
    auto tr = xt::transpose(wt);
    const xt::xtensor<float, 2> tr_copy = tr;
    const auto t1 = int4q::quant_tensor(tr, c);
    const auto t2 = int4q::quant_tensor(tr_copy, c);
    EXPECT_TRUE(all_equal(t2.codes, t1.codes, "transpose codes"));
    EXPECT_TRUE(all_equal(t2.scales, t1.scales, "transpose scales"));
    EXPECT_TRUE(all_equal(int4q::qdq(tr_copy, c), int4q::qdq(tr, c), "transpose qdq"));
    // Column-major container and a dynamic-layout xarray
    xt::xtensor<float, 2, xt::layout_type::column_major> cm = tr_copy;
    const auto t3 = int4q::quant_tensor(cm, c);
    EXPECT_TRUE(all_equal(t2.codes, t3.codes, "column-major codes"));
    using dyn_array = xt::xarray<float, xt::layout_type::dynamic>;
    dyn_array dyn(dyn_array::shape_type{45, 23}, xt::layout_type::column_major);
    dyn = tr_copy;
    const auto t4 = int4q::quant_tensor(dyn, c);
    EXPECT_TRUE(all_equal(t2.codes, t4.codes, "dynamic column-major codes"));
    // A lazy expression
    const auto t5 = int4q::quant_tensor(tr_copy * 1.0f, c);
    EXPECT_TRUE(all_equal(t2.codes, t5.codes, "expression codes"));
  }
}

TEST(QuantizeInputs, HalfAndBfloat16EqualFloatOfTheirValues) {
  const std::size_t K = 70, N = 37;
  const auto src = random_weight<float>(K, N, dist::outliers, 77);
  auto h = xt::xtensor<int4q::float16_t, 2>::from_shape({K, N});
  auto b = xt::xtensor<int4q::bfloat16_t, 2>::from_shape({K, N});
  auto hf = xt::xtensor<float, 2>::from_shape({K, N});
  auto bf = xt::xtensor<float, 2>::from_shape({K, N});
  for (std::size_t i = 0; i < src.size(); ++i) {
    h.data()[i] = int4q::float16_t(src.data()[i]);
    b.data()[i] = int4q::bfloat16_t(src.data()[i]);
    // the values, decoded independently of float16.hpp
    hf.data()[i] = static_cast<float>(int4q_ref::round_to_half(src.data()[i]));
    bf.data()[i] = static_cast<float>(int4q_ref::round_to_bfloat16(src.data()[i]));
  }
  for (int kind = 0; kind < 6; ++kind) {
    quant_config c =
        make_config(4, kind < 4 ? kSchemes[kind] : scheme::asymmetric, all_modes()[kind], 32);
    if (kind == 4) c.data_type = data_type::nf4;
    if (kind == 5) c.data_type = data_type::fp4;
    SCOPED_TRACE(describe(c));
    const auto qh = int4q::quant_tensor(h, c);
    static_assert(std::is_same<decltype(qh.scales)::value_type, float>::value,
                  "fp16 weights compute in float");
    const auto qhf = int4q::quant_tensor(hf, c);
    EXPECT_TRUE(all_equal(qhf.codes, qh.codes, "fp16 codes"));
    EXPECT_TRUE(all_equal(qhf.scales, qh.scales, "fp16 scales"));
    EXPECT_TRUE(all_equal(qhf.zero_points, qh.zero_points, "fp16 zero points"));
    EXPECT_TRUE(matches_reference(hf, c, "fp16 values vs reference"));
    const auto qb = int4q::quant_tensor(b, c);
    const auto qbf = int4q::quant_tensor(bf, c);
    EXPECT_TRUE(all_equal(qbf.codes, qb.codes, "bf16 codes"));
    EXPECT_TRUE(all_equal(qbf.scales, qb.scales, "bf16 scales"));
    EXPECT_TRUE(all_equal(qbf.zero_points, qb.zero_points, "bf16 zero points"));
    EXPECT_TRUE(all_equal(int4q::qdq(hf, c), int4q::qdq(h, c), "fp16 qdq"));
  }
}

// ---- Scale types
// ------------------------------------------------------------------------------------

TEST(QuantizeScaleType, StoredScalesAreRepresentableAndCodesUseThem) {
  for (scale_type st : {scale_type::float16, scale_type::bfloat16}) {
    for (int kind = 0; kind < 6; ++kind) {
      for (dist d : kDists) {
        quant_config c = make_config(kind == 4 || kind == 5 ? 4 : 3,
                                     kind < 4 ? kSchemes[kind] : scheme::asymmetric,
                                     all_modes()[(kind + static_cast<int>(d)) % 8], 16);
        if (kind == 4) c.data_type = data_type::nf4;
        if (kind == 5) c.data_type = data_type::fp4;
        c.scale_type = st;
        const auto w = random_weight<float>(40, 19, d, 3);
        const std::string where = context<float>(c, int4q_test::to_string(d), 3, 40, 19);
        const auto q = int4q::quant_tensor(w, c);
        for (std::size_t i = 0; i < q.scales.size(); ++i) {
          const double s = q.scales.data()[i];
          const double r = st == scale_type::float16 ? int4q_ref::round_to_half(s)
                                                     : int4q_ref::round_to_bfloat16(s);
          ASSERT_EQ(s, r) << where << " scale " << i << " is not a stored-type value";
        }
        // Codes are those of the stored scale, zero points as given.
        const auto codes = int4q_ref::encode(w, q.scales, q.zero_points, c);
        ASSERT_TRUE(all_equal(codes, q.codes, where + " codes vs stored scale"));
        ASSERT_TRUE(matches_reference(w, c, where));
      }
    }
  }
}

TEST(QuantizeScaleType, ZeroPointComesFromTheUnroundedScale) {
  // Search fp16-valued groups {lo, hi} whose zero point differs between the unrounded scale and
  // its fp16 rounding; the library must use the unrounded one (ONNX Runtime's order).
  quant_config c;
  c.bits = 4;
  c.group_size = 2;
  c.scale_type = scale_type::float16;
  c.rounding = rounding::half_away_from_zero;
  int found = 0;
  for (int a = 1; a < 400 && found < 20; ++a) {
    for (int b = 1; b < 400 && found < 20; ++b) {
      const float lo = -static_cast<float>(a) / 64.0f, hi = static_cast<float>(b) / 256.0f;
      const float s = (hi - lo) / 15.0f;
      const float sr = static_cast<float>(int4q_ref::round_to_half(s));
      const float z = int4q_ref::round_half_away(-lo / s);
      const float zr = int4q_ref::round_half_away(-lo / sr);
      if (z == zr || z > 15.0f || zr > 15.0f) continue;
      ++found;
      const xt::xtensor<float, 2> w = {{lo}, {hi}};
      const auto q = int4q::quant_tensor(w, c);
      EXPECT_EQ(q.zero_points(0, 0), static_cast<int>(z)) << "lo " << lo << " hi " << hi;
      EXPECT_EQ(q.scales(0, 0), sr) << "lo " << lo << " hi " << hi;
    }
  }
  EXPECT_GT(found, 0) << "no group found where the rounding of the scale changes the zero point";
}

TEST(QuantizeScaleType, DoubleScaleIsRoundedOnceToFloat16) {
  // bits 2 symmetric: scale = amax / 1 = amax exactly. amax = 1 + 2^-11 + 2^-40 is just above
  // the midpoint of the fp16 neighbours 1 and 1 + 2^-10, so its nearest fp16 is 1 + 2^-10.
  // Rounding to float first gives exactly 1 + 2^-11 (a tie) and then 1 (ties to even): a
  // double rounding, not the nearest fp16 value.
  quant_config c;
  c.bits = 2;
  c.scheme = scheme::symmetric;
  c.group_size = 2;
  c.scale_type = scale_type::float16;
  const double amax = 1.0 + std::ldexp(1.0, -11) + std::ldexp(1.0, -40);
  const xt::xtensor<double, 2> w = {{amax}, {-0.25}};
  const auto q = int4q::quant_tensor(w, c);
  EXPECT_EQ(q.scales(0, 0), 1.0 + std::ldexp(1.0, -10));
  // bf16: 1 + 2^-8 + 2^-40 -> 1 + 2^-7 (nearest), not 1 (via float: tie, then even)
  c.scale_type = scale_type::bfloat16;
  const double amax_b = 1.0 + std::ldexp(1.0, -8) + std::ldexp(1.0, -40);
  const xt::xtensor<double, 2> wb = {{amax_b}, {-0.25}};
  EXPECT_EQ(int4q::quant_tensor(wb, c).scales(0, 0), 1.0 + std::ldexp(1.0, -7));
}

// ---- Threads
// ------------------------------------------------------------------------------------------

TEST(QuantizeThreads, ByteIdenticalForAnyThreadCount) {
  const auto w = random_weight<float>(300, 300, dist::outliers, 12);
  const auto wd = random_weight<double>(64, 270, dist::fp16_grid, 13);
  for (int kind = 0; kind < 6; ++kind) {
    quant_config c = make_config(4, kind < 4 ? kSchemes[kind] : scheme::asymmetric,
                                 all_modes()[kind + 2], kind % 2 ? 32 : 7);
    if (kind == 4) c.data_type = data_type::nf4;
    if (kind == 5) c.data_type = data_type::fp4;
    SCOPED_TRACE(describe(c));
    int4q::quant_options one;
    const auto q1 = int4q::quant_tensor(w, c, one);
    const auto d1 = int4q::quant_tensor(wd, c, one);
    const auto f1 = int4q::qdq(w, c, one);
    for (std::size_t threads : {std::size_t(2), std::size_t(3), std::size_t(0)}) {
      int4q::quant_options o;
      o.threads = threads;
      const auto q = int4q::quant_tensor(w, c, o);
      EXPECT_EQ(std::memcmp(q.codes.data(), q1.codes.data(), q1.codes.size()), 0) << threads;
      EXPECT_EQ(std::memcmp(q.scales.data(), q1.scales.data(), q1.scales.size() * sizeof(float)), 0)
          << threads;
      EXPECT_EQ(std::memcmp(q.zero_points.data(), q1.zero_points.data(), q1.zero_points.size()), 0)
          << threads;
      const auto d = int4q::quant_tensor(wd, c, o);
      EXPECT_EQ(std::memcmp(d.codes.data(), d1.codes.data(), d1.codes.size()), 0) << threads;
      EXPECT_EQ(std::memcmp(d.scales.data(), d1.scales.data(), d1.scales.size() * sizeof(double)),
                0)
          << threads;
      const auto f = int4q::qdq(w, c, o);
      EXPECT_EQ(std::memcmp(f.data(), f1.data(), f1.size() * sizeof(float)), 0) << threads;
      const auto dq = int4q::dequant(q1, o);
      const auto dq1 = int4q::dequant(q1, one);
      EXPECT_EQ(std::memcmp(dq.data(), dq1.data(), dq1.size() * sizeof(float)), 0) << threads;
    }
  }
}

// ---- Per-group clip ratios
// ----------------------------------------------------------------------------

template <class T>
void check_ratios() {
  const std::size_t K = 50, N = 21, gs = 16, G = 4;
  for (int kind = 0; kind < 6; ++kind) {
    for (double clip : {1.0, 0.9}) {
      quant_config c = make_config(
          kind >= 4 ? 4 : 3, kind < 4 ? kSchemes[kind] : scheme::asymmetric, all_modes()[kind], gs);
      if (kind == 4) c.data_type = data_type::nf4;
      if (kind == 5) c.data_type = data_type::fp4;
      c.clip_ratio = clip;
      const auto w = random_weight<T>(K, N, dist::uniform, 21);
      auto ratios = xt::xtensor<T, 2>::from_shape({G, N});
      for (std::size_t i = 0; i < ratios.size(); ++i) {
        ratios.data()[i] = T(1) - T(0.05) * static_cast<T>(i % 9);  // 1.0 .. 0.6
      }
      const std::string where = context<T>(c, "uniform", 21, K, N);
      const auto q = int4q::quant_tensor(w, c, ratios);
      const auto r = int4q_ref::quantize(w, c, &ratios);
      ASSERT_TRUE(all_equal(r.scales, q.scales, where + " [scales]"));
      ASSERT_TRUE(all_equal(r.zero_points, q.zero_points, where + " [zero points]"));
      ASSERT_TRUE(all_equal(r.codes, q.codes, where + " [codes]"));
      // All-ones ratios are the plain call.
      const xt::xtensor<T, 2> ones = xt::ones<T>({G, N});
      const auto q1 = int4q::quant_tensor(w, c, ones);
      const auto q0 = int4q::quant_tensor(w, c);
      ASSERT_TRUE(all_equal(q0.codes, q1.codes, where + " [ratios 1]"));
      ASSERT_TRUE(all_equal(q0.scales, q1.scales, where + " [ratios 1]"));
    }
  }
}

TEST(QuantizeClipRatios, PerGroupRatiosMatchReferenceFloat) { check_ratios<float>(); }
TEST(QuantizeClipRatios, PerGroupRatiosMatchReferenceDouble) { check_ratios<double>(); }

TEST(QuantizeClipRatios, BadRatiosThrow) {
  const auto w = random_weight<float>(20, 6, dist::normal, 1);
  quant_config c;
  c.group_size = 8;  // G = 3
  EXPECT_THROW((void)int4q::quant_tensor(w, c, xt::xtensor<float, 2>(xt::ones<float>({2, 6}))),
               int4q::shape_error);
  EXPECT_THROW((void)int4q::quant_tensor(w, c, xt::xtensor<float, 2>(xt::ones<float>({3, 5}))),
               int4q::shape_error);
  for (float bad : {0.0f, 1.5f, -0.5f, std::numeric_limits<float>::quiet_NaN()}) {
    xt::xtensor<float, 2> r = xt::ones<float>({3, 6});
    r(2, 4) = bad;
    EXPECT_THROW((void)int4q::quant_tensor(w, c, r), int4q::config_error) << bad;
  }
}

// ---- quant_weight_w_scale
// ------------------------------------------------------------------------------

template <class T>
void check_given_scales() {
  const std::size_t K = 45, N = 19, gs = 8, G = 6;
  std::mt19937 gen(99);
  for (int kind = 0; kind < 6; ++kind) {
    for (const mode& m : all_modes()) {
      quant_config c =
          make_config(kind >= 4 ? 4 : 5, kind < 4 ? kSchemes[kind] : scheme::asymmetric, m, gs);
      if (kind == 4) c.data_type = data_type::nf4;
      if (kind == 5) c.data_type = data_type::fp4;
      const auto w = random_weight<T>(K, N, dist::small_ints, 5);
      auto scales = xt::xtensor<T, 2>::from_shape({G, N});
      auto zps = xt::xtensor<std::uint8_t, 2>::from_shape({G, N});
      for (std::size_t i = 0; i < scales.size(); ++i) {
        // powers of two (exact ties with small_ints), negative and zero scales included
        const int e = static_cast<int>(gen() % 5) - 2;
        T s = std::ldexp(T(1), e);
        if (i % 7 == 3) s = -s;
        if (i % 11 == 5) s = 0;
        if (i % 13 == 6) s = T(0.3);
        scales.data()[i] = s;
        zps.data()[i] = static_cast<std::uint8_t>(gen() % (c.qmax() + 1));
      }
      const std::string where = context<T>(c, "small_ints", 5, K, N);
      const auto q = int4q::quant_weight_w_scale(w, scales, zps, c);
      // Zero points as given for asymmetric grids; 2^(b-1) for symmetric; 0 for tables.
      xt::xtensor<std::uint8_t, 2> want_zp = zps;
      if (!c.has_zero_points()) {
        want_zp.fill(static_cast<std::uint8_t>(c.data_type == data_type::integer ? c.mid() : 0));
      }
      ASSERT_TRUE(all_equal(want_zp, q.zero_points, where + " [zero points]"));
      ASSERT_TRUE(all_equal(scales, q.scales, where + " [scales]"));
      ASSERT_TRUE(all_equal(int4q_ref::encode(w, scales, want_zp, c), q.codes, where + " [codes]"));
      if (!c.has_zero_points()) {
        const auto q3 = int4q::quant_weight_w_scale(w, scales, c);
        ASSERT_TRUE(all_equal(q.codes, q3.codes, where + " [no-zp overload]"));
      }
    }
  }
}

TEST(QuantWeightWScale, MatchesReferenceFloat) { check_given_scales<float>(); }
TEST(QuantWeightWScale, MatchesReferenceDouble) { check_given_scales<double>(); }

TEST(QuantWeightWScale, BadShapesAndZeroPointsThrow) {
  const auto w = random_weight<float>(20, 6, dist::normal, 1);
  quant_config c;
  c.group_size = 8;  // G = 3
  const xt::xtensor<float, 2> s = xt::ones<float>({3, 6});
  const xt::xtensor<std::uint8_t, 2> z = xt::zeros<std::uint8_t>({3, 6});
  EXPECT_NO_THROW((void)int4q::quant_weight_w_scale(w, s, z, c));
  EXPECT_THROW(
      (void)int4q::quant_weight_w_scale(w, xt::xtensor<float, 2>(xt::ones<float>({2, 6})), z, c),
      int4q::shape_error);
  EXPECT_THROW(
      (void)int4q::quant_weight_w_scale(w, xt::xtensor<float, 2>(xt::ones<float>({3, 7})), z, c),
      int4q::shape_error);
  EXPECT_THROW((void)int4q::quant_weight_w_scale(w, xt::xarray<float>(xt::ones<float>({18})), z, c),
               int4q::shape_error);
  EXPECT_THROW((void)int4q::quant_weight_w_scale(
                   w, s, xt::xtensor<std::uint8_t, 2>(xt::zeros<std::uint8_t>({3, 5})), c),
               int4q::shape_error);
  xt::xtensor<std::uint8_t, 2> big = z;
  big(1, 2) = 16;  // > 2^4 - 1
  EXPECT_THROW((void)int4q::quant_weight_w_scale(w, s, big, c), int4q::shape_error);
  xt::xtensor<float, 2> nan_scale = s;
  nan_scale(2, 5) = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THROW((void)int4q::quant_weight_w_scale(w, nan_scale, z, c), int4q::shape_error);
  nan_scale(2, 5) = std::numeric_limits<float>::infinity();
  EXPECT_THROW((void)int4q::quant_weight_w_scale(w, nan_scale, z, c), int4q::shape_error);
  // The overload without zero points refuses an asymmetric grid.
  EXPECT_THROW((void)int4q::quant_weight_w_scale(w, s, c), int4q::config_error);
  // Symmetric: zero points are not needed.
  c.scheme = scheme::symmetric;
  EXPECT_NO_THROW((void)int4q::quant_weight_w_scale(w, s, c));
  // Non-finite weights are reported with their position here too.
  auto wn = w;
  wn(13, 4) = std::numeric_limits<float>::quiet_NaN();
  try {
    (void)int4q::quant_weight_w_scale(wn, s, c);
    ADD_FAILURE() << "no error";
  } catch (const int4q::non_finite_error& e) {
    EXPECT_EQ(e.row(), 13u);
    EXPECT_EQ(e.col(), 4u);
  }
}

// ---- quant_tensor_into --------------------------------------------------------------------------

TEST(QuantTensorInto, EqualsQuantTensorAndReusesMatchingBuffers) {
  const auto w = random_weight<float>(70, 33, dist::outliers, 31);
  const auto w2 = random_weight<float>(70, 33, dist::uniform, 32);
  quant_config c = make_config(4, scheme::asymmetric, all_modes()[5], 16);
  int4q::quantized<float> out;
  int4q::quant_tensor_into(w, c, out);
  const auto q = int4q::quant_tensor(w, c);
  EXPECT_TRUE(all_equal(q.codes, out.codes, "into codes"));
  EXPECT_TRUE(all_equal(q.scales, out.scales, "into scales"));
  EXPECT_TRUE(all_equal(q.zero_points, out.zero_points, "into zero points"));
  // Same shapes: same buffers, new values.
  const auto* codes = out.codes.data();
  const auto* scales = out.scales.data();
  int4q::quant_tensor_into(w2, c, out);
  EXPECT_EQ(out.codes.data(), codes);
  EXPECT_EQ(out.scales.data(), scales);
  EXPECT_TRUE(matches_reference(w2, c, "into, reused"));
  EXPECT_TRUE(all_equal(int4q::quant_tensor(w2, c).codes, out.codes, "into reused codes"));
  // Other shapes and another config: reshaped, and the config is the new one.
  c = make_config(3, scheme::symmetric, all_modes()[2], 0);
  const auto w3 = random_weight<float>(20, 5, dist::normal, 33);
  int4q::quant_tensor_into(w3, c, out);
  EXPECT_EQ(out.config.bits, 3);
  EXPECT_EQ(out.num_groups(), 1u);
  const auto q3 = int4q::quant_tensor(w3, c);
  EXPECT_TRUE(all_equal(q3.codes, out.codes, "into reshaped codes"));
  EXPECT_TRUE(all_equal(q3.scales, out.scales, "into reshaped scales"));
  EXPECT_TRUE(all_equal(q3.zero_points, out.zero_points, "into reshaped zero points"));
  // Errors leave no half-valid result behind silently: invalid config throws before writing.
  quant_config bad = c;
  bad.bits = 9;
  EXPECT_THROW(int4q::quant_tensor_into(w3, bad, out), int4q::config_error);
}

// ---- Tiny weights: subnormal scales
// ----------------------------------------------------------------

TEST(QuantizeEdge, SubnormalScaleDivide) {
  // A group of magnitude ~1e-38 has a subnormal scale (2e-38 / 15); dividing by it is exact
  // enough: the reference and the half-step bound hold, zero stays exactly zero.
  const xt::xtensor<float, 2> w = {{0.0f}, {1e-38f}, {-1e-38f}, {5e-39f}};
  quant_config c;
  c.group_size = 4;
  c.scale_division = scale_division::divide;
  ASSERT_TRUE(matches_reference(w, c, describe(c)));
  const auto q = int4q::quant_tensor(w, c);
  EXPECT_EQ(int4q::dequant(q)(0, 0), 0.0f);
}

TEST(QuantizeEdge, SubnormalScaleReciprocalIsAZeroRangeGroup) {
  // With multiply_reciprocal (the default) a subnormal scale has 1 / scale = +Inf; the library
  // then treats the group as a zero-range group (documented in group_params.hpp): every code
  // decodes to exactly 0 (error <= |w| < 1e-37), never NaN, for every zero_range policy. The
  // same weights under `divide` keep their codes (5e-39 / 1.33e-39 = 3.75 -> 4, + zp 8 = 12).
  const xt::xtensor<float, 2> w = {{0.0f}, {1e-38f}, {-1e-38f}, {5e-39f}};
  for (auto policy : {zero_range_policy::unit_scale, zero_range_policy::zero_scale,
                      zero_range_policy::unit_range}) {
    quant_config c;
    c.group_size = 4;
    c.zero_range = policy;
    c.scale_division = scale_division::multiply_reciprocal;
    const auto d = int4q::dequant(int4q::quant_tensor(w, c));
    for (std::size_t k = 0; k < 4; ++k) {
      EXPECT_EQ(d(k, 0), 0.0f) << "row " << k << " policy " << static_cast<int>(policy);
    }
  }
  quant_config c;
  c.group_size = 4;
  c.scale_division = scale_division::divide;
  EXPECT_EQ(int4q::quant_tensor(w, c).codes(3, 0), 12);
}

// ---- min_range on symmetric_offset
// ---------------------------------------------------------------

TEST(QuantizeEdge, MinRangeSymmetricOffset) {
  // min_range floors symmetric_offset's (hi - lo) = 2 amax (config.hpp): group {-0.1, 0.1},
  // min_range 0.5 -> range 0.5 (not 2 * 0.5), scale 0.5 / 15.
  quant_config c;
  c.bits = 4;
  c.group_size = 2;
  c.scheme = scheme::symmetric_offset;
  c.min_range = 0.5;
  const xt::xtensor<float, 2> w = {{-0.1f}, {0.1f}};
  EXPECT_EQ(int4q::quant_tensor(w, c).scales(0, 0), 0.5f / 15.0f);
}

}  // namespace
