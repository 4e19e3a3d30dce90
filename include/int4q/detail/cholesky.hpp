// Blocked Cholesky factorization and triangular inverse in LAPACK's layout (column-major, lower
// triangle), on fixed blocks of cholesky_block columns, spread over a thread count:
//
//   potrf_lower_blocked : A = L L^T              (LAPACK dpotrf 'L'), K^3 / 3 flops
//   trtri_lower_blocked : L := L^-1, L lower     (LAPACK dtrtri 'L' 'N'), K^3 / 3 flops
//
// Every block operation is one BLAS/LAPACK call on one thread, and the blocks do not depend on
// the thread count: the bytes of the result are the same for any count (LAPACK's own routines on
// a threaded BLAS are not). Each step is the textbook right-looking algorithm:
//   potrf, for each block column j:  L_jj = chol(A_jj);  L_ij = A_ij L_jj^-T (i > j, per block
//     row);  A_ik -= L_ij L_kj^T (i >= k > j, per tile; syrk on the diagonal tiles)
//   trtri, for block columns j from the last (LAPACK dtrtri's order): with the trailing part
//     already inverted (T = L[j+1:, j+1:]^-1), the panel P = L[j+1:, j] becomes -(T P) L_jj^-1
//     (T P per block row, out of place; then one trsm per block row), then L_jj := L_jj^-1.
// Both read and write only the lower triangle of `a` (the upper part of diagonal tiles is not
// touched).
#ifndef INT4Q_DETAIL_CHOLESKY_HPP
#define INT4Q_DETAIL_CHOLESKY_HPP

#include <algorithm>
#include <cstddef>
#include <utility>
#include <vector>

#include <int4q/detail/blas.hpp>
#include <int4q/detail/parallel.hpp>

namespace int4q {
namespace detail {

/// Columns per block of the blocked factorizations.
constexpr std::size_t cholesky_block = 256;

/// A = L L^T of a column-major [n, n] whose lower triangle holds A; L replaces it. Returns 0, or
/// LAPACK's info (> 0: the leading minor of that order is not positive definite).
inline int potrf_lower_blocked(std::size_t n, double* a, std::size_t lda, std::size_t threads) {
  constexpr std::size_t nb = cholesky_block;
  for (std::size_t j0 = 0; j0 < n; j0 += nb) {
    const std::size_t nj = std::min(nb, n - j0);
    double* ajj = a + j0 * lda + j0;
    const int info = blas::potrf_lower(nj, ajj, lda);
    if (info != 0) return static_cast<int>(j0) + info;
    const std::size_t r1 = j0 + nj;  // first row below the block
    if (r1 >= n) break;
    const std::size_t blocks = (n - r1 + nb - 1) / nb;
    // L_ij = A_ij L_jj^-T, one block row at a time.
    parallel_for(blocks, threads, [&](std::size_t i) {
      const std::size_t r0 = r1 + i * nb;
      blas::trsm_right_lower_cm(true, std::min(nb, n - r0), nj, 1.0, ajj, lda, a + j0 * lda + r0,
                                lda);
    });
    // A_ik -= L_ij L_kj^T for the trailing tiles i >= k.
    std::vector<std::pair<std::size_t, std::size_t>> tiles;
    for (std::size_t i = 0; i < blocks; ++i)
      for (std::size_t k = 0; k <= i; ++k) tiles.emplace_back(i, k);
    parallel_for(tiles.size(), threads, [&](std::size_t t) {
      const std::size_t r0 = r1 + tiles[t].first * nb, c0 = r1 + tiles[t].second * nb;
      const std::size_t nr = std::min(nb, n - r0), nc = std::min(nb, n - c0);
      const double* li = a + j0 * lda + r0;
      if (r0 == c0) {
        blas::syrk_lower_cm(nr, nj, -1.0, li, lda, 1.0, a + c0 * lda + r0, lda);
      } else {
        blas::gemm_cm(false, true, nr, nc, nj, -1.0, li, lda, a + j0 * lda + c0, lda, 1.0,
                      a + c0 * lda + r0, lda);
      }
    });
  }
  return 0;
}

/// L := L^-1 for a non-unit lower triangular column-major [n, n] L. Returns 0, or LAPACK's info
/// (> 0: a zero diagonal entry).
inline int trtri_lower_blocked(std::size_t n, double* a, std::size_t lda, std::size_t threads) {
  constexpr std::size_t nb = cholesky_block;
  if (n == 0) return 0;
  std::vector<double> tp;  // T P, [rest, nj] column-major
  for (std::size_t j0 = ((n - 1) / nb) * nb;; j0 -= nb) {
    const std::size_t nj = std::min(nb, n - j0);
    double* ajj = a + j0 * lda + j0;
    const std::size_t r1 = j0 + nj;
    if (r1 < n) {
      const std::size_t rest = n - r1, blocks = (rest + nb - 1) / nb;
      double* p = a + j0 * lda + r1;        // P = L[r1:, j0:r1], [rest, nj]
      const double* t = a + r1 * lda + r1;  // T = the inverted trailing part
      tp.assign(rest * nj, 0.0);
      // Block row i of T P = T_ii P_i + T[i, :i] P[:i] (T lower), into tp.
      parallel_for(blocks, threads, [&](std::size_t i) {
        const std::size_t q0 = i * nb, nr = std::min(nb, rest - q0);
        for (std::size_t c = 0; c < nj; ++c)
          std::copy(p + c * lda + q0, p + c * lda + q0 + nr, tp.data() + c * rest + q0);
        blas::trmm_left_lower_cm(nr, nj, 1.0, t + q0 * lda + q0, lda, tp.data() + q0, rest);
        if (q0 > 0) {
          blas::gemm_cm(false, false, nr, nj, q0, 1.0, t + q0, lda, p, lda, 1.0, tp.data() + q0,
                        rest);
        }
      });
      // P := -(T P) L_jj^-1, per block row (L_jj not inverted yet).
      parallel_for(blocks, threads, [&](std::size_t i) {
        const std::size_t q0 = i * nb, nr = std::min(nb, rest - q0);
        for (std::size_t c = 0; c < nj; ++c)
          std::copy(tp.data() + c * rest + q0, tp.data() + c * rest + q0 + nr, p + c * lda + q0);
        blas::trsm_right_lower_cm(false, nr, nj, -1.0, ajj, lda, p + q0, lda);
      });
    }
    const int info = blas::trtri_lower(nj, ajj, lda);
    if (info != 0) return static_cast<int>(j0) + info;
    if (j0 == 0) break;
  }
  return 0;
}

}  // namespace detail
}  // namespace int4q

#endif  // INT4Q_DETAIL_CHOLESKY_HPP
