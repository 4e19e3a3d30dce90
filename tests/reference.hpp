// Scalar reference implementations of int4q's quantization math, written from the formulas
// documented in include/int4q/config.hpp and include/int4q/group_params.hpp (and the table
// rule of tables.hpp), NOT from the kernels: plain loops, one element at a time, no call into
// int4q's detail namespace, compute_group_param, round_scale or the fp16/bf16 converters.
//
// Arithmetic is in the library's compute type T (float for float/fp16/bf16 weights, double for
// double) and in the order the formulas are written, so that codes, scales and zero points can
// be compared bit for bit. Where this file uses a different but mathematically equivalent order
// it says why the result is still identical (e.g. "round then clamp" vs the kernels' "clamp then
// round": the bounds are integers, so both give the same integer for every t).
#ifndef INT4Q_TESTS_REFERENCE_HPP
#define INT4Q_TESTS_REFERENCE_HPP

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include <xtensor/xtensor.hpp>

#include <int4q/quant.hpp>

namespace int4q_ref {

// ---- Rounding to an integer -----------------------------------------------------------------
// Written with floor and an exact fractional part (v - floor(v) is exact in binary floating
// point), so it does not depend on the FP environment or on nearbyint/round.

/// Ties to the even integer.
template <class T>
T round_half_even(T v) {
  if (!std::isfinite(v)) return v;
  const T f = std::floor(v);
  const T d = v - f;  // exact, in [0, 1)
  if (d > T(0.5)) return f + T(1);
  if (d < T(0.5)) return f;
  return std::fmod(f, T(2)) == T(0) ? f : f + T(1);
}

/// Ties away from zero (C round).
template <class T>
T round_half_away(T v) {
  if (!std::isfinite(v)) return v;
  const T a = std::abs(v);
  const T f = std::floor(a);
  const T r = (a - f >= T(0.5)) ? f + T(1) : f;
  return std::copysign(r, v);
}

template <class T>
T round_by(T v, int4q::rounding r) {
  return r == int4q::rounding::half_to_even ? round_half_even(v) : round_half_away(v);
}

// ---- Rounding to fp16 / bf16 values -----------------------------------------------------------
// Nearest value of a binary format with `man_bits` stored mantissa bits, smallest normal
// exponent `emin` and largest finite value `max_finite`; ties to even; overflow to +-Inf.
// Computed in double directly from x (no intermediate rounding to float).

inline double round_to_format(double x, int man_bits, int emin, double max_finite) {
  if (std::isnan(x) || std::isinf(x) || x == 0.0) return x;
  const double a = std::abs(x);
  const int e = std::max(std::ilogb(a), emin);
  const double quantum = std::ldexp(1.0, e - man_bits);     // spacing of the format at a
  const double r = round_half_even(a / quantum) * quantum;  // a / quantum is exact
  if (r > max_finite) return std::copysign(std::numeric_limits<double>::infinity(), x);
  return std::copysign(r, x);
}

/// x rounded to the nearest IEEE binary16 value (ties to even), as a double.
inline double round_to_half(double x) { return round_to_format(x, 10, -14, 65504.0); }

/// x rounded to the nearest bfloat16 value (ties to even), as a double.
inline double round_to_bfloat16(double x) {
  return round_to_format(x, 7, -126, std::ldexp(255.0, 120));  // (2 - 2^-7) * 2^127
}

/// A scale as stored for `st` (scale_type doc: rounded to fp16 / bf16, or kept).
template <class T>
T round_scale(T v, int4q::scale_type st) {
  switch (st) {
    case int4q::scale_type::float16: return static_cast<T>(round_to_half(static_cast<double>(v)));
    case int4q::scale_type::bfloat16:
      return static_cast<T>(round_to_bfloat16(static_cast<double>(v)));
    case int4q::scale_type::native: break;
  }
  return v;
}

// ---- Lookup tables ------------------------------------------------------------------------------
// Typed from the published sources, independently of tables.hpp: NF4 from QLoRA / bitsandbytes
// (`create_normal_map`, float32 values), FP4 E2M1 from the OCP microscaling spec.

inline const std::array<double, 16>& nf4_values() {
  static const std::array<double, 16> v = {
      -1.0,
      -0.6961928009986877,
      -0.5250730514526367,
      -0.39491748809814453,
      -0.28444138169288635,
      -0.18477343022823334,
      -0.09105003625154495,
      0.0,
      0.07958029955625534,
      0.16093020141124725,
      0.24611230194568634,
      0.33791524171829224,
      0.44070982933044434,
      0.5626170039176941,
      0.7229568362236023,
      1.0,
  };
  return v;
}

/// E2M1: code = sign << 3 | e << 1 | m; value = (-1)^sign * (e == 0 ? m / 2 : 2^(e-1) * (1 + m/2)).
inline double fp4_e2m1_value(int code) {
  const int sign = (code >> 3) & 1, e = (code >> 1) & 3, m = code & 1;
  const double mag = e == 0 ? 0.5 * m : std::ldexp(1.0 + 0.5 * m, e - 1);
  return sign ? -mag : mag;
}

inline double table_value(int4q::data_type d, int code) {
  return d == int4q::data_type::nf4 ? nf4_values()[code] : fp4_e2m1_value(code);
}

/// max |table|: the value amax maps to.
inline double table_max(int4q::data_type d) { return d == int4q::data_type::nf4 ? 1.0 : 6.0; }

/// A wider type in which the midpoint of two T values is exact (double for float, x87 long
/// double for double: the sum of two table doubles fits its 64-bit mantissa).
template <class T>
using wide_t = std::conditional_t<std::is_same<T, float>::value, double, long double>;

/// Code of the table entry nearest to t (entries taken as T values); a tie goes to the lower
/// value; -0 (fp4 code 8) is never chosen (0 is code 0). "Tie" is decided against the midpoint
/// of two neighbours rounded to T (t <= mid_T picks the lower entry): Intel Neural Compressor's
/// `quantize_4bit` compares the float32 tensor with (a + b) / 2 cast to float32, and tables.hpp
/// documents mid = (value[i] + value[i+1]) / 2 in T. For the one T value next to a midpoint
/// that T cannot represent this can pick the farther entry; test_tables.cpp checks that
/// separately against the exact-distance rule.
template <class T>
std::uint8_t nearest_table_code(T t, int4q::data_type d) {
  std::vector<std::pair<T, int>> entries;  // (value, code), ascending by value
  for (int c = 0; c < 16; ++c) {
    const double v = table_value(d, c);
    if (v == 0.0 && std::signbit(v)) continue;  // fp4 -0
    entries.emplace_back(static_cast<T>(v), c);
  }
  std::sort(entries.begin(), entries.end());
  using W = wide_t<T>;
  for (std::size_t i = 0; i + 1 < entries.size(); ++i) {
    const W exact = (static_cast<W>(entries[i].first) + static_cast<W>(entries[i + 1].first)) / 2;
    const T mid = static_cast<T>(exact);  // round to nearest even
    if (t <= mid) return static_cast<std::uint8_t>(entries[i].second);
  }
  return static_cast<std::uint8_t>(entries.back().second);
}

// ---- Group parameters ---------------------------------------------------------------------------

template <class T>
struct param {
  T scale = 1;
  std::uint8_t zero_point = 0;
};

/// Scale and zero point of a group whose values span [lo, hi], with clip ratio `ratio` (already
/// the product config.clip_ratio * per-group ratio). Formulas of config.hpp; evaluation order
/// and the zero-range / constant-group details as documented in group_params.hpp.
template <class T>
param<T> group_param(T lo, T hi, T ratio, const int4q::quant_config& c) {
  using int4q::scheme;
  using int4q::zero_range_policy;
  const T qmax = static_cast<T>((1 << c.bits) - 1);
  const T mid = static_cast<T>(1 << (c.bits - 1));
  const T floor_range = static_cast<T>(c.min_range);
  const bool unit_range = c.zero_range == zero_range_policy::unit_range;
  param<T> p;
  T scale = 0;
  bool zero_range = false;

  if (c.data_type != int4q::data_type::integer) {
    // scale = amax * ratio / max|table| (amax floored by min_range)
    T amax = (std::abs(hi) > std::abs(lo) ? std::abs(hi) : std::abs(lo)) * ratio;
    if (amax < floor_range) amax = floor_range;
    if (amax == T(0)) {
      zero_range = true;
      if (unit_range) amax = T(1);
    }
    scale = amax / static_cast<T>(int4q_ref::table_max(c.data_type));
    p.zero_point = 0;
  } else if (c.scheme == scheme::asymmetric) {
    // range through 0 (or a constant group with no floor, which otherwise has no scale);
    // scale = (max - min) / (2^b - 1); zero_point = round(-min / scale) clamped to [0, qmax]
    if (c.range_includes_zero || (lo == hi && floor_range == T(0))) {
      if (lo > T(0)) lo = T(0);
      if (hi < T(0)) hi = T(0);
    }
    lo = lo * ratio;
    hi = hi * ratio;
    T range = hi - lo;
    if (range < floor_range) range = floor_range;
    if (range == T(0)) {
      zero_range = true;
      if (unit_range) {
        lo = T(-1);
        range = T(2);
      }
    }
    scale = range / qmax;
    if (scale != T(0)) {
      T z = round_by(-lo / scale, c.rounding);
      z = z < T(0) ? T(0) : (z > qmax ? qmax : z);
      p.zero_point = static_cast<std::uint8_t>(z);
    }
  } else if (c.scheme == scheme::symmetric) {
    // scale = amax / (2^(b-1) - 1)
    T amax = (std::abs(hi) > std::abs(lo) ? std::abs(hi) : std::abs(lo)) * ratio;
    if (amax < floor_range) amax = floor_range;
    if (amax == T(0)) {
      zero_range = true;
      if (unit_range) amax = T(1);
    }
    scale = amax / (mid - T(1));
    p.zero_point = static_cast<std::uint8_t>(1 << (c.bits - 1));
  } else if (c.scheme == scheme::symmetric_full_range) {
    // extreme = signed value of largest magnitude (lo on a tie); scale = extreme / -2^(b-1)
    T extreme = std::abs(hi) > std::abs(lo) ? hi : lo;
    extreme = extreme * ratio;
    if (std::abs(extreme) < floor_range) extreme = extreme < T(0) ? -floor_range : floor_range;
    if (extreme == T(0)) {
      zero_range = true;
      if (unit_range) extreme = T(-1);
    }
    scale = -extreme / mid;
    p.zero_point = static_cast<std::uint8_t>(1 << (c.bits - 1));
  } else {
    // symmetric_offset: hi' = amax, lo' = -amax if the group has a negative value else 0,
    // both times the ratio; scale = (hi' - lo') / (2^b - 1). The floor applies to hi' - lo'
    // (group_params.hpp; see test_quantize.cpp MinRangeSymmetricOffset for the doc question).
    const T neg = lo < T(0) ? lo : T(0);
    const T pos = hi > T(0) ? hi : T(0);
    const T amax = std::abs(neg) > pos ? std::abs(neg) : pos;
    const T xmax = amax * ratio;
    const T xmin = (neg < T(0) ? -amax : T(0)) * ratio;
    T range = xmax - xmin;
    if (range < floor_range) range = floor_range;
    if (range == T(0)) {
      zero_range = true;
      if (unit_range) range = T(2);
    }
    scale = range / qmax;
    p.zero_point = static_cast<std::uint8_t>(1 << (c.bits - 1));
  }
  if (zero_range && c.zero_range == zero_range_policy::unit_scale) scale = T(1);
  // The zero point above came from the unrounded scale; only the stored scale is rounded.
  p.scale = int4q_ref::round_scale(scale, c.scale_type);
  return p;
}

// ---- Codes and values
// ----------------------------------------------------------------------------

/// w / scale or w * (1 / scale); a zero scale gives 0 (its codes are the zero point).
template <class T>
T scaled(T w, T scale, int4q::scale_division d) {
  if (scale == T(0)) return T(0);
  return d == int4q::scale_division::divide ? w / scale : w * (T(1) / scale);
}

/// Integer code of w: after: clamp(round(t) + zp); before: clamp(round(t + zp)), t = scaled(w).
/// (The kernels clamp t first, then round; with integer bounds both orders give the same code.)
template <class T>
std::uint8_t integer_code(T w, T scale, std::uint8_t zp, const int4q::quant_config& c) {
  const T qmax = static_cast<T>((1 << c.bits) - 1);
  const T t = scaled(w, scale, c.scale_division);
  const T z = static_cast<T>(zp);
  T q = c.zero_point_rounding == int4q::zero_point_rounding::after_rounding
            ? round_by(t, c.rounding) + z
            : round_by(t + z, c.rounding);
  q = q < T(0) ? T(0) : (q > qmax ? qmax : q);
  return static_cast<std::uint8_t>(q);
}

template <class T>
std::uint8_t code_of(T w, T scale, std::uint8_t zp, const int4q::quant_config& c) {
  if (c.data_type != int4q::data_type::integer) {
    return nearest_table_code(scaled(w, scale, c.scale_division), c.data_type);
  }
  return integer_code(w, scale, zp, c);
}

/// (code - zero_point) * scale, or table[code] * scale: one rounding in T.
template <class T>
T value_of(std::uint8_t code, T scale, std::uint8_t zp, const int4q::quant_config& c) {
  if (c.data_type != int4q::data_type::integer) {
    return static_cast<T>(table_value(c.data_type, code)) * scale;
  }
  return (static_cast<T>(code) - static_cast<T>(zp)) * scale;
}

// ---- Whole weights
// --------------------------------------------------------------------------------

template <class T>
struct quantized {
  xt::xtensor<std::uint8_t, 2> codes;        // [K, N]
  xt::xtensor<T, 2> scales;                  // [G, N]
  xt::xtensor<std::uint8_t, 2> zero_points;  // [G, N]
};

/// Rows per group and number of groups, from the grouping doc (per-channel: one group of K).
inline std::size_t group_rows(const int4q::quant_config& c, std::size_t K) {
  if (c.granularity == int4q::grouping::per_channel) return K == 0 ? 1 : K;
  return c.group_size;
}
inline std::size_t group_count(const int4q::quant_config& c, std::size_t K) {
  const std::size_t gs = group_rows(c, K);
  return K / gs + (K % gs != 0 ? 1 : 0);
}

/// Codes of w[K, N] against given scales / zero points [G, N].
template <class T>
xt::xtensor<std::uint8_t, 2> encode(const xt::xtensor<T, 2>& w, const xt::xtensor<T, 2>& scales,
                                    const xt::xtensor<std::uint8_t, 2>& zero_points,
                                    const int4q::quant_config& c) {
  const std::size_t K = w.shape()[0], N = w.shape()[1], gs = group_rows(c, K);
  auto codes = xt::xtensor<std::uint8_t, 2>::from_shape({K, N});
  for (std::size_t k = 0; k < K; ++k) {
    for (std::size_t n = 0; n < N; ++n) {
      codes(k, n) = code_of(w(k, n), scales(k / gs, n), zero_points(k / gs, n), c);
    }
  }
  return codes;
}

/// RTN of w[K, N]: per group and column, [min, max] of the group, parameters, codes.
/// `ratios` [G, N] (optional) multiplies config.clip_ratio per group: ratio = clip * r.
template <class T>
quantized<T> quantize(const xt::xtensor<T, 2>& w, const int4q::quant_config& c,
                      const xt::xtensor<T, 2>* ratios = nullptr) {
  const std::size_t K = w.shape()[0], N = w.shape()[1];
  const std::size_t gs = group_rows(c, K), G = group_count(c, K);
  quantized<T> q;
  q.scales = xt::xtensor<T, 2>::from_shape({G, N});
  q.zero_points = xt::xtensor<std::uint8_t, 2>::from_shape({G, N});
  for (std::size_t g = 0; g < G; ++g) {
    for (std::size_t n = 0; n < N; ++n) {
      T lo = w(g * gs, n), hi = w(g * gs, n);
      for (std::size_t k = g * gs; k < std::min(K, g * gs + gs); ++k) {
        if (w(k, n) < lo) lo = w(k, n);
        if (w(k, n) > hi) hi = w(k, n);
      }
      const T ratio = static_cast<T>(c.clip_ratio) * (ratios ? (*ratios)(g, n) : T(1));
      const param<T> p = int4q_ref::group_param(lo, hi, ratio, c);
      q.scales(g, n) = p.scale;
      q.zero_points(g, n) = p.zero_point;
    }
  }
  q.codes = encode(w, q.scales, q.zero_points, c);
  return q;
}

/// Values of codes [K, N] with scales / zero points [G, N].
template <class T>
xt::xtensor<T, 2> dequantize(const xt::xtensor<std::uint8_t, 2>& codes,
                             const xt::xtensor<T, 2>& scales,
                             const xt::xtensor<std::uint8_t, 2>& zero_points,
                             const int4q::quant_config& c) {
  const std::size_t K = codes.shape()[0], N = codes.shape()[1], gs = group_rows(c, K);
  auto out = xt::xtensor<T, 2>::from_shape({K, N});
  for (std::size_t k = 0; k < K; ++k) {
    for (std::size_t n = 0; n < N; ++n) {
      out(k, n) = value_of(codes(k, n), scales(k / gs, n), zero_points(k / gs, n), c);
    }
  }
  return out;
}

}  // namespace int4q_ref

#endif  // INT4Q_TESTS_REFERENCE_HPP
