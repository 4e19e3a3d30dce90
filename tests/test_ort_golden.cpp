// int4q's `ort_matmulnbits` / `ort_qdq` presets against the bytes that ONNX Runtime 1.30's own
// quantizer (matmul_nbits_quantizer, DEFAULT/MLAS) wrote for the real devgpt model
// (../shared/models/devgpt/ort/, see its README): every B / scales / zero_points initializer
// must be byte-identical. These files are produced by ONNX Runtime, not by int4q.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <int4q/quant.hpp>

#ifdef INT4Q_TEST_HAVE_ONNX
#include <onnx/onnx_pb.h>

namespace {

std::string models_dir() { return std::string(INT4Q_SOURCE_DIR) + "/../shared/models/devgpt"; }

onnx::ModelProto load_model(const std::string& path) {
  onnx::ModelProto m;
  std::ifstream f(path, std::ios::binary);
  if (!f || !m.ParseFromIstream(&f)) {
    ADD_FAILURE() << "cannot read ONNX model " << path
                  << " (the shared models folder must sit beside the repository)";
  }
  return m;
}

std::map<std::string, const onnx::TensorProto*> initializers(const onnx::ModelProto& m) {
  std::map<std::string, const onnx::TensorProto*> out;
  for (const auto& t : m.graph().initializer()) out[t.name()] = &t;
  return out;
}

xt::xtensor<float, 2> float_matrix(const onnx::TensorProto& t) {
  EXPECT_EQ(t.data_type(), onnx::TensorProto::FLOAT);
  EXPECT_EQ(t.dims_size(), 2);
  auto w = xt::xtensor<float, 2>::from_shape(
      {static_cast<std::size_t>(t.dims(0)), static_cast<std::size_t>(t.dims(1))});
  EXPECT_EQ(t.raw_data().size(), w.size() * sizeof(float));
  std::memcpy(w.data(), t.raw_data().data(), w.size() * sizeof(float));
  return w;
}

// Byte comparison that reports the first differing byte.
::testing::AssertionResult same_bytes(const void* expected, std::size_t expected_size,
                                      const void* actual, std::size_t actual_size,
                                      const std::string& what) {
  if (expected_size != actual_size) {
    return ::testing::AssertionFailure()
           << what << ": ORT wrote " << expected_size << " bytes, int4q " << actual_size;
  }
  const auto* e = static_cast<const unsigned char*>(expected);
  const auto* a = static_cast<const unsigned char*>(actual);
  std::size_t diff = 0, first = 0;
  for (std::size_t i = 0; i < expected_size; ++i) {
    if (e[i] != a[i]) {
      if (diff++ == 0) first = i;
    }
  }
  if (diff == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << what << ": " << diff << " of " << expected_size << " bytes differ, first at byte "
         << first << " (ORT " << +e[first] << ", int4q " << +a[first] << ")";
}

struct golden_case {
  const char* file;
  bool matmulnbits;  // else QDQ
  std::size_t block;
  bool symmetric;
};

void PrintTo(const golden_case& c, std::ostream* os) { *os << c.file; }

class OrtGolden : public ::testing::TestWithParam<golden_case> {};

TEST_P(OrtGolden, EveryInitializerIsByteIdentical) {
  const golden_case gc = GetParam();
  const onnx::ModelProto fp32 = load_model(models_dir() + "/devgpt_fp32.onnx");
  const onnx::ModelProto ort = load_model(models_dir() + "/ort/" + gc.file);
  const auto weights = initializers(fp32);
  const auto golden = initializers(ort);
  const std::string suffix = gc.matmulnbits ? "_Q4" : "_DQ_Q4";
  int checked = 0;
  for (const auto& [name, tensor] : golden) {
    if (name.size() <= suffix.size() ||
        name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0) {
      continue;
    }
    const std::string base = name.substr(0, name.size() - suffix.size());
    const std::string stem = gc.matmulnbits ? base : base + "_DQ";
    SCOPED_TRACE(std::string(gc.file) + " weight " + base);
    ASSERT_TRUE(weights.count(base)) << "no fp32 weight " << base;
    const xt::xtensor<float, 2> w = float_matrix(*weights.at(base));
    const auto* scales = golden.count(stem + "_scales") ? golden.at(stem + "_scales") : nullptr;
    const auto* zps =
        golden.count(stem + "_zero_points") ? golden.at(stem + "_zero_points") : nullptr;
    ASSERT_NE(scales, nullptr);
    EXPECT_EQ(zps != nullptr, !gc.symmetric);

    if (gc.matmulnbits) {
      const auto q =
          int4q::quant_tensor(w, int4q::presets::ort_matmulnbits(4, gc.block, gc.symmetric));
      const auto t = int4q::pack_matmulnbits(q);
      EXPECT_TRUE(same_bytes(tensor->raw_data().data(), tensor->raw_data().size(), t.b.data(),
                             t.b.size(), "B"));
      EXPECT_TRUE(same_bytes(scales->raw_data().data(), scales->raw_data().size(), t.scales.data(),
                             t.scales.size() * sizeof(float), "scales"));
      if (zps) {
        EXPECT_TRUE(same_bytes(zps->raw_data().data(), zps->raw_data().size(), t.zero_points.data(),
                               t.zero_points.size(), "zero_points"));
      }
    } else {
      const auto q = int4q::quant_tensor(w, int4q::presets::ort_qdq(4, gc.block, gc.symmetric));
      const auto sign =
          gc.symmetric ? int4q::code_sign::signed_codes : int4q::code_sign::unsigned_codes;
      EXPECT_EQ(tensor->data_type(), gc.symmetric ? 22 : 21);  // INT4 : UINT4
      const auto data = int4q::pack_flat(q.codes, 4, sign);
      EXPECT_TRUE(same_bytes(tensor->raw_data().data(), tensor->raw_data().size(), data.data(),
                             data.size(), "data"));
      EXPECT_TRUE(same_bytes(scales->raw_data().data(), scales->raw_data().size(), q.scales.data(),
                             q.scales.size() * sizeof(float), "scales"));
      if (zps) {
        const auto z = int4q::pack_flat(q.zero_points, 4, int4q::code_sign::unsigned_codes);
        EXPECT_TRUE(same_bytes(zps->raw_data().data(), zps->raw_data().size(), z.data(), z.size(),
                               "zero_points"));
      }
    }
    ++checked;
  }
  EXPECT_EQ(checked, 17) << "devgpt has 17 quantized MatMul weights";
}

INSTANTIATE_TEST_SUITE_P(
    Devgpt, OrtGolden,
    ::testing::Values(golden_case{"devgpt_ort_mnb_b32_sym.onnx", true, 32, true},
                      golden_case{"devgpt_ort_mnb_b32_asym.onnx", true, 32, false},
                      golden_case{"devgpt_ort_mnb_b128_sym.onnx", true, 128, true},
                      golden_case{"devgpt_ort_mnb_b128_asym.onnx", true, 128, false},
                      golden_case{"devgpt_ort_qdq_b128_sym.onnx", false, 128, true},
                      golden_case{"devgpt_ort_qdq_b128_asym.onnx", false, 128, false}),
    [](const ::testing::TestParamInfo<golden_case>& i) {
      std::string n = i.param.file;
      n = n.substr(11, n.size() - 16);  // strip "devgpt_ort_" and ".onnx"
      return n;
    });

}  // namespace
#endif  // INT4Q_TEST_HAVE_ONNX
