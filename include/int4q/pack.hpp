// Packing codes into bytes, in the two layouts ONNX consumers read (see docs/formats.md):
//
//  flat      DequantizeLinear INT4/UINT4/INT8/UINT8 (and GatherBlockQuantized): the tensor in
//            row-major order as one bit stream, element i at bits [(i*b) % 8, +b) of byte
//            i*b / 8 (first element in the low bits); the last byte is zero-padded.
//            bytes = ceil(count * b / 8)
//  matmulnbits  com.microsoft MatMulNBits B: uint8 [N, G, blob], blob = group * b / 8; column n,
//            group g holds W[g*gs .. g*gs+gs-1, n] as a bit stream (even k in the low nibble for
//            4 bits); a ragged last group is padded with the code that encodes 0.0.
//            Zero points: uint8 [N, ceil(G * b / 8)], each row a bit stream padded to a byte.
//
// Codes are unsigned [0, 2^b - 1] everywhere in int4q. code_sign::signed_codes stores
// code - 2^(b-1) in two's complement (INT4/INT8 tensors of symmetric grids), which is code ^
// 2^(b-1).
#ifndef INT4Q_PACK_HPP
#define INT4Q_PACK_HPP

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <xtensor/xtensor.hpp>

#include <int4q/bits.hpp>
#include <int4q/config.hpp>
#include <int4q/error.hpp>
#include <int4q/quantized.hpp>

namespace int4q {

/// How codes are written to packed storage.
enum class code_sign {
  unsigned_codes,  ///< the code as is (UINT4, UINT8, MatMulNBits)
  signed_codes,    ///< code - 2^(b-1), two's complement (INT4, INT8)
};

/// Bytes of `count` codes of `bits` bits packed as one stream.
inline std::size_t packed_bytes(std::size_t count, int bits) noexcept {
  return (count * static_cast<std::size_t>(bits) + 7) / 8;
}

namespace detail {

/// Writes codes[i * stride] for i in [0, count) as a bit stream at dst (dst zeroed by caller).
template <class Traits>
void pack_stream(const std::uint8_t* codes, std::size_t stride, std::size_t count,
                 std::uint8_t flip, std::uint8_t* dst) noexcept {
  constexpr int B = Traits::bits;
  constexpr int per = Traits::codes_per_byte;
  for (std::size_t i = 0; i < count; ++i) {
    const std::uint8_t v = static_cast<std::uint8_t>((codes[i * stride] ^ flip) & Traits::mask);
    dst[i / per] |= static_cast<std::uint8_t>(v << ((i % per) * B));
  }
}

/// Reads `count` codes from a bit stream into out[i * stride].
template <class Traits>
void unpack_stream(const std::uint8_t* src, std::size_t count, std::uint8_t flip, std::uint8_t* out,
                   std::size_t stride) noexcept {
  constexpr int B = Traits::bits;
  constexpr int per = Traits::codes_per_byte;
  for (std::size_t i = 0; i < count; ++i) {
    const std::uint8_t v =
        static_cast<std::uint8_t>((src[i / per] >> ((i % per) * B)) & Traits::mask);
    out[i * stride] = static_cast<std::uint8_t>((v ^ flip) & Traits::mask);
  }
}

inline std::uint8_t sign_flip(int bits, code_sign s) noexcept {
  return s == code_sign::signed_codes ? static_cast<std::uint8_t>(1u << (bits - 1)) : 0;
}

inline void check_codes(const std::uint8_t* codes, std::size_t count, int bits) {
  // One vectorizable pass: any bit above `bits` set somewhere? Only then find where.
  const std::uint8_t high = static_cast<std::uint8_t>(~((1u << bits) - 1u));
  std::uint8_t any = 0;
  for (std::size_t i = 0; i < count; ++i) any = static_cast<std::uint8_t>(any | (codes[i] & high));
  if (any == 0) return;
  for (std::size_t i = 0; i < count; ++i) {
    if (codes[i] & high) {
      throw shape_error("code " + std::to_string(codes[i]) + " at flat index " + std::to_string(i) +
                        " does not fit in " + std::to_string(bits) + " bits");
    }
  }
}

}  // namespace detail

/// Flat packing of a [rows, cols] code tensor (row-major stream, see top of file).
inline std::vector<std::uint8_t> pack_flat(const xt::xtensor<std::uint8_t, 2>& codes, int bits,
                                           code_sign sign = code_sign::unsigned_codes) {
  return dispatch_packed_bits(bits, [&](auto traits) {
    detail::check_codes(codes.data(), codes.size(), bits);
    std::vector<std::uint8_t> out(packed_bytes(codes.size(), bits), 0);
    detail::pack_stream<decltype(traits)>(codes.data(), 1, codes.size(),
                                          detail::sign_flip(bits, sign), out.data());
    return out;
  });
}

/// Inverse of pack_flat: `bytes` holds rows * cols codes.
inline xt::xtensor<std::uint8_t, 2> unpack_flat(const std::uint8_t* bytes, std::size_t size,
                                                std::size_t rows, std::size_t cols, int bits,
                                                code_sign sign = code_sign::unsigned_codes) {
  return dispatch_packed_bits(bits, [&](auto traits) {
    if (size != packed_bytes(rows * cols, bits)) {
      throw shape_error("flat " + std::to_string(bits) + "-bit data of [" + std::to_string(rows) +
                        ", " + std::to_string(cols) + "] needs " +
                        std::to_string(packed_bytes(rows * cols, bits)) + " bytes, got " +
                        std::to_string(size));
    }
    auto out = xt::xtensor<std::uint8_t, 2>::from_shape({rows, cols});
    detail::unpack_stream<decltype(traits)>(bytes, rows * cols, detail::sign_flip(bits, sign),
                                            out.data(), 1);
    return out;
  });
}

/// MatMulNBits B from codes [K, N]: uint8 [N, G, blob]. `pad_codes` [G, N] gives the code that
/// fills the ragged tail of each group (the zero point, so that padding decodes to 0).
inline xt::xtensor<std::uint8_t, 3> pack_matmulnbits_codes(
    const xt::xtensor<std::uint8_t, 2>& codes, std::size_t group_size, int bits,
    const xt::xtensor<std::uint8_t, 2>& pad_codes) {
  return dispatch_packed_bits(bits, [&](auto traits) {
    using Traits = decltype(traits);
    constexpr int per = Traits::codes_per_byte;
    const std::size_t K = codes.shape()[0], N = codes.shape()[1];
    if (group_size == 0 || (group_size * bits) % 8 != 0) {
      throw config_error(
          "MatMulNBits needs group_size * bits to be a whole number of bytes; got group " +
          std::to_string(group_size) + " at " + std::to_string(bits) + " bits");
    }
    const std::size_t G = (K + group_size - 1) / group_size;
    if (pad_codes.shape()[0] != G || pad_codes.shape()[1] != N) {
      throw shape_error("pad codes must be [groups, N] = [" + std::to_string(G) + ", " +
                        std::to_string(N) + "]");
    }
    detail::check_codes(codes.data(), codes.size(), bits);
    detail::check_codes(pad_codes.data(), pad_codes.size(), bits);
    const std::size_t blob = group_size * bits / 8;
    auto out = xt::xtensor<std::uint8_t, 3>::from_shape({N, G, blob});
    // Byte b of (n, g) holds rows g*gs + b*per + j, j < per, at bits j*B. Rows are read
    // contiguously across a block of columns; the block's strided output lines stay in L1.
    // The bytes of a block of columns are assembled in `tile` [block, blob] (in L1), then each
    // column's blob is copied out contiguously.
    constexpr std::size_t block = 64;
    std::vector<std::uint8_t> tile(block * blob);
    std::uint8_t acc[block];
    for (std::size_t g = 0; g < G; ++g) {
      for (std::size_t n0 = 0; n0 < N; n0 += block) {
        const std::size_t nb = std::min(block, N - n0);
        for (std::size_t b = 0; b < blob; ++b) {
          std::fill(acc, acc + nb, std::uint8_t(0));
          for (int j = 0; j < per; ++j) {
            const std::size_t k = g * group_size + b * per + static_cast<std::size_t>(j);
            const std::uint8_t* row =
                k < K ? codes.data() + k * N + n0 : pad_codes.data() + g * N + n0;
            const int shift = j * Traits::bits;
            for (std::size_t i = 0; i < nb; ++i)
              acc[i] = static_cast<std::uint8_t>(acc[i] | (row[i] << shift));
          }
          for (std::size_t i = 0; i < nb; ++i) tile[i * blob + b] = acc[i];
        }
        for (std::size_t i = 0; i < nb; ++i) {
          std::copy_n(tile.data() + i * blob, blob, out.data() + ((n0 + i) * G + g) * blob);
        }
      }
    }
    return out;
  });
}

/// Codes [K, N] from MatMulNBits B [N, G, blob].
inline xt::xtensor<std::uint8_t, 2> unpack_matmulnbits_codes(const xt::xtensor<std::uint8_t, 3>& b,
                                                             std::size_t K, int bits) {
  return dispatch_packed_bits(bits, [&](auto traits) {
    const std::size_t N = b.shape()[0], G = b.shape()[1], blob = b.shape()[2];
    const std::size_t group_size = blob * 8 / bits;
    if (G * group_size < K || (G > 0 && (G - 1) * group_size >= K)) {
      throw shape_error("MatMulNBits B [" + std::to_string(N) + ", " + std::to_string(G) + ", " +
                        std::to_string(blob) + "] does not hold K = " + std::to_string(K) +
                        " rows");
    }
    auto out = xt::xtensor<std::uint8_t, 2>::from_shape({K, N});
    std::vector<std::uint8_t> column(G * group_size);
    for (std::size_t n = 0; n < N; ++n) {
      detail::unpack_stream<decltype(traits)>(b.data() + n * G * blob, column.size(), 0,
                                              column.data(), 1);
      for (std::size_t k = 0; k < K; ++k) out.data()[k * N + n] = column[k];
    }
    return out;
  });
}

/// MatMulNBits zero_points from [G, N]: uint8 [N, ceil(G * bits / 8)], one stream per column.
inline xt::xtensor<std::uint8_t, 2> pack_matmulnbits_zero_points(
    const xt::xtensor<std::uint8_t, 2>& zp, int bits) {
  return dispatch_packed_bits(bits, [&](auto traits) {
    const std::size_t G = zp.shape()[0], N = zp.shape()[1];
    detail::check_codes(zp.data(), zp.size(), bits);
    const std::size_t row = packed_bytes(G, bits);
    xt::xtensor<std::uint8_t, 2> out = xt::zeros<std::uint8_t>({N, row});
    for (std::size_t n = 0; n < N; ++n) {
      detail::pack_stream<decltype(traits)>(zp.data() + n, N, G, 0, out.data() + n * row);
    }
    return out;
  });
}

/// Zero points [G, N] from MatMulNBits packed zero_points [N, ceil(G * bits / 8)].
inline xt::xtensor<std::uint8_t, 2> unpack_matmulnbits_zero_points(
    const xt::xtensor<std::uint8_t, 2>& packed, std::size_t G, int bits) {
  return dispatch_packed_bits(bits, [&](auto traits) {
    const std::size_t N = packed.shape()[0], row = packed.shape()[1];
    if (row != packed_bytes(G, bits)) {
      throw shape_error("MatMulNBits zero_points rows must be " +
                        std::to_string(packed_bytes(G, bits)) + " bytes for " + std::to_string(G) +
                        " groups, got " + std::to_string(row));
    }
    auto out = xt::xtensor<std::uint8_t, 2>::from_shape({G, N});
    for (std::size_t n = 0; n < N; ++n) {
      detail::unpack_stream<decltype(traits)>(packed.data() + n * row, G, 0, out.data() + n, N);
    }
    return out;
  });
}

/// The three MatMulNBits inputs of a quantized weight (inputs B, scales, zero_points).
template <class T>
struct matmulnbits_tensors {
  xt::xtensor<std::uint8_t, 3> b;            ///< [N, G, group * bits / 8]
  xt::xtensor<T, 2> scales;                  ///< [N, G]
  xt::xtensor<std::uint8_t, 2> zero_points;  ///< [N, ceil(G * bits / 8)]; empty when symmetric
  std::size_t k = 0, n = 0, group_size = 0;
  int bits = 0;
};

/// Packs a quantized weight for MatMulNBits. Symmetric grids use MatMulNBits' implicit zero
/// point 2^(bits-1) and get no zero_points tensor.
template <class T>
matmulnbits_tensors<T> pack_matmulnbits(const quantized<T>& q) {
  if (q.config.data_type != data_type::integer) {
    throw config_error(
        "MatMulNBits stores integer grids only; nf4/fp4 weights can be written as fake-quant");
  }
  matmulnbits_tensors<T> t;
  t.k = q.rows();
  t.n = q.cols();
  t.group_size = q.group_size();
  t.bits = q.config.bits;
  t.b = pack_matmulnbits_codes(q.codes, t.group_size, t.bits, q.zero_points);
  t.scales = xt::transpose(q.scales);
  if (q.config.has_zero_points())
    t.zero_points = pack_matmulnbits_zero_points(q.zero_points, t.bits);
  return t;
}

}  // namespace int4q

#endif  // INT4Q_PACK_HPP
