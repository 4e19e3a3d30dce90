// Compatibility presets (presets.hpp) against scalar references written in this file from each
// tool's published formula: plain loops in float32, in the order the tool evaluates them, with the
// tool's rounding (C `roundf` for ONNX Runtime MLAS; `np.rint` / `torch.round`, i.e. half to even,
// for GPTQ, ModelOpt and INC). Nothing here calls int4q's internals; codes, scales (bit for bit,
// sign of zero included) and zero points must match exactly. The data include fp16-grid weights,
// small integers and tie-rich sixteenths, which produce exact ties; every test also checks that its
// data really contained decisive ties, so that a wrong rounding rule cannot pass unnoticed.
#include <gtest/gtest.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <int4q/quant.hpp>

#include "test_util.hpp"

namespace {

using int4q::quant_config;
using int4q_test::dist;

// ---- Reference driver ----------------------------------------------------------------------

/// What a reference produces, in int4q's representation (unsigned codes; signed schemes add
/// 2^(bits-1) to the tool's signed code and report 2^(bits-1) as zero point).
struct reference_result {
  xt::xtensor<std::uint8_t, 2> codes;        // [K, N]
  xt::xtensor<float, 2> scales;              // [G, N]
  xt::xtensor<std::uint8_t, 2> zero_points;  // [G, N]
};

/// Counts of events that make a comparison meaningful (summed over a whole test).
struct evidence {
  long ties = 0;        // rounding arguments exactly halfway between two in-range codes
  long fp16_zp = 0;     // groups whose zero point differs when derived from the fp16 scale
  long fp16_codes = 0;  // codes that differ when computed against the unrounded float scale
};

/// One group's parameters and codes from its values (in K order).
using group_reference =
    std::function<void(const std::vector<float>& v, float& scale, int& zp, std::vector<int>& code)>;

/// Applies `ref` to every group of `gs` consecutive rows of every column of w (the last group
/// ragged); gs = 0 means one group of all K rows (per-channel).
reference_result run_reference(const xt::xtensor<float, 2>& w, std::size_t gs,
                               const group_reference& ref) {
  const std::size_t K = w.shape()[0], N = w.shape()[1];
  if (gs == 0) gs = K;
  const std::size_t G = (K + gs - 1) / gs;
  reference_result r;
  r.codes = xt::xtensor<std::uint8_t, 2>::from_shape({K, N});
  r.scales = xt::xtensor<float, 2>::from_shape({G, N});
  r.zero_points = xt::xtensor<std::uint8_t, 2>::from_shape({G, N});
  for (std::size_t n = 0; n < N; ++n) {
    for (std::size_t g = 0; g < G; ++g) {
      const std::size_t k0 = g * gs, k1 = std::min(K, k0 + gs);
      std::vector<float> v;
      for (std::size_t k = k0; k < k1; ++k) v.push_back(w(k, n));
      float scale = 0;
      int zp = 0;
      std::vector<int> code(v.size(), -1);
      ref(v, scale, zp, code);
      r.scales(g, n) = scale;
      EXPECT_TRUE(zp >= 0 && zp <= 255) << "reference zero point " << zp;
      r.zero_points(g, n) = static_cast<std::uint8_t>(zp);
      for (std::size_t i = 0; i < v.size(); ++i) {
        EXPECT_TRUE(code[i] >= 0 && code[i] <= 255) << "reference code " << code[i];
        r.codes(k0 + i, n) = static_cast<std::uint8_t>(code[i]);
      }
    }
  }
  return r;
}

int clamp_int(int v, int lo, int hi) { return std::min(std::max(v, lo), hi); }
float clamp_float(float v, float lo, float hi) { return std::min(std::max(v, lo), hi); }

/// True when u is exactly halfway between two integers that both lie in [lo, hi].
bool is_tie(float u, float lo, float hi) {
  return u - std::floor(u) == 0.5f && std::floor(u) >= lo && std::floor(u) + 1 <= hi;
}

/// fp32 -> nearest fp16 value (ties to even), written independently of int4q's float16.hpp:
/// fp16 normal numbers have 11 significant bits, and nothing is finer than the subnormal step
/// 2^-24. (Overflow to Inf is not needed here.)
float round_to_fp16(float x) {
  if (x == 0.0f) return x;  // keeps the sign of zero
  EXPECT_LE(std::fabs(x), 65504.0f) << "fp16 reference: " << x << " overflows fp16";
  int e = 0;
  std::frexp(x, &e);                          // |x| = f * 2^e with 0.5 <= f < 1
  const int quantum = std::max(e - 11, -24);  // exponent of the fp16 spacing at x
  return std::ldexp(std::nearbyint(std::ldexp(x, -quantum)), quantum);
}

// ---- ONNX Runtime MLAS --------------------------------------------------------------------

/// MLAS `BlockwiseQuantizer::quantizeAndTranspose` (MatMulNBits, qdq = false) and
/// `BlockwiseQDQQuantizer::QuantizeColumnWise` (qdq = true), q4_dq.cpp.
group_reference ort_reference(int bits, bool sym, bool qdq, bool fp16_scale, evidence& ev) {
  return [=, &ev](const std::vector<float>& v, float& scale_out, int& zp_out,
                  std::vector<int>& code) {
    const int qmax = (1 << bits) - 1, mid = 1 << (bits - 1);
    float mn = FLT_MAX, mx = -FLT_MAX;
    for (float x : v) {
      mn = std::min(mn, x);
      mx = std::max(mx, x);
    }
    float scale = 0;
    int zp = 0;
    if (sym) {  // range2scale: the signed extreme maps to -2^(b-1)
      const float m = std::fabs(mx) > std::fabs(mn) ? mx : mn;
      scale = m / static_cast<float>(-mid);
      zp = mid;
    } else {  // range2scalezp
      mn = std::min(mn, 0.0f);
      mx = std::max(mx, 0.0f);
      scale = (mx - mn) / static_cast<float>(qmax);
      float zp_fp = mn;
      if (scale != 0.0f) zp_fp = 0.f - mn / scale;
      if (zp_fp < 0.0f) {
        zp = 0;
      } else if (zp_fp > static_cast<float>(qmax)) {
        zp = qmax;
      } else {
        zp = static_cast<std::uint8_t>(std::roundf(zp_fp));
      }
      if (fp16_scale && scale != 0.0f) {  // evidence: zp from the stored scale would differ
        const float s16 = round_to_fp16(scale);
        const float alt = std::roundf(clamp_float(0.f - mn / s16, 0, static_cast<float>(qmax)));
        if (static_cast<int>(alt) != zp) ++ev.fp16_zp;
      }
    }
    // Scales are stored in the model's float type; codes use the stored scale read back.
    const float stored = fp16_scale ? round_to_fp16(scale) : scale;
    const float rcp = stored != 0.0f ? 1.0f / stored : 0.0f;
    const float raw_rcp = scale != 0.0f ? 1.0f / scale : 0.0f;
    for (std::size_t i = 0; i < v.size(); ++i) {
      const float t = v[i] * rcp;
      if (!qdq) {
        const float u = t + static_cast<float>(zp);  // separately rounded multiply and add
        if (is_tie(u, 0, static_cast<float>(qmax))) ++ev.ties;
        code[i] = static_cast<int>(clamp_float(std::roundf(u), 0.0f, static_cast<float>(qmax)));
        if (fp16_scale) {
          const float raw_u = v[i] * raw_rcp + static_cast<float>(zp);
          if (static_cast<int>(clamp_float(std::roundf(raw_u), 0.0f, static_cast<float>(qmax))) !=
              code[i])
            ++ev.fp16_codes;
        }
      } else if (sym) {  // signed INT codes, no zero point: clamp(roundf(t), -2^(b-1), 2^(b-1)-1)
        if (is_tie(t, static_cast<float>(-mid), static_cast<float>(mid - 1))) ++ev.ties;
        code[i] = clamp_int(static_cast<int>(std::roundf(t)), -mid, mid - 1) + mid;
      } else {  // unsigned codes: clamp((int)roundf(t) + zp, 0, 2^b - 1)
        if (is_tie(t, static_cast<float>(-zp), static_cast<float>(qmax - zp))) ++ev.ties;
        code[i] = clamp_int(static_cast<int>(std::roundf(t)) + zp, 0, qmax);
      }
    }
    scale_out = stored;
    zp_out = zp;
  };
}

// ---- GPTQ reference (quant.py: Quantizer.find_params + quantize) ----------------------------

group_reference gptq_reference(int bits, bool sym, evidence& ev) {
  return
      [=, &ev](const std::vector<float>& v, float& scale_out, int& zp_out, std::vector<int>& code) {
        const float maxq = static_cast<float>((1 << bits) - 1);
        float mn = FLT_MAX, mx = -FLT_MAX;
        for (float x : v) {
          mn = std::min(mn, x);
          mx = std::max(mx, x);
        }
        float xmin = std::min(mn, 0.0f);  // torch.minimum(x.min(1)[0], zeros)
        float xmax = std::max(mx, 0.0f);
        if (sym) {
          xmax = std::max(std::fabs(xmin), xmax);
          if (xmin < 0) xmin = -xmax;
        }
        if (xmin == 0 && xmax == 0) {
          xmin = -1;
          xmax = +1;
        }
        const float scale = (xmax - xmin) / maxq;
        const float zero = sym ? (maxq + 1) / 2 : std::nearbyint(-xmin / scale);
        for (std::size_t i = 0; i < v.size(); ++i) {
          const float t = v[i] / scale;
          if (is_tie(t, -zero, maxq - zero)) ++ev.ties;
          code[i] = static_cast<int>(clamp_float(std::nearbyint(t) + zero, 0.0f, maxq));
        }
        scale_out = scale;
        zp_out = static_cast<int>(zero);
      };
}

// ---- NVIDIA ModelOpt ONNX int4 (find_scales + rtn) ------------------------------------------

group_reference modelopt_reference(bool use_zero_point, evidence& ev) {
  return
      [=, &ev](const std::vector<float>& v, float& scale_out, int& zp_out, std::vector<int>& code) {
        float mn = FLT_MAX, mx = -FLT_MAX, amax = 0;
        for (float x : v) {
          mn = std::min(mn, x);
          mx = std::max(mx, x);
          amax = std::max(amax, std::fabs(x));
        }
        if (!use_zero_point) {
          const float s = (amax * 1.0f) / 7.0f;  // (w_amax * alpha) / INT4_SCALE
          for (std::size_t i = 0; i < v.size(); ++i) {
            const float t = v[i] / s;
            if (is_tie(t, -8, 7)) ++ev.ties;
            code[i] = static_cast<int>(clamp_float(std::nearbyint(t), -8.0f, 7.0f)) + 8;
          }
          scale_out = s;
          zp_out = 8;
          return;
        }
        const float s = std::max(mx - mn, 1e-5f) / 15.0f;  // (max - min).clip(min=CLIP_MIN) / 15
        const float z = clamp_float(-std::nearbyint(mn / s), 0.0f, 15.0f);
        for (std::size_t i = 0; i < v.size(); ++i) {
          const float t = v[i] / s;
          if (is_tie(t, -z, 15.0f - z)) ++ev.ties;
          code[i] = static_cast<int>(clamp_float(std::nearbyint(t) + z, 0.0f, 15.0f));
        }
        scale_out = s;
        zp_out = static_cast<int>(z);
      };
}

// ---- Intel Neural Compressor torch (qdq_weight_asym / qdq_weight_sym) -----------------------

group_reference inc_reference(int bits, bool sym, bool full_range, evidence& ev) {
  return
      [=, &ev](const std::vector<float>& v, float& scale_out, int& zp_out, std::vector<int>& code) {
        float mn = FLT_MAX, mx = -FLT_MAX;
        for (float x : v) {
          mn = std::min(mn, x);
          mx = std::max(mx, x);
        }
        if (!sym) {
          const float maxq = static_cast<float>((1 << bits) - 1);
          float wmin = std::min(mn, 0.0f) * 1.0f;  // * quantile
          float wmax = std::max(mx, 0.0f) * 1.0f;
          if (wmin == 0 && wmax == 0) {
            wmin = -1;
            wmax = +1;
          }
          const float scale = (wmax - wmin) / maxq;
          const float zp = std::nearbyint(-wmin / scale);
          for (std::size_t i = 0; i < v.size(); ++i) {
            const float t = v[i] / scale;
            if (is_tie(t, -zp, maxq - zp)) ++ev.ties;
            code[i] = static_cast<int>(clamp_float(std::nearbyint(t) + zp, 0.0f, maxq));
          }
          scale_out = scale;
          zp_out = static_cast<int>(zp);
          return;
        }
        const float maxq = static_cast<float>((1 << (bits - 1)) - 1);
        const float minq = static_cast<float>(-(1 << (bits - 1)));
        const bool flip = std::fabs(mx) > std::fabs(mn);
        float wmax = std::max(std::fabs(mx), std::fabs(mn)) * 1.0f;  // * quantile
        if (wmax == 0) wmax = +1;
        float scale = 0;
        if (full_range) {
          scale = wmax / (-minq);
          const float tmp = scale * (flip ? 1.0f : 0.0f);
          scale -= 2 * tmp;  // negative scale when the extreme is positive
        } else {
          scale = wmax / maxq;
        }
        for (std::size_t i = 0; i < v.size(); ++i) {
          const float t = v[i] / scale;
          if (is_tie(t, minq, maxq)) ++ev.ties;
          code[i] =
              static_cast<int>(clamp_float(std::nearbyint(t), minq, maxq)) - static_cast<int>(minq);
        }
        scale_out = scale;
        zp_out = -static_cast<int>(minq);
      };
}

// ---- Data and comparison ---------------------------------------------------------------------

/// Integers in [-16, 16] divided by 16 (scale per column 2^-c): an extreme of +-1 gives
/// power-of-two scales, so w / scale lands exactly on halves.
xt::xtensor<float, 2> sixteenths(std::size_t K, std::size_t N, std::uint32_t seed) {
  std::mt19937 gen(seed);
  auto w = xt::xtensor<float, 2>::from_shape({K, N});
  for (std::size_t k = 0; k < K; ++k) {
    for (std::size_t n = 0; n < N; ++n) {
      const int i = static_cast<int>(gen() % 33u) - 16;
      w(k, n) = std::ldexp(static_cast<float>(i) / 16.0f, -static_cast<int>(n % 3));
    }
  }
  return w;
}

/// Exact halves of a full-range step: every group holds its signed extreme m (an 11-bit value)
/// and values (j + 1/2) * m / 8 for j in [-8, 7], exact in float. Dividing by the scale m / -8
/// lands exactly on ties, while multiplying by the rounded reciprocal 1 / scale may land an ulp
/// off: these data tell `w / scale` from `w * (1 / scale)`.
xt::xtensor<float, 2> halves(std::size_t K, std::size_t N, std::size_t gs, std::uint32_t seed) {
  std::mt19937 gen(seed);
  auto w = xt::xtensor<float, 2>::from_shape({K, N});
  for (std::size_t n = 0; n < N; ++n) {
    float m = 0;
    for (std::size_t k = 0; k < K; ++k) {
      if (gs == 0 ? k == 0 : k % gs == 0) {  // first row of each group: a new extreme
        const float mant = 1.0f + static_cast<float>(gen() % 1024u) / 1024.0f;
        m = std::ldexp(mant, -static_cast<int>(gen() % 6u)) * ((gen() & 1u) ? 1.0f : -1.0f);
        w(k, n) = m;
      } else {
        const int j = static_cast<int>(gen() % 16u) - 8;
        w(k, n) = (static_cast<float>(j) + 0.5f) * (m / 8.0f);
      }
    }
  }
  return w;
}

enum class special_columns { none, zero, zero_and_constants };

/// The weights of a preset test: one of test_util's distributions, or tie-rich sixteenths
/// (d == nullptr), with optional special columns: 0 all zeros, 1 constant negative,
/// 2 constant positive (every group of these columns is a zero-range or constant group).
xt::xtensor<float, 2> preset_weight(std::size_t K, std::size_t N, const dist* d, std::uint32_t seed,
                                    special_columns sc) {
  auto w = d ? int4q_test::random_weight<float>(K, N, *d, seed) : sixteenths(K, N, seed);
  for (std::size_t k = 0; k < K; ++k) {
    if (sc != special_columns::none) w(k, 0) = 0.0f;
    if (sc == special_columns::zero_and_constants) {
      w(k, 1) = -0.375f;
      w(k, 2) = 0.8125f;
    }
  }
  return w;
}

/// Bitwise equality of float tensors (distinguishes -0 from +0 and would see NaN payloads).
::testing::AssertionResult same_bits(const xt::xtensor<float, 2>& expected,
                                     const xt::xtensor<float, 2>& actual,
                                     const std::string& context) {
  if (expected.shape() != actual.shape()) {
    return ::testing::AssertionFailure() << context << ": shapes differ";
  }
  const std::size_t cols = expected.shape()[1];
  std::size_t mismatches = 0, first = 0;
  for (std::size_t i = 0; i < expected.size(); ++i) {
    std::uint32_t e = 0, a = 0;
    std::memcpy(&e, &expected.data()[i], sizeof e);
    std::memcpy(&a, &actual.data()[i], sizeof a);
    if (e != a) {
      if (mismatches == 0) first = i;
      ++mismatches;
    }
  }
  if (mismatches == 0) return ::testing::AssertionSuccess();
  std::ostringstream s;
  s.precision(9);
  s << context << ": " << mismatches << " of " << expected.size() << " differ bitwise; first at ["
    << first / cols << ", " << first % cols << "]: expected " << expected.data()[first]
    << ", actual " << actual.data()[first];
  return ::testing::AssertionFailure() << s.str();
}

std::string context(const std::string& preset, const quant_config& c, const char* data,
                    std::uint32_t seed, std::size_t K, std::size_t N) {
  std::ostringstream s;
  s << preset << " [" << int4q_test::describe(c) << "] data=" << data << " seed=" << seed
    << " K=" << K << " N=" << N;
  return s.str();
}

/// quant_tensor(w, c) must equal the reference exactly.
void expect_reference(const xt::xtensor<float, 2>& w, const quant_config& c,
                      const reference_result& ref, const std::string& ctx) {
  const auto q = int4q::quant_tensor(w, c);
  EXPECT_TRUE(int4q_test::all_equal(ref.codes, q.codes, ctx + ": codes"));
  EXPECT_TRUE(same_bits(ref.scales, q.scales, ctx + ": scales"));
  EXPECT_TRUE(int4q_test::all_equal(ref.zero_points, q.zero_points, ctx + ": zero points"));
}

/// Rows K for group size gs: whole groups plus a ragged tail of `tail` rows.
std::size_t rows_for(std::size_t gs, std::size_t groups, std::size_t tail) {
  return gs * groups + tail;
}

const std::vector<dist>& all_dists() {
  static const std::vector<dist> d = {dist::normal,    dist::uniform,  dist::outliers,
                                      dist::positive,  dist::negative, dist::fp16_grid,
                                      dist::small_ints};
  return d;
}

/// Calls f(w, data_name, seed) for every distribution, sixteenths and halves (groups of gs
/// rows, 0 = all K), and every seed.
template <class F>
void for_each_weight(std::size_t K, std::size_t N, std::size_t gs, special_columns sc, F&& f) {
  for (std::uint32_t seed : int4q_test::seeds()) {
    for (const dist& d : all_dists()) {
      f(preset_weight(K, N, &d, seed, sc), int4q_test::to_string(d), seed);
    }
    f(preset_weight(K, N, nullptr, seed, sc), "sixteenths", seed);
    f(halves(K, N, gs, seed), "halves", seed);
  }
}

constexpr std::size_t kCols = 19;  // odd, and more than one SIMD width plus a scalar tail

// ---- ONNX Runtime -----------------------------------------------------------------------------

struct ort_shape {
  std::size_t gs, K;
};
// MatMulNBits block sizes are powers of two >= 16; K ragged by 1, 7, 45 rows or whole.
const std::vector<ort_shape>& ort_shapes() {
  static const std::vector<ort_shape> s = {{16, rows_for(16, 2, 1)},
                                           {32, rows_for(32, 3, 7)},
                                           {64, rows_for(64, 2, 0)},
                                           {128, rows_for(128, 1, 45)}};
  return s;
}

TEST(PresetOrtMatMulNBits, MatchesMlasQuantizeAndTransposeBitExact) {
  evidence ev;
  for (int bits : {2, 4, 8}) {
    for (bool sym : {false, true}) {
      for (const ort_shape& sh : ort_shapes()) {
        const quant_config c = int4q::presets::ort_matmulnbits(bits, sh.gs, sym);
        for_each_weight(
            sh.K, kCols, sh.gs, special_columns::zero_and_constants,
            [&](const xt::xtensor<float, 2>& w, const char* data, std::uint32_t seed) {
              const auto ref = run_reference(w, sh.gs, ort_reference(bits, sym, false, false, ev));
              expect_reference(w, c, ref, context("ort_matmulnbits", c, data, seed, sh.K, kCols));
            });
      }
    }
  }
  EXPECT_GT(ev.ties, 0) << "no exact ties in the data: the roundf(w * rcp + zp) rule went untested";
}

TEST(PresetOrtMatMulNBits, Fp16ScalesMatchMlasReferenceBitExact) {
  // ORT with an fp16 model: scale computed in float, zero point from that float scale, the scale
  // stored as fp16, and codes computed against the stored fp16 scale read back as float.
  evidence ev;
  for (int bits : {2, 4, 8}) {
    for (bool sym : {false, true}) {
      for (const ort_shape& sh : ort_shapes()) {
        quant_config c = int4q::presets::ort_matmulnbits(bits, sh.gs, sym);
        c.scale_type = int4q::scale_type::float16;
        for_each_weight(
            sh.K, kCols, sh.gs, special_columns::zero_and_constants,
            [&](const xt::xtensor<float, 2>& w, const char* data, std::uint32_t seed) {
              const auto ref = run_reference(w, sh.gs, ort_reference(bits, sym, false, true, ev));
              expect_reference(w, c, ref,
                               context("ort_matmulnbits fp16 scales", c, data, seed, sh.K, kCols));
            });
      }
    }
  }
  EXPECT_GT(ev.fp16_codes, 0) << "no code depended on the fp16 rounding of the scale";
  EXPECT_GT(ev.fp16_zp, 0) << "no zero point depended on using the float (not fp16) scale";
}

TEST(PresetOrtQdq, MatchesMlasQuantizeColumnWiseBitExact) {
  evidence ev;
  for (bool sym : {false, true}) {
    for (const ort_shape& sh : ort_shapes()) {
      const quant_config c = int4q::presets::ort_qdq(4, sh.gs, sym);  // MLAS QDQ: 4 bits
      for_each_weight(sh.K, kCols, sh.gs, special_columns::zero_and_constants,
                      [&](const xt::xtensor<float, 2>& w, const char* data, std::uint32_t seed) {
                        const auto ref =
                            run_reference(w, sh.gs, ort_reference(4, sym, true, false, ev));
                        expect_reference(w, c, ref, context("ort_qdq", c, data, seed, sh.K, kCols));
                      });
    }
  }
  EXPECT_GT(ev.ties, 0) << "no exact ties in the data: the roundf(w * rcp) + zp rule went untested";
}

/// quant_tensor of a single column.
int4q::quantized<float> quantize_column(const std::vector<float>& v, const quant_config& c) {
  auto w = xt::xtensor<float, 2>::from_shape({v.size(), 1});
  for (std::size_t i = 0; i < v.size(); ++i) w(i, 0) = v[i];
  return int4q::quant_tensor(w, c);
}

TEST(PresetOrt, SymmetricTiesByHand) {
  // One group of 16, 4 bits, symmetric. The extreme is +8.0, so range2scale gives
  // scale = 8 / -8 = -1, rcp = 1 / -1 = -1 and zero point 8.
  //   MatMulNBits: code = roundf(v * -1 + 8)      QDQ: code = roundf(v * -1) + 8
  //   v =  8.0 : roundf(0)     = 0                roundf(-8)   + 8 = 0
  //   v = -4.5 : roundf(12.5)  = 13               roundf(4.5)  + 8 = 5 + 8 = 13
  //   v =  0.5 : roundf(7.5)   = 8                roundf(-0.5) + 8 = -1 + 8 = 7
  //   v = -0.5 : roundf(8.5)   = 9                roundf(0.5)  + 8 = 9
  //   v =  4.5 : roundf(3.5)   = 4                roundf(-4.5) + 8 = -5 + 8 = 3
  //   v =  2.5 : roundf(5.5)   = 6                roundf(-2.5) + 8 = -3 + 8 = 5
  //   v = -2.5 : roundf(10.5)  = 11               roundf(2.5)  + 8 = 11
  //   v =  1.5 : roundf(6.5)   = 7                roundf(-1.5) + 8 = -2 + 8 = 6
  //   v = -7.5 : roundf(15.5)  = 16 -> 15         roundf(7.5) = 8 -> clamp(16) = 15
  //   v =  0.0 : 8                                8
  // (Half to even would give 12, 8, 8, 4, 6, 10, 6 for -4.5 .. 1.5: every tie is decisive.)
  const std::vector<float> v = {8.0f,  -4.5f, 0.5f, -0.5f, 4.5f, 2.5f,  -2.5f, 1.5f,
                                -7.5f, 0.0f,  1.0f, -1.0f, 3.0f, -3.0f, 6.0f,  -6.0f};
  const std::vector<int> nbits = {0, 13, 8, 9, 4, 6, 11, 7, 15, 8, 7, 9, 5, 11, 2, 14};
  const std::vector<int> qdq = {0, 13, 7, 9, 3, 5, 11, 6, 15, 8, 7, 9, 5, 11, 2, 14};
  const auto a = quantize_column(v, int4q::presets::ort_matmulnbits(4, 16, true));
  const auto b = quantize_column(v, int4q::presets::ort_qdq(4, 16, true));
  ASSERT_EQ(a.scales(0, 0), -1.0f);
  ASSERT_EQ(b.scales(0, 0), -1.0f);
  EXPECT_EQ(a.zero_points(0, 0), 8);
  EXPECT_EQ(b.zero_points(0, 0), 8);
  for (std::size_t i = 0; i < v.size(); ++i) {
    EXPECT_EQ(a.codes(i, 0), nbits[i]) << "MatMulNBits, v = " << v[i];
    EXPECT_EQ(b.codes(i, 0), qdq[i]) << "QDQ, v = " << v[i];
  }
}

TEST(PresetOrt, AsymmetricTiesByHand) {
  // 4 bits, asymmetric. Group values span [-2.5, 12.5]: range2scalezp gives
  // scale = (12.5 - -2.5) / 15 = 1 exactly, zp_fp = 0 - (-2.5 / 1) = 2.5, zp = roundf(2.5) = 3
  // (half to even would give 2). rcp = 1.
  //   MatMulNBits: code = roundf(v + 3)           QDQ: code = roundf(v) + 3
  //   v = -2.5 : roundf(0.5)  = 1                 roundf(-2.5) + 3 = -3 + 3 = 0
  //   v = 12.5 : roundf(15.5) = 16 -> 15          roundf(12.5) + 3 = 16 -> 15
  //   v = -0.5 : roundf(2.5)  = 3                 roundf(-0.5) + 3 = -1 + 3 = 2
  //   v =  0.5 : roundf(3.5)  = 4                 roundf(0.5)  + 3 = 4
  //   v = -1.5 : roundf(1.5)  = 2                 roundf(-1.5) + 3 = -2 + 3 = 1
  //   v =  4.5 : roundf(7.5)  = 8                 roundf(4.5)  + 3 = 8
  //   v =  7.0 : 10                               10
  //   v =  0.0 : 3                                3
  const std::vector<float> v = {-2.5f, 12.5f, -0.5f, 0.5f, -1.5f, 4.5f, 7.0f, 0.0f,
                                1.0f,  2.0f,  3.0f,  5.0f, 6.0f,  8.0f, 9.0f, 10.0f};
  const std::vector<int> nbits = {1, 15, 3, 4, 2, 8, 10, 3, 4, 5, 6, 8, 9, 11, 12, 13};
  const std::vector<int> qdq = {0, 15, 2, 4, 1, 8, 10, 3, 4, 5, 6, 8, 9, 11, 12, 13};
  const auto a = quantize_column(v, int4q::presets::ort_matmulnbits(4, 16, false));
  const auto b = quantize_column(v, int4q::presets::ort_qdq(4, 16, false));
  ASSERT_EQ(a.scales(0, 0), 1.0f);
  ASSERT_EQ(b.scales(0, 0), 1.0f);
  EXPECT_EQ(a.zero_points(0, 0), 3);
  EXPECT_EQ(b.zero_points(0, 0), 3);
  for (std::size_t i = 0; i < v.size(); ++i) {
    EXPECT_EQ(a.codes(i, 0), nbits[i]) << "MatMulNBits, v = " << v[i];
    EXPECT_EQ(b.codes(i, 0), qdq[i]) << "QDQ, v = " << v[i];
  }
}

TEST(PresetOrt, AllZeroGroupKeepsZeroScale) {
  // MLAS: asym scale = (0 - 0) / 15 = +0, zp_fp = min = 0 -> zp 0, rcp = 0 -> codes roundf(0 + 0);
  // sym scale = 0 / -8 = -0 (negative zero), rcp = 0 -> codes roundf(0 + 8) = 8.
  const std::vector<float> v(16, 0.0f);
  for (int bits : {2, 4, 8}) {
    for (bool qdq : {false, true}) {
      const auto asym = quantize_column(v, qdq ? int4q::presets::ort_qdq(bits, 16, false)
                                               : int4q::presets::ort_matmulnbits(bits, 16, false));
      const auto sym = quantize_column(v, qdq ? int4q::presets::ort_qdq(bits, 16, true)
                                              : int4q::presets::ort_matmulnbits(bits, 16, true));
      const std::string ctx = "bits=" + std::to_string(bits) + (qdq ? " qdq" : " matmulnbits");
      EXPECT_EQ(asym.scales(0, 0), 0.0f) << ctx;
      EXPECT_FALSE(std::signbit(asym.scales(0, 0))) << ctx << ": asymmetric scale is +0";
      EXPECT_EQ(asym.zero_points(0, 0), 0) << ctx;
      EXPECT_EQ(sym.scales(0, 0), 0.0f) << ctx;
      EXPECT_TRUE(std::signbit(sym.scales(0, 0)))
          << ctx << ": symmetric scale is 0 / -2^(b-1) = -0";
      EXPECT_EQ(sym.zero_points(0, 0), 1 << (bits - 1)) << ctx;
      for (std::size_t i = 0; i < v.size(); ++i) {
        EXPECT_EQ(asym.codes(i, 0), 0) << ctx;
        EXPECT_EQ(sym.codes(i, 0), 1 << (bits - 1)) << ctx;
      }
    }
  }
}

// ---- GPTQ -------------------------------------------------------------------------------------

struct grouped_shape {
  std::size_t gs, K;  // gs = 0: per-channel (GPTQ groupsize -1)
};
const std::vector<grouped_shape>& generic_shapes() {
  static const std::vector<grouped_shape> s = {
      {8, rows_for(8, 3, 1)}, {32, rows_for(32, 2, 9)}, {128, rows_for(128, 1, 0)}, {0, 37}};
  return s;
}

quant_config with_grouping(quant_config c, std::size_t gs) {
  if (gs == 0) c.granularity = int4q::grouping::per_channel;
  return c;
}

TEST(PresetGptq, MatchesReferenceFindParamsBitExact) {
  evidence ev;
  for (int bits : {2, 3, 4, 8}) {
    for (bool sym : {false, true}) {
      for (const grouped_shape& sh : generic_shapes()) {
        const quant_config c =
            with_grouping(int4q::presets::gptq(bits, sh.gs == 0 ? 128 : sh.gs, sym), sh.gs);
        for_each_weight(sh.K, kCols, sh.gs, special_columns::zero_and_constants,
                        [&](const xt::xtensor<float, 2>& w, const char* data, std::uint32_t seed) {
                          const auto ref = run_reference(w, sh.gs, gptq_reference(bits, sym, ev));
                          expect_reference(w, c, ref, context("gptq", c, data, seed, sh.K, kCols));
                        });
      }
    }
  }
  EXPECT_GT(ev.ties, 0) << "no exact ties in the data: half-to-even rounding went untested";
}

// ---- ModelOpt ---------------------------------------------------------------------------------

TEST(PresetModelOpt, MatchesFindScalesAndRtnBitExact) {
  // ModelOpt pads K with zero rows to a whole number of blocks before find_scales. For the
  // symmetric grid that cannot change amax, so ragged K is compared; for the zero-point grid
  // the padding enters min/max (see ZeroPointRaggedGroupSeesZeroPadding), so only
  // whole blocks are compared here. ModelOpt divides by zero on an all-zero symmetric group
  // (see AllZeroSymmetricGroupGetsUnitScale), so the symmetric data have no zero column and
  // ragged tails of >= 7 rows (a short tail of small integers could be all zeros).
  evidence ev;
  for (bool zp : {false, true}) {
    for (std::size_t gs : {16, 32, 128}) {
      const std::size_t K = zp ? gs * 2 : rows_for(gs, 2, gs == 16 ? 7 : 11);
      const quant_config c = int4q::presets::modelopt_int4(gs, zp);
      for_each_weight(
          K, kCols, gs, zp ? special_columns::zero_and_constants : special_columns::none,
          [&](const xt::xtensor<float, 2>& w, const char* data, std::uint32_t seed) {
            const auto ref = run_reference(w, gs, modelopt_reference(zp, ev));
            expect_reference(w, c, ref, context("modelopt_int4", c, data, seed, K, kCols));
          });
    }
  }
  EXPECT_GT(ev.ties, 0) << "no exact ties in the data: np.rint's half-to-even went untested";
}

TEST(PresetModelOpt, AllZeroSymmetricGroupGetsUnitScale) {
  // ModelOpt computes 0 / 7 = 0 and then divides by it; int4q gives such a group scale 1, codes
  // at the zero point 8, and so exact zeros on dequantization. Other groups are unaffected.
  auto w = int4q_test::random_weight<float>(48, 5, dist::normal, 3);
  for (std::size_t k = 16; k < 32; ++k) w(k, 2) = 0.0f;  // group 1 of column 2
  const auto q = int4q::quant_tensor(w, int4q::presets::modelopt_int4(16, false));
  EXPECT_EQ(q.scales(1, 2), 1.0f);
  EXPECT_EQ(q.zero_points(1, 2), 8);
  const auto d = int4q::dequant(q);
  for (std::size_t k = 16; k < 32; ++k) {
    EXPECT_EQ(q.codes(k, 2), 8) << "k=" << k;
    EXPECT_EQ(d(k, 2), 0.0f) << "k=" << k;
  }
  // The rest still follows ModelOpt's formula (the zero group is left out of the reference).
  auto w_ref = w;
  for (std::size_t k = 16; k < 32; ++k) w_ref(k, 2) = 1.0f;
  evidence ev;
  const auto ref = run_reference(w_ref, 16, modelopt_reference(false, ev));
  for (std::size_t g = 0; g < 3; ++g) {
    for (std::size_t n = 0; n < 5; ++n) {
      if (g == 1 && n == 2) continue;
      EXPECT_EQ(q.scales(g, n), ref.scales(g, n)) << "g=" << g << " n=" << n;
    }
  }
}

TEST(PresetModelOpt, ZeroPointRaggedGroupSeesZeroPadding) {
  // ModelOpt's find_scales runs `_pad(w, block)`
  // (zero rows) before taking min/max, so a ragged last block's raw range includes 0. int4q's
  // modelopt_int4(use_zero_point = true) sets ragged_range_includes_zero for the same range.
  // Reference: pad the weight with zeros, run the zero-point formula, keep the real rows.
  evidence ev;
  const std::size_t gs = 16, K = 16 * 2 + 5;
  const quant_config c = int4q::presets::modelopt_int4(gs, true);
  for (std::uint32_t seed : int4q_test::seeds()) {
    const auto w = int4q_test::random_weight<float>(K, kCols, dist::positive, seed);
    auto padded = xt::xtensor<float, 2>::from_shape({gs * 3, kCols});
    std::fill(padded.begin(), padded.end(), 0.0f);
    for (std::size_t k = 0; k < K; ++k)
      for (std::size_t n = 0; n < kCols; ++n) padded(k, n) = w(k, n);
    const auto full = run_reference(padded, gs, modelopt_reference(true, ev));
    reference_result ref;
    ref.scales = full.scales;
    ref.zero_points = full.zero_points;
    ref.codes = xt::xtensor<std::uint8_t, 2>::from_shape({K, kCols});
    for (std::size_t k = 0; k < K; ++k)
      for (std::size_t n = 0; n < kCols; ++n) ref.codes(k, n) = full.codes(k, n);
    expect_reference(w, c, ref, context("modelopt_int4 ragged", c, "positive", seed, K, kCols));
  }
}

// ---- Intel Neural Compressor ------------------------------------------------------------------

TEST(PresetInc, MatchesQdqWeightSymAsymBitExact) {
  // Constant columns and a one-row ragged tail (a constant group) included: for full_range a
  // constant positive group is INC's tie case (see FullRangeConstantPositiveGroup).
  const std::vector<grouped_shape> shapes = {{8, rows_for(8, 3, 0)},
                                             {16, rows_for(16, 2, 9)},
                                             {32, rows_for(32, 2, 8)},
                                             {32, rows_for(32, 2, 1)},
                                             {128, 137}};
  evidence ev;
  for (int bits : {2, 3, 4, 8}) {
    for (int mode = 0; mode < 3; ++mode) {  // asym, sym, sym full_range
      const bool sym = mode > 0, full = mode == 2;
      for (const grouped_shape& sh : shapes) {
        const quant_config c = int4q::presets::inc(bits, sh.gs, sym, full);
        for_each_weight(sh.K, kCols, sh.gs, special_columns::zero_and_constants,
                        [&](const xt::xtensor<float, 2>& w, const char* data, std::uint32_t seed) {
                          const auto ref =
                              run_reference(w, sh.gs, inc_reference(bits, sym, full, ev));
                          expect_reference(w, c, ref, context("inc", c, data, seed, sh.K, kCols));
                        });
      }
    }
  }
  EXPECT_GT(ev.ties, 0) << "no exact ties in the data: torch.round's half-to-even went untested";
}

TEST(PresetInc, FullRangeConstantNegativeAndZeroGroups) {
  // qdq_weight_sym(full_range): a constant negative group c < 0 has flip = |c| > |c| = false,
  // wmax = |c|, scale = |c| / 8 > 0, so c / scale = -8: code 0. An all-zero group: wmax = 1,
  // scale = 1/8, codes 8.
  const std::vector<float> neg(16, -0.375f), zero(16, 0.0f);
  const auto a = quantize_column(neg, int4q::presets::inc(4, 16, true, true));
  const auto b = quantize_column(zero, int4q::presets::inc(4, 16, true, true));
  EXPECT_EQ(a.scales(0, 0), 0.375f / 8);
  EXPECT_EQ(b.scales(0, 0), 0.125f);
  for (std::size_t i = 0; i < 16; ++i) {
    EXPECT_EQ(a.codes(i, 0), 0);
    EXPECT_EQ(b.codes(i, 0), 8);
  }
}

TEST(PresetInc, FullRangeConstantPositiveGroup) {
  // For a constant group c > 0 INC has
  // flip = |c| > |c| = false, so scale = +c / 8 and c / scale = 8 clamps to code 7 (+8 = 15
  // unsigned). int4q's inc preset sets full_range_inc_sign for this; plain symmetric_full_range
  // picks the extreme as `lo` on a magnitude tie (ONNX Runtime's rule): scale -c / 8, code 0.
  const std::vector<float> pos(16, 0.8125f);
  const auto q = quantize_column(pos, int4q::presets::inc(4, 16, true, true));
  EXPECT_EQ(q.scales(0, 0), 0.8125f / 8);
  for (std::size_t i = 0; i < 16; ++i) EXPECT_EQ(q.codes(i, 0), 15);
}

}  // namespace
