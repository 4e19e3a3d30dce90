// `int4q eval --data`, run as a process (INT4Q_CLI_PATH) in a temporary directory: a model that is
// not a language model (openWakeWord) against its own `int4q quantize` output and against itself,
// on .npy/.npz files written here byte by byte from NumPy's format description, on ONNX test data,
// on random inputs; both modes together on devgpt; and the errors with their exit codes.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "onnx/add_test_data.hpp"
#include "onnx/cli_runner.hpp"
#include "onnx/graph_builder.hpp"
#include "onnx/npy_files.hpp"
#include "onnx/scratch_dir.hpp"

#ifndef INT4Q_CLI_PATH
#error "INT4Q_CLI_PATH (the built int4q executable) must be defined by the build"
#endif

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

fs::path models_dir() {
  const char* env = std::getenv("INT4Q_TEST_MODELS_DIR");
  return env && *env ? fs::path(env) : fs::path(INT4Q_SOURCE_DIR) / "build" / "models";
}
const fs::path devgpt_dir = fs::path(INT4Q_SOURCE_DIR) / ".." / "shared" / "models" / "devgpt";

using result = int4q::test::cli_result;
using int4q::test::describe;
using int4q::test::read_text;
using int4q::test::run_cli;

// ---- NumPy and ZIP bytes, from their specifications --------------------------------------------

using int4q::test::npy_array;
using int4q::test::zip_stored;

std::string float_bytes(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}

// ---- Fixture -----------------------------------------------------------------------------------

class CliEvalData : public int4q::test::scratch_dir_test {
 protected:
  result run(const std::vector<std::string>& args) { return run_cli(dir_, args); }
  void write(const std::string& name, const std::string& bytes) {
    std::ofstream out(dir_ / name, std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }
  /// openWakeWord's "hello deepa" model: input onnx::Flatten_0 [1, 25, 96], output 39 [1, 1].
  fs::path wakeword() {
    const fs::path p = models_dir() / "openwakeword_hello_deepa.onnx";
    if (!fs::exists(p)) {
      skip_ = true;
      return p;
    }
    return p;
  }
  void expect_failure(const std::vector<std::string>& args, int status,
                      const std::vector<std::string>& mentions) {
    const result r = run(args);
    EXPECT_EQ(r.status, status) << describe(r);
    EXPECT_EQ(r.err.rfind("int4q: error: ", 0), 0u) << describe(r);
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << "one line: " << describe(r);
    for (const auto& m : mentions)
      EXPECT_NE(r.err.find(m), std::string::npos) << m << "\n" << describe(r);
  }
  bool skip_ = false;
};

#define REQUIRE_WAKEWORD(var)      \
  const fs::path var = wakeword(); \
  if (skip_) GTEST_SKIP() << var << " not found (scripts/fetch-test-models fetches it)"

/// 16 samples of openWakeWord features [25, 96]: smooth curves plus noise, in [-2, 2].
std::vector<float> wakeword_features(std::size_t samples) {
  std::vector<float> x = int4q::test::random_values(samples * 25 * 96, 11, 0.5f);
  for (std::size_t s = 0; s < samples; ++s)
    for (std::size_t t = 0; t < 25; ++t)
      for (std::size_t c = 0; c < 96; ++c)
        x[(s * 25 + t) * 96 + c] +=
            1.5f * static_cast<float>(std::sin(0.1 * double(c * (s + 1)) + 0.3 * double(t)));
  return x;
}

TEST_F(CliEvalData, WakewordAgainstItsQuantizedSelfOnNpyAndNpz) {
  REQUIRE_WAKEWORD(model);
  ASSERT_EQ(run({"quantize", model.string(), "-o", "q.onnx", "-q"}).status, 0);
  const std::string features = npy_array("<f4", "(16, 25, 96)", float_bytes(wakeword_features(16)));
  write("features.npy", features);
  write("features.npz", zip_stored({{"onnx::Flatten_0.npy", features}}));
  for (const char* data : {"features.npy", "features.npz"}) {
    SCOPED_TRACE(data);
    const result r = run({"eval", model.string(), "q.onnx", "--data", data, "--json", "-"});
    ASSERT_EQ(r.status, 0) << describe(r);
    EXPECT_EQ(r.err, "") << "real data: no warning";
    const json j = json::parse(r.out);
    EXPECT_EQ(j["samples"].get<int>(), 16);
    EXPECT_EQ(j["data"].get<std::string>(), data);
    ASSERT_EQ(j["outputs"].size(), 1u);
    const json& e = j["outputs"][0];
    EXPECT_EQ(e["name"], "39");
    EXPECT_EQ(e["elements"].get<int>(), 16);
    EXPECT_GT(e["max_abs"].get<double>(), 0.0);
    EXPECT_GT(e["mean_abs"].get<double>(), 0.0);
    EXPECT_GT(e["max_rel"].get<double>(), 0.0);
    EXPECT_LE(e["mean_abs"].get<double>(), e["max_abs"].get<double>());
    EXPECT_GT(e["cosine"].get<double>(), 0.99);
    EXPECT_LT(e["cosine"].get<double>(), 1.0);
  }
  // The model against itself: exactly no error; the table names the output (its whole shape:
  // 16 samples of [1, 1], run one by one) and the columns.
  const result same = run({"eval", model.string(), model.string(), "--data", "features.npy"});
  ASSERT_EQ(same.status, 0) << describe(same);
  EXPECT_NE(same.out.find("16 samples from 'features.npy' (npy)"), std::string::npos) << same.out;
  EXPECT_NE(same.out.find("max abs     max rel    mean abs     cosine"), std::string::npos)
      << same.out;
  EXPECT_NE(
      same.out.find("  39      [16, 1]                    0           0           0   1.000000"),
      std::string::npos)
      << same.out;
  // --samples takes the first ones.
  const result four = run({"eval", model.string(), model.string(), "--data", "features.npz",
                           "--samples", "4", "--json", "-"});
  ASSERT_EQ(four.status, 0) << describe(four);
  EXPECT_EQ(json::parse(four.out)["outputs"][0]["elements"].get<int>(), 4);
}

TEST_F(CliEvalData, RandomInputsWarnOnStderr) {
  REQUIRE_WAKEWORD(model);
  const result r =
      run({"eval", model.string(), model.string(), "--samples", "3", "--json", "j.json"});
  ASSERT_EQ(r.status, 0) << describe(r);
  EXPECT_EQ(r.err.rfind("int4q: warning: ", 0), 0u) << describe(r);
  EXPECT_NE(r.err.find("random"), std::string::npos) << describe(r);
  const json j = json::parse(read_text(dir_ / "j.json"));
  EXPECT_EQ(j["data_format"], "random");
  EXPECT_EQ(j["outputs"][0]["max_abs"].get<double>(), 0.0);
  EXPECT_EQ(j["warnings"].size(), 1u);
}

TEST_F(CliEvalData, OnnxTestDataFolder) {
  const fs::path onnx_test_add = int4q::test::write_add_test(dir_ / "test_add");
  const std::string m = (onnx_test_add / "model.onnx").string();
  const result r =
      run({"eval", m, m, "--data", (onnx_test_add / "test_data_set_0").string(), "--json", "-"});
  ASSERT_EQ(r.status, 0) << describe(r);
  const json j = json::parse(r.out);
  EXPECT_EQ(j["data_format"], "onnx-pb");
  EXPECT_EQ(j["outputs"][0]["name"], "sum");
  EXPECT_EQ(j["outputs"][0]["elements"].get<int>(), 60);
  EXPECT_EQ(j["outputs"][0]["max_abs"].get<double>(), 0.0);
  EXPECT_EQ(j["outputs"][0]["cosine"].get<double>(), 1.0);
}

TEST_F(CliEvalData, DevgptBothModes) {
  const fs::path devgpt = devgpt_dir / "devgpt_fp32.onnx";
  if (!fs::exists(devgpt)) GTEST_SKIP() << "devgpt not found at " << devgpt;
  const std::string tokens = (devgpt_dir / "devgpt_val.u8").string();
  const result r = run({"eval", devgpt.string(), devgpt.string(), "--tokens", tokens, "--data",
                        tokens, "--samples", "2", "--seq-len", "16", "--json", "-"});
  ASSERT_EQ(r.status, 0) << describe(r);
  const json j = json::parse(r.out);
  EXPECT_EQ(j["nll_delta"].get<double>(), 0.0);
  EXPECT_EQ(j["data_format"], "tokens");
  EXPECT_EQ(j["outputs"][0]["shape"], json({2, 16, 256}));
  EXPECT_EQ(j["outputs"][0]["max_abs"].get<double>(), 0.0);
  // A language model needs --tokens or --data.
  const result none = run({"eval", devgpt.string(), devgpt.string()});
  EXPECT_EQ(none.status, 2) << describe(none);
  EXPECT_NE(none.err.find("--tokens"), std::string::npos) << describe(none);
}

TEST_F(CliEvalData, ErrorsAndExitCodes) {
  REQUIRE_WAKEWORD(model);
  const std::string m = model.string();
  const std::vector<float> x(2 * 25 * 96, 0.5f);
  expect_failure({"eval", m, m, "--data", "missing.npz"}, 3, {"missing.npz"});
  write("typo.npz",
        zip_stored({{"features.npy", npy_array("<f4", "(2, 25, 96)", float_bytes(x))}}));
  expect_failure({"eval", m, m, "--data", "typo.npz"}, 4,
                 {"typo.npz", "'features'", "'onnx::Flatten_0' float32 [1, 25, 96]"});
  write("shape.npy", npy_array("<f4", "(2, 25, 48)", float_bytes(std::vector<float>(2 * 25 * 48))));
  expect_failure({"eval", m, m, "--data", "shape.npy"}, 4,
                 {"shape.npy", "[2, 25, 48]", "dimension 2 fixed at 96"});
  write("ints.npy", npy_array("<i8", "(1, 25, 96)", std::string(25 * 96 * 8, '\0')));
  expect_failure({"eval", m, m, "--data", "ints.npy"}, 4, {"ints.npy", "<i8", "float"});
  write("fortran.npy", npy_array("<f4", "(2, 25, 96)", float_bytes(x), true));
  expect_failure({"eval", m, m, "--data", "fortran.npy"}, 5, {"fortran.npy", "Fortran"});
  expect_failure({"eval", m, m, "--data", "shape.npy", "--token-dtype", "f32"}, 2, {"f32"});
  write("tokens.bin", std::string(300, 'a'));
  expect_failure({"eval", m, m, "--data", "tokens.bin"}, 4, {"tokens.bin", "token"});
}

}  // namespace
