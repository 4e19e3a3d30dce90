// quantize_matrix: the int4q core in one page, no ONNX. Quantize a random weight to 4 bits,
// measure the error, and pack it the way ONNX Runtime's MatMulNBits stores it.
#include <cstdio>
#include <random>

#include <xtensor/xtensor.hpp>

#include <int4q/quant.hpp>

int main() {
  // A weight W[K, N] in the ONNX MatMul layout: K = 512 input features (rows), N = 256 outputs.
  std::mt19937 rng(42);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  xt::xtensor<float, 2> w = xt::xtensor<float, 2>::from_shape({512, 256});
  for (float& v : w) v = normal(rng);

  // The grid: 4-bit codes, one scale and zero point per group of 128 rows of a column.
  int4q::quant_config config;  // defaults: bits 4, group_size 128, asymmetric
  config.bits = 4;
  config.group_size = 128;

  // Round to nearest: codes [K, N], scales and zero points [K / 128, N].
  const int4q::quantized<float> q = int4q::quant_tensor(w, config);

  // Back to floats, and how far they are from the original.
  const xt::xtensor<float, 2> restored = int4q::dequant(q);
  const int4q::error_stats e = int4q::measure_error(w, restored);
  std::printf("W [%zu, %zu], %zu groups per column\n", q.rows(), q.cols(), q.num_groups());
  std::printf("relative L2 error %.4f, SQNR %.2f dB, max |error| %.5f\n", e.relative_l2, e.sqnr_db,
              e.max_abs);

  // Pack for com.microsoft MatMulNBits: B [N, groups, 64 bytes], scales [N, groups], and the
  // zero points two per byte.
  const int4q::matmulnbits_tensors<float> packed = int4q::pack_matmulnbits(q);
  const std::size_t bytes =
      packed.b.size() + packed.scales.size() * sizeof(float) + packed.zero_points.size();
  std::printf(
      "fp32: %zu bytes; MatMulNBits: B %zu + scales %zu + zero points %zu = %zu bytes "
      "(%.2f bits per weight)\n",
      w.size() * sizeof(float), packed.b.size(), packed.scales.size() * sizeof(float),
      packed.zero_points.size(), bytes, 8.0 * bytes / static_cast<double>(w.size()));
  return 0;
}
