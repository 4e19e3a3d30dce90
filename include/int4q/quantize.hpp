// quant_tensor: round-to-nearest quantization of a weight W[K, N] along K (the search of group
// parameters from each group's range). quant_weight_w_scale: codes against given parameters.
#ifndef INT4Q_QUANTIZE_HPP
#define INT4Q_QUANTIZE_HPP

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>

#include <xtensor/xtensor.hpp>

#include <int4q/config.hpp>
#include <int4q/detail/input.hpp>
#include <int4q/detail/kernels.hpp>
#include <int4q/detail/parallel.hpp>
#include <int4q/group_params.hpp>
#include <int4q/quantized.hpp>
#include <int4q/tables.hpp>

namespace int4q {
namespace detail {

/// Throws non_finite_error for the first NaN/Inf (row-major) of rows [r0, r0+rows) x cols
/// [c0, c0+n) of w[K, N]; used once a kernel reported a non-finite value in that tile. Over the
/// whole weight the position reported is the first in (group, column tile) order, the same for
/// any thread count.
template <class T>
[[noreturn]] void throw_non_finite(const T* w, std::size_t N, std::size_t r0, std::size_t rows,
                                   std::size_t c0, std::size_t n) {
  for (std::size_t i = r0; i < r0 + rows; ++i) {
    for (std::size_t j = c0; j < c0 + n; ++j) {
      const T v = w[i * N + j];
      if (!std::isfinite(v)) throw non_finite_error(i, j, static_cast<double>(v));
    }
  }
  throw error("internal: a non-finite value was reported but not found");
}

/// Per-column divisor for the kernels: the scale (divide) or 1/scale (reciprocal); a zero
/// scale gives a divisor that makes w / div == 0 so the code is the zero point.
template <class T>
T kernel_divisor(T scale, scale_division d) noexcept {
  if (d == scale_division::multiply_reciprocal) return scale != T(0) ? T(1) / scale : T(0);
  return scale != T(0) ? scale : std::numeric_limits<T>::infinity();
}

inline quantize_mode mode_of(const quant_config& c) noexcept {
  quantize_mode m;
  m.reciprocal = c.scale_division == scale_division::multiply_reciprocal;
  m.zp_before_round = c.zero_point_rounding == zero_point_rounding::before_rounding;
  m.half_even = c.rounding == rounding::half_to_even;
  return m;
}

/// Where quantize_matrix puts its results; any pointer may be null except as noted.
template <class T>
struct quantize_sink {
  std::uint8_t* codes = nullptr;        // [K, N]
  T* scales = nullptr;                  // [G, N] (required)
  std::uint8_t* zero_points = nullptr;  // [G, N] (required)
  T* fake_quant = nullptr;              // [K, N]: dequantized values (qdq)
};

/// Codes for one tile given per-column parameters; writes codes and/or dequantized values.
//   w : [rows, N] (first n columns)   scale, zp : [n]   codes, fake_quant : [rows, ldo]
template <class Tag, class T>
void encode_tile(Tag tag, const T* w, std::size_t N, std::size_t rows, std::size_t n,
                 const quant_config& c, const T* scale, const T* zp, std::uint8_t* codes,
                 T* fake_quant, std::size_t ldo) {
  const quantize_mode mode = mode_of(c);
  const T qmax = static_cast<T>(c.qmax());
  T div[max_tile_cols];
  for (std::size_t j = 0; j < n; ++j) div[j] = kernel_divisor(scale[j], c.scale_division);
  if (c.data_type != data_type::integer) {
    const sorted_table<T> table(c.data_type);
    const auto& values = table_of(c.data_type);
    for (std::size_t i = 0; i < rows; ++i) {
      for (std::size_t j = 0; j < n; ++j) {
        const T x = w[i * N + j];
        const T t = mode.reciprocal ? x * div[j] : x / div[j];
        const std::uint8_t code = table.nearest(t);
        if (codes) codes[i * ldo + j] = code;
        if (fake_quant) fake_quant[i * ldo + j] = static_cast<T>(values[code]) * scale[j];
      }
    }
    return;
  }
  if (codes) quantize_columns(tag, w, N, rows, n, div, zp, qmax, mode, codes, ldo);
  if (fake_quant) {
    std::uint8_t row_codes[max_tile_cols];
    for (std::size_t i = 0; i < rows; ++i) {
      const std::uint8_t* src = row_codes;
      if (codes) {
        src = codes + i * ldo;
      } else {
        quantize_columns(tag, w + i * N, N, 1, n, div, zp, qmax, mode, row_codes, max_tile_cols);
      }
      dequant_columns(tag, src, ldo, 1, n, scale, zp, fake_quant + i * ldo, ldo);
    }
  }
}

/// RTN over a contiguous w[K, N]: group parameters from each group's range (times the group's
/// clip ratio from `ratios` [G, N] when given), then codes. Work items are (group, column tile).
template <class Tag, class T>
void quantize_matrix(Tag tag, const T* w, std::size_t K, std::size_t N, const quant_config& c,
                     const T* ratios, std::size_t threads, const quantize_sink<T>& out) {
  const std::size_t gs = c.effective_group_size(K);
  const std::size_t G = c.num_groups(K);
  const std::size_t tiles = (N + max_tile_cols - 1) / max_tile_cols;
  parallel_for(G * tiles, threads, [&](std::size_t item) {
    const std::size_t g = item / tiles;
    const std::size_t c0 = (item % tiles) * max_tile_cols;
    const std::size_t n = std::min(max_tile_cols, N - c0);
    const std::size_t r0 = g * gs;
    const std::size_t rows = std::min(gs, K - r0);
    const T* tile = w + r0 * N + c0;
    T lo[max_tile_cols], hi[max_tile_cols], zp[max_tile_cols];
    if (!minmax_columns(tag, tile, N, rows, n, lo, hi)) throw_non_finite(w, N, r0, rows, c0, n);
    if (rows < gs && c.ragged_range_includes_zero) include_zero(lo, hi, n);
    T* scale = out.scales + g * N + c0;
    for (std::size_t j = 0; j < n; ++j) {
      const T ratio = static_cast<T>(c.clip_ratio) * (ratios ? ratios[g * N + c0 + j] : T(1));
      const group_param<T> p = compute_group_param(lo[j], hi[j], ratio, c);
      scale[j] = p.scale;
      out.zero_points[g * N + c0 + j] = p.zero_point;
      zp[j] = static_cast<T>(p.zero_point);
    }
    encode_tile(tag, tile, N, rows, n, c, scale, zp, out.codes ? out.codes + r0 * N + c0 : nullptr,
                out.fake_quant ? out.fake_quant + r0 * N + c0 : nullptr, N);
  });
}

/// Codes of a contiguous w[K, N] against given scales/zero points [G, N].
template <class Tag, class T>
void encode_matrix(Tag tag, const T* w, std::size_t K, std::size_t N, const quant_config& c,
                   const T* scales, const std::uint8_t* zero_points, std::size_t threads,
                   std::uint8_t* codes, T* fake_quant) {
  const std::size_t gs = c.effective_group_size(K);
  const std::size_t G = c.num_groups(K);
  const std::size_t tiles = (N + max_tile_cols - 1) / max_tile_cols;
  parallel_for(G * tiles, threads, [&](std::size_t item) {
    const std::size_t g = item / tiles;
    const std::size_t c0 = (item % tiles) * max_tile_cols;
    const std::size_t n = std::min(max_tile_cols, N - c0);
    const std::size_t r0 = g * gs;
    const std::size_t rows = std::min(gs, K - r0);
    const T* tile = w + r0 * N + c0;
    T lo[max_tile_cols], hi[max_tile_cols], zp[max_tile_cols];
    if (!minmax_columns(tag, tile, N, rows, n, lo, hi)) throw_non_finite(w, N, r0, rows, c0, n);
    for (std::size_t j = 0; j < n; ++j) zp[j] = static_cast<T>(zero_points[g * N + c0 + j]);
    encode_tile(tag, tile, N, rows, n, c, scales + g * N + c0, zp,
                codes ? codes + r0 * N + c0 : nullptr,
                fake_quant ? fake_quant + r0 * N + c0 : nullptr, N);
  });
}

template <class T>
void check_ratios(const xt::xtensor<T, 2>& r, std::size_t G, std::size_t N) {
  if (r.shape()[0] != G || r.shape()[1] != N) {
    throw shape_error("clip ratios must have the shape of the scales [" + std::to_string(G) + ", " +
                      std::to_string(N) + "], got [" + std::to_string(r.shape()[0]) + ", " +
                      std::to_string(r.shape()[1]) + "]");
  }
  for (std::size_t i = 0; i < r.size(); ++i) {
    const T v = r.data()[i];
    if (!(v > T(0) && v <= T(1))) {
      throw config_error("clip ratio " + std::to_string(static_cast<double>(v)) + " at group " +
                         std::to_string(i / N) + ", column " + std::to_string(i % N) +
                         " must be in (0, 1]");
    }
  }
}

/// Shapes q for a [K, N] weight, keeping its buffers when the shapes already match.
template <class T>
void shape_quantized(quantized<T>& q, std::size_t K, std::size_t N, const quant_config& c) {
  q.config = c;
  const std::size_t G = c.num_groups(K);
  if (q.codes.shape()[0] != K || q.codes.shape()[1] != N) q.codes.resize({K, N});
  if (q.scales.shape()[0] != G || q.scales.shape()[1] != N) q.scales.resize({G, N});
  if (q.zero_points.shape()[0] != G || q.zero_points.shape()[1] != N) q.zero_points.resize({G, N});
}

template <class T>
quantized<T> allocate_quantized(std::size_t K, std::size_t N, const quant_config& c) {
  quantized<T> q;
  shape_quantized(q, K, N, c);
  return q;
}

}  // namespace detail

/// quant_tensor into `out`, reusing its buffers when the shapes match (no allocation and no
/// fresh pages when quantizing many weights of one shape; the result is identical).
template <class E, class T>
void quant_tensor_into(const xt::xexpression<E>& w, const quant_config& config, quantized<T>& out,
                       const quant_options& options = {}) {
  static_assert(std::is_same<T, compute_type_t<typename E::value_type>>::value,
                "quant_tensor_into: `out` must be quantized<compute type of the weight>");
  validate(config);
  const auto m = detail::as_matrix<T>(w, "weight");
  detail::shape_quantized(out, m.rows, m.cols, config);
  detail::quantize_sink<T> sink;
  sink.codes = out.codes.data();
  sink.scales = out.scales.data();
  sink.zero_points = out.zero_points.data();
  detail::quantize_matrix(detail::simd_tag{}, m.data, m.rows, m.cols, config,
                          static_cast<const T*>(nullptr), options.threads, sink);
}

/// Round-to-nearest quantization of W[K, N] (K = reduction axis) with the grid of `config`.
/// W: any 2-D expression of float, double, float16_t or bfloat16_t (views included).
/// Throws config_error for an invalid config and non_finite_error naming a NaN/Inf position.
template <class E>
auto quant_tensor(const xt::xexpression<E>& w, const quant_config& config,
                  const quant_options& options = {}) {
  quantized<compute_type_t<typename E::value_type>> q;
  quant_tensor_into(w, config, q, options);
  return q;
}

/// As above with one clip ratio per group, `ratios` [G, N] in (0, 1] (from search_clip),
/// multiplied into config.clip_ratio.
template <class E, class R>
auto quant_tensor(const xt::xexpression<E>& w, const quant_config& config,
                  const xt::xexpression<R>& ratios, const quant_options& options = {}) {
  using T = compute_type_t<typename E::value_type>;
  validate(config);
  const auto m = detail::as_matrix<T>(w, "weight");
  const xt::xtensor<T, 2> r = xt::cast<T>(ratios.derived_cast());
  detail::check_ratios(r, config.num_groups(m.rows), m.cols);
  auto q = detail::allocate_quantized<T>(m.rows, m.cols, config);
  detail::quantize_sink<T> sink;
  sink.codes = q.codes.data();
  sink.scales = q.scales.data();
  sink.zero_points = q.zero_points.data();
  detail::quantize_matrix(detail::simd_tag{}, m.data, m.rows, m.cols, config, r.data(),
                          options.threads, sink);
  return q;
}

/// Codes of W[K, N] against given `scales` [G, N] and, for asymmetric grids, `zero_points`
/// [G, N] (ignored otherwise: symmetric schemes use 2^(bits-1), tables none). The scales are
/// used exactly as given. This is how GPTQ/AWQ results and external parameters are applied.
template <class E, class S>
auto quant_weight_w_scale(const xt::xexpression<E>& w, const xt::xexpression<S>& scales,
                          const xt::xtensor<std::uint8_t, 2>& zero_points,
                          const quant_config& config, const quant_options& options = {}) {
  using T = compute_type_t<typename E::value_type>;
  validate(config);
  const auto m = detail::as_matrix<T>(w, "weight");
  const std::size_t G = config.num_groups(m.rows);
  auto q = detail::allocate_quantized<T>(m.rows, m.cols, config);
  const auto& s = scales.derived_cast();
  if (s.dimension() != 2 || s.shape()[0] != G || s.shape()[1] != m.cols) {
    throw shape_error("scales must be [" + std::to_string(G) + ", " + std::to_string(m.cols) +
                      "] (groups x columns) for this weight and group size");
  }
  q.scales = xt::cast<T>(s);
  const std::uint8_t fill =
      config.data_type != data_type::integer ? 0 : static_cast<std::uint8_t>(config.mid());
  if (config.has_zero_points()) {
    if (zero_points.shape()[0] != G || zero_points.shape()[1] != m.cols) {
      throw shape_error("zero_points must be [" + std::to_string(G) + ", " +
                        std::to_string(m.cols) + "] for an asymmetric grid");
    }
    for (std::size_t i = 0; i < zero_points.size(); ++i) {
      if (zero_points.data()[i] > config.qmax()) {
        throw shape_error("zero point " + std::to_string(zero_points.data()[i]) + " at group " +
                          std::to_string(i / m.cols) +
                          " exceeds 2^bits - 1 = " + std::to_string(config.qmax()));
      }
    }
    q.zero_points = zero_points;
  } else {
    std::fill(q.zero_points.begin(), q.zero_points.end(), fill);
  }
  for (std::size_t i = 0; i < q.scales.size(); ++i) {
    const T scale = q.scales.data()[i];
    const bool finite = std::isfinite(static_cast<double>(scale));
    const bool reciprocal_overflows =
        config.scale_division == scale_division::multiply_reciprocal && scale != T(0) &&
        !std::isfinite(T(1) / scale);
    if (!finite || reciprocal_overflows) {
      throw shape_error("scale at group " + std::to_string(i / m.cols) + ", column " +
                        std::to_string(i % m.cols) +
                        (finite ? " is so small that 1/scale overflows: use scale_division::divide"
                                : " is not finite"));
    }
  }
  detail::encode_matrix(detail::simd_tag{}, m.data, m.rows, m.cols, config, q.scales.data(),
                        q.zero_points.data(), options.threads, q.codes.data(),
                        static_cast<T*>(nullptr));
  return q;
}

/// quant_weight_w_scale for grids without zero points (symmetric schemes, tables).
template <class E, class S>
auto quant_weight_w_scale(const xt::xexpression<E>& w, const xt::xexpression<S>& scales,
                          const quant_config& config, const quant_options& options = {}) {
  if (config.has_zero_points()) {
    throw config_error("an asymmetric grid needs zero points: pass them to quant_weight_w_scale");
  }
  return quant_weight_w_scale(w, scales, xt::xtensor<std::uint8_t, 2>(), config, options);
}

}  // namespace int4q

#endif  // INT4Q_QUANTIZE_HPP
