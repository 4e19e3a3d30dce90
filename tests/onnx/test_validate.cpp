// validate_model: one test per check (the exception kind and that the message names the node or
// tensor), the sizes load_model and the tensor readers refuse, and every valid model of the
// other tests passing with no warnings.
#include <int4q/onnx/validate.hpp>

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include <int4q/onnx/model.hpp>
#include <int4q/onnx/quantize_model.hpp>
#include <int4q/onnx/weights.hpp>

#include "onnx/devgpt_eval.hpp"
#include "onnx/graph_builder.hpp"
#include "onnx/scratch_dir.hpp"

namespace {

namespace fs = std::filesystem;
namespace ox = int4q::onnx;
using int4q::test::graph_builder;
using int4q::test::onnx_bfloat16;
using int4q::test::onnx_double;
using int4q::test::onnx_float;
using int4q::test::onnx_float16;
using int4q::test::onnx_int64;
using int4q::test::random_values;
using kind = ox::model_error::kind;
using ::onnx::TensorProto;

/// Runs `fn`, expecting a model_error of kind `k` whose message contains every one of `parts`.
void expect_error(const std::function<void()>& fn, kind k, const std::vector<std::string>& parts) {
  try {
    fn();
    ADD_FAILURE() << "no model_error thrown (expected one naming " << parts.front() << ")";
  } catch (const ox::model_error& e) {
    EXPECT_EQ(static_cast<int>(e.what_kind()), static_cast<int>(k)) << e.what();
    const std::string msg = e.what();
    for (const auto& p : parts)
      EXPECT_NE(msg.find(p), std::string::npos) << msg << "\n  lacks: " << p;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "one line: " << msg;
  }
}

void expect_invalid(const ox::model& m, const std::vector<std::string>& parts,
                    const ox::validate_options& o = {}) {
  expect_error([&] { ox::validate_model(m, o); }, kind::invalid, parts);
}

/// x [2, 64] -> MatMul 'mm0' (w0 [64, 32]) -> y -> MatMul 'mm1' (w1 [32, 16]) -> z.
graph_builder two_matmuls() {
  graph_builder g;
  g.input("x", onnx_float, {-1, 64});
  g.initializer("w0", onnx_float, {64, 32}, random_values(64 * 32, 1));
  g.initializer("w1", onnx_float, {32, 16}, random_values(32 * 16, 2));
  g.matmul("mm0", "x", "w0", "y");
  g.matmul("mm1", "y", "w1", "z");
  g.output("z", onnx_float, {-1, 16});
  return g;
}

/// The model passes with no warnings.
void expect_clean(const ox::model& m, const ox::validate_options& o = {}) {
  try {
    const ox::validation_report r = ox::validate_model(m, o);
    EXPECT_TRUE(r.warnings.empty()) << r.warnings.front();
  } catch (const ox::model_error& e) {
    ADD_FAILURE() << e.what();
  }
}

/// Writes `m` to `path` as it is (no checks, unlike save_model).
void write_proto(const ::onnx::ModelProto& m, const fs::path& path) {
  std::ofstream out(path, std::ios::binary);
  ASSERT_TRUE(m.SerializeToOstream(&out));
}

using int4q::test::set_external;

// ---- 1. Graph structure
// --------------------------------------------------------------------------

TEST(ValidateGraph, TwoMatmulsPass) {
  const ox::validation_report r = ox::validate_model(two_matmuls().model());
  EXPECT_TRUE(r.warnings.empty());
  EXPECT_EQ(r.nodes, 2u);
  EXPECT_EQ(r.tensors, 2u);
  EXPECT_EQ(r.scanned_bytes, (64u * 32 + 32 * 16) * 4);
}

TEST(ValidateGraph, CycleIsAnErrorNamingTheNodesOnIt) {
  graph_builder g;
  g.input("x", onnx_float, {2, 4});
  g.node("Add", {"x", "c"}, {"a"}, "add_a");
  g.node("Relu", {"a"}, {"b"}, "relu_b");
  g.node("Neg", {"b"}, {"c"}, "neg_c");
  g.output("c", onnx_float, {2, 4});
  expect_invalid(g.model(), {"cycle", "Add 'add_a'", "Relu 'relu_b'", "Neg 'neg_c'"});
}

TEST(ValidateGraph, NodeReadingItsOwnOutputIsACycle) {
  graph_builder g;
  g.input("x", onnx_float, {2, 4});
  g.node("Add", {"x", "a"}, {"a"}, "self");
  g.output("a", onnx_float, {2, 4});
  expect_invalid(g.model(), {"cycle", "Add 'self' -> Add 'self'"});
}

TEST(ValidateGraph, NodesOutOfOrderAreRefusedAsUnsorted) {
  graph_builder g;
  g.input("x", onnx_float, {2, 4});
  g.node("Neg", {"a"}, {"b"}, "second");
  g.node("Relu", {"x"}, {"a"}, "first");
  g.output("b", onnx_float, {2, 4});
  expect_invalid(g.model(), {"Neg 'second'", "'a'", "Relu 'first'", "topological order"});
}

TEST(ValidateGraph, InputNothingProducesIsAnError) {
  graph_builder g = two_matmuls();
  g.graph().mutable_node(1)->set_input(0, "missing");
  expect_invalid(g.model(), {"MatMul 'mm1'", "'missing'", "no node, initializer or graph input"});
}

TEST(ValidateGraph, OmittedOptionalInputPasses) {
  graph_builder g;
  g.input("x", onnx_float, {2, 64});
  g.initializer("w", onnx_float, {64, 8}, random_values(64 * 8, 3));
  g.gemm("g0", "x", "w", "", "y");
  g.graph().mutable_node(0)->add_input("");  // C given as "" (omitted)
  g.output("y", onnx_float, {2, 8});
  expect_clean(g.model());
}

TEST(ValidateGraph, DuplicateInitializerNames) {
  graph_builder g = two_matmuls();
  g.initializer("w1", onnx_float, {32, 16}, random_values(32 * 16, 4));
  expect_invalid(g.model(), {"initializer 'w1'", "defined twice"});
}

TEST(ValidateGraph, TwoNodesProducingTheSameOutput) {
  graph_builder g = two_matmuls();
  g.node("Relu", {"x"}, {"y"}, "relu_y");
  expect_invalid(g.model(), {"MatMul 'mm0'", "Relu 'relu_y'", "both produce 'y'"});
}

TEST(ValidateGraph, DuplicateGraphInputs) {
  graph_builder g = two_matmuls();
  g.input("x", onnx_float, {-1, 64});
  expect_invalid(g.model(), {"graph input 'x'", "twice"});
}

TEST(ValidateGraph, NodeOutputRedefiningAnInitializer) {
  graph_builder g = two_matmuls();
  g.node("Relu", {"x"}, {"w1"}, "relu_w");
  expect_invalid(g.model(), {"Relu 'relu_w'", "'w1'", "initializer"});
}

TEST(ValidateGraph, GraphOutputNothingComputes) {
  graph_builder g = two_matmuls();
  g.output("nowhere", onnx_float, {2});
  expect_invalid(g.model(), {"graph output 'nowhere'"});
}

/// If 'if0' on `cond` whose then-branch computes Relu(`then_reads`) and else-branch Neg(x).
graph_builder if_model(const std::string& then_reads) {
  graph_builder g;
  g.input("x", onnx_float, {2, 4});
  g.input("cond", int4q::test::onnx_bool, {});
  auto branch = [](const std::string& name, const std::string& op, const std::string& in) {
    ::onnx::GraphProto b;
    b.set_name(name);
    auto* n = b.add_node();
    n->set_op_type(op);
    n->set_name(name + "_node");
    n->add_input(in);
    n->add_output(name + "_out");
    auto* o = b.add_output();
    o->set_name(name + "_out");
    o->mutable_type()->mutable_tensor_type()->set_elem_type(onnx_float);
    return b;
  };
  g.node("Relu", {"x"}, {"r"}, "relu_r");
  auto& n = g.node("If", {"cond"}, {"y"}, "if0");
  auto* a = n.add_attribute();
  a->set_name("then_branch");
  a->set_type(::onnx::AttributeProto::GRAPH);
  *a->mutable_g() = branch("then", "Relu", then_reads);
  auto* e = n.add_attribute();
  e->set_name("else_branch");
  e->set_type(::onnx::AttributeProto::GRAPH);
  *e->mutable_g() = branch("else", "Neg", "x");
  g.node("Neg", {"y"}, {"late"}, "late_node");
  g.output("late", onnx_float, {2, 4});
  return g;
}

TEST(ValidateGraph, SubgraphReadsOuterValues) {
  expect_clean(if_model("r").model());  // an outer node's output computed before the If
  expect_clean(if_model("x").model());  // an outer graph input
}

TEST(ValidateGraph, SubgraphInputNothingProducesNamesTheBranch) {
  expect_invalid(if_model("ghost").model(),
                 {"Relu 'then_node'", "'ghost'", "'then_branch' of If 'if0'"});
}

TEST(ValidateGraph, SubgraphReadingAnOuterValueComputedLater) {
  expect_invalid(if_model("late").model(),
                 {"Relu 'then_node'", "'late'", "Neg 'late_node'", "only after the node"});
}

/// A model-local function 'Scale' (domain "local"): r = Relu(a), y = Mul(b, r), with
/// {a, b} = `body_inputs` ({"x", "x"}: y = x * Relu(x)).
::onnx::FunctionProto scale_function(const std::vector<std::string>& body_inputs) {
  ::onnx::FunctionProto f;
  f.set_name("Scale");
  f.set_domain("local");
  f.add_input("x");
  f.add_output("y");
  auto* relu = f.add_node();
  relu->set_op_type("Relu");
  relu->set_name("relu");
  relu->add_input(body_inputs[0]);
  relu->add_output("r");
  auto* mul = f.add_node();
  mul->set_op_type("Mul");
  mul->set_name("mul");
  mul->add_input(body_inputs[1]);
  mul->add_input("r");
  mul->add_output("y");
  return f;
}

TEST(ValidateGraph, FunctionBodiesAreCheckedAsGraphsOfTheirOwn) {
  ox::model m = two_matmuls().model();
  *m.proto.add_functions() = scale_function({"x", "x"});
  const ox::validation_report r = ox::validate_model(m);
  EXPECT_EQ(r.nodes, 4u) << "2 graph nodes + 2 in the body";

  // A body reading a name that is not among its inputs: the graph's 'w0' is not visible there.
  m.proto.mutable_functions(0)->CopyFrom(scale_function({"w0", "x"}));
  expect_invalid(m, {"Relu 'relu'", "'w0'", "function 'Scale'"});
  // A body whose nodes form a cycle (relu reads y, which mul computes from relu's r).
  m.proto.mutable_functions(0)->CopyFrom(scale_function({"y", "x"}));
  expect_invalid(m, {"cycle", "Relu 'relu'", "Mul 'mul'", "function 'Scale'"});
  // An output nothing computes.
  m.proto.mutable_functions(0)->CopyFrom(scale_function({"x", "x"}));
  m.proto.mutable_functions(0)->set_output(0, "nothing");
  expect_invalid(m, {"'nothing'", "function 'Scale'"});
}

TEST(ValidateGraph, UnnamedNodesAreNamedByOpAndIndex) {
  graph_builder g = two_matmuls();
  g.graph().mutable_node(1)->set_name("");
  g.graph().mutable_node(1)->set_input(0, "missing");
  expect_invalid(g.model(), {"MatMul 'MatMul#1'"});
}

// ---- 2. Tensors
// ----------------------------------------------------------------------------------

TEST(ValidateTensor, UndefinedDataTypeIsInvalid) {
  graph_builder g = two_matmuls();
  g.graph().mutable_initializer(1)->set_data_type(TensorProto::UNDEFINED);
  expect_invalid(g.model(), {"initializer 'w1'", "UNDEFINED"});
}

TEST(ValidateTensor, UnknownDataTypeIsUnsupported) {
  graph_builder g = two_matmuls();
  g.graph().mutable_initializer(1)->set_data_type(99);
  expect_error([&] { ox::validate_model(g.model()); }, kind::unsupported,
               {"initializer 'w1'", "data type 99"});
}

TEST(ValidateTensor, NegativeDimIsInvalid) {
  graph_builder g = two_matmuls();
  g.graph().mutable_initializer(0)->set_dims(1, -32);
  expect_invalid(g.model(), {"initializer 'w0'", "negative dimension -32", "[64, -32]"});
}

TEST(ValidateTensor, DimsWhoseSizeOverflowsAreInvalid) {
  graph_builder g = two_matmuls();
  TensorProto& t = *g.graph().mutable_initializer(0);
  t.set_dims(0, std::int64_t{1} << 40);
  t.set_dims(1, std::int64_t{1} << 40);
  expect_invalid(g.model(), {"initializer 'w0'", "overflows 64 bits", "[1099511627776, "});
  // The element count fits, the bytes (x 4) do not.
  t.set_dims(0, std::int64_t{1} << 31);
  t.set_dims(1, std::int64_t{1} << 32);
  expect_invalid(g.model(), {"initializer 'w0'", "byte size overflows"});
}

TEST(ValidateTensor, RawDataOfTheWrongLength) {
  graph_builder g = two_matmuls();
  g.graph().mutable_initializer(1)->mutable_raw_data()->resize(100);
  expect_invalid(g.model(), {"initializer 'w1'", "100 bytes of raw_data", "need 2048"});
}

TEST(ValidateTensor, FloatDataShorterThanTheDims) {
  graph_builder g = two_matmuls();
  TensorProto& t = *g.graph().mutable_initializer(1);
  t.clear_raw_data();
  for (int i = 0; i < 500; ++i) t.add_float_data(0.5f);
  expect_invalid(g.model(), {"initializer 'w1'", "500 values in float_data", "need 512"});
  for (int i = 0; i < 12; ++i) t.add_float_data(0.5f);
  expect_clean(g.model());
}

TEST(ValidateTensor, TypedFieldsOfEachTypeAreCounted) {
  graph_builder g;
  g.input("x", onnx_float, {2});
  auto add = [&](const std::string& name, int type, std::function<void(TensorProto&)> fill) {
    TensorProto t;
    t.set_name(name);
    t.set_data_type(type);
    t.add_dims(3);
    fill(t);
    g.initializer(t);
  };
  add("f64", onnx_double, [](TensorProto& t) {
    for (int i = 0; i < 3; ++i) t.add_double_data(1);
  });
  add("i64", onnx_int64, [](TensorProto& t) {
    for (int i = 0; i < 3; ++i) t.add_int64_data(1);
  });
  add("f16", onnx_float16, [](TensorProto& t) {
    for (int i = 0; i < 3; ++i) t.add_int32_data(0x3C00);
  });
  add("u64", TensorProto::UINT64, [](TensorProto& t) {
    for (int i = 0; i < 3; ++i) t.add_uint64_data(1);
  });
  add("str", TensorProto::STRING, [](TensorProto& t) {
    for (int i = 0; i < 3; ++i) t.add_string_data("a");
  });
  add("i4", 22, [](TensorProto& t) {
    for (int i = 0; i < 2; ++i) t.add_int32_data(0x21);
  });  // 3 values: 2 bytes
  g.node("Relu", {"x"}, {"y"}, "r");
  g.output("y", onnx_float, {2});
  expect_clean(g.model());

  g.graph().mutable_initializer(1)->add_int64_data(2);  // 4 values for 3 elements
  expect_invalid(g.model(), {"initializer 'i64'", "4 values in int64_data", "need 3"});
  g.graph().mutable_initializer(1)->mutable_int64_data()->RemoveLast();
  g.graph().mutable_initializer(4)->mutable_string_data()->RemoveLast();
  expect_invalid(g.model(), {"initializer 'str'", "2 values in string_data"});
}

TEST(ValidateTensor, RawDataAndTypedValuesTogether) {
  graph_builder g = two_matmuls();
  g.graph().mutable_initializer(1)->add_float_data(1.0f);
  expect_invalid(g.model(), {"initializer 'w1'", "both raw_data and typed values"});
}

TEST(ValidateTensor, ConstantNodeTensorsAreChecked) {
  graph_builder g;
  g.input("x", onnx_float, {-1, 8});
  g.constant("w", onnx_float, {8, 4}, random_values(32, 5));
  g.matmul("mm", "x", "w", "y");
  g.output("y", onnx_float, {-1, 4});
  expect_clean(g.model());
  auto* a = g.graph().mutable_node(0)->mutable_attribute(0);
  a->mutable_t()->mutable_raw_data()->resize(12);
  expect_invalid(g.model(), {"Constant 'w_const'", "attribute 'value'", "12 bytes"});
}

TEST(ValidateTensor, SubgraphInitializersAreChecked) {
  graph_builder g = if_model("x");
  auto* branch = g.graph().mutable_node(1)->mutable_attribute(0)->mutable_g();
  *branch->add_initializer() = int4q::test::float_tensor("inner", onnx_float, {2}, {1, 2});
  expect_clean(g.model());
  branch->mutable_initializer(0)->set_dims(0, 3);
  expect_invalid(g.model(), {"initializer 'inner'", "'then_branch' of If 'if0'", "need 12"});
}

TEST(ValidateTensor, ExternalReferenceWithoutLocation) {
  graph_builder g = two_matmuls();
  TensorProto& t = *g.graph().mutable_initializer(1);
  t.clear_raw_data();
  t.set_data_location(TensorProto::EXTERNAL);
  expect_invalid(g.model(), {"initializer 'w1'", "location"});
}

// ---- 3. MatMul / Gemm shapes
// ---------------------------------------------------------------------

TEST(ValidateShapes, MatMulInputWidthAgainstTheWeightsK) {
  graph_builder g;
  g.input("x", onnx_float, {-1, 48});
  g.initializer("w", onnx_float, {64, 32}, random_values(64 * 32, 6));
  g.matmul("mm", "x", "w", "y");
  g.output("y", onnx_float, {-1, 32});
  expect_invalid(g.model(), {"MatMul 'mm'", "'x' [?, 48]", "'w' [64, 32]", "(48)", "K (64)"});
}

TEST(ValidateShapes, MatMulShapesFollowThroughAChain) {
  graph_builder g = two_matmuls();  // mm0's output [?, 32] is computed, then checked at mm1
  *g.graph().mutable_initializer(1) =
      int4q::test::float_tensor("w1", onnx_float, {16, 16}, random_values(256, 7));
  expect_invalid(g.model(), {"MatMul 'mm1'", "'y' [?, 32]", "K (16)"});
}

TEST(ValidateShapes, ValueInfoShapesAreUsed) {
  graph_builder g;
  g.input("x", onnx_float, {-1, 64});
  g.initializer("w", onnx_float, {64, 32}, random_values(64 * 32, 8));
  g.node("Relu", {"x"}, {"h"}, "relu");
  g.initializer("w2", onnx_float, {16, 8}, random_values(16 * 8, 9));
  g.matmul("mm", "h", "w2", "y");
  g.output("y", onnx_float, {-1, 8});
  expect_clean(g.model());  // h's shape unknown: not checked
  auto* vi = g.graph().add_value_info();
  vi->set_name("h");
  auto* shape = vi->mutable_type()->mutable_tensor_type()->mutable_shape();
  shape->add_dim()->set_dim_param("batch");
  shape->add_dim()->set_dim_value(64);
  expect_invalid(g.model(), {"MatMul 'mm'", "'h' [?, 64]", "K (16)"});
}

TEST(ValidateShapes, SymbolicDimensionsAreNotChecked) {
  graph_builder g;
  g.input("x", onnx_float, {-1, -1});
  g.initializer("w", onnx_float, {64, 32}, random_values(64 * 32, 10));
  g.matmul("mm", "x", "w", "y");
  g.output("y", onnx_float, {-1, 32});
  expect_clean(g.model());
}

TEST(ValidateShapes, GemmTransBAgainstTheInput) {
  graph_builder g;
  g.input("x", onnx_float, {4, 64});
  g.initializer("w", onnx_float, {64, 32}, random_values(64 * 32, 11));
  int4q::test::gemm_attrs a;
  a.trans_b = true;  // reads w as [N, K] = [64, 32]: K = 32
  g.gemm("g0", "x", "w", "", "y", a);
  g.output("y", onnx_float, {4, 64});
  expect_invalid(g.model(), {"Gemm 'g0'", "transB = 1", "'x' [4, 64]", "[K, N] = [32, 64]"});
  g.graph().mutable_node(0)->mutable_attribute(0)->set_i(0);  // transB = 0: consistent
  expect_clean(g.model());
}

TEST(ValidateShapes, GemmTransAReadsTheOtherDimension) {
  graph_builder g;
  g.input("x", onnx_float, {64, 4});
  g.initializer("w", onnx_float, {64, 32}, random_values(64 * 32, 12));
  int4q::test::gemm_attrs a;
  a.trans_a = true;
  g.gemm("g0", "x", "w", "", "y", a);
  g.output("y", onnx_float, {4, 32});
  expect_clean(g.model());
  g.graph().mutable_node(0)->mutable_attribute(0)->set_i(0);
  expect_invalid(g.model(), {"Gemm 'g0'", "transA = 0", "(4)", "(64)"});
}

TEST(ValidateShapes, GemmWeightMustBe2D) {
  graph_builder g;
  g.input("x", onnx_float, {4, 64});
  g.initializer("w", onnx_float, {2, 64, 16}, random_values(2 * 64 * 16, 13));
  g.gemm("g0", "x", "w", "", "y");
  g.output("y", onnx_float, {4, 16});
  expect_invalid(g.model(), {"Gemm 'g0'", "'w' is 3-D [2, 64, 16]"});
}

TEST(ValidateShapes, GemmBiasMustBroadcastToTheOutput) {
  graph_builder g;
  g.input("x", onnx_float, {4, 64});
  g.initializer("w", onnx_float, {64, 32}, random_values(64 * 32, 14));
  g.initializer("c", onnx_float, {16}, random_values(16, 15));
  g.gemm("g0", "x", "w", "c", "y");
  g.output("y", onnx_float, {4, 32});
  expect_invalid(g.model(), {"Gemm 'g0'", "bias 'c' [16]", "[M, N] = [4, 32]"});
  *g.graph().mutable_initializer(1) =
      int4q::test::float_tensor("c", onnx_float, {1, 32}, random_values(32, 16));
  expect_clean(g.model());
  *g.graph().mutable_initializer(1) =
      int4q::test::float_tensor("c", onnx_float, {3, 32}, random_values(96, 17));
  expect_invalid(g.model(), {"bias 'c' [3, 32]"});
}

TEST(ValidateShapes, SubgraphMatMulAgainstAnOuterWeight) {
  graph_builder g = if_model("x");
  g.initializer("w", onnx_float, {8, 3}, random_values(24, 18));
  auto* branch = g.graph().mutable_node(1)->mutable_attribute(0)->mutable_g();
  auto* n = branch->mutable_node(0);
  n->set_op_type("MatMul");
  n->add_input("w");  // x [2, 4] @ w [8, 3]
  expect_invalid(g.model(), {"MatMul 'then_node'", "'then_branch' of If 'if0'", "K (8)"});
}

// ---- 4. Memory
// -----------------------------------------------------------------------------------

TEST(ValidateMemory, TensorLargerThanTheMachine) {
  const ox::model m = two_matmuls().model();
  ox::validate_options o;
  o.available_memory_bytes = 4096;  // w0 is 8192 bytes in float32, w1 2048
  expect_invalid(m, {"initializer 'w0'", "[64, 32]", "8192 bytes", "4096"}, o);
  o.materializes_all = false;  // nothing quantized, nothing held in float: passes
  expect_clean(m, o);
  o.quantized = {"w1"};  // quantized: twice its float32 size, 4096: fits
  expect_clean(m, o);
  o.available_memory_bytes = 4095;
  expect_invalid(m, {"initializer 'w1'", "4096 bytes", "twice", "`exclude`"}, o);
}

TEST(ValidateMemory, HugeExternalTensorIsRefusedBeforeAnyRead) {
  // 'big' claims [2^20, 2^20] floats (4 TiB) in an external file: the memory check refuses it
  // naming the size, before anything would read it (the file does not even exist).
  graph_builder g = two_matmuls();
  TensorProto t = int4q::test::float_tensor("big", onnx_float, {1, 1}, {0.0f});
  t.set_dims(0, std::int64_t{1} << 20);
  t.set_dims(1, std::int64_t{1} << 20);
  set_external(t, "big.data", 0, std::int64_t{1} << 42);
  g.initializer(t);
  ox::validate_options o;
  o.available_memory_bytes = std::uint64_t{64} << 30;
  expect_invalid(g.model(), {"initializer 'big'", "[1048576, 1048576]", "4398046511104 bytes"}, o);
}

// ---- 5. Non-finite values
// ------------------------------------------------------------------------

class ValidateValues : public int4q::test::scratch_dir_test {};

TEST_F(ValidateValues, NonFiniteIsAnErrorInAQuantizedWeightOfEachFloatType) {
  for (const int type : {onnx_float, onnx_float16, onnx_bfloat16, onnx_double}) {
    graph_builder g;
    g.input("x", onnx_float, {-1, 8});
    std::vector<float> v = random_values(8 * 4, 19);
    v[1 * 4 + 2] = std::numeric_limits<float>::quiet_NaN();
    v[5 * 4 + 3] = -std::numeric_limits<float>::infinity();
    g.initializer("w", type, {8, 4}, v);
    g.matmul("mm", "x", "w", "y");
    g.output("y", onnx_float, {-1, 4});
    ox::validate_options o;
    o.quantized = {"w"};
    SCOPED_TRACE(type);
    expect_invalid(g.model(),
                   {"initializer 'w'", "2 non-finite values", "NaN, at [1, 2]", "`exclude`"}, o);
    o.quantized.clear();  // kept in float: a warning
    const ox::validation_report r = ox::validate_model(g.model(), o);
    ASSERT_EQ(r.warnings.size(), 1u);
    EXPECT_NE(r.warnings[0].find("initializer 'w' [8, 4]"), std::string::npos) << r.warnings[0];
    EXPECT_NE(r.warnings[0].find("kept as is"), std::string::npos) << r.warnings[0];
  }
}

TEST_F(ValidateValues, TypedFieldsConstantsAndMasks) {
  // Initializers and weights: NaN or Inf is reported. Other Constants: only NaN (-Inf is how
  // exporters write attention masks).
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  graph_builder g;
  g.input("x", onnx_float, {-1, 3});
  TensorProto b;  // a MatMul weight in float_data, +Inf
  b.set_name("b");
  b.set_data_type(onnx_float);
  b.add_dims(3);
  b.add_dims(1);
  for (const float v : {1.0f, inf, 2.0f}) b.add_float_data(v);
  g.initializer(b);
  auto half = [&](const std::string& name, std::int32_t bits) {  // fp16 in int32_data
    TensorProto h;
    h.set_name(name);
    h.set_data_type(onnx_float16);
    h.add_dims(2);
    h.add_int32_data(0x3C00);
    h.add_int32_data(bits);
    g.initializer(h);
  };
  half("inf16", 0xFC00);  // -Inf in an initializer: a warning
  half("nan16", 0x7E00);  // NaN: a warning
  g.constant("c", onnx_float, {2}, {1.0f, nan});
  g.constant("mask", onnx_float, {}, {-inf});  // -Inf in a Constant that is no weight: a mask
  g.matmul("mm", "x", "b", "y");
  g.output("y", onnx_float, {-1, 1});
  const ox::validation_report r = ox::validate_model(g.model());
  ASSERT_EQ(r.warnings.size(), 4u);
  EXPECT_NE(r.warnings[0].find("initializer 'b' [3, 1] float32 holds 1 non-finite value (the "
                               "first, +Inf, at [1, 0])"),
            std::string::npos)
      << r.warnings[0];
  EXPECT_NE(r.warnings[1].find("initializer 'inf16' [2] float16"), std::string::npos)
      << r.warnings[1];
  EXPECT_NE(r.warnings[1].find("-Inf, at [1]"), std::string::npos) << r.warnings[1];
  EXPECT_NE(r.warnings[2].find("initializer 'nan16' [2] float16"), std::string::npos)
      << r.warnings[2];
  EXPECT_NE(r.warnings[2].find("NaN, at [1]"), std::string::npos) << r.warnings[2];
  EXPECT_NE(r.warnings[3].find("Constant 'c_const'"), std::string::npos) << r.warnings[3];
  ox::validate_options o;
  o.quantized = {"b"};
  expect_invalid(g.model(), {"initializer 'b'", "+Inf, at [1, 0]", "would quantize"}, o);
  o.quantized.clear();
  o.check_values = false;
  EXPECT_TRUE(ox::validate_model(g.model(), o).warnings.empty());
}

TEST_F(ValidateValues, ExternalDataIsScannedInChunks) {
  // 3 M floats (12 MB, three 4 MiB chunks) with one NaN in the last chunk, saved externally.
  const std::size_t rows = 3072, cols = 1024;
  std::vector<float> v(rows * cols, 0.25f);
  const std::size_t bad = 2500 * cols + 7;
  v[bad] = std::numeric_limits<float>::quiet_NaN();
  graph_builder g;
  g.input("x", onnx_float, {-1, static_cast<std::int64_t>(rows)});
  g.initializer("w", onnx_float, {std::int64_t(rows), std::int64_t(cols)}, v);
  g.matmul("mm", "x", "w", "y");
  g.output("y", onnx_float, {-1, std::int64_t(cols)});
  ox::save_options so;
  so.mode = ox::external_data::always;
  ox::save_model(g.model(), dir_ / "big.onnx", so);
  const ox::model m = ox::load_model(dir_ / "big.onnx");
  ASSERT_TRUE(ox::is_external(m.proto.graph().initializer(0)));
  const ox::validation_report r = ox::validate_model(m);
  ASSERT_EQ(r.warnings.size(), 1u);
  EXPECT_NE(r.warnings[0].find("big.onnx': initializer 'w'"), std::string::npos) << r.warnings[0];
  EXPECT_NE(r.warnings[0].find("NaN, at [2500, 7]"), std::string::npos) << r.warnings[0];
  EXPECT_EQ(r.scanned_bytes, rows * cols * 4);
  ox::validate_options o;
  o.quantized = {"w"};
  expect_invalid(m, {"big.onnx'", "initializer 'w'", "NaN, at [2500, 7]"}, o);
}

TEST_F(ValidateValues, SelectionComesFromTheQuantizeOptions) {
  graph_builder g = two_matmuls();
  std::vector<float> v = random_values(32 * 16, 2);
  v[3] = std::numeric_limits<float>::quiet_NaN();
  *g.graph().mutable_initializer(1) = int4q::test::float_tensor("w1", onnx_float, {32, 16}, v);
  ox::quantize_options q;
  q.config.group_size = 32;
  ox::validate_options o;
  o.quantize = &q;  // mm1 is the lm_head (its output is the graph output): kept by default
  EXPECT_EQ(ox::validate_model(g.model(), o).warnings.size(), 1u);
  q.lm_head = ox::lm_head_policy::quantize;
  expect_invalid(g.model(), {"initializer 'w1'", "would quantize"}, o);
  q.exclude = {"mm1"};
  EXPECT_EQ(ox::validate_model(g.model(), o).warnings.size(), 1u);
}

// A weight or table read through a constant path (fp16 -> Cast) is checked in its stored source.
TEST_F(ValidateValues, ConstantPathSourcesAreTheQuantizedTensors) {
  for (const bool table : {false, true}) {
    SCOPED_TRACE(table ? "embedding table" : "MatMul weight");
    graph_builder g;
    std::vector<float> v = random_values(32 * 16, 3);
    v[5] = std::numeric_limits<float>::quiet_NaN();
    g.initializer("w16", int4q::test::onnx_float16, {32, 16}, v);
    int4q::test::set_attr(g.node("Cast", {"w16"}, {"w32"}, "cast"), "to", onnx_float);
    if (table) {
      g.input("ids", int4q::test::onnx_int64, {4});
      g.node("Gather", {"w32", "ids"}, {"y"}, "embed");
      g.output("y", onnx_float, {4, 16});
    } else {
      g.input("x", onnx_float, {4, 32});
      g.matmul("mm", "x", "w32", "y");
      g.output("y", onnx_float, {4, 16});
    }
    ox::quantize_options q;
    q.config.group_size = 16;
    q.lm_head = ox::lm_head_policy::quantize;
    ox::validate_options o;
    o.quantize = &q;
    if (table) {
      EXPECT_EQ(ox::validate_model(g.model(), o).warnings.size(), 1u);  // tables kept by default
      q.embeddings = ox::embedding_policy::quantize;
    }
    expect_invalid(g.model(), {"initializer 'w16'", "would quantize"}, o);
  }
}

// quantized_tensors names exactly the weights and tables quantize_model quantizes.
TEST(ValidateSelection, QuantizedTensorsMatchQuantizeModelsReport) {
  const ox::model fp32 = ox::load_model(int4q::test::devgpt_dir() / "devgpt_fp32.onnx");
  std::vector<ox::quantize_options> cases(4);
  cases[1].lm_head = ox::lm_head_policy::quantize;
  cases[2].exclude = {"/fc/"};
  cases[3].embeddings = ox::embedding_policy::quantize;
  cases[3].format = ox::output_format::qdq;
  for (std::size_t c = 0; c < cases.size(); ++c) {
    cases[c].config.group_size = 32;
    SCOPED_TRACE(c);
    ox::model m = fp32;
    const std::set<std::string> predicted = ox::quantized_tensors(m, cases[c]);
    const ox::quantize_report r = ox::quantize_model(m, cases[c]);
    std::set<std::string> actual;
    for (const auto& t : r.tensors)
      if (t.quantized) actual.insert(t.weight);
    for (const auto& e : r.embeddings)
      if (e.tensor.quantized) actual.insert(e.tensor.weight);
    EXPECT_EQ(predicted, actual);
    EXPECT_FALSE(actual.empty());
  }
}

// ---- load_model and the readers: sizes from the file are checked -----------------------------

class LoadModelSizes : public int4q::test::scratch_dir_test {};

TEST_F(LoadModelSizes, NegativeDimsAreRefusedByLoadModel) {
  graph_builder g = two_matmuls();
  TensorProto& t = *g.graph().mutable_initializer(1);
  t.set_dims(0, -32);
  t.set_dims(1, -16);  // the product would be positive
  write_proto(g.build(), dir_ / "neg.onnx");
  expect_error([&] { ox::load_model(dir_ / "neg.onnx"); }, kind::invalid,
               {"neg.onnx'", "tensor 'w1'", "negative dimension -32"});
}

TEST_F(LoadModelSizes, OverflowingDimsAreRefusedByLoadModel) {
  graph_builder g = two_matmuls();
  TensorProto& t = *g.graph().mutable_initializer(1);
  t.set_dims(0, std::int64_t{1} << 62);
  t.set_dims(1, 16);
  write_proto(g.build(), dir_ / "inline.onnx");
  expect_error([&] { ox::load_model(dir_ / "inline.onnx"); }, kind::invalid,
               {"inline.onnx'", "tensor 'w1'", "overflows 64 bits"});
  // External: the range check would have been skipped (no size known).
  set_external(t, "w1.data", 0, 2048);
  { std::ofstream(dir_ / "w1.data", std::ios::binary) << std::string(2048, '\0'); }
  write_proto(g.build(), dir_ / "ext.onnx");
  expect_error([&] { ox::load_model(dir_ / "ext.onnx"); }, kind::invalid,
               {"ext.onnx'", "tensor 'w1'", "overflows 64 bits"});
}

TEST(TensorReaders, OverflowingDimsAreRefusedNotAllocated) {
  // Built in memory (load_model never saw it): the readers and find_weights check too.
  TensorProto t = int4q::test::float_tensor("w", onnx_float, {2, 2}, {1, 2, 3, 4});
  const ox::model m;
  t.set_dims(0, std::int64_t{1} << 33);
  t.set_dims(1, std::int64_t{1} << 33);  // 2^66 elements: wraps to 0 in size_t
  expect_error([&] { ox::read_matrix(m, t); }, kind::invalid, {"tensor 'w'", "[8589934592, "});
  expect_error([&] { ox::read_tensor_bytes(m, t); }, kind::invalid, {"tensor 'w'", "overflows"});
  t.set_dims(0, std::int64_t{1} << 31);
  t.set_dims(1, std::int64_t{1} << 31);  // 2^62 elements: 2^64 bytes as float32
  expect_error([&] { ox::read_matrix(m, t); }, kind::invalid, {"tensor 'w'"});
  TensorProto v = int4q::test::float_tensor("v", onnx_float16, {2}, {1, 2});
  v.set_dims(0, std::int64_t{1} << 62);  // fp16 bytes fit in 64 bits, float32 ones do not
  expect_error([&] { ox::read_vector(m, v); }, kind::invalid, {"tensor 'v'"});
  v.set_dims(0, -2);
  expect_error([&] { ox::read_vector(m, v); }, kind::invalid, {"tensor 'v'", "negative"});

  graph_builder g = two_matmuls();
  g.graph().mutable_initializer(0)->set_dims(0, std::int64_t{1} << 40);
  g.graph().mutable_initializer(0)->set_dims(1, std::int64_t{1} << 40);
  expect_error([&] { ox::find_weights(g.model()); }, kind::invalid, {"tensor 'w0'"});
}

TEST_F(LoadModelSizes, FourBitTensorOfTwoToThe64MinusOneElementsNeedsItsBytes) {
  // 3 * 5 * 17 * 257 * 641 * 65537 * 6700417 = 2^64 - 1 elements: (count + 1) / 2 would wrap to
  // 0 bytes and let an empty payload through; it needs 2^63 bytes.
  graph_builder g = two_matmuls();
  TensorProto& t = *g.graph().add_initializer();
  t.set_name("q");
  t.set_data_type(22);  // INT4 (Debian's onnx.proto predates the name)
  for (const std::int64_t d : {3, 5, 17, 257, 641, 65537, 6700417}) t.add_dims(d);
  t.set_raw_data("");
  write_proto(g.build(), dir_ / "q.onnx");
  expect_error([&] { ox::load_model(dir_ / "q.onnx"); }, kind::invalid,
               {"tensor 'q'", "9223372036854775808"});
  t.clear_raw_data();  // int32_data: two 4-bit values per entry, none given
  expect_invalid(g.model(), {"initializer 'q'", "9223372036854775808"});
}

TEST_F(LoadModelSizes, ExternalDataThroughASymlinkOutsideTheFolderIsRefused) {
  fs::create_directories(dir_ / "model");
  fs::create_directories(dir_ / "elsewhere");
  graph_builder g = two_matmuls();
  const std::string payload = g.graph().initializer(1).raw_data();
  { std::ofstream(dir_ / "elsewhere" / "w1.data", std::ios::binary) << payload; }
  set_external(*g.graph().mutable_initializer(1), "w1.data", 0,
               static_cast<std::int64_t>(payload.size()));
  write_proto(g.build(), dir_ / "model" / "m.onnx");

  fs::create_symlink(dir_ / "elsewhere" / "w1.data", dir_ / "model" / "w1.data");
  expect_error([&] { ox::load_model(dir_ / "model" / "m.onnx"); }, kind::invalid,
               {"m.onnx'", "tensor 'w1'", "symbolic link", "elsewhere", "copy the data file"});

  // A link that stays inside the folder is fine, and so is a folder reached through a link.
  fs::remove(dir_ / "model" / "w1.data");
  fs::create_directories(dir_ / "model" / "sub");
  fs::copy_file(dir_ / "elsewhere" / "w1.data", dir_ / "model" / "sub" / "real.data");
  fs::create_symlink(dir_ / "model" / "sub" / "real.data", dir_ / "model" / "w1.data");
  const ox::model m = ox::load_model(dir_ / "model" / "m.onnx");
  expect_clean(m);
  fs::create_directory_symlink(dir_ / "model", dir_ / "linked");
  expect_clean(ox::load_model(dir_ / "linked" / "m.onnx"));

  // The Hugging Face cache: snapshots/<rev>/model.onnx and its data are links to files side by
  // side in blobs/. The data leaves the snapshot folder but stays next to the real model file.
  const fs::path hub = dir_ / "hub";
  fs::create_directories(hub / "blobs");
  fs::create_directories(hub / "snapshots" / "rev");
  fs::copy_file(dir_ / "model" / "m.onnx", hub / "blobs" / "a1b2");
  fs::copy_file(dir_ / "elsewhere" / "w1.data", hub / "blobs" / "c3d4");
  fs::create_symlink("../../blobs/a1b2", hub / "snapshots" / "rev" / "m.onnx");
  fs::create_symlink("../../blobs/c3d4", hub / "snapshots" / "rev" / "w1.data");
  expect_clean(ox::load_model(hub / "snapshots" / "rev" / "m.onnx"));
  // ... but a model file that is no link gives no such licence.
  fs::remove(hub / "snapshots" / "rev" / "m.onnx");
  fs::copy_file(hub / "blobs" / "a1b2", hub / "snapshots" / "rev" / "m.onnx");
  expect_error([&] { ox::load_model(hub / "snapshots" / "rev" / "m.onnx"); }, kind::invalid,
               {"tensor 'w1'", "symbolic link", "blobs"});
}

TEST_F(LoadModelSizes, OneExternalFilePerTensorNeedsOneDescriptorAtATime) {
  // 64 initializers, each in its own data file (torch.onnx's layout for models over 2 GB):
  // the NaN/Inf scan must not hold them all open. Checked in a child with RLIMIT_NOFILE 32.
  graph_builder g;
  g.input("x", onnx_float, {2, 4});
  g.node("Identity", {"x"}, {"y"}, "id");
  g.output("y", onnx_float, {2, 4});
  for (int i = 0; i < 64; ++i) {
    const std::string name = "c" + std::to_string(i);
    g.initializer(name, onnx_float, {4}, random_values(4, static_cast<std::uint32_t>(100 + i)));
    TensorProto& t = *g.graph().mutable_initializer(i);
    { std::ofstream(dir_ / (name + ".bin"), std::ios::binary) << t.raw_data(); }
    set_external(t, name + ".bin", 0, 16);
  }
  write_proto(g.build(), dir_ / "m.onnx");
  const ox::model m = ox::load_model(dir_ / "m.onnx");
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    const rlimit few{32, 32};
    int status = ::setrlimit(RLIMIT_NOFILE, &few) == 0 ? 0 : 2;
    try {
      const ox::validation_report r = ox::validate_model(m);
      if (r.scanned_bytes != 64 * 16) status = 3;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "%s\n", e.what());
      status = 1;
    }
    ::_exit(status);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "1: refused (see stderr), 2: setrlimit, 3: bytes scanned";
}

// ---- Every valid model passes with no warnings -------------------------------------------------

TEST(ValidateModels, RealModelsPassWithoutWarnings) {
  std::vector<fs::path> models = {int4q::test::devgpt_dir() / "devgpt_fp32.onnx"};
  for (const auto& e : fs::directory_iterator(int4q::test::devgpt_dir() / "ort"))
    if (e.path().extension() == ".onnx") models.push_back(e.path());
  const char* env = std::getenv("INT4Q_TEST_MODELS_DIR");
  const fs::path extra =
      env && *env ? fs::path(env) : fs::path(INT4Q_SOURCE_DIR) / "build" / "models";
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(extra, ec))
    if (e.path().extension() == ".onnx") models.push_back(e.path());
  for (const fs::path& p : models) {
    SCOPED_TRACE(p.string());
    const ox::model m = ox::load_model(p);
    ox::validate_options o;
    o.available_memory_bytes = std::uint64_t{1} << 30;
    const auto start = std::chrono::steady_clock::now();
    expect_clean(m, o);
    std::printf("  validated %s in %.3f s\n", p.filename().c_str(),
                std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
}

TEST(ValidateModels, SyntheticGraphsAndInt4qsOwnOutputsPass) {
  std::vector<graph_builder> graphs = {two_matmuls(), if_model("r")};
  {  // fp16 and bf16 weights, a Gemm with a bias and transB, a Constant weight
    graph_builder g;
    g.input("x", onnx_float16, {-1, 64});
    g.initializer("w", onnx_float16, {64, 32}, random_values(64 * 32, 20));
    g.matmul("mm", "x", "w", "h");
    g.initializer("wb", onnx_bfloat16, {16, 32}, random_values(16 * 32, 21));
    g.initializer("c", onnx_bfloat16, {16}, random_values(16, 22));
    int4q::test::gemm_attrs a;
    a.trans_b = true;
    g.gemm("g", "h", "wb", "c", "y", a);
    g.constant("k", onnx_float, {16, 8}, random_values(128, 23));
    g.matmul("mk", "y", "k", "z");
    g.output("z", onnx_float, {-1, 8});
    graphs.push_back(g);
  }
  for (std::size_t i = 0; i < graphs.size(); ++i) {
    SCOPED_TRACE(i);
    expect_clean(graphs[i].model());
  }
  // What int4q writes passes too (MatMulNBits, DequantizeLinear with 4-bit tensors, fake).
  const ox::model devgpt = ox::load_model(int4q::test::devgpt_dir() / "devgpt_fp32.onnx");
  for (const auto f :
       {ox::output_format::matmulnbits, ox::output_format::qdq, ox::output_format::fake}) {
    SCOPED_TRACE(ox::to_string(f));
    ox::model m = devgpt;
    ox::quantize_options q;
    q.format = f;
    q.config.group_size = 32;
    q.lm_head = ox::lm_head_policy::quantize;
    q.embeddings = f == ox::output_format::matmulnbits ? ox::embedding_policy::keep
                                                       : ox::embedding_policy::quantize;
    ox::quantize_model(m, q);
    expect_clean(m);
  }
}

}  // namespace
