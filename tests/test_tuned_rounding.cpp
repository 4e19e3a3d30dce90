// tuned_rounding: the starting point is round-to-nearest (quant_tensor's codes), result() and
// dequantized() agree, the straight-through gradients equal finite differences of the smooth
// surrogate (round() taken as the identity) where W / s + V is an integer, and step() moves each
// parameter by lr against its gradient's sign within its interval.
#include <gtest/gtest.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

#include <xtensor/xtensor.hpp>

#include <int4q/quant.hpp>

#include "test_util.hpp"

namespace {

using int4q::quant_config;
using int4q::scheme;
using int4q::tuned_rounding;
using int4q_test::dist;
using int4q_test::random_weight;

quant_config grid(scheme s, std::size_t group) {
  quant_config c;
  c.scheme = s;
  c.group_size = group;
  c.scale_division = int4q::scale_division::divide;  // tuned_rounding divides
  return c;
}

TEST(TunedRounding, StartsAtRoundToNearest) {
  for (const scheme s : {scheme::asymmetric, scheme::symmetric, scheme::symmetric_offset,
                         scheme::symmetric_full_range}) {
    const quant_config c = grid(s, 32);
    const auto w = random_weight<float>(100, 7, dist::normal, 11);  // ragged last group
    const tuned_rounding<float> t(w, c);
    const auto q = t.result();
    const auto ref = int4q::quant_tensor(w, c);
    EXPECT_EQ(q.codes, ref.codes) << int4q::to_string(s);
    EXPECT_EQ(q.scales, ref.scales) << int4q::to_string(s);
    EXPECT_EQ(q.zero_points, ref.zero_points) << int4q::to_string(s);
  }
}

TEST(TunedRounding, ResultDecodesToDequantized) {
  const quant_config c = grid(scheme::asymmetric, 16);
  const auto w = random_weight<float>(64, 9, dist::normal, 3);
  tuned_rounding<float> t(w, c);
  std::mt19937 gen(5);
  std::normal_distribution<float> g;
  std::vector<float> grad(64 * 9), d(64 * 9);
  for (int it = 0; it < 20; ++it) {
    for (float& x : grad) x = g(gen);
    t.backward(grad.data());
    t.step(0.05);
  }
  t.dequantized(d.data());
  const auto back = int4q::dequant(t.result());
  for (std::size_t e = 0; e < d.size(); ++e) ASSERT_EQ(back.data()[e], d[e]) << e;
}

/// The surrogate of the dequantized weight with round() as the identity (and the zero point
/// unrounded), in double: s (clamp(W / s + V + z, 0, qmax) - z).
double surrogate_loss(const std::vector<double>& w, const std::vector<double>& v, double f_lo,
                      double f_hi, const std::vector<double>& g, bool asym, int bits) {
  const double qmax = (1 << bits) - 1, mid = 1 << (bits - 1);
  double lo = 0, hi = 0;
  for (const double x : w) {
    lo = std::min(lo, x);
    hi = std::max(hi, x);
  }
  double s = 0, z = 0;
  if (asym) {
    s = (f_hi * hi - f_lo * lo) / qmax;
    z = -f_lo * lo / s;
  } else {
    s = f_hi * std::max(-lo, hi) / (mid - 1);
    z = mid;
  }
  double loss = 0;
  for (std::size_t e = 0; e < w.size(); ++e) {
    const double q = std::min(std::max(w[e] / s + v[e] + z, 0.0), qmax);
    loss += g[e] * s * (q - z);
  }
  return loss;
}

TEST(TunedRounding, GradientsMatchFiniteDifferencesOnTheGrid) {
  // One group (K = 16, N = 1) with offsets V = round(W / s) - W / s: W / s + V is an integer
  // for every element, where the straight-through gradient is the surrogate's derivative.
  // Elements at the clamp (the range's ends) get no upstream gradient (the surrogate has a kink
  // there).
  for (const bool asym : {true, false}) {
    const int bits = 4;
    quant_config c = grid(asym ? scheme::asymmetric : scheme::symmetric, 16);
    c.bits = bits;
    const auto w = random_weight<float>(16, 1, dist::normal, asym ? 7 : 8);
    tuned_rounding<float> t(w, c);
    const float s = t.result().scales(0, 0);
    auto st = t.parameters();
    std::vector<double> wd(16), v(16), gd(16, 0.0);
    for (std::size_t k = 0; k < 16; ++k) {
      st.offsets[k] = std::nearbyint(w(k, 0) / s) - w(k, 0) / s;
      wd[k] = w(k, 0);
      v[k] = st.offsets[k];
    }
    t.set_parameters(st);
    const auto q = t.result();
    std::mt19937 gen(9);
    std::normal_distribution<double> nd;
    std::vector<float> grad(16, 0.0f);
    for (std::size_t k = 0; k < 16; ++k) {
      if (q.codes(k, 0) == 0 || q.codes(k, 0) == c.qmax()) continue;
      gd[k] = nd(gen);
      grad[k] = static_cast<float>(gd[k]);
    }
    // The gradient accumulates over calls: two halves make the whole.
    std::vector<float> half(grad);
    for (float& x : half) x *= 0.5f;
    t.backward(half.data());
    t.backward(half.data());
    const double h = 1e-6;
    const auto fd = [&](std::size_t k) {
      std::vector<double> vp = v, vm = v;
      vp[k] += h;
      vm[k] -= h;
      return (surrogate_loss(wd, vp, 1, 1, gd, asym, bits) -
              surrogate_loss(wd, vm, 1, 1, gd, asym, bits)) /
             (2 * h);
    };
    const double dhi = (surrogate_loss(wd, v, 1, 1 + h, gd, asym, bits) -
                        surrogate_loss(wd, v, 1, 1 - h, gd, asym, bits)) /
                       (2 * h);
    const double dlo = (surrogate_loss(wd, v, 1 + h, 1, gd, asym, bits) -
                        surrogate_loss(wd, v, 1 - h, 1, gd, asym, bits)) /
                       (2 * h);
    const auto grads = t.gradients();
    constexpr double kTol = 1e-4;  // float against double, relative to the magnitude
    double scale = 0;
    for (std::size_t k = 0; k < 16; ++k) scale = std::max(scale, std::abs(fd(k)));
    for (std::size_t k = 0; k < 16; ++k)
      EXPECT_NEAR(grads.offsets[k], fd(k), kTol * scale) << "V[" << k << "] asym " << asym;
    EXPECT_NE(dhi, 0.0);  // the check below is not vacuous
    EXPECT_NEAR(grads.hi[0], dhi, kTol * std::abs(dhi) + 1e-6) << "f_hi, asym " << asym;
    if (asym) EXPECT_NEAR(grads.lo[0], dlo, kTol * std::abs(dlo) + 1e-6) << "f_lo";
  }
}

TEST(TunedRounding, StepIsSignedAndClamped) {
  const quant_config c = grid(scheme::asymmetric, 8);
  const auto w = random_weight<float>(8, 2, dist::uniform, 1);
  int4q::tuned_rounding_options o;
  o.offset_limit = 0.5;
  o.range_min = 0.8;
  tuned_rounding<float> t(w, c, o);
  std::vector<float> grad(16);
  for (std::size_t e = 0; e < 16; ++e) grad[e] = e % 2 ? 1e-3f : -5.0f;
  t.backward(grad.data());
  const auto before = t.gradients();
  t.step(0.1);
  const auto& p = t.parameters();
  for (std::size_t e = 0; e < 16; ++e) {
    const float sgn = before.offsets[e] > 0 ? 1.0f : (before.offsets[e] < 0 ? -1.0f : 0.0f);
    EXPECT_FLOAT_EQ(p.offsets[e], -0.1f * sgn) << e;
  }
  for (std::size_t gi = 0; gi < 2; ++gi) {
    EXPECT_LE(p.hi[gi], 1.0f);
    EXPECT_GE(p.hi[gi], 0.8f);
  }
  for (int it = 0; it < 20; ++it) {  // the same push many times: stops at the limits
    t.backward(grad.data());
    t.step(0.1);
  }
  for (std::size_t e = 0; e < 16; ++e) EXPECT_LE(std::abs(p.offsets[e]), 0.5f);
  for (std::size_t gi = 0; gi < 2; ++gi) {
    EXPECT_GE(p.lo[gi], 0.8f);
    EXPECT_GE(p.hi[gi], 0.8f);
  }
  const auto after = t.gradients();
  for (const float x : after.offsets) EXPECT_EQ(x, 0.0f);  // cleared by step
}

TEST(TunedRounding, RefusesTables) {
  quant_config c;
  c.data_type = int4q::data_type::nf4;
  c.scheme = scheme::symmetric;
  EXPECT_THROW(tuned_rounding<float>(random_weight<float>(8, 2, dist::normal, 1), c),
               int4q::config_error);
}

}  // namespace
