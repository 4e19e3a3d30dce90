// AWQ (awq.hpp): the scale search, the clip search and both together, against references
// written here from the formulas at the top of awq.hpp: plain loops in double, quantization by
// the scalar reference of tests/reference.hpp (codes identical to the library's, checked by
// test_quantize.cpp), never by int4q's kernels. Properties run over the seeds of test_util.hpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include <xtensor/xtensor.hpp>

#include <int4q/quant.hpp>

#include "reference.hpp"
#include "test_util.hpp"

namespace {

using int4q::awq_clip_options;
using int4q::awq_options;
using int4q::awq_scale_form;
using int4q::quant_config;
using int4q_test::dist;
using int4q_test::random_weight;

// ---- Named tolerances ------------------------------------------------------------------------

/// Statistics and scales computed in double in a different summation order than here: a few
/// hundred terms, ~1e-14 relative at most.
constexpr double tol_double_reorder_rel = 1e-12;
/// AWQ loss: int4q divides the error rows by s in float and accumulates each output of X E in float
/// (sgemm over K <= 256 terms of mixed sign: ~sqrt(K) * 6e-8 relative per output, ~1e-6 worst
/// case); the reference is all double. The loss is a sum of squares of those outputs: 1e-4 relative
/// is ~100x that error and still 100x below the loss differences between neighbouring alphas here.
constexpr double tol_awq_loss_rel = 1e-4;
/// Clip objective: int4q evaluates e^T (X^T X) e, the reference sum_t (x_t . e)^2, both in double
/// from the same float errors e: only the summation order differs.
constexpr double tol_clip_loss_rel = 1e-9;
/// Folding: (x/s)_float * (s w)_float has two float roundings per product (2^-23 relative),
/// summed in double over K terms: bounded by 2^-22 * sum |x_k w_k|.
constexpr double tol_fold_rel = 2.5e-7;
/// With a few input channels 30x larger than the rest, AWQ must remove at least this fraction
/// of RTN's output error (measured: 68-73% on these shapes and seeds, both forms).
constexpr double min_awq_gain_with_outliers = 0.5;

constexpr double outlier_factor = 30.0;

// ---- Data --------------------------------------------------------------------------------------

/// Activations [S, K]: N(0, 1), and channels k % 17 == 3 times outlier_factor when `outliers`.
xt::xtensor<float, 2> activations(std::size_t S, std::size_t K, bool outliers, std::uint32_t seed) {
  const auto n = random_weight<float>(S, K, dist::normal, seed + 1000u);  // N(0, 1) * 0.02
  auto x = xt::xtensor<float, 2>::from_shape({S, K});
  for (std::size_t t = 0; t < S; ++t) {
    for (std::size_t k = 0; k < K; ++k) {
      const double v = n(t, k) / 0.02;
      x(t, k) = static_cast<float>(outliers && k % 17 == 3 ? v * outlier_factor : v);
    }
  }
  return x;
}

/// mean |x| over the rows, in double.
xt::xtensor<double, 1> mean_abs(const xt::xtensor<float, 2>& x) {
  const std::size_t S = x.shape()[0], K = x.shape()[1];
  xt::xtensor<double, 1> m = xt::zeros<double>({K});
  for (std::size_t t = 0; t < S; ++t) {
    for (std::size_t k = 0; k < K; ++k) m(k) += std::abs(static_cast<double>(x(t, k)));
  }
  for (std::size_t k = 0; k < K; ++k) m(k) /= static_cast<double>(S);
  return m;
}

quant_config config_of(int4q::scheme s, std::size_t group, bool per_channel = false) {
  quant_config c;
  c.scheme = s;
  c.group_size = group;
  if (per_channel) c.granularity = int4q::grouping::per_channel;
  return c;
}

std::string context(const quant_config& c, std::uint32_t seed, const std::string& more = "") {
  std::ostringstream s;
  s << int4q_test::describe(c) << " seed=" << seed << " " << more;
  return s.str();
}

::testing::AssertionResult near_rel(double expected, double actual, double tol,
                                    const std::string& what) {
  const double err = std::abs(expected - actual);
  if (err <= tol * std::abs(expected) || expected == actual) return ::testing::AssertionSuccess();
  std::ostringstream s;
  s.precision(17);
  s << what << ": expected " << expected << ", actual " << actual << ", relative error "
    << err / std::abs(expected) << " > tolerance " << tol;
  return ::testing::AssertionFailure() << s.str();
}

// ---- References (from the formulas) -----------------------------------------------------------

/// Rows per group of K rows.
std::size_t rows_per_group(const quant_config& c, std::size_t K) {
  return int4q_ref::group_rows(c, K);
}

/// wbar[k] = (1 / total columns) sum_j sum_n |W_j[k, n]| / max_{k' in group(k)} |W_j[k', n]|.
template <class T>
std::vector<double> ref_weight_stat(const std::vector<xt::xtensor<T, 2>>& ws,
                                    const quant_config& c) {
  const std::size_t K = ws[0].shape()[0], gs = rows_per_group(c, K);
  std::vector<double> out(K, 0.0);
  std::size_t cols = 0;
  for (const auto& w : ws) {
    cols += w.shape()[1];
    for (std::size_t n = 0; n < w.shape()[1]; ++n) {
      for (std::size_t k = 0; k < K; ++k) {
        const std::size_t g0 = k / gs * gs, g1 = std::min(K, g0 + gs);
        double amax = 0;
        for (std::size_t i = g0; i < g1; ++i) amax = std::max(amax, std::abs(double(w(i, n))));
        if (amax > 0) out[k] += std::abs(double(w(k, n))) / amax;
      }
    }
  }
  for (double& v : out) v /= static_cast<double>(cols);
  return out;
}

/// Raw v_k of the two forms, clamped; then s = v / sqrt(max v * min v).
std::vector<double> ref_scales(const xt::xtensor<double, 1>& xbar, const std::vector<double>& wbar,
                               double alpha, const awq_options& o) {
  const std::size_t K = xbar.size();
  std::vector<double> v(K);
  for (std::size_t k = 0; k < K; ++k) {
    double raw = std::pow(xbar(k), alpha);
    if (o.form == awq_scale_form::activation_weight) {
      raw = raw / (std::pow(wbar[k], 1.0 - alpha) + o.weight_eps);
    }
    v[k] = std::min(o.scale_max, std::max(o.scale_min, raw));
  }
  const double hi = *std::max_element(v.begin(), v.end());
  const double lo = *std::min_element(v.begin(), v.end());
  for (double& s : v) s = s / std::sqrt(hi * lo);
  return v;
}

/// Fake-quant of w by the scalar reference (optional per-group ratios).
template <class T>
xt::xtensor<T, 2> ref_qdq(const xt::xtensor<T, 2>& w, const quant_config& c,
                          const xt::xtensor<T, 2>* ratios = nullptr) {
  const auto q = int4q_ref::quantize(w, c, ratios);
  return int4q_ref::dequantize(q.codes, q.scales, q.zero_points, c);
}

/// L(s) = sum_j sum_t sum_n (sum_k x[t,k] W_j[k,n] - sum_k (x[t,k] / s_k) Q(s W_j)[k,n])^2, in
/// double; s W_j rounded to T once per element, as the node's weight is stored.
template <class T>
double ref_awq_loss(const xt::xtensor<float, 2>& x, const std::vector<xt::xtensor<T, 2>>& ws,
                    const std::vector<T>& s, const quant_config& c) {
  const std::size_t S = x.shape()[0], K = x.shape()[1];
  double loss = 0;
  for (const auto& w : ws) {
    const std::size_t N = w.shape()[1];
    xt::xtensor<T, 2> scaled = xt::xtensor<T, 2>::from_shape({K, N});
    for (std::size_t k = 0; k < K; ++k) {
      for (std::size_t n = 0; n < N; ++n) scaled(k, n) = s[k] * w(k, n);
    }
    const auto q = ref_qdq(scaled, c);
    for (std::size_t t = 0; t < S; ++t) {
      for (std::size_t n = 0; n < N; ++n) {
        double ref = 0, out = 0;
        for (std::size_t k = 0; k < K; ++k) {
          ref += double(x(t, k)) * double(w(k, n));
          out += double(x(t, k)) / double(s[k]) * double(q(k, n));
        }
        loss += (ref - out) * (ref - out);
      }
    }
  }
  return loss;
}

/// Per (g, n): sum_t (sum_{k in g} x[t, k] (W[k, n] - Q[k, n]))^2, as [G * N].
template <class T>
std::vector<double> ref_group_objective(const xt::xtensor<T, 2>& x, const xt::xtensor<T, 2>& w,
                                        const xt::xtensor<T, 2>& q, const quant_config& c) {
  const std::size_t S = x.shape()[0], K = w.shape()[0], N = w.shape()[1];
  const std::size_t gs = rows_per_group(c, K), G = int4q_ref::group_count(c, K);
  std::vector<double> out(G * N, 0.0);
  for (std::size_t g = 0; g < G; ++g) {
    for (std::size_t n = 0; n < N; ++n) {
      for (std::size_t t = 0; t < S; ++t) {
        double acc = 0;
        for (std::size_t k = g * gs; k < std::min(K, g * gs + gs); ++k) {
          acc += double(x(t, k)) * (double(w(k, n)) - double(q(k, n)));
        }
        out[g * N + n] += acc * acc;
      }
    }
  }
  return out;
}

double sum(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return s;
}

std::vector<float> to_float(const xt::xtensor<double, 1>& s) {
  std::vector<float> out(s.size());
  for (std::size_t k = 0; k < s.size(); ++k) out[k] = static_cast<float>(s(k));
  return out;
}

xt::xtensor<double, 1> to_tensor(const std::vector<double>& v) {
  xt::xtensor<double, 1> t = xt::xtensor<double, 1>::from_shape({v.size()});
  std::copy(v.begin(), v.end(), t.begin());
  return t;
}

awq_options llm_awq_options() {
  awq_options o;
  o.form = awq_scale_form::activation;
  o.alpha_step = 0.05;
  o.alpha_max = 0.95;
  o.scale_max = std::numeric_limits<double>::infinity();
  return o;
}

// ---- Scale search ------------------------------------------------------------------------------

TEST(AwqScales, AlphaGridAsDocumented) {
  const auto x = activations(8, 32, false, 1);
  const auto w = random_weight<float>(32, 8, dist::normal, 2);
  const quant_config c = config_of(int4q::scheme::asymmetric, 16);
  const auto r = int4q::search_awq_scales(x, mean_abs(x), w, c);
  ASSERT_EQ(r.alphas.size(), 11u);  // ModelOpt: 0, 0.1, ..., 1.0
  for (std::size_t i = 0; i < 11; ++i) EXPECT_NEAR(r.alphas[i], 0.1 * double(i), 1e-15) << i;
  EXPECT_EQ(r.alphas.back(), 1.0);
  const auto l = int4q::search_awq_scales(x, mean_abs(x), w, c, llm_awq_options());
  ASSERT_EQ(l.alphas.size(), 20u);  // llm-awq: 0, 0.05, ..., 0.95
  EXPECT_NEAR(l.alphas.back(), 0.95, 1e-15);
  awq_options o;
  o.alpha_step = 0.3;
  EXPECT_EQ(int4q::search_awq_scales(x, mean_abs(x), w, c, o).alphas.size(), 4u);  // ... 0.9
  o.alpha_max = 0;
  EXPECT_EQ(int4q::search_awq_scales(x, mean_abs(x), w, c, o).alphas.size(), 1u);
}

TEST(AwqScales, WeightStatMatchesDefinition) {
  for (const std::uint32_t seed : int4q_test::seeds()) {
    // K = 200 with group 64: a ragged last group; one column of W1 has an all-zero group.
    auto w1 = random_weight<float>(200, 24, dist::outliers, seed);
    const auto w2 = random_weight<float>(200, 40, dist::normal, seed + 1);
    for (std::size_t k = 64; k < 128; ++k) w1(k, 5) = 0.0f;
    for (const bool per_channel : {false, true}) {
      const quant_config c = config_of(int4q::scheme::asymmetric, 64, per_channel);
      const std::vector<xt::xtensor<float, 2>> ws{w1, w2};
      const auto got = int4q::awq_weight_stat(ws, c);
      const auto want = ref_weight_stat(ws, c);
      ASSERT_EQ(got.size(), want.size());
      for (std::size_t k = 0; k < want.size(); ++k) {
        ASSERT_TRUE(near_rel(want[k], got(k), tol_double_reorder_rel,
                             context(c, seed, "wbar[" + std::to_string(k) + "]")));
      }
    }
  }
}

TEST(AwqScales, ScaleFormulaMatchesDefinition) {
  const std::size_t K = 50;
  xt::xtensor<double, 1> xbar = xt::xtensor<double, 1>::from_shape({K});
  std::vector<double> wbar(K);
  for (std::size_t k = 0; k < K; ++k) {
    xbar(k) = k == 0 ? 0.0 : (k == 1 ? 1e9 : 0.01 + 0.37 * double(k));  // 0: clamped below
    wbar[k] = k == 2 ? 0.0 : 0.05 + 0.011 * double(k);                  // 0: clamped above
  }
  awq_options autoawq;
  autoawq.weight_eps = 1e-4;
  autoawq.scale_max = std::numeric_limits<double>::infinity();
  for (const awq_options& o : {awq_options{}, llm_awq_options(), autoawq}) {
    for (const double alpha : {0.0, 0.05, 0.3, 0.5, 0.95, 1.0}) {
      const auto got = int4q::awq_scale_for_alpha(xbar, to_tensor(wbar), alpha, o);
      const auto want = ref_scales(xbar, wbar, alpha, o);
      for (std::size_t k = 0; k < K; ++k) {
        ASSERT_TRUE(near_rel(want[k], got(k), tol_double_reorder_rel,
                             "alpha=" + std::to_string(alpha) + " k=" + std::to_string(k) +
                                 " form=" + std::to_string(int(o.form))));
      }
    }
  }
  // The activation form at alpha = 0 is exactly s = 1 (plain RTN).
  const auto ones = int4q::awq_scale_for_alpha(xbar, to_tensor(wbar), 0.0, llm_awq_options());
  for (std::size_t k = 0; k < K; ++k) EXPECT_EQ(ones(k), 1.0) << k;
}

TEST(AwqScales, LossPerAlphaMatchesScalarReference) {
  const std::size_t S = 24, K = 200, N1 = 20, N2 = 12;
  const std::vector<quant_config> configs = {config_of(int4q::scheme::asymmetric, 64),
                                             config_of(int4q::scheme::symmetric, 32),
                                             config_of(int4q::scheme::asymmetric, 0, true)};
  for (const std::uint32_t seed : {1u, 42u}) {
    const auto x = activations(S, K, true, seed);
    const std::vector<xt::xtensor<float, 2>> ws{
        random_weight<float>(K, N1, dist::normal, seed),
        random_weight<float>(K, N2, dist::normal, seed + 9)};
    for (const quant_config& c : configs) {
      for (const awq_options& o : {awq_options{}, llm_awq_options()}) {
        const auto r = int4q::search_awq_scales(x, mean_abs(x), ws, c, o);
        const auto wbar = int4q::awq_weight_stat(ws, c);
        const std::string ctx = context(c, seed, "form=" + std::to_string(int(o.form)));
        EXPECT_TRUE(near_rel(ref_awq_loss(x, ws, std::vector<float>(K, 1.0f), c), r.rtn_loss,
                             tol_awq_loss_rel, ctx + " rtn"));
        for (const std::size_t i : {std::size_t(0), r.alphas.size() / 2, r.alphas.size() - 1}) {
          const auto s = to_float(int4q::awq_scale_for_alpha(mean_abs(x), wbar, r.alphas[i], o));
          EXPECT_TRUE(near_rel(ref_awq_loss(x, ws, s, c), r.losses[i], tol_awq_loss_rel,
                               ctx + " alpha=" + std::to_string(r.alphas[i])));
        }
        // The chosen scales are those of the best alpha (or 1), and its loss is the minimum.
        const auto best = std::min_element(r.losses.begin(), r.losses.end());
        EXPECT_EQ(r.alpha, r.alphas[std::size_t(best - r.losses.begin())]) << ctx;
        EXPECT_EQ(r.loss, std::min(*best, r.rtn_loss)) << ctx;
        const auto s = r.identity
                           ? std::vector<float>(K, 1.0f)
                           : to_float(int4q::awq_scale_for_alpha(mean_abs(x), wbar, r.alpha, o));
        for (std::size_t k = 0; k < K; ++k) ASSERT_EQ(r.scales(k), s[k]) << ctx << " k=" << k;
      }
    }
  }
}

TEST(AwqScales, DoubleWeightsMatchScalarReference) {
  const std::size_t S = 16, K = 96, N = 10;
  const auto x = activations(S, K, true, 5);
  const std::vector<xt::xtensor<double, 2>> ws{random_weight<double>(K, N, dist::normal, 5)};
  const quant_config c = config_of(int4q::scheme::asymmetric, 32);
  const auto r = int4q::search_awq_scales(x, mean_abs(x), ws, c);
  static_assert(std::is_same<decltype(r.scales)::value_type, double>::value, "double weights");
  const auto wbar = int4q::awq_weight_stat(ws, c);
  for (std::size_t i = 0; i < r.alphas.size(); i += 5) {
    const auto sd = int4q::awq_scale_for_alpha(mean_abs(x), wbar, r.alphas[i]);
    const std::vector<double> s(sd.begin(), sd.end());
    EXPECT_TRUE(near_rel(ref_awq_loss(x, ws, s, c), r.losses[i], tol_awq_loss_rel,
                         "double alpha=" + std::to_string(r.alphas[i])));
  }
}

TEST(AwqScales, NeverWorseThanRtnAndBetterWithOutlierChannels) {
  const std::size_t S = 32, K = 256, N = 48;
  for (const std::uint32_t seed : int4q_test::seeds()) {
    for (const bool outliers : {false, true}) {
      for (const awq_options& o : {awq_options{}, llm_awq_options()}) {
        const auto x = activations(S, K, outliers, seed);
        const std::vector<xt::xtensor<float, 2>> ws{random_weight<float>(K, N, dist::normal, seed)};
        const quant_config c = config_of(int4q::scheme::asymmetric, 64);
        const auto r = int4q::search_awq_scales(x, mean_abs(x), ws, c, o);
        const std::string ctx = context(
            c, seed,
            std::string(outliers ? "outliers" : "plain") + " form=" + std::to_string(int(o.form)));
        EXPECT_LE(r.loss, r.rtn_loss) << ctx;
        for (double l : r.losses) EXPECT_LE(r.loss, l) << ctx;
        if (!outliers) continue;
        // Independently: the reference loss at the chosen scales is well below RTN's.
        const std::vector<float> s(r.scales.begin(), r.scales.end());
        const double chosen = ref_awq_loss(x, ws, s, c);
        const double rtn = ref_awq_loss(x, ws, std::vector<float>(K, 1.0f), c);
        EXPECT_FALSE(r.identity) << ctx;
        EXPECT_LT(chosen, (1.0 - min_awq_gain_with_outliers) * rtn)
            << ctx << " chosen alpha " << r.alpha << ", gain " << 1.0 - chosen / rtn;
      }
    }
  }
}

TEST(AwqScales, RtnWinsWhenEveryAlphaIsWorse) {
  // Grid {0} of the weight form: s = 1 / wbar. Row 0 holds every column's group maximum (1.0,
  // exact under the symmetric grid: code 7) and feeds a channel 1000x larger than the rest; the
  // other rows (wbar ~ 0.016) get ~60x larger scales, so row 0 stops being the group maximum and
  // its error, amplified by the large channel, makes alpha = 0 worse than RTN.
  const std::size_t S = 16, K = 64, N = 16;
  auto x = activations(S, K, false, 9);
  for (std::size_t t = 0; t < S; ++t) x(t, 0) *= 1000.0f;
  auto w = random_weight<float>(K, N, dist::normal, 9);
  for (std::size_t n = 0; n < N; ++n) w(0, n) = 1.0f;
  const quant_config c = config_of(int4q::scheme::symmetric, 32);
  awq_options o;
  o.alpha_max = 0;
  const auto r = int4q::search_awq_scales(x, mean_abs(x), w, c, o);
  ASSERT_EQ(r.losses.size(), 1u);
  EXPECT_LT(r.rtn_loss, r.losses[0]);
  EXPECT_TRUE(r.identity);
  EXPECT_EQ(r.loss, r.rtn_loss);
  for (std::size_t k = 0; k < K; ++k) EXPECT_EQ(r.scales(k), 1.0f) << k;
}

TEST(AwqScales, JointSearchSumsMemberLosses) {
  const std::size_t S = 20, K = 128;
  const auto x = activations(S, K, true, 3);
  const auto w1 = random_weight<float>(K, 30, dist::normal, 3);
  const auto w2 = random_weight<float>(K, 600, dist::outliers, 4);  // 2 column blocks
  const std::vector<xt::xtensor<float, 2>> both{w1, w2}, only1{w1}, only2{w2};
  const quant_config c = config_of(int4q::scheme::asymmetric, 32);
  // Activation form: s does not depend on W, so every loss is the sum of the members' losses.
  const awq_options act = llm_awq_options();
  const auto j = int4q::search_awq_scales(x, mean_abs(x), both, c, act);
  const auto a = int4q::search_awq_scales(x, mean_abs(x), only1, c, act);
  const auto b = int4q::search_awq_scales(x, mean_abs(x), only2, c, act);
  EXPECT_EQ(j.rtn_loss, a.rtn_loss + b.rtn_loss);
  for (std::size_t i = 0; i < j.losses.size(); ++i) {
    EXPECT_EQ(j.losses[i], a.losses[i] + b.losses[i]) << "alpha " << j.alphas[i];
  }
  // Weight form: one wbar over the columns of both weights, and the summed loss at its scales.
  const auto jw = int4q::search_awq_scales(x, mean_abs(x), both, c);
  const auto wbar = int4q::awq_weight_stat(both, c);
  const auto ref_wbar = ref_weight_stat(both, c);
  for (std::size_t k = 0; k < K; ++k) {
    ASSERT_TRUE(near_rel(ref_wbar[k], wbar(k), tol_double_reorder_rel, "joint wbar"));
  }
  for (std::size_t i = 0; i < jw.losses.size(); ++i) {
    const auto s = int4q::awq_scale_for_alpha(mean_abs(x), wbar, jw.alphas[i]);
    const double l1 = int4q::awq_loss(x, only1, s, c), l2 = int4q::awq_loss(x, only2, s, c);
    EXPECT_EQ(jw.losses[i], l1 + l2) << "alpha " << jw.alphas[i];
    EXPECT_TRUE(
        near_rel(ref_awq_loss(x, only1, to_float(s), c) + ref_awq_loss(x, only2, to_float(s), c),
                 jw.losses[i], tol_awq_loss_rel, "joint reference"));
  }
}

TEST(AwqScales, ThreadsAndStatsOverloadGiveTheSameResult) {
  const std::size_t S = 40, K = 64, N = 1100;  // 3 column blocks
  const auto x = activations(S, K, true, 11);
  const std::vector<xt::xtensor<float, 2>> ws{random_weight<float>(K, N, dist::normal, 11)};
  const quant_config c = config_of(int4q::scheme::symmetric, 32);
  awq_options o1, o3;
  o3.threads = 3;
  const auto r1 = int4q::search_awq_scales(x, mean_abs(x), ws, c, o1);
  const auto r3 = int4q::search_awq_scales(x, mean_abs(x), ws, c, o3);
  EXPECT_EQ(r1.losses, r3.losses);
  EXPECT_TRUE(int4q_test::all_equal(r1.scales, r3.scales, "threads"));
  int4q::activation_stats_options so;
  so.hessian = false;
  so.sample_rows = S;
  int4q::activation_stats stats(K, so);
  stats.add(x);
  const auto rs = int4q::search_awq_scales(stats, ws, c, o1);
  // The sample holds all S rows in order (rows <= sample_rows) and mean_abs is the same sum.
  EXPECT_EQ(rs.alpha, r1.alpha);
  for (std::size_t i = 0; i < r1.losses.size(); ++i) {
    EXPECT_TRUE(near_rel(r1.losses[i], rs.losses[i], tol_double_reorder_rel, "stats"));
  }
}

TEST(AwqScales, FoldingIsExactBeforeQuantization) {
  const std::size_t S = 16, K = 72, N = 9;
  const auto x = activations(S, K, true, 2);
  const auto w = random_weight<float>(K, N, dist::normal, 2);
  xt::xtensor<double, 1> s = xt::xtensor<double, 1>::from_shape({K});
  xt::xtensor<double, 1> p2 = xt::xtensor<double, 1>::from_shape({K});
  for (std::size_t k = 0; k < K; ++k) {
    s(k) = 0.013 + 3.7 * double((k * 37) % 11);
    p2(k) = std::ldexp(1.0, int(k % 13) - 6);
  }
  for (const bool power_of_two : {false, true}) {
    const auto& sc = power_of_two ? p2 : s;
    const auto ws = int4q::apply_awq_scales(w, sc);
    for (std::size_t k = 0; k < K; ++k) {
      for (std::size_t n = 0; n < N; ++n) {
        ASSERT_EQ(ws(k, n), static_cast<float>(sc(k)) * w(k, n));  // one rounding in float
      }
    }
    for (std::size_t t = 0; t < S; ++t) {
      for (std::size_t n = 0; n < N; ++n) {
        double folded = 0, plain = 0, bound = 0;
        for (std::size_t k = 0; k < K; ++k) {
          const float xs = x(t, k) / static_cast<float>(sc(k));  // the caller's fold, in float
          folded += double(xs) * double(ws(k, n));
          plain += double(x(t, k)) * double(w(k, n));
          bound += std::abs(double(x(t, k)) * double(w(k, n)));
        }
        if (power_of_two) {
          ASSERT_EQ(folded, plain) << "t=" << t << " n=" << n;
        } else {
          ASSERT_LE(std::abs(folded - plain), tol_fold_rel * bound) << "t=" << t << " n=" << n;
        }
      }
    }
  }
}

// ---- Clip search -------------------------------------------------------------------------------

TEST(AwqClip, ObjectiveMatchesScalarReferenceAndNeverWorseThanNoClip) {
  const std::size_t S = 24, K = 160, N = 21;
  const std::vector<quant_config> configs = {config_of(int4q::scheme::asymmetric, 64),
                                             config_of(int4q::scheme::symmetric, 32),
                                             config_of(int4q::scheme::symmetric_full_range, 128)};
  for (const std::uint32_t seed : int4q_test::seeds()) {
    const auto x = activations(S, K, true, seed);
    const auto w = random_weight<float>(K, N, dist::outliers, seed);
    for (const quant_config& c : configs) {
      for (const double clip_min : {0.5, 0.55}) {
        awq_clip_options o;
        o.clip_min = clip_min;
        const auto r = int4q::search_awq_clip(x, w, c, o);
        const std::string ctx = context(c, seed, "clip_min=" + std::to_string(clip_min));
        const std::size_t G = int4q_ref::group_count(c, K);
        ASSERT_EQ(r.ratios.shape()[0], G);
        ASSERT_EQ(r.ratios.shape()[1], N);
        // Candidates 1, 0.95, ... >= clip_min (as float).
        std::vector<float> cand;
        for (int i = 0; 1.0 - 0.05 * i >= clip_min - 1e-12; ++i) {
          cand.push_back(static_cast<float>(1.0 - 0.05 * i));
        }
        ASSERT_EQ(cand.size(), clip_min == 0.5 ? 11u : 10u);
        std::vector<std::vector<double>> per_cand;
        for (const float rc : cand) {
          const xt::xtensor<float, 2> ratios = xt::xtensor<float, 2>(xt::ones<float>({G, N})) * rc;
          per_cand.push_back(ref_group_objective(x, w, ref_qdq(w, c, &ratios), c));
        }
        const auto chosen = ref_group_objective(x, w, ref_qdq(w, c, &r.ratios), c);
        EXPECT_TRUE(near_rel(sum(chosen), r.loss, tol_clip_loss_rel, ctx + " loss"));
        EXPECT_TRUE(near_rel(sum(per_cand[0]), r.loss_at_max, tol_clip_loss_rel, ctx + " at 1"));
        EXPECT_LE(r.loss, r.loss_at_max) << ctx;
        for (std::size_t i = 0; i < G * N; ++i) {
          const float ratio = r.ratios.data()[i];
          ASSERT_NE(std::find(cand.begin(), cand.end(), ratio), cand.end()) << ctx << " " << ratio;
          double best = per_cand[0][i];
          for (const auto& pc : per_cand) best = std::min(best, pc[i]);
          ASSERT_LE(chosen[i], best + tol_clip_loss_rel * per_cand[0][i])
              << ctx << " group " << i / N << " column " << i % N;
          ASSERT_LE(chosen[i], per_cand[0][i] * (1 + tol_clip_loss_rel)) << ctx;
        }
      }
    }
  }
}

TEST(AwqClip, ClippingHelpsOnHeavyTails) {
  // Outlier weights make plain RTN waste range: some group must pick a ratio below 1.
  const auto x = activations(32, 128, false, 7);
  const auto w = random_weight<float>(128, 32, dist::outliers, 7);
  const auto r = int4q::search_awq_clip(x, w, config_of(int4q::scheme::asymmetric, 32));
  EXPECT_LT(r.loss, r.loss_at_max);
  EXPECT_LT(*std::min_element(r.ratios.begin(), r.ratios.end()), 1.0f);
}

TEST(AwqClip, ThreadsDoNotChangeResult) {
  const auto x = activations(16, 96, true, 8);
  const auto w = random_weight<float>(96, 700, dist::normal, 8);
  const quant_config c = config_of(int4q::scheme::asymmetric, 32);
  awq_clip_options o3;
  o3.threads = 3;
  const auto a = int4q::search_awq_clip(x, w, c);
  const auto b = int4q::search_awq_clip(x, w, c, o3);
  EXPECT_TRUE(int4q_test::all_equal(a.ratios, b.ratios, "threads"));
  EXPECT_EQ(a.loss, b.loss);
  EXPECT_EQ(a.loss_at_max, b.loss_at_max);
}

// ---- awq_full ----------------------------------------------------------------------------------

TEST(AwqFull, IsLiteThenClipOnTheScaledWeights) {
  const std::size_t S = 24, K = 128;
  const auto x = activations(S, K, true, 4);
  const std::vector<xt::xtensor<float, 2>> ws{random_weight<float>(K, 40, dist::normal, 4),
                                              random_weight<float>(K, 24, dist::outliers, 5)};
  const quant_config c = config_of(int4q::scheme::asymmetric, 32);
  const auto f = int4q::search_awq_full(x, mean_abs(x), ws, c);
  const auto lite = int4q::search_awq_scales(x, mean_abs(x), ws, c);
  EXPECT_EQ(f.lite.losses, lite.losses);
  EXPECT_TRUE(int4q_test::all_equal(lite.scales, f.lite.scales, "lite scales"));
  ASSERT_EQ(f.clips.size(), ws.size());
  xt::xtensor<float, 2> xs = x;
  for (std::size_t t = 0; t < S; ++t) {
    for (std::size_t k = 0; k < K; ++k) xs(t, k) = x(t, k) / lite.scales(k);
  }
  for (std::size_t j = 0; j < ws.size(); ++j) {
    const auto scaled = int4q::apply_awq_scales(ws[j], lite.scales);
    const auto clip = int4q::search_awq_clip(xs, scaled, c);
    EXPECT_TRUE(int4q_test::all_equal(clip.ratios, f.clips[j].ratios, "clip ratios"));
    EXPECT_EQ(clip.loss, f.clips[j].loss);
    EXPECT_LE(f.clips[j].loss, f.clips[j].loss_at_max);
    // Applying: quant_tensor with the ratios reproduces the reference quantization exactly.
    const auto q = int4q::quant_tensor(scaled, c, f.clips[j].ratios);
    const auto ref = int4q_ref::quantize(scaled, c, &f.clips[j].ratios);
    EXPECT_TRUE(int4q_test::all_equal(ref.codes, q.codes, "codes with ratios"));
  }
}

// ---- Errors ------------------------------------------------------------------------------------

TEST(Awq, BadShapesAndOptionsThrow) {
  const std::size_t K = 64;
  const auto x = activations(8, K, false, 1);
  const auto m = mean_abs(x);
  const auto w = random_weight<float>(K, 8, dist::normal, 1);
  const quant_config c = config_of(int4q::scheme::asymmetric, 32);
  const auto x_bad = activations(8, K + 1, false, 1);
  const xt::xtensor<float, 2> x_empty = xt::xtensor<float, 2>::from_shape({0, K});
  const auto w_other_k = random_weight<float>(K + 32, 8, dist::normal, 1);
  using ws_t = std::vector<xt::xtensor<float, 2>>;

  EXPECT_THROW(int4q::search_awq_scales(x_bad, m, w, c), int4q::shape_error);
  EXPECT_THROW(int4q::search_awq_scales(x_empty, m, w, c), int4q::shape_error);
  EXPECT_THROW(int4q::search_awq_scales(x, mean_abs(x_bad), w, c), int4q::shape_error);
  EXPECT_THROW(int4q::search_awq_scales(x, m, ws_t{}, c), int4q::shape_error);
  EXPECT_THROW(int4q::search_awq_scales(x, m, ws_t{w, w_other_k}, c), int4q::shape_error);
  auto m_neg = m;
  m_neg(3) = -1;
  EXPECT_THROW(int4q::search_awq_scales(x, m_neg, w, c), int4q::shape_error);
  m_neg(3) = std::numeric_limits<double>::quiet_NaN();
  EXPECT_THROW(int4q::search_awq_scales(x, m_neg, w, c), int4q::shape_error);

  auto bad_opt = [&](auto set) {
    awq_options o;
    set(o);
    EXPECT_THROW(int4q::search_awq_scales(x, m, w, c, o), int4q::config_error);
  };
  bad_opt([](awq_options& o) { o.alpha_step = 0; });
  bad_opt([](awq_options& o) { o.alpha_step = 1.5; });
  bad_opt([](awq_options& o) { o.alpha_step = std::numeric_limits<double>::quiet_NaN(); });
  bad_opt([](awq_options& o) { o.alpha_max = 1.1; });
  bad_opt([](awq_options& o) { o.scale_min = 0; });
  bad_opt([](awq_options& o) { o.scale_max = 1e-5; });
  bad_opt([](awq_options& o) { o.weight_eps = -1; });
  bad_opt([](awq_options& o) {
    o.weight_eps = 0;
    o.scale_max = std::numeric_limits<double>::infinity();
  });
  quant_config bad_bits = c;
  bad_bits.bits = 9;
  EXPECT_THROW(int4q::search_awq_scales(x, m, w, bad_bits), int4q::config_error);
  EXPECT_THROW(int4q::awq_scale_for_alpha(m, m, 1.5), int4q::config_error);
  EXPECT_THROW(int4q::awq_scale_for_alpha(m, mean_abs(x_bad), 0.5), int4q::shape_error);

  auto bad_clip = [&](double clip_min, double clip_step) {
    awq_clip_options o;
    o.clip_min = clip_min;
    o.clip_step = clip_step;
    EXPECT_THROW(int4q::search_awq_clip(x, w, c, o), int4q::config_error);
  };
  bad_clip(0.0, 0.05);
  bad_clip(1.2, 0.05);
  bad_clip(0.5, 0.0);
  bad_clip(0.5, -0.1);
  EXPECT_THROW(int4q::search_awq_clip(x_bad, w, c), int4q::shape_error);

  xt::xtensor<double, 1> s = xt::ones<double>({K});
  EXPECT_THROW(int4q::apply_awq_scales(w, xt::xtensor<double, 1>(xt::ones<double>({K - 1}))),
               int4q::shape_error);
  s(5) = 0;
  EXPECT_THROW(int4q::apply_awq_scales(w, s), int4q::shape_error);
  EXPECT_THROW(int4q::awq_loss(x, ws_t{w}, s, c), int4q::shape_error);
  s(5) = 1e300;  // not a float
  EXPECT_THROW(int4q::apply_awq_scales(w, s), int4q::shape_error);

  int4q::activation_stats no_sample(K);
  no_sample.add(x);
  EXPECT_THROW(int4q::search_awq_scales(no_sample, ws_t{w}, c), int4q::shape_error);
}

TEST(Awq, NonFiniteInputsAreNamed) {
  const std::size_t K = 64;
  auto x = activations(8, K, false, 1);
  auto w = random_weight<float>(K, 8, dist::normal, 1);
  const auto m = mean_abs(x);
  const quant_config c = config_of(int4q::scheme::asymmetric, 32);
  w(10, 3) = std::numeric_limits<float>::infinity();
  try {
    int4q::search_awq_scales(x, m, w, c);
    ADD_FAILURE() << "no error for an Inf weight";
  } catch (const int4q::non_finite_error& e) {
    EXPECT_EQ(e.row(), 10u);
    EXPECT_EQ(e.col(), 3u);
  }
  EXPECT_THROW(int4q::search_awq_clip(x, w, c), int4q::non_finite_error);
  w(10, 3) = 0;
  x(2, 7) = std::numeric_limits<float>::quiet_NaN();
  try {
    int4q::search_awq_clip(x, w, c);
    ADD_FAILURE() << "no error for a NaN activation";
  } catch (const int4q::non_finite_error& e) {
    EXPECT_EQ(e.row(), 2u);
    EXPECT_EQ(e.col(), 7u);
  }
  EXPECT_THROW(int4q::search_awq_scales(x, m, w, c), int4q::non_finite_error);
}

}  // namespace
