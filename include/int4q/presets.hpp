// Compatibility presets: the grid conventions of other tools, so that int4q reproduces their
// codes and scales bit for bit (see docs/compatibility.md and the tests in test_presets.cpp).
#ifndef INT4Q_PRESETS_HPP
#define INT4Q_PRESETS_HPP

#include <cstddef>

#include <int4q/config.hpp>

namespace int4q {
namespace presets {

namespace detail {
inline quant_config grouped(int bits, std::size_t group_size) {
  quant_config c;
  c.bits = bits;
  c.granularity = grouping::group;
  c.group_size = group_size;
  return c;
}
}  // namespace detail

/// int4q's own recommendation: asymmetric, half to even, w * (1/scale), all-zero groups get
/// scale 1.
inline quant_config int4q(int bits = 4, std::size_t group_size = 128) {
  return detail::grouped(bits, group_size);
}

/// ONNX Runtime MLAS quantizer for MatMulNBits (`matmul_nbits_quantizer`, DEFAULT algorithm):
/// sym: scale = extreme / -2^(b-1) (full range, negative when the extreme is positive);
/// asym: range through 0, scale = (max - min) / (2^b - 1), zp = roundf(-min / scale);
/// code = clamp(roundf(w * (1/scale) + zp)); a zero range keeps scale 0.
/// For fp16 models set scale_type = float16 (ORT stores scales in the model's float type).
inline quant_config ort_matmulnbits(int bits = 4, std::size_t group_size = 128,
                                    bool symmetric = false) {
  quant_config c = detail::grouped(bits, group_size);
  c.scheme = symmetric ? scheme::symmetric_full_range : scheme::asymmetric;
  c.rounding = rounding::half_away_from_zero;
  c.zero_point_rounding = zero_point_rounding::before_rounding;
  c.scale_division = scale_division::multiply_reciprocal;
  c.zero_range = zero_range_policy::zero_scale;
  return c;
}

/// ONNX Runtime MLAS quantizer for DequantizeLinear (QDQ format): as ort_matmulnbits but the
/// zero point is added after rounding: code = clamp(roundf(w * (1/scale)) + zp).
inline quant_config ort_qdq(int bits = 4, std::size_t group_size = 128, bool symmetric = false) {
  quant_config c = ort_matmulnbits(bits, group_size, symmetric);
  c.zero_point_rounding = zero_point_rounding::after_rounding;
  return c;
}

/// GPTQ reference `Quantizer.find_params` + `quantize` (IST-DASLab quant.py):
/// asym: range through 0, scale = (max - min) / maxq, zero = round(-min / scale);
/// sym: zero = 2^(b-1), range [-amax, amax] (or [0, amax] when no value is negative);
/// code = clamp(round(w / scale) + zero), torch rounding (half to even); zero range -> [-1, 1].
inline quant_config gptq(int bits = 4, std::size_t group_size = 128, bool symmetric = false) {
  quant_config c = detail::grouped(bits, group_size);
  c.scheme = symmetric ? scheme::symmetric_offset : scheme::asymmetric;
  c.scale_division = scale_division::divide;
  c.zero_range = zero_range_policy::unit_range;
  return c;
}

/// NVIDIA ModelOpt ONNX int4 (`find_scales` + `rtn`): sym: scale = amax / 7, codes [-8, 7];
/// zero point: raw min/max (not through 0), scale = max(max - min, 1e-5) / 15,
/// zp = clamp(-round(min / scale), 0, 15); numpy rint (half to even), division. A ragged last
/// block's range includes 0 (ModelOpt zero-pads K to whole blocks before find_scales).
/// An all-zero symmetric group (ModelOpt divides by 0) gets scale 1 here.
inline quant_config modelopt_int4(std::size_t group_size = 128, bool use_zero_point = false) {
  quant_config c = detail::grouped(4, group_size);
  c.scale_division = scale_division::divide;
  if (use_zero_point) {
    c.scheme = scheme::asymmetric;
    c.range_includes_zero = false;
    c.ragged_range_includes_zero = true;  // find_scales runs on K zero-padded to whole blocks
    c.min_range = 1e-5;
  } else {
    c.scheme = scheme::symmetric;
  }
  return c;
}

/// Intel Neural Compressor torch weight-only RTN (`qdq_weight_sym` / `qdq_weight_asym`):
/// sym: scale = amax / (2^(b-1) - 1); full_range: scale = amax / 2^(b-1), negated when
/// |max| > |min| (so the extreme maps to -2^(b-1), and a constant positive group clamps to the top
/// code); asym: range through 0; zero range -> amax 1 / range [-1, 1];
/// torch rounding (half to even), division, zero point after rounding.
inline quant_config inc(int bits = 4, std::size_t group_size = 128, bool symmetric = false,
                        bool full_range = false) {
  quant_config c = detail::grouped(bits, group_size);
  c.scheme = !symmetric ? scheme::asymmetric
                        : (full_range ? scheme::symmetric_full_range : scheme::symmetric);
  c.scale_division = scale_division::divide;
  c.zero_range = zero_range_policy::unit_range;
  c.full_range_inc_sign = full_range;  // negative scale only when |max| > |min|
  return c;
}

}  // namespace presets
}  // namespace int4q

#endif  // INT4Q_PRESETS_HPP
