// upgrade_opset_to_21: each conversion produces the opset-21 form (inputs and their
// initializers), refusals name the node and point to MatMulNBits and change nothing.
// (Running converted graphs in ONNX Runtime is done by the interop tests.)
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include <int4q/onnx/opset.hpp>

#include "onnx/graph_builder.hpp"

namespace {

using int4q::onnx::model_error;
using int4q::onnx::upgrade_opset_to_21;
using int4q::test::find_attr;
using int4q::test::find_initializer;
using int4q::test::find_node;
using int4q::test::graph_builder;
using int4q::test::onnx_float;
using int4q::test::set_attr;

std::vector<std::int64_t> int64_values(const onnx::ModelProto& m, const std::string& name) {
  const auto* t = find_initializer(m, name);
  if (!t) {
    ADD_FAILURE() << "no initializer " << name;
    return {};
  }
  EXPECT_EQ(t->data_type(), int4q::test::onnx_int64);
  std::vector<std::int64_t> v(t->raw_data().size() / 8);
  std::memcpy(v.data(), t->raw_data().data(), v.size() * 8);
  return v;
}

float scalar_float(const onnx::ModelProto& m, const std::string& name) {
  const auto* t = find_initializer(m, name);
  if (!t) {
    ADD_FAILURE() << "no initializer " << name;
    return 0;
  }
  EXPECT_EQ(t->data_type(), onnx_float);
  EXPECT_EQ(t->dims_size(), 0) << "a scalar";
  float f;
  std::memcpy(&f, t->raw_data().data(), 4);
  return f;
}

std::vector<std::string> inputs(const onnx::NodeProto& n) {
  return std::vector<std::string>(n.input().begin(), n.input().end());
}

/// A graph of opset `opset` with input x [2, 3, 4, 5] and output y.
graph_builder graph(std::int64_t opset) {
  graph_builder g(opset, 3);
  g.input("x", onnx_float, {2, 3, 4, 5});
  g.output("y", onnx_float, {});
  return g;
}

const onnx::NodeProto& upgraded(onnx::ModelProto& m, const std::string& node) {
  upgrade_opset_to_21(m);
  EXPECT_EQ(int4q::test::opset_of(m), 21);
  EXPECT_GE(m.ir_version(), 10);
  const auto* n = find_node(m, node);
  if (!n) throw std::runtime_error("node " + node + " is gone");
  return *n;
}

TEST(OpsetUpgrade, ClipAttributesBecomeInputs) {
  auto g = graph(9);
  auto& c = g.node("Clip", {"x"}, {"y"}, "clip");
  set_attr(c, "min", -1.5f);
  set_attr(c, "max", 6.0f);
  auto m = g.build();
  const auto& n = upgraded(m, "clip");
  ASSERT_EQ(n.input_size(), 3);
  EXPECT_EQ(n.attribute_size(), 0);
  EXPECT_EQ(scalar_float(m, n.input(1)), -1.5f);
  EXPECT_EQ(scalar_float(m, n.input(2)), 6.0f);
}

TEST(OpsetUpgrade, ClipWithOnlyMax) {
  auto g = graph(6);
  set_attr(g.node("Clip", {"x"}, {"y"}, "clip"), "max", 6.0f);
  auto m = g.build();
  const auto& n = upgraded(m, "clip");
  ASSERT_EQ(n.input_size(), 3);
  EXPECT_EQ(n.input(1), "") << "min omitted";
  EXPECT_EQ(scalar_float(m, n.input(2)), 6.0f);
}

TEST(OpsetUpgrade, ClipBoundsTakeTheInputType) {
  graph_builder g(10, 5);
  g.input("x", int4q::test::onnx_float16, {4});
  g.output("y", int4q::test::onnx_float16, {4});
  set_attr(g.node("Clip", {"x"}, {"y"}, "clip"), "min", 0.0f);
  auto m = g.build();
  const auto& n = upgraded(m, "clip");
  ASSERT_EQ(n.input_size(), 2);
  EXPECT_EQ(find_initializer(m, n.input(1))->data_type(), int4q::test::onnx_float16);
}

TEST(OpsetUpgrade, SqueezeAndUnsqueezeAxesBecomeInputs) {
  auto g = graph(11);
  set_attr(g.node("Unsqueeze", {"x"}, {"u"}, "unsq"), "axes", std::vector<std::int64_t>{0, 5});
  set_attr(g.node("Squeeze", {"u"}, {"s"}, "sq"), "axes", std::vector<std::int64_t>{0});
  g.node("Squeeze", {"s"}, {"y"}, "sq_all");
  auto m = g.build();
  const auto& u = upgraded(m, "unsq");
  EXPECT_EQ(int64_values(m, u.input(1)), (std::vector<std::int64_t>{0, 5}));
  EXPECT_EQ(find_attr(u, "axes"), nullptr);
  const auto& s = *find_node(m, "sq");
  EXPECT_EQ(int64_values(m, s.input(1)), (std::vector<std::int64_t>{0}));
  EXPECT_EQ(find_node(m, "sq_all")->input_size(), 1) << "no axes: squeeze all, unchanged";
}

TEST(OpsetUpgrade, ReduceAxesBecomeInputs) {
  auto g = graph(13);  // ReduceSum is already in the input form at 13, ReduceMean not until 18
  auto& mean = g.node("ReduceMean", {"x"}, {"a"}, "mean");
  set_attr(mean, "axes", std::vector<std::int64_t>{-1});
  set_attr(mean, "keepdims", 0);
  g.node("ReduceSum", {"a", "axes_in"}, {"y"}, "sum");
  g.initializer_i64("axes_in", {1}, {0});
  auto m = g.build();
  const auto& n = upgraded(m, "mean");
  EXPECT_EQ(int64_values(m, n.input(1)), std::vector<std::int64_t>{-1});
  EXPECT_EQ(find_attr(n, "keepdims")->i(), 0);
  EXPECT_EQ(inputs(*find_node(m, "sum")), (std::vector<std::string>{"a", "axes_in"}));

  auto g2 = graph(11);
  set_attr(g2.node("ReduceSum", {"x"}, {"y"}, "sum"), "axes", std::vector<std::int64_t>{1, 2});
  auto m2 = g2.build();
  EXPECT_EQ(int64_values(m2, upgraded(m2, "sum").input(1)), (std::vector<std::int64_t>{1, 2}));
}

TEST(OpsetUpgrade, SplitAttributeBecomesInputOrNumOutputs) {
  auto g = graph(11);
  auto& s = g.node("Split", {"x"}, {"a", "b"}, "split");
  set_attr(s, "axis", 1);
  set_attr(s, "split", std::vector<std::int64_t>{1, 2});
  set_attr(g.node("Split", {"x"}, {"c", "d"}, "halves"), "axis", 3);
  auto m = g.build();
  const auto& n = upgraded(m, "split");
  EXPECT_EQ(int64_values(m, n.input(1)), (std::vector<std::int64_t>{1, 2}));
  EXPECT_EQ(find_attr(n, "split"), nullptr);
  EXPECT_EQ(find_attr(n, "num_outputs"), nullptr);
  const auto& h = *find_node(m, "halves");
  EXPECT_EQ(h.input_size(), 1);
  ASSERT_NE(find_attr(h, "num_outputs"), nullptr);
  EXPECT_EQ(find_attr(h, "num_outputs")->i(), 2);
}

TEST(OpsetUpgrade, DropoutRatioBecomesInput) {
  auto g = graph(10);
  set_attr(g.node("Dropout", {"x"}, {"y"}, "drop"), "ratio", 0.25f);
  auto m = g.build();
  const auto& n = upgraded(m, "drop");
  EXPECT_EQ(scalar_float(m, n.input(1)), 0.25f);
  EXPECT_EQ(n.attribute_size(), 0);
}

TEST(OpsetUpgrade, DropoutWithAUsedOldMaskIsRefused) {
  auto g = graph(9);
  g.node("Dropout", {"x"}, {"d", "mask"}, "drop");
  g.node("Identity", {"mask"}, {"y"}, "id");
  auto m = g.build();
  EXPECT_THROW(upgrade_opset_to_21(m), model_error);
}

TEST(OpsetUpgrade, PadAttributesBecomeInputs) {
  auto g = graph(10);
  auto& p = g.node("Pad", {"x"}, {"y"}, "pad");
  set_attr(p, "pads", std::vector<std::int64_t>{0, 0, 1, 1, 0, 0, 1, 1});
  set_attr(p, "value", 0.5f);
  set_attr(p, "mode", "constant");
  auto m = g.build();
  const auto& n = upgraded(m, "pad");
  ASSERT_EQ(n.input_size(), 3);
  EXPECT_EQ(int64_values(m, n.input(1)), (std::vector<std::int64_t>{0, 0, 1, 1, 0, 0, 1, 1}));
  EXPECT_EQ(scalar_float(m, n.input(2)), 0.5f);
  ASSERT_EQ(n.attribute_size(), 1);
  EXPECT_EQ(n.attribute(0).name(), "mode");
}

TEST(OpsetUpgrade, SliceAttributesBecomeInputs) {
  auto g = graph(9);
  auto& s = g.node("Slice", {"x"}, {"y"}, "slice");
  set_attr(s, "starts", std::vector<std::int64_t>{0, 1});
  set_attr(s, "ends", std::vector<std::int64_t>{1, 3});
  set_attr(s, "axes", std::vector<std::int64_t>{0, 2});
  auto m = g.build();
  const auto& n = upgraded(m, "slice");
  ASSERT_EQ(n.input_size(), 4);
  EXPECT_EQ(int64_values(m, n.input(1)), (std::vector<std::int64_t>{0, 1}));
  EXPECT_EQ(int64_values(m, n.input(2)), (std::vector<std::int64_t>{1, 3}));
  EXPECT_EQ(int64_values(m, n.input(3)), (std::vector<std::int64_t>{0, 2}));
  EXPECT_EQ(n.attribute_size(), 0);
}

TEST(OpsetUpgrade, TopKAndReshapeAttributesBecomeInputs) {
  auto g = graph(4);
  set_attr(g.node("Reshape", {"x"}, {"r"}, "reshape"), "shape", std::vector<std::int64_t>{6, 20});
  set_attr(g.node("TopK", {"r"}, {"y", "idx"}, "topk"), "k", 3);
  auto m = g.build();
  const auto& r = upgraded(m, "reshape");
  EXPECT_EQ(int64_values(m, r.input(1)), (std::vector<std::int64_t>{6, 20}));
  const auto& t = *find_node(m, "topk");
  EXPECT_EQ(int64_values(m, t.input(1)), std::vector<std::int64_t>{3});
  EXPECT_EQ(t.attribute_size(), 0);
}

TEST(OpsetUpgrade, ConcatGetsItsOldDefaultAxis) {
  auto g = graph(3);
  g.node("Concat", {"x", "x"}, {"y"}, "cat");
  auto m = g.build();
  EXPECT_EQ(find_attr(upgraded(m, "cat"), "axis")->i(), 1);
}

TEST(OpsetUpgrade, BatchNormalizationSpatial) {
  auto g = graph(8);
  for (const char* t : {"s", "b", "mean", "var"}) g.initializer(t, onnx_float, {3}, {1, 1, 1});
  auto& bn = g.node("BatchNormalization", {"x", "s", "b", "mean", "var"}, {"y"}, "bn");
  set_attr(bn, "spatial", 1);
  set_attr(bn, "epsilon", 1e-3f);
  auto m = g.build();
  const auto& n = upgraded(m, "bn");
  EXPECT_EQ(find_attr(n, "spatial"), nullptr);
  EXPECT_NE(find_attr(n, "epsilon"), nullptr);

  auto g2 = graph(8);
  set_attr(g2.node("BatchNormalization", {"x", "s", "b", "mean", "var"}, {"y"}, "bn0"), "spatial",
           0);
  auto m2 = g2.build();
  try {
    upgrade_opset_to_21(m2);
    ADD_FAILURE() << "spatial = 0 must be refused";
  } catch (const model_error& e) {
    EXPECT_NE(std::string(e.what()).find("'bn0'"), std::string::npos) << e.what();
  }
}

TEST(OpsetUpgrade, LegacyBroadcastAttributes) {
  auto g = graph(6);
  g.initializer("b", onnx_float, {5}, {1, 2, 3, 4, 5});
  set_attr(g.node("Add", {"x", "b"}, {"y"}, "add"), "broadcast", 1);
  auto m = g.build();
  EXPECT_EQ(upgraded(m, "add").attribute_size(), 0) << "suffix broadcasting is numpy's";

  auto g2 = graph(6);
  g2.initializer("b", onnx_float, {3}, {1, 2, 3});
  auto& mul = g2.node("Mul", {"x", "b"}, {"y"}, "mul_axis");
  set_attr(mul, "broadcast", 1);
  set_attr(mul, "axis", 1);
  auto m2 = g2.build();
  try {
    upgrade_opset_to_21(m2);
    ADD_FAILURE() << "broadcast along an axis must be refused";
  } catch (const model_error& e) {
    EXPECT_NE(std::string(e.what()).find("Mul 'mul_axis'"), std::string::npos) << e.what();
  }
}

TEST(OpsetUpgrade, SoftmaxOnTheLastAxisKeepsOneNode) {
  auto g = graph(11);
  set_attr(g.node("Softmax", {"x"}, {"y"}, "sm"), "axis", 3);  // x is 4-D: the last axis
  auto m = g.build();
  const auto& n = upgraded(m, "sm");
  EXPECT_EQ(find_attr(n, "axis")->i(), -1);
  EXPECT_EQ(m.graph().node_size(), 1);
}

TEST(OpsetUpgrade, SoftmaxOnAnInnerAxisIsFlattenedAndReshaped) {
  auto g = graph(11);
  g.node("Softmax", {"x"}, {"y"}, "sm");  // default axis 1: softmax over [3*4*5] per batch
  auto m = g.build();
  upgrade_opset_to_21(m);
  ASSERT_EQ(m.graph().node_size(), 4);
  const auto& shape = m.graph().node(0);
  const auto& flatten = m.graph().node(1);
  const auto& sm = m.graph().node(2);
  const auto& reshape = m.graph().node(3);
  EXPECT_EQ(shape.op_type(), "Shape");
  EXPECT_EQ(shape.input(0), "x");
  EXPECT_EQ(flatten.op_type(), "Flatten");
  EXPECT_EQ(find_attr(flatten, "axis")->i(), 1);
  EXPECT_EQ(sm.op_type(), "Softmax");
  EXPECT_EQ(sm.input(0), flatten.output(0));
  EXPECT_EQ(find_attr(sm, "axis")->i(), -1);
  EXPECT_EQ(reshape.op_type(), "Reshape");
  EXPECT_EQ(inputs(reshape), (std::vector<std::string>{sm.output(0), shape.output(0)}));
  EXPECT_EQ(reshape.output(0), "y");
}

TEST(OpsetUpgrade, ScatterBecomesScatterElements) {
  auto g = graph(9);
  g.node("Scatter", {"x", "i", "u"}, {"y"}, "sc");
  auto m = g.build();
  EXPECT_EQ(upgraded(m, "sc").op_type(), "ScatterElements");
}

TEST(OpsetUpgrade, ConsumedInputsIsDropped) {
  auto g = graph(5);
  set_attr(g.node("Relu", {"x"}, {"y"}, "relu"), "consumed_inputs", std::vector<std::int64_t>{0});
  auto m = g.build();
  EXPECT_EQ(upgraded(m, "relu").attribute_size(), 0);
}

TEST(OpsetUpgrade, SubgraphNodesAreConverted) {
  auto g = graph(10);
  g.input("cond", int4q::test::onnx_bool, {});
  graph_builder then_branch(10);
  set_attr(then_branch.node("Clip", {"x"}, {"t"}, "inner_clip"), "max", 1.0f);
  then_branch.output("t", onnx_float, {});
  graph_builder else_branch(10);
  else_branch.node("Identity", {"x"}, {"e"}, "inner_id");
  else_branch.output("e", onnx_float, {});
  auto& n = g.node("If", {"cond"}, {"y"}, "if");
  auto* a = n.add_attribute();
  a->set_name("then_branch");
  a->set_type(onnx::AttributeProto::GRAPH);
  *a->mutable_g() = then_branch.build().graph();
  auto* b = n.add_attribute();
  b->set_name("else_branch");
  b->set_type(onnx::AttributeProto::GRAPH);
  *b->mutable_g() = else_branch.build().graph();
  auto m = g.build();
  upgrade_opset_to_21(m);
  const auto& sub = find_attr(m.graph().node(0), "then_branch")->g();
  ASSERT_EQ(sub.node_size(), 1);
  const auto& clip = sub.node(0);
  ASSERT_EQ(clip.input_size(), 3);
  EXPECT_EQ(clip.attribute_size(), 0);
  bool found = false;
  for (const auto& t : sub.initializer()) found = found || t.name() == clip.input(2);
  EXPECT_TRUE(found) << "the bound lives in the subgraph";
}

void expect_refusal(graph_builder g, const std::string& node_text) {
  auto m = g.build();
  const std::string before = m.SerializeAsString();
  try {
    int4q::onnx::check_opset_upgrade_to_21(m);
    ADD_FAILURE() << "check accepted " << node_text;
  } catch (const model_error& e) {
    EXPECT_EQ(e.what_kind(), model_error::kind::unsupported);
  }
  try {
    upgrade_opset_to_21(m);
    ADD_FAILURE() << "no refusal for " << node_text;
  } catch (const model_error& e) {
    EXPECT_EQ(e.what_kind(), model_error::kind::unsupported);
    const std::string msg = e.what();
    EXPECT_NE(msg.find(node_text), std::string::npos) << msg;
    EXPECT_NE(msg.find("`format = matmulnbits`"), std::string::npos) << msg;
  }
  EXPECT_TRUE(m.SerializeAsString() == before) << "a refused upgrade changed the model";
}

TEST(OpsetUpgrade, RefusalsNameTheNodeAndChangeNothing) {
  {
    auto g = graph(9);
    set_attr(g.node("Clip", {"x"}, {"c"}, "fine"), "max", 1.0f);  // convertible, before
    g.node("Upsample", {"c", "scales"}, {"y"}, "up");
    expect_refusal(g, "Upsample 'up'");
  }
  {
    auto g = graph(10);
    g.node("Resize", {"x", "scales"}, {"y"}, "resize10");
    expect_refusal(g, "Resize 'resize10'");
  }
  {
    auto g = graph(5);
    g.node("Tile", {"x", "tiles", "axis"}, {"y"}, "tile");
    expect_refusal(g, "Tile 'tile'");
  }
  {
    auto g = graph(18);
    g.node("GroupNormalization", {"x", "s", "b"}, {"y"}, "gn");
    expect_refusal(g, "GroupNormalization 'gn'");
  }
  {
    auto g = graph(8);
    g.node("ImageScaler", {"x"}, {"y"}, "");  // unnamed: named by its output
    expect_refusal(g, "ImageScaler 'y'");
  }
}

TEST(OpsetUpgrade, UnchangedOpsPassThrough) {
  auto g = graph(11);
  g.node("Relu", {"x"}, {"r"}, "relu");
  auto& conv = g.node("Conv", {"r", "w"}, {"c"}, "conv");
  set_attr(conv, "kernel_shape", std::vector<std::int64_t>{1, 1});
  g.node("MatMulNBits", {"c", "b", "s"}, {"y"}, "mnb", "com.microsoft");
  g.set_opset(1, "com.microsoft");
  auto m = g.build();
  onnx::ModelProto expected = m;
  upgrade_opset_to_21(m);
  ASSERT_EQ(m.graph().node_size(), 3);
  for (int i = 0; i < 3; ++i)
    EXPECT_EQ(m.graph().node(i).SerializeAsString(), expected.graph().node(i).SerializeAsString());
  EXPECT_EQ(int4q::test::opset_of(m, "com.microsoft"), 1);
}

TEST(OpsetUpgrade, Opset21AndAboveOnlyRaisesTheIrVersion) {
  auto g = graph(22);
  g.node("Relu", {"x"}, {"y"}, "relu");
  auto m = g.build();
  const auto log = upgrade_opset_to_21(m);
  EXPECT_TRUE(log.empty());
  EXPECT_EQ(int4q::test::opset_of(m), 22);
  EXPECT_EQ(m.ir_version(), 10);
}

TEST(OpsetUpgrade, ReportsEachConversion) {
  auto g = graph(9);
  set_attr(g.node("Clip", {"x"}, {"y"}, "c1"), "max", 1.0f);
  auto m = g.build();
  const auto log = upgrade_opset_to_21(m);
  ASSERT_EQ(log.size(), 1u);
  EXPECT_NE(log[0].find("Clip 'c1'"), std::string::npos) << log[0];
}

}  // namespace
