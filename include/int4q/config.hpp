// quant_config: everything that decides how a weight is quantized. Every field is validated by
// validate(); every combination that validate() accepts is implemented.
//
// Weight layout (the ONNX MatMul convention): W[K, N], K = reduction (input) axis = rows.
// A *group* is `group_size` consecutive rows of one column n: W[g*gs .. g*gs+gs-1, n]; the last
// group is shorter when K is not a multiple of gs ("ragged"). Per-channel = one group of all K.
// Codes are stored unsigned, in [0, 2^bits - 1], and always decode as
//     w = (code - zero_point) * scale                      (data_type::integer)
//     w = table[code] * scale                              (data_type::nf4, data_type::fp4)
// Signed schemes use the implicit zero point 2^(bits-1): their signed code is code - 2^(bits-1).
#ifndef INT4Q_CONFIG_HPP
#define INT4Q_CONFIG_HPP

#include <cstddef>
#include <cstdint>
#include <string>

#include <int4q/error.hpp>

namespace int4q {

/// How the range of a group maps to codes.
enum class scheme {
  /// scale = (max - min) / (2^b - 1), zero_point = round(-min / scale), codes [0, 2^b - 1].
  asymmetric,
  /// Signed, restricted range: scale = amax / (2^(b-1) - 1); codes [-(2^(b-1)-1), 2^(b-1)-1]
  /// (with clip_ratio < 1, clamped values may also use -2^(b-1), as ModelOpt and INC do).
  symmetric,
  /// Signed, full range: scale = extreme / -2^(b-1), where `extreme` is the signed value of
  /// largest magnitude, so it maps to -2^(b-1) exactly (the scale is negative when the extreme
  /// is positive). ONNX Runtime MLAS, INC full_range, llama.cpp Q4_0.
  symmetric_full_range,
  /// Unsigned codes with zero_point 2^(b-1) and scale = (hi - lo) / (2^b - 1) where
  /// hi = amax and lo = -amax if the group has a negative value, else 0 (the GPTQ reference's
  /// `find_params(sym=True)`; INC ONNX `sym`).
  symmetric_offset,
};

/// Rounding of value / scale to an integer code.
enum class rounding {
  half_to_even,         ///< numpy/torch `round`, IEEE default (ties to the even integer)
  half_away_from_zero,  ///< C `roundf` (ONNX Runtime MLAS)
};

/// What the codes index.
enum class data_type {
  integer,  ///< uniform integer grid, w = (code - zero_point) * scale
  nf4,      ///< 16-entry NormalFloat table (QLoRA), scale = amax; 4 bits only
  fp4,  ///< 16-entry FP4 E2M1 table {+-0, 0.5, 1, 1.5, 2, 3, 4, 6}, scale = amax / 6; 4 bits only
};

/// Precision in which scales are stored; codes are computed against the stored scale.
enum class scale_type {
  native,    ///< the compute type (float for float/fp16/bf16 inputs, double for double)
  float16,   ///< rounded to IEEE fp16 (ONNX Runtime with fp16 models)
  bfloat16,  ///< rounded to bfloat16
};

/// Where the zero point enters the code computation (matters for ties only).
enum class zero_point_rounding {
  after_rounding,   ///< code = round(w / scale) + zero_point (GPTQ, INC, ModelOpt, ORT's QDQ path)
  before_rounding,  ///< code = round(w / scale + zero_point) (ORT's MatMulNBits path)
};

/// How w / scale is evaluated.
enum class scale_division {
  divide,               ///< w / scale
  multiply_reciprocal,  ///< w * (1 / scale), with 1/0 taken as 0 (ONNX Runtime MLAS)
};

/// What a group whose range is zero (all zeros) gets. (A constant group under a raw min/max
/// range without min_range is widened through zero instead, which keeps it exact.)
enum class zero_range_policy {
  unit_scale,  ///< scale = 1 (codes decode to exact zeros); int4q's default
  zero_scale,  ///< scale = 0 and codes = zero_point (ONNX Runtime)
  unit_range,  ///< range widened to [-1, 1] (GPTQ reference, INC torch)
};

/// Granularity of scales along K.
enum class grouping {
  group,        ///< groups of `group_size` rows
  per_channel,  ///< one group spanning all of K for each column
};

/// The complete description of a quantization grid. Defaults: int4q's recommended 4-bit,
/// group 128, asymmetric, half-to-even, w * (1 / scale).
struct quant_config {
  int bits = 4;                            ///< 2 .. 8
  grouping granularity = grouping::group;  ///< group or per-channel
  std::size_t group_size = 128;            ///< rows per group (>= 1) when granularity == group
  enum scheme scheme = scheme::asymmetric;
  enum rounding rounding = rounding::half_to_even;
  enum data_type data_type = data_type::integer;
  enum scale_type scale_type = scale_type::native;
  enum zero_point_rounding zero_point_rounding = zero_point_rounding::after_rounding;
  /// Default: reciprocal (a multiply instead of a divide per weight: the RTN pass is memory
  /// bound only then). Presets of tools that divide set `divide`.
  enum scale_division scale_division = scale_division::multiply_reciprocal;
  zero_range_policy zero_range = zero_range_policy::unit_scale;
  /// Asymmetric only: widen [min, max] to include 0 (every tool but ModelOpt does).
  bool range_includes_zero = true;
  /// A ragged last group (K not a multiple of the group size) takes its range as if it were
  /// zero-padded to a whole group: [min(lo, 0), max(hi, 0)]. ModelOpt pads K with zero rows
  /// before find_scales; only matters with range_includes_zero = false.
  bool ragged_range_includes_zero = false;
  /// symmetric_full_range only: scale = amax / 2^(b-1), negated only when |max| > |min|
  /// (INC's qdq_weight_sym). The default maps the signed extreme to -2^(b-1), taking min on a
  /// magnitude tie; the two differ only for a constant positive group, which INC's rule gives a
  /// positive scale and the top code (its values clamp to (2^(b-1) - 1) * scale).
  bool full_range_inc_sign = false;
  /// Lower bound on the range: on (hi - lo) for asymmetric and symmetric_offset, on amax for
  /// symmetric and symmetric_full_range, on amax for tables (ModelOpt: 1e-5).
  double min_range = 0.0;
  /// Range shrink factor in (0, 1]: max and min (or amax) are multiplied by it before the scale.
  double clip_ratio = 1.0;

  /// Rows per group for a weight with `k` rows (K for per-channel).
  std::size_t effective_group_size(std::size_t k) const noexcept {
    return granularity == grouping::per_channel ? (k == 0 ? 1 : k) : group_size;
  }
  /// Number of groups along K for a weight with `k` rows: ceil(k / group).
  std::size_t num_groups(std::size_t k) const noexcept {
    const std::size_t gs = effective_group_size(k);
    return (k + gs - 1) / gs;
  }
  /// Largest code, 2^bits - 1.
  int qmax() const noexcept { return (1 << bits) - 1; }
  /// Zero point of the signed schemes, 2^(bits-1).
  int mid() const noexcept { return 1 << (bits - 1); }
  bool is_symmetric() const noexcept { return scheme != scheme::asymmetric; }
  /// True when decoding needs per-group zero points (asymmetric integer grids).
  bool has_zero_points() const noexcept {
    return data_type == data_type::integer && scheme == scheme::asymmetric;
  }
};

inline const char* to_string(scheme s) noexcept {
  switch (s) {
    case scheme::asymmetric: return "asymmetric";
    case scheme::symmetric: return "symmetric";
    case scheme::symmetric_full_range: return "symmetric_full_range";
    case scheme::symmetric_offset: return "symmetric_offset";
  }
  return "?";
}
inline const char* to_string(rounding r) noexcept {
  return r == rounding::half_to_even ? "half_to_even" : "half_away_from_zero";
}
inline const char* to_string(data_type d) noexcept {
  switch (d) {
    case data_type::integer: return "int";
    case data_type::nf4: return "nf4";
    case data_type::fp4: return "fp4";
  }
  return "?";
}

/// Throws config_error naming the first invalid field and what is allowed.
inline void validate(const quant_config& c) {
  if (c.bits < 2 || c.bits > 8) {
    throw config_error("bits = " + std::to_string(c.bits) + " is not supported: use 2 to 8");
  }
  if (c.granularity == grouping::group && c.group_size == 0) {
    throw config_error("group_size = 0 is not a group: use a size >= 1, or per-channel");
  }
  if (c.data_type != data_type::integer && c.bits != 4) {
    throw config_error(std::string("data type ") + to_string(c.data_type) +
                       " is a 16-entry table: it needs bits = 4, got " + std::to_string(c.bits));
  }
  if (!(c.clip_ratio > 0.0 && c.clip_ratio <= 1.0)) {
    throw config_error("clip_ratio = " + std::to_string(c.clip_ratio) + " must be in (0, 1]");
  }
  if (!(c.min_range >= 0.0) || c.min_range > 1e30) {
    throw config_error("min_range = " + std::to_string(c.min_range) + " must be >= 0 and finite");
  }
}

}  // namespace int4q

#endif  // INT4Q_CONFIG_HPP
