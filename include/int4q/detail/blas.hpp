// blas: the one place that calls CBLAS and LAPACKE. Thin typed wrappers, float and double
// overloads, sizes as std::size_t; each forwards its arguments unchanged to the one BLAS or
// LAPACK routine it names, so a call through it gives the same bytes as the direct call.
//
// BLAS wrappers are row-major (CblasRowMajor) with the usual leading dimensions:
//   gemm : C[m, n] = alpha op(A) op(B) + beta C   op(A) [m, k], op(B) [k, n]; op = transpose
//          when trans_a / trans_b (then A is [k, m], B is [n, k] in memory)
//   ger  : A[m, n] += alpha x y^T                 x [m], y [n] (unit strides)
//   syrk : C[n, n] = alpha A^T A + beta C (trans) or alpha A A^T + beta C, upper or lower
//          triangle only                          A [k, n] (trans) or [n, k]
// LAPACK wrappers are column-major (LAPACK's own layout: a row-major upper triangle is the
// column-major lower one, so row-major callers use the 'lower' routines in place), and return
// LAPACK's info (0 = success):
//   potrf_lower : A = L L^T, L into the lower triangle of a [n, n]
//   trtri_lower : L^-1 of a non-unit lower triangular L, in place
// and column-major double gemm_cm, syrk_lower_cm, trsm_right_lower_cm, trmm_left_lower_cm for
// the blocked factorizations of detail/cholesky.hpp.
#ifndef INT4Q_DETAIL_BLAS_HPP
#define INT4Q_DETAIL_BLAS_HPP

#include <cblas.h>
#include <lapacke.h>

#include <cstddef>

namespace int4q {
namespace detail {
namespace blas {

/// Threads of the BLAS library (OpenBLAS's setting; 1 when it cannot be asked).
inline int threads() noexcept {
#if defined(OPENBLAS_VERSION)
  return openblas_get_num_threads();
#else
  return 1;
#endif
}

inline CBLAS_TRANSPOSE op(bool trans) noexcept { return trans ? CblasTrans : CblasNoTrans; }
inline int to_int(std::size_t v) noexcept { return static_cast<int>(v); }

inline void gemm(bool trans_a, bool trans_b, std::size_t m, std::size_t n, std::size_t k,
                 float alpha, const float* a, std::size_t lda, const float* b, std::size_t ldb,
                 float beta, float* c, std::size_t ldc) {
  cblas_sgemm(CblasRowMajor, op(trans_a), op(trans_b), to_int(m), to_int(n), to_int(k), alpha, a,
              to_int(lda), b, to_int(ldb), beta, c, to_int(ldc));
}
inline void gemm(bool trans_a, bool trans_b, std::size_t m, std::size_t n, std::size_t k,
                 double alpha, const double* a, std::size_t lda, const double* b, std::size_t ldb,
                 double beta, double* c, std::size_t ldc) {
  cblas_dgemm(CblasRowMajor, op(trans_a), op(trans_b), to_int(m), to_int(n), to_int(k), alpha, a,
              to_int(lda), b, to_int(ldb), beta, c, to_int(ldc));
}

inline void ger(std::size_t m, std::size_t n, float alpha, const float* x, const float* y, float* a,
                std::size_t lda) {
  cblas_sger(CblasRowMajor, to_int(m), to_int(n), alpha, x, 1, y, 1, a, to_int(lda));
}
inline void ger(std::size_t m, std::size_t n, double alpha, const double* x, const double* y,
                double* a, std::size_t lda) {
  cblas_dger(CblasRowMajor, to_int(m), to_int(n), alpha, x, 1, y, 1, a, to_int(lda));
}

inline void syrk(bool upper, bool trans, std::size_t n, std::size_t k, float alpha, const float* a,
                 std::size_t lda, float beta, float* c, std::size_t ldc) {
  cblas_ssyrk(CblasRowMajor, upper ? CblasUpper : CblasLower, op(trans), to_int(n), to_int(k),
              alpha, a, to_int(lda), beta, c, to_int(ldc));
}
inline void syrk(bool upper, bool trans, std::size_t n, std::size_t k, double alpha,
                 const double* a, std::size_t lda, double beta, double* c, std::size_t ldc) {
  cblas_dsyrk(CblasRowMajor, upper ? CblasUpper : CblasLower, op(trans), to_int(n), to_int(k),
              alpha, a, to_int(lda), beta, c, to_int(ldc));
}

// Column-major BLAS-3 on double, for the blocked factorizations (detail/cholesky.hpp), which
// work in LAPACK's layout:
//   gemm_cm : C[m, n] = alpha op(A) op(B) + beta C
//   syrk_cm : C[n, n] = alpha A A^T + beta C, lower triangle   A [n, k]
//   trsm_cm : B[m, n] = alpha B op(L)^-1 (right) with L lower, non-unit
//   trmm_cm : B[m, n] = alpha L B (left) with L lower, non-unit
inline void gemm_cm(bool trans_a, bool trans_b, std::size_t m, std::size_t n, std::size_t k,
                    double alpha, const double* a, std::size_t lda, const double* b,
                    std::size_t ldb, double beta, double* c, std::size_t ldc) {
  cblas_dgemm(CblasColMajor, op(trans_a), op(trans_b), to_int(m), to_int(n), to_int(k), alpha, a,
              to_int(lda), b, to_int(ldb), beta, c, to_int(ldc));
}
inline void syrk_lower_cm(std::size_t n, std::size_t k, double alpha, const double* a,
                          std::size_t lda, double beta, double* c, std::size_t ldc) {
  cblas_dsyrk(CblasColMajor, CblasLower, CblasNoTrans, to_int(n), to_int(k), alpha, a, to_int(lda),
              beta, c, to_int(ldc));
}
inline void trsm_right_lower_cm(bool trans, std::size_t m, std::size_t n, double alpha,
                                const double* l, std::size_t ldl, double* b, std::size_t ldb) {
  cblas_dtrsm(CblasColMajor, CblasRight, CblasLower, op(trans), CblasNonUnit, to_int(m), to_int(n),
              alpha, l, to_int(ldl), b, to_int(ldb));
}
inline void trmm_left_lower_cm(std::size_t m, std::size_t n, double alpha, const double* l,
                               std::size_t ldl, double* b, std::size_t ldb) {
  cblas_dtrmm(CblasColMajor, CblasLeft, CblasLower, CblasNoTrans, CblasNonUnit, to_int(m),
              to_int(n), alpha, l, to_int(ldl), b, to_int(ldb));
}

inline int potrf_lower(std::size_t n, float* a, std::size_t lda) {
  return static_cast<int>(LAPACKE_spotrf(LAPACK_COL_MAJOR, 'L', static_cast<lapack_int>(n), a,
                                         static_cast<lapack_int>(lda)));
}
inline int potrf_lower(std::size_t n, double* a, std::size_t lda) {
  return static_cast<int>(LAPACKE_dpotrf(LAPACK_COL_MAJOR, 'L', static_cast<lapack_int>(n), a,
                                         static_cast<lapack_int>(lda)));
}

inline int trtri_lower(std::size_t n, float* a, std::size_t lda) {
  return static_cast<int>(LAPACKE_strtri(LAPACK_COL_MAJOR, 'L', 'N', static_cast<lapack_int>(n), a,
                                         static_cast<lapack_int>(lda)));
}
inline int trtri_lower(std::size_t n, double* a, std::size_t lda) {
  return static_cast<int>(LAPACKE_dtrtri(LAPACK_COL_MAJOR, 'L', 'N', static_cast<lapack_int>(n), a,
                                         static_cast<lapack_int>(lda)));
}

}  // namespace blas
}  // namespace detail
}  // namespace int4q

#endif  // INT4Q_DETAIL_BLAS_HPP
