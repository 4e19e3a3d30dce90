// Reconstruction error statistics of a quantized weight, accumulated in double.
#ifndef INT4Q_METRICS_HPP
#define INT4Q_METRICS_HPP

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>

#include <xtensor/xexpression.hpp>

#include <int4q/detail/input.hpp>
#include <int4q/error.hpp>

namespace int4q {

/// Error of an approximation Q of W over all elements.
struct error_stats {
  std::size_t count = 0;
  double mse = 0;          ///< mean (W - Q)^2
  double rmse = 0;         ///< sqrt(mse)
  double max_abs = 0;      ///< max |W - Q|
  double relative_l2 = 0;  ///< ||W - Q||_2 / ||W||_2 (0 when W == 0)
  double sqnr_db = 0;      ///< 10 log10(||W||^2 / ||W - Q||^2); +inf when exact
};

/// Error statistics of `approx` against `reference` (same shape, any real element type).
template <class E1, class E2>
error_stats measure_error(const xt::xexpression<E1>& reference, const xt::xexpression<E2>& approx) {
  const auto& w = reference.derived_cast();
  const auto& q = approx.derived_cast();
  if (w.shape().size() != q.shape().size() ||
      !std::equal(w.shape().begin(), w.shape().end(), q.shape().begin())) {
    throw shape_error("measure_error: reference and approximation shapes differ");
  }
  error_stats s;
  double sig = 0, err = 0;
  auto accumulate = [&](double x, double y) {
    const double d = x - y;
    sig += x * x;
    err += d * d;
    s.max_abs = std::max(s.max_abs, std::abs(d));
  };
  if constexpr (detail::has_contiguous_data<E1>::value && detail::has_contiguous_data<E2>::value) {
    if (w.layout() == q.layout() && w.layout() != xt::layout_type::dynamic) {
      const auto* a = w.data();  // same shape and layout: element i matches element i
      const auto* b = q.data();
      s.count = w.size();
      for (std::size_t i = 0; i < s.count; ++i)
        accumulate(static_cast<double>(a[i]), static_cast<double>(b[i]));
    }
  }
  if (s.count == 0) {
    auto a = w.begin();
    auto b = q.begin();
    for (; a != w.end(); ++a, ++b, ++s.count)
      accumulate(static_cast<double>(*a), static_cast<double>(*b));
  }
  s.mse = s.count ? err / static_cast<double>(s.count) : 0.0;
  s.rmse = std::sqrt(s.mse);
  s.relative_l2 = sig > 0 ? std::sqrt(err / sig) : 0.0;
  s.sqnr_db = err > 0 ? 10.0 * std::log10(sig / err) : std::numeric_limits<double>::infinity();
  return s;
}

}  // namespace int4q

#endif  // INT4Q_METRICS_HPP
