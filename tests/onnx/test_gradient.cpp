// stretch_gradient (gradient.hpp): every VJP against central finite differences of the forward
// (loss = sum(g * output) in double for a random upstream gradient g), on one- or few-node
// models built here with random inputs, broadcast operands and attributes; whole transformer
// layers of devgpt and of a generated Llama model (forward bit-exact against executor::run,
// sampled weight gradients against finite differences, bit-identical for 1 and 2 threads); and
// the error for a node on the gradient path without a VJP.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <iterator>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <int4q/onnx/executor.hpp>
#include <int4q/onnx/gradient.hpp>
#include <int4q/onnx/model.hpp>

#include "models/llama_model.hpp"
#include "onnx/devgpt_eval.hpp"
#include "onnx/graph_builder.hpp"

namespace {

using int4q::onnx::executor;
using int4q::onnx::model;
using int4q::onnx::model_error;
using int4q::onnx::stretch_gradient;
using int4q::onnx::value;
using int4q::test::graph_builder;
using int4q::test::onnx_float;
using int4q::test::set_attr;
using shape_t = std::vector<std::int64_t>;

// Central differences on the fp32 forward: the truncation error is h^2/6 f''' (about 2e-5 of
// the gradient's scale for h = 1e-2 and derivatives of order 1), the rounding error of the float
// outputs divided by 2h stays below 1e-4 of it for the sizes used here. 2e-3 of the largest
// gradient magnitude leaves room for both and still catches a wrong factor or a wrong index.
constexpr double kFdStep = 1e-2;
constexpr double kFdRelTol = 2e-3;
// Whole layers: more float rounding in the forward (hundreds of sums per output), so a larger
// step relative to weights of order 0.02-0.1 and a tolerance of 1% of the largest gradient
// entry (a sign or factor error, or a missed path, is far larger).
constexpr double kLayerFdStep = 2e-3;
constexpr double kLayerFdRelTol = 1e-2;

std::string dims_string_for_test(const shape_t& s) {
  std::string r = "[";
  for (std::size_t k = 0; k < s.size(); ++k) r += (k ? ", " : "") + std::to_string(s[k]);
  return r + "]";
}

std::size_t numel(const shape_t& s) {
  std::size_t n = 1;
  for (const auto d : s) n *= static_cast<std::size_t>(d);
  return n;
}

/// A small model under construction: random float inputs (graph inputs or initializers, each a
/// wrt name unless said otherwise), int64 constants, nodes, outputs.
struct test_model {
  graph_builder b;
  std::map<std::string, value> feeds;
  std::vector<std::string> wrt;
  std::uint32_t seed = 11;

  explicit test_model(std::int64_t opset = 17) : b(opset) {}

  static std::vector<float> draw(std::size_t n, std::uint32_t seed, float lo, float hi) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> d(lo, hi);
    std::vector<float> v(n);
    for (float& x : v) x = d(rng);
    return v;
  }
  /// A float graph input with values uniform in [lo, hi].
  void in(const std::string& name, const shape_t& shape, float lo = -1, float hi = 1,
          bool differentiate = true) {
    b.input(name, onnx_float, shape);
    feeds[name] = value::floats(shape, draw(numel(shape), ++seed, lo, hi));
    if (differentiate) wrt.push_back(name);
  }
  /// A float initializer.
  void weight(const std::string& name, const shape_t& shape, float lo = -1, float hi = 1,
              bool differentiate = true) {
    b.initializer(name, onnx_float, shape, draw(numel(shape), ++seed, lo, hi));
    if (differentiate) wrt.push_back(name);
  }
  void ints(const std::string& name, const shape_t& shape, const std::vector<std::int64_t>& v) {
    b.initializer_i64(name, shape, v);
  }
  ::onnx::NodeProto& node(const std::string& op, const std::vector<std::string>& inputs,
                          const std::vector<std::string>& outputs, const std::string& domain = "") {
    return b.node(op, inputs, outputs, op + "_" + std::to_string(b.graph().node_size()), domain);
  }
  void out(const std::string& name) { b.output(name, onnx_float, {}); }
};

std::map<std::string, const value*> pointers(const std::map<std::string, value>& values) {
  std::map<std::string, const value*> p;
  for (const auto& [name, v] : values) p[name] = &v;
  return p;
}

/// sum over outputs of sum(g * y), in double.
double loss(const stretch_gradient& sg, const stretch_gradient::pass& p,
            const std::map<std::string, value>& g) {
  double l = 0;
  for (const auto& [name, gv] : g) {
    const value& y = sg.output(p, name);
    for (std::size_t e = 0; e < gv.f.size(); ++e) l += double(gv.f[e]) * double(y.f[e]);
  }
  return l;
}

/// Random upstream gradients for every output of the stretch.
std::map<std::string, value> random_output_grads(const stretch_gradient& sg,
                                                 const stretch_gradient::pass& p,
                                                 std::uint32_t seed) {
  std::map<std::string, value> g;
  for (const std::string& name : sg.outputs()) {
    const value& y = sg.output(p, name);
    if (y.type != int4q::onnx::value_type::float32) continue;
    g[name] = value::floats(y.shape, test_model::draw(y.size(), seed++, -1, 1));
  }
  return g;
}

/// The value of `name` the stretch reads: a feed or the model's initializer.
value base_value(const model& m, const std::map<std::string, value>& feeds,
                 const std::string& name) {
  const auto f = feeds.find(name);
  if (f != feeds.end()) return f->second;
  for (const auto& t : m.proto.graph().initializer())
    if (t.name() == name) return int4q::onnx::to_value(m, t);
  ADD_FAILURE() << "no value for " << name;
  return {};
}

/// Checks backward()'s gradient of every wrt name on (at most `samples` evenly spaced entries
/// of) each value against central differences. Returns the analytic gradients.
std::map<std::string, value> check_gradients(const model& m, int first, int end,
                                             const std::map<std::string, value>& feeds,
                                             const std::vector<std::string>& wrt,
                                             double step = kFdStep, double tol = kFdRelTol,
                                             std::size_t samples = 48, std::size_t threads = 1) {
  const stretch_gradient sg(m, first, end, threads);
  const auto inputs = pointers(feeds);
  std::map<std::string, value> g, grads;
  {
    stretch_gradient::pass p = sg.forward(inputs, {}, wrt);
    g = random_output_grads(sg, p, 101);
    grads = sg.backward(p, g);
  }
  for (const std::string& w : wrt) {
    const value base = base_value(m, feeds, w);
    const value& an = grads.at(w);
    EXPECT_EQ(an.shape, base.shape) << w;
    if (an.shape != base.shape) continue;
    double scale = 1e-6;
    for (const float x : an.f) scale = std::max(scale, std::fabs(double(x)));
    const std::size_t n = base.size();
    const std::size_t count = std::min(n, samples);
    for (std::size_t s = 0; s < count; ++s) {
      const std::size_t e = count == n ? s : s * (n - 1) / (count - 1);
      value plus = base, minus = base;
      plus.f[e] = static_cast<float>(base.f[e] + step);
      minus.f[e] = static_cast<float>(base.f[e] - step);
      const double h2 = double(plus.f[e]) - double(minus.f[e]);
      auto eval = [&](const value& v) {
        stretch_gradient::pass q = sg.forward(inputs, {{w, &v}}, {});
        return loss(sg, q, g);
      };
      const double fd = (eval(plus) - eval(minus)) / h2;
      EXPECT_NEAR(an.f[e], fd, tol * scale)
          << "d/d " << w << "[" << e << "] of " << dims_string_for_test(base.shape)
          << ", largest gradient entry " << scale << ", step " << step;
    }
  }
  return grads;
}

/// Checks the whole model (every node) with every wrt name of `t`.
void check_model(const test_model& t, std::size_t samples = 48) {
  const model m = t.b.model();
  check_gradients(m, 0, m.proto.graph().node_size(), t.feeds, t.wrt, kFdStep, kFdRelTol, samples);
}

}  // namespace

namespace {

// ---- MatMul, Gemm ------------------------------------------------------------------------------

void matmul_case(const shape_t& sa, const shape_t& sb, bool b_initializer) {
  test_model t;
  t.in("A", sa);
  if (b_initializer) {
    t.weight("B", sb);
  } else {
    t.in("B", sb);
  }
  t.node("MatMul", {"A", "B"}, {"Y"});
  t.out("Y");
  SCOPED_TRACE(dims_string_for_test(sa) + " x " + dims_string_for_test(sb));
  check_model(t);
}

TEST(GradientOps, MatMul) {
  matmul_case({3, 4}, {4, 5}, true);
  matmul_case({2, 3, 4}, {4, 5}, true);            // activations x weight: one GEMM over all rows
  matmul_case({2, 2, 3, 4}, {2, 2, 4, 3}, false);  // attention scores
  matmul_case({2, 3, 4}, {1, 4, 5}, false);        // B broadcast over the batch
  matmul_case({3, 4}, {2, 4, 5}, false);           // A broadcast over the batch
  matmul_case({2, 1, 3, 4}, {3, 4, 2}, false);     // both broadcast
  matmul_case({4}, {4, 5}, false);                 // vector operands
  matmul_case({2, 3, 4}, {4}, false);
}

void gemm_case(bool ta, bool tb, float alpha, float beta, const shape_t& c_shape) {
  test_model t;
  const std::int64_t M = 3, K = 4, N = 5;
  t.in("A", ta ? shape_t{K, M} : shape_t{M, K});
  t.weight("B", tb ? shape_t{N, K} : shape_t{K, N});
  std::vector<std::string> ins{"A", "B"};
  if (!c_shape.empty() || beta != 1.0f) {
    t.weight("C", c_shape);
    ins.push_back("C");
  }
  auto& n = t.node("Gemm", ins, {"Y"});
  set_attr(n, "transA", ta ? 1 : 0);
  set_attr(n, "transB", tb ? 1 : 0);
  set_attr(n, "alpha", alpha);
  set_attr(n, "beta", beta);
  t.out("Y");
  SCOPED_TRACE("transA " + std::to_string(ta) + " transB " + std::to_string(tb) + " C " +
               dims_string_for_test(c_shape));
  check_model(t);
}

TEST(GradientOps, Gemm) {
  gemm_case(false, true, 1.0f, 1.0f, {5});  // a Linear layer: transB, bias [N]
  gemm_case(false, false, 0.7f, 1.3f, {3, 5});
  gemm_case(true, false, 1.5f, 0.5f, {1, 5});
  gemm_case(true, true, 1.0f, 2.0f, {3, 1});
}

// ---- Elementwise binary with broadcasting -------------------------------------------------------

void binary_case(const std::string& op, const shape_t& sa, const shape_t& sb) {
  test_model t;
  const bool div = op == "Div";
  t.in("A", sa);
  t.weight("B", sb, div ? 0.5f : -1.0f, div ? 1.5f : 1.0f);
  t.node(op, {"A", "B"}, {"Y"});
  t.out("Y");
  SCOPED_TRACE(op + " " + dims_string_for_test(sa) + " and " + dims_string_for_test(sb));
  check_model(t);
}

TEST(GradientOps, BinaryBroadcast) {
  for (const char* op : {"Add", "Sub", "Mul", "Div"}) {
    binary_case(op, {2, 3, 4}, {2, 3, 4});
    binary_case(op, {2, 3, 4}, {4});  // a bias [N] over [B, T, N]
    binary_case(op, {2, 3, 4}, {});   // a scalar
    binary_case(op, {2, 1, 4}, {3, 1});
  }
}

TEST(GradientOps, BinarySameInputTwice) {
  test_model t;
  t.in("X", {3, 4});
  t.node("Mul", {"X", "X"}, {"Y"});  // d(x^2) = 2x: both inputs' gradients add up
  t.out("Y");
  check_model(t);
}

// ---- Unary --------------------------------------------------------------------------------------

void unary_case(const std::string& op, float lo, float hi, bool away_from_zero = false) {
  test_model t;
  t.in("X", {2, 3, 5}, lo, hi);
  if (away_from_zero)  // a kink at 0 (Relu): no sample within the finite-difference step of it
    for (float& x : t.feeds["X"].f) x = x < 0 ? x - 0.1f : x + 0.1f;
  t.node(op, {"X"}, {"Y"});
  t.out("Y");
  SCOPED_TRACE(op);
  check_model(t);
}

TEST(GradientOps, Unary) {
  unary_case("Neg", -1, 1);
  unary_case("Erf", -2, 2);
  unary_case("Sqrt", 0.5f, 2);
  unary_case("Reciprocal", 0.5f, 2);
  unary_case("Exp", -1, 1);
  unary_case("Sigmoid", -3, 3);
  unary_case("Tanh", -2, 2);
  unary_case("Relu", -1, 1, true);
  unary_case("Identity", -1, 1);
}

TEST(GradientOps, Gelu) {
  for (const char* mode : {"none", "tanh"}) {
    test_model t(20);
    t.in("X", {3, 7}, -3, 3);
    set_attr(t.node("Gelu", {"X"}, {"Y"}), "approximate", mode);
    t.out("Y");
    SCOPED_TRACE(mode);
    check_model(t);
  }
}

TEST(GradientOps, PowConstantExponent) {
  for (const float p : {2.0f, 3.0f, 0.5f, -1.5f}) {
    test_model t;
    t.in("X", {3, 4}, 0.5f, 2.0f);
    t.b.initializer("P", onnx_float, {}, {p});
    t.node("Pow", {"X", "P"}, {"Y"});
    t.out("Y");
    SCOPED_TRACE(p);
    check_model(t);
  }
}

TEST(GradientOps, CastFloatToFloat) {
  test_model t;
  t.in("X", {3, 4});
  set_attr(t.node("Cast", {"X"}, {"Y"}), "to", static_cast<std::int64_t>(onnx_float));
  t.out("Y");
  check_model(t);
}

// ---- Softmax, LayerNormalization, reductions
// -----------------------------------------------------

TEST(GradientOps, SoftmaxAndLogSoftmax) {
  for (const char* op : {"Softmax", "LogSoftmax"}) {
    for (const std::int64_t axis : {-1, 1, 0}) {
      test_model t;
      t.in("X", {2, 3, 4}, -2, 2);
      set_attr(t.node(op, {"X"}, {"Y"}), "axis", axis);
      t.out("Y");
      SCOPED_TRACE(std::string(op) + " axis " + std::to_string(axis));
      check_model(t);
    }
  }
  test_model old(11);  // opset < 13: normalized over the input flattened to 2-D at the axis
  old.in("X", {2, 3, 4}, -2, 2);
  set_attr(old.node("Softmax", {"X"}, {"Y"}), "axis", std::int64_t(1));
  old.out("Y");
  check_model(old);
}

TEST(GradientOps, LayerNormalization) {
  {
    test_model t;
    t.in("X", {2, 3, 6}, -2, 2);
    t.weight("scale", {6}, 0.5f, 1.5f);
    t.weight("bias", {6});
    auto& n = t.node("LayerNormalization", {"X", "scale", "bias"}, {"Y"});
    set_attr(n, "axis", std::int64_t(-1));
    set_attr(n, "epsilon", 1e-5f);
    t.out("Y");
    check_model(t);
  }
  {
    test_model t;  // axis 1: rows of 3 x 4, scale broadcast from [4], no bias
    t.in("X", {2, 3, 4}, -2, 2);
    t.weight("scale", {4}, 0.5f, 1.5f);
    set_attr(t.node("LayerNormalization", {"X", "scale"}, {"Y"}), "axis", std::int64_t(1));
    t.out("Y");
    check_model(t);
  }
}

TEST(GradientOps, ReduceMeanAndSum) {
  {
    test_model t;  // opset 17: axes attribute
    t.in("X", {2, 3, 4});
    set_attr(t.node("ReduceMean", {"X"}, {"Y"}), "axes", std::vector<std::int64_t>{-1});
    t.out("Y");
    check_model(t);
  }
  {
    test_model t;
    t.in("X", {2, 3, 4});
    auto& n = t.node("ReduceMean", {"X"}, {"Y"});
    set_attr(n, "axes", std::vector<std::int64_t>{0, 2});
    set_attr(n, "keepdims", std::int64_t(0));
    t.out("Y");
    check_model(t);
  }
  {
    test_model t(18);  // axes as an input
    t.in("X", {2, 3, 4});
    t.ints("axes", {1}, {1});
    t.node("ReduceMean", {"X", "axes"}, {"Y"});
    t.out("Y");
    check_model(t);
  }
  {
    test_model t;  // ReduceSum (opset 13+: axes input), all axes
    t.in("X", {2, 3, 4});
    t.node("ReduceSum", {"X"}, {"Y"});
    t.out("Y");
    check_model(t);
  }
}

// ---- Data movement ------------------------------------------------------------------------------

TEST(GradientOps, ReshapeFlattenSqueezeUnsqueeze) {
  test_model t;
  t.in("X", {2, 3, 4});
  t.ints("shape", {3}, {4, 0, -1});
  t.ints("ax0", {1}, {0});
  t.node("Reshape", {"X", "shape"}, {"R"});
  t.node("Unsqueeze", {"R", "ax0"}, {"U"});
  t.node("Squeeze", {"U", "ax0"}, {"S"});
  set_attr(t.node("Flatten", {"S"}, {"F"}), "axis", std::int64_t(2));
  t.node("Mul", {"F", "F"}, {"Y"});  // not linear: the gradient depends on the values moved
  t.out("Y");
  check_model(t);
}

TEST(GradientOps, Transpose) {
  // {2, 0, 1} is not its own inverse: a gradient transposed by perm instead of its inverse fails.
  for (const auto& perm :
       {std::vector<std::int64_t>{1, 0, 2}, std::vector<std::int64_t>{2, 0, 1}}) {
    test_model t;
    t.in("X", {2, 3, 4});
    const shape_t sx{2, 3, 4};
    t.weight("W", {sx[static_cast<std::size_t>(perm[0])], sx[static_cast<std::size_t>(perm[1])],
                   sx[static_cast<std::size_t>(perm[2])]});
    set_attr(t.node("Transpose", {"X"}, {"T"}), "perm", perm);
    t.node("Mul", {"T", "W"}, {"Y"});
    t.out("Y");
    check_model(t);
  }
}

TEST(GradientOps, SplitAndConcat) {
  test_model t;
  t.in("X", {2, 6});
  t.in("Z", {2, 2});
  t.ints("split", {3}, {1, 2, 3});
  set_attr(t.node("Split", {"X", "split"}, {"A", "B", "C"}), "axis", std::int64_t(1));
  t.node("Mul", {"A", "A"}, {"A2"});
  set_attr(t.node("Concat", {"C", "A2", "Z"}, {"Y"}), "axis", std::int64_t(1));  // B unused
  t.out("Y");
  // An unnamed output (its gradient is zero and its extent unknown to the VJP).
  set_attr(t.node("Split", {"X", "split"}, {"P", "", "Q"}), "axis", std::int64_t(1));
  t.node("Mul", {"P", "Q"}, {"PQ"});
  t.out("PQ");
  check_model(t);
}

TEST(GradientOps, Slice) {
  test_model t;
  t.in("X", {3, 8});
  t.ints("starts", {2}, {1, -2});
  t.ints("ends", {2}, {3, 0});
  t.ints("axes", {2}, {0, 1});
  t.ints("steps", {2}, {1, -2});
  t.node("Slice", {"X", "starts", "ends", "axes", "steps"}, {"S"});
  t.node("Mul", {"S", "S"}, {"Y"});
  t.out("Y");
  check_model(t);
}

TEST(GradientOps, ExpandWhereGather) {
  {
    test_model t;  // Expand: the gradient is the sum over the expanded axes
    t.in("X", {3, 1});
    t.ints("shape", {3}, {2, 3, 4});
    t.node("Expand", {"X", "shape"}, {"E"});
    t.weight("W", {2, 3, 4});
    t.node("Mul", {"E", "W"}, {"Y"});
    t.out("Y");
    check_model(t);
  }
  {
    test_model t;  // Where: the selected branch gets g, with broadcast branches
    t.in("X", {2, 3});
    t.in("Yb", {3});
    ::onnx::TensorProto cond;
    cond.set_name("cond");
    cond.set_data_type(::onnx::TensorProto_DataType_BOOL);
    cond.add_dims(2);
    cond.add_dims(3);
    for (const int v : {1, 0, 1, 0, 0, 1}) cond.add_int32_data(v);
    t.b.initializer(cond);
    t.node("Where", {"cond", "X", "Yb"}, {"W"});
    t.node("Mul", {"W", "W"}, {"Y"});
    t.out("Y");
    check_model(t);
  }
  for (const std::int64_t axis : {0, 1}) {
    test_model t;  // Gather: rows scatter-added back (index 2 twice, a negative index)
    t.weight("table", {4, 5});
    t.ints("ids", {2, 2}, {2, 0, -2, 3});
    set_attr(t.node("Gather", {"table", "ids"}, {"G"}), "axis", axis);
    t.node("Mul", {"G", "G"}, {"Y"});
    t.out("Y");
    SCOPED_TRACE(axis);
    check_model(t);
  }
}

// ---- Several nodes ------------------------------------------------------------------------------

TEST(GradientOps, MlpBlockWithResidual) {
  // x + W2 gelu(LN(x) W1 + b1) + b2, Erf-GELU written out as in a torch export.
  test_model t;
  t.in("x", {2, 3, 8});
  t.weight("ln_s", {8}, 0.5f, 1.5f);
  t.weight("ln_b", {8});
  t.weight("W1", {8, 16}, -0.5f, 0.5f);
  t.weight("b1", {16});
  t.weight("W2", {16, 8}, -0.5f, 0.5f);
  t.weight("b2", {8});
  t.b.initializer("sqrt2", onnx_float, {}, {1.41421356f});
  t.b.initializer("one", onnx_float, {}, {1.0f});
  t.b.initializer("half", onnx_float, {}, {0.5f});
  t.node("LayerNormalization", {"x", "ln_s", "ln_b"}, {"h"});
  t.node("MatMul", {"h", "W1"}, {"h1"});
  t.node("Add", {"b1", "h1"}, {"h2"});
  t.node("Div", {"h2", "sqrt2"}, {"h3"});
  t.node("Erf", {"h3"}, {"h4"});
  t.node("Add", {"h4", "one"}, {"h5"});
  t.node("Mul", {"h2", "h5"}, {"h6"});
  t.node("Mul", {"h6", "half"}, {"h7"});
  t.node("MatMul", {"h7", "W2"}, {"h8"});
  t.node("Add", {"h8", "b2"}, {"h9"});
  t.node("Add", {"x", "h9"}, {"y"});
  t.out("y");
  check_model(t, 24);
}

// ---- Errors and API
// -------------------------------------------------------------------------------

TEST(GradientApi, RefusesANodeWithoutVjpOnThePath) {
  test_model t;
  t.in("X", {2, 3});
  t.in("Z", {2, 3}, -1, 1, false);
  t.node("Floor", {"X"}, {"F"});
  t.node("Floor", {"Z"}, {"FZ"});
  t.node("Add", {"F", "FZ"}, {"Y"});
  t.out("Y");
  const model m = t.b.model();
  const stretch_gradient sg(m, 0, 3, 1);
  const auto inputs = pointers(t.feeds);
  try {
    sg.forward(inputs, {}, {"X"});
    FAIL() << "no error";
  } catch (const model_error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("cannot differentiate through Floor node 'Floor_0'"), std::string::npos)
        << what;
  }
  // Off the path (only Z's Floor, whose input needs no gradient): runs.
  stretch_gradient::pass p = sg.forward(inputs, {}, {});
  EXPECT_EQ(sg.output(p, "Y").shape, (shape_t{2, 3}));
  EXPECT_THROW(stretch_gradient(m, 2, 1), model_error);
  EXPECT_THROW(stretch_gradient(m, 0, 4), model_error);
  EXPECT_THROW(sg.forward(inputs, {}, {"nothing"}), model_error);
}

TEST(GradientApi, ExternalInputsAndOutputs) {
  test_model t;
  t.in("X", {2, 3});
  t.weight("W", {3, 3});
  t.node("MatMul", {"X", "W"}, {"A"});  // 0
  t.node("Relu", {"A"}, {"B"});         // 1
  t.node("Add", {"B", "A"}, {"C"});     // 2
  t.node("Neg", {"C"}, {"D"});          // 3
  t.node("Mul", {"D", "B"}, {"Y"});     // 4
  t.out("Y");
  const model m = t.b.model();
  const stretch_gradient sg(m, 1, 3);
  EXPECT_EQ(sg.external_inputs(), (std::vector<std::string>{"A"}));
  EXPECT_EQ(sg.outputs(), (std::vector<std::string>{"B", "C"}));
  // The gradient of an external input; an output without a given gradient counts as zero.
  std::map<std::string, value> feeds = {{"A", value::floats({2, 3}, {1, -2, 3, -4, 5, -6})}};
  stretch_gradient::pass p = sg.forward(pointers(feeds), {}, {"A"});
  const value gc = value::floats({2, 3}, {1, 1, 1, 1, 1, 1});
  const auto grads = sg.backward(p, {{"C", gc}});
  // C = relu(A) + A: dC/dA = [A > 0] + 1.
  EXPECT_EQ(grads.at("A").f, (std::vector<float>{2, 1, 2, 1, 2, 1}));
  EXPECT_THROW(sg.backward(p, {{"C", gc}}), model_error);  // consumed
}

// ---- Whole layers
// ----------------------------------------------------------------------------------

/// The values of `sg`'s external inputs, from an executor run up to `first`.
std::map<std::string, value> stretch_inputs(const model& m, const stretch_gradient& sg, int first,
                                            const std::map<std::string, value>& feeds) {
  const executor ex(m, 1);
  executor::session s = ex.start(feeds);
  ex.advance(s, first);
  std::map<std::string, value> out;
  for (const std::string& name : sg.external_inputs()) {
    const value* v = s.find(name);
    if (!v) {
      ADD_FAILURE() << "no value for external input " << name;
      continue;
    }
    out[name] = *v;
  }
  return out;
}

/// Indices of the nodes of `op_type`, in graph order.
std::vector<int> nodes_of(const model& m, const std::string& op_type) {
  std::vector<int> r;
  for (int k = 0; k < m.proto.graph().node_size(); ++k)
    if (m.proto.graph().node(k).op_type() == op_type) r.push_back(k);
  return r;
}

/// The weights (initializer input 1) of the MatMul nodes in [first, end).
std::vector<std::string> matmul_weights(const model& m, int first, int end) {
  std::vector<std::string> r;
  for (int k = first; k < end; ++k) {
    const auto& n = m.proto.graph().node(k);
    if (n.op_type() != "MatMul") continue;
    for (const auto& t : m.proto.graph().initializer())
      if (t.name() == n.input(1)) r.push_back(t.name());
  }
  return r;
}

struct devgpt_layer {
  model m;
  int first = 0, end = 0;
  std::map<std::string, value> feeds;  // input_ids
};

/// devgpt's first transformer layer: from its ln_1 (the first LayerNormalization) to the next
/// layer's ln_1 (the third), on one window of 16 bytes of the held-out text.
devgpt_layer load_devgpt_layer() {
  devgpt_layer d;
  d.m = int4q::onnx::load_model(int4q::test::devgpt_dir() / "devgpt_fp32.onnx");
  const std::vector<int> ln = nodes_of(d.m, "LayerNormalization");
  EXPECT_GE(ln.size(), 3u);
  d.first = ln.at(0);
  d.end = ln.at(2);
  std::ifstream in(int4q::test::devgpt_dir() / "devgpt_val.u8", std::ios::binary);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::int64_t> ids(16);
  for (std::size_t e = 0; e < ids.size(); ++e)
    ids[e] = static_cast<unsigned char>(text.at(500 + e));
  d.feeds = {{"input_ids", value::ints({1, 16}, ids)}};
  return d;
}

TEST(GradientLayers, DevgptForwardEqualsExecutorBitForBit) {
  const devgpt_layer d = load_devgpt_layer();
  const stretch_gradient sg(d.m, d.first, d.end, 2);
  const auto inputs = stretch_inputs(d.m, sg, d.first, d.feeds);
  const std::vector<std::string> wrt = matmul_weights(d.m, d.first, d.end);
  ASSERT_EQ(wrt.size(), 4u);  // c_attn, attention c_proj, c_fc, mlp c_proj
  const stretch_gradient::pass p = sg.forward(pointers(inputs), {}, wrt);
  const executor ex(d.m, 2);
  executor::session s = ex.start(d.feeds);
  ex.advance(s, d.end);
  ASSERT_FALSE(sg.outputs().empty());
  for (const std::string& name : sg.outputs()) {
    const value* want = s.find(name);
    ASSERT_NE(want, nullptr) << name;
    const value& got = sg.output(p, name);
    EXPECT_EQ(got.shape, want->shape) << name;
    EXPECT_EQ(got.type, want->type) << name;
    EXPECT_TRUE(got.f == want->f && got.i == want->i) << name << " differs";
  }
}

TEST(GradientLayers, DevgptWeightGradientsMatchFiniteDifferences) {
  const devgpt_layer d = load_devgpt_layer();
  const stretch_gradient probe(d.m, d.first, d.end, 1);
  const auto inputs = stretch_inputs(d.m, probe, d.first, d.feeds);
  const std::vector<std::string> weights = matmul_weights(d.m, d.first, d.end);
  ASSERT_EQ(weights.size(), 4u);
  // The first and the last weight of the layer: through attention (softmax, the causal Where,
  // Split, Transposes) and through the MLP (Erf-GELU).
  check_gradients(d.m, d.first, d.end, inputs, {weights.front(), weights.back()}, kLayerFdStep,
                  kLayerFdRelTol, 6);
}

TEST(GradientLayers, DevgptSameGradientsForOneAndTwoThreads) {
  devgpt_layer d = load_devgpt_layer();
  // 4 x 64 tokens: several fixed items in the row-wise and elementwise loops, and the GEMMs in
  // more than one block, so that two threads do split the work.
  std::vector<std::int64_t> ids(4 * 64);
  for (std::size_t e = 0; e < ids.size(); ++e) ids[e] = std::int64_t((e * 37 + 11) % 256);
  d.feeds = {{"input_ids", value::ints({4, 64}, ids)}};
  const std::vector<std::string> weights = matmul_weights(d.m, d.first, d.end);
  std::map<std::string, value> by_threads[2];
  for (const std::size_t threads : {1, 2}) {
    const stretch_gradient sg(d.m, d.first, d.end, threads);
    const auto inputs = stretch_inputs(d.m, sg, d.first, d.feeds);
    std::vector<std::string> wrt = weights;
    for (const auto& [name, v] : inputs)
      if (v.type == int4q::onnx::value_type::float32) wrt.push_back(name);  // the layer input too
    stretch_gradient::pass p = sg.forward(pointers(inputs), {}, wrt);
    const auto g = random_output_grads(sg, p, 7);
    by_threads[threads - 1] = sg.backward(p, g);
  }
  ASSERT_EQ(by_threads[0].size(), by_threads[1].size());
  for (const auto& [name, v] : by_threads[0]) {
    const value& w = by_threads[1].at(name);
    EXPECT_EQ(v.shape, w.shape) << name;
    EXPECT_TRUE(v.f == w.f) << name << " differs between 1 and 2 threads";
    double mx = 0;
    for (const float x : v.f) mx = std::max(mx, std::fabs(double(x)));
    EXPECT_GT(mx, 0.0) << name << ": no gradient reached it";
  }
}

TEST(GradientLayers, LlamaLayerGradientsMatchFiniteDifferences) {
  // RMSNorm as Pow/ReduceMean/Add/Sqrt/Reciprocal/Mul with Casts, RoPE (Slice/Neg/Concat), GQA
  // (Unsqueeze/Expand/Reshape), the causal Where, SwiGLU (Sigmoid/Mul).
  int4q::test::llama_options o;
  o.layers = 2;
  o.hidden = 32;
  o.intermediate = 48;
  o.heads = 4;
  o.kv_heads = 2;
  o.vocab = 64;
  o.max_positions = 16;
  model m;
  m.proto = int4q::test::build_llama_model(o);
  int first = -1, end = -1;
  for (int k = 0; k < m.proto.graph().node_size(); ++k) {
    if (m.proto.graph().node(k).name().find("/layers.0/") == std::string::npos) continue;
    if (first < 0) first = k;
    end = k + 1;
  }
  ASSERT_GE(first, 0);
  std::vector<std::int64_t> ids = {3, 17, 42, 5, 9, 60, 1, 33};
  const std::map<std::string, value> feeds = {{"input_ids", value::ints({1, 8}, ids)}};
  const stretch_gradient probe(m, first, end, 1);
  const auto inputs = stretch_inputs(m, probe, first, feeds);
  const std::vector<std::string> weights = matmul_weights(m, first, end);
  ASSERT_EQ(weights.size(), 7u);  // q, k, v, o, gate, up, down
  std::vector<std::string> wrt = weights;
  wrt.push_back("model.layers.0.input_layernorm.weight");
  check_gradients(m, first, end, inputs, wrt, kLayerFdStep, kLayerFdRelTol, 6);
  // The forward equals the executor's, bit for bit.
  const executor ex(m, 1);
  executor::session s = ex.start(feeds);
  ex.advance(s, end);
  const stretch_gradient::pass p = probe.forward(pointers(inputs), {}, {});
  for (const std::string& name : probe.outputs()) {
    const value* want = s.find(name);
    ASSERT_NE(want, nullptr) << name;
    EXPECT_TRUE(probe.output(p, name).f == want->f && probe.output(p, name).i == want->i) << name;
  }
}

}  // namespace

namespace {

// ---- com.microsoft operators and SimplifiedLayerNormalization
// ------------------------------------

const char* kMs = "com.microsoft";

TEST(GradientMicrosoft, SimplifiedLayerNormalization) {
  test_model t;
  t.in("X", {2, 3, 6}, -2, 2);
  t.weight("scale", {6}, 0.5f, 1.5f);
  set_attr(t.node("SimplifiedLayerNormalization", {"X", "scale"}, {"Y"}), "epsilon", 1e-5f);
  t.out("Y");
  check_model(t);
}

TEST(GradientMicrosoft, SkipLayerNormalizations) {
  for (const bool rms : {false, true}) {
    test_model t;
    t.b.set_opset(1, kMs);
    t.in("X", {2, 3, 6}, -2, 2);
    t.in("skip", {3, 6}, -2, 2);  // broadcast over the batch
    t.weight("gamma", {6}, 0.5f, 1.5f);
    std::vector<std::string> ins{"X", "skip", "gamma"};
    if (!rms) {
      t.weight("beta", {6});
      ins.push_back("beta");
    }
    t.weight("bias", {6});
    ins.push_back("bias");
    auto& n = t.node(rms ? "SkipSimplifiedLayerNormalization" : "SkipLayerNormalization", ins,
                     {"Y", "", "", "S"}, kMs);
    set_attr(n, "epsilon", 1e-5f);
    t.node("Mul", {"S", "S"}, {"S2"});  // the sum output is read too (the residual stream)
    t.out("Y");
    t.out("S2");
    SCOPED_TRACE(rms ? "SkipSimplifiedLayerNormalization" : "SkipLayerNormalization");
    check_model(t);
  }
}

TEST(GradientMicrosoft, RotaryEmbedding) {
  for (const bool interleaved : {false, true}) {
    for (const bool bnsh : {false, true}) {
      test_model t;
      t.b.set_opset(1, kMs);
      t.in("X", bnsh ? shape_t{2, 2, 3, 6} : shape_t{2, 3, 12});
      t.ints("pos", {2, 3}, {0, 1, 2, 3, 1, 0});
      t.weight("cos", {4, 2}, -1, 1, false);
      t.weight("sin", {4, 2}, -1, 1, false);
      auto& n = t.node("RotaryEmbedding", {"X", "pos", "cos", "sin"}, {"R"}, kMs);
      set_attr(n, "interleaved", std::int64_t(interleaved));
      set_attr(n, "num_heads", std::int64_t(2));
      set_attr(n, "rotary_embedding_dim", std::int64_t(4));  // 2 of 6 head elements pass through
      t.node("Mul", {"R", "R"}, {"Y"});
      t.out("Y");
      SCOPED_TRACE(std::string(interleaved ? "interleaved" : "halves") + (bnsh ? " BNSH" : " BSD"));
      check_model(t);
    }
  }
}

TEST(GradientMicrosoft, GeluVariants) {
  for (const char* op : {"Gelu", "BiasGelu", "FastGelu", "QuickGelu"}) {
    test_model t;
    t.b.set_opset(1, kMs);
    t.in("X", {2, 3, 5}, -3, 3);
    std::vector<std::string> ins{"X"};
    if (std::string(op) == "BiasGelu" || std::string(op) == "FastGelu") {
      t.weight("bias", {5});
      ins.push_back("bias");
    }
    t.node(op, ins, {"Y"}, kMs);
    t.out("Y");
    SCOPED_TRACE(op);
    check_model(t);
  }
}

}  // namespace

namespace {

// ---- Attention
// ------------------------------------------------------------------------------------

TEST(GradientAttention, MultiHeadAttention) {
  for (const int form :
       {0, 1, 2}) {  // 0: bias, padding mask, attention bias; 1: causal; 2: 4-D K/V
    test_model t;
    t.b.set_opset(1, kMs);
    const std::int64_t B = 2, S = 3, L = form == 1 ? 3 : 4, N = 2, H = 4, Hv = 3;
    t.in("q", {B, S, N * H});
    std::vector<std::string> ins{"q"};
    if (form == 2) {
      t.in("k", {B, N, L, H});
      t.in("v", {B, N, L, Hv});
    } else {
      t.in("k", {B, L, N * H});
      t.in("v", {B, L, N * Hv});
    }
    ins.insert(ins.end(), {"k", "v"});
    if (form == 0) {
      t.weight("bias", {2 * N * H + N * Hv});
      t.ints("mask", {B, L}, {1, 1, 1, 0, 1, 1, 0, 1});
      t.weight("attn_bias", {1, N, S, L});
      ins.insert(ins.end(), {"bias", "mask", "attn_bias"});
    }
    auto& n = t.node("MultiHeadAttention", ins, {"Y", "present_k"}, kMs);
    set_attr(n, "num_heads", N);
    if (form == 1) set_attr(n, "unidirectional", std::int64_t(1));
    t.out("Y");
    t.out("present_k");  // a gradient reaching the present key goes to key (and bias)
    SCOPED_TRACE(form);
    check_model(t, 24);
  }
}

TEST(GradientAttention, GroupQueryAttention) {
  for (const int form : {0, 1, 2}) {
    // 0: attention_bias; 1: do_rotary (rotating all of each head), softcap, local window;
    // 2: packed QKV, smooth_softmax.
    test_model t;
    t.b.set_opset(1, kMs);
    const std::int64_t B = 2, S = 4, N = 4, Nkv = 2, H = 4;
    std::vector<std::string> ins;
    if (form == 2) {
      t.in("q", {B, S, (N + 2 * Nkv) * H});
      ins = {"q", "", "", "", ""};
    } else {
      t.in("q", {B, S, N * H});
      t.in("k", {B, S, Nkv * H});
      t.in("v", {B, S, Nkv * H});
      ins = {"q", "k", "v", "", ""};
    }
    t.ints("seqlens", {B}, {S - 1, S - 1});
    t.ints("total", {}, {S});
    ins.insert(ins.end(), {"seqlens", "total"});
    if (form == 1) {
      t.weight("cos", {8, H / 2}, -1, 1, false);
      t.weight("sin", {8, H / 2}, -1, 1, false);
      ins.insert(ins.end(), {"cos", "sin"});
    }
    if (form == 0) {
      t.weight("attn_bias", {1, N, S, S});
      ins.insert(ins.end(), {"", "", "", "attn_bias"});
    }
    auto& n = t.node("GroupQueryAttention", ins, {"Y"}, kMs);
    set_attr(n, "num_heads", N);
    set_attr(n, "kv_num_heads", Nkv);
    if (form == 1) {
      set_attr(n, "do_rotary", std::int64_t(1));
      set_attr(n, "softcap", 1.5f);
      set_attr(n, "local_window_size", std::int64_t(3));
    }
    if (form == 2) set_attr(n, "smooth_softmax", std::int64_t(1));
    t.out("Y");
    SCOPED_TRACE(form);
    check_model(t, 24);
  }
}

}  // namespace

namespace {

TEST(GradientLayers, LlamaFp16LayerThroughCasts) {
  // An fp16 export: activations rounded to fp16 after each op, the norm statistics in fp32
  // between Casts. The Casts pass gradients straight through (their rounding has no useful
  // derivative), so finite differences of the rounded forward are not the reference here: the
  // forward must still equal the executor's bit for bit, and the gradients must reach every
  // weight, finite, and be the same for 1 and 2 threads.
  int4q::test::llama_options o;
  o.layers = 1;
  o.hidden = 32;
  o.intermediate = 48;
  o.heads = 4;
  o.kv_heads = 2;
  o.vocab = 64;
  o.max_positions = 16;
  o.fp16 = true;
  model m;
  m.proto = int4q::test::build_llama_model(o);
  int first = -1, end = -1;
  for (int k = 0; k < m.proto.graph().node_size(); ++k) {
    if (m.proto.graph().node(k).name().find("/layers.0/") == std::string::npos) continue;
    if (first < 0) first = k;
    end = k + 1;
  }
  ASSERT_GE(first, 0);
  const std::map<std::string, value> feeds = {
      {"input_ids", value::ints({2, 6}, {3, 17, 42, 5, 9, 60, 1, 33, 8, 8, 2, 63})}};
  const std::vector<std::string> weights = matmul_weights(m, first, end);
  ASSERT_EQ(weights.size(), 7u);
  std::map<std::string, value> by_threads[2];
  for (const std::size_t threads : {1, 2}) {
    const stretch_gradient sg(m, first, end, threads);
    const auto inputs = stretch_inputs(m, sg, first, feeds);
    stretch_gradient::pass p = sg.forward(pointers(inputs), {}, weights);
    const executor ex(m, threads);
    executor::session s = ex.start(feeds);
    ex.advance(s, end);
    for (const std::string& name : sg.outputs()) {
      const value* want = s.find(name);
      ASSERT_NE(want, nullptr) << name;
      EXPECT_TRUE(sg.output(p, name).f == want->f && sg.output(p, name).i == want->i) << name;
    }
    by_threads[threads - 1] = sg.backward(p, random_output_grads(sg, p, 5));
  }
  for (const std::string& w : weights) {
    const value& g1 = by_threads[0].at(w);
    EXPECT_TRUE(g1.f == by_threads[1].at(w).f) << w;
    double mx = 0;
    for (const float x : g1.f) {
      EXPECT_TRUE(std::isfinite(x)) << w;
      mx = std::max(mx, std::fabs(double(x)));
    }
    EXPECT_GT(mx, 0.0) << w;
  }
}

}  // namespace

namespace {

// ---- More operators
// ---------------------------------------------------------------------------------

TEST(GradientOps, MoreUnary) {
  unary_case("Abs", -1, 1, true);
  unary_case("Log", 0.5f, 2);
  unary_case("Sin", -3, 3);
  unary_case("Cos", -3, 3);
  unary_case("Softplus", -3, 3);
  {
    test_model t;
    t.in("X", {3, 5});
    for (float& x : t.feeds["X"].f) x = x < 0 ? x - 0.1f : x + 0.1f;
    set_attr(t.node("LeakyRelu", {"X"}, {"Y"}), "alpha", 0.2f);
    t.out("Y");
    check_model(t);
  }
  {
    test_model t;  // Clip to [-0.5, 0.5]: no sample within the step of a bound
    t.in("X", {4, 5});
    for (float& x : t.feeds["X"].f)
      if (std::fabs(std::fabs(x) - 0.5f) < 0.05f) x *= 0.8f;
    t.b.initializer("lo", onnx_float, {}, {-0.5f});
    t.b.initializer("hi", onnx_float, {}, {0.5f});
    t.node("Clip", {"X", "lo", "hi"}, {"Y"});
    t.out("Y");
    check_model(t);
  }
  {
    test_model t;  // inference Dropout: the identity
    t.in("X", {3, 4});
    t.node("Dropout", {"X"}, {"D"});
    t.node("Mul", {"D", "D"}, {"Y"});
    t.out("Y");
    check_model(t);
  }
}

TEST(GradientOps, SumAndMean) {
  for (const char* op : {"Sum", "Mean"}) {
    test_model t;
    t.in("A", {2, 3, 4});
    t.in("B", {4});
    t.weight("C", {3, 1});
    t.node(op, {"A", "B", "C"}, {"S"});
    t.node("Mul", {"S", "S"}, {"Y"});
    t.out("Y");
    SCOPED_TRACE(op);
    check_model(t);
  }
}

}  // namespace
