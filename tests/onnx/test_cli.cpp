// The `int4q` command line tool, run as a process (INT4Q_CLI_PATH) in a temporary directory: exit
// codes, messages, files written (and not written), the report, and the output models themselves
// (node counts; the ort preset byte for byte against ONNX Runtime's own quantizer output).
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <onnx/onnx_pb.h>
#include <nlohmann/json.hpp>

#include <int4q/version.hpp>

#include "onnx/cli_runner.hpp"
#include "onnx/graph_builder.hpp"
#include "onnx/scratch_dir.hpp"

#ifndef INT4Q_CLI_PATH
#error "INT4Q_CLI_PATH (the built int4q executable) must be defined by the build"
#endif

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const fs::path devgpt_dir = fs::path(INT4Q_SOURCE_DIR) / ".." / "shared" / "models" / "devgpt";
const fs::path devgpt = devgpt_dir / "devgpt_fp32.onnx";

// ---- Running the binary
// --------------------------------------------------------------------------

using result = int4q::test::cli_result;
using int4q::test::describe;
using int4q::test::read_text;
using int4q::test::run_cli;

// ---- Models
// --------------------------------------------------------------------------------------

::onnx::ModelProto load_proto(const fs::path& p) {
  ::onnx::ModelProto m;
  std::ifstream in(p, std::ios::binary);
  EXPECT_TRUE(in.good()) << p;
  EXPECT_TRUE(m.ParseFromIstream(&in)) << p << " does not parse as an ONNX ModelProto";
  return m;
}

std::size_t count_ops(const ::onnx::ModelProto& m, const std::string& op_type) {
  return static_cast<std::size_t>(
      std::count_if(m.graph().node().begin(), m.graph().node().end(),
                    [&](const ::onnx::NodeProto& n) { return n.op_type() == op_type; }));
}

const ::onnx::TensorProto* find_initializer(const ::onnx::ModelProto& m, const std::string& name) {
  for (const auto& t : m.graph().initializer()) {
    if (t.name() == name) return &t;
  }
  return nullptr;
}

/// Payload bytes of an inline tensor (raw_data, or float_data for FLOAT).
std::string payload(const ::onnx::TensorProto& t) {
  if (t.has_raw_data()) return t.raw_data();
  std::string bytes;
  if (t.float_data_size() > 0) {
    bytes.resize(static_cast<std::size_t>(t.float_data_size()) * 4);
    std::memcpy(&bytes[0], t.float_data().data(), bytes.size());
  }
  return bytes;
}

std::int64_t int_attribute(const ::onnx::NodeProto& n, const std::string& name) {
  for (const auto& a : n.attribute()) {
    if (a.name() == name) return a.i();
  }
  return -1;
}

void write_model(const ::onnx::ModelProto& m, const fs::path& p) {
  std::ofstream out(p, std::ios::binary);
  ASSERT_TRUE(m.SerializeToOstream(&out)) << p;
}

/// A small model: x[*, 64] -MatMul(w0[64,32])-> h -Gemm(w1[48,32] transB, bias b1)-> y[*, 48].
/// gemm1 feeds the graph output: it is the lm_head (kept in float unless --lm-head says otherwise).
::onnx::ModelProto small_model() {
  int4q::test::graph_builder g;
  g.input("x", int4q::test::onnx_float, {-1, 64});
  g.initializer("w0", int4q::test::onnx_float, {64, 32}, int4q::test::random_values(64 * 32, 1));
  g.initializer("w1", int4q::test::onnx_float, {48, 32}, int4q::test::random_values(48 * 32, 2));
  g.initializer("b1", int4q::test::onnx_float, {48}, int4q::test::random_values(48, 3));
  g.matmul("mm0", "x", "w0", "h");
  int4q::test::gemm_attrs attrs;
  attrs.trans_b = true;
  g.gemm("gemm1", "h", "w1", "b1", "y", attrs);
  g.output("y", int4q::test::onnx_float, {-1, 48});
  return g.build();
}

std::set<std::string> listing(const fs::path& dir) {
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.insert(e.path().filename().string());
  return names;
}

// ---- Fixture: a fresh temporary directory per test
// -----------------------------------------------

class CliTest : public int4q::test::scratch_dir_test {
 protected:
  void require_devgpt() {
    if (!fs::exists(devgpt)) GTEST_SKIP() << "devgpt model not found at " << devgpt;
  }
  result run(const std::vector<std::string>& args) { return run_cli(dir_, args); }
  /// Checks a failure: exit `status`, one "int4q: error:" line naming each of `mentions`, and
  /// no new file in the directory.
  void expect_failure(const std::vector<std::string>& args, int status,
                      const std::vector<std::string>& mentions) {
    const auto before = listing(dir_);
    const result r = run(args);
    EXPECT_EQ(r.status, status) << describe(r);
    EXPECT_EQ(r.err.rfind("int4q: error: ", 0), 0u) << describe(r);
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << "one line: " << describe(r);
    for (const auto& m : mentions)
      EXPECT_NE(r.err.find(m), std::string::npos) << m << "\n" << describe(r);
    EXPECT_EQ(listing(dir_), before) << "a failed run must not leave files behind";
  }
};

using CliQuantize = CliTest;
using CliErrors = CliTest;
using CliInspect = CliTest;
using CliInfo = CliTest;

// ---- quantize: devgpt end to end
// -----------------------------------------------------------------

TEST_F(CliQuantize, DevgptMatMulNBitsDefaultWithReport) {
  require_devgpt();
  const result r = run({"quantize", devgpt.string(), "-o", "out.onnx", "--report", "report.json"});
  ASSERT_EQ(r.status, 0) << describe(r);
  EXPECT_EQ(r.err, "") << "stderr is not a terminal: no progress, nothing else on success";
  EXPECT_NE(r.out.find("16 of 17 quantized"), std::string::npos) << r.out;

  const auto m = load_proto(dir_ / "out.onnx");
  EXPECT_EQ(count_ops(m, "MatMulNBits"), 16u) << "lm_head stays float by default";
  EXPECT_EQ(count_ops(m, "MatMul"), 8u + 1u) << "activation x activation MatMuls + lm_head";

  const json report = json::parse(read_text(dir_ / "report.json"));
  ASSERT_TRUE(report.contains("tensors") && report.contains("totals")) << report.dump(2);
  // Every MatMul's B operand is listed: 17 constant weights and 8 activations (not quantizable).
  EXPECT_EQ(report["tensors"].size(), 25u);
  EXPECT_EQ(report["totals"]["weights_quantized"].get<int>(), 16);
  EXPECT_LT(report["totals"]["bytes_after"].get<std::uint64_t>(),
            report["totals"]["bytes_before"].get<std::uint64_t>());
  EXPECT_EQ(report["config"]["format"], "matmulnbits");
  EXPECT_EQ(report["input"].get<std::string>(), devgpt.string());
  EXPECT_EQ(report["output"].get<std::string>(), "out.onnx");
  EXPECT_EQ(report["input_bytes"].get<std::uint64_t>(), fs::file_size(devgpt));
  EXPECT_EQ(report["output_bytes"].get<std::uint64_t>(), fs::file_size(dir_ / "out.onnx"));
  EXPECT_LT(report["output_bytes"].get<std::uint64_t>(),
            report["input_bytes"].get<std::uint64_t>());
  ASSERT_EQ(report["output_files"].size(), 1u);
  EXPECT_GT(report["peak_rss_bytes"].get<std::uint64_t>(), 0u);
  for (const char* key : {"load_seconds", "quantize_seconds", "save_seconds", "total_seconds"}) {
    EXPECT_GE(report["timing"][key].get<double>(), 0.0) << key;
  }
  EXPECT_GE(report["timing"]["total_seconds"].get<double>(),
            report["timing"]["quantize_seconds"].get<double>());
  std::size_t quantized = 0, constant = 0, lm_head_kept = 0;
  for (const auto& t : report["tensors"]) {
    if (t["bytes_before"].get<std::uint64_t>() > 0) ++constant;
    if (!t["quantized"].get<bool>()) {
      EXPECT_FALSE(t["reason"].get<std::string>().empty()) << t.dump();
      if (t["reason"].get<std::string>().find("lm_head") != std::string::npos) ++lm_head_kept;
      continue;
    }
    ++quantized;
    EXPECT_EQ(t["bits"].get<int>(), 4);
    EXPECT_EQ(t["group_size"].get<int>(), 128);
    EXPECT_GT(t["error"]["sqnr_db"].get<double>(), 10.0) << t.dump();
    EXPECT_LT(t["bytes_after"].get<std::uint64_t>(), t["bytes_before"].get<std::uint64_t>());
  }
  EXPECT_EQ(quantized, 16u);
  EXPECT_EQ(constant, 17u);
  EXPECT_EQ(lm_head_kept, 1u);
}

TEST_F(CliQuantize, DevgptLmHeadQuantize) {
  require_devgpt();
  const result r = run({"quantize", devgpt.string(), "-o", "out.onnx", "--lm-head", "quantize",
                        "--group-size", "32", "--scheme", "symmetric"});
  ASSERT_EQ(r.status, 0) << describe(r);
  const auto m = load_proto(dir_ / "out.onnx");
  EXPECT_EQ(count_ops(m, "MatMulNBits"), 17u);
  EXPECT_EQ(count_ops(m, "MatMul"), 8u);
  for (const auto& n : m.graph().node()) {
    if (n.op_type() != "MatMulNBits") continue;
    EXPECT_EQ(n.domain(), "com.microsoft");
    EXPECT_EQ(int_attribute(n, "block_size"), 32);
    EXPECT_EQ(int_attribute(n, "bits"), 4);
  }
}

TEST_F(CliQuantize, DevgptQdq) {
  require_devgpt();
  const result r = run({"quantize", devgpt.string(), "-o", "qdq.onnx", "--format", "qdq", "-q"});
  ASSERT_EQ(r.status, 0) << describe(r);
  EXPECT_EQ(r.out, "") << "--quiet";
  EXPECT_EQ(r.err, "") << "--quiet";
  const auto m = load_proto(dir_ / "qdq.onnx");
  EXPECT_EQ(count_ops(m, "DequantizeLinear"), 16u);
  EXPECT_EQ(count_ops(m, "MatMul"), 25u);
  EXPECT_EQ(count_ops(m, "MatMulNBits"), 0u);
  std::int64_t opset = -1;
  for (const auto& o : m.opset_import()) {
    if (o.domain().empty() || o.domain() == "ai.onnx") opset = o.version();
  }
  EXPECT_GE(opset, 21);
}

TEST_F(CliQuantize, DevgptFakeQuantHasAtMost16ValuesPerGroup) {
  require_devgpt();
  const result r =
      run({"quantize", devgpt.string(), "-o", "fake.onnx", "--format", "fake", "--report", "-"});
  ASSERT_EQ(r.status, 0) << describe(r);
  const json report = json::parse(r.out);  // --report -: stdout is the JSON and nothing else
  const auto m = load_proto(dir_ / "fake.onnx");
  const auto original = load_proto(devgpt);
  EXPECT_EQ(count_ops(m, "MatMul"), 25u);
  EXPECT_EQ(count_ops(m, "MatMulNBits") + count_ops(m, "DequantizeLinear"), 0u);
  std::size_t checked = 0;
  for (const auto& t : report["tensors"]) {
    if (!t["quantized"].get<bool>()) continue;
    const auto* w = find_initializer(m, t["weight"].get<std::string>());
    const auto* w0 = find_initializer(original, t["weight"].get<std::string>());
    ASSERT_NE(w, nullptr) << t.dump();
    ASSERT_NE(w0, nullptr);
    ASSERT_EQ(w->dims_size(), 2);
    const auto k = static_cast<std::size_t>(w->dims(0)), n = static_cast<std::size_t>(w->dims(1));
    const std::string bytes = payload(*w);
    ASSERT_EQ(bytes.size(), k * n * 4);
    EXPECT_NE(bytes, payload(*w0)) << "the fake-quant weight differs from the original";
    std::vector<float> v(k * n);
    std::memcpy(v.data(), bytes.data(), bytes.size());
    for (std::size_t col = 0; col < n; ++col) {
      for (std::size_t g = 0; g < k; g += 128) {
        std::set<float> distinct;
        for (std::size_t row = g; row < std::min(k, g + 128); ++row)
          distinct.insert(v[row * n + col]);
        ASSERT_LE(distinct.size(), 16u) << t["weight"] << " column " << col << " group " << g / 128;
      }
    }
    ++checked;
  }
  EXPECT_EQ(checked, 16u);
}

// The whole chain (CLI options -> preset -> core -> MatMulNBits writer -> save) against the bytes
// ONNX Runtime 1.30's own quantizer wrote for devgpt (../shared/models/devgpt/ort/).
TEST_F(CliQuantize, OrtPresetIsByteExactWithOnnxRuntime) {
  require_devgpt();
  const fs::path reference = devgpt_dir / "ort" / "devgpt_ort_mnb_b32_sym.onnx";
  if (!fs::exists(reference)) GTEST_SKIP() << reference << " not found";
  const result r =
      run({"quantize", devgpt.string(), "-o", "ort.onnx", "--preset", "ort", "--lm-head",
           "quantize", "--group-size", "32", "--scheme", "symmetric_full_range"});
  ASSERT_EQ(r.status, 0) << describe(r);
  const auto ours = load_proto(dir_ / "ort.onnx");
  const auto ref = load_proto(reference);
  // Match nodes by their activation input (both tools keep the graph's tensor names).
  std::map<std::string, const ::onnx::NodeProto*> by_input;
  for (const auto& n : ours.graph().node()) {
    if (n.op_type() == "MatMulNBits") by_input[n.input(0)] = &n;
  }
  std::size_t compared = 0;
  for (const auto& n : ref.graph().node()) {
    if (n.op_type() != "MatMulNBits") continue;
    ASSERT_TRUE(by_input.count(n.input(0))) << "no MatMulNBits reads " << n.input(0);
    const auto& mine = *by_input[n.input(0)];
    for (const char* attr : {"K", "N", "bits", "block_size"}) {
      EXPECT_EQ(int_attribute(mine, attr), int_attribute(n, attr)) << n.name() << " " << attr;
    }
    EXPECT_EQ(mine.input_size() > 3 && !mine.input(3).empty(),
              n.input_size() > 3 && !n.input(3).empty())
        << n.name() << ": zero_points present in one and not the other";
    for (int i = 1; i <= 2; ++i) {  // B, scales
      const auto* a = find_initializer(ours, mine.input(i));
      const auto* b = find_initializer(ref, n.input(i));
      ASSERT_NE(a, nullptr) << mine.input(i);
      ASSERT_NE(b, nullptr) << n.input(i);
      EXPECT_EQ(a->data_type(), b->data_type()) << n.input(i);
      EXPECT_EQ(std::vector<std::int64_t>(a->dims().begin(), a->dims().end()),
                std::vector<std::int64_t>(b->dims().begin(), b->dims().end()))
          << n.input(i);
      EXPECT_TRUE(payload(*a) == payload(*b)) << n.name() << " input " << i << " differs";
    }
    ++compared;
  }
  EXPECT_EQ(compared, 17u);
}

TEST_F(CliQuantize, ThreadCountDoesNotChangeTheOutput) {
  require_devgpt();
  ASSERT_EQ(run({"quantize", devgpt.string(), "-o", "t1.onnx", "--threads", "1", "-q"}).status, 0);
  ASSERT_EQ(run({"quantize", devgpt.string(), "-o", "t2.onnx", "--threads", "2", "-q"}).status, 0);
  EXPECT_TRUE(read_text(dir_ / "t1.onnx") == read_text(dir_ / "t2.onnx"))
      << "--threads 1 and --threads 2 must write byte-identical files";
}

TEST_F(CliQuantize, AutoPlanThreadCountDoesNotChangeTheOutput) {
  require_devgpt();
  auto with = [&](const std::string& threads) {
    return run({"quantize", devgpt.string(), "-o", "a" + threads + ".onnx", "--auto",
                "--effective-bits", "5", "--calib", (devgpt_dir / "devgpt_cal.u8").string(),
                "--calib-samples", "4", "--plan-out", "a" + threads + ".json", "--threads", threads,
                "-q"});
  };
  const result a = with("1");
  ASSERT_EQ(a.status, 0) << describe(a);
  const result b = with("2");
  ASSERT_EQ(b.status, 0) << describe(b);
  EXPECT_TRUE(read_text(dir_ / "a1.onnx") == read_text(dir_ / "a2.onnx"))
      << "--auto: --threads 1 and --threads 2 must write byte-identical files";
  EXPECT_TRUE(read_text(dir_ / "a1.json") == read_text(dir_ / "a2.json"))
      << "--auto: the plan (scores) must not depend on the thread count";
}

TEST_F(CliQuantize, BlockMethodTakesItsStepsAndReportsItsBlockLosses) {
  require_devgpt();
  const result r =
      run({"quantize", devgpt.string(), "-o", "b.onnx", "--method", "block", "--block-iters", "3",
           "--block-lr", "0.02", "--calib", (devgpt_dir / "devgpt_cal.u8").string(),
           "--calib-samples", "8", "--report", "-"});
  ASSERT_EQ(r.status, 0) << describe(r);
  const auto report = nlohmann::json::parse(r.out);
  EXPECT_EQ(report["config"]["method"], "block");
  EXPECT_EQ(report["config"]["block"]["iterations"], 3);
  EXPECT_EQ(report["config"]["block"]["learning_rate"], 0.02);
  std::size_t tuned = 0;
  for (const auto& t : report["tensors"]) {
    if (!t["quantized"].get<bool>()) continue;
    EXPECT_EQ(t["method"], "block");
    EXPECT_EQ(t["calibration_rows"], 8 * 128);
    EXPECT_LE(t["block_loss"].get<double>(), t["block_loss_start"].get<double>());
    ++tuned;
  }
  EXPECT_EQ(tuned, 16u);  // the lm_head stays in float by default
  expect_failure(
      {"quantize", devgpt.string(), "-o", "b2.onnx", "--method", "block", "--block-iters", "0"}, 2,
      {"--block-iters"});
}

TEST_F(CliQuantize, GptqWithCalibrationDataReportsItsLossesAndIgnoresThreads) {
  require_devgpt();
  const std::vector<std::string> base = {"quantize",
                                         devgpt.string(),
                                         "--method",
                                         "gptq",
                                         "--calib",
                                         (devgpt_dir / "devgpt_cal.u8").string(),
                                         "--calib-samples",
                                         "8",
                                         "--compare-rtn",
                                         "--report",
                                         "-"};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = base;
    args.insert(args.end(), extra.begin(), extra.end());
    return run(args);
  };
  const result a = with({"-o", "g1.onnx", "--threads", "1"});
  ASSERT_EQ(a.status, 0) << describe(a);
  const result b = with({"-o", "g2.onnx", "--threads", "2"});
  ASSERT_EQ(b.status, 0) << describe(b);
  EXPECT_TRUE(read_text(dir_ / "g1.onnx") == read_text(dir_ / "g2.onnx"))
      << "--threads 1 and --threads 2 must write byte-identical files with GPTQ too";
  const auto report = nlohmann::json::parse(a.out);
  EXPECT_EQ(report["config"]["method"], "gptq");
  EXPECT_EQ(report["config"]["calibration"]["mode"], "sequential");
  std::size_t gptq = 0;
  for (const auto& t : report["tensors"]) {
    if (!t["quantized"].get<bool>()) continue;
    EXPECT_EQ(t["method"], "gptq");
    EXPECT_EQ(t["calibration_rows"], 8 * 128);
    EXPECT_LE(t["hessian_loss"].get<double>(), t["rtn_hessian_loss"].get<double>());
    ++gptq;
  }
  EXPECT_EQ(gptq, 16u);  // the lm_head stays in float by default
  // Without data: random inputs, with a warning on stderr; still exit 0.
  const result r = run(
      {"quantize", devgpt.string(), "-o", "g3.onnx", "--method", "gptq", "--calib-samples", "4"});
  EXPECT_EQ(r.status, 0) << describe(r);
  EXPECT_NE(r.err.find("random"), std::string::npos) << describe(r);
  // --act-order with groups and without --static-groups is refused with the reason.
  expect_failure({"quantize", devgpt.string(), "-o", "g4.onnx", "--method", "gptq", "--act-order",
                  "--no-static-groups"},
                 2, {"--static-groups", "g_idx"});
}

// --calib-memory: the paused calibration runs beyond it wait in a scratch file next to OUT; the
// output is the same bytes with 0 (every run but one in the file) and with room for all, and no
// scratch file is left.
TEST_F(CliQuantize, GptqCalibMemoryChangesNoByteAndLeavesNoScratchFile) {
  require_devgpt();
  auto gptq = [&](const std::string& out, const std::string& memory) {
    return run({"quantize", devgpt.string(), "-o", out, "--method", "gptq", "--calib",
                (devgpt_dir / "devgpt_cal.u8").string(), "--calib-samples", "6", "--calib-seq-len",
                "32", "--calib-batch", "2", "--calib-memory", memory, "-q"});
  };
  const result a = gptq("m0.onnx", "0");
  ASSERT_EQ(a.status, 0) << describe(a);
  const result b = gptq("m4g.onnx", "4G");
  ASSERT_EQ(b.status, 0) << describe(b);
  EXPECT_TRUE(read_text(dir_ / "m0.onnx") == read_text(dir_ / "m4g.onnx"))
      << "--calib-memory 0 and 4G must write byte-identical files";
  for (const auto& e : fs::directory_iterator(dir_))
    EXPECT_EQ(e.path().filename().string().find(".int4q-activations"), std::string::npos)
        << e.path();
}

TEST_F(CliQuantize, AutoPlanWithinABudgetWrittenAndAppliedAgain) {
  require_devgpt();
  const std::string cal = (devgpt_dir / "devgpt_cal.u8").string();
  const result a = run({"quantize", devgpt.string(), "-o", "auto.onnx", "--lm-head", "quantize",
                        "--auto", "--effective-bits", "4.5", "--calib", cal, "--calib-samples", "8",
                        "--plan-out", "plan.json", "--report", "-"});
  ASSERT_EQ(a.status, 0) << describe(a);
  const auto report = json::parse(a.out);
  const double achieved = report["effective_bits"].get<double>();
  EXPECT_LE(achieved, 4.5);
  EXPECT_GT(achieved, 4.25);  // more than uniform int4 g128 (4.28 with its scales): used
  const auto plan = json::parse(read_text(dir_ / "plan.json"));
  ASSERT_TRUE(plan.is_object()) << read_text(dir_ / "plan.json");
  // Applying the written plan (no calibration) writes the same model.
  const result b = run({"quantize", devgpt.string(), "-o", "again.onnx", "--lm-head", "quantize",
                        "--plan", "plan.json", "-q"});
  ASSERT_EQ(b.status, 0) << describe(b);
  EXPECT_TRUE(read_text(dir_ / "auto.onnx") == read_text(dir_ / "again.onnx"))
      << "--plan must reproduce the model --auto wrote";
  // Below the cheapest plan: a usage error naming the smallest feasible budget.
  expect_failure({"quantize", devgpt.string(), "-o", "low.onnx", "--lm-head", "quantize", "--auto",
                  "--effective-bits", "3", "--calib", cal, "--calib-samples", "4", "-q"},
                 2, {"smallest feasible budget"});
  expect_failure({"quantize", devgpt.string(), "-o", "x.onnx", "--plan", "missing.json"}, 3,
                 {"--plan file"});
}

TEST_F(CliQuantize, OverwritesAnExistingOutput) {
  write_model(small_model(), dir_ / "small.onnx");
  {
    std::ofstream old(dir_ / "out.onnx");
    old << "an old file";
  }
  const result r = run(
      {"quantize", "small.onnx", "-o", "out.onnx", "--group-size", "16", "--lm-head", "quantize"});
  ASSERT_EQ(r.status, 0) << describe(r);
  const auto m = load_proto(dir_ / "out.onnx");
  EXPECT_EQ(count_ops(m, "MatMulNBits"), 2u);
  EXPECT_EQ(listing(dir_), (std::set<std::string>{"small.onnx", "out.onnx"}))
      << "no temporary file left";
}

TEST_F(CliQuantize, ExternalDataAlways) {
  write_model(small_model(), dir_ / "small.onnx");
  const result r = run({"quantize", "small.onnx", "-o", "ext.onnx", "--group-size", "32",
                        "--external-data", "always", "--report", "r.json", "--format", "qdq"});
  ASSERT_EQ(r.status, 0) << describe(r);
  ASSERT_TRUE(fs::exists(dir_ / "ext.onnx.data"));
  const json report = json::parse(read_text(dir_ / "r.json"));
  EXPECT_EQ(report["output_files"].size(), 2u) << report.dump(2);
  EXPECT_EQ(report["output_bytes"].get<std::uint64_t>(),
            fs::file_size(dir_ / "ext.onnx") + fs::file_size(dir_ / "ext.onnx.data"));
  // inspect reads it back, external data included in the size.
  const result i = run({"inspect", "ext.onnx", "--json"});
  ASSERT_EQ(i.status, 0) << describe(i);
  const json d = json::parse(i.out);
  EXPECT_EQ(d["external_data_bytes"].get<std::uint64_t>(), fs::file_size(dir_ / "ext.onnx.data"));
}

TEST_F(CliQuantize, SpillWritesTheSameBytesAndLeavesNoScratchFile) {
  // --spill always moves each quantized tensor to a scratch file as it is made; the output must
  // be byte for byte the in-memory one, inline and with external data, and the scratch file gone.
  require_devgpt();
  for (const std::string ext : {"never", "always"}) {
    for (const std::string spill : {"never", "always"}) {
      // Same output name in two folders: the model file names its data file.
      fs::create_directories(dir_ / (spill + "_" + ext));
      const std::string out = spill + "_" + ext + "/m.onnx";
      const result r = run({"quantize", devgpt.string(), "-o", out, "--spill", spill,
                            "--external-data", ext, "--lm-head", "quantize", "-q"});
      ASSERT_EQ(r.status, 0) << describe(r);
      std::set<std::string> files = {"m.onnx"};
      if (ext == "always") files.insert("m.onnx.data");
      EXPECT_EQ(listing(dir_ / (spill + "_" + ext)), files) << "no scratch file may be left";
    }
    for (const std::string file : {"m.onnx", "m.onnx.data"}) {
      if (ext == "never" && file == "m.onnx.data") continue;
      EXPECT_TRUE(read_text(dir_ / ("never_" + ext) / file) ==
                  read_text(dir_ / ("always_" + ext) / file))
          << file << " differs with --external-data " << ext;
    }
  }
}

TEST_F(CliQuantize, ConfigOverridesAndSelection) {
  write_model(small_model(), dir_ / "small.onnx");
  {
    std::ofstream cfg(dir_ / "cfg.json");
    cfg << R"({"overrides": [{"match": "gemm1", "bits": 8}]})";
  }
  const result r = run({"quantize", "small.onnx", "-o", "out.onnx", "--group-size", "16",
                        "--config", "cfg.json", "--lm-head", "quantize", "--report", "-"});
  ASSERT_EQ(r.status, 0) << describe(r);
  const json report = json::parse(r.out);
  std::map<std::string, int> bits;
  for (const auto& t : report["tensors"])
    bits[t["weight"].get<std::string>()] = t["bits"].get<int>();
  EXPECT_EQ(bits["w0"], 4);
  EXPECT_EQ(bits["w1"], 8);

  const result e = run({"quantize", "small.onnx", "-o", "ex.onnx", "--group-size", "16",
                        "--exclude", "^gemm", "--lm-head", "quantize", "--report", "-"});
  ASSERT_EQ(e.status, 0) << describe(e);
  EXPECT_EQ(json::parse(e.out)["totals"]["weights_quantized"].get<int>(), 1);
  EXPECT_EQ(count_ops(load_proto(dir_ / "ex.onnx"), "MatMulNBits"), 1u);
}

TEST_F(CliQuantize, CommandLineWinsOverConfigFile) {
  write_model(small_model(), dir_ / "small.onnx");
  {
    std::ofstream cfg(dir_ / "base.json");
    cfg << R"({"format": "qdq", "bits": 8, "group_size": 32, "lm_head": "quantize"})";
  }
  const result c =
      run({"quantize", "small.onnx", "-o", "c.onnx", "--config", "base.json", "--report", "-"});
  ASSERT_EQ(c.status, 0) << describe(c);
  const json rc = json::parse(c.out);
  EXPECT_EQ(rc["config"]["format"], "qdq");
  EXPECT_EQ(rc["config"]["bits"], 8);
  EXPECT_EQ(count_ops(load_proto(dir_ / "c.onnx"), "DequantizeLinear"), 2u);

  const result f = run({"quantize", "small.onnx", "-o", "f.onnx", "--config", "base.json", "--bits",
                        "4", "--format", "matmulnbits", "--report", "-"});
  ASSERT_EQ(f.status, 0) << describe(f);
  const json rf = json::parse(f.out);
  EXPECT_EQ(rf["config"]["format"], "matmulnbits");
  EXPECT_EQ(rf["config"]["bits"], 4);
  EXPECT_EQ(rf["config"]["group_size"], 32) << "not given on the command line: the file's value";
  EXPECT_EQ(count_ops(load_proto(dir_ / "f.onnx"), "MatMulNBits"), 2u);
}

// ---- quantize: failures
// --------------------------------------------------------------------------

using CliEval = CliTest;

TEST_F(CliEval, DevgptQuantizedScoresWhatOnnxRuntimeScores) {
  // Both models run by int4q's executor; ONNX Runtime gave 1.0872612 (fp32) and 1.121702
  // (this int4q model) on the same 64 windows (tests/ort/README.md).
  require_devgpt();
  ASSERT_EQ(run({"quantize", devgpt.string(), "-o", "q.onnx", "--group-size", "32", "--lm-head",
                 "quantize", "-q"})
                .status,
            0);
  const std::string tokens = (devgpt_dir / "devgpt_val.u8").string();
  const result r = run({"eval", devgpt.string(), "q.onnx", "--tokens", tokens, "--json", "-"});
  ASSERT_EQ(r.status, 0) << describe(r);
  const json j = json::parse(r.out);
  EXPECT_NEAR(j["nll_reference"].get<double>(), 1.0872612, 2e-5);
  EXPECT_NEAR(j["nll_candidate"].get<double>(), 1.121702, 2e-5);
  EXPECT_EQ(j["predictions"].get<int>(), 64 * 128);
  EXPECT_GT(j["logits_error"]["max_abs"].get<double>(), 0.0);
  // A model against itself: no loss, no error; the text summary names both numbers.
  const result same = run({"eval", devgpt.string(), devgpt.string(), "--tokens", tokens,
                           "--samples", "2", "--seq-len", "32"});
  ASSERT_EQ(same.status, 0) << describe(same);
  EXPECT_NE(same.out.find("loss       +0.000000 nats/token"), std::string::npos) << same.out;
  EXPECT_NE(same.out.find("max abs 0,"), std::string::npos) << same.out;
}

TEST_F(CliEval, Errors) {
  require_devgpt();
  expect_failure({"eval", devgpt.string(), devgpt.string()}, 2, {"--tokens"});
  expect_failure({"eval", devgpt.string(), "missing.onnx", "--tokens", devgpt.string()}, 3,
                 {"missing.onnx"});
  write_model(small_model(), dir_ / "small.onnx");
  expect_failure({"eval", "small.onnx", "small.onnx", "--tokens", devgpt.string()}, 5,
                 {"small.onnx", "token ids"});
}

TEST_F(CliErrors, MissingInput) {
  expect_failure({"quantize", "nope.onnx", "-o", "out.onnx"}, 3, {"nope.onnx"});
}

TEST_F(CliErrors, NotAnOnnxFile) {
  {
    std::ofstream bad(dir_ / "bad.onnx");
    bad << "this is not a protobuf message at all\n";
  }
  expect_failure({"quantize", "bad.onnx", "-o", "out.onnx"}, 4, {"bad.onnx"});
}

TEST_F(CliErrors, TruncatedModel) {
  require_devgpt();
  const std::string bytes = read_text(devgpt);
  {
    std::ofstream cut(dir_ / "cut.onnx", std::ios::binary);
    cut.write(bytes.data(), static_cast<std::streamsize>(bytes.size() / 2));
  }
  expect_failure({"quantize", "cut.onnx", "-o", "out.onnx"}, 4, {"cut.onnx"});
}

TEST_F(CliErrors, DirectoryAsInput) {
  fs::create_directories(dir_ / "adir");
  expect_failure({"quantize", "adir", "-o", "out.onnx"}, 3, {"adir", "directory"});
}

TEST_F(CliErrors, MissingExternalDataFile) {
  auto m = small_model();
  auto* w = m.mutable_graph()->mutable_initializer(0);
  const std::size_t bytes = w->raw_data().size();
  w->clear_raw_data();
  w->set_data_location(::onnx::TensorProto::EXTERNAL);
  auto* e = w->add_external_data();
  e->set_key("location");
  e->set_value("weights.bin");
  e = w->add_external_data();
  e->set_key("length");
  e->set_value(std::to_string(bytes));
  write_model(m, dir_ / "ext.onnx");
  expect_failure({"quantize", "ext.onnx", "-o", "out.onnx"}, 3, {"weights.bin"});
}

TEST_F(CliErrors, OutputIsTheInput) {
  write_model(small_model(), dir_ / "small.onnx");
  const std::string before = read_text(dir_ / "small.onnx");
  fs::create_directories(dir_ / "sub");
  expect_failure({"quantize", "small.onnx", "-o", "small.onnx", "--group-size", "16"}, 2,
                 {"small.onnx", "-o"});
  expect_failure({"quantize", "small.onnx", "-o", "sub/../small.onnx", "--group-size", "16"}, 2,
                 {"-o"});
  expect_failure(
      {"quantize", (dir_ / "small.onnx").string(), "-o", "./small.onnx", "--group-size", "16"}, 2,
      {"-o"});
  expect_failure(
      {"quantize", "small.onnx", "-o", "out.onnx", "--report", "./out.onnx", "--group-size", "16"},
      2, {"--report"});
  EXPECT_TRUE(read_text(dir_ / "small.onnx") == before) << "the input must be unchanged";
}

TEST_F(CliErrors, UnwritableOutputDirectory) {
  write_model(small_model(), dir_ / "small.onnx");
  expect_failure({"quantize", "small.onnx", "-o", "missing/dir/out.onnx"}, 3, {"missing/dir"});
  {
    std::ofstream file(dir_ / "plainfile");
    file << "x";
  }
  expect_failure({"quantize", "small.onnx", "-o", "plainfile/out.onnx"}, 3, {"plainfile"});
  if (::geteuid() != 0) {  // root writes anywhere: a read-only directory stops only others
    fs::create_directories(dir_ / "ro");
    fs::permissions(dir_ / "ro", fs::perms::owner_read | fs::perms::owner_exec);
    expect_failure({"quantize", "small.onnx", "-o", "ro/out.onnx"}, 3, {"ro"});
    fs::permissions(dir_ / "ro", fs::perms::owner_all);
  }
}

TEST_F(CliErrors, GroupSizeMatMulNBitsCannotHold) {
  write_model(small_model(), dir_ / "small.onnx");
  expect_failure({"quantize", "small.onnx", "-o", "out.onnx", "--group-size", "48"}, 2,
                 {"--group-size 48", "MatMulNBits"});
  expect_failure({"quantize", "small.onnx", "-o", "out.onnx", "--group-size", "0"}, 2,
                 {"--group-size"});
  expect_failure({"quantize", "small.onnx", "-o", "out.onnx", "--group-size", "abc"}, 2,
                 {"--group-size"});
  // The same group size is fine where the format can hold it.
  EXPECT_EQ(run({"quantize", "small.onnx", "-o", "fake.onnx", "--group-size", "48", "--format",
                 "fake", "-q"})
                .status,
            0);
}

TEST_F(CliErrors, BitsTheFormatCannotHold) {
  write_model(small_model(), dir_ / "small.onnx");
  expect_failure({"quantize", "small.onnx", "-o", "out.onnx", "--bits", "3"}, 2,
                 {"--bits 3", "MatMulNBits"});
  expect_failure({"quantize", "small.onnx", "-o", "out.onnx", "--bits", "2", "--format", "qdq"}, 2,
                 {"--bits 2"});
  expect_failure({"quantize", "small.onnx", "-o", "out.onnx", "--bits", "9"}, 2, {"--bits"});
}

TEST_F(CliErrors, AccuracyLevelNeedsMatMulNBits) {
  write_model(small_model(), dir_ / "small.onnx");
  expect_failure({"quantize", "small.onnx", "-o", "out.onnx", "--format", "qdq", "--accuracy-level",
                  "4", "--group-size", "16"},
                 2, {"--accuracy-level"});
  expect_failure({"quantize", "small.onnx", "-o", "out.onnx", "--accuracy-level", "7"}, 2,
                 {"--accuracy-level"});
}

TEST_F(CliErrors, UsageErrors) {
  write_model(small_model(), dir_ / "small.onnx");
  expect_failure({"quantize", "small.onnx", "-o", "out.onnx", "--frobnicate"}, 2, {"--frobnicate"});
  expect_failure({"quantize", "small.onnx"}, 2, {"--output"});
  expect_failure({"quantize", "small.onnx", "-o", "out.onnx", "--scheme", "wobbly"}, 2,
                 {"--scheme", "wobbly"});
  expect_failure({"quantize", "small.onnx", "-o", "out.onnx", "--format", "gguf"}, 2, {"gguf"});
  expect_failure({"quantize", "small.onnx", "-o", "out.onnx", "--include", "(unclosed"}, 2,
                 {"--include", "(unclosed"});
  expect_failure(
      {"quantize", "small.onnx", "-o", "out.onnx", "--preset", "ort", "--rounding", "half-even"}, 2,
      {"--rounding", "--preset ort"});
  expect_failure({"frobnicate"}, 2, {"frobnicate"});
  expect_failure({}, 2, {"subcommand"});
}

TEST_F(CliErrors, MethodsOfLaterVersions) {
  write_model(small_model(), dir_ / "small.onnx");
  expect_failure({"quantize", "small.onnx", "-o", "out.onnx", "--method", "hqq"}, 2,
                 {"hqq", "later version"});
  expect_failure({"quantize", "small.onnx", "-o", "out.onnx", "--method", "awq-magic"}, 2,
                 {"awq-magic", "unknown", "awq_full"});
  expect_failure({"quantize", "small.onnx", "-o", "out.onnx", "--method", "magic"}, 2, {"magic"});
}

TEST_F(CliErrors, ModelFormTheFormatCannotHold) {
  // Opset 10 with a Resize: raising the opset to 21 (DequantizeLinear with INT4) would change its
  // meaning, so --format qdq refuses (5) and names the way out; MatMulNBits needs no opset change.
  int4q::test::graph_builder g(10);
  g.input("x", int4q::test::onnx_float, {1, 64});
  g.initializer("w", int4q::test::onnx_float, {64, 32}, int4q::test::random_values(64 * 32, 4));
  g.initializer("scales", int4q::test::onnx_float, {2}, {1.0f, 2.0f});
  g.matmul("mm", "x", "w", "h");
  g.node("Resize", {"h", "scales"}, {"y"}, "resize");
  g.output("y", int4q::test::onnx_float, {1, 64});
  write_model(g.build(), dir_ / "old.onnx");
  {
    std::ofstream previous(dir_ / "out.onnx");
    previous << "a previous output";
  }
  expect_failure(
      {"quantize", "old.onnx", "-o", "out.onnx", "--format", "qdq", "--group-size", "32"}, 5,
      {"Resize", "matmulnbits"});
  const result r = run({"quantize", "old.onnx", "-o", "out.onnx", "--group-size", "32", "-q"});
  EXPECT_EQ(r.status, 0) << describe(r);
}

TEST_F(CliErrors, NonFiniteWeight) {
  int4q::test::graph_builder g;
  std::vector<float> w = int4q::test::random_values(64 * 32, 5);
  w[100] = std::numeric_limits<float>::quiet_NaN();
  g.input("x", int4q::test::onnx_float, {-1, 64});
  g.initializer("w_nan", int4q::test::onnx_float, {64, 32}, w);
  g.matmul("mm", "x", "w_nan", "h");
  g.node("Relu", {"h"}, {"y"}, "relu");
  g.output("y", int4q::test::onnx_float, {-1, 32});
  write_model(g.build(), dir_ / "nan.onnx");
  expect_failure(
      {"quantize", "nan.onnx", "-o", "out.onnx", "--group-size", "32", "--lm-head", "quantize"}, 4,
      {"w_nan", "NaN"});
  // The scratch file of --spill goes too.
  expect_failure({"quantize", "nan.onnx", "-o", "out.onnx", "--group-size", "32", "--lm-head",
                  "quantize", "--spill", "always"},
                 4, {"w_nan", "NaN"});
}

TEST_F(CliErrors, BadConfigFile) {
  write_model(small_model(), dir_ / "small.onnx");
  {
    std::ofstream cfg(dir_ / "bad.json");
    cfg << "{\n  \"overrides\": [\n    {\"match\": \"mm0\",, \"bits\": 8}\n  ]\n}\n";
  }
  expect_failure({"quantize", "small.onnx", "-o", "out.onnx", "--config", "bad.json"}, 2,
                 {"bad.json", "line 3"});
  expect_failure({"quantize", "small.onnx", "-o", "out.onnx", "--config", "absent.json"}, 3,
                 {"absent.json"});
  {
    std::ofstream cfg(dir_ / "key.json");
    cfg << R"({"bits": "four"})";
  }
  expect_failure({"quantize", "small.onnx", "-o", "out.onnx", "--config", "key.json"}, 2,
                 {"key.json", "bits"});
  {
    std::ofstream cfg(dir_ / "override.json");
    cfg << R"({"overrides": [{"match": "mm0", "group_size": 48}]})";
  }
  expect_failure({"quantize", "small.onnx", "-o", "out.onnx", "--config", "override.json"}, 2,
                 {"override.json", "mm0", "--group-size 48", "MatMulNBits"});
}

// ---- inspect ------------------------------------------------------------------------------------

TEST_F(CliInspect, DevgptText) {
  require_devgpt();
  const result r = run({"inspect", devgpt.string()});
  ASSERT_EQ(r.status, 0) << describe(r);
  EXPECT_EQ(r.err, "");
  for (const char* expected :
       {"ir_version", "ai.onnx 17", "input_ids", "int64", "logits", "float32",
        "MatMul/Gemm nodes: 25, 17 with a quantizable weight", "lm_head", "no: "}) {
    EXPECT_NE(r.out.find(expected), std::string::npos) << expected << "\n" << r.out;
  }
}

TEST_F(CliInspect, DevgptJson) {
  require_devgpt();
  const result r = run({"inspect", devgpt.string(), "--json"});
  ASSERT_EQ(r.status, 0) << describe(r);
  const json d = json::parse(r.out);
  EXPECT_EQ(d["summary"]["matmul_gemm_nodes"].get<int>(), 25);
  EXPECT_EQ(d["summary"]["quantizable_nodes"].get<int>(), 17);
  EXPECT_EQ(d["summary"]["quantizable_weights"].get<int>(), 17);
  EXPECT_EQ(d["summary"]["quantizable_parameters"].get<std::uint64_t>(),
            4u * (256 * 768 + 256 * 256 + 256 * 1024 + 1024 * 256) + 256 * 256);
  EXPECT_EQ(d["file_bytes"].get<std::uint64_t>(), fs::file_size(devgpt));
  EXPECT_EQ(d["external_data_bytes"].get<std::uint64_t>(), 0u);
  ASSERT_EQ(d["nodes"].size(), 25u);
  std::size_t not_quantizable = 0, lm_heads = 0;
  for (const auto& n : d["nodes"]) {
    EXPECT_EQ(n["op_type"].get<std::string>(), "MatMul");
    if (!n["quantizable"].get<bool>()) {
      ++not_quantizable;
      EXPECT_FALSE(n["reason"].get<std::string>().empty()) << n.dump();
    } else {
      EXPECT_GT(n["k"].get<int>(), 0);
      EXPECT_EQ(n["dtype"].get<std::string>(), "float32");
    }
    if (n["lm_head"].get<bool>()) {
      ++lm_heads;
      EXPECT_EQ(n["k"].get<int>(), 256);
      EXPECT_EQ(n["n"].get<int>(), 256);
    }
  }
  EXPECT_EQ(not_quantizable, 8u);
  EXPECT_EQ(lm_heads, 1u);
  ASSERT_EQ(d["inputs"].size(), 1u);
  EXPECT_EQ(d["inputs"][0]["name"], "input_ids");
  EXPECT_EQ(d["inputs"][0]["dtype"], "int64");
}

TEST_F(CliInspect, SmallModelWithGemm) {
  write_model(small_model(), dir_ / "small.onnx");
  const result r = run({"inspect", "small.onnx", "--json"});
  ASSERT_EQ(r.status, 0) << describe(r);
  const json d = json::parse(r.out);
  ASSERT_EQ(d["nodes"].size(), 2u);
  EXPECT_EQ(d["nodes"][1]["op_type"], "Gemm");
  EXPECT_EQ(d["nodes"][1]["k"].get<int>(), 32);
  EXPECT_EQ(d["nodes"][1]["n"].get<int>(), 48);
  EXPECT_TRUE(d["nodes"][1]["trans_b"].get<bool>());
}

TEST_F(CliInspect, Failures) {
  expect_failure({"inspect", "nope.onnx"}, 3, {"nope.onnx"});
  {
    std::ofstream bad(dir_ / "bad.onnx");
    bad << "garbage";
  }
  expect_failure({"inspect", "bad.onnx"}, 4, {"bad.onnx"});
}

// ---- --version and --help
// ------------------------------------------------------------------------

TEST_F(CliInfo, VersionNamesDependencies) {
  const result r = run({"--version"});
  ASSERT_EQ(r.status, 0) << describe(r);
  EXPECT_EQ(r.out.rfind(std::string("int4q ") + INT4Q_VERSION_STRING + "\n", 0), 0u) << r.out;
  for (const char* dep :
       {"protobuf", "onnx", "xtensor", "xsimd", "BLAS", "nlohmann_json", "CLI11"}) {
    EXPECT_NE(r.out.find(dep), std::string::npos) << dep << "\n" << r.out;
  }
  EXPECT_NE(r.out.find("protobuf       3."), std::string::npos) << r.out;
}

TEST_F(CliInfo, HelpForEachSubcommand) {
  const result top = run({"--help"});
  ASSERT_EQ(top.status, 0) << describe(top);
  for (const char* s : {"quantize", "inspect", "Exit codes", "--version"}) {
    EXPECT_NE(top.out.find(s), std::string::npos) << s << "\n" << top.out;
  }
  const result q = run({"quantize", "--help"});
  ASSERT_EQ(q.status, 0) << describe(q);
  for (const char* s :
       {"--format", "--bits", "--group-size", "--scheme", "--rounding", "--method", "--preset",
        "--include", "--exclude", "--config", "--lm-head", "--accuracy-level", "--external-data",
        "--report", "--threads", "--quiet", "Exit codes"}) {
    EXPECT_NE(q.out.find(s), std::string::npos) << s << "\n" << q.out;
  }
  const result i = run({"inspect", "--help"});
  ASSERT_EQ(i.status, 0) << describe(i);
  EXPECT_NE(i.out.find("--json"), std::string::npos) << i.out;
}

}  // namespace
