// The CPU executor: the ONNX backend node tests (Debian's libonnx-testdata: model.onnx with
// input_*.pb and the expected output_*.pb, computed by ONNX's reference implementation) for
// every operator it implements, and the real devgpt model against ONNX Runtime's score.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <int4q/onnx/executor.hpp>
#include <int4q/onnx/model.hpp>
#include <int4q/onnx/quantize_model.hpp>

#include "onnx/devgpt_eval.hpp"
#include "onnx/graph_builder.hpp"

namespace {

namespace fs = std::filesystem;
using int4q::onnx::executor;
using int4q::onnx::model;
using int4q::onnx::model_error;
using int4q::onnx::value;
using int4q::onnx::value_type;

const fs::path node_tests = "/usr/share/libonnx-testdata/data/node";

::onnx::TensorProto read_tensor(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  ::onnx::TensorProto t;
  if (!t.ParseFromIstream(&in)) throw std::runtime_error("cannot parse " + p.string());
  return t;
}

/// ONNX's test data store bfloat16 values as UINT16 bit patterns (numpy has no bfloat16): read
/// them as the declared type.
::onnx::TensorProto as_declared(::onnx::TensorProto t, const ::onnx::ValueInfoProto& v) {
  if (v.type().tensor_type().elem_type() == ::onnx::TensorProto::BFLOAT16 &&
      t.data_type() == ::onnx::TensorProto::UINT16) {
    t.set_data_type(::onnx::TensorProto::BFLOAT16);
  }
  return t;
}

// ONNX's backend test tolerances (onnx/backend/test/runner: rtol 1e-3, atol 1e-7).
constexpr double kRtol = 1e-3, kAtol = 1e-7;

/// Data sets whose expected values come from a rule the executor does not follow, with the
/// tolerance that covers the difference. ONNX 1.12's reference Cast to bfloat16 truncates the
/// mantissa; the executor rounds to nearest even, like ONNX Runtime and the current ONNX spec:
/// at most one bfloat16 step apart (relative 2^-7).
double relative_tolerance(const std::string& test) {
  if (test == "test_cast_FLOAT_to_BFLOAT16" || test == "test_castlike_FLOAT_to_BFLOAT16" ||
      test == "test_castlike_FLOAT_to_BFLOAT16_expanded")
    return 1.0 / 128;
  return kRtol;
}

/// "" when `got` matches `want`, else what differs.
std::string compare(const value& want, const value& got, double rtol) {
  if (want.shape != got.shape) return "shape differs";
  if ((want.type == value_type::float32) != (got.type == value_type::float32))
    return "type differs";
  if (want.type == value_type::float32) {
    for (std::size_t e = 0; e < want.f.size(); ++e) {
      const double a = want.f[e], b = got.f[e];
      if (std::isnan(a) && std::isnan(b)) continue;
      if (a == b) continue;  // infinities
      if (!(std::fabs(a - b) <= kAtol + rtol * std::fabs(a))) {
        return "element " + std::to_string(e) + ": want " + std::to_string(a) + ", got " +
               std::to_string(b);
      }
    }
  } else if (want.i != got.i) {
    return "integer values differ";
  }
  return "";
}

/// The operator a node test is about: test_<op in snake case>[_variant]. Only its graph's ops
/// matter here: a test runs when the executor implements all of them.
TEST(ExecutorConformance, OnnxBackendNodeTestsOfEveryImplementedOp) {
  ASSERT_TRUE(fs::exists(node_tests))
      << node_tests << " is missing: install Debian's libonnx-testdata (scripts/install-deps does)";
  std::set<std::string> implemented;
  for (const std::string& op : int4q::onnx::supported_ops()) implemented.insert(op);
  std::map<std::string, int> passed, skipped_types;  // by operator
  std::vector<std::string> failures;
  std::size_t ran = 0;
  std::vector<fs::path> dirs;
  for (const auto& e : fs::directory_iterator(node_tests)) dirs.push_back(e.path());
  std::sort(dirs.begin(), dirs.end());
  for (const fs::path& dir : dirs) {
    const fs::path file = dir / "model.onnx";
    if (!fs::exists(file)) continue;
    model m = int4q::onnx::load_model(file);
    std::set<std::string> ops;
    for (const auto& n : m.proto.graph().node()) ops.insert(n.op_type());
    bool all = true;
    for (const std::string& op : ops) all = all && implemented.count(op);
    if (!all || ops.empty()) continue;
    const std::string op = m.proto.graph().node(0).op_type();
    bool tensors_only = true;  // sequences, maps, optionals: not values of the executor
    for (const auto& v : m.proto.graph().input())
      tensors_only = tensors_only && v.type().has_tensor_type();
    for (const auto& v : m.proto.graph().output())
      tensors_only = tensors_only && v.type().has_tensor_type();
    if (!tensors_only) {
      ++skipped_types[op];
      continue;
    }
    for (const auto& set : fs::directory_iterator(dir)) {
      if (!set.is_directory()) continue;
      std::map<std::string, value> inputs;
      std::vector<value> expected;
      try {
        const auto& g = m.proto.graph();
        for (int k = 0; k < g.input_size(); ++k) {
          const fs::path p = set.path() / ("input_" + std::to_string(k) + ".pb");
          if (fs::exists(p))
            inputs[g.input(k).name()] =
                int4q::onnx::to_value(m, as_declared(read_tensor(p), g.input(k)));
        }
        for (int k = 0; k < g.output_size(); ++k) {
          expected.push_back(int4q::onnx::to_value(
              m, as_declared(read_tensor(set.path() / ("output_" + std::to_string(k) + ".pb")),
                             g.output(k))));
        }
      } catch (const model_error& e) {
        if (e.what_kind() != model_error::kind::unsupported) throw;
        ++skipped_types[op];  // strings, complex, 8-bit floats: not computed by the executor
        continue;
      }
      ++ran;
      const std::string name = dir.filename().string() + "/" + set.path().filename().string();
      try {
        const auto got = executor(m).run(inputs);
        const auto& g = m.proto.graph();
        std::string why;
        for (int k = 0; k < g.output_size() && why.empty(); ++k) {
          why = compare(expected[static_cast<std::size_t>(k)], got.at(g.output(k).name()),
                        relative_tolerance(dir.filename().string()));
          if (!why.empty()) why = "output '" + g.output(k).name() + "': " + why;
        }
        if (why.empty()) {
          ++passed[op];
        } else {
          failures.push_back(name + ": " + why);
        }
      } catch (const std::exception& e) {
        failures.push_back(name + ": threw " + e.what());
      }
    }
  }
  std::ostringstream summary;
  for (const auto& [op, n] : passed) summary << op << " " << n << "  ";
  std::cout << "[executor conformance] " << ran
            << " node test data sets run, passed by op: " << summary.str() << "\n";
  for (const auto& [op, n] : skipped_types)
    std::cout << "[executor conformance] " << op << ": " << n
              << " data sets with types the executor does not compute (strings, float8, ...)\n";
  EXPECT_GT(ran, 100u) << "too few node tests ran: is libonnx-testdata complete?";
  std::string all;
  for (const std::string& f : failures) all += "  " + f + "\n";
  EXPECT_TRUE(failures.empty()) << failures.size() << " failures:\n" << all;
}

TEST(Executor, UnsupportedOperatorsAreAllNamedBeforeAnyWork) {
  int4q::test::graph_builder g;
  g.input("x", int4q::test::onnx_float, {2, 2});
  g.node("StringNormalizer", {"x"}, {"a"}, "r");
  g.node("TfIdfVectorizer", {"a"}, {"b"}, "t");
  g.node("Add", {"b", "b"}, {"y"}, "add");
  g.output("y", int4q::test::onnx_float, {2, 2});
  const model m = g.model();
  try {
    executor e(m);
    FAIL() << "expected model_error";
  } catch (const model_error& e) {
    EXPECT_EQ(e.what_kind(), model_error::kind::unsupported);
    const std::string what = e.what();
    // Both missing operators in one message, before anything ran.
    EXPECT_NE(what.find("does not implement StringNormalizer, TfIdfVectorizer ("),
              std::string::npos)
        << what;
  }
}

// devgpt through the executor: the mean next-byte NLL over the held-out windows, the protocol of
// tests/ort/devgpt.mjs, equals ONNX Runtime's 1.0872612 nats/byte (tests/ort/tolerances.mjs).
TEST(Executor, DevgptScoresWhatOnnxRuntimeScores) {
  const model m = int4q::onnx::load_model(int4q::test::devgpt_dir() / "devgpt_fp32.onnx");
  // ORT's score; float summation orders differ (BLAS kernels), which moves the 6th decimal.
  EXPECT_NEAR(int4q::test::devgpt_nats_per_byte(m), 1.0872612, 2e-5);
}

// int4q's own outputs run in the executor: MatMulNBits and DequantizeLinear-21 (INT4 and UINT4,
// blocked) decode to exactly the fake-quant model's weights, so the logits are the same bits
// (same weights, same MatMul); and they differ from fp32's.
TEST(Executor, RunsInt4qOutputsLikeTheirFakeQuantModels) {
  const fs::path dir = fs::path(INT4Q_SOURCE_DIR) / ".." / "shared" / "models" / "devgpt";
  const model fp32 = int4q::onnx::load_model(dir / "devgpt_fp32.onnx");
  std::ifstream in(dir / "devgpt_val.u8", std::ios::binary);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::size_t batch = 2, seq = 64;
  std::vector<std::int64_t> ids(batch * seq);
  for (std::size_t e = 0; e < ids.size(); ++e)
    ids[e] = static_cast<unsigned char>(text.at(1000 + e));
  const std::map<std::string, value> feeds = {
      {"input_ids", value::ints({std::int64_t(batch), std::int64_t(seq)}, ids)}};
  const value reference = executor(fp32).run(feeds).at("logits");

  using int4q::onnx::output_format;
  struct grid {
    output_format format;
    std::size_t group;
    int4q::scheme scheme;
  };
  for (const grid& gr : {grid{output_format::matmulnbits, 32, int4q::scheme::asymmetric},
                         grid{output_format::matmulnbits, 128, int4q::scheme::symmetric},
                         grid{output_format::qdq, 32, int4q::scheme::asymmetric},
                         grid{output_format::qdq, 128, int4q::scheme::symmetric}}) {
    int4q::onnx::quantize_options o;
    o.config.group_size = gr.group;
    o.config.scheme = gr.scheme;
    o.lm_head = int4q::onnx::lm_head_policy::quantize;
    model fake = fp32, real = fp32;
    o.format = output_format::fake;
    int4q::onnx::quantize_model(fake, o);
    o.format = gr.format;
    int4q::onnx::quantize_model(real, o);
    const std::string what = std::string(gr.format == output_format::qdq ? "qdq" : "matmulnbits") +
                             " g" + std::to_string(gr.group);
    const value a = executor(fake).run(feeds).at("logits");
    const value b = executor(real).run(feeds).at("logits");
    ASSERT_EQ(a.shape, b.shape) << what;
    EXPECT_TRUE(a.f == b.f) << what << ": the quantized model must give the fake-quant logits";
    double diff = 0;
    for (std::size_t e = 0; e < a.f.size(); ++e)
      diff = std::max(diff, double(std::fabs(a.f[e] - reference.f[e])));
    EXPECT_GT(diff, 1e-3) << what << ": no difference to fp32, was anything quantized?";
  }
}

}  // namespace
