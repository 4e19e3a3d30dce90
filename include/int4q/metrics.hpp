// Reconstruction error statistics of a quantized weight, accumulated in double (four lanes).
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

namespace detail {
/// The sums behind error_stats, fed in row-major order. Element i goes to lane i % 4 (four
/// independent chains of double additions, so the loop is not bound by the latency of one);
/// the lanes are combined as (0 + 1) + (2 + 3). The result depends only on the values and
/// their order, never on how they were fed.
struct error_accumulator {
  static constexpr std::size_t lanes = 4;
  double sig[lanes] = {}, err[lanes] = {}, max_abs[lanes] = {};  // sum x^2, sum d^2, max |d|
  std::size_t count = 0;

  void add(double x, double y) noexcept {
    const std::size_t l = count % lanes;
    const double d = x - y;
    sig[l] += x * x;
    err[l] += d * d;
    max_abs[l] = std::max(max_abs[l], std::abs(d));
    ++count;
  }
  template <class A, class B>
  void add_range(const A* x, const B* y, std::size_t n) noexcept {
    std::size_t i = 0;
    for (; i < n && count % lanes != 0; ++i)
      add(static_cast<double>(x[i]), static_cast<double>(y[i]));
    for (; i + lanes <= n; i += lanes) {
      for (std::size_t l = 0; l < lanes; ++l) {
        const double xv = static_cast<double>(x[i + l]);
        const double d = xv - static_cast<double>(y[i + l]);
        sig[l] += xv * xv;
        err[l] += d * d;
        max_abs[l] = std::max(max_abs[l], std::abs(d));
      }
      count += lanes;
    }
    for (; i < n; ++i) add(static_cast<double>(x[i]), static_cast<double>(y[i]));
  }
  error_stats stats() const noexcept {
    const double sig_sum = (sig[0] + sig[1]) + (sig[2] + sig[3]);
    const double err_sum = (err[0] + err[1]) + (err[2] + err[3]);
    error_stats s;
    s.count = count;
    s.max_abs = std::max(std::max(max_abs[0], max_abs[1]), std::max(max_abs[2], max_abs[3]));
    s.mse = count ? err_sum / static_cast<double>(count) : 0.0;
    s.rmse = std::sqrt(s.mse);
    s.relative_l2 = sig_sum > 0 ? std::sqrt(err_sum / sig_sum) : 0.0;
    s.sqnr_db = err_sum > 0 ? 10.0 * std::log10(sig_sum / err_sum)
                            : std::numeric_limits<double>::infinity();
    return s;
  }
};
static_assert(error_accumulator::lanes == 4, "stats() combines exactly four lanes");
}  // namespace detail

/// Error statistics of `approx` against `reference` (same shape, any real element type).
template <class E1, class E2>
error_stats measure_error(const xt::xexpression<E1>& reference, const xt::xexpression<E2>& approx) {
  const auto& w = reference.derived_cast();
  const auto& q = approx.derived_cast();
  if (w.shape().size() != q.shape().size() ||
      !std::equal(w.shape().begin(), w.shape().end(), q.shape().begin())) {
    throw shape_error("measure_error: reference and approximation shapes differ");
  }
  detail::error_accumulator acc;
  if constexpr (detail::has_contiguous_data<E1>::value && detail::has_contiguous_data<E2>::value) {
    if (w.layout() == q.layout() && w.layout() != xt::layout_type::dynamic) {
      const auto* a = w.data();  // same shape and layout: element i matches element i
      const auto* b = q.data();
      acc.add_range(a, b, w.size());
      return acc.stats();
    }
  }
  auto a = w.begin();
  auto b = q.begin();
  for (; a != w.end(); ++a, ++b) acc.add(static_cast<double>(*a), static_cast<double>(*b));
  return acc.stats();
}

}  // namespace int4q

#endif  // INT4Q_METRICS_HPP
