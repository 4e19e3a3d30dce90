// search_clip: grid search of the range shrink ("clip ratio") that minimises reconstruction
// error, per tensor, per column or per group. It only searches: apply the ratios it returns
// with quant_tensor(w, config, ratios).
//
// Objective for a set S of (k, n):  L(r) = sum_{(k,n) in S} imp[k] * |W[k,n] - Q_r(W)[k,n]|^p
// where Q_r is RTN with range multiplied by r, p = `norm` (2: squared error; GPTQ's mse search
// uses 2.4) and imp[k] = 1, or the importance of input channel k when given (e.g. E[x_k^2] from
// calibration activations: then L estimates the output error sum_n E[(x . (w_n - q_n))^2]
// when inputs are uncorrelated). Candidates: `steps` ratios evenly spaced from max_ratio down
// to min_ratio. Ties keep the larger ratio, so with max_ratio = 1 the result is never worse than
// no clipping on this objective.
#ifndef INT4Q_CLIP_SEARCH_HPP
#define INT4Q_CLIP_SEARCH_HPP

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <string>
#include <vector>

#include <xtensor/xtensor.hpp>

#include <int4q/config.hpp>
#include <int4q/detail/input.hpp>
#include <int4q/detail/kernels.hpp>
#include <int4q/detail/parallel.hpp>
#include <int4q/group_params.hpp>
#include <int4q/quantize.hpp>

namespace int4q {

/// Which (k, n) share one ratio.
enum class clip_granularity {
  tensor,  ///< one ratio for the whole weight (INC's search_clip)
  column,  ///< one ratio per output column n
  group,   ///< one ratio per (group, column) (llm-awq auto_clip, ModelOpt awq_clip)
};

struct clip_search_options {
  double max_ratio = 1.0;  ///< first candidate, in (0, 1]
  double min_ratio = 0.5;  ///< last candidate, in (0, max_ratio]
  std::size_t steps = 51;  ///< number of candidates (>= 1); default: 1.00, 0.99, ..., 0.50
  double norm = 2.0;       ///< error exponent p > 0
  clip_granularity granularity = clip_granularity::group;
  std::size_t threads = 1;  ///< 0 = all hardware threads; results do not depend on it
};

/// Result of search_clip: ratios to pass to quant_tensor, and the objective before and after.
template <class T>
struct clip_search_result {
  xt::xtensor<T, 2> ratios;  ///< [G, N], each in [min_ratio, max_ratio]
  double loss = 0;           ///< objective at the chosen ratios
  double loss_at_max = 0;    ///< objective at max_ratio everywhere (1.0: plain RTN)
};

namespace detail {

inline void validate(const clip_search_options& o) {
  if (!(o.max_ratio > 0 && o.max_ratio <= 1) || !(o.min_ratio > 0 && o.min_ratio <= o.max_ratio)) {
    throw config_error("clip search needs 0 < min_ratio <= max_ratio <= 1, got min " +
                       std::to_string(o.min_ratio) + ", max " + std::to_string(o.max_ratio));
  }
  if (o.steps == 0) throw config_error("clip search needs steps >= 1");
  if (!(o.norm > 0) || !std::isfinite(o.norm)) throw config_error("clip search norm must be > 0");
}

template <class T>
std::vector<T> clip_candidates(const clip_search_options& o) {
  std::vector<T> r(o.steps);
  for (std::size_t i = 0; i < o.steps; ++i) {
    const double f = o.steps == 1 ? 0.0 : static_cast<double>(i) / static_cast<double>(o.steps - 1);
    r[i] = static_cast<T>(o.max_ratio - f * (o.max_ratio - o.min_ratio));
  }
  return r;
}

/// The trials of a clip search on one group's tile: rows [r0, r0 + rows) and columns
/// [c0, c0 + n) (n <= max_tile_cols) of w [K, N], a group of gs rows (fewer: the ragged last
/// group). For each candidate s, the tile is quantized with each column's range shrunk by
/// r = c.clip_ratio * cand[s] (Q_r, as quantize_matrix does with that ratio) into fq [rows, n]
/// (row stride n), then trial(s, fq) measures it. Throws non_finite_error for a NaN/Inf.
template <class T, class F>
void for_each_clip_trial(const T* w, std::size_t N, std::size_t r0, std::size_t rows,
                         std::size_t c0, std::size_t n, std::size_t gs, const quant_config& c,
                         const std::vector<T>& cand, T* fq, F&& trial) {
  T lo[max_tile_cols], hi[max_tile_cols], scale[max_tile_cols], zp[max_tile_cols];
  const T* src = w + r0 * N + c0;
  if (!minmax_columns(simd_tag{}, src, N, rows, n, lo, hi)) throw_non_finite(w, N, r0, rows, c0, n);
  if (rows < gs && c.ragged_range_includes_zero) include_zero(lo, hi, n);
  for (std::size_t s = 0; s < cand.size(); ++s) {
    const T ratio = static_cast<T>(c.clip_ratio) * cand[s];
    for (std::size_t j = 0; j < n; ++j) {
      const group_param<T> p = compute_group_param(lo[j], hi[j], ratio, c);
      scale[j] = p.scale;
      zp[j] = static_cast<T>(p.zero_point);
    }
    encode_tile(simd_tag{}, src, N, rows, n, c, scale, zp, nullptr, fq, n);
    trial(s, static_cast<const T*>(fq));
  }
}

template <class T>
clip_search_result<T> search_clip_matrix(const T* w, std::size_t K, std::size_t N,
                                         const quant_config& c, const T* imp,
                                         const clip_search_options& o) {
  const std::size_t gs = c.effective_group_size(K);
  const std::size_t G = c.num_groups(K);
  const std::size_t tiles = (N + max_tile_cols - 1) / max_tile_cols;
  const std::vector<T> cand = clip_candidates<T>(o);
  const std::size_t S = cand.size();
  const bool squared = o.norm == 2.0;
  // loss[s][g][n] is needed only to combine groups (column/tensor); per-group picks directly.
  const bool combine = o.granularity != clip_granularity::group;
  std::vector<double> col_loss(combine ? S * N : 0, 0.0);  // [S, N], groups summed in order
  clip_search_result<T> res;
  res.ratios = xt::xtensor<T, 2>::from_shape({G, N});
  std::vector<double> best_loss(G * N), max_loss(G * N);

  parallel_for(tiles, o.threads, [&](std::size_t tile) {
    const std::size_t c0 = tile * max_tile_cols;
    const std::size_t n = std::min(max_tile_cols, N - c0);
    std::vector<T> fq(std::min(gs, K) * n);
    double err[max_tile_cols];
    for (std::size_t g = 0; g < G; ++g) {
      const std::size_t r0 = g * gs;
      const std::size_t rows = std::min(gs, K - r0);
      const T* src = w + r0 * N + c0;
      for_each_clip_trial(w, N, r0, rows, c0, n, gs, c, cand, fq.data(),
                          [&](std::size_t s, const T* q) {
                            // err[j] = sum_i imp[i] |W - Q_r(W)|^p over the group's rows, column j
                            std::fill(err, err + n, 0.0);
                            for (std::size_t i = 0; i < rows; ++i) {
                              const double wk = imp ? static_cast<double>(imp[r0 + i]) : 1.0;
                              for (std::size_t j = 0; j < n; ++j) {
                                const double d = std::abs(static_cast<double>(src[i * N + j]) -
                                                          static_cast<double>(q[i * n + j]));
                                err[j] += wk * (squared ? d * d : std::pow(d, o.norm));
                              }
                            }
                            for (std::size_t j = 0; j < n; ++j) {
                              const std::size_t at = g * N + c0 + j;
                              if (s == 0) max_loss[at] = err[j];
                              if (combine) {
                                col_loss[s * N + c0 + j] += err[j];
                              } else if (s == 0 || err[j] < best_loss[at]) {
                                best_loss[at] = err[j];
                                res.ratios.data()[at] = cand[s];
                              }
                            }
                          });
    }
  });

  if (combine) {
    std::vector<std::size_t> pick(N, 0);
    if (o.granularity == clip_granularity::column) {
      for (std::size_t j = 0; j < N; ++j) {
        for (std::size_t s = 1; s < S; ++s) {
          if (col_loss[s * N + j] < col_loss[pick[j] * N + j]) pick[j] = s;
        }
      }
    } else {
      std::vector<double> total(S, 0.0);
      for (std::size_t s = 0; s < S; ++s) {
        for (std::size_t j = 0; j < N; ++j) total[s] += col_loss[s * N + j];
      }
      std::size_t b = 0;
      for (std::size_t s = 1; s < S; ++s) {
        if (total[s] < total[b]) b = s;
      }
      std::fill(pick.begin(), pick.end(), b);
    }
    res.loss = 0;
    for (std::size_t j = 0; j < N; ++j) res.loss += col_loss[pick[j] * N + j];
    for (std::size_t g = 0; g < G; ++g) {
      for (std::size_t j = 0; j < N; ++j) res.ratios.data()[g * N + j] = cand[pick[j]];
    }
  } else {
    res.loss = 0;
    for (double v : best_loss) res.loss += v;
  }
  res.loss_at_max = 0;
  if (combine) {  // summed like `loss`, so that loss <= loss_at_max holds exactly
    for (std::size_t j = 0; j < N; ++j) res.loss_at_max += col_loss[j];
  } else {
    for (double v : max_loss) res.loss_at_max += v;
  }
  return res;
}

}  // namespace detail

/// Clip-ratio search on reconstruction error (unweighted). Returns ratios [G, N].
template <class E>
auto search_clip(const xt::xexpression<E>& w, const quant_config& config,
                 const clip_search_options& options = {}) {
  using T = compute_type_t<typename E::value_type>;
  validate(config);
  detail::validate(options);
  const auto m = detail::as_matrix<T>(w, "weight");
  return detail::search_clip_matrix<T>(m.data, m.rows, m.cols, config, nullptr, options);
}

/// Output-aware clip-ratio search: errors of input channel k weighted by importance[k] >= 0
/// (length K), e.g. the mean square activation of channel k or diag of the Hessian X^T X.
template <class E, class I>
auto search_clip(const xt::xexpression<E>& w, const quant_config& config,
                 const xt::xexpression<I>& importance, const clip_search_options& options = {}) {
  using T = compute_type_t<typename E::value_type>;
  validate(config);
  detail::validate(options);
  const auto m = detail::as_matrix<T>(w, "weight");
  const xt::xtensor<T, 1> imp = xt::cast<T>(importance.derived_cast());
  if (imp.size() != m.rows) {
    throw shape_error("importance must have one entry per input channel (K = " +
                      std::to_string(m.rows) + "), got " + std::to_string(imp.size()));
  }
  for (std::size_t k = 0; k < imp.size(); ++k) {
    if (!(imp(k) >= T(0)) || !std::isfinite(static_cast<double>(imp(k)))) {
      throw shape_error("importance[" + std::to_string(k) + "] must be finite and >= 0");
    }
  }
  return detail::search_clip_matrix<T>(m.data, m.rows, m.cols, config, imp.data(), options);
}

}  // namespace int4q

#endif  // INT4Q_CLIP_SEARCH_HPP
