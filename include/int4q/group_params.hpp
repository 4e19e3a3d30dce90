// Scale and zero point of one group from its range: the formulas of every scheme, in one place.
#ifndef INT4Q_GROUP_PARAMS_HPP
#define INT4Q_GROUP_PARAMS_HPP

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>

#include <int4q/config.hpp>
#include <int4q/detail/simd.hpp>
#include <int4q/float16.hpp>
#include <int4q/tables.hpp>

namespace int4q {

/// Parameters of one group: w ~ (code - zero_point) * scale (integer) or table[code] * scale.
template <class T>
struct group_param {
  T scale = 1;                  ///< as stored (already rounded to config.scale_type)
  std::uint8_t zero_point = 0;  ///< 2^(bits-1) for symmetric schemes, 0 for tables
};

namespace detail {
/// `v` narrowed to float rounding to odd (an inexact result gets an odd last bit), so that a
/// second rounding to fp16/bf16 equals the direct round-to-nearest-even of v (no double rounding).
template <class T>
float narrow_round_to_odd(T v) noexcept {
  float f = static_cast<float>(v);
  if (std::isfinite(f) && static_cast<T>(f) != v && (float_bits(f) & 1u) == 0u) {
    f = std::nextafter(f, v > static_cast<T>(f) ? std::numeric_limits<float>::infinity()
                                                : -std::numeric_limits<float>::infinity());
  }
  return f;
}
}  // namespace detail

/// `v` rounded to the precision scales are stored in.
template <class T>
T round_scale(T v, scale_type st) noexcept {
  switch (st) {
    case scale_type::float16:
      return static_cast<T>(half_bits_to_float(float_to_half_bits(detail::narrow_round_to_odd(v))));
    case scale_type::bfloat16:
      return static_cast<T>(
          bfloat16_bits_to_float(float_to_bfloat16_bits(detail::narrow_round_to_odd(v))));
    case scale_type::native: break;
  }
  return v;
}

namespace detail {
template <class T>
T round_by(T v, rounding r) noexcept {
  return r == rounding::half_to_even ? round_half_even_scalar(v) : round_half_away_scalar(v);
}
}  // namespace detail

/// Parameters of a group whose values span [lo, hi] (lo <= hi, finite), with the group's clip
/// `ratio` (multiplied into config.clip_ratio by the caller). Arithmetic is in T, in the order
/// the formulas are written, so that compatibility presets match their tools bit for bit.
/// The zero point is derived from the unrounded scale; the scale is then rounded to
/// config.scale_type (ONNX Runtime's order).
namespace detail {
template <class T>
group_param<T> compute_group_param_unchecked(T lo, T hi, T ratio, const quant_config& c) {
  group_param<T> p;
  const T qmax = static_cast<T>(c.qmax());
  const T mid = static_cast<T>(c.mid());
  const T floor_range = static_cast<T>(c.min_range);
  T scale = 0;
  bool zero_range = false;

  if (c.data_type != data_type::integer) {
    // Lookup tables: scale = amax * ratio / max|table|.
    T amax = std::max(std::abs(lo), std::abs(hi)) * ratio;
    amax = std::max(amax, floor_range);
    if (amax == T(0)) {
      zero_range = true;
      if (c.zero_range == zero_range_policy::unit_range) amax = T(1);
    }
    scale = amax / static_cast<T>(table_max(c.data_type));
    p.zero_point = 0;
  } else if (c.scheme == scheme::asymmetric) {
    if (c.range_includes_zero || (lo == hi && floor_range == T(0))) {
      // a constant group with a raw range and no floor would have no scale: widen it through 0
      lo = std::min(lo, T(0));
      hi = std::max(hi, T(0));
    }
    lo = lo * ratio;
    hi = hi * ratio;
    T range = hi - lo;
    if (range < floor_range) range = floor_range;
    if (range == T(0)) {
      zero_range = true;
      if (c.zero_range == zero_range_policy::unit_range) {
        lo = T(-1);
        range = T(2);
      }
    }
    scale = range / qmax;
    if (scale != T(0)) {
      const T z = detail::round_by(-lo / scale, c.rounding);
      p.zero_point = static_cast<std::uint8_t>(std::min(std::max(z, T(0)), qmax));
    } else {
      p.zero_point = 0;
    }
  } else if (c.scheme == scheme::symmetric) {
    T amax = std::max(std::abs(lo), std::abs(hi)) * ratio;
    amax = std::max(amax, floor_range);
    if (amax == T(0)) {
      zero_range = true;
      if (c.zero_range == zero_range_policy::unit_range) amax = T(1);
    }
    scale = amax / (mid - T(1));
    p.zero_point = static_cast<std::uint8_t>(c.mid());
  } else if (c.scheme == scheme::symmetric_full_range) {
    // The signed extreme maps to -2^(b-1): scale = -extreme / 2^(b-1) (ties pick lo). INC's
    // rule: scale = amax / 2^(b-1), negative only when |hi| > |lo|, i.e. the extreme is taken
    // as -amax unless hi dominates (differs for lo == hi > 0 alone).
    T extreme = std::abs(hi) > std::abs(lo) ? hi : lo;
    if (c.full_range_inc_sign && !(std::abs(hi) > std::abs(lo))) extreme = -std::abs(lo);
    extreme = extreme * ratio;
    if (std::abs(extreme) < floor_range) extreme = extreme < T(0) ? -floor_range : floor_range;
    if (extreme == T(0)) {
      zero_range = true;
      if (c.zero_range == zero_range_policy::unit_range) extreme = T(-1);
    }
    scale = -extreme / mid;
    p.zero_point = static_cast<std::uint8_t>(c.mid());
  } else {  // symmetric_offset (GPTQ reference find_params, sym=True)
    const T lo0 = std::min(lo, T(0));
    const T hi0 = std::max(hi, T(0));
    const T amax = std::max(std::abs(lo0), hi0);
    T xmax = amax * ratio;
    T xmin = (lo0 < T(0) ? -amax : T(0)) * ratio;
    T range = xmax - xmin;
    if (range < floor_range) range = floor_range;
    if (range == T(0)) {
      zero_range = true;
      if (c.zero_range == zero_range_policy::unit_range) range = T(2);
    }
    scale = range / qmax;
    p.zero_point = static_cast<std::uint8_t>(c.mid());
  }

  if (zero_range && c.zero_range == zero_range_policy::unit_scale) scale = T(1);
  p.scale = round_scale(scale, c.scale_type);
  if (!std::isfinite(static_cast<double>(p.scale))) {
    throw config_error(
        "a group scale of " + std::to_string(static_cast<double>(scale)) +
        (c.scale_type == scale_type::native
             ? std::string(" overflows the compute type: the weight's range is too large")
             : std::string(
                   " does not fit the scale type: store scales in float (scale_type native)")));
  }
  return p;
}
}  // namespace detail

/// Parameters of a group whose values span [lo, hi] (see compute_group_param_unchecked above
/// for the formulas). A group whose stored scale is so small (subnormal) that 1/scale overflows
/// under scale_division::multiply_reciprocal is treated as a zero-range group: its values
/// (|w| < 1e-36) decode to exact zeros instead of to garbage.
template <class T>
group_param<T> compute_group_param(T lo, T hi, T ratio, const quant_config& c) {
  group_param<T> p = detail::compute_group_param_unchecked(lo, hi, ratio, c);
  if (c.scale_division == scale_division::multiply_reciprocal && p.scale != T(0) &&
      !std::isfinite(T(1) / p.scale)) {
    p = detail::compute_group_param_unchecked(T(0), T(0), ratio, c);
  }
  return p;
}

}  // namespace int4q

#endif  // INT4Q_GROUP_PARAMS_HPP
