// hessian_loss: the layer output error of a weight error D = W - Q [K, N] under the Hessian
// proxy H = sum over calibration rows of x x^T [K, K]:
//
//   L(D) = trace(D^T H D) = sum_{k, n} D[k, n] (H D)[k, n]   ( = sum_x |x (W - Q)|^2 )
//
// H is symmetric and only its upper triangle is read. H D is computed by panels of
// hessian_panel_rows rows of H, converted to the compute type T of D (one gemm in T per panel),
// the terms D[k, n] (H D)[k, n] and their sums in double. GPTQ reports this loss (per group
// too); the auto plan scores candidates with it.
#ifndef INT4Q_HESSIAN_LOSS_HPP
#define INT4Q_HESSIAN_LOSS_HPP

#include <algorithm>
#include <cstddef>
#include <string>
#include <vector>

#include <xtensor/xtensor.hpp>

#include <int4q/config.hpp>
#include <int4q/detail/blas.hpp>
#include <int4q/detail/input.hpp>
#include <int4q/detail/parallel.hpp>
#include <int4q/error.hpp>

namespace int4q {
namespace detail {

/// H[a, b] of a symmetric h [K, K] read from its upper triangle.
inline double hessian_at(const double* h, std::size_t K, std::size_t a, std::size_t b) noexcept {
  return a <= b ? h[a * K + b] : h[b * K + a];
}

/// Rows of H per panel of hessian_loss_rows (bounds the copies to 64 x (K + N) values).
constexpr std::size_t hessian_panel_rows = 64;

/// Columns per gemm of H D: fixed chunks, spread over `threads` (0 = hardware threads), so
/// that the terms do not depend on the thread count.
constexpr std::size_t hessian_loss_column_chunk = 256;

/// Calls row(k, terms) for k = 0 .. K-1 in order, terms [N] = D[k, n] (H D)[k, n] in double,
/// for a symmetric h [K, K] (upper triangle read) and d [K, N]. Callers sum the terms.
template <class T, class F>
void hessian_loss_rows(const double* h, std::size_t K, const T* d, std::size_t N, F&& row,
                       std::size_t threads = 1) {
  constexpr std::size_t p = hessian_panel_rows;
  std::vector<T> panel(std::min(p, K) * K);  // rows [i0, i0 + rows) of H in T
  std::vector<T> hd(std::min(p, K) * N);     // the same rows of H D
  std::vector<double> terms(N);
  for (std::size_t i0 = 0; i0 < K; i0 += p) {
    const std::size_t rows = std::min(p, K - i0);
    for (std::size_t j = 0; j < K; ++j) {  // j outer: below the diagonal, reads rows of h
      for (std::size_t r = 0; r < rows; ++r)
        panel[r * K + j] = static_cast<T>(hessian_at(h, K, i0 + r, j));
    }
    constexpr std::size_t cc = hessian_loss_column_chunk;
    parallel_for((N + cc - 1) / cc, threads, [&](std::size_t c) {
      const std::size_t n0 = c * cc;
      blas::gemm(false, false, rows, std::min(cc, N - n0), K, T(1), panel.data(), K, d + n0, N,
                 T(0), hd.data() + n0, N);
    });
    for (std::size_t r = 0; r < rows; ++r) {
      const T* dk = d + (i0 + r) * N;
      for (std::size_t n = 0; n < N; ++n)
        terms[n] = static_cast<double>(dk[n]) * static_cast<double>(hd[r * N + n]);
      row(i0 + r, static_cast<const double*>(terms.data()));
    }
  }
}

/// trace(D^T H D) summed row by row (sum over k of (sum over n of the terms)); group_loss
/// [G, N] (groups of `gs` rows) gets the per-group, per-column sums added when not null.
template <class T>
double hessian_loss_by_rows(const double* h, std::size_t K, const T* d, std::size_t N,
                            std::size_t gs, double* group_loss, std::size_t threads = 1) {
  double total = 0;
  hessian_loss_rows(
      h, K, d, N,
      [&](std::size_t k, const double* terms) {
        double row = 0;
        double* gl = group_loss ? group_loss + (k / gs) * N : nullptr;
        for (std::size_t n = 0; n < N; ++n) {
          row += terms[n];
          if (gl) gl[n] += terms[n];
        }
        total += row;
      },
      threads);
  return total;
}

}  // namespace detail

/// trace(D^T H D) = sum_{k, n} D[k, n] (H D)[k, n] for a weight error D [K, N] (any 2-D
/// expression of float, double, float16_t or bfloat16_t; computed in its compute type) and
/// the Hessian proxy H [K, K] (symmetric, upper triangle read). The terms are summed one by
/// one in row-major order of D. Throws shape_error for mismatched shapes.
template <class EH, class ED>
double hessian_loss(const xt::xexpression<EH>& hessian, const xt::xexpression<ED>& d) {
  using T = compute_type_t<typename ED::value_type>;
  const auto dm = detail::as_matrix<T>(d, "weight error");
  const auto hm = detail::as_matrix<double>(hessian, "hessian");
  const std::size_t K = dm.rows, N = dm.cols;
  if (hm.rows != K || hm.cols != K) {
    throw shape_error("hessian_loss: the Hessian must be [K, K] = [" + std::to_string(K) + ", " +
                      std::to_string(K) + "] for a weight error with K = " + std::to_string(K) +
                      " rows, got [" + std::to_string(hm.rows) + ", " + std::to_string(hm.cols) +
                      "]");
  }
  double total = 0;
  detail::hessian_loss_rows(hm.data, K, dm.data, N, [&](std::size_t, const double* terms) {
    for (std::size_t n = 0; n < N; ++n) total += terms[n];
  });
  return total;
}

}  // namespace int4q

#endif  // INT4Q_HESSIAN_LOSS_HPP
