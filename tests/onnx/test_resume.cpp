// A run that dies is not lost (quantize_options::resume, `int4q quantize --resume`): a run
// stopped after some weights (resume_options::stop_after, as a run killed there) and continued
// from its journal writes the same bytes as a run never interrupted, for each calibrated method
// and for a plan mixing methods and grids (as --auto makes); a journal of another run is
// refused naming what differs; a damaged journal is refused naming the file; the progress
// callback's cost model and ETA.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <int4q/onnx/model.hpp>
#include <int4q/onnx/option_error.hpp>
#include <int4q/onnx/quantize_model.hpp>

#include "onnx/cli_runner.hpp"
#include "onnx/devgpt_eval.hpp"
#include "onnx/graph_builder.hpp"
#include "onnx/scratch_dir.hpp"

namespace {

namespace fs = std::filesystem;
namespace ox = int4q::onnx;
using int4q::test::describe;
using int4q::test::read_text;
using int4q::test::run_cli;

const fs::path devgpt_dir = int4q::test::devgpt_dir();

std::string serialized(const ox::model& m) {
  std::string s;
  EXPECT_TRUE(m.proto.SerializeToString(&s));
  return s;
}

class Resume : public int4q::test::scratch_dir_test {
 protected:
  void SetUp() override {
    if (!fs::exists(devgpt_dir / "devgpt_fp32.onnx")) GTEST_SKIP() << "devgpt not found";
    scratch_dir_test::SetUp();
    int4q::test::set_blas_threads(1);
    fp32_ = std::make_shared<ox::model>(ox::load_model(devgpt_dir / "devgpt_fp32.onnx"));
  }

  /// Options for `method` on 8 windows of devgpt's calibration data (read from its start).
  ox::quantize_options options(ox::method method) const {
    ox::quantize_options o;
    o.config.group_size = 64;
    o.lm_head = ox::lm_head_policy::quantize;
    o.algo = method;
    o.calibration.data = int4q::test::devgpt_calibration(*fp32_, 8);
    return o;
  }

  struct outcome {
    std::string bytes;
    ox::quantize_report report;
  };
  outcome quantize(const ox::quantize_options& o) const {
    ox::model m = *fp32_;
    outcome r;
    r.report = ox::quantize_model(m, o);
    r.bytes = serialized(m);
    return r;
  }

  /// Runs `make()` stopped after each of `stops` weights in turn (each run continuing the
  /// journal of the one before), then to the end; returns the last run.
  template <class Make>
  outcome interrupted(const Make& make, const std::vector<std::size_t>& stops) const {
    const fs::path journal = dir_ / "j.resume";
    for (const std::size_t stop : stops) {
      ox::quantize_options o = make();
      o.resume.journal = journal;
      o.resume.stop_after = stop;
      ox::model m = *fp32_;
      EXPECT_THROW(ox::quantize_model(m, o), ox::resume_stopped) << "stop after " << stop;
      EXPECT_TRUE(fs::exists(ox::resume_manifest_path(journal)));
    }
    ox::quantize_options o = make();
    o.resume.journal = journal;
    return quantize(o);
  }

  std::shared_ptr<ox::model> fp32_;
};

void expect_same_calibration(const ox::quantize_report& a, const ox::quantize_report& b) {
  ASSERT_EQ(a.tensors.size(), b.tensors.size());
  for (std::size_t i = 0; i < a.tensors.size(); ++i) {
    const ox::tensor_report &x = a.tensors[i], &y = b.tensors[i];
    EXPECT_EQ(x.method, y.method) << x.weight;
    EXPECT_EQ(x.calibration_rows, y.calibration_rows) << x.weight;
    EXPECT_EQ(x.rmse, y.rmse) << x.weight;  // measured again from the restored codes
    const auto same = [](double p, double q) { return (std::isnan(p) && std::isnan(q)) || p == q; };
    EXPECT_TRUE(same(x.hessian_loss, y.hessian_loss)) << x.weight;
    EXPECT_TRUE(same(x.awq_alpha, y.awq_alpha)) << x.weight;
    EXPECT_TRUE(same(x.clip_loss, y.clip_loss)) << x.weight;
    EXPECT_EQ(x.awq_fold, y.awq_fold) << x.weight;
  }
}

TEST_F(Resume, GptqSequentialInterruptedTwiceWritesTheSameBytes) {
  const auto make = [&] { return options(ox::method::gptq); };
  const outcome whole = quantize(make());
  const outcome resumed = interrupted(make, {3, 5});
  EXPECT_TRUE(whole.bytes == resumed.bytes) << "the resumed model differs from the whole run's";
  EXPECT_EQ(resumed.report.weights_resumed, 8u);
  EXPECT_EQ(whole.report.weights_resumed, 0u);
  expect_same_calibration(whole.report, resumed.report);
}

TEST_F(Resume, AwqMethodsAndParallelGptqWriteTheSameBytes) {
  struct variant {
    ox::method method;
    ox::calibration_mode mode;
  };
  for (const variant v : {variant{ox::method::awq_full, ox::calibration_mode::sequential},
                          variant{ox::method::awq_gptq, ox::calibration_mode::sequential},
                          variant{ox::method::gptq, ox::calibration_mode::parallel}}) {
    SCOPED_TRACE(std::string(ox::to_string(v.method)) + " " + ox::to_string(v.mode));
    const auto make = [&] {
      ox::quantize_options o = options(v.method);
      o.calibration.mode = v.mode;
      return o;
    };
    const outcome whole = quantize(make());
    const outcome resumed = interrupted(make, {2});
    EXPECT_TRUE(whole.bytes == resumed.bytes) << "the resumed model differs from the whole run's";
    EXPECT_EQ(resumed.report.weights_resumed, 2u);
    expect_same_calibration(whole.report, resumed.report);
    fs::remove(dir_ / "j.resume");
    fs::remove(ox::resume_manifest_path(dir_ / "j.resume"));
  }
}

/// What --auto hands quantize_model: overrides with a method and a grid per weight.
TEST_F(Resume, APlanMixingMethodsAndGridsWritesTheSameBytes) {
  const auto make = [&] {
    ox::quantize_options o = options(ox::method::gptq);
    ox::node_override a;
    a.match = "qkv";
    a.algo = ox::method::awq_full;
    a.bits = 2;
    a.group_size = 32;
    ox::node_override b;
    b.match = "out|head";
    b.algo = ox::method::rtn;
    b.bits = 8;
    o.overrides = {a, b};
    return o;
  };
  const outcome whole = quantize(make());
  const outcome resumed = interrupted(make, {4});
  EXPECT_TRUE(whole.bytes == resumed.bytes) << "the resumed model differs from the whole run's";
  expect_same_calibration(whole.report, resumed.report);
}

TEST_F(Resume, AJournalOfAnotherRunIsRefusedAndKept) {
  const fs::path journal = dir_ / "j.resume";
  ox::quantize_options o = options(ox::method::gptq);
  o.resume.journal = journal;
  o.resume.fingerprint = {{"model", "a"}};
  o.resume.stop_after = 2;
  ox::model m = *fp32_;
  ASSERT_THROW(ox::quantize_model(m, o), ox::resume_stopped);
  const std::string manifest = read_text(ox::resume_manifest_path(journal));
  const std::string data = read_text(journal);
  const auto refused = [&](ox::quantize_options other, const std::string& names) {
    other.resume.journal = journal;
    ox::model copy = *fp32_;
    try {
      ox::quantize_model(copy, other);
      ADD_FAILURE() << "a journal of another run was accepted (" << names << ")";
    } catch (const ox::option_error& e) {
      EXPECT_EQ(e.field(), "resume.journal");
      EXPECT_NE(std::string(e.what()).find(names), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("is of another run"), std::string::npos) << e.what();
    }
    EXPECT_EQ(serialized(copy), serialized(*fp32_)) << "a refused run changed the model";
    EXPECT_TRUE(read_text(ox::resume_manifest_path(journal)) == manifest);
    EXPECT_TRUE(read_text(journal) == data) << "a refused run changed the journal";
  };
  ox::quantize_options bits = options(ox::method::gptq);
  bits.resume.fingerprint = o.resume.fingerprint;
  bits.config.bits = 8;
  refused(bits, "/options/bits: 4 in the journal, 8 now");
  ox::quantize_options caller = options(ox::method::gptq);
  caller.resume.fingerprint = {{"model", "b"}};
  refused(caller, "/caller/model: \"a\" in the journal, \"b\" now");
  // The threads do not change the output: accepted.
  ox::quantize_options threads = options(ox::method::gptq);
  threads.resume.fingerprint = o.resume.fingerprint;
  threads.resume.journal = journal;
  threads.threads = 1;
  ox::model again = *fp32_;
  EXPECT_EQ(ox::quantize_model(again, threads).weights_resumed, 2u);
}

TEST_F(Resume, ADamagedJournalIsRefusedNamingItAndATornTailIsCut) {
  const fs::path journal = dir_ / "j.resume";
  const auto make = [&] { return options(ox::method::gptq); };
  const outcome whole = quantize(make());
  ox::quantize_options o = make();
  o.resume.journal = journal;
  o.resume.stop_after = 2;
  ox::model m = *fp32_;
  ASSERT_THROW(ox::quantize_model(m, o), ox::resume_stopped);
  // A weight half written when the run died: bytes after the manifest's end are cut off.
  {
    std::ofstream tail(journal, std::ios::binary | std::ios::app);
    tail << std::string(1000, '\x5a');
  }
  const std::string data = read_text(journal);
  {
    ox::quantize_options again = make();
    again.resume.journal = journal;
    const outcome resumed = quantize(again);
    EXPECT_TRUE(resumed.bytes == whole.bytes);
    EXPECT_EQ(resumed.report.weights_resumed, 2u);
  }
  // A data file shorter than the manifest says: refused naming both files.
  fs::resize_file(journal, 100);
  ox::quantize_options shorter = make();
  shorter.resume.journal = journal;
  ox::model copy = *fp32_;
  try {
    ox::quantize_model(copy, shorter);
    ADD_FAILURE() << "a truncated journal was accepted";
  } catch (const ox::model_error& e) {
    EXPECT_EQ(e.what_kind(), ox::model_error::kind::invalid);
    EXPECT_NE(std::string(e.what()).find("shorter than its manifest"), std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find(journal.string()), std::string::npos) << e.what();
  }
  // A manifest that is not JSON.
  { std::ofstream(ox::resume_manifest_path(journal)) << "{ torn"; }
  try {
    ox::quantize_model(copy, shorter);
    ADD_FAILURE() << "a torn manifest was accepted";
  } catch (const ox::model_error& e) {
    EXPECT_NE(std::string(e.what()).find("cannot be read"), std::string::npos) << e.what();
  }
}

/// in [rows, 32] @ w0 -> LayerNormalization -> x; x @ w1 and x @ w2 (siblings sharing one AWQ
/// scale, folded into the LayerNormalization's gamma and beta) -> y1 + y2 -> @ w3 -> y.
ox::model siblings_model() {
  using int4q::test::onnx_float;
  using int4q::test::random_values;
  int4q::test::graph_builder g;
  g.input("in", onnx_float, {-1, 32});
  g.initializer("w0", onnx_float, {32, 64}, random_values(32 * 64, 1));
  g.matmul("proj", "in", "w0", "pre");
  g.initializer("gamma", onnx_float, {64}, random_values(64, 2, 1.5f));
  g.initializer("beta", onnx_float, {64}, random_values(64, 3, 0.5f));
  g.node("LayerNormalization", {"pre", "gamma", "beta"}, {"x"}, "ln");
  g.initializer("w1", onnx_float, {64, 32}, random_values(64 * 32, 4));
  g.initializer("w2", onnx_float, {64, 32}, random_values(64 * 32, 5));
  g.matmul("mm1", "x", "w1", "y1");
  g.matmul("mm2", "x", "w2", "y2");
  g.node("Add", {"y1", "y2"}, {"s"}, "add");
  g.initializer("w3", onnx_float, {32, 32}, random_values(32 * 32, 6));
  g.matmul("mm3", "s", "w3", "y");
  g.output("y", onnx_float, {-1, 32});
  return g.model();
}

/// Stopped between the two siblings: the second is quantized with the scale the first one's
/// search found, restored from the journal, and the fold is the same.
TEST_F(Resume, StoppedInsideAnAwqGroupRestoresItsScales) {
  const ox::model base = siblings_model();
  for (const ox::method method : {ox::method::awq_full, ox::method::awq_gptq}) {
    SCOPED_TRACE(ox::to_string(method));
    const auto make = [&] {
      ox::quantize_options o;
      o.config.group_size = 32;
      o.lm_head = ox::lm_head_policy::quantize;
      o.algo = method;
      auto next = std::make_shared<int>(0);
      o.calibration.data = [next](std::map<std::string, ox::value>& in) {
        if (*next == 4) return false;
        in["in"] = ox::value::floats({16, 32}, int4q::test::random_values(16 * 32, 100 + *next));
        ++*next;
        return true;
      };
      return o;
    };
    const fs::path journal = dir_ / "siblings.resume";
    ox::model whole = base;
    const ox::quantize_report a = ox::quantize_model(whole, make());
    ASSERT_NE(a.tensors[1].awq_fold.find("layer_norm"), std::string::npos) << a.tensors[1].awq_fold;
    ox::model stopped = base;
    ox::quantize_options o = make();
    o.resume.journal = journal;
    o.resume.stop_after = 2;  // w0 and w1
    ASSERT_THROW(ox::quantize_model(stopped, o), ox::resume_stopped);
    ox::model resumed = base;
    o = make();
    o.resume.journal = journal;
    const ox::quantize_report b = ox::quantize_model(resumed, o);
    EXPECT_EQ(b.weights_resumed, 2u);
    EXPECT_TRUE(serialized(whole) == serialized(resumed));
    expect_same_calibration(a, b);
    fs::remove(journal);
    fs::remove(ox::resume_manifest_path(journal));
  }
}

// ---- Progress -------------------------------------------------------------------------------

TEST(ResumeProgress, WeightCostFollowsTheMethodsArithmetic) {
  const std::size_t K = 64, N = 32, R = 1000;
  ox::awq_settings awq;  // 11 alphas (0, 0.1, ..., 1), 11 clip ratios (1, 0.95, ..., 0.5)
  awq.samples = 512;
  const double kn = double(K) * N;
  EXPECT_DOUBLE_EQ(ox::weight_cost(K, N, ox::method::rtn, R, awq), 8 * kn);
  const double forward = 2.0 * R * kn;
  const double gptq = double(R) * K * K + double(K) * K * K + double(K) * K * N;
  EXPECT_DOUBLE_EQ(ox::weight_cost(K, N, ox::method::gptq, R, awq), 8 * kn + forward + gptq);
  const double search = 2.0 * 512 * kn * 11;
  EXPECT_DOUBLE_EQ(ox::weight_cost(K, N, ox::method::awq_lite, R, awq), 8 * kn + forward + search);
  EXPECT_DOUBLE_EQ(ox::weight_cost(K, N, ox::method::awq_full, R, awq),
                   8 * kn + forward + 2 * search);
  EXPECT_DOUBLE_EQ(ox::weight_cost(K, N, ox::method::awq_gptq, R, awq),
                   8 * kn + forward + gptq + search);
  // Fewer rows than awq.samples: the losses use them all.
  EXPECT_DOUBLE_EQ(ox::weight_cost(K, N, ox::method::awq_clip, 100, awq),
                   8 * kn + 2.0 * 100 * kn + 2.0 * 100 * kn * 11);
}

TEST(ResumeProgress, EtaIsTheRateOfThisRunsWorkTimesTheCostLeft) {
  ox::quantize_progress p;
  p.cost_total = 1000;
  p.cost_done = 300;
  p.cost_restored = 200;  // restored: neither time nor cost in the rate
  p.seconds = 5;          // 100 units of fresh work in 5 s: 20 units/s, 700 left
  EXPECT_DOUBLE_EQ(ox::eta_seconds(p), 35.0);
  p.cost_done = p.cost_restored;  // nothing quantized by this run yet: unknown
  EXPECT_TRUE(std::isnan(ox::eta_seconds(p)));
  p.cost_done = p.cost_total = 1000;
  p.cost_restored = 0;
  EXPECT_DOUBLE_EQ(ox::eta_seconds(p), 0.0);
}

TEST_F(Resume, ProgressCountsRestoredWeightsApart) {
  const fs::path journal = dir_ / "j.resume";
  ox::quantize_options o = options(ox::method::gptq);
  o.resume.journal = journal;
  o.resume.stop_after = 3;
  ox::model m = *fp32_;
  ASSERT_THROW(ox::quantize_model(m, o), ox::resume_stopped);
  std::vector<ox::quantize_progress> seen;
  o.resume.stop_after = 0;
  o.calibration.data = int4q::test::devgpt_calibration(*fp32_, 8);
  o.on_progress = [&](const ox::quantize_progress& p) { seen.push_back(p); };
  ox::model again = *fp32_;
  ox::quantize_model(again, o);
  ASSERT_EQ(seen.size(), 17u);
  EXPECT_EQ(seen[2].restored, 3u);
  EXPECT_EQ(seen[2].seconds, 0.0);
  EXPECT_EQ(seen[2].cost_restored, seen[2].cost_done);
  EXPECT_EQ(seen.back().restored, 3u);
  EXPECT_EQ(seen.back().cost_done, seen.back().cost_total);
  EXPECT_GT(seen.back().seconds, 0.0);
  EXPECT_FALSE(seen[0].layer.empty());
  // The total: the sum of the weights' costs at the rows the data gave (8 windows of 128).
  double total = 0;
  for (const auto& w : ox::find_weights(*fp32_)) {
    if (w.quantizable) total += ox::weight_cost(w.k, w.n, ox::method::gptq, 8 * 128, o.awq);
  }
  EXPECT_DOUBLE_EQ(seen.back().cost_total, total);
}

// ---- The command line -----------------------------------------------------------------------

TEST_F(Resume, CliStoppedRunContinuesWithResumeAndRemovesItsJournal) {
  const std::string model = (devgpt_dir / "devgpt_fp32.onnx").string();
  const std::vector<std::string> base = {"quantize",        model,
                                         "--method",        "gptq",
                                         "--calib",         (devgpt_dir / "devgpt_cal.u8").string(),
                                         "--calib-samples", "8"};
  const auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = base;
    args.insert(args.end(), extra.begin(), extra.end());
    return run_cli(dir_, args);
  };
  const auto whole = with({"-o", "whole.onnx", "-q"});
  ASSERT_EQ(whole.status, 0) << describe(whole);
  const fs::path journal = dir_ / ".out.onnx.resume";
  const fs::path manifest = dir_ / ".out.onnx.resume.json";
  const auto stopped = with({"-o", "out.onnx", "--resume", "--test-stop-after", "5"});
  EXPECT_EQ(stopped.status, 3) << describe(stopped);
  EXPECT_NE(stopped.err.find("no journal"), std::string::npos) << describe(stopped);
  EXPECT_NE(stopped.err.find("run the same command with --resume to continue"), std::string::npos)
      << describe(stopped);
  EXPECT_TRUE(fs::exists(journal) && fs::exists(manifest));
  EXPECT_FALSE(fs::exists(dir_ / "out.onnx"));
  // Without --resume the journal is neither used nor touched; a warning names it.
  const auto plain = run_cli(dir_, {"quantize", model, "-o", "out.onnx"});
  EXPECT_EQ(plain.status, 0) << describe(plain);
  EXPECT_NE(plain.err.find("add --resume to continue it"), std::string::npos) << describe(plain);
  fs::remove(dir_ / "out.onnx");
  // Another grid: refused (exit 2) naming --resume and the field; the journal stays.
  const auto other = with({"-o", "out.onnx", "--resume", "--bits", "8"});
  EXPECT_EQ(other.status, 2) << describe(other);
  EXPECT_NE(other.err.find("--resume: the journal"), std::string::npos) << describe(other);
  EXPECT_NE(other.err.find("/options/bits"), std::string::npos) << describe(other);
  EXPECT_TRUE(fs::exists(journal) && fs::exists(manifest));
  // Continued: the same bytes as the whole run, and the journal gone.
  const auto resumed = with({"-o", "out.onnx", "--resume", "--report", "report.json"});
  ASSERT_EQ(resumed.status, 0) << describe(resumed);
  EXPECT_NE(resumed.err.find("continuing the run journaled"), std::string::npos)
      << describe(resumed);
  EXPECT_TRUE(read_text(dir_ / "whole.onnx") == read_text(dir_ / "out.onnx"))
      << "the resumed run wrote other bytes than the whole run";
  EXPECT_FALSE(fs::exists(journal));
  EXPECT_FALSE(fs::exists(manifest));
  EXPECT_EQ(nlohmann::json::parse(read_text(dir_ / "report.json"))["totals"]["weights_resumed"], 5);
}

/// --auto (GPTQ on the plan's grids) scores its candidates again on resume (the same plan),
/// then continues the journal.
TEST_F(Resume, CliAutoPlanResumesToTheSameBytes) {
  const std::vector<std::string> base = {"quantize",
                                         (devgpt_dir / "devgpt_fp32.onnx").string(),
                                         "--lm-head",
                                         "quantize",
                                         "--method",
                                         "gptq",
                                         "--auto",
                                         "--effective-bits",
                                         "4.5",
                                         "--calib",
                                         (devgpt_dir / "devgpt_cal.u8").string(),
                                         "--calib-samples",
                                         "8",
                                         "-q"};
  const auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = base;
    args.insert(args.end(), extra.begin(), extra.end());
    return run_cli(dir_, args);
  };
  const auto whole = with({"-o", "whole.onnx"});
  ASSERT_EQ(whole.status, 0) << describe(whole);
  const auto stopped = with({"-o", "out.onnx", "--resume", "--test-stop-after", "6"});
  ASSERT_EQ(stopped.status, 3) << describe(stopped);
  const auto resumed = with({"-o", "out.onnx", "--resume"});
  ASSERT_EQ(resumed.status, 0) << describe(resumed);
  EXPECT_TRUE(read_text(dir_ / "whole.onnx") == read_text(dir_ / "out.onnx"))
      << "the resumed --auto run wrote other bytes than the whole run";
  EXPECT_FALSE(fs::exists(dir_ / ".out.onnx.resume.json"));
}

}  // namespace
