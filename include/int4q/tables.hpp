// 4-bit lookup-table data types. A code indexes a 16-entry table; w = table[code] * scale with
// scale = amax * clip_ratio / max|table|. Quantization picks the nearest entry; an exact tie
// between two entries picks the lower value (Intel Neural Compressor's `quantize_4bit` rule).
#ifndef INT4Q_TABLES_HPP
#define INT4Q_TABLES_HPP

#include <array>
#include <cstdint>

#include <int4q/config.hpp>

namespace int4q {

/// NormalFloat-4 (QLoRA): quantiles of N(0, 1) normalised to [-1, 1], in code order.
inline constexpr std::array<double, 16> nf4_table = {
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
};

/// FP4 E2M1 (OCP microscaling): code = sign << 3 | magnitude index, magnitudes
/// {0, 0.5, 1, 1.5, 2, 3, 4, 6}. Code 8 is -0 and is never produced (0 encodes as code 0).
inline constexpr std::array<double, 16> fp4_e2m1_table = {
    0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
};

/// The table of a lookup data type (integer grids have none).
inline const std::array<double, 16>& table_of(data_type d) {
  if (d == data_type::nf4) return nf4_table;
  if (d == data_type::fp4) return fp4_e2m1_table;
  throw config_error("data type int has no lookup table");
}

/// Largest magnitude of a table: the value amax maps to.
inline double table_max(data_type d) { return d == data_type::nf4 ? 1.0 : 6.0; }

namespace detail {

/// A table sorted by value with its codes and the midpoints between neighbours, for search.
template <class T>
struct sorted_table {
  int size = 0;               // distinct values (15 for fp4: -0 dropped)
  std::array<T, 16> value{};  // ascending
  std::array<std::uint8_t, 16> code{};
  std::array<T, 15> mid{};  // mid[i] = (value[i] + value[i+1]) / 2

  explicit sorted_table(data_type d) {
    const auto& t = table_of(d);
    for (int c = 0; c < 16; ++c) {
      if (t[c] == 0.0 && c != 0 && d == data_type::fp4) continue;  // skip -0
      int i = size++;
      value[i] = static_cast<T>(t[c]);
      code[i] = static_cast<std::uint8_t>(c);
      while (i > 0 && value[i - 1] > value[i]) {
        std::swap(value[i - 1], value[i]);
        std::swap(code[i - 1], code[i]);
        --i;
      }
    }
    for (int i = 0; i + 1 < size; ++i) mid[i] = (value[i] + value[i + 1]) / T(2);
  }

  /// Code of the entry nearest to t; ties (t == mid) go to the lower value.
  std::uint8_t nearest(T t) const noexcept {
    int i = 0;
    while (i + 1 < size && t > mid[i]) ++i;
    return code[i];
  }
};

}  // namespace detail
}  // namespace int4q

#endif  // INT4Q_TABLES_HPP
