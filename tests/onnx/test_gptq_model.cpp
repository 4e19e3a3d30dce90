// GPTQ on a whole model (quantize_model with method gptq): devgpt's loss in nats/byte against
// fp32, GPTQ's next to RTN's at the same grid (issue 5: GPTQ's loss at most 70% of RTN's), the
// per-weight Hessian-weighted losses of the report, determinism across BLAS thread counts, and
// the error without calibration data. The scores are computed here from the logits (log-sum-exp
// in double), as in test_executor.cpp.
#include <gtest/gtest.h>

#include <cblas.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include <int4q/onnx/calib_data.hpp>
#include <int4q/onnx/executor.hpp>
#include <int4q/onnx/model.hpp>
#include <int4q/onnx/quantize_model.hpp>

#include "onnx/devgpt_eval.hpp"

namespace {

namespace fs = std::filesystem;
namespace ox = int4q::onnx;

const fs::path devgpt_dir = int4q::test::devgpt_dir();
using int4q::test::devgpt_calibration;
using int4q::test::devgpt_nats_per_byte;
using int4q::test::set_blas_threads;

struct scored {
  double loss = 0;  ///< nats/byte above fp32
  ox::quantize_report report;
};

scored quantize_and_score(const ox::model& fp32, double fp32_nll, std::size_t group,
                          ox::method method, ox::calibration_mode mode) {
  ox::model m = fp32;
  ox::quantize_options o;
  o.config.group_size = group;
  o.lm_head = ox::lm_head_policy::quantize;
  o.algo = method;
  o.gptq.rtn_loss = true;  // the report's RTN comparison, checked below
  o.calibration.mode = mode;
  if (method != ox::method::rtn) o.calibration.data = devgpt_calibration(fp32, 64);
  scored s;
  s.report = ox::quantize_model(m, o);
  s.loss = devgpt_nats_per_byte(m) - fp32_nll;
  return s;
}

// Issue 5's bar: on devgpt, 4-bit, GPTQ's loss against fp32 at most 70% of RTN's, at group 128
// and 32, sequential and parallel, with int4q's default GPTQ settings (act_order with static
// groups, damp 0.01, 64 windows of 128 calibration bytes). Measured: 0.50-0.52 of RTN's loss at
// group 128, 0.44-0.64 at group 32. (Without act_order: 0.57-0.75, too close to the bar.)
constexpr double kGptqOverRtnMax = 0.70;

TEST(GptqModel, DevgptLossIsAtMost70PercentOfRtns) {
  set_blas_threads(1);
  const ox::model fp32 = ox::load_model(devgpt_dir / "devgpt_fp32.onnx");
  const double base = devgpt_nats_per_byte(fp32);
  for (const std::size_t group : {std::size_t(128), std::size_t(32)}) {
    const scored rtn =
        quantize_and_score(fp32, base, group, ox::method::rtn, ox::calibration_mode::parallel);
    for (const auto mode : {ox::calibration_mode::sequential, ox::calibration_mode::parallel}) {
      const scored g = quantize_and_score(fp32, base, group, ox::method::gptq, mode);
      std::cout << "[gptq devgpt] g" << group << " " << ox::to_string(mode) << ": loss " << g.loss
                << " nats/byte, RTN " << rtn.loss << " (ratio " << g.loss / rtn.loss << ")\n";
      EXPECT_GT(rtn.loss, 0.0);
      EXPECT_LE(g.loss, kGptqOverRtnMax * rtn.loss)
          << "group " << group << " " << ox::to_string(mode);
      // Per weight: GPTQ's Hessian-weighted loss never above RTN's on the same H.
      std::size_t gptq_weights = 0;
      for (const ox::tensor_report& t : g.report.tensors) {
        if (!t.quantized) continue;
        ASSERT_EQ(t.method, "gptq") << t.weight;
        ++gptq_weights;
        EXPECT_EQ(t.calibration_rows, 64u * 128u) << t.weight;
        EXPECT_LE(t.hessian_loss, t.rtn_hessian_loss) << t.weight;
        EXPECT_GT(t.hessian_loss, 0.0) << t.weight;
      }
      EXPECT_EQ(gptq_weights, 17u);
    }
  }
}

std::string serialized(const ox::model& m) {
  std::string s;
  EXPECT_TRUE(m.proto.SerializeToString(&s));
  return s;
}

// With BLAS single-threaded (as the CLI runs it), the executor's and GPTQ's own threads do not
// change a byte.
TEST(GptqModel, OutputIsTheSameBytesWhateverTheThreads) {
  const ox::model fp32 = ox::load_model(devgpt_dir / "devgpt_fp32.onnx");
  std::vector<std::string> outputs;
  set_blas_threads(1);
  for (const int threads : {1, 2}) {
    ox::model m = fp32;
    ox::quantize_options o;
    o.algo = ox::method::gptq;
    o.threads = static_cast<std::size_t>(threads);
    o.calibration.data = devgpt_calibration(fp32, 16);
    ox::quantize_model(m, o);
    outputs.push_back(serialized(m));
  }
  EXPECT_TRUE(outputs[0] == outputs[1]) << "GPTQ output depends on the thread count";
  EXPECT_FALSE(outputs[0] == serialized(fp32));
}

// Parallel calibration under a memory budget: several passes over the data, each for the weights
// whose statistics fit, give the bytes of one pass holding them all.
TEST(GptqModel, ParallelPassesWithinAMemoryBudgetGiveTheSameBytes) {
  set_blas_threads(1);
  const ox::model fp32 = ox::load_model(devgpt_dir / "devgpt_fp32.onnx");
  std::vector<std::string> outputs;
  std::vector<std::size_t> passes;
  for (const std::uint64_t budget : {std::uint64_t(1) << 30, std::uint64_t(1)}) {
    ox::model m = fp32;
    ox::quantize_options o;
    o.algo = ox::method::gptq;
    o.calibration.mode = ox::calibration_mode::parallel;
    o.calibration.parallel_stats_bytes = budget;
    auto next = std::make_shared<std::size_t>(0);
    std::size_t rewinds = 0;
    o.calibration.data = devgpt_calibration(fp32, 16, next);
    o.calibration.rewind = [next, &rewinds] {
      *next = 0;
      ++rewinds;
    };
    ox::quantize_model(m, o);
    outputs.push_back(serialized(m));
    passes.push_back(rewinds + 1);
  }
  EXPECT_EQ(passes[0], 1u);
  EXPECT_EQ(passes[1], 16u);  // one weight per pass (the lm_head stays float)
  EXPECT_TRUE(outputs[0] == outputs[1]) << "the passes changed the result";
}

TEST(GptqModel, WithoutCalibrationDataItSaysWhatToGive) {
  ox::model m = ox::load_model(devgpt_dir / "devgpt_fp32.onnx");
  const std::string before = serialized(m);
  ox::quantize_options o;
  o.algo = ox::method::gptq;
  try {
    ox::quantize_model(m, o);
    FAIL() << "no error";
  } catch (const ox::model_error& e) {
    EXPECT_NE(std::string(e.what()).find("`calibration.data`"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(serialized(m) == before) << "the model changed on error";
}

}  // namespace
