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
#include <utility>
#include <vector>

#include <xtensor/xadapt.hpp>
#include <xtensor/xtensor.hpp>

#include <int4q/detail/blas.hpp>
#include <int4q/detail/input.hpp>
#include <int4q/detail/parallel.hpp>
#include <int4q/error.hpp>

namespace int4q {

struct activation_stats_options {
  bool hessian = true;          ///< accumulate H = X^T X (K x K doubles)
  std::size_t sample_rows = 0;  ///< keep a uniform sample of this many rows (0: none)
  std::uint64_t seed = 0;       ///< of the sample; same seed and rows, same sample
  /// Threads for H's tiles (0 = hardware threads). H is the same for any count: every tile is
  /// one BLAS call on one thread.
  std::size_t threads = 1;
  /// A share of H's work, for processes that all see every row: of the tiles of H's upper
  /// triangle (in their fixed order), this object accumulates tile i when
  /// i % hessian_parts == hessian_part and leaves the others 0; join_hessian() then gives every
  /// part, exactly, the H that one object makes alone.
  std::size_t hessian_part = 0;
  std::size_t hessian_parts = 1;
};

/// Streaming statistics of rows x[K] (K = channels, the reduction axis of the layer's weight
/// W[K, N]). Memory: K^2 doubles for H, hessian_block_rows x K floats of pending rows, 2K for
/// the channel statistics, sample_rows x K floats; never all the rows.
///
///   H[a, b]      = sum over rows of x[a] * x[b]
///   mean_abs[a]  = (sum over rows of |x[a]|) / rows  (double)
///   max_abs[a]   = max over rows of |x[a]|
///   sample       = a uniform sample without replacement of min(rows, sample_rows) rows
///                  (reservoir sampling, Algorithm R, with a splitmix64 stream from `seed`):
///                  the same whatever the batch sizes the rows arrive in.
///
/// H is summed in two levels: rows are gathered into blocks of B = hessian_block_rows; each
/// block's X_b^T X_b is computed in float (sgemm on 256 x 256 tiles of the upper triangle) and
/// added into the double accumulator. A float block sum of B products has a relative error
/// below (B + 1) * 2^-24 of its magnitude sum |x[a] x[b]|; the double sum over blocks adds
/// 2^-53 per block. That is ~3e-5 in the worst case and ~1e-6 typically (random signs), far
/// below GPTQ's 1% damping of the diagonal, at half the cost of dsyrk and without a double copy
/// of the rows. Blocks are counted from the first row, so H is the same whatever batch sizes
/// the rows arrive in and whatever the thread count; reading H (hessian(), hessian_upper())
/// adds the pending partial block first, after which blocks count from the next row.
class activation_stats {
 public:
  /// Rows per float block of H (see the class comment).
  static constexpr std::size_t hessian_block_rows = 512;
  /// Tile edge of H's blocked update.
  static constexpr std::size_t hessian_tile = 256;

  explicit activation_stats(std::size_t channels, const activation_stats_options& options = {})
      : k_(channels),
        o_(options),
        h_(options.hessian ? channels * channels : 0, 0.0),
        sum_abs_(channels, 0.0),
        max_abs_(channels, 0.0f),
        rng_(options.seed) {
    if (channels == 0) throw shape_error("activation_stats: channels must be >= 1");
    if (o_.hessian_parts == 0 || o_.hessian_part >= o_.hessian_parts)
      throw config_error("activation_stats: hessian_part must be < hessian_parts");
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
    if (o_.hessian) add_to_hessian(x, count);
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
    flush_hessian();
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
    flush_hessian();
    return xt::adapt(h_.data(), k_ * k_, xt::no_ownership(), std::array<std::size_t, 2>{k_, k_});
  }

  /// Joins the shares of H (activation_stats_options::hessian_part) held by the parts' objects,
  /// tile by tile in their fixed order: `broadcast(data, count, part)` must copy the `count`
  /// doubles at `data` from the object of part `part` (the tile's owner, which packed its tile
  /// there) to every other part's `data` (e.g. MPI_Bcast from rank `part`). Each part then holds
  /// exactly the H one object accumulates alone (every tile is copied, not summed), and
  /// accumulates every tile from then on. Every part sends its tiles once and receives the
  /// others': K^2 / 2 doubles in all.
  template <class Broadcast>
  void join_hessian(Broadcast&& broadcast) {
    if (!o_.hessian) return;
    flush_hessian();
    std::vector<double> tile;
    for_each_tile(
        [&](std::size_t index, std::size_t a0, std::size_t b0, std::size_t na, std::size_t nb) {
          const std::size_t owner = index % o_.hessian_parts;
          tile.resize(na * nb);
          if (owner == o_.hessian_part) {
            for (std::size_t a = 0; a < na; ++a)
              std::copy_n(h_.data() + (a0 + a) * k_ + b0, nb, tile.data() + a * nb);
          }
          broadcast(tile.data(), tile.size(), owner);
          if (owner != o_.hessian_part) {
            for (std::size_t a = 0; a < na; ++a)
              std::copy_n(tile.data() + a * nb, nb, h_.data() + (a0 + a) * k_ + b0);
          }
        });
    o_.hessian_part = 0;
    o_.hessian_parts = 1;
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
  /// Gathers rows into blocks of hessian_block_rows; full blocks go into H. Whole blocks of `x`
  /// are used in place when no rows are pending.
  void add_to_hessian(const float* x, std::size_t count) {
    const std::size_t block = hessian_block_rows;
    while (count > 0) {
      std::size_t used = block;
      if (pending_rows_ == 0 && count >= block) {
        add_block(x, block);
      } else {
        used = std::min(count, block - pending_rows_);
        pending_.resize(block * k_);
        std::copy(x, x + used * k_,
                  pending_.begin() + static_cast<std::ptrdiff_t>(pending_rows_ * k_));
        pending_rows_ += used;
        if (pending_rows_ == block) flush_hessian();
      }
      x += used * k_;
      count -= used;
    }
  }
  /// Adds the pending rows (a partial or full block) to H.
  void flush_hessian() const {
    if (pending_rows_ == 0) return;
    add_block(pending_.data(), pending_rows_);
    pending_rows_ = 0;
  }
  /// f(index, a0, b0, na, nb) for the tiles of H's upper triangle (ta <= tb, rows a0..a0+na,
  /// columns b0..b0+nb), numbered in their fixed order (row of tiles by row of tiles).
  template <class F>
  void for_each_tile(F&& f) const {
    const std::size_t t = hessian_tile;
    const std::size_t tiles = (k_ + t - 1) / t;
    std::size_t index = 0;
    for (std::size_t ta = 0; ta < tiles; ++ta)
      for (std::size_t tb = ta; tb < tiles; ++tb, ++index)
        f(index, ta * t, tb * t, std::min(t, k_ - ta * t), std::min(t, k_ - tb * t));
  }
  /// H[a, b] += sum over the block's rows of x[a] x[b] for b >= a: each tile (ta <= tb) of the
  /// upper triangle is one float gemm X[:, ta]^T X[:, tb] over the block's rows, added in double.
  void add_block(const float* x, std::size_t rows) const {
    const std::size_t t = hessian_tile;
    std::vector<std::pair<std::size_t, std::size_t>> pairs;  // this part's tiles
    for_each_tile([&](std::size_t index, std::size_t a0, std::size_t b0, std::size_t, std::size_t) {
      if (index % o_.hessian_parts == o_.hessian_part) pairs.emplace_back(a0, b0);
    });
    detail::parallel_for(pairs.size(), o_.threads, [&](std::size_t i) {
      const std::size_t a0 = pairs[i].first, b0 = pairs[i].second;
      const std::size_t na = std::min(t, k_ - a0), nb = std::min(t, k_ - b0);
      std::vector<float> tile(na * nb);
      detail::blas::gemm(true, false, na, nb, rows, 1.0f, x + a0, k_, x + b0, k_, 0.0f, tile.data(),
                         nb);
      for (std::size_t a = 0; a < na; ++a) {
        double* h = h_.data() + (a0 + a) * k_ + b0;
        const float* s = tile.data() + a * nb;
        // In a diagonal tile only b >= a belongs to the upper triangle.
        for (std::size_t b = (a0 == b0 ? a : 0); b < nb; ++b) h[b] += static_cast<double>(s[b]);
      }
    });
  }

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
  mutable std::vector<double> h_;       // upper triangle valid
  mutable std::vector<float> pending_;  // rows not yet in h_ (a partial block)
  mutable std::size_t pending_rows_ = 0;
  std::vector<double> sum_abs_;
  std::vector<float> max_abs_;
  std::vector<float> sample_;
  std::uint64_t rng_;
  std::size_t rows_ = 0;
};

}  // namespace int4q

#endif  // INT4Q_ACTIVATION_STATS_HPP
