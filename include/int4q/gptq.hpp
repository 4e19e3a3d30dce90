// gptq: GPTQ (Frantar et al., 2022) for a weight W[K, N] in the ONNX MatMul layout, given the
// layer's Hessian proxy H = sum over calibration rows of x x^T ([K, K], any positive scale; e.g.
// activation_stats::hessian()).
//
// GPTQ quantizes the rows of W (the input channels k; torch's columns) one after the other and
// spreads each row's rounding error over the rows not yet quantized so that the layer output
// error trace((W - Q)^T H (W - Q)) stays small. With U the upper Cholesky factor of H^-1
// (H^-1 = U^T U, after damping):
//
//   for k = 0 .. K-1:   q_k = quantize(w_k)              (each column n in its group's grid)
//                       e_k = (w_k - q_k) / U[k, k]
//                       w_j -= U[k, j] * e_k  for j > k
//
// done in lazy blocks of `block_size` rows: inside a block a rank-1 update per row (BLAS ger),
// then ONE gemm updates all rows after the block: W[i2:, :] -= U[i1:i2, i2:]^T E[i1:i2, :].
// In the code: gptq_order_of (dead inputs, act_order), gptq_damped_factor (damping with
// retries, U), gptq_working_copy (static groups), then gptq_sweep, the loop above (gptq_row per
// row, gptq_lazy_update per block), and gptq_loss (the report's loss).
// The grid (group parameters, codes, rounding, tables) is quant_tensor's: the result is the
// same `quantized` type and decodes with dequant() to exactly the Q that the loss refers to.
//
// Precision: H, its Cholesky factorization and the factor's inverse are double (dpotrf, dtrtri);
// the working copy of W, the error rows and the updates are in the compute type of W (float:
// sgemm / sger for float, fp16 and bf16 weights; double: dgemm / dger for double weights).
// Parallelism: gptq_options::threads over fixed chunks of columns (the same result for any
// count) and over the blocks of the factorization (detail/cholesky.hpp).
#ifndef INT4Q_GPTQ_HPP
#define INT4Q_GPTQ_HPP

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <numeric>
#include <string>
#include <type_traits>
#include <vector>

#include <xtensor/xtensor.hpp>

#include <int4q/clip_search.hpp>
#include <int4q/config.hpp>
#include <int4q/dequant.hpp>
#include <int4q/detail/blas.hpp>
#include <int4q/detail/cholesky.hpp>
#include <int4q/detail/input.hpp>
#include <int4q/detail/kernels.hpp>
#include <int4q/detail/parallel.hpp>
#include <int4q/error.hpp>
#include <int4q/group_params.hpp>
#include <int4q/hessian_loss.hpp>
#include <int4q/quantize.hpp>
#include <int4q/quantized.hpp>

namespace int4q {

struct gptq_options {
  /// Damping added to the diagonal of H, as a fraction of mean(diag H) (GPTQ's `percdamp`).
  double damp = 0.01;
  /// When a Cholesky factorization fails (H not positive definite), the damping is multiplied
  /// by `damp_growth` and GPTQ starts over, up to this many times; then it throws.
  std::size_t max_damp_retries = 4;
  double damp_growth = 10.0;
  /// Rows per lazy block: one gemm per block updates the rows after it (GPTQ's `blocksize`).
  /// The result does not depend on it beyond float rounding.
  std::size_t block_size = 128;
  /// Quantize the rows in order of decreasing diag(H) (GPTQ's `act_order` / `desc_act`).
  /// With more than one group along K it needs static_groups: the ONNX formats store groups
  /// contiguous in K and have no g_idx.
  bool act_order = false;
  /// Group parameters all computed up front from the original W (GPTQ's `static_groups`);
  /// otherwise each group's parameters come from the already updated weights when its first
  /// row is reached.
  bool static_groups = false;
  /// Choose each group's clip ratio by search_clip (with `clip`, importance diag(H)) on the
  /// weights the parameters are computed from (per group as it starts, or all up front).
  bool search_clip = false;
  clip_search_options clip;
  /// Measure report.rtn_loss: one K x K x N product in the compute type (about the cost of
  /// GPTQ's own updates).
  bool rtn_loss = true;
  /// Measure report.loss by a K x K x N product, and fill report.group_loss. Otherwise
  /// report.loss comes from the error rows for free: with H' the damped H,
  /// trace((W - Q)^T H' (W - Q)) = sum_k |e_k|^2, less the damping's share (measured by the
  /// product after all when that share is over gptq_max_damping_share of the sum).
  bool exact_loss = false;
  /// Threads (0 = hardware threads) over fixed chunks of gptq_column_chunk columns of W (GPTQ
  /// treats each column on its own) and of the loss products: the result is the same for any
  /// count. BLAS calls inside stay on the BLAS library's own threads (one in the int4q CLI).
  std::size_t threads = 1;
};

/// Statistics of one gptq call. Losses are trace((W - Q)^T H (W - Q)) with the H given
/// (undamped) and the W given.
struct gptq_report {
  double loss = 0;                                             ///< of GPTQ's Q
  double rtn_loss = std::numeric_limits<double>::quiet_NaN();  ///< of quant_tensor(W, config)
  /// [G, N] when options.exact_loss: sum over the rows k of group g of D[k, n] (H D)[k, n],
  /// D = W - Q (sums to `loss`); empty otherwise.
  xt::xtensor<double, 2> group_loss;
  double damp = 0;              ///< absolute damping added to diag(H), the one that succeeded
  double damp_fraction = 0;     ///< damp / mean(diag H) = options.damp * damp_growth^retries
  std::size_t retries = 0;      ///< Cholesky failures before that damping
  std::size_t dead_inputs = 0;  ///< rows k with H[k, k] == 0 (quantized as zero rows)
  /// act_order: perm[i] = the row of W quantized i-th; empty otherwise.
  std::vector<std::size_t> perm;
};

template <class T>
struct gptq_result {
  quantized<T> q;  ///< codes [K, N], scales and zero points [G, N]: as quant_tensor returns
  gptq_report report;
};

namespace detail {

/// Largest share of sum |e_k|^2 that the damping term may take before report.loss is measured
/// by the K x K x N product instead of by the difference (which then loses digits: at 1/2, at
/// most one bit of the error rows' precision).
constexpr double gptq_max_damping_share = 0.5;

// ---- Grid --------------------------------------------------------------------------------------

/// Parameters of one group from its current rows w [rows, N] (as quantize_matrix computes them),
/// each column's clip ratio config.clip_ratio * ratios[n] (ratios may be null).
//   scale, zero_point : [N]
template <class T>
void group_params_of_rows(const T* w, std::size_t rows, std::size_t N, bool ragged,
                          const quant_config& c, const T* ratios, T* scale,
                          std::uint8_t* zero_point) {
  T lo[max_tile_cols], hi[max_tile_cols];
  for (std::size_t c0 = 0; c0 < N; c0 += max_tile_cols) {
    const std::size_t n = std::min(max_tile_cols, N - c0);
    if (!minmax_columns(simd_tag{}, w + c0, N, rows, n, lo, hi)) {
      throw error(
          "gptq: the error updates made a weight non-finite: H is too ill-conditioned for "
          "this damping; raise gptq_options::damp");
    }
    if (ragged && c.ragged_range_includes_zero) include_zero(lo, hi, n);
    for (std::size_t j = 0; j < n; ++j) {
      const T ratio = static_cast<T>(c.clip_ratio) * (ratios ? ratios[c0 + j] : T(1));
      const group_param<T> p = compute_group_param(lo[j], hi[j], ratio, c);
      scale[c0 + j] = p.scale;
      zero_point[c0 + j] = p.zero_point;
    }
  }
}

/// Codes and dequantized values of one row w [N] against per-column parameters [N].
template <class T>
void encode_row(const T* w, std::size_t N, const quant_config& c, const T* scale,
                const std::uint8_t* zero_point, std::uint8_t* codes, T* values) {
  T zp[max_tile_cols];
  for (std::size_t c0 = 0; c0 < N; c0 += max_tile_cols) {
    const std::size_t n = std::min(max_tile_cols, N - c0);
    for (std::size_t j = 0; j < n; ++j) zp[j] = static_cast<T>(zero_point[c0 + j]);
    encode_tile(simd_tag{}, w + c0, N, 1, n, c, scale + c0, zp, codes + c0, values + c0, N);
  }
}

/// Rows of a [K, N] in place: new row i = old row perm[i].
template <class T>
void permute_rows(T* a, std::size_t K, std::size_t N, const std::vector<std::size_t>& perm) {
  std::vector<char> done(K, 0);
  std::vector<T> tmp(N);
  for (std::size_t s = 0; s < K; ++s) {
    if (done[s] || perm[s] == s) continue;
    std::copy(a + s * N, a + s * N + N, tmp.begin());
    std::size_t i = s;
    for (;;) {
      done[i] = 1;
      const std::size_t j = perm[i];
      if (j == s) {
        std::copy(tmp.begin(), tmp.end(), a + i * N);
        break;
      }
      std::copy(a + j * N, a + j * N + N, a + i * N);
      i = j;
    }
  }
}

/// Group parameters [G, N] for one group: rows [r0, r0 + rows) of w [*, N], with the clip
/// search when asked (importance imp[r0 ..]).
template <class T>
void gptq_group_params(const T* w, std::size_t N, std::size_t r0, std::size_t rows, std::size_t gs,
                       const quant_config& c, const gptq_options& o, const T* imp, T* scale,
                       std::uint8_t* zero_point) {
  const T* rows_w = w + r0 * N;
  if (o.search_clip) {
    // The group alone: effective group size >= rows, so one group of `rows` rows.
    quant_config one = c;
    one.granularity = grouping::group;
    one.group_size = gs;
    const clip_search_result<T> s = search_clip_matrix<T>(rows_w, rows, N, one, imp + r0, o.clip);
    group_params_of_rows(rows_w, rows, N, rows < gs, c, s.ratios.data(), scale, zero_point);
  } else {
    group_params_of_rows(rows_w, rows, N, rows < gs, c, static_cast<const T*>(nullptr), scale,
                         zero_point);
  }
}

inline void validate(const gptq_options& o) {
  if (!(o.damp > 0.0) || !std::isfinite(o.damp)) {
    throw config_error("gptq damp = " + std::to_string(o.damp) +
                       " must be > 0 and finite (a fraction of mean(diag H); GPTQ uses 0.01)");
  }
  if (!(o.damp_growth > 1.0) || !std::isfinite(o.damp_growth)) {
    throw config_error("gptq damp_growth = " + std::to_string(o.damp_growth) + " must be > 1");
  }
  if (o.block_size == 0) throw config_error("gptq block_size must be >= 1 (GPTQ uses 128)");
  if (o.search_clip) validate(o.clip);
}

// ---- Preparation: dead inputs, order, damping, the factor of H^-1 -----------------------------

/// Edge of the tiles in which inverse_cholesky copies H (reads and writes both stay in cache).
constexpr std::size_t hessian_copy_tile = 64;

/// The upper Cholesky factor U of (H' + damp I)^-1, where H' = H with rows/columns permuted
/// (row i of H' is row perm[i] of H) and dead diagonal entries set to 1, computed as
///   J (H' + damp I) J = R^T R  (dpotrf; J reverses the order, R upper),  U = J R^-T J  (dtrtri)
/// (then U^T U = J R^-1 R^-T J = (H' + damp I)^-1 and U is upper with a positive diagonal: the
/// factor, which is unique): K^3 / 3 + K^3 / 3 flops instead of potrf + potri + potrf's 4 K^3 / 3.
/// u [K, K] receives R^-1 in its row-major upper triangle, and U[i, j] = u[K-1-j, K-1-i]
/// (read it with inverse_factor_at). Returns false when H' + damp I is not positive definite.
inline bool inverse_cholesky(const double* h, std::size_t K, const std::vector<std::size_t>& perm,
                             const std::vector<char>& dead, double damp, double* u,
                             std::size_t threads = 1) {
  constexpr std::size_t t = hessian_copy_tile;
  for (std::size_t i0 = 0; i0 < K; i0 += t) {
    for (std::size_t j0 = i0; j0 < K; j0 += t) {
      for (std::size_t i = i0; i < std::min(i0 + t, K); ++i) {
        const std::size_t a = perm[K - 1 - i];
        for (std::size_t j = std::max(i, j0); j < std::min(j0 + t, K); ++j)
          u[i * K + j] = hessian_at(h, K, a, perm[K - 1 - j]);
      }
    }
  }
  for (std::size_t i = 0; i < K; ++i) {
    if (dead[perm[K - 1 - i]]) u[i * K + i] = 1.0;
    u[i * K + i] += damp;
  }
  // A row-major upper triangle is LAPACK's column-major lower one: the 'L' routines work on it
  // in place, without LAPACKE's row-major transposes.
  if (potrf_lower_blocked(K, u, K, threads) != 0) return false;  // R
  if (trtri_lower_blocked(K, u, K, threads) != 0) return false;  // R^-1
  for (std::size_t i = 0; i < K; ++i) {
    const double d = u[i * K + i];
    if (!(d > 0.0) || !std::isfinite(d)) return false;
  }
  return true;
}

/// U[i, j] (i <= j) from inverse_cholesky's u.
inline double inverse_factor_at(const double* u, std::size_t K, std::size_t i,
                                std::size_t j) noexcept {
  return u[(K - 1 - j) * K + (K - 1 - i)];
}

/// What GPTQ takes from diag(H) before it starts.
struct gptq_order {
  std::vector<char> dead;         ///< [K] 1 where H[k, k] == 0 (quantized as zero rows)
  std::vector<std::size_t> perm;  ///< [K] perm[i] = the row of W quantized i-th
  double mean_diag = 0;           ///< mean(diag H), dead diagonals counted as 1
};

/// Dead inputs, and the order: W's own, or with act_order decreasing diag(H) (stable sort).
/// Fills rep.dead_inputs and, with act_order, rep.perm.
inline gptq_order gptq_order_of(const double* h, std::size_t K, const gptq_options& o,
                                gptq_report& rep) {
  gptq_order ord;
  ord.dead.assign(K, 0);
  std::vector<double> diag(K);
  double diag_sum = 0;
  for (std::size_t k = 0; k < K; ++k) {
    diag[k] = h[k * K + k];
    if (diag[k] == 0.0) {
      ord.dead[k] = 1;
      ++rep.dead_inputs;
      diag[k] = 1.0;
    }
    diag_sum += diag[k];
  }
  ord.perm.resize(K);
  std::iota(ord.perm.begin(), ord.perm.end(), std::size_t(0));
  if (o.act_order) {
    std::stable_sort(ord.perm.begin(), ord.perm.end(),
                     [&](std::size_t a, std::size_t b) { return diag[a] > diag[b]; });
    rep.perm = ord.perm;
  }
  ord.mean_diag = diag_sum / static_cast<double>(K);
  return ord;
}

/// U, the factor of the damped, permuted H^-1 (inverse_cholesky's layout), with damping
/// damp = damp_fraction x mean(diag H): damp_fraction starts at o.damp and is multiplied by
/// o.damp_growth after each failed factorization, at most o.max_damp_retries times; then it
/// throws. Fills rep.damp, rep.damp_fraction and rep.retries.
inline std::vector<double> gptq_damped_factor(const double* h, std::size_t K, const gptq_order& ord,
                                              const gptq_options& o, gptq_report& rep) {
  std::vector<double> u(K * K);
  rep.damp_fraction = o.damp;
  for (;;) {
    rep.damp = rep.damp_fraction * ord.mean_diag;
    if (inverse_cholesky(h, K, ord.perm, ord.dead, rep.damp, u.data(), o.threads)) return u;
    if (rep.retries == o.max_damp_retries) {
      throw error("gptq: H is not positive definite even with damping " +
                  std::to_string(rep.damp_fraction) + " x mean(diag H) after " +
                  std::to_string(rep.retries) +
                  " retries: check the Hessian, or raise gptq_options::damp / max_damp_retries");
    }
    ++rep.retries;
    rep.damp_fraction *= o.damp_growth;
  }
}

/// trace((W - Q)^T H (W - Q)) of the RTN baseline Q = quant_tensor(W, c), for w [K, N].
template <class T>
double gptq_rtn_loss(const T* w, std::size_t K, std::size_t N, const double* h,
                     const quant_config& c, std::size_t threads) {
  const std::size_t G = c.num_groups(K);
  std::vector<T> d(K * N);
  std::vector<T> scales(G * N);
  std::vector<std::uint8_t> zps(G * N);
  quantize_sink<T> sink;
  sink.scales = scales.data();
  sink.zero_points = zps.data();
  sink.fake_quant = d.data();
  quantize_matrix(simd_tag{}, w, K, N, c, static_cast<const T*>(nullptr), 1, sink);
  for (std::size_t i = 0; i < K * N; ++i) d[i] = w[i] - d[i];
  return hessian_loss_by_rows(h, K, d.data(), N, c.effective_group_size(K), nullptr, threads);
}

/// The working copy of W that GPTQ updates, rows in quantization order.
template <class T>
struct gptq_work {
  std::vector<T> w;    ///< [K, N] row i = row perm[i] of W (dead rows zero), updated in place
  std::vector<T> imp;  ///< [K] imp[i] = H[perm[i], perm[i]]: the clip search's importance
};

/// The working copy: W with dead rows zeroed, permuted by ord.perm. With static_groups, every
/// group's parameters go into q first, computed from the unpermuted rows. `w` [K, N] has rows
/// `ldw` apart (a chunk of columns of a wider W).
template <class T>
gptq_work<T> gptq_working_copy(const T* w, std::size_t ldw, std::size_t K, std::size_t N,
                               const double* h, const gptq_order& ord, const quant_config& c,
                               const gptq_options& o, quantized<T>& q) {
  const std::size_t gs = c.effective_group_size(K);
  gptq_work<T> s;
  s.w.resize(K * N);
  for (std::size_t k = 0; k < K; ++k) {
    if (ord.dead[k]) {
      std::fill(s.w.begin() + k * N, s.w.begin() + (k + 1) * N, T(0));
    } else {
      std::copy(w + k * ldw, w + k * ldw + N, s.w.begin() + k * N);
    }
  }
  s.imp.resize(K);
  for (std::size_t k = 0; k < K; ++k) s.imp[k] = static_cast<T>(h[k * K + k]);
  if (o.static_groups) {
    for (std::size_t g = 0; g < c.num_groups(K); ++g) {
      const std::size_t r0 = g * gs;
      gptq_group_params(s.w.data(), N, r0, std::min(gs, K - r0), gs, c, o, s.imp.data(),
                        q.scales.data() + g * N, q.zero_points.data() + g * N);
    }
  }
  if (o.act_order) {
    permute_rows(s.w.data(), K, N, ord.perm);
    std::vector<T> permuted(K);
    for (std::size_t i = 0; i < K; ++i) permuted[i] = s.imp[ord.perm[i]];
    s.imp.swap(permuted);
  }
  return s;
}

// ---- The sweep over the rows: per-row step and lazy block update -------------------------------

/// Columns of W per chunk of the sweep. GPTQ treats each column of W (an output channel) on
/// its own: the sweep runs on fixed chunks of columns, each with its own working copy, spread
/// over gptq_options::threads. The chunks do not depend on the thread count, so neither does
/// the result.
constexpr std::size_t gptq_column_chunk = 256;

/// What the sweep reads (W, H, the grid, the order, U) and writes (the working copy, q) for
/// one chunk of N columns.
template <class T>
struct gptq_state {
  const T* w;  ///< [K, N] the chunk of W as given, rows ldw apart
  std::size_t K, N, ldw;
  const double* h;  ///< [K, K]
  const quant_config& c;
  const gptq_options& o;
  const gptq_order& ord;
  const std::vector<double>& u;  ///< U in inverse_cholesky's layout
  gptq_work<T>& work;
  quantized<T>& q;  ///< of the chunk: codes [K, N], parameters [G, N]
};

/// The factor's rows of one lazy block [i1, i2), shared by the chunks.
template <class T>
struct gptq_block {
  std::size_t i1 = 0, i2 = 0;
  std::size_t ld = 0;    ///< row stride of panel: K - i1
  std::vector<T> panel;  ///< [bs, K - i1]: U[i1:i2, i1:K] in T
};

/// Sums over the live rows for the free loss (see gptq_loss).
struct gptq_error_sums {
  double err_sq = 0;   ///< sum |e_k|^2
  double damp_sq = 0;  ///< sum |w_k - q_k|^2 (W as given)
};

/// One chunk of columns: its quantized result, working copy and buffers.
template <class T>
struct gptq_chunk {
  std::size_t n0 = 0, n = 0;  ///< columns [n0, n0 + n) of W
  quantized<T> q;
  gptq_work<T> work;
  std::vector<T> err;     ///< [bs, n]: row k - i1 = e_k
  std::vector<T> values;  ///< [n]: the dequantized row just encoded
  gptq_error_sums sums;
};

/// End of the lazy block that starts at row i1: i1 + bs (at most K). When group parameters
/// come from the updated rows (dynamic_groups), a group that starts inside the block and runs
/// past its end starts the next block instead: its rows are all updated before it is reached.
inline std::size_t gptq_block_end(std::size_t i1, std::size_t bs, std::size_t K, std::size_t gs,
                                  bool dynamic_groups) noexcept {
  std::size_t i2 = std::min(i1 + bs, K);
  if (dynamic_groups) {
    const std::size_t s = ((i2 - 1) / gs) * gs;
    if (s > i1 && std::min(s + gs, K) > i2) i2 = s;
  }
  return i2;
}

/// b.panel[r, j - i1] = U[i1 + r, j] in T for j >= i1 + r (below the diagonal: not written).
/// Row K-1-j of u holds U[., j] reversed, so each j reads `rows` consecutive doubles.
template <class T>
void load_factor_panel(const std::vector<double>& u, std::size_t K, gptq_block<T>& b) {
  const std::size_t rows = b.i2 - b.i1;
  b.ld = K - b.i1;
  for (std::size_t j = b.i1; j < K; ++j) {
    const double* src = u.data() + (K - 1 - j) * K + (K - 1 - b.i1);
    const std::size_t top = std::min(rows, j - b.i1 + 1);
    for (std::size_t r = 0; r < top; ++r)
      b.panel[r * b.ld + (j - b.i1)] = static_cast<T>(*(src - r));
  }
}

/// GPTQ's step for row k (torch's column i):
///   q_k = quantize(w_k)          codes into q's row perm[k]; values [N] = the dequantized q_k
///   e_k = (w_k - q_k) / U[k, k]  into the block's error rows err [bs, N]
///   w_j -= U[k, j] e_k           for k < j < i2: one ger on the rest of the block
template <class T>
void gptq_row(gptq_state<T>& s, std::size_t k, const gptq_block<T>& b, T* err, T* values,
              gptq_error_sums& sums) {
  const std::size_t N = s.N, gs = s.c.effective_group_size(s.K);
  T* wk = s.work.w.data() + k * N;
  const std::size_t row = s.ord.perm[k];
  const std::size_t g = row / gs;
  encode_row(wk, N, s.c, s.q.scales.data() + g * N, s.q.zero_points.data() + g * N,
             s.q.codes.data() + row * N, values);
  const T dk = static_cast<T>(inverse_factor_at(s.u.data(), s.K, k, k));
  T* ek = err + (k - b.i1) * N;
  for (std::size_t n = 0; n < N; ++n) ek[n] = (wk[n] - values[n]) / dk;
  if (!s.ord.dead[row]) {
    const T* w0 = s.w + row * s.ldw;
    for (std::size_t n = 0; n < N; ++n) {
      const double e = static_cast<double>(ek[n]);
      const double dd = static_cast<double>(w0[n]) - static_cast<double>(values[n]);
      sums.err_sq += e * e;
      sums.damp_sq += dd * dd;
    }
  }
  if (k + 1 < b.i2) {
    blas::ger(b.i2 - k - 1, N, T(-1), b.panel.data() + (k - b.i1) * b.ld + (k + 1 - b.i1), ek,
              wk + N, N);
  }
}

/// The lazy batch update after a block: W[i2:, :] -= U[i1:i2, i2:]^T E[i1:i2, :] (one gemm).
template <class T>
void gptq_lazy_update(gptq_state<T>& s, const gptq_block<T>& b, const T* err) {
  if (b.i2 >= s.K) return;
  const std::size_t rows = b.i2 - b.i1;
  blas::gemm(true, false, s.K - b.i2, s.N, rows, T(-1), b.panel.data() + rows, b.ld, err, s.N, T(1),
             s.work.w.data() + b.i2 * s.N, s.N);
}

/// Block [b.i1, b.i2) of the sweep on one chunk: its rows, then the lazy update of the rows
/// after it.
template <class T>
void gptq_chunk_block(gptq_state<T>& s, gptq_chunk<T>& ch, const gptq_block<T>& b) {
  const std::size_t K = s.K, gs = s.c.effective_group_size(K);
  const bool dynamic_groups = !s.o.static_groups;
  for (std::size_t k = b.i1; k < b.i2; ++k) {
    if (dynamic_groups && k % gs == 0) {
      // The grid of the group starting at row k, from its updated rows (act_order here only
      // with one group, so the group of row k is the group of row perm[k]).
      const std::size_t g = k / gs;
      gptq_group_params(s.work.w.data(), s.N, k, std::min(gs, K - k), gs, s.c, s.o,
                        s.work.imp.data(), s.q.scales.data() + g * s.N,
                        s.q.zero_points.data() + g * s.N);
    }
    gptq_row(s, k, b, ch.err.data(), ch.values.data(), ch.sums);
  }
  gptq_lazy_update(s, b, ch.err.data());  // W[i2:] -= U[i1:i2, i2:]^T E
}

/// Copies a chunk's codes and parameters into columns [n0, n0 + n) of q.
template <class T>
void gptq_store_chunk(const gptq_chunk<T>& ch, quantized<T>& q) {
  const std::size_t N = q.cols();
  for (std::size_t k = 0; k < q.rows(); ++k)
    std::copy(ch.q.codes.data() + k * ch.n, ch.q.codes.data() + (k + 1) * ch.n,
              q.codes.data() + k * N + ch.n0);
  for (std::size_t g = 0; g < q.num_groups(); ++g) {
    std::copy(ch.q.scales.data() + g * ch.n, ch.q.scales.data() + (g + 1) * ch.n,
              q.scales.data() + g * N + ch.n0);
    std::copy(ch.q.zero_points.data() + g * ch.n, ch.q.zero_points.data() + (g + 1) * ch.n,
              q.zero_points.data() + g * N + ch.n0);
  }
}

/// All rows, in lazy blocks of o.block_size (GPTQ's fasterquant loop), on every chunk of
/// columns; q receives the result. Returns the sums for the free loss, added chunk by chunk.
template <class T>
gptq_error_sums gptq_sweep(const T* w, std::size_t K, std::size_t N, const double* h,
                           const quant_config& c, const gptq_options& o, const gptq_order& ord,
                           const std::vector<double>& u, quantized<T>& q) {
  const std::size_t gs = c.effective_group_size(K);
  const bool dynamic_groups = !o.static_groups && c.num_groups(K) > 1;
  const std::size_t bs = std::min(o.block_size, K);
  std::vector<gptq_chunk<T>> chunks((N + gptq_column_chunk - 1) / gptq_column_chunk);
  auto state = [&](gptq_chunk<T>& ch) {
    return gptq_state<T>{w + ch.n0, K, ch.n, N, h, c, o, ord, u, ch.work, ch.q};
  };
  parallel_for(chunks.size(), o.threads, [&](std::size_t i) {
    gptq_chunk<T>& ch = chunks[i];
    ch.n0 = i * gptq_column_chunk;
    ch.n = std::min(gptq_column_chunk, N - ch.n0);
    ch.q = allocate_quantized<T>(K, ch.n, c);
    ch.work = gptq_working_copy(w + ch.n0, N, K, ch.n, h, ord, c, o, ch.q);
    ch.err.resize(bs * ch.n);
    ch.values.resize(ch.n);
  });
  gptq_block<T> b;
  b.panel.resize(bs * K);
  for (b.i1 = 0; b.i1 < K; b.i1 = b.i2) {
    b.i2 = gptq_block_end(b.i1, bs, K, gs, dynamic_groups);
    load_factor_panel(u, K, b);  // U[i1:i2, i1:] in T
    parallel_for(chunks.size(), o.threads, [&](std::size_t i) {
      gptq_state<T> s = state(chunks[i]);
      gptq_chunk_block(s, chunks[i], b);
    });
  }
  gptq_error_sums sums;
  for (gptq_chunk<T>& ch : chunks) {
    gptq_store_chunk(ch, q);
    sums.err_sq += ch.sums.err_sq;
    sums.damp_sq += ch.sums.damp_sq;
    ch = gptq_chunk<T>();  // frees the chunk's working copy
  }
  return sums;
}

// ---- Loss --------------------------------------------------------------------------------------

/// report.loss (and report.group_loss with exact_loss) of q for w [K, N] after the sweep. The
/// free loss subtracts the damping's share from sum |e_k|^2; when that share is most of it
/// (large damping), the difference would keep few correct digits: then it is measured by the
/// product (hessian_loss_by_rows), as with exact_loss.
template <class T>
void gptq_loss(const T* w, std::size_t K, std::size_t N, const double* h, const quant_config& c,
               const gptq_options& o, const quantized<T>& q, const gptq_error_sums& sums,
               gptq_report& rep) {
  const bool cancels = rep.damp * sums.damp_sq > gptq_max_damping_share * sums.err_sq;
  if (o.exact_loss || cancels) {
    std::vector<T> d(K * N);
    dequant_matrix(simd_tag{}, q, 1, d.data());
    for (std::size_t i = 0; i < K * N; ++i) d[i] = w[i] - d[i];
    if (o.exact_loss) rep.group_loss = xt::zeros<double>({c.num_groups(K), N});
    rep.loss = hessian_loss_by_rows(h, K, d.data(), N, c.effective_group_size(K),
                                    o.exact_loss ? rep.group_loss.data() : nullptr, o.threads);
  } else {
    // trace(D^T H' D) = sum |e_k|^2 for D = W' - Q (W' = W with dead rows zeroed, H' damped
    // with dead diagonals 1); removing the damping and the dead rows (whose rows of H are 0)
    // leaves trace((W - Q)^T H (W - Q)).
    rep.loss = sums.err_sq - rep.damp * sums.damp_sq;
  }
}

/// GPTQ on w [K, N] (finite, checked) with h [K, K] (validated).
template <class T>
gptq_result<T> gptq_matrix(const T* w, std::size_t K, std::size_t N, const double* h,
                           const quant_config& c, const gptq_options& o) {
  gptq_result<T> res;
  res.q = allocate_quantized<T>(K, N, c);
  const gptq_order ord = gptq_order_of(h, K, o, res.report);
  if (o.rtn_loss) res.report.rtn_loss = gptq_rtn_loss(w, K, N, h, c, o.threads);
  const std::vector<double> u = gptq_damped_factor(h, K, ord, o, res.report);
  const gptq_error_sums sums = gptq_sweep(w, K, N, h, c, o, ord, u, res.q);
  gptq_loss(w, K, N, h, c, o, res.q, sums, res.report);
  return res;
}

}  // namespace detail

/// GPTQ of W[K, N] (K = reduction axis) with the Hessian proxy H [K, K] (symmetric, its upper
/// triangle is read; float or double; any positive scale) on the grid of `config`. W: any 2-D
/// expression of float, double, float16_t or bfloat16_t (converted once to the compute type).
/// Throws config_error (config, options), shape_error (shapes, negative diag(H)),
/// non_finite_error (NaN/Inf in W or H), error (H not positive definite after the retries).
template <class E, class EH>
auto gptq(const xt::xexpression<E>& w, const xt::xexpression<EH>& hessian,
          const quant_config& config, const gptq_options& options = {}) {
  using T = compute_type_t<typename E::value_type>;
  validate(config);
  detail::validate(options);
  const auto m = detail::as_matrix<T>(w, "weight");
  const auto h = detail::as_matrix<double>(hessian, "hessian");
  const std::size_t K = m.rows, N = m.cols;
  if (K == 0 || N == 0) {
    throw shape_error("gptq: the weight is empty ([" + std::to_string(K) + ", " +
                      std::to_string(N) + "])");
  }
  if (h.rows != K || h.cols != K) {
    throw shape_error("gptq: the Hessian must be [K, K] = [" + std::to_string(K) + ", " +
                      std::to_string(K) + "] for a weight with K = " + std::to_string(K) +
                      " rows, got [" + std::to_string(h.rows) + ", " + std::to_string(h.cols) +
                      "]");
  }
  const std::size_t G = config.num_groups(K);
  if (options.act_order && !options.static_groups && G > 1) {
    throw config_error(
        "gptq: act_order with " + std::to_string(G) +
        " groups along K needs static_groups = true: the ONNX formats store groups contiguous "
        "in K and have no g_idx (or use per-channel scales)");
  }
  for (std::size_t i = 0; i < K * N; ++i) {
    if (!std::isfinite(m.data[i])) {
      throw non_finite_error(i / N, i % N, static_cast<double>(m.data[i]));
    }
  }
  for (std::size_t a = 0; a < K; ++a) {
    for (std::size_t b = 0; b < K; ++b) {
      const double v = h.data[a * K + b];
      if (!std::isfinite(v)) {
        throw non_finite_error("gptq: hessian[" + std::to_string(a) + ", " + std::to_string(b) +
                                   "] is " + (v != v ? "NaN" : "infinite") +
                                   ": the calibration activations are not finite",
                               a, b);
      }
    }
    if (h.data[a * K + a] < 0.0) {
      throw shape_error("gptq: hessian[" + std::to_string(a) + ", " + std::to_string(a) +
                        "] = " + std::to_string(h.data[a * K + a]) +
                        " is negative: H must be a sum of x x^T (positive semidefinite)");
    }
  }
  return detail::gptq_matrix<T>(m.data, K, N, h.data, config, options);
}

}  // namespace int4q

#endif  // INT4Q_GPTQ_HPP
