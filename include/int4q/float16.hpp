// IEEE binary16 (fp16) and bfloat16 storage types with exact, round-to-nearest-even conversions.
// Weights in fp16/bf16 are converted to float once at the API boundary; scales may be rounded to
// these types so that codes are computed against the scale exactly as it will be stored.
#ifndef INT4Q_FLOAT16_HPP
#define INT4Q_FLOAT16_HPP

#include <cmath>
#include <cstdint>
#include <cstring>

namespace int4q {

namespace detail {
inline std::uint32_t float_bits(float f) noexcept {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
inline float bits_float(std::uint32_t u) noexcept {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
}  // namespace detail

/// fp32 -> fp16 bits, round to nearest even; overflow gives +-Inf, NaN stays NaN (quiet).
inline std::uint16_t float_to_half_bits(float f) noexcept {
  const std::uint32_t x = detail::float_bits(f);
  const std::uint32_t sign = (x >> 16) & 0x8000u;
  const std::uint32_t abs = x & 0x7fffffffu;
  if (abs >= 0x7f800000u) {  // Inf or NaN
    return static_cast<std::uint16_t>(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0u));
  }
  if (abs >= 0x477ff000u) {  // rounds to >= 65520: overflow to Inf
    return static_cast<std::uint16_t>(sign | 0x7c00u);
  }
  if (abs < 0x38800000u) {  // below the smallest normal fp16 (2^-14): subnormal or zero
    // value = abs_float; fp16 subnormal unit = 2^-24. Scale, then round half to even.
    const float a = detail::bits_float(abs);
    const float scaled = a * 16777216.0f;  // exact: multiply by 2^24
    // nearbyint under the default rounding mode is round half to even.
    const auto m = static_cast<std::uint32_t>(std::nearbyint(scaled));
    return static_cast<std::uint16_t>(sign | m);  // m == 0x400 lands on the smallest normal
  }
  // Normal: rebias exponent (127 -> 15) and round the 23-bit mantissa to 10 bits.
  std::uint32_t h = ((abs - 0x38000000u) >> 13);
  const std::uint32_t rest = abs & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // carries into exponent correctly
  return static_cast<std::uint16_t>(sign | h);
}

/// fp16 bits -> fp32 (exact).
inline float half_bits_to_float(std::uint16_t h) noexcept {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exp = (h >> 10) & 0x1fu;
  const std::uint32_t man = h & 0x3ffu;
  if (exp == 0) {  // zero or subnormal: man * 2^-24
    const float v = static_cast<float>(man) * (1.0f / 16777216.0f);
    return sign ? -v : v;
  }
  if (exp == 31) return detail::bits_float(sign | 0x7f800000u | (man << 13));
  return detail::bits_float(sign | ((exp + 112u) << 23) | (man << 13));
}

/// fp32 -> bf16 bits, round to nearest even; NaN stays NaN.
inline std::uint16_t float_to_bfloat16_bits(float f) noexcept {
  const std::uint32_t x = detail::float_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((x >> 16) | 0x40u);
  const std::uint32_t rounding = 0x7fffu + ((x >> 16) & 1u);
  return static_cast<std::uint16_t>((x + rounding) >> 16);
}

/// bf16 bits -> fp32 (exact).
inline float bfloat16_bits_to_float(std::uint16_t b) noexcept {
  return detail::bits_float(static_cast<std::uint32_t>(b) << 16);
}

/// A 16-bit IEEE half value as stored in ONNX tensors (data_type FLOAT16).
struct float16_t {
  std::uint16_t bits = 0;
  float16_t() = default;
  explicit float16_t(float f) noexcept : bits(float_to_half_bits(f)) {}
  static float16_t from_bits(std::uint16_t b) noexcept {
    float16_t h;
    h.bits = b;
    return h;
  }
  explicit operator float() const noexcept { return half_bits_to_float(bits); }
};

/// A bfloat16 value as stored in ONNX tensors (data_type BFLOAT16).
struct bfloat16_t {
  std::uint16_t bits = 0;
  bfloat16_t() = default;
  explicit bfloat16_t(float f) noexcept : bits(float_to_bfloat16_bits(f)) {}
  static bfloat16_t from_bits(std::uint16_t b) noexcept {
    bfloat16_t h;
    h.bits = b;
    return h;
  }
  explicit operator float() const noexcept { return bfloat16_bits_to_float(bits); }
};

}  // namespace int4q

#endif  // INT4Q_FLOAT16_HPP
