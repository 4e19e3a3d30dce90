// The one SIMD adapter of int4q. Every vector operation the kernels need is defined here twice:
// for xsimd batches and for plain scalars (the "scalar twin"), with the same semantics, so a
// kernel template instantiated with `scalar_tag` is its own reference implementation.
#ifndef INT4Q_DETAIL_SIMD_HPP
#define INT4Q_DETAIL_SIMD_HPP

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include <xsimd/xsimd.hpp>

namespace int4q {
namespace detail {

/// Selects the vector implementation of a kernel.
struct simd_tag {};
/// Selects the scalar twin (one element at a time, same arithmetic).
struct scalar_tag {};

/// 1.5 * 2^(mantissa bits): adding and subtracting it rounds to an integer, ties to even, for
/// |x| < 2^(mantissa bits - 1) under the default rounding mode (codes are clamped first, so
/// |x| <= 256 always holds here).
template <class T>
constexpr T round_magic() noexcept {
  return std::is_same<T, float>::value ? T(12582912.0) : T(6755399441055744.0);
}

template <class T>
struct vec_ops;  // vector operations on xsimd::batch<T>

template <class T>
struct vec_ops {
  using batch = xsimd::batch<T>;
  using int_batch = xsimd::batch<xsimd::as_integer_t<T>>;
  static constexpr std::size_t width = batch::size;

  static batch load(const T* p) noexcept { return batch::load_unaligned(p); }
  static void store(T* p, const batch& v) noexcept { v.store_unaligned(p); }
  static batch splat(T v) noexcept { return batch(v); }
  static batch min(const batch& a, const batch& b) noexcept { return xsimd::min(a, b); }
  static batch max(const batch& a, const batch& b) noexcept { return xsimd::max(a, b); }
  static batch clamp(const batch& x, const batch& lo, const batch& hi) noexcept {
    return xsimd::min(xsimd::max(x, lo), hi);
  }
  /// Ties to even (|x| < 2^22 for float).
  static batch round_half_even(const batch& x) noexcept {
    const batch m(round_magic<T>());
    const batch s = x + m;  // volatile-free: no -ffast-math is ever used on int4q kernels
    return s - m;
  }
  /// Ties away from zero (C round), for |x| well inside the int32 range.
  static batch round_half_away(const batch& x) noexcept {
    const batch t = xsimd::to_float(xsimd::to_int(x));  // truncation toward zero
    const batch d = x - t;                              // exact fractional part
    const batch one(T(1));
    const batch zero(T(0));
    return t + xsimd::select(d >= batch(T(0.5)), one, zero) -
           xsimd::select(d <= batch(T(-0.5)), one, zero);
  }
};

// Scalar twins.
template <class T>
inline T round_half_even_scalar(T x) noexcept {
  return std::nearbyint(x);  // default rounding mode: ties to even
}
template <class T>
inline T round_half_away_scalar(T x) noexcept {
  return std::round(x);
}

}  // namespace detail
}  // namespace int4q

#endif  // INT4Q_DETAIL_SIMD_HPP
