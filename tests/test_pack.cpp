// Packing (pack.hpp) against reference packers written bit by bit from the layouts in
// docs/formats.md: a packed stream puts bit t of element i at stream bit i*b + t, and stream bit p
// is bit p % 8 of byte p / 8 (so the first element sits in the low bits). Then the exact
// invariants: unpack(pack(c)) == c, packed sizes, and decoding the packed tensors with the
// formats' own formulas reproduces dequant() exactly.
#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <int4q/quant.hpp>

#include "test_util.hpp"

namespace {

using int4q::code_sign;
using int4q::quant_config;

// ---- Reference bit streams -------------------------------------------------------------------

/// Writes the low b bits of `value` as element i of the stream starting at bytes[base].
void put_element(std::vector<std::uint8_t>& bytes, std::size_t base, std::size_t i, int b,
                 unsigned value) {
  for (int t = 0; t < b; ++t) {
    const std::size_t p = i * static_cast<std::size_t>(b) + static_cast<std::size_t>(t);
    if ((value >> t) & 1u) bytes.at(base + p / 8) |= static_cast<std::uint8_t>(1u << (p % 8));
  }
}

/// Reads element i (b bits) of the stream starting at bytes[0].
unsigned get_element(const std::uint8_t* bytes, std::size_t i, int b) {
  unsigned v = 0;
  for (int t = 0; t < b; ++t) {
    const std::size_t p = i * static_cast<std::size_t>(b) + static_cast<std::size_t>(t);
    v |= static_cast<unsigned>((bytes[p / 8] >> (p % 8)) & 1u) << t;
  }
  return v;
}

std::size_t ceil_div(std::size_t a, std::size_t b) { return (a + b - 1) / b; }

/// Signed storage: code - 2^(b-1) as a b-bit two's complement number.
unsigned stored_value(unsigned code, int b, code_sign s) {
  if (s == code_sign::unsigned_codes) return code;
  const int v = static_cast<int>(code) - (1 << (b - 1));
  return static_cast<unsigned>(v) & ((1u << b) - 1u);
}

/// Flat layout: the whole [rows, cols] tensor, row-major, as one stream.
std::vector<std::uint8_t> reference_flat(const xt::xtensor<std::uint8_t, 2>& codes, int b,
                                         code_sign s) {
  std::vector<std::uint8_t> out(ceil_div(codes.size() * static_cast<std::size_t>(b), 8), 0);
  for (std::size_t i = 0; i < codes.size(); ++i) {
    put_element(out, 0, i, b, stored_value(codes.data()[i], b, s));
  }
  return out;
}

/// MatMulNBits B: [N, G, gs*b/8]; block (n, g) holds W[g*gs + j, n] as element j, rows past K
/// filled with pad[g, n].
std::vector<std::uint8_t> reference_matmulnbits_b(const xt::xtensor<std::uint8_t, 2>& codes,
                                                  const xt::xtensor<std::uint8_t, 2>& pad,
                                                  std::size_t gs, int b) {
  const std::size_t K = codes.shape()[0], N = codes.shape()[1], G = ceil_div(K, gs);
  const std::size_t blob = gs * static_cast<std::size_t>(b) / 8;
  std::vector<std::uint8_t> out(N * G * blob, 0);
  for (std::size_t n = 0; n < N; ++n) {
    for (std::size_t g = 0; g < G; ++g) {
      for (std::size_t j = 0; j < gs; ++j) {
        const std::size_t k = g * gs + j;
        put_element(out, (n * G + g) * blob, j, b, k < K ? codes(k, n) : pad(g, n));
      }
    }
  }
  return out;
}

/// MatMulNBits zero_points: [N, ceil(G*b/8)], row n the stream of zp[0..G, n].
std::vector<std::uint8_t> reference_matmulnbits_zp(const xt::xtensor<std::uint8_t, 2>& zp, int b) {
  const std::size_t G = zp.shape()[0], N = zp.shape()[1];
  const std::size_t row = ceil_div(G * static_cast<std::size_t>(b), 8);
  std::vector<std::uint8_t> out(N * row, 0);
  for (std::size_t n = 0; n < N; ++n) {
    for (std::size_t g = 0; g < G; ++g) put_element(out, n * row, g, b, zp(g, n));
  }
  return out;
}

xt::xtensor<std::uint8_t, 2> random_codes(std::size_t rows, std::size_t cols, int b,
                                          std::uint32_t seed) {
  std::mt19937 gen(seed);
  auto c = xt::xtensor<std::uint8_t, 2>::from_shape({rows, cols});
  for (std::size_t i = 0; i < c.size(); ++i) {
    c.data()[i] = static_cast<std::uint8_t>(gen() % (1u << b));
  }
  return c;
}

/// Equality of a byte vector and the bytes of a tensor, reporting the first difference.
template <class Bytes>
::testing::AssertionResult same_bytes(const std::vector<std::uint8_t>& expected,
                                      const Bytes& actual, std::size_t actual_size,
                                      const std::string& ctx) {
  if (expected.size() != actual_size) {
    return ::testing::AssertionFailure()
           << ctx << ": expected " << expected.size() << " bytes, got " << actual_size;
  }
  for (std::size_t i = 0; i < expected.size(); ++i) {
    if (expected[i] != actual[i]) {
      return ::testing::AssertionFailure() << ctx << ": byte " << i << " expected 0x" << std::hex
                                           << +expected[i] << ", got 0x" << +actual[i];
    }
  }
  return ::testing::AssertionSuccess();
}

std::string ctx_of(const char* what, int b, std::size_t rows, std::size_t cols,
                   std::uint32_t seed) {
  std::ostringstream s;
  s << what << " bits=" << b << " [" << rows << ", " << cols << "] seed=" << seed;
  return s.str();
}

// ---- Flat ---------------------------------------------------------------------------------------

TEST(PackFlat, HandPackedBytes) {
  // 4 bits, codes 1, 2, 3: byte 0 = 1 | 2 << 4 = 0x21, byte 1 = 3 (high nibble padding 0).
  xt::xtensor<std::uint8_t, 2> c4 = {{1, 2, 3}};
  EXPECT_EQ(int4q::pack_flat(c4, 4), (std::vector<std::uint8_t>{0x21, 0x03}));
  // Signed 4 bits: codes 0, 15, 8 are -8, 7, 0 -> nibbles 0x8, 0x7, 0x0 -> 0x78, 0x00.
  xt::xtensor<std::uint8_t, 2> s4 = {{0, 15, 8}};
  EXPECT_EQ(int4q::pack_flat(s4, 4, code_sign::signed_codes),
            (std::vector<std::uint8_t>{0x78, 0x00}));
  // 2 bits, codes 1, 2, 3, 0, 1: 1 | 2 << 2 | 3 << 4 | 0 << 6 = 0x39, then 0x01.
  xt::xtensor<std::uint8_t, 2> c2 = {{1, 2, 3, 0, 1}};
  EXPECT_EQ(int4q::pack_flat(c2, 2), (std::vector<std::uint8_t>{0x39, 0x01}));
  // Signed 8 bits: codes 0, 255, 128 are -128, 127, 0 -> 0x80, 0x7f, 0x00.
  xt::xtensor<std::uint8_t, 2> s8 = {{0, 255, 128}};
  EXPECT_EQ(int4q::pack_flat(s8, 8, code_sign::signed_codes),
            (std::vector<std::uint8_t>{0x80, 0x7f, 0x00}));
  // Row-major over the whole tensor, not per row: [[1], [2], [3]] packs like {1, 2, 3}.
  xt::xtensor<std::uint8_t, 2> col = {{1}, {2}, {3}};
  EXPECT_EQ(int4q::pack_flat(col, 4), (std::vector<std::uint8_t>{0x21, 0x03}));
}

TEST(PackFlat, PackedBytesIsCeilOfBits) {
  EXPECT_EQ(int4q::packed_bytes(0, 4), 0u);
  EXPECT_EQ(int4q::packed_bytes(1, 4), 1u);
  EXPECT_EQ(int4q::packed_bytes(3, 4), 2u);
  EXPECT_EQ(int4q::packed_bytes(4, 2), 1u);
  EXPECT_EQ(int4q::packed_bytes(5, 2), 2u);
  EXPECT_EQ(int4q::packed_bytes(3, 8), 3u);
  for (std::size_t count = 0; count < 40; ++count) {
    for (int b : {2, 4, 8}) {
      EXPECT_EQ(int4q::packed_bytes(count, b), ceil_div(count * static_cast<std::size_t>(b), 8))
          << "count=" << count << " bits=" << b;
    }
  }
}

TEST(PackFlat, MatchesBitStreamReferenceAndRoundTrips) {
  const std::vector<std::pair<std::size_t, std::size_t>> shapes = {
      {0, 3}, {1, 1}, {1, 3}, {3, 5}, {7, 9}, {16, 16}, {33, 7}, {5, 257}};
  for (std::uint32_t seed : int4q_test::seeds()) {
    for (int b : {2, 4, 8}) {
      for (code_sign s : {code_sign::unsigned_codes, code_sign::signed_codes}) {
        for (const auto& sh : shapes) {
          const std::string ctx =
              ctx_of(s == code_sign::signed_codes ? "flat signed" : "flat unsigned", b, sh.first,
                     sh.second, seed);
          const auto codes = random_codes(sh.first, sh.second, b, seed);
          const auto packed = int4q::pack_flat(codes, b, s);
          EXPECT_EQ(packed.size(), int4q::packed_bytes(codes.size(), b)) << ctx;
          EXPECT_TRUE(same_bytes(reference_flat(codes, b, s), packed, packed.size(), ctx));
          const auto back =
              int4q::unpack_flat(packed.data(), packed.size(), sh.first, sh.second, b, s);
          EXPECT_TRUE(int4q_test::all_equal(codes, back, ctx + ": unpack(pack(c))"));
        }
      }
    }
  }
}

TEST(PackFlat, RoundTripsEveryLength) {
  for (int b : {2, 4, 8}) {
    for (std::size_t len = 1; len <= 41; ++len) {
      const auto codes = random_codes(1, len, b, static_cast<std::uint32_t>(len));
      for (code_sign s : {code_sign::unsigned_codes, code_sign::signed_codes}) {
        const auto packed = int4q::pack_flat(codes, b, s);
        const auto back = int4q::unpack_flat(packed.data(), packed.size(), 1, len, b, s);
        EXPECT_TRUE(int4q_test::all_equal(codes, back, ctx_of("flat round trip", b, 1, len, 0)));
      }
    }
  }
}

TEST(PackFlat, SignedCodesDecodeAsTwosComplementTimesScale) {
  // DequantizeLinear of a symmetric grid stored as INT4/INT8 without zero point:
  // w = int(nibble as b-bit two's complement) * scale[g, n] must equal dequant(q).
  for (std::uint32_t seed : int4q_test::seeds()) {
    for (int b : {2, 4, 8}) {
      std::vector<quant_config> configs;
      configs.push_back(int4q::presets::ort_qdq(b, 16, true));
      configs.push_back(int4q::presets::inc(b, 16, true, false));
      configs.push_back(int4q::presets::gptq(b, 16, true));
      quant_config plain = int4q::presets::int4q(b, 16);
      plain.scheme = int4q::scheme::symmetric;
      configs.push_back(plain);
      for (const quant_config& c : configs) {
        const std::size_t K = 37, N = 5;
        const auto w = int4q_test::random_weight<float>(K, N, int4q_test::dist::normal, seed);
        const auto q = int4q::quant_tensor(w, c);
        const auto d = int4q::dequant(q);
        const auto packed = int4q::pack_flat(q.codes, b, code_sign::signed_codes);
        const std::string ctx = int4q_test::describe(c) + " seed=" + std::to_string(seed);
        auto decoded = xt::xtensor<float, 2>::from_shape({K, N});
        for (std::size_t k = 0; k < K; ++k) {
          for (std::size_t n = 0; n < N; ++n) {
            const unsigned u = get_element(packed.data(), k * N + n, b);
            const int v =
                u >= (1u << (b - 1)) ? static_cast<int>(u) - (1 << b) : static_cast<int>(u);
            decoded(k, n) = static_cast<float>(v) * q.scales(k / 16, n);
          }
        }
        EXPECT_TRUE(int4q_test::all_equal(d, decoded, ctx + ": INT decode vs dequant"));
      }
    }
  }
}

TEST(PackFlat, UnsignedCodesWithZeroPointsDecodeToDequant) {
  // DequantizeLinear UINT4/UINT8 with a zero point: w = (u - zp[g, n]) * scale[g, n].
  for (std::uint32_t seed : int4q_test::seeds()) {
    for (int b : {2, 4, 8}) {
      const std::size_t K = 45, N = 3, gs = 16;
      const quant_config c = int4q::presets::int4q(b, gs);
      const auto w = int4q_test::random_weight<float>(K, N, int4q_test::dist::uniform, seed);
      const auto q = int4q::quant_tensor(w, c);
      const auto packed = int4q::pack_flat(q.codes, b);
      const auto zp = int4q::pack_flat(q.zero_points, b);
      auto decoded = xt::xtensor<float, 2>::from_shape({K, N});
      for (std::size_t k = 0; k < K; ++k) {
        for (std::size_t n = 0; n < N; ++n) {
          const float u = static_cast<float>(get_element(packed.data(), k * N + n, b));
          const float z = static_cast<float>(get_element(zp.data(), (k / gs) * N + n, b));
          decoded(k, n) = (u - z) * q.scales(k / gs, n);
        }
      }
      EXPECT_TRUE(
          int4q_test::all_equal(int4q::dequant(q), decoded, ctx_of("UINT decode", b, K, N, seed)));
    }
  }
}

// ---- MatMulNBits --------------------------------------------------------------------------------

TEST(PackMatMulNBits, HandPackedBlocks) {
  // K = 3, N = 2, group 16, 4 bits: one block per column, even k in the low nibble, rows 3..15
  // filled with the pad code (7 for column 0, 9 for column 1).
  xt::xtensor<std::uint8_t, 2> codes = {{1, 4}, {2, 5}, {3, 6}};
  xt::xtensor<std::uint8_t, 2> pad = {{7, 9}};
  const auto b = int4q::pack_matmulnbits_codes(codes, 16, 4, pad);
  ASSERT_EQ(b.shape(), (std::array<std::size_t, 3>{2, 1, 8}));
  const std::vector<std::uint8_t> col0 = {0x21, 0x73, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77};
  const std::vector<std::uint8_t> col1 = {0x54, 0x96, 0x99, 0x99, 0x99, 0x99, 0x99, 0x99};
  for (std::size_t i = 0; i < 8; ++i) {
    EXPECT_EQ(b(0, 0, i), col0[i]) << "byte " << i;
    EXPECT_EQ(b(1, 0, i), col1[i]) << "byte " << i;
  }
  // Zero points of 3 groups, 4 bits: 1, 2, 3 -> 0x21, 0x03 (row padded to a byte).
  xt::xtensor<std::uint8_t, 2> zp = {{1}, {2}, {3}};
  const auto z = int4q::pack_matmulnbits_zero_points(zp, 4);
  ASSERT_EQ(z.shape(), (std::array<std::size_t, 2>{1, 2}));
  EXPECT_EQ(z(0, 0), 0x21);
  EXPECT_EQ(z(0, 1), 0x03);
}

struct nbits_shape {
  std::size_t gs, K, N;
};

TEST(PackMatMulNBits, MatchesBitStreamReferenceAndRoundTrips) {
  // Ragged K, odd numbers of groups, odd N; group * bits a whole number of bytes.
  const std::vector<nbits_shape> shapes = {{16, 16, 1}, {16, 37, 5},  {32, 97, 3},
                                           {4, 9, 7},   {64, 200, 2}, {128, 129, 3}};
  for (std::uint32_t seed : int4q_test::seeds()) {
    for (int b : {2, 4, 8}) {
      for (const nbits_shape& sh : shapes) {
        if ((sh.gs * static_cast<std::size_t>(b)) % 8 != 0) continue;
        const std::size_t G = ceil_div(sh.K, sh.gs);
        const std::string ctx =
            ctx_of("matmulnbits", b, sh.K, sh.N, seed) + " group=" + std::to_string(sh.gs);
        const auto codes = random_codes(sh.K, sh.N, b, seed);
        const auto pad = random_codes(G, sh.N, b, seed + 1);
        const auto packed = int4q::pack_matmulnbits_codes(codes, sh.gs, b, pad);
        ASSERT_EQ(packed.shape(),
                  (std::array<std::size_t, 3>{sh.N, G, sh.gs * static_cast<std::size_t>(b) / 8}))
            << ctx;
        EXPECT_TRUE(same_bytes(reference_matmulnbits_b(codes, pad, sh.gs, b), packed.data(),
                               packed.size(), ctx + ": B"));
        EXPECT_TRUE(int4q_test::all_equal(codes, int4q::unpack_matmulnbits_codes(packed, sh.K, b),
                                          ctx + ": unpack(pack(B))"));
        const auto zp = int4q::pack_matmulnbits_zero_points(pad, b);
        ASSERT_EQ(zp.shape(), (std::array<std::size_t, 2>{sh.N, int4q::packed_bytes(G, b)})) << ctx;
        EXPECT_TRUE(same_bytes(reference_matmulnbits_zp(pad, b), zp.data(), zp.size(),
                               ctx + ": zero points"));
        EXPECT_TRUE(int4q_test::all_equal(pad, int4q::unpack_matmulnbits_zero_points(zp, G, b),
                                          ctx + ": unpack(pack(zero points))"));
      }
    }
  }
}

TEST(PackMatMulNBits, DecodeFormulaReproducesDequant) {
  // formats.md: W[k, n] = (q[n][k] - zp[n][k / bs]) * scale[n][k / bs], zp = 2^(b-1) when the
  // zero_points input is absent. Read with the reference bit reader, not unpack_*.
  const std::vector<nbits_shape> shapes = {{16, 37, 5}, {32, 96, 3}, {16, 80, 1}, {128, 131, 7}};
  for (std::uint32_t seed : int4q_test::seeds()) {
    for (int b : {2, 4, 8}) {
      for (const nbits_shape& sh : shapes) {
        std::vector<quant_config> configs = {
            int4q::presets::ort_matmulnbits(b, sh.gs, false),
            int4q::presets::ort_matmulnbits(b, sh.gs, true), int4q::presets::int4q(b, sh.gs),
            int4q::presets::gptq(b, sh.gs, true), int4q::presets::inc(b, sh.gs, true, false)};
        for (const quant_config& c : configs) {
          auto w = int4q_test::random_weight<float>(sh.K, sh.N, int4q_test::dist::outliers, seed);
          if (sh.N > 1) {  // zero-range groups too (in the last column)
            for (std::size_t k = 0; k < sh.K; ++k) w(k, sh.N - 1) = 0.0f;
          }
          const auto q = int4q::quant_tensor(w, c);
          const auto d = int4q::dequant(q);
          const auto t = int4q::pack_matmulnbits(q);
          const std::size_t G = ceil_div(sh.K, sh.gs);
          const std::size_t blob = sh.gs * static_cast<std::size_t>(b) / 8;
          const std::string ctx = int4q_test::describe(c) + " K=" + std::to_string(sh.K) +
                                  " N=" + std::to_string(sh.N) + " seed=" + std::to_string(seed);
          ASSERT_EQ(t.k, sh.K) << ctx;
          ASSERT_EQ(t.n, sh.N) << ctx;
          ASSERT_EQ(t.group_size, sh.gs) << ctx;
          ASSERT_EQ(t.bits, b) << ctx;
          ASSERT_EQ(t.b.shape(), (std::array<std::size_t, 3>{sh.N, G, blob})) << ctx;
          ASSERT_EQ(t.scales.shape(), (std::array<std::size_t, 2>{sh.N, G})) << ctx;
          const bool has_zp = c.scheme == int4q::scheme::asymmetric;
          if (has_zp) {
            ASSERT_EQ(
                t.zero_points.shape(),
                (std::array<std::size_t, 2>{sh.N, ceil_div(G * static_cast<std::size_t>(b), 8)}))
                << ctx;
          } else {
            EXPECT_EQ(t.zero_points.size(), 0u) << ctx << ": symmetric grids have no zero_points";
          }
          EXPECT_TRUE(int4q_test::all_equal(xt::xtensor<float, 2>(xt::transpose(q.scales)),
                                            t.scales, ctx + ": scales [N, G]"));
          auto decoded = xt::xtensor<float, 2>::from_shape({sh.K, sh.N});
          for (std::size_t n = 0; n < sh.N; ++n) {
            for (std::size_t k = 0; k < G * sh.gs; ++k) {
              const std::size_t g = k / sh.gs;
              const float qv = static_cast<float>(get_element(&t.b(n, g, 0), k % sh.gs, b));
              const float zp = has_zp ? static_cast<float>(get_element(&t.zero_points(n, 0), g, b))
                                      : static_cast<float>(1 << (b - 1));
              const float v = (qv - zp) * t.scales(n, g);
              if (k < sh.K) {
                decoded(k, n) = v;
              } else {
                EXPECT_EQ(v, 0.0f) << ctx << ": padding row " << k << " of column " << n;
              }
            }
          }
          EXPECT_TRUE(int4q_test::all_equal(d, decoded, ctx + ": MatMulNBits decode vs dequant"));
        }
      }
    }
  }
}

TEST(PackMatMulNBits, PerChannelIsOneBlockOfK) {
  const std::size_t K = 38, N = 3;
  quant_config c = int4q::presets::int4q(4, 128);
  c.granularity = int4q::grouping::per_channel;
  const auto w = int4q_test::random_weight<float>(K, N, int4q_test::dist::normal, 5);
  const auto q = int4q::quant_tensor(w, c);
  const auto t = int4q::pack_matmulnbits(q);
  EXPECT_EQ(t.group_size, K);
  ASSERT_EQ(t.b.shape(), (std::array<std::size_t, 3>{N, 1, K / 2}));
  EXPECT_TRUE(int4q_test::all_equal(q.codes, int4q::unpack_matmulnbits_codes(t.b, K, 4),
                                    "per-channel round trip"));
}

// ---- Errors -------------------------------------------------------------------------------------

TEST(PackErrors, CodesOutOfRangeAreShapeErrors) {
  xt::xtensor<std::uint8_t, 2> c4 = {{1, 16, 3}};
  EXPECT_THROW(int4q::pack_flat(c4, 4), int4q::shape_error);
  EXPECT_THROW(int4q::pack_flat(c4, 4, code_sign::signed_codes), int4q::shape_error);
  xt::xtensor<std::uint8_t, 2> c2 = {{0, 4}};
  EXPECT_THROW(int4q::pack_flat(c2, 2), int4q::shape_error);
  xt::xtensor<std::uint8_t, 2> pad = {{0}, {0}};
  xt::xtensor<std::uint8_t, 2> tall = xt::zeros<std::uint8_t>({std::size_t{20}, std::size_t{1}});
  tall(17, 0) = 16;
  EXPECT_THROW(int4q::pack_matmulnbits_codes(tall, 16, 4, pad), int4q::shape_error);
  xt::xtensor<std::uint8_t, 2> zp = {{3}, {4}};
  EXPECT_THROW(int4q::pack_matmulnbits_zero_points(zp, 2), int4q::shape_error);
}

TEST(PackErrors, UnsupportedBitsAreConfigErrors) {
  xt::xtensor<std::uint8_t, 2> c = {{1, 2, 3}};
  xt::xtensor<std::uint8_t, 2> pad = {{0, 0, 0}};
  for (int b : {1, 3, 5, 6, 7, 9}) {
    EXPECT_THROW(int4q::pack_flat(c, b), int4q::config_error) << "bits=" << b;
    EXPECT_THROW(int4q::unpack_flat(nullptr, 0, 0, 0, b), int4q::config_error) << "bits=" << b;
    EXPECT_THROW(int4q::pack_matmulnbits_codes(c, 16, b, pad), int4q::config_error) << "bits=" << b;
    EXPECT_THROW(int4q::pack_matmulnbits_zero_points(c, b), int4q::config_error) << "bits=" << b;
  }
  // A 3- or 5-bit quantized weight cannot be written as MatMulNBits.
  for (int b : {3, 5}) {
    const auto w = int4q_test::random_weight<float>(32, 2, int4q_test::dist::normal, 1);
    const auto q = int4q::quant_tensor(w, int4q::presets::int4q(b, 16));
    EXPECT_THROW(int4q::pack_matmulnbits(q), int4q::config_error) << "bits=" << b;
  }
}

TEST(PackErrors, GroupNotByteAlignedIsConfigError) {
  xt::xtensor<std::uint8_t, 2> c = xt::zeros<std::uint8_t>({std::size_t{6}, std::size_t{2}});
  xt::xtensor<std::uint8_t, 2> pad2 = xt::zeros<std::uint8_t>({std::size_t{2}, std::size_t{2}});
  xt::xtensor<std::uint8_t, 2> pad3 = xt::zeros<std::uint8_t>({std::size_t{3}, std::size_t{2}});
  EXPECT_THROW(int4q::pack_matmulnbits_codes(c, 3, 4, pad2), int4q::config_error);  // 12 bits
  EXPECT_THROW(int4q::pack_matmulnbits_codes(c, 2, 2, pad3), int4q::config_error);  // 4 bits
  EXPECT_THROW(int4q::pack_matmulnbits_codes(c, 0, 4, pad2), int4q::config_error);
  const auto w = int4q_test::random_weight<float>(9, 2, int4q_test::dist::normal, 1);
  EXPECT_THROW(int4q::pack_matmulnbits(int4q::quant_tensor(w, int4q::presets::int4q(4, 3))),
               int4q::config_error);
  quant_config pc = int4q::presets::int4q(4, 128);
  pc.granularity = int4q::grouping::per_channel;  // group = K = 9 rows: 36 bits
  EXPECT_THROW(int4q::pack_matmulnbits(int4q::quant_tensor(w, pc)), int4q::config_error);
}

TEST(PackErrors, TableDataTypesCannotBeMatMulNBits) {
  const auto w = int4q_test::random_weight<float>(32, 2, int4q_test::dist::normal, 1);
  for (auto dt : {int4q::data_type::nf4, int4q::data_type::fp4}) {
    quant_config c = int4q::presets::int4q(4, 16);
    c.data_type = dt;
    c.scheme = int4q::scheme::symmetric;
    EXPECT_THROW(int4q::pack_matmulnbits(int4q::quant_tensor(w, c)), int4q::config_error)
        << int4q::to_string(dt);
  }
}

TEST(PackErrors, WrongByteCountsAreShapeErrors) {
  const auto codes = random_codes(3, 5, 4, 1);
  const auto packed = int4q::pack_flat(codes, 4);  // 8 bytes
  EXPECT_THROW(int4q::unpack_flat(packed.data(), packed.size() - 1, 3, 5, 4), int4q::shape_error);
  std::vector<std::uint8_t> longer = packed;
  longer.push_back(0);
  EXPECT_THROW(int4q::unpack_flat(longer.data(), longer.size(), 3, 5, 4), int4q::shape_error);
  EXPECT_THROW(int4q::unpack_flat(packed.data(), packed.size(), 4, 5, 4), int4q::shape_error);

  // B [N, G, blob] must hold exactly ceil(K / group) groups.
  const auto tall = random_codes(40, 2, 4, 2);  // 3 groups of 16
  const auto pad = random_codes(3, 2, 4, 3);
  const auto b = int4q::pack_matmulnbits_codes(tall, 16, 4, pad);
  EXPECT_NO_THROW(int4q::unpack_matmulnbits_codes(b, 33, 4));
  EXPECT_NO_THROW(int4q::unpack_matmulnbits_codes(b, 48, 4));
  EXPECT_THROW(int4q::unpack_matmulnbits_codes(b, 49, 4), int4q::shape_error);
  EXPECT_THROW(int4q::unpack_matmulnbits_codes(b, 32, 4), int4q::shape_error);
  // Pad codes must be [G, N].
  EXPECT_THROW(int4q::pack_matmulnbits_codes(tall, 16, 4, random_codes(2, 2, 4, 4)),
               int4q::shape_error);
  EXPECT_THROW(int4q::pack_matmulnbits_codes(tall, 16, 4, random_codes(3, 3, 4, 4)),
               int4q::shape_error);
  // Zero points [N, ceil(G * b / 8)].
  const auto zp = int4q::pack_matmulnbits_zero_points(pad, 4);  // [2, 2]
  EXPECT_NO_THROW(int4q::unpack_matmulnbits_zero_points(zp, 3, 4));
  EXPECT_NO_THROW(int4q::unpack_matmulnbits_zero_points(zp, 4, 4));
  EXPECT_THROW(int4q::unpack_matmulnbits_zero_points(zp, 5, 4), int4q::shape_error);
  EXPECT_THROW(int4q::unpack_matmulnbits_zero_points(zp, 2, 4), int4q::shape_error);
}

}  // namespace
