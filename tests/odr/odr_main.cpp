// ODR test: odr_a.cpp and odr_b.cpp both include <int4q/quant.hpp> and call the library
// (quant_tensor, qdq, dequant, pack_matmulnbits, search_clip) with the same float types, and
// odr_b.cpp also with double. If a header defines something that is not inline, constexpr or a
// template, linking them fails with a multiple-definition error; running the program checks
// that both translation units compute the same bytes.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <vector>

std::vector<std::uint8_t> odr_a_float(const std::vector<float>& w, std::size_t K, std::size_t N);
std::vector<std::uint8_t> odr_b_float(const std::vector<float>& w, std::size_t K, std::size_t N);
double odr_b_double(const std::vector<float>& w, std::size_t K, std::size_t N);

int main() {
  // A deterministic weight [96, 40]: three groups of 32 rows, no random generator needed.
  const std::size_t K = 96, N = 40;
  std::vector<float> w(K * N);
  for (std::size_t i = 0; i < w.size(); ++i) {
    w[i] = 0.02f * static_cast<float>(std::sin(0.37 * static_cast<double>(i) + 0.1));
  }

  const std::vector<std::uint8_t> a = odr_a_float(w, K, N);
  const std::vector<std::uint8_t> b = odr_b_float(w, K, N);
  if (a.empty() || a != b) {
    std::fprintf(stderr,
                 "odr: translation units disagree on the float results (%zu vs %zu bytes)\n",
                 a.size(), b.size());
    return 1;
  }
  const double rel = odr_b_double(w, K, N);
  // 4-bit groups of 32 on a smooth signal: the error is a few percent, never 0 or above 20 %.
  if (!(rel > 0.0 && rel < 0.2)) {
    std::fprintf(stderr, "odr: double path gave relative error %g (expected in (0, 0.2))\n", rel);
    return 1;
  }
  std::printf("odr: ok (%zu identical bytes from both units; double qdq relative error %.4f)\n",
              a.size(), rel);
  return 0;
}
