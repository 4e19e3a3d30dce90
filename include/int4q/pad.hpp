// pad / unpad: extend the K axis of a [K, N] tensor with zero rows to a multiple of the group
// size, and cut it back. (quant_tensor handles a ragged last group itself; padding is for
// formats and tools that need whole groups.)
#ifndef INT4Q_PAD_HPP
#define INT4Q_PAD_HPP

#include <algorithm>
#include <cstddef>
#include <string>

#include <xtensor/xtensor.hpp>
#include <xtensor/xview.hpp>

#include <int4q/error.hpp>

namespace int4q {

/// Rows after padding `k` rows to a multiple of `group_size`: ceil(k / gs) * gs.
inline std::size_t padded_rows(std::size_t k, std::size_t group_size) {
  if (group_size == 0) throw config_error("pad: group_size must be >= 1");
  return (k + group_size - 1) / group_size * group_size;
}

/// w[K, N] -> [ceil(K / gs) * gs, N], new rows filled with `fill` (value type of w).
template <class E>
auto pad(const xt::xexpression<E>& w, std::size_t group_size,
         typename E::value_type fill = typename E::value_type()) {
  using V = std::decay_t<typename E::value_type>;
  const auto& e = w.derived_cast();
  if (e.dimension() != 2) throw shape_error("pad: expects a 2-D [K, N] tensor");
  const std::size_t K = e.shape()[0], N = e.shape()[1];
  xt::xtensor<V, 2> out = xt::xtensor<V, 2>::from_shape({padded_rows(K, group_size), N});
  std::fill(out.begin(), out.end(), fill);
  xt::view(out, xt::range(0, K), xt::all()) = e;
  return out;
}

/// The first `k` rows of w (undoes pad).
template <class E>
auto unpad(const xt::xexpression<E>& w, std::size_t k) {
  using V = std::decay_t<typename E::value_type>;
  const auto& e = w.derived_cast();
  if (e.dimension() != 2) throw shape_error("unpad: expects a 2-D [K, N] tensor");
  if (k > e.shape()[0]) {
    throw shape_error("unpad: " + std::to_string(k) + " rows requested from a tensor of " +
                      std::to_string(e.shape()[0]));
  }
  xt::xtensor<V, 2> out = xt::view(e, xt::range(0, k), xt::all());
  return out;
}

}  // namespace int4q

#endif  // INT4Q_PAD_HPP
