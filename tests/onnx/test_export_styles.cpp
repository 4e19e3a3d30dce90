// The exporter styles of tests/ort/export_styles.hpp (issue 16): with RTN (and GPTQ) every
// MatMul/Gemm weight is quantized (counted from how each graph is built, not from int4q's own
// discovery), no node is inserted by the MatMulNBits writer and every constant path node goes; with
// AWQ (awq_lite, calibrated by int4q's executor on random inputs) the same weights are quantized
// and each scale's destination is reported, a Mul inserted only where no producer can take 1/s.
// Prints the numbers of the table in docs/onnx.md. ONNX Runtime runs the same graphs
// (ort.styles.*).
#include <gtest/gtest.h>

#include <cstdint>
#include <iostream>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <int4q/onnx/quantize_model.hpp>

#include "onnx/graph_builder.hpp"
#include "ort/export_styles.hpp"

namespace {

namespace ox = int4q::onnx;
namespace st = int4q::test::styles;
using int4q::test::random_values;

/// What each style holds, written down from export_styles.hpp.
struct expected_style {
  std::size_t weights;         ///< MatMul/Gemm nodes with a constant B (the lm_head included)
  std::size_t path_nodes;      ///< Cast/Transpose/Identity nodes between a stored weight and B
  std::size_t run_time_mm;     ///< MatMuls of two activations (attention), which stay
  std::size_t awq_muls;        ///< inputs no producer can take 1/s for (see below): at most this
                               ///< many Muls (fewer where AWQ keeps s = 1)
  std::set<std::string> fold;  ///< nodes whose 1/s must go into the producer (a norm)
};

// torch styles: q/k/v share ln_1 (LayerNormalization, also read by Shape), lm_head reads ln_f;
// o_proj reads a Reshape, fc_in a Reshape, fc_out a Relu: 3 Muls. fp16_export: fc1 reads a Cast
// of the graph input, fc2 and fc3 a MatMul whose weight is itself being quantized: 3 Muls.
// genai: q/k/v and gate/up fold into the (Skip)SimplifiedLayerNormalization, o_proj reads the
// GroupQueryAttention, down_proj a Mul of two activations: 2 Muls.
const std::map<std::string, expected_style>& expected() {
  static const std::set<std::string> torch_folds = {"q_proj", "k_proj", "v_proj", "lm_head"};
  static const std::map<std::string, expected_style> e{
      {"torch_fold", {7, 0, 2, 3, torch_folds}},
      {"torch_nofold", {7, 7, 2, 3, torch_folds}},
      {"mixed_fp16", {7, 12, 2, 3, torch_folds}},
      {"fp16_export", {3, 3, 0, 3, {}}},
      {"optimum_decoder", {7, 0, 2, 3, torch_folds}},
      {"genai", {7, 0, 0, 2, {"q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"}}},
  };
  return e;
}

/// Random inputs for every graph input (float N(0,1)-like, ids < 256, mask 1, positions 3).
ox::batch_source inputs_for(const ox::model& m) {
  auto next = std::make_shared<std::uint32_t>(0);
  return [next, m](std::map<std::string, ox::value>& in) {
    if (*next >= 2) return false;
    for (const auto& v : m.proto.graph().input()) {
      std::vector<std::int64_t> shape;
      std::size_t count = 1;
      for (const auto& d : v.type().tensor_type().shape().dim()) {
        shape.push_back(d.dim_value());
        count *= static_cast<std::size_t>(d.dim_value());
      }
      const std::string& n = v.name();
      if (v.type().tensor_type().elem_type() == int4q::test::onnx_int64) {
        std::vector<std::int64_t> ids(count, 1);
        if (n == "position_ids") ids.assign(count, 3);
        if (n == "input_ids")
          for (std::size_t i = 0; i < count; ++i)
            ids[i] = std::int64_t((i * 97 + *next * 13) % 256);
        in[n] = ox::value::ints(shape, ids);
      } else {
        in[n] = ox::value::floats(shape, random_values(count, 300 + *next, 1.5f));
      }
    }
    ++*next;
    return true;
  };
}

struct outcome {
  std::size_t quantized = 0, inserted = 0, path_removed = 0, left_mm = 0;
  // AWQ, per weight: 1/s into a producer, s = 1 kept (RTN's loss was lowest), a Mul; and the
  // distinct Muls (one per input shared by a group).
  std::size_t folded = 0, unscaled = 0, muls = 0, mul_groups = 0;
  std::set<std::string> folded_nodes, mul_nodes;
};

outcome quantize(const std::string& style, ox::method algo) {
  const ox::model before = st::all().at(style)().model();
  ox::model m = before;
  ox::quantize_options o;
  o.format = ox::output_format::matmulnbits;
  o.config.bits = 4;
  o.config.group_size = 32;
  o.lm_head = ox::lm_head_policy::quantize;
  o.algo = algo;
  o.threads = 1;
  if (algo != ox::method::rtn) o.calibration.data = inputs_for(before);
  const ox::quantize_report r = ox::quantize_model(m, o);
  outcome out;
  out.quantized = r.weights_quantized;
  std::set<std::string> names_before;
  std::size_t paths_before = 0, paths_after = 0;
  auto is_path = [](const ::onnx::NodeProto& n) {
    const std::string& op = n.op_type();
    return (op == "Cast" || op == "Transpose" || op == "Identity") &&
           n.name().find(".weight_") != std::string::npos;  // export_styles names them so
  };
  for (const auto& n : before.proto.graph().node()) {
    names_before.insert(n.name());
    paths_before += is_path(n);
  }
  for (const auto& n : m.proto.graph().node()) {
    paths_after += is_path(n);
    if (!names_before.count(n.name()) && n.op_type() != "MatMulNBits") ++out.inserted;
    out.left_mm += n.op_type() == "MatMul" || n.op_type() == "Gemm";
  }
  out.path_removed = paths_before - paths_after;
  std::set<std::string> mul_folds;
  for (const auto& t : r.tensors) {
    if (!t.quantized || algo != ox::method::awq_lite) continue;
    EXPECT_FALSE(t.awq_fold.empty()) << t.weight;
    if (t.awq_fold.rfind("Mul inserted", 0) == 0) {
      ++out.muls;
      mul_folds.insert(t.awq_fold);
      out.mul_nodes.insert(t.nodes.front());
    } else if (t.awq_fold.rfind("none", 0) == 0) {
      ++out.unscaled;
    } else {
      ++out.folded;
      out.folded_nodes.insert(t.nodes.front());
    }
  }
  out.mul_groups = mul_folds.size();
  return out;
}

TEST(ExportStyles, EveryWeightQuantizedNoNodeInsertedPathsRemoved) {
  for (const auto& [style, e] : expected()) {
    SCOPED_TRACE(style);
    const outcome rtn = quantize(style, ox::method::rtn);
    EXPECT_EQ(rtn.quantized, e.weights);
    EXPECT_EQ(rtn.inserted, 0u);
    EXPECT_EQ(rtn.path_removed, e.path_nodes);
    EXPECT_EQ(rtn.left_mm, e.run_time_mm);
    // GPTQ: sequential calibration by int4q's executor, the same weights.
    EXPECT_EQ(quantize(style, ox::method::gptq).quantized, e.weights);
    std::cout << "[style] " << style << " rtn: " << rtn.quantized << "/" << e.weights
              << " quantized, inserted " << rtn.inserted << ", path nodes removed "
              << rtn.path_removed << "\n";
  }
}

// AWQ: the executor runs each style (com.microsoft ops included) to calibrate. Weights sharing
// an input share one scale: a Mul is inserted once per such group.
// GenAI's lm_head is already MatMulNBits: left as it is (node, inputs, tensors).
TEST(ExportStyles, AlreadyQuantizedLayerLeftAlone) {
  const ox::model before = st::all().at("genai")().model();
  ox::model m = before;
  ox::quantize_options o;
  o.lm_head = ox::lm_head_policy::quantize;
  ox::quantize_model(m, o);
  const auto* b = int4q::test::find_node(before.proto, "lm_head");
  const auto* a = int4q::test::find_node(m.proto, "lm_head");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->SerializeAsString(), b->SerializeAsString());
  for (const char* t : {"lm_head.qweight", "lm_head.scales"}) {
    ASSERT_NE(int4q::test::find_initializer(m.proto, t), nullptr) << t;
    EXPECT_EQ(int4q::test::find_initializer(m.proto, t)->SerializeAsString(),
              int4q::test::find_initializer(before.proto, t)->SerializeAsString());
  }
}

TEST(ExportStyles, AwqFoldsWhereAProducerCanTakeTheScale) {
  for (const auto& [style, e] : expected()) {
    SCOPED_TRACE(style);
    const outcome awq = quantize(style, ox::method::awq_lite);
    EXPECT_EQ(awq.quantized, e.weights);
    EXPECT_EQ(awq.inserted, awq.mul_groups);  // the Muls and nothing else
    EXPECT_LE(awq.mul_groups, e.awq_muls);
    // Every weight AWQ scaled where a norm can take 1/s got the fold, not a Mul.
    for (const std::string& n : awq.folded_nodes) EXPECT_TRUE(e.fold.count(n)) << n;
    EXPECT_EQ(awq.folded + awq.unscaled + awq.muls, e.weights);
    for (const std::string& n : awq.mul_nodes) EXPECT_FALSE(e.fold.count(n)) << n;
    std::cout << "[style] " << style << " awq_lite: " << awq.quantized << "/" << e.weights
              << " quantized; 1/s folded into a norm for " << awq.folded << " weights, s = 1 for "
              << awq.unscaled << ", a Mul for " << awq.muls << " (inserted nodes " << awq.inserted
              << ")\n";
  }
}

}  // namespace
