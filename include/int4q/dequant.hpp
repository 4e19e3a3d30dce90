// dequant: codes back to values. qdq: quantize then dequantize in one pass ("fake quant"),
// without materialising the codes.
#ifndef INT4Q_DEQUANT_HPP
#define INT4Q_DEQUANT_HPP

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <xtensor/xtensor.hpp>

#include <int4q/detail/kernels.hpp>
#include <int4q/detail/parallel.hpp>
#include <int4q/metrics.hpp>
#include <int4q/quantize.hpp>
#include <int4q/quantized.hpp>
#include <int4q/tables.hpp>

namespace int4q {
namespace detail {

/// Group g, columns [c0, c0 + n) of q decoded into out (row stride ldo):
/// out[k, n] = (codes[k, n] - zp[g, n]) * scale[g, n]  or  table[codes[k, n]] * scale[g, n].
template <class Tag, class T>
void dequant_block(Tag tag, const quantized<T>& q, std::size_t g, std::size_t c0, std::size_t n,
                   T* out, std::size_t ldo) {
  const std::size_t K = q.rows(), N = q.cols();
  const std::size_t gs = q.group_size();
  const std::size_t r0 = g * gs;
  const std::size_t rows = std::min(gs, K - r0);
  const T* scale = q.scales.data() + g * N + c0;
  const std::uint8_t* codes = q.codes.data() + r0 * N + c0;
  if (q.config.data_type != data_type::integer) {
    const auto& values = table_of(q.config.data_type);
    for (std::size_t i = 0; i < rows; ++i) {
      for (std::size_t j = 0; j < n; ++j)
        out[i * ldo + j] = static_cast<T>(values[codes[i * N + j]]) * scale[j];
    }
    return;
  }
  T zp[max_tile_cols];
  for (std::size_t j = 0; j < n; ++j) zp[j] = static_cast<T>(q.zero_points.data()[g * N + c0 + j]);
  dequant_columns(tag, codes, N, rows, n, scale, zp, out, ldo);
}

/// The whole of q decoded into out [K, N].
template <class Tag, class T>
void dequant_matrix(Tag tag, const quantized<T>& q, std::size_t threads, T* out) {
  const std::size_t N = q.cols();
  const std::size_t tiles = (N + max_tile_cols - 1) / max_tile_cols;
  parallel_for(q.num_groups() * tiles, threads, [&](std::size_t item) {
    const std::size_t g = item / tiles;
    const std::size_t c0 = (item % tiles) * max_tile_cols;
    const std::size_t n = std::min(max_tile_cols, N - c0);
    dequant_block(tag, q, g, c0, n, out + g * q.group_size() * N + c0, N);
  });
}

template <class T>
void check_quantized(const quantized<T>& q) {
  validate(q.config);
  const std::size_t K = q.rows(), N = q.cols(), G = q.config.num_groups(K);
  if (q.scales.shape()[0] != G || q.scales.shape()[1] != N || q.zero_points.shape()[0] != G ||
      q.zero_points.shape()[1] != N) {
    throw shape_error("quantized weight is inconsistent: codes [" + std::to_string(K) + ", " +
                      std::to_string(N) + "] need scales and zero_points [" + std::to_string(G) +
                      ", " + std::to_string(N) + "]");
  }
  if (q.config.data_type != data_type::integer) {  // codes index a 16-entry table
    for (std::size_t i = 0; i < q.codes.size(); ++i) {
      if (q.codes.data()[i] > 15) {
        throw shape_error("table code " + std::to_string(q.codes.data()[i]) + " at [" +
                          std::to_string(i / N) + ", " + std::to_string(i % N) +
                          "] is outside the 16-entry table");
      }
    }
  }
}

}  // namespace detail

/// Values of a quantized weight, [K, N] of its compute type.
template <class T>
xt::xtensor<T, 2> dequant(const quantized<T>& q, const quant_options& options = {}) {
  detail::check_quantized(q);
  auto out = xt::xtensor<T, 2>::from_shape({q.rows(), q.cols()});
  detail::dequant_matrix(detail::simd_tag{}, q, options.threads, out.data());
  return out;
}

/// measure_error(w, dequant(q)), bit for bit, without materializing dequant(q): one group of
/// rows is decoded at a time, so the extra memory is group_size x N values, not K x N.
template <class E, class T>
error_stats measure_error(const xt::xexpression<E>& reference, const quantized<T>& q) {
  detail::check_quantized(q);
  const auto w = detail::as_matrix<T>(reference, "reference");
  if (w.rows != q.rows() || w.cols != q.cols()) {
    throw shape_error("measure_error: reference [" + std::to_string(w.rows) + ", " +
                      std::to_string(w.cols) + "] and quantized [" + std::to_string(q.rows()) +
                      ", " + std::to_string(q.cols()) + "] shapes differ");
  }
  const std::size_t K = q.rows(), N = q.cols(), gs = q.group_size();
  std::vector<T> block(std::min(gs, K) * N);
  detail::error_accumulator acc;
  for (std::size_t g = 0; g < q.num_groups(); ++g) {
    for (std::size_t c0 = 0; c0 < N; c0 += detail::max_tile_cols) {
      const std::size_t n = std::min(detail::max_tile_cols, N - c0);
      detail::dequant_block(detail::simd_tag{}, q, g, c0, n, block.data() + c0, N);
    }
    const std::size_t r0 = g * gs, rows = std::min(gs, K - r0);
    acc.add_range(w.data + r0 * N, block.data(), rows * N);
  }
  return acc.stats();
}

/// dequant(quant_tensor(w, config)) in one pass: the fake-quantized weight, bit-identical to
/// the two-step form.
template <class E>
auto qdq(const xt::xexpression<E>& w, const quant_config& config,
         const quant_options& options = {}) {
  using T = compute_type_t<typename E::value_type>;
  validate(config);
  const auto m = detail::as_matrix<T>(w, "weight");
  const std::size_t G = config.num_groups(m.rows);
  auto out = xt::xtensor<T, 2>::from_shape({m.rows, m.cols});
  xt::xtensor<T, 2> scales = xt::xtensor<T, 2>::from_shape({G, m.cols});
  xt::xtensor<std::uint8_t, 2> zps = xt::xtensor<std::uint8_t, 2>::from_shape({G, m.cols});
  detail::quantize_sink<T> sink;
  sink.scales = scales.data();
  sink.zero_points = zps.data();
  sink.fake_quant = out.data();
  detail::quantize_matrix(detail::simd_tag{}, m.data, m.rows, m.cols, config,
                          static_cast<const T*>(nullptr), options.threads, sink);
  return out;
}

}  // namespace int4q

#endif  // INT4Q_DEQUANT_HPP
