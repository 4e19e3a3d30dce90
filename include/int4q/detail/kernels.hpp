// Raw kernels of the integer grid, vectorized across columns. Each takes pointers plus extents
// (shapes in comments), never allocates, never throws. Every kernel is a template on a tag:
// `simd_tag` runs xsimd batches, `scalar_tag` runs the identical arithmetic one element at a
// time; tests compare the two.
#ifndef INT4Q_DETAIL_KERNELS_HPP
#define INT4Q_DETAIL_KERNELS_HPP

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <type_traits>

#if defined(__SSE2__)
#include <immintrin.h>  // narrowing codes to bytes (quantize_columns_impl)
#endif

#include <int4q/config.hpp>
#include <int4q/detail/simd.hpp>

namespace int4q {
namespace detail {

/// Widest column tile the kernels handle in one call (bounds their stack scratch).
constexpr std::size_t max_tile_cols = 256;

/// Widens each column range [lo[j], hi[j]] to include 0 (the range of a zero-padded group).
template <class T>
void include_zero(T* lo, T* hi, std::size_t n) noexcept {
  for (std::size_t j = 0; j < n; ++j) {
    lo[j] = std::min(lo[j], T(0));
    hi[j] = std::max(hi[j], T(0));
  }
}

// ---------------------------------------------------------------------------------------------
// minmax_columns: lo[j] = min_i w[i, j], hi[j] = max_i w[i, j] over `rows` rows.
//   w  : [rows, ld] (first `n` columns used)     lo, hi : [n]
// Returns false when any element is NaN or +-Inf (x * 0 is NaN exactly for those).
// ---------------------------------------------------------------------------------------------
template <class T>
bool minmax_columns(scalar_tag, const T* w, std::size_t ld, std::size_t rows, std::size_t n, T* lo,
                    T* hi) noexcept {
  T probe = 0;
  for (std::size_t j = 0; j < n; ++j) {
    lo[j] = std::numeric_limits<T>::infinity();
    hi[j] = -std::numeric_limits<T>::infinity();
  }
  for (std::size_t i = 0; i < rows; ++i) {
    const T* row = w + i * ld;
    for (std::size_t j = 0; j < n; ++j) {
      lo[j] = std::min(lo[j], row[j]);
      hi[j] = std::max(hi[j], row[j]);
      probe += row[j] * T(0);
    }
  }
  return probe == T(0);
}

template <class T>
bool minmax_columns(simd_tag, const T* w, std::size_t ld, std::size_t rows, std::size_t n, T* lo,
                    T* hi) noexcept {
  // Blocked over R rows x U batches: lo/hi of a chunk stay in registers while R consecutive
  // rows are read, then go back to lo[], hi[] (L1) before the next chunk. The rows of a block
  // are read left to right, a stream the prefetchers follow (a chunk over all rows at once
  // jumps a row stride for every cache line, 2.6x slower on [4096, 4096]). NaN is caught by an
  // OR of isnan(x) (no add chain); +-Inf shows up in lo/hi themselves.
  using V = vec_ops<T>;
  using B = typename V::batch;
  using M = typename B::batch_bool_type;
  constexpr std::size_t W = V::width;
  constexpr std::size_t U = 4;
  constexpr std::size_t R = 8;
  const std::size_t nb = n - n % (W * U);
  M nan(false);
  for (std::size_t j = 0; j < nb; ++j) {
    lo[j] = std::numeric_limits<T>::infinity();
    hi[j] = -std::numeric_limits<T>::infinity();
  }
  for (std::size_t i0 = 0; i0 < rows; i0 += R) {
    const std::size_t i1 = std::min(rows, i0 + R);
    for (std::size_t j = 0; j < nb; j += W * U) {
      B l[U], h[U];
      for (std::size_t u = 0; u < U; ++u) {
        l[u] = V::load(lo + j + u * W);
        h[u] = V::load(hi + j + u * W);
      }
      for (std::size_t i = i0; i < i1; ++i) {
        const T* row = w + i * ld + j;
        for (std::size_t u = 0; u < U; ++u) {
          const B x = V::load(row + u * W);
          l[u] = V::min(l[u], x);
          h[u] = V::max(h[u], x);
          nan = nan | xsimd::isnan(x);  // unordered compare: xsimd's AVX/AVX-512 != misses NaN
        }
      }
      for (std::size_t u = 0; u < U; ++u) {
        V::store(lo + j + u * W, l[u]);
        V::store(hi + j + u * W, h[u]);
      }
    }
  }
  bool finite = !xsimd::any(nan);
  if (nb < n)
    finite = minmax_columns(scalar_tag{}, w + nb, ld, rows, n - nb, lo + nb, hi + nb) && finite;
  for (std::size_t j = 0; j < nb; ++j) {
    finite = finite && lo[j] > -std::numeric_limits<T>::infinity() &&
             hi[j] < std::numeric_limits<T>::infinity();
  }
  return finite;
}

// ---------------------------------------------------------------------------------------------
// quantize_columns: integer codes of `rows` rows against per-column parameters.
//   w     : [rows, ld]      div, zp : [n] (div = scale, or 1/scale when reciprocal)
//   codes : [rows, ldc]     qmax = 2^bits - 1
// t = w / div  (or w * div);  before: code = round(clamp(t + zp, 0, qmax))
//                              after : code = round(clamp(t, -zp, qmax - zp)) + zp
// (clamping first equals clamping the rounded value because the bounds are integers)
// ---------------------------------------------------------------------------------------------
struct quantize_mode {
  bool reciprocal = false;       // multiply by div instead of dividing
  bool zp_before_round = false;  // add the zero point before rounding
  bool half_even = true;         // ties to even, else away from zero
};

template <class T, bool Recip, bool Before, bool Even>
inline T quantize_scalar(T x, T div, T zp, T qmax) noexcept {
  T t = Recip ? x * div : x / div;
  if (Before) {
    t = std::min(std::max(t + zp, T(0)), qmax);
    return Even ? round_half_even_scalar(t) : round_half_away_scalar(t);
  }
  t = std::min(std::max(t, -zp), qmax - zp);
  return (Even ? round_half_even_scalar(t) : round_half_away_scalar(t)) + zp;
}

template <class T, bool Recip, bool Before, bool Even>
void quantize_columns_impl(scalar_tag, const T* w, std::size_t ld, std::size_t rows, std::size_t n,
                           const T* div, const T* zp, T qmax, std::uint8_t* codes,
                           std::size_t ldc) noexcept {
  for (std::size_t i = 0; i < rows; ++i) {
    const T* row = w + i * ld;
    std::uint8_t* out = codes + i * ldc;
    for (std::size_t j = 0; j < n; ++j) {
      out[j] = static_cast<std::uint8_t>(
          quantize_scalar<T, Recip, Before, Even>(row[j], div[j], zp[j], qmax));
    }
  }
}

/// Stores the codes held (as exact integers in [0, 255]) by the float batches v[0..k) as bytes,
/// narrowed in registers: 16 codes per call. Only for float batches of 4 (SSE) or 8 (AVX)
/// lanes, where `narrows_in_registers` is true (xsimd has no narrowing conversion).
template <class B>
constexpr bool narrows_in_registers() noexcept {
#if defined(__SSE2__)
  return std::is_same<typename B::value_type, float>::value && (B::size == 4
#if defined(__AVX2__)
                                                                || B::size == 8
#endif
                                                               );
#else
  return false;
#endif
}

template <class B>
void store_codes16(std::uint8_t* out, const B* v) noexcept {
#if defined(__SSE2__)
  if constexpr (narrows_in_registers<B>() && B::size == 4) {
    const __m128i ab = _mm_packs_epi32(_mm_cvttps_epi32(v[0]), _mm_cvttps_epi32(v[1]));
    const __m128i cd = _mm_packs_epi32(_mm_cvttps_epi32(v[2]), _mm_cvttps_epi32(v[3]));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm_packus_epi16(ab, cd));
  }
#endif
#if defined(__AVX2__)
  if constexpr (narrows_in_registers<B>() && B::size == 8) {
    const __m256i a = _mm256_cvttps_epi32(v[0]);
    const __m256i b = _mm256_cvttps_epi32(v[1]);
    const __m128i a16 = _mm_packs_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
    const __m128i b16 = _mm_packs_epi32(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm_packus_epi16(a16, b16));
  }
#endif
  (void)out;
  (void)v;
}

template <class T, bool Recip, bool Before, bool Even>
void quantize_columns_impl(simd_tag, const T* w, std::size_t ld, std::size_t rows, std::size_t n,
                           const T* div, const T* zp, T qmax, std::uint8_t* codes,
                           std::size_t ldc) noexcept {
  using V = vec_ops<T>;
  using B = typename V::batch;
  constexpr std::size_t W = V::width;
  const std::size_t nv = n - n % W;
  const B zero(T(0));
  const B top(qmax);
  const B magic(round_magic<T>());
  // Ties to even with the zero point after rounding (the default) computes round(t) + z as
  // (t + M) - (M - z), M = round_magic (t + M rounds t to an integer; subtracting integers in
  // M's binade is exact), and clamps to [0, qmax] afterwards. That equals clamping t to
  // [-z, qmax - z] first (integer bounds); for |t| >= 2^22, where the magic rounding is
  // inexact, the value lies far outside [0, qmax] on the same side and the clamp still gives
  // the right code. 5 operations instead of 8.
  constexpr bool folded = Even && !Before;
  alignas(64) T magic_minus_zp[max_tile_cols];
  if (folded) {
    for (std::size_t j = 0; j < nv; ++j) magic_minus_zp[j] = round_magic<T>() - zp[j];
  }
  // The codes of columns [j, j + W) of `row`, as exact integers in a float batch.
  auto code_of = [&](const T* row, std::size_t j) -> B {
    const B x = V::load(row + j);
    const B d = V::load(div + j);
    const B t = Recip ? x * d : x / d;
    if (folded) return V::clamp((t + magic) - V::load(magic_minus_zp + j), zero, top);
    const B z = V::load(zp + j);
    if (Before) {
      const B u = V::clamp(t + z, zero, top);
      return Even ? V::round_half_even(u) : V::round_half_away(u);
    }
    const B u = V::clamp(t, -z, top - z);
    return (Even ? V::round_half_even(u) : V::round_half_away(u)) + z;
  };
  constexpr std::size_t per_store = 16 / W;  // batches per 16 codes (register narrowing)
  alignas(64) T scratch[max_tile_cols];
  for (std::size_t i = 0; i < rows; ++i) {
    const T* row = w + i * ld;
    std::uint8_t* out = codes + i * ldc;
    std::size_t j = 0;
    if constexpr (narrows_in_registers<B>()) {
      for (; j + 16 <= nv; j += 16) {
        B v[per_store];
        for (std::size_t u = 0; u < per_store; ++u) v[u] = code_of(row, j + u * W);
        store_codes16(out + j, v);
      }
    }
    // Other widths and types, and the rest of the row: through a scratch row.
    for (std::size_t k = j; k < nv; k += W) V::store(scratch + k, code_of(row, k));
    for (std::size_t k = j; k < nv; ++k)
      out[k] = static_cast<std::uint8_t>(static_cast<int>(scratch[k]));
    for (std::size_t k = nv; k < n; ++k) {
      out[k] = static_cast<std::uint8_t>(
          quantize_scalar<T, Recip, Before, Even>(row[k], div[k], zp[k], qmax));
    }
  }
}

/// Dispatches the runtime mode to the compile-time kernel. `n` <= max_tile_cols.
template <class Tag, class T>
void quantize_columns(Tag tag, const T* w, std::size_t ld, std::size_t rows, std::size_t n,
                      const T* div, const T* zp, T qmax, quantize_mode m, std::uint8_t* codes,
                      std::size_t ldc) noexcept {
  const int key = (m.reciprocal ? 4 : 0) | (m.zp_before_round ? 2 : 0) | (m.half_even ? 1 : 0);
  switch (key) {
    case 0:
      return quantize_columns_impl<T, false, false, false>(tag, w, ld, rows, n, div, zp, qmax,
                                                           codes, ldc);
    case 1:
      return quantize_columns_impl<T, false, false, true>(tag, w, ld, rows, n, div, zp, qmax, codes,
                                                          ldc);
    case 2:
      return quantize_columns_impl<T, false, true, false>(tag, w, ld, rows, n, div, zp, qmax, codes,
                                                          ldc);
    case 3:
      return quantize_columns_impl<T, false, true, true>(tag, w, ld, rows, n, div, zp, qmax, codes,
                                                         ldc);
    case 4:
      return quantize_columns_impl<T, true, false, false>(tag, w, ld, rows, n, div, zp, qmax, codes,
                                                          ldc);
    case 5:
      return quantize_columns_impl<T, true, false, true>(tag, w, ld, rows, n, div, zp, qmax, codes,
                                                         ldc);
    case 6:
      return quantize_columns_impl<T, true, true, false>(tag, w, ld, rows, n, div, zp, qmax, codes,
                                                         ldc);
    default:
      return quantize_columns_impl<T, true, true, true>(tag, w, ld, rows, n, div, zp, qmax, codes,
                                                        ldc);
  }
}

// ---------------------------------------------------------------------------------------------
// dequant_columns: out[i, j] = (codes[i, j] - zp[j]) * scale[j]
//   codes : [rows, ldc]    scale, zp : [n]    out : [rows, ldo]
// ---------------------------------------------------------------------------------------------
template <class T>
void dequant_columns(scalar_tag, const std::uint8_t* codes, std::size_t ldc, std::size_t rows,
                     std::size_t n, const T* scale, const T* zp, T* out, std::size_t ldo) noexcept {
  for (std::size_t i = 0; i < rows; ++i) {
    const std::uint8_t* c = codes + i * ldc;
    T* o = out + i * ldo;
    for (std::size_t j = 0; j < n; ++j) o[j] = (static_cast<T>(c[j]) - zp[j]) * scale[j];
  }
}

template <class T>
void dequant_columns(simd_tag, const std::uint8_t* codes, std::size_t ldc, std::size_t rows,
                     std::size_t n, const T* scale, const T* zp, T* out, std::size_t ldo) noexcept {
  using V = vec_ops<T>;
  using B = typename V::batch;
  constexpr std::size_t W = V::width;
  const std::size_t nv = n - n % W;
  alignas(64) T widened[max_tile_cols];
  for (std::size_t i = 0; i < rows; ++i) {
    const std::uint8_t* c = codes + i * ldc;
    T* o = out + i * ldo;
    for (std::size_t j = 0; j < nv; ++j) widened[j] = static_cast<T>(c[j]);
    for (std::size_t j = 0; j < nv; j += W) {
      const B v = (V::load(widened + j) - V::load(zp + j)) * V::load(scale + j);
      V::store(o + j, v);
    }
    for (std::size_t j = nv; j < n; ++j) o[j] = (static_cast<T>(c[j]) - zp[j]) * scale[j];
  }
}

}  // namespace detail
}  // namespace int4q

#endif  // INT4Q_DETAIL_KERNELS_HPP
