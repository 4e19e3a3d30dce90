// Method block (issue 15): the blocks found from the graph (devgpt, the generated Llama, a graph
// without a residual stream), devgpt's loss against fp32 next to RTN's and GPTQ's (issue 15's
// bar: at most 35% of RTN's at group 128, below GPTQ's at group 32), every tuned block's loss
// below its round-to-nearest start on the Llama (RoPE, GQA, RMSNorm, SwiGLU), the same bytes for
// any thread count, and the errors for what it cannot do.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <int4q/onnx/blocks.hpp>
#include <int4q/onnx/calib_data.hpp>
#include <int4q/onnx/model.hpp>
#include <int4q/onnx/quantize_model.hpp>
#include <int4q/onnx/weights.hpp>

#include "llama_model.hpp"
#include "onnx/devgpt_eval.hpp"
#include "onnx/graph_builder.hpp"

namespace {

namespace fs = std::filesystem;
namespace ox = int4q::onnx;
using int4q::test::devgpt_calibration;
using int4q::test::devgpt_nats_per_byte;
using int4q::test::set_blas_threads;

/// The block holding each weight's first use, by weight name.
std::map<std::string, std::size_t> block_of_weights(const ox::model& m,
                                                    const std::vector<ox::graph_block>& blocks) {
  std::map<std::string, std::size_t> out;
  for (const ox::weight_info& w : ox::find_weights(m)) {
    if (!w.quantizable) continue;
    const int node = w.uses.front().node_index;
    for (std::size_t b = 0; b < blocks.size(); ++b)
      if (node >= blocks[b].first_node && node < blocks[b].end_node) out[w.name] = b;
  }
  return out;
}

/// Blocks cover the nodes in order; every block but the tail ends with the Add computing the
/// next block's input.
void expect_chain(const ox::model& m, const std::vector<ox::graph_block>& blocks) {
  const auto& g = m.proto.graph();
  ASSERT_FALSE(blocks.empty());
  EXPECT_EQ(blocks.front().first_node, 0);
  EXPECT_EQ(blocks.back().end_node, g.node_size());
  for (std::size_t b = 0; b + 1 < blocks.size(); ++b) {
    EXPECT_EQ(blocks[b].end_node, blocks[b + 1].first_node);
    const auto& last = g.node(blocks[b].end_node - 1);
    EXPECT_EQ(last.op_type(), "Add") << "block " << b;
    EXPECT_EQ(last.output(0), blocks[b].output);
    EXPECT_EQ(blocks[b + 1].input, blocks[b].output);
    // x + f(x): the stream input is one of the Add's inputs.
    EXPECT_TRUE(last.input(0) == blocks[b].input || last.input(1) == blocks[b].input)
        << "block " << b;
  }
}

// devgpt (README of ../shared/models: 4 layers, pre-LN GPT-2): attention and MLP of each layer
// are blocks 2l and 2l + 1 (qkv and proj in the first, fc and out in the second), lm_head in the
// tail.
TEST(Blocks, DevgptHasTwoPerLayerAndATail) {
  const ox::model m = ox::load_model(int4q::test::devgpt_dir() / "devgpt_fp32.onnx");
  const auto blocks = ox::find_blocks(m);
  ASSERT_EQ(blocks.size(), 9u);
  expect_chain(m, blocks);
  EXPECT_TRUE(blocks.back().output.empty());
  std::map<std::size_t, std::vector<std::string>> nodes;
  const auto at_block = block_of_weights(m, blocks);
  for (const ox::weight_info& w : ox::find_weights(m)) {
    if (!w.quantizable) continue;
    const auto at = at_block.at(w.name);
    nodes[at].push_back(ox::display_name(w.uses.front()));
  }
  for (int l = 0; l < 4; ++l) {
    const std::string p = "/blocks/blocks." + std::to_string(l) + "/";
    EXPECT_EQ(nodes[2 * l], (std::vector<std::string>{p + "qkv/MatMul", p + "proj/MatMul"}));
    EXPECT_EQ(nodes[2 * l + 1], (std::vector<std::string>{p + "fc/MatMul", p + "out/MatMul"}));
  }
  EXPECT_EQ(nodes[8], std::vector<std::string>{"/head/MatMul"});
}

// The generated Llama (3 layers): q, k, v, o in blocks 2l, gate, up, down in 2l + 1.
TEST(Blocks, LlamaHasTwoPerLayerAndATail) {
  int4q::test::llama_options o;
  o.layers = 3;
  ox::model m;
  m.proto = int4q::test::build_llama_model(o);
  const auto blocks = ox::find_blocks(m);
  ASSERT_EQ(blocks.size(), 7u);
  expect_chain(m, blocks);
  std::map<std::size_t, int> weights_in;
  for (const auto& [name, b] : block_of_weights(m, blocks)) weights_in[b] += 1;
  for (std::size_t b = 0; b < 6; ++b) EXPECT_EQ(weights_in[b], b % 2 ? 3 : 4) << "block " << b;
  EXPECT_EQ(weights_in[6], 1);  // lm_head
}

// No chain of residual Adds: one lone x + x*x (as in tanh-GELU) is no stream; one block.
TEST(Blocks, WithoutAResidualStreamTheGraphIsOneBlock) {
  int4q::test::graph_builder g;
  using int4q::test::onnx_float;
  g.input("x", onnx_float, {-1, 8});
  g.initializer("w0", onnx_float, {8, 8}, int4q::test::random_values(64, 1));
  g.initializer("w1", onnx_float, {8, 4}, int4q::test::random_values(32, 2));
  g.matmul("mm0", "x", "w0", "h");
  g.node("Mul", {"h", "h"}, {"h2"}, "sq");
  g.node("Add", {"h", "h2"}, {"a"}, "add");
  g.matmul("mm1", "a", "w1", "y");
  g.output("y", onnx_float, {-1, 4});
  const ox::model m = g.model();
  const auto blocks = ox::find_blocks(m);
  ASSERT_EQ(blocks.size(), 1u);
  EXPECT_EQ(blocks[0].first_node, 0);
  EXPECT_EQ(blocks[0].end_node, 4);
}

struct scored {
  double loss = 0;  ///< nats/byte above fp32
  ox::quantize_report report;
};

scored quantize_and_score(const ox::model& fp32, double fp32_nll, std::size_t group,
                          ox::method method) {
  ox::model m = fp32;
  ox::quantize_options o;
  o.config.group_size = group;
  o.lm_head = ox::lm_head_policy::quantize;
  o.algo = method;
  if (method != ox::method::rtn) o.calibration.data = devgpt_calibration(fp32, 64);
  scored s;
  s.report = ox::quantize_model(m, o);
  s.loss = devgpt_nats_per_byte(m) - fp32_nll;
  return s;
}

// Issue 15's bar, with the method's defaults (200 steps per block, 64 windows of 128 calibration
// bytes in batches of 8): at most 35% of RTN's loss at group 128 (GPTQ: about 50%), and below
// GPTQ's at group 32. Measured: 0.25 of RTN's at group 128; at group 32 about a third of GPTQ's.
constexpr double kBlockOverRtnMax = 0.35;

TEST(BlockModel, DevgptLossIsAtMost35PercentOfRtnsAndBelowGptqs) {
  set_blas_threads(1);
  const ox::model fp32 = ox::load_model(int4q::test::devgpt_dir() / "devgpt_fp32.onnx");
  const double base = devgpt_nats_per_byte(fp32);
  for (const std::size_t group : {std::size_t(128), std::size_t(32)}) {
    const scored rtn = quantize_and_score(fp32, base, group, ox::method::rtn);
    const scored gptq = quantize_and_score(fp32, base, group, ox::method::gptq);
    const scored blk = quantize_and_score(fp32, base, group, ox::method::block);
    std::cout << "[block devgpt] g" << group << ": loss " << blk.loss << " nats/byte, RTN "
              << rtn.loss << " (ratio " << blk.loss / rtn.loss << "), GPTQ " << gptq.loss << "\n";
    EXPECT_GT(rtn.loss, 0.0);
    if (group == 128) EXPECT_LE(blk.loss, kBlockOverRtnMax * rtn.loss);
    if (group == 32) EXPECT_LT(blk.loss, gptq.loss);
    std::size_t tuned = 0;
    for (const ox::tensor_report& t : blk.report.tensors) {
      if (!t.quantized) continue;
      ASSERT_EQ(t.method, "block") << t.weight;
      ++tuned;
      EXPECT_EQ(t.calibration_rows, 64u * 128u) << t.weight;
      EXPECT_LT(t.block_loss, t.block_loss_start) << t.weight;
    }
    EXPECT_EQ(tuned, 17u);
  }
}

std::string serialized(const ox::model& m) {
  std::string s;
  EXPECT_TRUE(m.proto.SerializeToString(&s));
  return s;
}

TEST(BlockModel, OutputIsTheSameBytesWhateverTheThreads) {
  set_blas_threads(1);
  const ox::model fp32 = ox::load_model(int4q::test::devgpt_dir() / "devgpt_fp32.onnx");
  std::vector<std::string> outputs;
  for (const int threads : {1, 2}) {
    ox::model m = fp32;
    ox::quantize_options o;
    o.algo = ox::method::block;
    o.block.iterations = 6;
    o.threads = static_cast<std::size_t>(threads);
    o.calibration.data = devgpt_calibration(fp32, 16);
    ox::quantize_model(m, o);
    outputs.push_back(serialized(m));
  }
  EXPECT_TRUE(outputs[0] == outputs[1]) << "method block's output depends on the thread count";
  EXPECT_FALSE(outputs[0] == serialized(fp32));
}

// The generated Llama (fp16 weights, RoPE, GQA, RMSNorm with Casts, SwiGLU): every weight is
// tuned, each block's loss falls below its round-to-nearest start, and the output differs from
// RTN's.
TEST(BlockModel, LlamaBlocksEndBelowRoundToNearest) {
  set_blas_threads(1);
  int4q::test::llama_options lo;
  lo.fp16 = true;
  ox::model fp;
  fp.proto = int4q::test::build_llama_model(lo);
  const auto quantize = [&](ox::method method) {
    ox::calib_options c;  // random tokens: 8 samples of 32 in batches of 4
    c.seq_len = 32;
    c.samples = 8;
    const ox::calib_data data = ox::calib_data::open(fp, c);
    auto next = std::make_shared<std::size_t>(0);
    ox::quantize_options o;
    o.config.group_size = 32;
    o.lm_head = ox::lm_head_policy::quantize;
    o.algo = method;
    o.block.iterations = 40;
    o.calibration.data = [data, next](std::map<std::string, ox::value>& in) {
      if (*next >= data.samples()) return false;
      in = data.batch(*next, 4);
      *next += 4;
      return true;
    };
    ox::model m = fp;
    const ox::quantize_report r = ox::quantize_model(m, o);
    return std::make_pair(serialized(m), r);
  };
  const auto [blk, report] = quantize(ox::method::block);
  std::size_t tuned = 0;
  for (const ox::tensor_report& t : report.tensors) {
    if (!t.quantized) continue;
    ASSERT_EQ(t.method, "block") << t.weight << ": " << t.reason;
    ++tuned;
    EXPECT_LT(t.block_loss, t.block_loss_start) << t.weight;
    EXPECT_GT(t.block_loss_start, 0.0) << t.weight;
  }
  EXPECT_EQ(tuned, 15u);  // 2 layers x 7 + lm_head
  EXPECT_FALSE(blk == quantize(ox::method::rtn).first);
}

TEST(BlockModel, ErrorsSayWhatToDo) {
  const ox::model fp32 = ox::load_model(int4q::test::devgpt_dir() / "devgpt_fp32.onnx");
  const auto message = [&](const std::function<void(ox::quantize_options&)>& set) {
    ox::model m = fp32;
    ox::quantize_options o;
    o.algo = ox::method::block;
    set(o);
    try {
      ox::quantize_model(m, o);
    } catch (const ox::model_error& e) {
      EXPECT_EQ(serialized(m), serialized(fp32)) << "the model changed before the error";
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message([](ox::quantize_options&) {}).find("`calibration.data`"), std::string::npos);
  EXPECT_NE(message([&](ox::quantize_options& o) {
              o.calibration.data = devgpt_calibration(fp32, 8);
              ox::node_override ov;
              ov.match = "fc";
              ov.algo = ox::method::gptq;
              o.overrides.push_back(ov);
            }).find("cannot run with another calibrated method"),
            std::string::npos);
  EXPECT_NE(message([&](ox::quantize_options& o) {
              o.calibration.data = devgpt_calibration(fp32, 8);
              o.block.iterations = 0;
            }).find("block.iterations"),
            std::string::npos);
  EXPECT_NE(message([&](ox::quantize_options& o) {
              o.calibration.data = devgpt_calibration(fp32, 8);
              o.resume.journal = fs::temp_directory_path() / "int4q_block_journal_unused";
            }).find("resume.journal"),
            std::string::npos);
}

}  // namespace
