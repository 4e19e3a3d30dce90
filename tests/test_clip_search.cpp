// search_clip (clip_search.hpp): properties on seeded random weights. The objective is
// recomputed independently: the returned ratios are applied with quant_tensor(w, config, ratios)
// and dequant, then L = sum_k imp[k] * |W[k, n] - Q[k, n]|^p is summed in double here. The
// per-group, per-column and per-tensor choices are checked against a brute force over the
// candidate grid that quantizes the whole weight once per candidate.
#include <gtest/gtest.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <int4q/quant.hpp>

#include "test_util.hpp"

namespace {

using int4q::clip_granularity;
using int4q::clip_search_options;
using int4q::quant_config;
using int4q_test::dist;

/// Relative difference allowed between int4q's loss and the recomputation here: both are
/// double sums of the same float-derived terms, possibly added in a different order (about
/// n * eps(double) ~ 1e-13 relative for these sizes); 1e-9 leaves a wide margin and is still far
/// below the loss differences between neighbouring candidates.
constexpr double tol_loss_rel = 1e-9;

const char* to_string(clip_granularity g) {
  switch (g) {
    case clip_granularity::tensor: return "tensor";
    case clip_granularity::column: return "column";
    case clip_granularity::group: return "group";
  }
  return "?";
}

std::string context(const quant_config& c, const clip_search_options& o, bool weighted,
                    std::uint32_t seed) {
  std::ostringstream s;
  s << int4q_test::describe(c) << " granularity=" << to_string(o.granularity)
    << " steps=" << o.steps << " ratios=[" << o.min_ratio << ", " << o.max_ratio
    << "] norm=" << o.norm << (weighted ? " weighted" : " unweighted") << " seed=" << seed;
  return s.str();
}

/// Candidates as documented: `steps` ratios evenly spaced from max_ratio down to min_ratio.
std::vector<float> candidate_grid(const clip_search_options& o) {
  std::vector<float> r;
  for (std::size_t i = 0; i < o.steps; ++i) {
    const double f = o.steps == 1 ? 0.0 : static_cast<double>(i) / static_cast<double>(o.steps - 1);
    r.push_back(static_cast<float>(o.max_ratio - f * (o.max_ratio - o.min_ratio)));
  }
  return r;
}

/// Positive importances (e.g. mean square activations), spread over two orders of magnitude.
xt::xtensor<float, 1> random_importance(std::size_t K, std::uint32_t seed) {
  std::mt19937 gen(seed ^ 0x5eedu);
  auto imp = xt::xtensor<float, 1>::from_shape({K});
  for (std::size_t k = 0; k < K; ++k) {
    const double u = (static_cast<double>(gen()) + 0.5) / 4294967296.0;
    imp(k) = static_cast<float>(std::pow(10.0, 2.0 * u - 1.0));
  }
  return imp;
}

/// Per (group, column) objective of the fake-quantized q against w: err[g][n] summed over the
/// group's rows in K order. imp may be null (all ones).
std::vector<double> group_errors(const xt::xtensor<float, 2>& w, const xt::xtensor<float, 2>& q,
                                 std::size_t gs, const xt::xtensor<float, 1>* imp, double p) {
  const std::size_t K = w.shape()[0], N = w.shape()[1], G = (K + gs - 1) / gs;
  std::vector<double> err(G * N, 0.0);
  for (std::size_t k = 0; k < K; ++k) {
    const double wk = imp ? static_cast<double>((*imp)(k)) : 1.0;
    for (std::size_t n = 0; n < N; ++n) {
      const double d = std::abs(static_cast<double>(w(k, n)) - static_cast<double>(q(k, n)));
      err[(k / gs) * N + n] += wk * (p == 2.0 ? d * d : std::pow(d, p));
    }
  }
  return err;
}

double sum(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return s;
}

/// Fake-quantized weight with every group's ratio set to `ratios`.
xt::xtensor<float, 2> apply(const xt::xtensor<float, 2>& w, const quant_config& c,
                            const xt::xtensor<float, 2>& ratios) {
  return int4q::dequant(int4q::quant_tensor(w, c, ratios));
}

xt::xtensor<float, 2> filled(std::size_t G, std::size_t N, float r) {
  auto t = xt::xtensor<float, 2>::from_shape({G, N});
  std::fill(t.begin(), t.end(), r);
  return t;
}

bool near(double a, double b) { return std::abs(a - b) <= tol_loss_rel * std::max(a, b); }

template <class R>
int4q::clip_search_result<float> search(const xt::xtensor<float, 2>& w, const quant_config& c,
                                        const xt::xtensor<float, 1>* imp, const R& o) {
  return imp ? int4q::search_clip(w, c, *imp, o) : int4q::search_clip(w, c, o);
}

/// Checks every documented property of one search result; `err[s]` are the per (group,
/// column) errors of candidate s (brute force).
void check_result(const xt::xtensor<float, 2>& w, const quant_config& c,
                  const xt::xtensor<float, 1>* imp, const clip_search_options& o,
                  const std::string& ctx) {
  const std::size_t K = w.shape()[0], N = w.shape()[1];
  const std::size_t gs = c.effective_group_size(K), G = c.num_groups(K);
  const auto res = search(w, c, imp, o);
  ASSERT_EQ(res.ratios.shape(), (std::array<std::size_t, 2>{G, N})) << ctx;

  // Brute force: each candidate applied everywhere, errors per (group, column).
  const std::vector<float> grid = candidate_grid(o);
  std::vector<std::vector<double>> err;
  for (float r : grid)
    err.push_back(group_errors(w, apply(w, c, filled(G, N, r)), gs, imp, o.norm));

  // Ratios are grid members; granularity shapes.
  std::vector<std::size_t> pick(G * N);
  for (std::size_t i = 0; i < G * N; ++i) {
    const float r = res.ratios.data()[i];
    std::size_t s = 0;
    while (s < grid.size() && grid[s] != r) ++s;
    ASSERT_LT(s, grid.size()) << ctx << ": ratio " << r << " at " << i << " is not a candidate";
    pick[i] = s;
  }
  for (std::size_t g = 0; g < G; ++g) {
    for (std::size_t n = 0; n < N; ++n) {
      if (o.granularity != clip_granularity::group) {
        EXPECT_EQ(res.ratios(g, n), res.ratios(0, n)) << ctx << ": not constant down column " << n;
      }
      if (o.granularity == clip_granularity::tensor) {
        EXPECT_EQ(res.ratios(g, n), res.ratios(0, 0)) << ctx << ": not one ratio for the tensor";
      }
    }
  }

  // loss and loss_at_max against the recomputed objective.
  const double loss = sum(group_errors(w, apply(w, c, res.ratios), gs, imp, o.norm));
  const double at_max = sum(err[0]);
  EXPECT_TRUE(near(res.loss, loss)) << ctx << ": loss " << res.loss << ", recomputed " << loss;
  EXPECT_TRUE(near(res.loss_at_max, at_max))
      << ctx << ": loss_at_max " << res.loss_at_max << ", recomputed " << at_max;
  if (o.max_ratio == 1.0) {
    EXPECT_LE(res.loss, res.loss_at_max) << ctx << ": clipping made the objective worse";
  }

  // Optimality: the chosen candidate's loss is the minimum over the grid for its unit (group,
  // column or tensor); an exact tie keeps the larger ratio (the earlier candidate).
  auto unit_loss = [&](std::size_t s, std::size_t unit) {
    double l = 0;
    if (o.granularity == clip_granularity::group) return err[s][unit];
    for (std::size_t g = 0; g < G; ++g) {
      if (o.granularity == clip_granularity::column) {
        l += err[s][g * N + unit];
      } else {
        for (std::size_t n = 0; n < N; ++n) l += err[s][g * N + n];
      }
    }
    return l;
  };
  const std::size_t units = o.granularity == clip_granularity::group
                                ? G * N
                                : (o.granularity == clip_granularity::column ? N : 1);
  for (std::size_t u = 0; u < units; ++u) {
    std::size_t best = 0;
    for (std::size_t s = 1; s < grid.size(); ++s) {
      if (unit_loss(s, u) < unit_loss(best, u)) best = s;
    }
    const std::size_t chosen = pick[o.granularity == clip_granularity::group ? u : u % N];
    const double lb = unit_loss(best, u), lc = unit_loss(chosen, u);
    EXPECT_TRUE(chosen == best || lc <= lb * (1 + tol_loss_rel))
        << ctx << ": unit " << u << " chose ratio " << grid[chosen] << " (loss " << lc
        << ") but ratio " << grid[best] << " has loss " << lb;
    for (std::size_t s = 0; s < chosen; ++s) {  // ties keep the larger ratio
      EXPECT_FALSE(unit_loss(s, u) == lc)
          << ctx << ": unit " << u << " ratio " << grid[s] << " ties the chosen " << grid[chosen];
    }
  }
}

// ---- Properties ---------------------------------------------------------------------------------

TEST(ClipSearch, OptimalNeverWorseAndLossRecomputes) {
  clip_search_options o;  // 51 candidates, 1.0 .. 0.5
  const std::vector<quant_config> configs = {int4q::presets::int4q(4, 16),
                                             int4q::presets::ort_matmulnbits(4, 32, true),
                                             int4q::presets::gptq(3, 16, true)};
  for (std::uint32_t seed : int4q_test::seeds()) {
    for (const quant_config& c : configs) {
      // Ragged K; column n scaled by n + 1, so that the columns weigh differently in the
      // tensor-wide objective (the last one most).
      auto w = int4q_test::random_weight<float>(45, 9, dist::outliers, seed);
      for (std::size_t k = 0; k < 45; ++k)
        for (std::size_t n = 0; n < 9; ++n) w(k, n) *= static_cast<float>(n + 1);
      const auto imp = random_importance(45, seed);
      for (auto g : {clip_granularity::tensor, clip_granularity::column, clip_granularity::group}) {
        o.granularity = g;
        for (bool weighted : {false, true}) {
          check_result(w, c, weighted ? &imp : nullptr, o, context(c, o, weighted, seed));
        }
      }
    }
  }
}

TEST(ClipSearch, PerChannelNorm24AndCustomGrid) {
  // GPTQ's mse search exponent 2.4, a coarser grid that does not start at 1, per-channel groups.
  clip_search_options o;
  o.norm = 2.4;
  o.steps = 9;
  o.max_ratio = 0.96;
  o.min_ratio = 0.6;
  quant_config c = int4q::presets::int4q(3, 128);
  c.granularity = int4q::grouping::per_channel;
  for (std::uint32_t seed : int4q_test::seeds()) {
    const auto w = int4q_test::random_weight<float>(40, 7, dist::normal, seed);
    const auto imp = random_importance(40, seed);
    for (auto g : {clip_granularity::tensor, clip_granularity::column, clip_granularity::group}) {
      o.granularity = g;
      for (bool weighted : {false, true}) {
        check_result(w, c, weighted ? &imp : nullptr, o, context(c, o, weighted, seed));
      }
    }
  }
}

TEST(ClipSearch, SingleCandidateIsPlainRtn) {
  // steps = 1: the only candidate is max_ratio = 1, so the result is RTN and the loss is
  // loss_at_max (never above it).
  clip_search_options o;
  o.steps = 1;
  for (std::uint32_t seed : int4q_test::seeds()) {
    const auto w = int4q_test::random_weight<float>(50, 13, dist::normal, seed);
    for (auto g : {clip_granularity::tensor, clip_granularity::column, clip_granularity::group}) {
      o.granularity = g;
      const auto res = int4q::search_clip(w, int4q::presets::int4q(4, 16), o);
      const std::string ctx = context(int4q::presets::int4q(4, 16), o, false, seed);
      for (float r : res.ratios) EXPECT_EQ(r, 1.0f) << ctx;
      EXPECT_LE(res.loss, res.loss_at_max) << ctx;
      EXPECT_TRUE(near(res.loss, res.loss_at_max)) << ctx;
    }
  }
}

TEST(ClipSearch, ImportanceScaleByPowerOfTwoScalesLossOnly) {
  // imp * 4 multiplies every term by 4 exactly: same ratios, loss * 4 exactly.
  for (std::uint32_t seed : int4q_test::seeds()) {
    const auto w = int4q_test::random_weight<float>(48, 6, dist::normal, seed);
    const auto imp = random_importance(48, seed);
    const xt::xtensor<float, 1> imp4 = imp * 4.0f;
    for (auto g : {clip_granularity::tensor, clip_granularity::column, clip_granularity::group}) {
      clip_search_options o;
      o.granularity = g;
      const auto a = int4q::search_clip(w, int4q::presets::int4q(4, 16), imp, o);
      const auto b = int4q::search_clip(w, int4q::presets::int4q(4, 16), imp4, o);
      const std::string ctx = std::string(to_string(g)) + " seed=" + std::to_string(seed);
      EXPECT_TRUE(int4q_test::all_equal(a.ratios, b.ratios, ctx));
      EXPECT_EQ(a.loss * 4, b.loss) << ctx;
      EXPECT_EQ(a.loss_at_max * 4, b.loss_at_max) << ctx;
    }
  }
}

TEST(ClipSearch, ZeroImportanceChannelsAreIgnored) {
  // A channel with importance 0 still takes part in its groups' ranges (it is quantized too),
  // but its own error must not count: changing its values anywhere inside its group's range
  // (so no group range changes) leaves ratios and losses bit-identical.
  const std::size_t K = 48, N = 10, gs = 16;
  const std::vector<std::size_t> dead = {3, 17, 18, 40, 47};
  for (std::uint32_t seed : int4q_test::seeds()) {
    auto w1 = int4q_test::random_weight<float>(K, N, dist::outliers, seed);
    auto imp = random_importance(K, seed);
    for (std::size_t k : dead) imp(k) = 0.0f;
    // Range of each (group, column) over the live rows; dead rows are moved inside it.
    auto w2 = w1;
    std::mt19937 gen(seed);
    for (std::size_t g = 0; g < K / gs; ++g) {
      for (std::size_t n = 0; n < N; ++n) {
        float lo = std::numeric_limits<float>::infinity(), hi = -lo;
        for (std::size_t k = g * gs; k < (g + 1) * gs; ++k) {
          if (imp(k) == 0.0f) continue;
          lo = std::min(lo, w1(k, n));
          hi = std::max(hi, w1(k, n));
        }
        for (std::size_t k : dead) {
          if (k / gs != g) continue;
          const float u1 = static_cast<float>(gen() % 1001u) / 1000.0f;
          const float u2 = static_cast<float>(gen() % 1001u) / 1000.0f;
          w1(k, n) = lo + u1 * (hi - lo);
          w2(k, n) = lo + u2 * (hi - lo);
          w1(k, n) = std::min(std::max(w1(k, n), lo), hi);
          w2(k, n) = std::min(std::max(w2(k, n), lo), hi);
        }
      }
    }
    for (auto g : {clip_granularity::tensor, clip_granularity::column, clip_granularity::group}) {
      clip_search_options o;
      o.granularity = g;
      const auto a = int4q::search_clip(w1, int4q::presets::int4q(4, gs), imp, o);
      const auto b = int4q::search_clip(w2, int4q::presets::int4q(4, gs), imp, o);
      const std::string ctx = std::string(to_string(g)) + " seed=" + std::to_string(seed);
      EXPECT_TRUE(int4q_test::all_equal(a.ratios, b.ratios, ctx));
      EXPECT_EQ(a.loss, b.loss) << ctx;
      EXPECT_EQ(a.loss_at_max, b.loss_at_max) << ctx;
      // And the weighted objective is not the unweighted one: the dead rows do move it there.
      const auto ua = int4q::search_clip(w1, int4q::presets::int4q(4, gs), o);
      const auto ub = int4q::search_clip(w2, int4q::presets::int4q(4, gs), o);
      EXPECT_NE(ua.loss_at_max, ub.loss_at_max) << ctx << ": the test data do not move dead rows";
    }
  }
}

TEST(ClipSearch, ThreadCountDoesNotChangeResult) {
  // N = 600 spans three column tiles, so 2 and 0 (all) threads really split the work.
  const auto w = int4q_test::random_weight<float>(24, 600, dist::outliers, 99);
  const auto imp = random_importance(24, 99);
  for (auto g : {clip_granularity::tensor, clip_granularity::column, clip_granularity::group}) {
    clip_search_options o;
    o.granularity = g;
    o.steps = 11;
    o.threads = 1;
    const auto one = int4q::search_clip(w, int4q::presets::int4q(4, 8), imp, o);
    for (std::size_t t : {2u, 0u}) {
      o.threads = t;
      const auto other = int4q::search_clip(w, int4q::presets::int4q(4, 8), imp, o);
      const std::string ctx = std::string(to_string(g)) + " threads=" + std::to_string(t);
      EXPECT_TRUE(int4q_test::all_equal(one.ratios, other.ratios, ctx));
      EXPECT_EQ(one.loss, other.loss) << ctx;
      EXPECT_EQ(one.loss_at_max, other.loss_at_max) << ctx;
    }
  }
}

TEST(ClipSearch, OutlierGroupIsClippedAndErrorDrops) {
  // Group 128 of N(0, 1) values at 3 bits with one value at +4.5: the range is set by the single
  // outlier, and the 127 other values lose more to the coarse step than clipping costs it. The
  // other column has no outlier (largest |w| about 3): its ratio is checked only for membership.
  const std::size_t K = 128;
  for (std::uint32_t seed : int4q_test::seeds()) {
    auto w = int4q_test::random_weight<float>(K, 2, dist::normal, seed);
    for (std::size_t k = 0; k < K; ++k) w(k, 0) = std::max(std::min(w(k, 0), 3.0f), -3.0f);
    w(77, 0) = 4.5f;
    const quant_config c = int4q::presets::int4q(3, K);
    const auto res = int4q::search_clip(w, c);
    const std::string ctx = "seed=" + std::to_string(seed);
    EXPECT_LT(res.ratios(0, 0), 1.0f) << ctx;
    EXPECT_LT(res.loss, res.loss_at_max) << ctx;
    const auto e_clip = group_errors(w, apply(w, c, res.ratios), K, nullptr, 2.0);
    const auto e_rtn = group_errors(w, int4q::dequant(int4q::quant_tensor(w, c)), K, nullptr, 2.0);
    EXPECT_LT(e_clip[0], e_rtn[0]) << ctx << ": the outlier group's error did not drop";
    EXPECT_LE(e_clip[1], e_rtn[1]) << ctx;
  }
}

// ---- Errors -------------------------------------------------------------------------------------

TEST(ClipSearchErrors, InvalidOptionsAreConfigErrors) {
  const auto w = int4q_test::random_weight<float>(16, 3, dist::normal, 1);
  const quant_config c = int4q::presets::int4q(4, 8);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  auto with = [](auto f) {
    clip_search_options o;
    f(o);
    return o;
  };
  const std::vector<clip_search_options> bad = {
      with([](clip_search_options& o) { o.max_ratio = 0; }),
      with([](clip_search_options& o) { o.max_ratio = 1.5; }),
      with([&](clip_search_options& o) { o.max_ratio = nan; }),
      with([](clip_search_options& o) { o.min_ratio = 0; }),
      with([](clip_search_options& o) { o.min_ratio = -0.5; }),
      with([&](clip_search_options& o) { o.min_ratio = nan; }),
      with([](clip_search_options& o) {
        o.max_ratio = 0.6;
        o.min_ratio = 0.7;
      }),
      with([](clip_search_options& o) { o.steps = 0; }),
      with([](clip_search_options& o) { o.norm = 0; }),
      with([](clip_search_options& o) { o.norm = -2; }),
      with([&](clip_search_options& o) { o.norm = inf; }),
      with([&](clip_search_options& o) { o.norm = nan; }),
  };
  for (std::size_t i = 0; i < bad.size(); ++i) {
    EXPECT_THROW(int4q::search_clip(w, c, bad[i]), int4q::config_error) << "case " << i;
  }
  quant_config bits9 = c;
  bits9.bits = 9;
  EXPECT_THROW(int4q::search_clip(w, bits9), int4q::config_error);
  quant_config group0 = c;
  group0.group_size = 0;
  EXPECT_THROW(int4q::search_clip(w, group0), int4q::config_error);
  // Valid edge values.
  EXPECT_NO_THROW(int4q::search_clip(w, c, with([](clip_search_options& o) {
                                       o.max_ratio = 1;
                                       o.min_ratio = 1;
                                       o.steps = 3;
                                     })));
}

TEST(ClipSearchErrors, ImportanceMustMatchAndBeNonNegative) {
  const auto w = int4q_test::random_weight<float>(16, 3, dist::normal, 1);
  const quant_config c = int4q::presets::int4q(4, 8);
  EXPECT_THROW(int4q::search_clip(w, c, random_importance(15, 1)), int4q::shape_error);
  EXPECT_THROW(int4q::search_clip(w, c, random_importance(17, 1)), int4q::shape_error);
  for (float bad : {-1.0f, -0.0001f, std::numeric_limits<float>::quiet_NaN(),
                    std::numeric_limits<float>::infinity()}) {
    auto imp = random_importance(16, 1);
    imp(5) = bad;
    EXPECT_THROW(int4q::search_clip(w, c, imp), int4q::shape_error) << "importance " << bad;
  }
  auto zeros = random_importance(16, 1);
  zeros.fill(0.0f);
  const auto res = int4q::search_clip(w, c, zeros);  // all-zero importance is valid: loss 0
  EXPECT_EQ(res.loss, 0.0);
  EXPECT_EQ(res.loss_at_max, 0.0);
  for (float r : res.ratios) EXPECT_EQ(r, 1.0f) << "ties keep the largest ratio";
}

TEST(ClipSearchErrors, NonFiniteWeightIsReported) {
  auto w = int4q_test::random_weight<float>(16, 3, dist::normal, 1);
  w(9, 2) = std::numeric_limits<float>::quiet_NaN();
  try {
    int4q::search_clip(w, int4q::presets::int4q(4, 8));
    ADD_FAILURE() << "no exception for a NaN weight";
  } catch (const int4q::non_finite_error& e) {
    EXPECT_EQ(e.row(), 9u);
    EXPECT_EQ(e.col(), 2u);
  }
}

}  // namespace
