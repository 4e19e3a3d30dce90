// One of two translation units that both include the whole library and instantiate the same
// float functions; see odr_main.cpp. This one also has the double paths.
#include <int4q/quant.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include <xtensor/xtensor.hpp>

namespace {

template <class T>
void append_bytes(std::vector<std::uint8_t>& out, const T* data, std::size_t count) {
  const std::size_t at = out.size();
  out.resize(at + count * sizeof(T));
  if (count > 0) std::memcpy(out.data() + at, data, count * sizeof(T));
}

}  // namespace

// The same computation as odr_a_float (odr_a.cpp), written out again in this translation unit.
std::vector<std::uint8_t> odr_b_float(const std::vector<float>& w, std::size_t K, std::size_t N) {
  auto m = xt::xtensor<float, 2>::from_shape({K, N});
  std::copy(w.begin(), w.end(), m.begin());
  const int4q::quant_config config = int4q::presets::int4q(4, 32);

  const int4q::quantized<float> q = int4q::quant_tensor(m, config);
  const int4q::matmulnbits_tensors<float> packed = int4q::pack_matmulnbits(q);
  const xt::xtensor<float, 2> fake = int4q::qdq(m, config);
  const auto clip = int4q::search_clip(m, config);
  const int4q::quantized<float> clipped = int4q::quant_tensor(m, config, clip.ratios);

  std::vector<std::uint8_t> out;
  append_bytes(out, packed.b.data(), packed.b.size());
  append_bytes(out, packed.scales.data(), packed.scales.size());
  append_bytes(out, packed.zero_points.data(), packed.zero_points.size());
  append_bytes(out, fake.data(), fake.size());
  append_bytes(out, clip.ratios.data(), clip.ratios.size());
  append_bytes(out, clipped.codes.data(), clipped.codes.size());
  const std::string version = int4q::version_string();
  append_bytes(out, version.data(), version.size());
  return out;
}

// The double instantiations: quantizes w as double, packs it, and returns the relative L2 error
// of qdq, or -1 when qdq differs from dequant(quant_tensor), the packed size is wrong or the
// clip search made its own objective worse.
double odr_b_double(const std::vector<float>& w, std::size_t K, std::size_t N) {
  auto m = xt::xtensor<double, 2>::from_shape({K, N});
  std::copy(w.begin(), w.end(), m.begin());
  const int4q::quant_config config = int4q::presets::int4q(4, 32);

  const int4q::quantized<double> q = int4q::quant_tensor(m, config);
  const int4q::matmulnbits_tensors<double> packed = int4q::pack_matmulnbits(q);
  const xt::xtensor<double, 2> fake = int4q::qdq(m, config);
  const xt::xtensor<double, 2> restored = int4q::dequant(q);
  const auto clip = int4q::search_clip(m, config);
  const int4q::quantized<double> clipped = int4q::quant_tensor(m, config, clip.ratios);
  if (fake != restored || packed.b.size() != K * N / 2 || clip.loss > clip.loss_at_max ||
      clipped.codes.size() != K * N)
    return -1;
  return int4q::measure_error(m, fake).relative_l2;
}
