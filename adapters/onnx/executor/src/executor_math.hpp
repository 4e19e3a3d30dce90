// Internal to int4q::onnx: the executor's elementwise transcendental functions over arrays,
// vectorized with xsimd's math (batch erf/exp/tanh, accurate to a few ulp of float) with the
// standard library's function on the tail. The executor spends a large share of a transformer's
// forward pass here (GELU's erf, softmax's exp), so they do not go element by element through
// libm.
#ifndef INT4Q_ONNX_SRC_EXECUTOR_MATH_HPP
#define INT4Q_ONNX_SRC_EXECUTOR_MATH_HPP

#include <cmath>
#include <cstddef>

#include <xsimd/xsimd.hpp>

namespace int4q {
namespace onnx {
namespace exec {

/// x[e] = f(x[e]) for e < n: `vf` on whole batches, `sf` on the rest.
template <class VF, class SF>
void map_in_place(float* x, std::size_t n, VF vf, SF sf) {
  using batch = xsimd::batch<float>;
  constexpr std::size_t w = batch::size;
  std::size_t e = 0;
  for (; e + w <= n; e += w) vf(batch::load_unaligned(x + e)).store_unaligned(x + e);
  for (; e < n; ++e) x[e] = sf(x[e]);
}

/// erf(x), elementwise.
inline void erf_in_place(float* x, std::size_t n) {
  map_in_place(
      x, n, [](const xsimd::batch<float>& v) { return xsimd::erf(v); },
      [](float v) { return std::erf(v); });
}

/// exp(x), elementwise.
inline void exp_in_place(float* x, std::size_t n) {
  map_in_place(
      x, n, [](const xsimd::batch<float>& v) { return xsimd::exp(v); },
      [](float v) { return std::exp(v); });
}

/// tanh(x), elementwise.
inline void tanh_in_place(float* x, std::size_t n) {
  map_in_place(
      x, n, [](const xsimd::batch<float>& v) { return xsimd::tanh(v); },
      [](float v) { return std::tanh(v); });
}

/// 1 / (1 + exp(-x)), elementwise.
inline void sigmoid_in_place(float* x, std::size_t n) {
  map_in_place(
      x, n,
      [](const xsimd::batch<float>& v) {
        return xsimd::batch<float>(1.0f) / (xsimd::batch<float>(1.0f) + xsimd::exp(-v));
      },
      [](float v) { return 1.0f / (1.0f + std::exp(-v)); });
}

}  // namespace exec
}  // namespace onnx
}  // namespace int4q

#endif  // INT4Q_ONNX_SRC_EXECUTOR_MATH_HPP
