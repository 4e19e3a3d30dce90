// Activation statistics of one layer input, accumulated over a stream of calibration rows
// without keeping them: the Hessian proxy H = X^T X (GPTQ), per-channel mean |x| and max |x|
// (AWQ, clip search), and a bounded uniform sample of rows. Custom runtimes feed their own
// activations; int4q's ONNX executor feeds the ones it computes.
#ifndef INT4Q_ACTIVATION_STATS_HPP
#define INT4Q_ACTIVATION_STATS_HPP

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <xtensor/xadapt.hpp>
#include <xtensor/xtensor.hpp>

#include <int4q/detail/blas.hpp>
#include <int4q/detail/input.hpp>
#include <int4q/error.hpp>

namespace int4q {

struct activation_stats_options {
  bool hessian = true;          ///< accumulate H = X^T X (K x K doubles)
  std::size_t sample_rows = 0;  ///< keep a uniform sample of this many rows (0: none)
  std::uint64_t seed = 0;       ///< of the sample; same seed and rows, same sample
};

/// Streaming statistics of rows x[K] (K = channels, the reduction axis of the layer's weight
/// W[K, N]). Memory: K^2 doubles for H, 2K for the channel statistics, sample_rows x K floats;
/// never the rows themselves.
///
///   H[a, b]      = sum over rows of x[a] * x[b]       (double; BLAS dsyrk per batch)
///   mean_abs[a]  = (sum over rows of |x[a]|) / rows  (double)
///   max_abs[a]   = max over rows of |x[a]|
///   sample       = a uniform sample without replacement of min(rows, sample_rows) rows
///                  (reservoir sampling, Algorithm R, with a splitmix64 stream from `seed`):
///                  the same whatever the batch sizes the rows arrive in.
class activation_stats {
 public:
  explicit activation_stats(std::size_t channels, const activation_stats_options& options = {})
      : k_(channels),
        o_(options),
        h_(options.hessian ? channels * channels : 0, 0.0),
        sum_abs_(channels, 0.0),
        max_abs_(channels, 0.0f),
        rng_(options.seed) {
    if (channels == 0) throw shape_error("activation_stats: channels must be >= 1");
    sample_.reserve(o_.sample_rows * k_);
  }

  std::size_t channels() const noexcept { return k_; }
  std::size_t rows() const noexcept { return rows_; }

  /// Adds `count` rows of `k` floats, row-major. A NaN or Inf is a non_finite_error naming the
  /// row (counted from the first row ever added) and channel; nothing is added then.
  void add(const float* x, std::size_t count) {
    for (std::size_t r = 0; r < count; ++r) {
      for (std::size_t a = 0; a < k_; ++a) {
        const float v = x[r * k_ + a];
        if (!std::isfinite(v)) {
          throw non_finite_error("activation row " + std::to_string(rows_ + r) + ", channel " +
                                     std::to_string(a) + " is " + (v != v ? "NaN" : "infinite") +
                                     ": the calibration inputs or the model give non-finite "
                                     "activations",
                                 rows_ + r, a);
        }
      }
    }
    if (o_.hessian && count > 0) {
      std::vector<double> wide(x, x + count * k_);
      // Upper triangle of H += X^T X; mirrored when read.
      detail::blas::syrk(true, true, k_, count, 1.0, wide.data(), k_, 1.0, h_.data(), k_);
    }
    for (std::size_t r = 0; r < count; ++r) {
      const float* row = x + r * k_;
      for (std::size_t a = 0; a < k_; ++a) {
        const float v = std::fabs(row[a]);
        sum_abs_[a] += v;
        max_abs_[a] = std::max(max_abs_[a], v);
      }
      sample_row(row);
      ++rows_;
    }
  }

  /// Adds the rows of an expression of any rank whose last axis is the channel axis
  /// ([tokens, K], [batch, seq, K], ...), converted to float.
  template <class E>
  void add(const xt::xexpression<E>& x) {
    const auto& e = x.derived_cast();
    if (e.dimension() == 0 || e.shape()[e.dimension() - 1] != k_) {
      throw shape_error("activation_stats: the last axis must have " + std::to_string(k_) +
                        " channels");
    }
    std::vector<float> flat(e.size());
    std::size_t i = 0;
    for (auto it = e.begin(); it != e.end(); ++it) flat[i++] = static_cast<float>(*it);
    add(flat.data(), e.size() / k_);
  }

  /// H = X^T X, symmetric [K, K]. Throws config_error when the Hessian was not requested.
  xt::xtensor<double, 2> hessian() const {
    if (!o_.hessian) throw config_error("activation_stats: hessian = false in the options");
    auto h = xt::xtensor<double, 2>::from_shape({k_, k_});
    for (std::size_t a = 0; a < k_; ++a) {
      for (std::size_t b = a; b < k_; ++b) h(a, b) = h(b, a) = h_[a * k_ + b];
    }
    return h;
  }
  /// H in place, without hessian()'s symmetric copy: a row-major [K, K] view of the accumulator
  /// whose upper triangle (b >= a) holds H[a, b]; entries below the diagonal are unspecified.
  /// What gptq() reads (it reads the upper triangle only). Valid while this object lives.
  auto hessian_upper() const {
    if (!o_.hessian) throw config_error("activation_stats: hessian = false in the options");
    return xt::adapt(h_.data(), k_ * k_, xt::no_ownership(), std::array<std::size_t, 2>{k_, k_});
  }
  xt::xtensor<double, 1> mean_abs() const {
    auto m = xt::xtensor<double, 1>::from_shape({k_});
    for (std::size_t a = 0; a < k_; ++a) m(a) = rows_ ? sum_abs_[a] / double(rows_) : 0.0;
    return m;
  }
  xt::xtensor<float, 1> max_abs() const {
    auto m = xt::xtensor<float, 1>::from_shape({k_});
    std::copy(max_abs_.begin(), max_abs_.end(), m.begin());
    return m;
  }
  /// The sampled rows [min(rows, sample_rows), K], in reservoir slot order.
  xt::xtensor<float, 2> sample() const {
    const std::size_t n = sample_.size() / k_;
    auto s = xt::xtensor<float, 2>::from_shape({n, k_});
    std::copy(sample_.begin(), sample_.end(), s.begin());
    return s;
  }

 private:
  /// splitmix64: the next 64 random bits.
  std::uint64_t next() noexcept {
    std::uint64_t z = (rng_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  /// Algorithm R: row t (0-based) fills slot t while there is room, else replaces slot j for a
  /// uniform j in [0, t] when j < capacity.
  void sample_row(const float* row) {
    const std::size_t cap = o_.sample_rows;
    if (cap == 0) return;
    if (rows_ < cap) {
      sample_.insert(sample_.end(), row, row + k_);
      return;
    }
    const std::uint64_t j = next() % (static_cast<std::uint64_t>(rows_) + 1);
    if (j < cap) std::copy(row, row + k_, sample_.begin() + static_cast<std::ptrdiff_t>(j * k_));
  }

  std::size_t k_;
  activation_stats_options o_;
  std::vector<double> h_;  // upper triangle valid
  std::vector<double> sum_abs_;
  std::vector<float> max_abs_;
  std::vector<float> sample_;
  std::uint64_t rng_;
  std::size_t rows_ = 0;
};

}  // namespace int4q

#endif  // INT4Q_ACTIVATION_STATS_HPP
