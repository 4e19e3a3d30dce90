// AWQ, activation-aware weight quantization: the per-input-channel scale search (`awq_lite`),
// the output-aware clip search (`awq_clip`) and the two in sequence (`awq_full`). Search only:
// scales are applied with apply_awq_scales (the caller divides x by s, i.e. folds 1/s into the
// producer of x), clip ratios with quant_tensor(w, config, ratios).
//
// Layout: y = x W, W[K, N] (ONNX MatMul), K = input channels. Inputs from calibration
// (activation_stats): X = sampled rows [S, K], xbar[k] = mean |x_k| over all calibration rows.
//
// Scale search. For alpha in the grid {0, step, 2 step, ...} up to alpha_max:
//   activation form (llm-awq auto_scale, AutoAWQ duo_scaling = False):
//       v_k = clamp(xbar_k^alpha, scale_min, scale_max)
//   activation_weight form (ModelOpt awq_lite, AutoAWQ duo_scaling = True):
//       v_k = clamp(xbar_k^alpha / (wbar_k^(1 - alpha) + weight_eps), scale_min, scale_max)
//       wbar_k = mean over the columns n of all weights of |W[k, n]| / amax(group of (k, n))
//   s = v / sqrt(max(v) * min(v))  (all three tools), computed in double, rounded once to T.
// The loss of a scale vector s over the weights W_1 .. W_m that share the input x is
//   L(s) = sum_j || X W_j - (X / s) Q(diag(s) W_j) ||^2
//        = sum_j || X diag(1/s) (Q(diag(s) W_j) - diag(s) W_j) ||^2
//          (the form computed: no cancellation between two large products; diag(s) W_j is
//          rounded once in T as the node stores it, the error rows are divided by s in T)
// with Q = dequant(quant_tensor(., config)). The search scores every alpha and s = 1 (plain RTN)
// and returns the smallest loss; RTN is chosen only when strictly lower than every alpha, so the
// result is never worse than RTN on this loss. Cost: (alphas + 1) x 2 S K N flops in BLAS gemm.
//
// Clip search (awq_clip), per output column n and group g: the ratio r in {1, 1 - clip_step, ...,
// >= clip_min} minimising the group's partial output error on the sample,
//   L_gn(r) = sum_t ( sum_{k in g} X[t, k] (W[k, n] - Q_r(W)[k, n]) )^2 = e^T H_g e,
// e = W[g, n] - Q_r(W)[g, n], H_g = X[:, g]^T X[:, g], where Q_r quantizes the group with its
// range shrunk by r (the core's clip ratio). Evaluated as the quadratic form in double
// (H_g once per group; then 2 gs^2 flops per group, column and ratio, independent of S). Ties
// keep the larger ratio, so the result is never worse than no clipping (r = 1).
#ifndef INT4Q_AWQ_HPP
#define INT4Q_AWQ_HPP

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <xtensor/xtensor.hpp>

#include <int4q/activation_stats.hpp>
#include <int4q/clip_search.hpp>
#include <int4q/config.hpp>
#include <int4q/detail/blas.hpp>
#include <int4q/detail/input.hpp>
#include <int4q/detail/kernels.hpp>
#include <int4q/detail/parallel.hpp>
#include <int4q/error.hpp>
#include <int4q/group_params.hpp>
#include <int4q/quantize.hpp>

namespace int4q {

/// How the AWQ scale of an input channel is formed from the statistics.
enum class awq_scale_form {
  /// s = mean|x|^alpha (llm-awq auto_scale; AutoAWQ with duo_scaling = False).
  activation,
  /// s = mean|x|^alpha / (wbar^(1-alpha) + eps) (ModelOpt awq_lite; AutoAWQ duo_scaling = True).
  activation_weight,
};

/// ModelOpt's clamp of the raw scales (llm-awq and AutoAWQ clamp below at the same value).
inline constexpr double awq_default_scale_min = 1e-4;
inline constexpr double awq_default_scale_max = 1e4;
/// ModelOpt's epsilon in the denominator: the smallest normal float (torch.finfo(float32).tiny).
inline constexpr double awq_default_weight_eps = 1.1754943508222875e-38;
/// Slack when counting grid points (alpha_max / step, (1 - clip_min) / step): 0.3 / 0.1 is
/// 2.9999999999999996 in binary floating point and must count as 3.
inline constexpr double awq_grid_slack = 1e-9;
/// Output columns per work item of the scale search: one gemm [S, K] x [K, block] each.
inline constexpr std::size_t awq_column_block = 512;

/// Options of the scale search. Defaults: ModelOpt awq_lite. llm-awq: form = activation,
/// alpha_step = 0.05, alpha_max = 0.95, scale_max = infinity. AutoAWQ: the same with
/// form = activation_weight and weight_eps = 1e-4.
struct awq_options {
  awq_scale_form form = awq_scale_form::activation_weight;
  double alpha_step = 0.1;  ///< grid spacing, in (0, 1]
  double alpha_max = 1.0;   ///< last alpha, in [0, 1]; the grid is 0, step, ... <= alpha_max
  double weight_eps = awq_default_weight_eps;  ///< >= 0, added to wbar^(1-alpha)
  double scale_min = awq_default_scale_min;    ///< > 0: lower clamp of the raw scales
  double scale_max = awq_default_scale_max;    ///< >= scale_min, may be infinity
  /// Threads (0 = all hardware threads); results do not depend on it. Keep BLAS single-threaded
  /// when using more than one (one level of parallelism).
  std::size_t threads = 1;
};

/// Options of the clip search. Defaults: ModelOpt awq_clip (1.0, 0.95, ..., 0.5); llm-awq
/// auto_clip: clip_min = 0.55.
struct awq_clip_options {
  double clip_min = 0.5;    ///< smallest ratio, in (0, 1]
  double clip_step = 0.05;  ///< ratios 1, 1 - step, ... >= clip_min; step > 0
  std::size_t threads = 1;  ///< as in awq_options
};

/// Result of the scale search.
template <class T>
struct awq_scales {
  /// s [K]: row k of every weight is multiplied by s[k] (apply_awq_scales), input channel k of x
  /// divided by it.
  xt::xtensor<T, 1> scales;
  double alpha = 0;            ///< the grid alpha of smallest loss
  bool identity = false;       ///< s = 1 (RTN) scored strictly lower than every alpha: scales = 1
  double loss = 0;             ///< loss at `scales`
  double rtn_loss = 0;         ///< loss at s = 1
  std::vector<double> alphas;  ///< the grid
  std::vector<double> losses;  ///< loss at each alpha of the grid
};

/// Result of awq_full: the scales of all weights together, then one clip search per weight
/// on apply_awq_scales(W_j, s) with X / s. Apply weight j as
/// quant_tensor(apply_awq_scales(W_j, lite.scales), config, clips[j].ratios).
template <class T>
struct awq_full_result {
  awq_scales<T> lite;
  std::vector<clip_search_result<T>> clips;
};

namespace detail {

inline void validate(const awq_options& o) {
  if (!(o.alpha_step > 0 && o.alpha_step <= 1)) {
    throw config_error("AWQ alpha_step = " + std::to_string(o.alpha_step) + " must be in (0, 1]");
  }
  if (!(o.alpha_max >= 0 && o.alpha_max <= 1)) {
    throw config_error("AWQ alpha_max = " + std::to_string(o.alpha_max) + " must be in [0, 1]");
  }
  if (!(o.scale_min > 0) || !std::isfinite(o.scale_min) || !(o.scale_max >= o.scale_min)) {
    throw config_error(
        "AWQ scales need 0 < scale_min <= scale_max (scale_max may be infinite), "
        "got " +
        std::to_string(o.scale_min) + ", " + std::to_string(o.scale_max));
  }
  if (!(o.weight_eps >= 0) || !std::isfinite(o.weight_eps)) {
    throw config_error("AWQ weight_eps must be finite and >= 0");
  }
  if (o.form == awq_scale_form::activation_weight && o.weight_eps == 0 &&
      !std::isfinite(o.scale_max)) {
    throw config_error(
        "AWQ activation_weight form: a zero weight row gives an infinite scale; "
        "set weight_eps > 0 or a finite scale_max");
  }
}

inline void validate(const awq_clip_options& o) {
  if (!(o.clip_min > 0 && o.clip_min <= 1)) {
    throw config_error("AWQ clip_min = " + std::to_string(o.clip_min) + " must be in (0, 1]");
  }
  if (!(o.clip_step > 0) || !std::isfinite(o.clip_step)) {
    throw config_error("AWQ clip_step = " + std::to_string(o.clip_step) + " must be > 0");
  }
}

inline std::vector<double> awq_alpha_grid(const awq_options& o) {
  const auto count =
      static_cast<std::size_t>(std::floor(o.alpha_max / o.alpha_step + awq_grid_slack)) + 1;
  std::vector<double> a(count);
  for (std::size_t i = 0; i < count; ++i) {
    a[i] = std::min(static_cast<double>(i) * o.alpha_step, o.alpha_max);
  }
  return a;
}

template <class T>
std::vector<T> awq_clip_grid(const awq_clip_options& o) {
  const auto count =
      static_cast<std::size_t>(std::floor((1.0 - o.clip_min) / o.clip_step + awq_grid_slack)) + 1;
  std::vector<T> r(count);
  for (std::size_t i = 0; i < count; ++i) {
    r[i] = static_cast<T>(std::max(1.0 - static_cast<double>(i) * o.clip_step, o.clip_min));
  }
  return r;
}

/// Throws non_finite_error for the first NaN/Inf of w[K, N] (row-major).
template <class T>
void check_finite(const T* w, std::size_t K, std::size_t N) {
  for (std::size_t i = 0; i < K * N; ++i) {
    if (!std::isfinite(w[i])) throw non_finite_error(i / N, i % N, static_cast<double>(w[i]));
  }
}

/// The activation sample X [S, K] as T, validated: S >= 1, K columns, finite.
template <class T, class EX>
matrix_input<T> awq_sample(const xt::xexpression<EX>& x, std::size_t K) {
  auto m = as_matrix<T>(x, "activation sample");
  if (m.rows == 0 || m.cols != K) {
    throw shape_error("activation sample must be [S >= 1, K = " + std::to_string(K) + "], got [" +
                      std::to_string(m.rows) + ", " + std::to_string(m.cols) + "]");
  }
  for (std::size_t i = 0; i < m.rows * m.cols; ++i) {
    if (!std::isfinite(m.data[i])) {
      throw non_finite_error("activation sample row " + std::to_string(i / K) + ", channel " +
                                 std::to_string(i % K) + " is not finite",
                             i / K, i % K);
    }
  }
  return m;
}

/// Checks the weights sharing one input: at least one, none empty, all with the same K, finite.
template <class T>
void awq_check_weights(const std::vector<matrix_input<T>>& ms) {
  if (ms.empty()) throw shape_error("AWQ needs at least one weight");
  for (const auto& m : ms) {
    if (m.rows == 0 || m.cols == 0) throw shape_error("AWQ weights must not be empty");
    if (m.rows != ms.front().rows) {
      throw shape_error("weights sharing one input must have the same K: " +
                        std::to_string(ms.front().rows) + " and " + std::to_string(m.rows));
    }
    check_finite(m.data, m.rows, m.cols);
  }
}

/// The weights as T matrices (no copy when already contiguous T), checked.
template <class T, class E>
std::vector<matrix_input<T>> awq_weights(const std::vector<E>& weights) {
  std::vector<matrix_input<T>> ms;
  ms.reserve(weights.size());
  for (const auto& w : weights) ms.push_back(as_matrix<T>(w, "weight"));
  awq_check_weights(ms);
  return ms;
}

/// A per-channel vector (`what`: mean |x|, scales, ...) as doubles: K entries, finite, >= 0.
template <class E>
std::vector<double> awq_channel_vector(const xt::xexpression<E>& e, std::size_t K,
                                       const char* what) {
  const auto& v = e.derived_cast();
  if (v.dimension() != 1 || v.size() != K) {
    throw shape_error(std::string(what) + " must have one entry per input channel (K = " +
                      std::to_string(K) + "), got " + std::to_string(v.size()));
  }
  std::vector<double> out(K);
  std::size_t k = 0;
  for (auto it = v.begin(); it != v.end(); ++it, ++k) {
    out[k] = static_cast<double>(*it);
    if (!(out[k] >= 0) || !std::isfinite(out[k])) {
      throw shape_error(std::string(what) + "[" + std::to_string(k) + "] must be finite and >= 0");
    }
  }
  return out;
}

/// wbar[k] = mean over the columns of all weights of |W[k, n]| / amax of the group of (k, n);
/// an all-zero group contributes 0.
template <class T>
std::vector<double> awq_weight_stat(const std::vector<matrix_input<T>>& ms, const quant_config& c) {
  const std::size_t K = ms.front().rows;
  const std::size_t gs = c.effective_group_size(K);
  std::vector<double> sum(K, 0.0);
  std::size_t columns = 0;
  for (const auto& m : ms) {
    const std::size_t N = m.cols;
    std::vector<double> amax(N);
    for (std::size_t r0 = 0; r0 < K; r0 += gs) {
      const std::size_t r1 = std::min(K, r0 + gs);
      std::fill(amax.begin(), amax.end(), 0.0);
      for (std::size_t k = r0; k < r1; ++k) {
        for (std::size_t n = 0; n < N; ++n) {
          amax[n] = std::max(amax[n], std::abs(static_cast<double>(m.data[k * N + n])));
        }
      }
      for (std::size_t k = r0; k < r1; ++k) {
        double acc = 0;
        for (std::size_t n = 0; n < N; ++n) {
          if (amax[n] > 0) acc += std::abs(static_cast<double>(m.data[k * N + n])) / amax[n];
        }
        sum[k] += acc;
      }
    }
    columns += N;
  }
  for (double& v : sum) v /= static_cast<double>(columns);
  return sum;
}

/// The normalised scales of one alpha, in double.
inline std::vector<double> awq_scale_values(const std::vector<double>& xbar,
                                            const std::vector<double>& wbar, double alpha,
                                            const awq_options& o) {
  const std::size_t K = xbar.size();
  std::vector<double> v(K);
  for (std::size_t k = 0; k < K; ++k) {
    double raw = std::pow(xbar[k], alpha);
    if (o.form == awq_scale_form::activation_weight) {
      raw /= std::pow(wbar[k], 1.0 - alpha) + o.weight_eps;
    }
    v[k] = std::min(std::max(raw, o.scale_min), o.scale_max);
  }
  const auto mm = std::minmax_element(v.begin(), v.end());
  const double norm = std::sqrt(*mm.first * *mm.second);
  for (double& s : v) s /= norm;
  return v;
}

/// The scales rounded to T; throws when one leaves T's positive finite range.
template <class T>
std::vector<T> awq_round_scales(const std::vector<double>& s) {
  std::vector<T> out(s.size());
  for (std::size_t k = 0; k < s.size(); ++k) {
    out[k] = static_cast<T>(s[k]);
    if (!(out[k] > T(0)) || !std::isfinite(out[k])) {
      throw config_error("AWQ scale of channel " + std::to_string(k) + " (" + std::to_string(s[k]) +
                         ") is outside the compute type's range: lower scale_max or raise "
                         "scale_min");
    }
  }
  return out;
}

/// Scales given by the caller [K] as T: each finite and > 0 in T, else shape_error.
template <class T, class E>
std::vector<T> awq_given_scales(const xt::xexpression<E>& scales, std::size_t K) {
  const std::vector<double> s = awq_channel_vector(scales, K, "AWQ scales");
  std::vector<T> out(K);
  for (std::size_t k = 0; k < K; ++k) {
    out[k] = static_cast<T>(s[k]);
    if (!(out[k] > T(0)) || !std::isfinite(out[k])) {
      throw shape_error("AWQ scale[" + std::to_string(k) + "] = " + std::to_string(s[k]) +
                        " must be > 0 and finite in the weights' compute type");
    }
  }
  return out;
}

/// xs[t, k] = x[t, k] / s[k].
template <class T>
std::vector<T> awq_divide_sample(const T* x, std::size_t S, std::size_t K, const T* s) {
  std::vector<T> xs(S * K);
  for (std::size_t t = 0; t < S; ++t) {
    for (std::size_t k = 0; k < K; ++k) xs[t * K + k] = x[t * K + k] / s[k];
  }
  return xs;
}

/// Losses of w[K, N] for every scale vector of `cands` (each [K]) on the sample x [S, K]:
///   L(s) = || x diag(1/s) (Q(diag(s) w) - diag(s) w) ||^2
/// (the 1/s goes on the error rows instead of the sample columns: the same product, and no
/// [S, K] copy of x per candidate). Work items are column blocks of awq_column_block, each
/// quantizing its [K, block] slice once per candidate and multiplying [S, K] x [K, block] in one
/// gemm, with buffers reused across candidates; block sums are added in block order.
template <class T>
std::vector<double> awq_member_losses(const T* x, std::size_t S, const T* w, std::size_t K,
                                      std::size_t N, const std::vector<std::vector<T>>& cands,
                                      const quant_config& c, std::size_t threads) {
  const std::size_t G = c.num_groups(K);
  const std::size_t C = cands.size();
  const std::size_t blocks = (N + awq_column_block - 1) / awq_column_block;
  std::vector<double> partial(blocks * C, 0.0);  // [blocks, C]
  parallel_for(blocks, threads, [&](std::size_t b) {
    const std::size_t c0 = b * awq_column_block;
    const std::size_t n = std::min(awq_column_block, N - c0);
    std::vector<T> ws(K * n), fq(K * n), scales(G * n), r(S * n);
    std::vector<std::uint8_t> zps(G * n);
    quantize_sink<T> sink;
    sink.scales = scales.data();
    sink.zero_points = zps.data();
    sink.fake_quant = fq.data();
    for (std::size_t i = 0; i < C; ++i) {
      const T* s = cands[i].data();
      for (std::size_t k = 0; k < K; ++k) {
        for (std::size_t j = 0; j < n; ++j) ws[k * n + j] = s[k] * w[k * N + c0 + j];
      }
      try {
        quantize_matrix(simd_tag{}, ws.data(), K, n, c, static_cast<const T*>(nullptr), 1, sink);
      } catch (const non_finite_error& e) {
        throw non_finite_error("weight[" + std::to_string(e.row()) + ", " +
                                   std::to_string(c0 + e.col()) +
                                   "] times its AWQ scale overflows: lower scale_max",
                               e.row(), c0 + e.col());
      }
      for (std::size_t k = 0; k < K; ++k) {
        for (std::size_t j = 0; j < n; ++j) fq[k * n + j] = (fq[k * n + j] - ws[k * n + j]) / s[k];
      }
      blas::gemm(false, false, S, n, K, T(1), x, K, fq.data(), n, T(0), r.data(), n);
      double acc = 0;
      for (const T v : r) acc += static_cast<double>(v) * static_cast<double>(v);
      partial[b * C + i] = acc;
    }
  });
  std::vector<double> total(C, 0.0);
  for (std::size_t b = 0; b < blocks; ++b) {
    for (std::size_t i = 0; i < C; ++i) total[i] += partial[b * C + i];
  }
  return total;
}

/// L(s) of every candidate summed over the weights: each weight's loss first, added in order.
template <class T>
std::vector<double> awq_total_losses(const T* x, std::size_t S,
                                     const std::vector<matrix_input<T>>& ms,
                                     const std::vector<std::vector<T>>& cands,
                                     const quant_config& c, std::size_t threads) {
  std::vector<double> total(cands.size(), 0.0);
  for (const auto& m : ms) {
    const std::vector<double> l =
        awq_member_losses(x, S, m.data, m.rows, m.cols, cands, c, threads);
    for (std::size_t i = 0; i < l.size(); ++i) total[i] += l[i];
  }
  return total;
}

template <class T>
awq_scales<T> search_awq_scales_matrix(const matrix_input<T>& x, const std::vector<double>& xbar,
                                       const std::vector<matrix_input<T>>& ms,
                                       const quant_config& c, const awq_options& o) {
  const std::size_t K = ms.front().rows;
  const std::vector<double> wbar = o.form == awq_scale_form::activation_weight
                                       ? awq_weight_stat(ms, c)
                                       : std::vector<double>(K, 0.0);
  awq_scales<T> res;
  res.alphas = awq_alpha_grid(o);
  // Candidate 0 is s = 1; an alpha whose scales are all 1 reuses it.
  std::vector<std::vector<T>> cands{std::vector<T>(K, T(1))};
  std::vector<std::size_t> cand_of(res.alphas.size());
  for (std::size_t i = 0; i < res.alphas.size(); ++i) {
    std::vector<T> s = awq_round_scales<T>(awq_scale_values(xbar, wbar, res.alphas[i], o));
    if (s == cands.front()) {
      cand_of[i] = 0;
    } else {
      cand_of[i] = cands.size();
      cands.push_back(std::move(s));
    }
  }
  const std::vector<double> losses = awq_total_losses(x.data, x.rows, ms, cands, c, o.threads);
  res.rtn_loss = losses[0];
  res.losses.resize(res.alphas.size());
  std::size_t best = 0;
  for (std::size_t i = 0; i < res.alphas.size(); ++i) {
    res.losses[i] = losses[cand_of[i]];
    if (res.losses[i] < res.losses[best]) best = i;
  }
  res.alpha = res.alphas[best];
  res.identity = res.rtn_loss < res.losses[best];
  res.loss = res.identity ? res.rtn_loss : res.losses[best];
  const std::vector<T>& s = cands[res.identity ? 0 : cand_of[best]];
  res.scales = xt::xtensor<T, 1>::from_shape({K});
  std::copy(s.begin(), s.end(), res.scales.begin());
  return res;
}

/// The clip search on xs [S, K] and w [K, N] (see the top of this file).
template <class T>
clip_search_result<T> search_awq_clip_matrix(const T* xs, std::size_t S, const T* w, std::size_t K,
                                             std::size_t N, const quant_config& c,
                                             const awq_clip_options& o) {
  const std::size_t gs = c.effective_group_size(K);
  const std::size_t G = c.num_groups(K);
  const std::vector<T> cand = awq_clip_grid<T>(o);
  const std::size_t C = cand.size();

  // H_g = X[:, g]^T X[:, g] in double, [rows_g, rows_g] at gram[g * gs * gs].
  std::vector<double> xd(xs, xs + S * K);
  std::vector<double> gram(G * gs * gs);
  parallel_for(G, o.threads, [&](std::size_t g) {
    const std::size_t r0 = g * gs, rows = std::min(gs, K - r0);
    blas::gemm(true, false, rows, rows, S, 1.0, xd.data() + r0, K, xd.data() + r0, K, 0.0,
               gram.data() + g * gs * gs, rows);
  });

  clip_search_result<T> res;
  res.ratios = xt::xtensor<T, 2>::from_shape({G, N});
  std::vector<double> best_loss(G * N), max_loss(G * N);
  const std::size_t tiles = (N + max_tile_cols - 1) / max_tile_cols;
  parallel_for(tiles, o.threads, [&](std::size_t tile) {
    const std::size_t c0 = tile * max_tile_cols;
    const std::size_t n = std::min(max_tile_cols, N - c0);
    const std::size_t width = C * n;  // columns of E: candidate-major, then column
    std::vector<T> fq(std::min(gs, K) * n);
    std::vector<double> e(std::min(gs, K) * width), he(std::min(gs, K) * width);
    for (std::size_t g = 0; g < G; ++g) {
      const std::size_t r0 = g * gs, rows = std::min(gs, K - r0);
      const T* src = w + r0 * N + c0;
      // E[:, s n + j] = W - Q_r(W) of the group, column j, candidate s (in double)
      for_each_clip_trial(
          w, N, r0, rows, c0, n, gs, c, cand, fq.data(), [&](std::size_t s, const T* q) {
            for (std::size_t i = 0; i < rows; ++i) {
              for (std::size_t j = 0; j < n; ++j) {
                e[i * width + s * n + j] =
                    static_cast<double>(src[i * N + j]) - static_cast<double>(q[i * n + j]);
              }
            }
          });
      blas::gemm(false, false, rows, width, rows, 1.0, gram.data() + g * gs * gs, rows, e.data(),
                 width, 0.0, he.data(), width);
      for (std::size_t s = 0; s < C; ++s) {
        for (std::size_t j = 0; j < n; ++j) {
          double l = 0;
          for (std::size_t i = 0; i < rows; ++i) {
            l += e[i * width + s * n + j] * he[i * width + s * n + j];
          }
          const std::size_t at = g * N + c0 + j;
          if (s == 0) max_loss[at] = l;
          if (s == 0 || l < best_loss[at]) {
            best_loss[at] = l;
            res.ratios.data()[at] = cand[s];
          }
        }
      }
    }
  });
  res.loss = 0;
  res.loss_at_max = 0;
  for (std::size_t i = 0; i < G * N; ++i) {
    res.loss += best_loss[i];
    res.loss_at_max += max_loss[i];
  }
  return res;
}

template <class E>
using awq_compute_t = compute_type_t<typename E::value_type>;

/// search_awq_scales on weights already converted and checked.
template <class EX, class EM, class T>
awq_scales<T> search_awq_scales_checked(const xt::xexpression<EX>& x,
                                        const xt::xexpression<EM>& mean_abs_x,
                                        const std::vector<matrix_input<T>>& ms,
                                        const quant_config& config, const awq_options& options) {
  validate(config);
  validate(options);
  const std::size_t K = ms.front().rows;
  const auto xm = awq_sample<T>(x, K);
  return search_awq_scales_matrix<T>(xm, awq_channel_vector(mean_abs_x, K, "mean |x|"), ms, config,
                                     options);
}

}  // namespace detail

/// wbar [K]: per input channel, the mean over the columns of all `weights` (sharing one input)
/// of |W[k, n]| / max |W| over the group of (k, n) (groups of config); 0 for an all-zero group.
template <class E>
xt::xtensor<double, 1> awq_weight_stat(const std::vector<E>& weights, const quant_config& config) {
  validate(config);
  const auto ms = detail::awq_weights<detail::awq_compute_t<E>>(weights);
  const std::vector<double> v = detail::awq_weight_stat(ms, config);
  xt::xtensor<double, 1> out = xt::xtensor<double, 1>::from_shape({v.size()});
  std::copy(v.begin(), v.end(), out.begin());
  return out;
}

/// The normalised AWQ scales of one alpha (in double) from mean |x| [K] and wbar [K] (ignored by
/// the activation form). The search uses these, rounded once to the weights' compute type.
template <class EX, class EW>
xt::xtensor<double, 1> awq_scale_for_alpha(const xt::xexpression<EX>& mean_abs_x,
                                           const xt::xexpression<EW>& weight_stat, double alpha,
                                           const awq_options& options = {}) {
  detail::validate(options);
  if (!(alpha >= 0 && alpha <= 1)) {
    throw config_error("AWQ alpha = " + std::to_string(alpha) + " must be in [0, 1]");
  }
  const std::size_t K = mean_abs_x.derived_cast().size();
  if (K == 0) throw shape_error("mean |x| must not be empty");
  const std::vector<double> xbar = detail::awq_channel_vector(mean_abs_x, K, "mean |x|");
  const std::vector<double> wbar = detail::awq_channel_vector(weight_stat, K, "weight statistic");
  const std::vector<double> v = detail::awq_scale_values(xbar, wbar, alpha, options);
  xt::xtensor<double, 1> out = xt::xtensor<double, 1>::from_shape({K});
  std::copy(v.begin(), v.end(), out.begin());
  return out;
}

/// The AWQ loss sum_j || X W_j - (X / s) Q(diag(s) W_j) ||^2 of given scales s [K] (rounded to
/// the compute type), on the sample X [S, K].
template <class EX, class E, class ES>
double awq_loss(const xt::xexpression<EX>& x, const std::vector<E>& weights,
                const xt::xexpression<ES>& scales, const quant_config& config,
                const quant_options& options = {}) {
  using T = detail::awq_compute_t<E>;
  validate(config);
  const auto ms = detail::awq_weights<T>(weights);
  const std::size_t K = ms.front().rows;
  const auto xm = detail::awq_sample<T>(x, K);
  const std::vector<T> s = detail::awq_given_scales<T>(scales, K);
  return detail::awq_total_losses(xm.data, xm.rows, ms, std::vector<std::vector<T>>{s}, config,
                                  options.threads)[0];
}

/// awq_lite: the scale search for the weights W_1 .. W_m [K, N_j] that share one input (q/k/v,
/// gate/up: one joint s on the summed loss), from the sample X [S, K] and mean |x| [K].
/// Throws shape_error for mismatched shapes, config_error for bad options, non_finite_error for
/// NaN/Inf in X or a weight.
template <class EX, class EM, class E>
auto search_awq_scales(const xt::xexpression<EX>& x, const xt::xexpression<EM>& mean_abs_x,
                       const std::vector<E>& weights, const quant_config& config,
                       const awq_options& options = {}) {
  using T = detail::awq_compute_t<E>;
  return detail::search_awq_scales_checked(x, mean_abs_x, detail::awq_weights<T>(weights), config,
                                           options);
}

/// awq_lite for one weight.
template <class EX, class EM, class E>
auto search_awq_scales(const xt::xexpression<EX>& x, const xt::xexpression<EM>& mean_abs_x,
                       const xt::xexpression<E>& weight, const quant_config& config,
                       const awq_options& options = {}) {
  using T = detail::awq_compute_t<E>;
  std::vector<detail::matrix_input<T>> ms;
  ms.push_back(detail::as_matrix<T>(weight, "weight"));
  detail::awq_check_weights(ms);
  return detail::search_awq_scales_checked(x, mean_abs_x, ms, config, options);
}

/// awq_lite from activation statistics gathered with a row sample (sample_rows > 0).
template <class E>
auto search_awq_scales(const activation_stats& stats, const std::vector<E>& weights,
                       const quant_config& config, const awq_options& options = {}) {
  if (stats.rows() == 0 || stats.sample().shape()[0] == 0) {
    throw shape_error("AWQ needs activation_stats with rows and a row sample (sample_rows > 0)");
  }
  return search_awq_scales(stats.sample(), stats.mean_abs(), weights, config, options);
}

/// W' = diag(s) W: row k of W[K, N] times s[k], in the compute type (one rounding). The layer
/// keeps computing x W only if the caller divides input channel k by s[k] (folded into the
/// producer of x).
template <class E, class ES>
auto apply_awq_scales(const xt::xexpression<E>& w, const xt::xexpression<ES>& scales) {
  using T = detail::awq_compute_t<E>;
  const auto m = detail::as_matrix<T>(w, "weight");
  const std::vector<T> s = detail::awq_given_scales<T>(scales, m.rows);
  auto out = xt::xtensor<T, 2>::from_shape({m.rows, m.cols});
  for (std::size_t k = 0; k < m.rows; ++k) {
    for (std::size_t n = 0; n < m.cols; ++n)
      out.data()[k * m.cols + n] = s[k] * m.data[k * m.cols + n];
  }
  return out;
}

/// awq_clip: per (group, column) clip ratios of W[K, N] minimising the group's partial output
/// error on the sample X [S, K]; returns ratios [G, N] (apply with quant_tensor(w, config,
/// ratios)), the objective at them and at ratio 1.
template <class EX, class E>
auto search_awq_clip(const xt::xexpression<EX>& x, const xt::xexpression<E>& w,
                     const quant_config& config, const awq_clip_options& options = {}) {
  using T = detail::awq_compute_t<E>;
  validate(config);
  detail::validate(options);
  const auto m = detail::as_matrix<T>(w, "weight");
  if (m.rows == 0 || m.cols == 0) throw shape_error("AWQ weights must not be empty");
  const auto xm = detail::awq_sample<T>(x, m.rows);
  return detail::search_awq_clip_matrix<T>(xm.data, xm.rows, m.data, m.rows, m.cols, config,
                                           options);
}

/// awq_full: awq_lite on all weights together, then awq_clip of each scaled weight on X / s.
template <class EX, class EM, class E>
auto search_awq_full(const xt::xexpression<EX>& x, const xt::xexpression<EM>& mean_abs_x,
                     const std::vector<E>& weights, const quant_config& config,
                     const awq_options& options = {}, const awq_clip_options& clip_options = {}) {
  using T = detail::awq_compute_t<E>;
  validate(config);
  detail::validate(options);
  detail::validate(clip_options);
  const auto ms = detail::awq_weights<T>(weights);
  const std::size_t K = ms.front().rows;
  const auto xm = detail::awq_sample<T>(x, K);
  awq_full_result<T> res;
  res.lite = detail::search_awq_scales_matrix<T>(
      xm, detail::awq_channel_vector(mean_abs_x, K, "mean |x|"), ms, config, options);
  const T* s = res.lite.scales.data();
  const std::vector<T> xs = detail::awq_divide_sample(xm.data, xm.rows, K, s);
  for (const auto& m : ms) {
    std::vector<T> ws(K * m.cols);
    for (std::size_t k = 0; k < K; ++k) {
      for (std::size_t n = 0; n < m.cols; ++n) ws[k * m.cols + n] = s[k] * m.data[k * m.cols + n];
    }
    res.clips.push_back(detail::search_awq_clip_matrix<T>(xs.data(), xm.rows, ws.data(), K, m.cols,
                                                          config, clip_options));
  }
  return res;
}

}  // namespace int4q

#endif  // INT4Q_AWQ_HPP
