// The options of `int4q quantize`, `eval` and `inspect`, run as a process (INT4Q_CLI_PATH) in a
// temporary directory, on models and data made here: every numeric option refuses values below and
// above its range, NaN and Inf with exit 2 and one line naming the option, the value and the range
// (the same words for a --config or --plan file); --threads; requests the data or the memory cannot
// serve (--calib-samples); outputs that are FIFOs or devices and inputs that are pipes; and the
// small bugs of issue 13 (act-order with per-channel, eval's output shape, --auto's timing, a
// flat .pb folder's sample count, --help's flag defaults).
#include <sys/stat.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <onnx/onnx_pb.h>
#include <nlohmann/json.hpp>

#include "onnx/cli_runner.hpp"
#include "onnx/graph_builder.hpp"
#include "onnx/scratch_dir.hpp"

namespace {

namespace fs = std::filesystem;
using int4q::test::cli_result;
using int4q::test::describe;
using int4q::test::read_text;
using int4q::test::run_cli;
using nlohmann::json;

void write_model(const ::onnx::ModelProto& m, const fs::path& p) {
  std::ofstream out(p, std::ios::binary);
  ASSERT_TRUE(m.SerializeToOstream(&out)) << p;
}

void write_file(const fs::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary);
  out << bytes;
  ASSERT_TRUE(out.good()) << p;
}

/// x[*, 64] -MatMul(w0[64, 32])-> h -MatMul(w1[32, 48])-> y[*, 48].
::onnx::ModelProto mlp_model() {
  int4q::test::graph_builder g;
  g.input("x", int4q::test::onnx_float, {-1, 64});
  g.initializer("w0", int4q::test::onnx_float, {64, 32}, int4q::test::random_values(64 * 32, 1));
  g.initializer("w1", int4q::test::onnx_float, {32, 48}, int4q::test::random_values(32 * 48, 2));
  g.matmul("mm0", "x", "w0", "h");
  g.matmul("mm1", "h", "w1", "y");
  g.output("y", int4q::test::onnx_float, {-1, 48});
  return g.build();
}

/// A language model: input_ids[batch, seq] -Gather(emb[32, 64])-> MatMul(w[64, 64]) ->
/// MatMul(head[64, 32]) -> logits[batch, seq, 32]. Token files of bytes < 32 feed it.
::onnx::ModelProto lm_model() {
  int4q::test::graph_builder g;
  g.input("input_ids", int4q::test::onnx_int64, {-1, -1});
  g.initializer("emb", int4q::test::onnx_float, {32, 64}, int4q::test::random_values(32 * 64, 3));
  g.initializer("w", int4q::test::onnx_float, {64, 64}, int4q::test::random_values(64 * 64, 4));
  g.initializer("head", int4q::test::onnx_float, {64, 32}, int4q::test::random_values(64 * 32, 5));
  g.node("Gather", {"emb", "input_ids"}, {"e"}, "gather");
  g.matmul("mm", "e", "w", "h");
  g.matmul("lm_head", "h", "head", "logits");
  g.output("logits", int4q::test::onnx_float, {-1, -1, 32});
  return g.build();
}

/// `n` tokens 0..31, one byte each.
std::string token_bytes(std::size_t n) {
  std::string t(n, '\0');
  for (std::size_t k = 0; k < n; ++k) t[k] = static_cast<char>((k * 7 + k / 5) % 32);
  return t;
}

/// A version 1.0 .npy of float32 `shape` (2-D) with values from `seed`.
std::string npy_f32(std::int64_t rows, std::int64_t cols, std::uint32_t seed) {
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" +
                       std::to_string(rows) + ", " + std::to_string(cols) + "), }";
  while ((10 + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  std::string out("\x93NUMPY\x01\x00", 8);
  out += static_cast<char>(header.size() & 0xFF);
  out += static_cast<char>(header.size() >> 8);
  out += header;
  const auto v = int4q::test::random_values(static_cast<std::size_t>(rows * cols), seed);
  out.append(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
  return out;
}

std::set<std::string> listing(const fs::path& dir) {
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.insert(e.path().filename().string());
  return names;
}

class CliOptions : public int4q::test::scratch_dir_test {
 protected:
  void SetUp() override {
    scratch_dir_test::SetUp();
    write_model(mlp_model(), dir_ / "mlp.onnx");
    write_model(lm_model(), dir_ / "lm.onnx");
    write_file(dir_ / "tokens.u8", token_bytes(1000));
  }
  cli_result run(const std::vector<std::string>& args) { return run_cli(dir_, args); }
  /// Exit `status`, one "int4q: error:" line holding each of `mentions`, no file left behind.
  cli_result expect_failure(const std::vector<std::string>& args, int status,
                            const std::vector<std::string>& mentions) {
    const auto before = listing(dir_);
    const cli_result r = run(args);
    std::string line;
    for (const auto& a : args) line += " " + a;
    EXPECT_EQ(r.status, status) << "int4q" << line << "\n" << describe(r);
    EXPECT_EQ(r.err.rfind("int4q: error: ", 0), 0u) << "int4q" << line << "\n" << describe(r);
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << "one line: " << describe(r);
    for (const auto& m : mentions)
      EXPECT_NE(r.err.find(m), std::string::npos) << "int4q" << line << ": " << m << "\n"
                                                  << describe(r);
    // Never CLI11's own range text ("Value 0 not in range 0.000000 to 1797...").
    EXPECT_EQ(r.err.find("not in range"), std::string::npos) << describe(r);
    EXPECT_EQ(r.err.find("1797693"), std::string::npos) << describe(r);
    EXPECT_EQ(listing(dir_), before) << "int4q" << line << ": a failed run must leave no file";
    return r;
  }
};

// ---- Numeric options: one table -----------------------------------------------------------------

struct numeric_option {
  const char* command;  ///< "quantize" or "eval"
  const char* flag;
  const char* range;  ///< the words of the message after "must be "
  std::vector<std::string> bad;
};

/// Every numeric option of quantize and eval (inspect has none), with values below and above its
/// range, NaN and Inf. `int4q CMD --help` must list no numeric option missing here
/// (EveryNumericOptionOfHelpIsInTheTable).
const std::vector<numeric_option>& numeric_options() {
  const std::string huge = "99999999999999999999";  // past int64
  static const std::vector<numeric_option> table = {
      {"quantize", "--bits", "an integer from 2 to 8", {"1", "9", "nan", "inf", "4.5", "-3"}},
      {"quantize",
       "--group-size",
       "an integer >= 1 or per-channel",
       {"0", huge, "nan", "inf", "-32", "32x"}},
      {"quantize",
       "--calib-samples",
       "an integer >= 0 (all of a data file)",
       {"-1", huge, "nan", "inf", "1e3"}},
      {"quantize", "--calib-seq-len", "an integer >= 1", {"0", huge, "nan", "inf", "-128"}},
      {"quantize", "--calib-batch", "an integer >= 1", {"0", huge, "nan", "inf", "-8"}},
      {"quantize",
       "--calib-memory",
       "a size in bytes, such as 1000, 512M or 4G",
       {"-1", huge, "nan", "inf", "1.5G", "4X", "4GG", "20000000000000000G", "G"}},
      {"quantize", "--gptq-block", "an integer >= 1", {"0", huge, "nan", "inf"}},
      {"quantize", "--damp", "a number > 0", {"0", "-0.01", "1e400", "nan", "inf", "-inf"}},
      {"quantize", "--awq-alpha-step", "a number in (0, 1]", {"0", "1.5", "nan", "inf", "-0.1"}},
      {"quantize", "--awq-clip-step", "a number in (0, 1]", {"0", "2", "nan", "inf"}},
      {"quantize", "--awq-clip-min", "a number in (0, 1]", {"0", "1.01", "nan", "inf", "NaN"}},
      {"quantize", "--awq-samples", "an integer >= 1", {"0", huge, "nan", "inf"}},
      {"quantize", "--block-iters", "an integer >= 1", {"0", huge, "nan", "inf", "-200"}},
      {"quantize", "--block-lr", "a number >= 0", {"-0.01", "1e400", "nan", "inf", "-inf"}},
      {"quantize", "--effective-bits", "a number in (0, 64]", {"0", "65", "nan", "inf", "1e400"}},
      {"quantize", "--accuracy-level", "an integer from 0 to 4", {"-1", "5", "nan", "inf"}},
      {"quantize",
       "--threads",
       "an integer from 0 (all cores) to 1024",
       {"-1", "-5", "1025", "100000", huge, "nan", "inf"}},
      {"eval", "--seq-len", "an integer >= 1", {"0", huge, "nan", "inf"}},
      {"eval", "--samples", "an integer >= 0 (all of a data file)", {"-1", huge, "nan", "inf"}},
  };
  return table;
}

TEST_F(CliOptions, EveryNumericOptionRefusesOutOfRangeNanAndInf) {
  std::size_t cases = 0;
  for (const auto& o : numeric_options()) {
    for (const auto& v : o.bad) {
      std::vector<std::string> args =
          std::string(o.command) == "quantize"
              ? std::vector<std::string>{"quantize", "mlp.onnx", "-o", "out.onnx"}
              : std::vector<std::string>{"eval", "mlp.onnx", "mlp.onnx"};
      // "--flag=VALUE": a value starting with '-' is not read as another option.
      args.push_back(std::string(o.flag) + "=" + v);
      expect_failure(args, 2,
                     {std::string(o.flag) + " " + v + ": must be " + o.range,
                      std::string("int4q ") + o.command + " --help"});
      ++cases;
    }
  }
  EXPECT_GE(cases, 64u);
}

TEST_F(CliOptions, NegativeValuesAsSeparateArguments) {
  // "--threads -1" (two arguments) is read as the value -1 and refused, not taken as an option.
  expect_failure({"quantize", "mlp.onnx", "-o", "out.onnx", "--threads", "-1"}, 2,
                 {"--threads -1: must be an integer from 0 (all cores) to 1024"});
  expect_failure({"quantize", "mlp.onnx", "-o", "out.onnx", "--damp", "-0.5"}, 2,
                 {"--damp -0.5: must be a number > 0"});
}

TEST_F(CliOptions, ValuesAtTheEndsOfTheRangesAreAccepted) {
  for (const std::vector<std::string>& extra :
       {std::vector<std::string>{"--threads", "0", "--group-size", "32"},
        {"--threads", "1024", "--group-size", "32"},
        {"--bits", "8", "--group-size", "16"},
        {"--awq-clip-min", "1", "--awq-alpha-step", "1", "--awq-clip-step", "1", "--group-size",
         "32", "--method", "awq_full"},
        {"--damp", "1e-9", "--gptq-block", "1", "--calib-batch", "1", "--group-size", "32",
         "--method", "gptq"},
        {"--accuracy-level", "4", "--group-size", "32", "--effective-bits", "64", "--auto"}}) {
    std::vector<std::string> args = {"quantize", "mlp.onnx", "-o", "out.onnx", "-q"};
    args.insert(args.end(), extra.begin(), extra.end());
    const cli_result r = run(args);
    EXPECT_EQ(r.status, 0) << describe(r);
    EXPECT_TRUE(fs::exists(dir_ / "out.onnx"));
    fs::remove(dir_ / "out.onnx");
  }
}

/// The options --help lists with a value (type N, X, B, SIZE, or a numeric range in the help text)
/// are all in the table: a new numeric option without a range check fails here.
TEST_F(CliOptions, EveryNumericOptionOfHelpIsInTheTable) {
  for (const std::string command : {"quantize", "eval", "inspect"}) {
    const cli_result r = run({command, "--help"});
    ASSERT_EQ(r.status, 0) << describe(r);
    const std::regex numeric(R"((--[a-z0-9-]+) (N|X|B|SIZE)\b)");
    std::set<std::string> listed;
    for (auto it = std::sregex_iterator(r.out.begin(), r.out.end(), numeric);
         it != std::sregex_iterator(); ++it)
      listed.insert((*it)[1].str());
    for (const auto& o : numeric_options()) {
      if (command == o.command) {
        EXPECT_EQ(listed.erase(o.flag), 1u) << o.flag << "\n" << r.out;
      }
    }
    // --group-size takes N|per-channel; it is in the table but listed as "N|per-channel".
    listed.erase("--group-size");
    EXPECT_TRUE(listed.empty()) << command
                                << ": numeric options without a table entry: " << *listed.begin();
    if (command == "quantize") {
      EXPECT_NE(r.out.find("--bits N"), std::string::npos) << r.out;
    }
  }
}

TEST_F(CliOptions, ConfigAndPlanFilesAreCheckedWithTheSameWords) {
  write_file(dir_ / "bits.json", R"({"bits": 9})");
  expect_failure({"quantize", "mlp.onnx", "-o", "out.onnx", "--config", "bits.json"}, 2,
                 {"--config file 'bits.json': \"bits\" 9: must be an integer from 2 to 8"});
  write_file(dir_ / "group.json", R"({"overrides": [{"match": "mm0", "group_size": 0}]})");
  expect_failure(
      {"quantize", "mlp.onnx", "-o", "out.onnx", "--config", "group.json"}, 2,
      {"--config file 'group.json': \"overrides[0].group_size\" 0: must be an integer >= 1"});
  write_file(dir_ / "level.json", R"({"accuracy_level": 7})");
  expect_failure({"quantize", "mlp.onnx", "-o", "out.onnx", "--config", "level.json"}, 2,
                 {"'level.json'", "\"accuracy_level\" 7: must be an integer from 0 to 4"});

  // --plan: the file and the field are named, never "--config file"; exit 2 like --config.
  const std::string good =
      R"({"int4q_plan": 1, "format": "matmulnbits", "budget_effective_bits": 4.5, "weights": [)"
      R"({"weight": "w0", "choice": "int4-g32", "k": 64, "n": 32, "bits": 9216}]})";
  write_file(dir_ / "plan.json", good);
  {
    const cli_result r = run({"quantize", "mlp.onnx", "-o", "out.onnx", "--plan", "plan.json"});
    EXPECT_EQ(r.status, 0) << describe(r);
    fs::remove(dir_ / "out.onnx");
  }
  auto bad_plan = [&](const std::string& text, const std::vector<std::string>& mentions) {
    write_file(dir_ / "bad_plan.json", text);
    std::vector<std::string> m = {"--plan file 'bad_plan.json'"};
    m.insert(m.end(), mentions.begin(), mentions.end());
    const cli_result r =
        expect_failure({"quantize", "mlp.onnx", "-o", "out.onnx", "--plan", "bad_plan.json"}, 2, m);
    EXPECT_EQ(r.err.find("--config"), std::string::npos) << describe(r);
    fs::remove(dir_ / "bad_plan.json");
  };
  bad_plan(R"({"weights": 3})", {"\"weights\" array"});
  bad_plan(R"({"budget_effective_bits": "x", "weights": []})",
           {"\"budget_effective_bits\" \"x\": must be a number in (0, 64]"});
  bad_plan(R"({"budget_effective_bits": -1, "weights": []})",
           {"\"budget_effective_bits\" -1: must be a number in (0, 64]"});
  bad_plan(R"({"weights": [{"weight": "w0", "choice": "int4-g32", "k": -3}]})",
           {"weights[0]", "\"k\" -3: must be an integer from 0 to"});
  bad_plan(R"({"weights": [{"weight": "w0", "choice": "int4-g48"}]})", {"weights[0]"});
  bad_plan(R"({"weights": [{"weight": "w0", "choice": "int9-g32"}]})", {"weights[0]"});
  bad_plan(R"({"weights": [{"weight": "nope", "choice": "int4-g32"}]})",
           {"weights[0]", "'nope'", "not a quantizable weight"});
  // A plan whose group the format cannot hold names the plan entry, not a config override.
  bad_plan(R"({"weights": [{"weight": "w0", "choice": "int4-g8"}]})",
           {"weights[0] ('w0')", "MatMulNBits"});
  bad_plan("{\"weights\": [\n", {"not valid JSON", "line 2"});
}

// ---- --threads ----------------------------------------------------------------------------------

TEST_F(CliOptions, ThreadsZeroIsAllCoresAndTheBoundIsDocumented) {
  const cli_result r = run({"quantize", "--help"});
  EXPECT_NE(r.out.find("--threads N=0"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("(range: 0 to 1024, 0 = all cores)"), std::string::npos) << r.out;
  const cli_result ok =
      run({"quantize", "mlp.onnx", "-o", "out.onnx", "-q", "--group-size", "32", "--threads", "0"});
  EXPECT_EQ(ok.status, 0) << describe(ok);
}

// ---- Requests the data or the machine cannot serve ----------------------------------------------

TEST_F(CliOptions, CalibSamplesBeyondTheTokenFileFailAtOnce) {
  // 1000 tokens hold 1000 - 128 + 1 = 873 distinct windows of 128 tokens.
  const auto r = expect_failure(
      {"quantize", "lm.onnx", "-o", "out.onnx", "--method", "gptq", "--calib", "tokens.u8",
       "--calib-samples", "1000000000000", "--lm-head", "quantize", "--group-size", "32"},
      2,
      {"--calib-samples 1000000000000", "'tokens.u8' holds 1000 tokens",
       "873 distinct windows of 128 tokens", "--calib-samples 873 or less"});
  // Other windows: --calib-seq-len 990 gives 11.
  expect_failure({"quantize", "lm.onnx", "-o", "out.onnx", "--method", "gptq", "--calib",
                  "tokens.u8", "--calib-samples", "12", "--calib-seq-len", "990"},
                 2, {"--calib-samples 12", "11 distinct windows", "--calib-samples 11 or less"});
  // The limit itself is accepted.
  const cli_result ok =
      run({"quantize", "lm.onnx", "-o", "out.onnx", "--method", "gptq", "--calib", "tokens.u8",
           "--calib-samples", "11", "--calib-seq-len", "990", "--group-size", "32", "-q"});
  EXPECT_EQ(ok.status, 0) << describe(ok);
  // Too short a file for one window stays an error of the data naming the file (exit 4).
  write_file(dir_ / "short.u8", token_bytes(10));
  expect_failure(
      {"quantize", "lm.onnx", "-o", "out2.onnx", "--method", "gptq", "--calib", "short.u8"}, 4,
      {"short.u8", "10 tokens"});
  // 0 samples is "all" for data files only.
  expect_failure({"quantize", "lm.onnx", "-o", "out2.onnx", "--method", "gptq", "--calib",
                  "tokens.u8", "--calib-samples", "0"},
                 2, {"--calib-samples 0", "token file"});
}

TEST_F(CliOptions, DefaultSampleCountIsCutToTheDistinctWindows) {
  // 140 tokens: 13 windows of 128, fewer than the default 64: all 13 are used, no error.
  write_file(dir_ / "small.u8", token_bytes(140));
  const cli_result r = run({"quantize", "lm.onnx", "-o", "out.onnx", "--method", "gptq", "--calib",
                            "small.u8", "--group-size", "32", "--report", "-", "-q"});
  ASSERT_EQ(r.status, 0) << describe(r);
  const json j = json::parse(r.out);
  EXPECT_EQ(j["tensors"][0]["calibration_rows"].get<std::size_t>(), 13u * 128u) << r.out;
}

TEST_F(CliOptions, CalibSamplesBeyondTheNpyRows) {
  write_file(dir_ / "x.npy", npy_f32(12, 64, 7));
  expect_failure({"quantize", "mlp.onnx", "-o", "out.onnx", "--method", "gptq", "--calib", "x.npy",
                  "--calib-samples", "13", "--group-size", "32"},
                 2, {"--calib-samples 13", "'x.npy' holds 12 samples", "--calib-samples 12"});
  expect_failure({"eval", "mlp.onnx", "mlp.onnx", "--data", "x.npy", "--samples", "20"}, 2,
                 {"--samples 20", "'x.npy' holds 12 samples"});
  const cli_result ok =
      run({"eval", "mlp.onnx", "mlp.onnx", "--data", "x.npy", "--samples", "12", "--json", "-"});
  ASSERT_EQ(ok.status, 0) << describe(ok);
  EXPECT_EQ(json::parse(ok.out)["samples"].get<std::size_t>(), 12u);
}

TEST_F(CliOptions, EvalSamplesBeyondTheTokenFile) {
  // Windows of --seq-len + 1 = 129 tokens: 1000 - 129 + 1 = 872 of them.
  expect_failure({"eval", "lm.onnx", "lm.onnx", "--tokens", "tokens.u8", "--samples", "873"}, 2,
                 {"--samples 873", "872 distinct windows", "--samples 872 or less"});
  expect_failure({"eval", "lm.onnx", "lm.onnx", "--tokens", "tokens.u8", "--samples", "11",
                  "--seq-len", "990"},
                 2, {"--samples 11", "10 distinct windows", "--samples 10 or less"});
  expect_failure({"eval", "lm.onnx", "lm.onnx", "--tokens", "tokens.u8", "--seq-len", "1000"}, 2,
                 {"--seq-len 1000", "1000 tokens"});
  const cli_result ok = run({"eval", "lm.onnx", "lm.onnx", "--tokens", "tokens.u8", "--samples",
                             "10", "--seq-len", "990", "--json", "-"});
  ASSERT_EQ(ok.status, 0) << describe(ok);
  EXPECT_EQ(json::parse(ok.out)["windows"].get<std::size_t>(), 10u);
}

TEST_F(CliOptions, CalibSamplesBeyondMemoryFailAtOnce) {
  // Random inputs have no count limit of their own; sequential calibration would hold 10^12
  // samples x 128 rows x 64 values x 4 bytes (34 PB), more than --calib-memory plus the disk
  // for its scratch file: refused before any work, naming the way out. Parallel mode holds one
  // batch at a time and is not limited by memory.
  expect_failure(
      {"quantize", "lm.onnx", "-o", "out.onnx", "--method", "gptq", "--calib-samples",
       "1000000000000"},
      2,
      {"--calib-samples 1000000000000", "memory", "--calib-mode parallel", "128 rows x 64 values"});
}

// ---- Inputs that are not files, outputs that are not regular files ------------------------------

TEST_F(CliOptions, FifoAndDeviceOutputsAreRefusedBeforeAnyWork) {
  ASSERT_EQ(::mkfifo((dir_ / "out.fifo").c_str(), 0600), 0);
  expect_failure({"quantize", "mlp.onnx", "-o", "out.fifo"}, 3,
                 {"-o 'out.fifo'", "FIFO", "regular file"});
  expect_failure({"quantize", "mlp.onnx", "-o", "/dev/null"}, 3,
                 {"-o '/dev/null'", "character device", "regular file"});
  expect_failure({"quantize", "mlp.onnx", "-o", "out.onnx", "--report", "out.fifo"}, 3,
                 {"--report 'out.fifo'", "FIFO", "regular file", "- for stdout"});
  expect_failure({"quantize", "mlp.onnx", "-o", "out.onnx", "--report", "/dev/zero"}, 3,
                 {"--report '/dev/zero'", "regular file"});
  expect_failure({"quantize", "lm.onnx", "-o", "out.onnx", "--auto", "--effective-bits", "4.5",
                  "--calib", "tokens.u8", "--plan-out", "/dev/null"},
                 3, {"--plan-out '/dev/null'", "character device"});
  expect_failure({"quantize", "mlp.onnx", "-o", "-"}, 2, {"-o -", "stdout"});
  expect_failure({"eval", "mlp.onnx", "mlp.onnx", "--json", "out.fifo"}, 3,
                 {"--json 'out.fifo'", "FIFO", "regular file"});
  expect_failure({"eval", "mlp.onnx", "mlp.onnx", "--json", "/dev/null"}, 3,
                 {"--json '/dev/null'", "character device"});
  // --report - and --json - stay stdout.
  const cli_result r =
      run({"quantize", "mlp.onnx", "-o", "out.onnx", "--group-size", "32", "--report", "-"});
  ASSERT_EQ(r.status, 0) << describe(r);
  EXPECT_TRUE(json::accept(r.out)) << r.out;
  EXPECT_EQ(fs::status(dir_ / "out.fifo").type(), fs::file_type::fifo) << "the FIFO is kept";
}

TEST_F(CliOptions, PipesAndStdinAsInputsAreRefusedClearly) {
  ASSERT_EQ(::mkfifo((dir_ / "in.fifo").c_str(), 0600), 0);
  // Not opened (which would wait for a writer): refused from its type.
  expect_failure({"quantize", "in.fifo", "-o", "out.onnx"}, 3,
                 {"input model 'in.fifo'", "FIFO", "not a regular file"});
  expect_failure({"inspect", "in.fifo"}, 3, {"'in.fifo'", "not a regular file"});
  // The runner's stdin is /dev/null: /dev/stdin is a character device here.
  expect_failure({"quantize", "/dev/stdin", "-o", "out.onnx"}, 3,
                 {"'/dev/stdin'", "not a regular file"});
  expect_failure({"quantize", "-", "-o", "out.onnx"}, 3, {"'-'", "stdin"});
  expect_failure({"eval", "mlp.onnx", "-", "--data", "x"}, 3, {"candidate model '-'", "stdin"});
  expect_failure({"quantize", "mlp.onnx", "-o", "out.onnx", "--config", "in.fifo"}, 3,
                 {"'in.fifo'", "not a regular file"});
  expect_failure(
      {"quantize", "lm.onnx", "-o", "out.onnx", "--method", "gptq", "--calib", "in.fifo"}, 3,
      {"'in.fifo'", "not a regular file"});
  expect_failure({"quantize", "lm.onnx", "-o", "out.onnx", "--method", "gptq", "--calib", "-"}, 3,
                 {"'-'", "stdin"});
}

// ---- Issue 13, "Also found" ---------------------------------------------------------------------

// 1. --act-order with groups needs --static-groups, checked once on the merged settings.
TEST_F(CliOptions, ActOrderCheckRunsAfterCommandLineAndConfigAreMerged) {
  // Per-channel on the command line: no groups, so --no-static-groups is fine (it was refused
  // because the check ran before --group-size was applied).
  const cli_result ok =
      run({"quantize", "mlp.onnx", "-o", "out.onnx", "--format", "qdq", "--group-size",
           "per-channel", "--method", "gptq", "--no-static-groups", "-q"});
  EXPECT_EQ(ok.status, 0) << describe(ok);
  fs::remove(dir_ / "out.onnx");
  // The same through --config.
  write_file(dir_ / "pc.json", R"({"group_size": "per_channel", "format": "qdq"})");
  const cli_result ok2 = run({"quantize", "mlp.onnx", "-o", "out.onnx", "--config", "pc.json",
                              "--method", "gptq", "--no-static-groups", "-q"});
  EXPECT_EQ(ok2.status, 0) << describe(ok2);
  fs::remove(dir_ / "out.onnx");
  // The reverse: config per-channel, --group-size 32 on the command line wins: exit 2 at once
  // (was exit 4 after calibration).
  expect_failure({"quantize", "mlp.onnx", "-o", "out.onnx", "--config", "pc.json", "--group-size",
                  "32", "--method", "gptq", "--no-static-groups"},
                 2, {"--act-order", "--group-size 32", "--static-groups"});
  // A config override with groups under a per-channel base: named.
  write_file(dir_ / "ov.json",
             R"({"group_size": "per_channel", "format": "qdq",
                 "overrides": [{"match": "mm1", "group_size": 32}]})");
  expect_failure(
      {"quantize", "mlp.onnx", "-o", "out.onnx", "--config", "ov.json", "--method", "gptq",
       "--no-static-groups"},
      2, {"--config file 'ov.json': override #0 ('mm1')", "group_size 32", "--static-groups"});
}

// 2. eval --data reports the shape of the whole output, not of the first batch.
TEST_F(CliOptions, EvalReportsTheWholeOutputShape) {
  write_file(dir_ / "x.npy", npy_f32(32, 64, 9));
  const cli_result r =
      run({"eval", "mlp.onnx", "mlp.onnx", "--data", "x.npy", "--samples", "0", "--json", "-"});
  ASSERT_EQ(r.status, 0) << describe(r);
  const json j = json::parse(r.out);
  ASSERT_EQ(j["outputs"].size(), 1u);
  // 32 samples run in batches of 16: the output is [32, 48], 32 * 48 elements.
  EXPECT_EQ(j["outputs"][0]["shape"], json::array({32, 48})) << r.out;
  EXPECT_EQ(j["outputs"][0]["elements"].get<std::size_t>(), 32u * 48u);
  const cli_result text = run({"eval", "mlp.onnx", "mlp.onnx", "--data", "x.npy"});
  ASSERT_EQ(text.status, 0) << describe(text);
  EXPECT_NE(text.out.find("[32, 48]"), std::string::npos) << text.out;
}

// 3. --auto's scoring time is in the printed and reported timings.
TEST_F(CliOptions, AutoPlanTimeIsInTheTimings) {
  const cli_result r =
      run({"quantize", "lm.onnx", "-o", "out.onnx", "--auto", "--effective-bits", "6", "--calib",
           "tokens.u8", "--calib-samples", "8", "--lm-head", "quantize", "--report", "r.json"});
  ASSERT_EQ(r.status, 0) << describe(r);
  EXPECT_NE(r.out.find(", auto plan "), std::string::npos) << r.out;
  const json t = json::parse(read_text(dir_ / "r.json"))["timing"];
  ASSERT_TRUE(t.contains("auto_plan_seconds")) << t.dump();
  const double parts = t["load_seconds"].get<double>() + t["auto_plan_seconds"].get<double>() +
                       t["quantize_seconds"].get<double>() + t["save_seconds"].get<double>();
  EXPECT_GT(t["auto_plan_seconds"].get<double>(), 0.0) << t.dump();
  EXPECT_LE(parts, t["total_seconds"].get<double>() + 1e-6) << t.dump();
}

// The library names option fields (`config.bits`); the CLI writes its flags, and for an override
// the file it comes from. Weights left in float say why in the flags' words too.
TEST_F(CliOptions, LibraryOptionErrorsAreWrittenWithFlags) {
  expect_failure({"quantize", "mlp.onnx", "-o", "out.onnx", "--group-size", "48"}, 2,
                 {"--group-size 48 cannot be stored by MatMulNBits", "use --format qdq"});
  expect_failure({"quantize", "mlp.onnx", "-o", "out.onnx", "--group-size", "per-channel"}, 2,
                 {"--group-size per-channel cannot be stored by MatMulNBits", "--format qdq"});
  expect_failure({"quantize", "mlp.onnx", "-o", "out.onnx", "--format", "qdq", "--bits", "2"}, 2,
                 {"--bits 2 cannot be stored by DequantizeLinear-21", "--format matmulnbits"});
  expect_failure({"quantize", "mlp.onnx", "-o", "out.onnx", "--format", "qdq", "--scheme",
                  "symmetric-full-range"},
                 2, {"--scheme symmetric-full-range gives negative scales", "--preset ort"});
  expect_failure(
      {"quantize", "mlp.onnx", "-o", "out.onnx", "--preset", "ort", "--scheme", "symmetric-offset"},
      2, {"--preset ort with --scheme symmetric-offset"});
  expect_failure({"quantize", "mlp.onnx", "-o", "out.onnx", "--exclude", "a("}, 2,
                 {"--exclude 'a(' is not a valid regular expression"});
  write_file(dir_ / "ov.json", R"({"overrides": [{"match": "mm1", "bits": 3}]})");
  expect_failure({"quantize", "mlp.onnx", "-o", "out.onnx", "--config", "ov.json"}, 2,
                 {"--config file 'ov.json': override #0 ('mm1'): --bits 3 cannot be stored by "
                  "MatMulNBits"});
  expect_failure(
      {"quantize", "lm.onnx", "-o", "out.onnx", "--format", "qdq", "--auto", "--effective-bits",
       "4.5", "--auto-candidates", "int2-g32", "--calib", "tokens.u8"},
      2, {"--auto-candidates 'int2-g32': --bits 2 cannot be stored"});
  const cli_result r =
      expect_failure({"quantize", "mlp.onnx", "-o", "out.onnx", "--bits", "3"}, 2, {"--bits 3"});
  EXPECT_EQ(r.err.find('`'), std::string::npos) << "no field names left: " << r.err;
  const cli_result ok =
      run({"quantize", "mlp.onnx", "-o", "out.onnx", "--include", "mm0", "--report", "-"});
  ASSERT_EQ(ok.status, 0) << describe(ok);
  const json report = json::parse(ok.out);
  bool named = false;
  for (const auto& t : report["tensors"]) {
    const std::string reason = t.value("reason", "");
    EXPECT_EQ(reason.find('`'), std::string::npos) << reason;
    named = named || reason == "not selected by --include";
  }
  EXPECT_TRUE(named) << report["tensors"].dump(1);
}

// 4. A flat .pb folder with one [16, 64] tensor: one sample of 16 rows, said so.
TEST_F(CliOptions, FlatPbFolderAnnouncesWhatIsUsed) {
  fs::create_directories(dir_ / "pb");
  {
    const auto t = int4q::test::float_tensor("x", int4q::test::onnx_float, {16, 64},
                                             int4q::test::random_values(16 * 64, 11));
    std::ofstream out(dir_ / "pb" / "input_0.pb", std::ios::binary);
    ASSERT_TRUE(t.SerializeToOstream(&out));
  }
  const cli_result r = run({"eval", "mlp.onnx", "mlp.onnx", "--data", "pb", "--json", "-"});
  ASSERT_EQ(r.status, 0) << describe(r);
  const json j = json::parse(r.out);
  const std::string d = j["data_description"].get<std::string>();
  EXPECT_NE(d.find("1 sample of 16 rows (x [16, 64])"), std::string::npos) << d;
  EXPECT_EQ(d.find("1 samples"), std::string::npos) << d;
  EXPECT_EQ(j["outputs"][0]["shape"], json::array({16, 48})) << r.out;
  // GPTQ on it sees the 16 rows.
  const cli_result q = run({"quantize", "mlp.onnx", "-o", "out.onnx", "--method", "gptq", "--calib",
                            "pb", "--group-size", "32", "--lm-head", "quantize"});
  ASSERT_EQ(q.status, 0) << describe(q);
  EXPECT_NE(q.out.find("1 sample of 16 rows"), std::string::npos) << q.out;
}

// 5. --help shows the real defaults of the on-by-default flags.
TEST_F(CliOptions, HelpShowsTheDefaultsOfFlags) {
  const cli_result r = run({"quantize", "--help"});
  ASSERT_EQ(r.status, 0) << describe(r);
  EXPECT_EQ(r.out.find("{false}"), std::string::npos) << r.out;
  for (const std::string flag : {"--act-order", "--static-groups", "--awq-per-subgraph"}) {
    const std::size_t at = r.out.find("  " + flag);
    ASSERT_NE(at, std::string::npos) << flag << "\n" << r.out;
    const std::string entry = r.out.substr(at, r.out.find("\n  -", at + 3) - at);
    EXPECT_NE(entry.find("default on"), std::string::npos) << entry;
  }
}

// 6. docs/onnx.md: exit codes of refused options and the devgpt report totals.
TEST_F(CliOptions, DocsMatchTheTool) {
  const std::string docs = read_text(fs::path(INT4Q_SOURCE_DIR) / "docs" / "onnx.md");
  ASSERT_FALSE(docs.empty());
  EXPECT_EQ(docs.find("`unsupported` (5: an option the format cannot hold"), std::string::npos)
      << "options a format cannot hold are usage errors (exit 2) in the CLI";
  const fs::path devgpt =
      fs::path(INT4Q_SOURCE_DIR) / ".." / "shared" / "models" / "devgpt" / "devgpt_fp32.onnx";
  if (!fs::exists(devgpt)) GTEST_SKIP() << devgpt << " not found";
  const cli_result r = run({"quantize", devgpt.string(), "-o", "d.onnx", "--report", "-", "-q"});
  ASSERT_EQ(r.status, 0) << describe(r);
  const json totals = json::parse(r.out)["totals"];
  const std::string expected = "\"totals\": {\"weights\": " + totals["weights"].dump() +
                               ", \"weights_quantized\": " + totals["weights_quantized"].dump();
  EXPECT_NE(docs.find(expected), std::string::npos) << expected;
}

}  // namespace
