// quantized<T>: the result of quantizing a weight W[K, N] (see config.hpp for the layout).
#ifndef INT4Q_QUANTIZED_HPP
#define INT4Q_QUANTIZED_HPP

#include <cstddef>
#include <cstdint>

#include <xtensor/xtensor.hpp>

#include <int4q/config.hpp>

namespace int4q {

/// Codes, scales and zero points of a quantized weight W[K, N] with G = ceil(K / group) groups.
template <class T>
struct quantized {
  using value_type = T;
  xt::xtensor<std::uint8_t, 2> codes;  ///< [K, N], in [0, 2^bits - 1] (table index for nf4/fp4)
  xt::xtensor<T, 2> scales;            ///< [G, N], as stored (rounded to config.scale_type)
  xt::xtensor<std::uint8_t, 2>
      zero_points;      ///< [G, N]; 2^(bits-1) for symmetric schemes, 0 for tables
  quant_config config;  ///< the grid the codes belong to

  std::size_t rows() const noexcept { return codes.shape()[0]; }  ///< K
  std::size_t cols() const noexcept { return codes.shape()[1]; }  ///< N
  std::size_t num_groups() const noexcept { return scales.shape()[0]; }
  std::size_t group_size() const noexcept { return config.effective_group_size(rows()); }
};

/// Options of a quantization call that do not change its result.
struct quant_options {
  /// Threads to use (0 = all hardware threads). Results are byte-identical for any value.
  std::size_t threads = 1;
};

}  // namespace int4q

#endif  // INT4Q_QUANTIZED_HPP
