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

/// `v` rounded to the precision scales are stored in.
template <class T>
T round_scale(T v, scale_type st) noexcept {
  switch (st) {
    case scale_type::float16:
      return static_cast<T>(half_bits_to_float(float_to_half_bits(static_cast<float>(v))));
    case scale_type::bfloat16:
      return static_cast<T>(bfloat16_bits_to_float(float_to_bfloat16_bits(static_cast<float>(v))));
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
template <class T>
group_param<T> compute_group_param(T lo, T hi, T ratio, const quant_config& c) {
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
    // The signed extreme maps to -2^(b-1): scale = -extreme / 2^(b-1) (ties pick lo).
    T extreme = std::abs(hi) > std::abs(lo) ? hi : lo;
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
    throw config_error("a group scale of " + std::to_string(static_cast<double>(scale)) +
                       " does not fit the scale type: store scales in float (scale_type native)");
  }
  return p;
}

}  // namespace int4q

#endif  // INT4Q_GROUP_PARAMS_HPP
