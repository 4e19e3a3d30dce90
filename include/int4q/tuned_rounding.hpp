// tuned_rounding: a weight's quantization with learnable rounding offsets and range factors,
// the parameterization of signed-gradient rounding (Intel's AutoRound, "SignRound"), for
// output-aware tuners that own the loss (int4q's ONNX block tuning runs a transformer block
// forward and backward and hands back dL/dWq). Search (the tuner) separate from apply
// (result()).
//
// For a weight W[K, N] on an integer grid (config.hpp layout: groups of rows of one column):
//   per element  a rounding offset V[k, n] in [-offset_limit, offset_limit] (starts at 0)
//   per group    range factors f_lo, f_hi in [range_min, 1] (start at 1); the symmetric
//                schemes use f_hi alone
// and the dequantized weight
//   lo', hi' = f_lo lo, f_hi hi      (lo, hi: the group's range; symmetric schemes: both by f_hi)
//   s, z     = the grid's scale and zero point of [lo', hi'] (compute_group_param, scale
//              rounded to config.scale_type)
//   q        = clamp(round(W / s + V) + z, 0, 2^b - 1)
//   Wq       = s (q - z)
// With V = 0 and factors 1 the codes are quant_tensor's (W / s divided, not multiplied by
// 1/s: the two can differ on a tie). config.clip_ratio multiplies the range as in quant_tensor.
//
// backward(dL/dWq) accumulates the gradients by the straight-through estimator (round() has
// derivative 1): an element inside the grid gives
//   dL/dV = G s,   dL/ds += G ((q - z) - W / s)
// and a clamped one (q fixed at 0 or 2^b - 1) dL/ds += G (q - z), plus, asymmetric, the zero
// point's share through z = round(-lo' / s): dL/ds -= G lo' / s, dL/dlo' += G. The scale
// s = (hi' - lo') / (2^b - 1) (asymmetric) or s = f_hi s(1) (symmetric schemes) passes it on
// to the factors. step(lr) then moves every parameter by lr against the sign of its gradient
// (signed gradient descent), clamps it to its interval and clears the gradients.
#ifndef INT4Q_TUNED_ROUNDING_HPP
#define INT4Q_TUNED_ROUNDING_HPP

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <xtensor/xtensor.hpp>

#include <int4q/config.hpp>
#include <int4q/error.hpp>
#include <int4q/group_params.hpp>
#include <int4q/quantized.hpp>

namespace int4q {

/// Limits of the tuned parameters.
struct tuned_rounding_options {
  /// |V| <= offset_limit (AutoRound: 0.5, so a code moves at most one step from nearest).
  double offset_limit = 0.5;
  /// Range factors in [range_min, 1]: a group's range shrinks to at most this fraction.
  double range_min = 0.5;
};

template <class T>
class tuned_rounding {
 public:
  /// The parameters only (what a tuner keeps as its best so far).
  struct state {
    std::vector<T> offsets;  ///< V, [K, N]
    std::vector<T> lo, hi;   ///< f_lo, f_hi, [G, N]
  };

  /// `w` [K, N]; `config` an integer grid (any scheme); throws config_error for tables
  /// (nf4, fp4: no uniform steps to offset) and non_finite_error for NaN/Inf weights.
  tuned_rounding(xt::xtensor<T, 2> w, const quant_config& config,
                 const tuned_rounding_options& options = {})
      : w_(std::move(w)), c_(config), o_(options) {
    validate(c_);
    if (c_.data_type != data_type::integer)
      throw config_error(
          "tuned rounding needs an integer grid (nf4/fp4 tables have no uniform "
          "step for a rounding offset)");
    if (!(o_.offset_limit >= 0 && o_.offset_limit <= 1) || !(o_.range_min > 0 && o_.range_min <= 1))
      throw config_error("tuned rounding: offset_limit must be in [0, 1], range_min in (0, 1]");
    K_ = w_.shape()[0];
    N_ = w_.shape()[1];
    if (K_ == 0 || N_ == 0) throw shape_error("tuned rounding: the weight is empty");
    gs_ = c_.effective_group_size(K_);
    G_ = c_.num_groups(K_);
    for (std::size_t e = 0; e < w_.size(); ++e)
      if (!std::isfinite(static_cast<double>(w_.data()[e])))
        throw non_finite_error(e / N_, e % N_, static_cast<double>(w_.data()[e]));
    range_lo_.assign(G_ * N_, T(0));
    range_hi_.assign(G_ * N_, T(0));
    for (std::size_t g = 0; g < G_; ++g) {
      const std::size_t k1 = std::min(K_, (g + 1) * gs_);
      for (std::size_t n = 0; n < N_; ++n) {
        T lo = w_(g * gs_, n), hi = lo;
        for (std::size_t k = g * gs_; k < k1; ++k) {
          lo = std::min(lo, w_(k, n));
          hi = std::max(hi, w_(k, n));
        }
        range_lo_[g * N_ + n] = lo;
        range_hi_[g * N_ + n] = hi;
      }
    }
    s_.offsets.assign(K_ * N_, T(0));
    s_.lo.assign(G_ * N_, T(1));
    s_.hi.assign(G_ * N_, T(1));
    grad_v_.assign(K_ * N_, T(0));
    grad_lo_.assign(G_ * N_, T(0));
    grad_hi_.assign(G_ * N_, T(0));
    params_.resize(G_ * N_);
    update_params();
  }

  std::size_t rows() const noexcept { return K_; }
  std::size_t cols() const noexcept { return N_; }
  const xt::xtensor<T, 2>& weight() const noexcept { return w_; }

  /// Wq [K, N] (row-major) at the current parameters into `out`.
  void dequantized(T* out) const {
    for (std::size_t k = 0; k < K_; ++k) {
      const std::size_t g = k / gs_;
      for (std::size_t n = 0; n < N_; ++n) {
        const group_param<T>& p = params_[g * N_ + n];
        const T z = static_cast<T>(p.zero_point);
        out[k * N_ + n] = p.scale * (code(k, n, p) - z);
      }
    }
  }

  /// Accumulates the gradients of the parameters from `grad` = dL/dWq [K, N] (row-major).
  void backward(const T* grad) {
    const T qmax = static_cast<T>(c_.qmax());
    const bool asym = c_.scheme == scheme::asymmetric;
    std::vector<T> grad_s(G_ * N_, T(0)), grad_lo_direct(G_ * N_, T(0));
    for (std::size_t k = 0; k < K_; ++k) {
      const std::size_t g = k / gs_;
      for (std::size_t n = 0; n < N_; ++n) {
        const std::size_t gi = g * N_ + n;
        const group_param<T>& p = params_[gi];
        const T G = grad[k * N_ + n];
        if (G == T(0) || p.scale == T(0)) continue;
        const T z = static_cast<T>(p.zero_point);
        const T u = shifted_round(k, n, p);
        const T q = std::min(std::max(u, T(0)), qmax);
        if (u == q) {
          grad_v_[k * N_ + n] += G * p.scale;
          grad_s[gi] += G * ((q - z) - w_(k, n) / p.scale);
        } else {
          grad_s[gi] += G * (q - z);
          if (asym) {
            const T lo = s_.lo[gi] * low(gi) * ratio();
            grad_s[gi] -= G * lo / p.scale;
            grad_lo_direct[gi] += G;
          }
        }
      }
    }
    for (std::size_t gi = 0; gi < G_ * N_; ++gi) {
      if (asym) {
        // s = r (f_hi hi - f_lo lo) / qmax, lo' = r f_lo lo (r = config.clip_ratio)
        grad_hi_[gi] += grad_s[gi] / qmax * ratio() * high(gi);
        grad_lo_[gi] += (grad_lo_direct[gi] - grad_s[gi] / qmax) * ratio() * low(gi);
      } else {
        // s = f_hi s(1): ds/df_hi = s / f_hi
        grad_hi_[gi] += grad_s[gi] * params_[gi].scale / s_.hi[gi];
      }
    }
  }

  /// One signed-gradient step of size lr on every parameter, then clamps and clears the
  /// gradients.
  void step(double lr) {
    const T l = static_cast<T>(lr);
    const T lim = static_cast<T>(o_.offset_limit), fmin = static_cast<T>(o_.range_min);
    for (std::size_t e = 0; e < K_ * N_; ++e) {
      s_.offsets[e] = std::min(lim, std::max(-lim, s_.offsets[e] - l * sign(grad_v_[e])));
      grad_v_[e] = T(0);
    }
    for (std::size_t gi = 0; gi < G_ * N_; ++gi) {
      s_.lo[gi] = std::min(T(1), std::max(fmin, s_.lo[gi] - l * sign(grad_lo_[gi])));
      s_.hi[gi] = std::min(T(1), std::max(fmin, s_.hi[gi] - l * sign(grad_hi_[gi])));
      grad_lo_[gi] = grad_hi_[gi] = T(0);
    }
    update_params();
  }

  const state& parameters() const noexcept { return s_; }
  /// The gradients accumulated since the last step(), in the parameters' layout.
  state gradients() const { return state{grad_v_, grad_lo_, grad_hi_}; }
  void set_parameters(const state& s) {
    if (s.offsets.size() != K_ * N_ || s.lo.size() != G_ * N_ || s.hi.size() != G_ * N_)
      throw shape_error("tuned rounding: parameters of another shape");
    s_ = s;
    update_params();
  }

  /// The quantized weight at the current parameters (codes, stored scales, zero points), as
  /// the writers store it; dequant() of it equals dequantized().
  quantized<T> result() const {
    quantized<T> out;
    out.config = c_;
    out.codes = xt::xtensor<std::uint8_t, 2>::from_shape({K_, N_});
    out.scales = xt::xtensor<T, 2>::from_shape({G_, N_});
    out.zero_points = xt::xtensor<std::uint8_t, 2>::from_shape({G_, N_});
    for (std::size_t gi = 0; gi < G_ * N_; ++gi) {
      out.scales.data()[gi] = params_[gi].scale;
      out.zero_points.data()[gi] = params_[gi].zero_point;
    }
    for (std::size_t k = 0; k < K_; ++k)
      for (std::size_t n = 0; n < N_; ++n)
        out.codes(k, n) = static_cast<std::uint8_t>(code(k, n, params_[(k / gs_) * N_ + n]));
    return out;
  }

 private:
  static T sign(T v) noexcept { return v > T(0) ? T(1) : (v < T(0) ? T(-1) : T(0)); }

  /// round(W / s + V) + z before the clamp.
  T shifted_round(std::size_t k, std::size_t n, const group_param<T>& p) const {
    const T r = w_(k, n) / p.scale + s_.offsets[k * N_ + n];
    return (c_.rounding == rounding::half_to_even ? std::nearbyint(r) : std::round(r)) +
           static_cast<T>(p.zero_point);
  }
  T code(std::size_t k, std::size_t n, const group_param<T>& p) const {
    if (p.scale == T(0)) return static_cast<T>(p.zero_point);
    return std::min(std::max(shifted_round(k, n, p), T(0)), static_cast<T>(c_.qmax()));
  }
  T ratio() const noexcept { return static_cast<T>(c_.clip_ratio); }
  /// The group's range as the grid takes it (widened through 0 when range_includes_zero).
  T low(std::size_t gi) const noexcept {
    return c_.range_includes_zero ? std::min(range_lo_[gi], T(0)) : range_lo_[gi];
  }
  T high(std::size_t gi) const noexcept {
    return c_.range_includes_zero ? std::max(range_hi_[gi], T(0)) : range_hi_[gi];
  }

  /// Scales and zero points of every group at the current factors.
  void update_params() {
    const bool asym = c_.scheme == scheme::asymmetric;
    for (std::size_t gi = 0; gi < G_ * N_; ++gi) {
      const T flo = asym ? s_.lo[gi] : s_.hi[gi];
      params_[gi] =
          compute_group_param(range_lo_[gi] * flo, range_hi_[gi] * s_.hi[gi], ratio(), c_);
    }
  }

  xt::xtensor<T, 2> w_;
  quant_config c_;
  tuned_rounding_options o_;
  std::size_t K_ = 0, N_ = 0, gs_ = 1, G_ = 0;
  std::vector<T> range_lo_, range_hi_;  ///< each group's [min, max] of W
  state s_;
  std::vector<T> grad_v_, grad_lo_, grad_hi_;
  std::vector<group_param<T>> params_;  ///< at the current factors
};

}  // namespace int4q

#endif  // INT4Q_TUNED_ROUNDING_HPP
