// Tests for int4q::onnx::find_weights and display_name (adapters/onnx/quantize/src/weights.cpp).
#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>
#include <onnx/onnx_pb.h>

#include <int4q/onnx/model.hpp>
#include <int4q/onnx/weights.hpp>

#include "onnx/graph_builder.hpp"

namespace {

using int4q::onnx::elem_type;
using int4q::onnx::find_weights;
using int4q::onnx::weight_info;
using ::onnx::AttributeProto;
using ::onnx::NodeProto;
using ::onnx::TensorProto;

// ---- A tiny graph builder (local to this file) --------------------------------------------------

class graph {
 public:
  graph() {
    m_.proto.set_ir_version(8);
    m_.proto.add_opset_import()->set_version(17);
  }
  graph& init(const std::string& name, std::vector<std::int64_t> dims,
              int type = TensorProto::FLOAT) {
    *g().add_initializer() = tensor(name, dims, type);
    return *this;
  }
  graph& input(const std::string& name) {
    g().add_input()->set_name(name);
    return *this;
  }
  graph& output(const std::string& name) {
    g().add_output()->set_name(name);
    return *this;
  }
  NodeProto& node(const std::string& op, const std::string& name, std::vector<std::string> inputs,
                  std::vector<std::string> outputs) {
    NodeProto& n = *g().add_node();
    n.set_op_type(op);
    n.set_name(name);
    for (auto& i : inputs) n.add_input(i);
    for (auto& o : outputs) n.add_output(o);
    return n;
  }
  graph& constant(const std::string& name, const std::string& out, std::vector<std::int64_t> dims) {
    AttributeProto& a = *node("Constant", name, {}, {out}).add_attribute();
    a.set_name("value");
    a.set_type(AttributeProto::TENSOR);
    *a.mutable_t() = tensor("", dims, TensorProto::FLOAT);
    return *this;
  }
  graph& gemm(const std::string& name, std::vector<std::string> inputs, const std::string& out,
              int trans_b, float alpha = 1.0f, float beta = 1.0f, int trans_a = 0) {
    NodeProto& n = node("Gemm", name, std::move(inputs), {out});
    set_int(n, "transB", trans_b);
    if (trans_a) set_int(n, "transA", trans_a);
    if (alpha != 1.0f) set_float(n, "alpha", alpha);
    if (beta != 1.0f) set_float(n, "beta", beta);
    return *this;
  }
  const int4q::onnx::model& model() const { return m_; }
  std::vector<weight_info> weights() const { return find_weights(m_); }

 private:
  ::onnx::GraphProto& g() { return *m_.proto.mutable_graph(); }
  static TensorProto tensor(const std::string& name, const std::vector<std::int64_t>& dims,
                            int type) {
    TensorProto t;
    t.set_name(name);
    t.set_data_type(type);
    std::int64_t count = 1;
    for (auto d : dims) {
      t.add_dims(d);
      count *= d;
    }
    const std::size_t size = type == TensorProto::DOUBLE                                     ? 8
                             : type == TensorProto::FLOAT16 || type == TensorProto::BFLOAT16 ? 2
                             : type == TensorProto::INT8                                     ? 1
                                                                                             : 4;
    t.set_raw_data(std::string(static_cast<std::size_t>(count) * size, '\0'));
    return t;
  }
  static void set_int(NodeProto& n, const std::string& name, std::int64_t v) {
    AttributeProto& a = *n.add_attribute();
    a.set_name(name);
    a.set_type(AttributeProto::INT);
    a.set_i(v);
  }
  static void set_float(NodeProto& n, const std::string& name, float v) {
    AttributeProto& a = *n.add_attribute();
    a.set_name(name);
    a.set_type(AttributeProto::FLOAT);
    a.set_f(v);
  }
  int4q::onnx::model m_;
};

const weight_info& by_name(const std::vector<weight_info>& ws, const std::string& name) {
  for (const auto& w : ws) {
    if (w.name == name) return w;
  }
  throw std::runtime_error("no weight " + name);
}

void expect_reason(const weight_info& w, const std::string& needle) {
  EXPECT_FALSE(w.quantizable) << w.name;
  EXPECT_NE(w.reason.find(needle), std::string::npos)
      << "weight " << w.name << " reason: " << w.reason << "\nexpected to contain: " << needle;
}

// ---- Tests --------------------------------------------------------------------------------------

TEST(WeightsFind, MatMulWithInitializer) {
  graph g;
  g.input("x").init("w", {64, 32}).output("y");
  g.node("MatMul", "mm", {"x", "w"}, {"y"});
  const auto ws = g.weights();
  ASSERT_EQ(ws.size(), 1u);
  const weight_info& w = ws[0];
  EXPECT_EQ(w.name, "w");
  EXPECT_TRUE(w.quantizable) << w.reason;
  EXPECT_TRUE(w.reason.empty());
  EXPECT_FALSE(w.from_constant_node);
  EXPECT_EQ(w.constant_node_index, -1);
  EXPECT_EQ(w.type, elem_type::float32);
  EXPECT_EQ(w.dims, (std::vector<std::int64_t>{64, 32}));
  EXPECT_EQ(w.k, 64u);
  EXPECT_EQ(w.n, 32u);
  ASSERT_EQ(w.uses.size(), 1u);
  EXPECT_EQ(w.uses[0].node_index, 0);
  EXPECT_EQ(w.uses[0].node_name, "mm");
  EXPECT_EQ(w.uses[0].op_type, "MatMul");
  EXPECT_FALSE(w.uses[0].trans_b);
  EXPECT_EQ(w.uses[0].alpha, 1.0f);
  EXPECT_EQ(w.uses[0].beta, 1.0f);
  EXPECT_EQ(w.uses[0].bias, "");
  EXPECT_TRUE(w.is_lm_head);  // its output is the graph output
}

TEST(WeightsFind, MatMulWithConstantNode) {
  graph g;
  g.input("x").output("z").constant("c", "w", {24, 8}).init("w2", {8, 8}, TensorProto::FLOAT16);
  g.node("MatMul", "mm", {"x", "w"}, {"y"});
  g.node("Relu", "relu", {"y"}, {"r"});
  g.node("MatMul", "mm2", {"r", "w2"}, {"z"});
  const auto ws = g.weights();
  ASSERT_EQ(ws.size(), 2u);
  const weight_info& w = ws[0];
  EXPECT_EQ(w.name, "w");
  EXPECT_TRUE(w.quantizable) << w.reason;
  EXPECT_TRUE(w.from_constant_node);
  EXPECT_EQ(w.constant_node_index, 0);
  EXPECT_EQ(w.k, 24u);
  EXPECT_EQ(w.n, 8u);
  EXPECT_EQ(w.uses[0].node_index, 1);
  EXPECT_FALSE(w.is_lm_head);  // Relu is not a pass-through op
  EXPECT_EQ(ws[1].type, elem_type::float16);
  EXPECT_TRUE(ws[1].quantizable);
  EXPECT_TRUE(ws[1].is_lm_head);
}

TEST(WeightsFind, GemmTransBAlphaBetaBias) {
  graph g;
  g.input("x").init("w0", {64, 32}).init("w1", {16, 32}).init("bias", {16}).output("z");
  g.gemm("g0", {"x", "w0"}, "y", 0, 0.5f);
  g.gemm("g1", {"y", "w1", "bias"}, "z", 1, 2.0f, 0.25f);
  const auto ws = g.weights();
  ASSERT_EQ(ws.size(), 2u);
  EXPECT_EQ(ws[0].name, "w0");
  EXPECT_TRUE(ws[0].quantizable) << ws[0].reason;
  EXPECT_EQ(ws[0].k, 64u);
  EXPECT_EQ(ws[0].n, 32u);
  EXPECT_FALSE(ws[0].uses[0].trans_b);
  EXPECT_EQ(ws[0].uses[0].alpha, 0.5f);
  EXPECT_EQ(ws[0].uses[0].beta, 1.0f);
  EXPECT_EQ(ws[0].uses[0].bias, "");
  EXPECT_FALSE(ws[0].is_lm_head);

  EXPECT_EQ(ws[1].name, "w1");
  EXPECT_TRUE(ws[1].quantizable) << ws[1].reason;
  EXPECT_EQ(ws[1].dims, (std::vector<std::int64_t>{16, 32}));
  EXPECT_EQ(ws[1].k, 32u);  // transB: stored [N, K]
  EXPECT_EQ(ws[1].n, 16u);
  EXPECT_TRUE(ws[1].uses[0].trans_b);
  EXPECT_EQ(ws[1].uses[0].op_type, "Gemm");
  EXPECT_EQ(ws[1].uses[0].alpha, 2.0f);
  EXPECT_EQ(ws[1].uses[0].beta, 0.25f);
  EXPECT_EQ(ws[1].uses[0].bias, "bias");
  EXPECT_TRUE(ws[1].is_lm_head);
}

TEST(WeightsFind, SharedWeightIsOneEntryWithSeveralUses) {
  graph g;
  g.input("x").input("x2").init("w", {32, 32}).output("y").output("y2");
  g.node("MatMul", "a", {"x", "w"}, {"h"});
  g.node("MatMul", "b", {"x2", "w"}, {"h2"});
  g.gemm("c", {"h2", "w"}, "y2", 0);
  g.node("Tanh", "t", {"h"}, {"y"});
  const auto ws = g.weights();
  ASSERT_EQ(ws.size(), 1u);
  EXPECT_TRUE(ws[0].quantizable) << ws[0].reason;
  ASSERT_EQ(ws[0].uses.size(), 3u);
  EXPECT_EQ(ws[0].uses[0].node_name, "a");
  EXPECT_EQ(ws[0].uses[1].node_name, "b");
  EXPECT_EQ(ws[0].uses[2].node_name, "c");
  EXPECT_TRUE(ws[0].is_lm_head);  // through its Gemm use
}

TEST(WeightsFind, SharedWeightWithDisagreeingLayouts) {
  graph g;
  g.input("x").init("w", {32, 32}).output("z");
  g.node("MatMul", "a", {"x", "w"}, {"y"});
  g.gemm("b", {"y", "w"}, "z", 1);
  const auto ws = g.weights();
  ASSERT_EQ(ws.size(), 1u);
  ASSERT_EQ(ws[0].uses.size(), 2u);
  expect_reason(ws[0], "disagree");
}

TEST(WeightsFind, InitializerThatIsAlsoAGraphInput) {
  graph g;
  g.input("x").input("w").init("w", {8, 8}).output("y");
  g.node("MatMul", "mm", {"x", "w"}, {"y"});
  const auto ws = g.weights();
  ASSERT_EQ(ws.size(), 1u);
  expect_reason(ws[0], "also a graph input");
  EXPECT_EQ(ws[0].k, 8u);  // still described
}

TEST(WeightsFind, ShapesTypesAndTransA) {
  graph g;
  g.input("x").output("o1").output("o2").output("o3").output("o4").output("o5").output("o6");
  g.init("w3d", {2, 8, 8}).init("w1d", {8}).init("wq", {8, 8}, TensorProto::INT8);
  g.init("w64", {8, 8}, TensorProto::DOUBLE)
      .init("wta", {8, 8})
      .init("wbf", {8, 4}, TensorProto::BFLOAT16);
  g.node("MatMul", "batched", {"x", "w3d"}, {"o1"});
  g.node("MatMul", "vec", {"x", "w1d"}, {"o2"});
  g.node("MatMul", "int8", {"x", "wq"}, {"o3"});
  g.node("MatMul", "double", {"x", "w64"}, {"o4"});
  g.gemm("ta", {"x", "wta"}, "o5", 0, 1.0f, 1.0f, /*trans_a=*/1);
  g.node("MatMul", "bf", {"x", "wbf"}, {"o6"});
  const auto ws = g.weights();
  ASSERT_EQ(ws.size(), 6u);
  expect_reason(by_name(ws, "w3d"), "3-D");
  expect_reason(by_name(ws, "w1d"), "1-D");
  expect_reason(by_name(ws, "wq"), "INT8");
  EXPECT_EQ(by_name(ws, "wq").type, elem_type::other);
  expect_reason(by_name(ws, "w64"), "float64");
  EXPECT_EQ(by_name(ws, "w64").type, elem_type::float64);
  expect_reason(by_name(ws, "wta"), "transA");
  EXPECT_TRUE(by_name(ws, "wbf").quantizable);
  EXPECT_EQ(by_name(ws, "wbf").type, elem_type::bfloat16);
}

TEST(WeightsFind, TiedEmbeddingAndOtherConsumers) {
  graph g;
  g.input("ids").init("emb", {64, 64}).init("w", {64, 64}).output("logits");
  g.node("Gather", "embed", {"emb", "ids"}, {"h"});
  g.node("MatMul", "mm", {"h", "w"}, {"h2"});
  g.node("Add", "res", {"h2", "w"}, {"h3"});  // w also read by an Add
  // lm_head tied to the embedding: MatMul with a Transpose of emb is not constant, but a
  // pre-transposed copy used by both Gather and MatMul is the tied case.
  g.node("MatMul", "lm_head", {"h3", "emb"}, {"logits"});
  const auto ws = g.weights();
  ASSERT_EQ(ws.size(), 2u);
  EXPECT_EQ(ws[0].name, "w");
  expect_reason(ws[0], "Add 'res'");
  EXPECT_EQ(ws[1].name, "emb");
  expect_reason(ws[1], "Gather 'embed'");
  expect_reason(ws[1], "`embeddings = quantize`");
  EXPECT_TRUE(ws[1].is_lm_head);
}

TEST(WeightsFind, RunTimeOperandsAreListedNotQuantizable) {
  graph g;
  g.input("q").input("k").init("w", {8, 8}).output("s").output("t");
  g.node("Transpose", "tr", {"k"}, {"kt"});
  g.node("MatMul", "scores", {"q", "kt"}, {"s"});
  g.node("MatMul", "direct", {"q", "k"}, {"t2"});
  g.node("MatMul", "", {"t2", "w"}, {"t"});
  const auto ws = g.weights();
  ASSERT_EQ(ws.size(), 3u);  // ordered by first use
  EXPECT_EQ(ws[0].name, "kt");
  expect_reason(ws[0], "computed at run time by Transpose 'tr'");
  EXPECT_EQ(ws[1].name, "k");
  expect_reason(ws[1], "graph input");
  EXPECT_EQ(ws[2].name, "w");
  EXPECT_TRUE(ws[2].quantizable);
  EXPECT_EQ(int4q::onnx::display_name(ws[2].uses[0]), "MatMul#3");
  EXPECT_EQ(int4q::onnx::display_name(ws[0].uses[0]), "scores");
}

TEST(WeightsFind, LmHeadThroughBiasAndShapeOps) {
  graph g;
  g.input("x").init("w0", {16, 16}).init("w1", {16, 32}).init("b", {32}).init("shape", {3});
  g.output("logits");
  g.node("MatMul", "fc", {"x", "w0"}, {"h"});
  g.node("Gelu", "act", {"h"}, {"a"});
  g.node("MatMul", "head", {"a", "w1"}, {"l0"});
  g.node("Add", "bias", {"b", "l0"}, {"l1"});
  g.node("Reshape", "rs", {"l1", "shape"}, {"l2"});
  g.node("Softmax", "sm", {"l2"}, {"logits"});
  const auto ws = g.weights();
  ASSERT_EQ(ws.size(), 2u);
  EXPECT_FALSE(ws[0].is_lm_head);
  EXPECT_TRUE(ws[1].is_lm_head);
  EXPECT_EQ(std::count_if(ws.begin(), ws.end(), [](const weight_info& w) { return w.is_lm_head; }),
            1);
}

TEST(WeightsFind, WeightUsedInsideASubgraph) {
  graph g;
  g.input("x").input("cond").init("w", {8, 8}).output("y").output("z");
  g.node("MatMul", "mm", {"x", "w"}, {"y"});
  NodeProto& n = g.node("If", "if", {"cond"}, {"z"});
  for (const char* branch : {"then_branch", "else_branch"}) {
    AttributeProto& a = *n.add_attribute();
    a.set_name(branch);
    a.set_type(AttributeProto::GRAPH);
    NodeProto& inner = *a.mutable_g()->add_node();
    inner.set_op_type("Identity");
    inner.add_input("w");
    inner.add_output("zz");
    a.mutable_g()->add_output()->set_name("zz");
  }
  const auto ws = g.weights();
  ASSERT_EQ(ws.size(), 1u);
  // An Identity in a branch is another consumer (named with its scope: it has no name).
  expect_reason(ws[0], "Identity 'if/then_branch/Identity#0'");
}

// ---- Subgraphs (graph_builder for the bodies) ---------------------------------------------------

/// Adds a GRAPH attribute `name` holding `sub` to `n`.
void add_subgraph(NodeProto& n, const std::string& name, const ::onnx::GraphProto& sub) {
  AttributeProto& a = *n.add_attribute();
  a.set_name(name);
  a.set_type(AttributeProto::GRAPH);
  *a.mutable_g() = sub;
}

using int4q::onnx::graph_step;
using int4q::test::graph_builder;
using int4q::test::onnx_float;

TEST(WeightsSubgraph, IfBranchesShareAMainGraphWeight) {
  graph_builder g;
  g.input("x", onnx_float, {-1, 32});
  g.input("cond", int4q::test::onnx_bool, {});
  g.initializer("w", onnx_float, {32, 8}, int4q::test::random_values(32 * 8, 1));
  graph_builder then_b, else_b;
  then_b.matmul("mm_then", "x", "w", "t");
  then_b.output("t", onnx_float, {-1, 8});
  else_b.matmul("", "x", "w", "e0");
  else_b.node("Neg", {"e0"}, {"e"}, "neg");
  else_b.output("e", onnx_float, {-1, 8});
  NodeProto& n = g.node("If", {"cond"}, {"y"}, "if");
  add_subgraph(n, "then_branch", then_b.build().graph());
  add_subgraph(n, "else_branch", else_b.build().graph());
  g.output("y", onnx_float, {-1, 8});
  const auto ws = find_weights(g.model());
  ASSERT_EQ(ws.size(), 1u);
  const weight_info& w = ws[0];
  EXPECT_TRUE(w.quantizable) << w.reason;
  EXPECT_TRUE(w.defined_in.empty());
  EXPECT_EQ(w.k, 32u);
  EXPECT_EQ(w.n, 8u);
  EXPECT_FALSE(w.is_lm_head);  // subgraph uses are never the lm_head
  ASSERT_EQ(w.uses.size(), 2u);
  EXPECT_EQ(w.uses[0].path, (std::vector<graph_step>{{0, "then_branch", -1}}));
  EXPECT_EQ(w.uses[0].node_index, 0);
  EXPECT_EQ(int4q::onnx::display_name(w.uses[0]), "mm_then");
  EXPECT_EQ(w.uses[1].path, (std::vector<graph_step>{{0, "else_branch", -1}}));
  EXPECT_EQ(int4q::onnx::display_name(w.uses[1]), "if/else_branch/MatMul#0");
  const int4q::onnx::model m = g.model();
  EXPECT_EQ(int4q::onnx::graph_at(m.proto.graph(), w.uses[1].path).node(0).op_type(), "MatMul");
}

TEST(WeightsSubgraph, LoopBodyGemmTransB1AndNestedScopes) {
  // Main: Loop whose body holds an If whose branch uses a main-graph weight and a Constant of
  // the body: both are constants visible to the innermost Gemm.
  graph_builder g;
  g.input("x", onnx_float, {4, 32});
  g.initializer("w", onnx_float, {8, 32}, int4q::test::random_values(8 * 32, 2));
  g.initializer_i64("trip", {}, {2});
  graph_builder body, branch;
  body.input("i", int4q::test::onnx_int64, {});
  body.input("c_in", int4q::test::onnx_bool, {});
  body.constant("wb", onnx_float, {32, 8}, int4q::test::random_values(32 * 8, 3));
  int4q::test::gemm_attrs t;
  t.trans_b = true;
  body.gemm("gemm_body", "x", "w", "", "gy", t);
  body.node("Identity", {"c_in"}, {"c_out"}, "id");
  branch.gemm("gemm_inner", "x", "wb", "", "iy");
  branch.output("iy", onnx_float, {4, 8});
  NodeProto& inner_if = body.node("If", {"c_in"}, {"iy_out"}, "inner_if");
  add_subgraph(inner_if, "then_branch", branch.build().graph());
  add_subgraph(inner_if, "else_branch", branch.build().graph());
  body.output("c_out", int4q::test::onnx_bool, {});
  body.output("gy", onnx_float, {4, 8});
  body.output("iy_out", onnx_float, {4, 8});
  NodeProto& loop = g.node("Loop", {"trip", ""}, {"ys", "iys"}, "loop");
  add_subgraph(loop, "body", body.build().graph());
  g.output("ys", onnx_float, {2, 4, 8});
  const auto ws = find_weights(g.model());
  ASSERT_EQ(ws.size(), 2u);
  const weight_info& w = by_name(ws, "w");
  EXPECT_TRUE(w.quantizable) << w.reason;
  ASSERT_EQ(w.uses.size(), 1u);
  EXPECT_TRUE(w.uses[0].trans_b);
  EXPECT_EQ(w.k, 32u);
  EXPECT_EQ(w.n, 8u);
  EXPECT_EQ(w.uses[0].path, (std::vector<graph_step>{{0, "body", -1}}));
  EXPECT_EQ(w.uses[0].node_index, 1);
  const weight_info& wb = by_name(ws, "wb");
  EXPECT_TRUE(wb.quantizable) << wb.reason;
  EXPECT_TRUE(wb.from_constant_node);
  EXPECT_EQ(wb.constant_node_index, 0);
  EXPECT_EQ(wb.defined_in, (std::vector<graph_step>{{0, "body", -1}}));
  // One weight, used from both branches of the inner If.
  ASSERT_EQ(wb.uses.size(), 2u);
  EXPECT_EQ(wb.uses[1].path, (std::vector<graph_step>{{0, "body", -1}, {3, "else_branch", -1}}));
}

TEST(WeightsSubgraph, ShadowingNamesAreNotTheOuterWeight) {
  graph_builder g;
  g.input("x", onnx_float, {-1, 32});
  g.input("cond", int4q::test::onnx_bool, {});
  g.initializer("w", onnx_float, {32, 8}, int4q::test::random_values(32 * 8, 1));
  g.matmul("mm_main", "x", "w", "y0");
  graph_builder then_b, else_b;
  // then: its own initializer "w" (another tensor, another shape).
  then_b.initializer("w", onnx_float, {32, 16}, int4q::test::random_values(32 * 16, 2));
  then_b.matmul("mm_then", "x", "w", "t");
  then_b.output("t", onnx_float, {-1, 16});
  // else: "w" is computed in the branch: not a constant, and not the main weight either.
  else_b.node("Relu", {"x"}, {"w"}, "relu");
  else_b.matmul("mm_else", "x", "w", "e");
  else_b.output("e", onnx_float, {-1, 16});
  NodeProto& n = g.node("If", {"cond"}, {"y1"}, "if");
  add_subgraph(n, "then_branch", then_b.build().graph());
  add_subgraph(n, "else_branch", else_b.build().graph());
  g.output("y0", onnx_float, {-1, 8});
  g.output("y1", onnx_float, {-1, 16});
  const auto ws = find_weights(g.model());
  ASSERT_EQ(ws.size(), 3u);
  EXPECT_EQ(ws[0].name, "w");
  EXPECT_TRUE(ws[0].defined_in.empty());
  EXPECT_TRUE(ws[0].quantizable) << ws[0].reason;
  EXPECT_EQ(ws[0].n, 8u);
  ASSERT_EQ(ws[0].uses.size(), 1u);
  EXPECT_EQ(ws[0].uses[0].node_name, "mm_main");
  EXPECT_EQ(ws[1].name, "w");
  EXPECT_EQ(ws[1].defined_in, (std::vector<graph_step>{{1, "then_branch", -1}}));
  EXPECT_TRUE(ws[1].quantizable) << ws[1].reason;
  EXPECT_EQ(ws[1].n, 16u);
  EXPECT_EQ(ws[1].uses[0].node_name, "mm_then");
  EXPECT_EQ(ws[2].name, "w");
  expect_reason(ws[2], "computed at run time by Relu 'relu'");
}

TEST(WeightsSubgraph, OtherReadsInsideSubgraphsAndSubgraphInputs) {
  graph_builder g;
  g.input("x", onnx_float, {-1, 32});
  g.input("cond", int4q::test::onnx_bool, {});
  g.initializer("w", onnx_float, {32, 8}, int4q::test::random_values(32 * 8, 1));
  g.initializer("w2", onnx_float, {32, 8}, int4q::test::random_values(32 * 8, 2));
  graph_builder then_b, else_b;
  then_b.matmul("mm_then", "x", "w", "t");
  then_b.matmul("mm_then2", "x", "w2", "t2");
  then_b.output("t", onnx_float, {-1, 8});
  else_b.matmul("mm_else", "x", "w", "e");
  else_b.output("w2", onnx_float, {32, 8});  // a branch outputs the outer tensor itself
  NodeProto& n = g.node("If", {"cond"}, {"y", "y2"}, "if");
  add_subgraph(n, "then_branch", then_b.build().graph());
  add_subgraph(n, "else_branch", else_b.build().graph());
  g.node("Add", {"w", "w"}, {"ww"}, "");  // an unnamed main-graph reader
  g.output("y", onnx_float, {-1, 8});
  const auto ws = find_weights(g.model());
  ASSERT_EQ(ws.size(), 2u);
  expect_reason(by_name(ws, "w"), "Add 'Add#1'");
  expect_reason(by_name(ws, "w2"), "the outputs of subgraph if/else_branch");
}

// The real devgpt model (../shared/models): 17 constant MatMul weights, lm_head last.
TEST(WeightsDevgpt, SeventeenQuantizableWeights) {
  const std::filesystem::path path = std::filesystem::path(INT4Q_SOURCE_DIR) / ".." / "shared" /
                                     "models" / "devgpt" / "devgpt_fp32.onnx";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " not found";
  const int4q::onnx::model m = int4q::onnx::load_model(path);
  const auto ws = find_weights(m);
  std::size_t matmuls = 0;
  for (const auto& n : m.proto.graph().node()) matmuls += n.op_type() == "MatMul";
  EXPECT_EQ(matmuls, 25u);
  std::map<std::pair<std::size_t, std::size_t>, int> shapes;
  std::vector<const weight_info*> quantizable;
  int lm_heads = 0;
  for (const auto& w : ws) {
    if (w.quantizable) {
      quantizable.push_back(&w);
      ++shapes[{w.k, w.n}];
      EXPECT_EQ(w.type, elem_type::float32);
      EXPECT_EQ(w.uses.size(), 1u);
    } else {
      EXPECT_NE(w.reason.find("computed at run time"), std::string::npos) << w.reason;
    }
    lm_heads += w.is_lm_head;
  }
  ASSERT_EQ(quantizable.size(), 17u);
  const std::map<std::pair<std::size_t, std::size_t>, int> expected = {
      {{256, 768}, 4}, {{256, 256}, 5}, {{256, 1024}, 4}, {{1024, 256}, 4}};
  EXPECT_EQ(shapes, expected);
  EXPECT_EQ(lm_heads, 1);
  const weight_info& last = *quantizable.back();
  EXPECT_TRUE(last.is_lm_head) << last.name;
  EXPECT_EQ(last.k, 256u);
  EXPECT_EQ(last.n, 256u);
  // Sorted by first use: node indices increase.
  for (std::size_t i = 1; i < ws.size(); ++i) {
    EXPECT_LT(ws[i - 1].uses[0].node_index, ws[i].uses[0].node_index);
  }
}

}  // namespace
