// Bit-width traits and the single runtime-to-template switch for packed storage.
#ifndef INT4Q_BITS_HPP
#define INT4Q_BITS_HPP

#include <cstdint>
#include <string>

#include <int4q/error.hpp>

namespace int4q {

/// Compile-time facts of a code width.
template <int Bits>
struct bits_traits {
  static_assert(Bits >= 1 && Bits <= 8, "codes are 1 to 8 bits");
  static constexpr int bits = Bits;
  static constexpr int qmax = (1 << Bits) - 1;     ///< largest unsigned code
  static constexpr int mid = 1 << (Bits - 1);      ///< zero point of signed grids
  static constexpr int codes_per_byte = 8 / Bits;  ///< when Bits divides 8
  static constexpr std::uint8_t mask = static_cast<std::uint8_t>(qmax);
};

/// Calls f(bits_traits<B>{}) for the packable widths B in {2, 4, 8}; throws otherwise.
template <class F>
decltype(auto) dispatch_packed_bits(int bits, F&& f) {
  switch (bits) {
    case 2: return f(bits_traits<2>{});
    case 4: return f(bits_traits<4>{});
    case 8: return f(bits_traits<8>{});
    default:
      throw config_error("packing supports 2, 4 and 8 bits, got " + std::to_string(bits) +
                         ": ONNX formats have no other packed widths");
  }
}

}  // namespace int4q

#endif  // INT4Q_BITS_HPP
