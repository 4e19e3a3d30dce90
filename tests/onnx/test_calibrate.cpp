// Calibration statistics from executor runs (parallel and sequential), the executor's paused
// runs (sessions) and hooks, and weights inside If branches. References: the activations
// computed in the test with plain loops in double (X W, ReLU), and X^T X summed directly.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <int4q/onnx/calibrate.hpp>
#include <int4q/onnx/executor.hpp>
#include <int4q/onnx/weights.hpp>

#include "onnx/graph_builder.hpp"

namespace {

using int4q::onnx::executor;
using int4q::onnx::value;
using int4q::onnx::weight_info;
using int4q::test::graph_builder;

constexpr std::size_t B = 3, T = 5, K = 8, H1 = 6, N = 4;  // x [B, T, K] -> [.., H1] -> [.., N]
// Float32 activations against double references: relative to the magnitude of the sums.
constexpr double kStatsRtol = 1e-5;

struct two_layer {
  std::vector<float> w1 = int4q::test::random_values(K * H1, 11, 0.5f);
  std::vector<float> w2 = int4q::test::random_values(H1 * N, 12, 0.5f);
  int4q::onnx::model m;
  two_layer() {
    graph_builder g;
    g.input("x", int4q::test::onnx_float, {-1, -1, static_cast<std::int64_t>(K)});
    g.initializer("w1", int4q::test::onnx_float, {K, H1}, w1);
    g.initializer("w2", int4q::test::onnx_float, {H1, N}, w2);
    g.matmul("mm1", "x", "w1", "h");
    g.node("Relu", {"h"}, {"r"}, "relu");
    g.matmul("mm2", "r", "w2", "y");
    g.output("y", int4q::test::onnx_float, {-1, -1, static_cast<std::int64_t>(N)});
    m = g.model();
  }
};

std::vector<float> input_batch(std::uint32_t seed) {
  return int4q::test::random_values(B * T * K, seed, 2.0f);
}

/// relu(x w) row by row in double: [rows, cols].
std::vector<double> relu_matmul(const std::vector<float>& x, const std::vector<float>& w,
                                std::size_t rows, std::size_t k, std::size_t cols) {
  std::vector<double> out(rows * cols);
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t c = 0; c < cols; ++c) {
      double s = 0;
      for (std::size_t a = 0; a < k; ++a) s += double(x[r * k + a]) * w[a * cols + c];
      out[r * cols + c] = std::max(0.0, s);
    }
  return out;
}

void add_gram(const std::vector<double>& x, std::size_t rows, std::size_t k,
              std::vector<double>& h) {
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t a = 0; a < k; ++a)
      for (std::size_t b = 0; b < k; ++b) h[a * k + b] += x[r * k + a] * x[r * k + b];
}

void expect_hessian(const int4q::activation_stats& s, const std::vector<double>& want,
                    std::size_t k) {
  const auto h = s.hessian();
  double scale = 0;
  for (double v : want) scale = std::max(scale, std::fabs(v));
  for (std::size_t a = 0; a < k; ++a)
    for (std::size_t b = 0; b < k; ++b)
      EXPECT_NEAR(h(a, b), want[a * k + b], kStatsRtol * scale) << a << "," << b;
}

const weight_info* by_name(const std::vector<weight_info>& ws, const std::string& name) {
  for (const weight_info& w : ws)
    if (w.name == name) return &w;
  return nullptr;
}

TEST(Calibrate, ParallelStatisticsAreTheGramMatricesOfEachLayersInput) {
  const two_layer net;
  const auto weights = int4q::onnx::find_weights(net.m);
  const std::vector<const weight_info*> both{by_name(weights, "w1"), by_name(weights, "w2")};
  ASSERT_TRUE(both[0] && both[1]);
  std::vector<std::vector<float>> batches{input_batch(1), input_batch(2)};
  std::size_t next = 0;
  const auto stats =
      int4q::onnx::collect_activation_stats(net.m, both, [&](std::map<std::string, value>& in) {
        if (next == batches.size()) return false;
        in["x"] = value::floats({B, T, K}, batches[next++]);
        return true;
      });
  std::vector<double> h1(K * K, 0.0), h2(H1 * H1, 0.0);
  for (const auto& x : batches) {
    add_gram(std::vector<double>(x.begin(), x.end()), B * T, K, h1);
    add_gram(relu_matmul(x, net.w1, B * T, K, H1), B * T, H1, h2);
  }
  EXPECT_EQ(stats.at("w1").rows(), 2 * B * T);
  EXPECT_EQ(stats.at("w2").rows(), 2 * B * T);
  expect_hessian(stats.at("w1"), h1, K);
  expect_hessian(stats.at("w2"), h2, H1);
}

TEST(Calibrate, SequentialStatisticsSeeTheReplacedEarlierWeights) {
  const two_layer net;
  const auto weights = int4q::onnx::find_weights(net.m);
  const weight_info* w1 = by_name(weights, "w1");
  const weight_info* w2 = by_name(weights, "w2");
  const std::vector<float> x = input_batch(3);
  bool given = false;
  int4q::onnx::sequential_calibration seq(net.m, {w1, w2}, [&](std::map<std::string, value>& in) {
    if (given) return false;
    in["x"] = value::floats({B, T, K}, x);
    given = true;
    return true;
  });
  std::vector<double> h1(K * K, 0.0);
  add_gram(std::vector<double>(x.begin(), x.end()), B * T, K, h1);
  expect_hessian(seq.stats_for(*w1), h1, K);
  // The first layer "quantized" to a different weight: the second sees relu(x w1').
  std::vector<float> w1q = net.w1;
  for (std::size_t e = 0; e < w1q.size(); ++e) w1q[e] = std::round(w1q[e] * 4.0f) / 4.0f;
  seq.replace(*w1, value::floats({K, H1}, w1q));
  std::vector<double> h2(H1 * H1, 0.0);
  add_gram(relu_matmul(x, w1q, B * T, K, H1), B * T, H1, h2);
  expect_hessian(seq.stats_for(*w2), h2, H1);
  // Asking again for the first weight after the runs passed it is an error.
  EXPECT_THROW(seq.stats_for(*by_name(weights, "w1")), int4q::onnx::model_error);
}

TEST(Executor, PausedRunsFinishWithTheOutputsOfARun) {
  const two_layer net;
  const executor ex(net.m);
  const std::map<std::string, value> in{{"x", value::floats({B, T, K}, input_batch(4))}};
  const value whole = ex.run(in).at("y");
  executor::session s = ex.start(in);
  ex.advance(s, 1);
  EXPECT_EQ(s.next_node(), 1);
  ASSERT_NE(s.find("h"), nullptr);
  EXPECT_EQ(s.find("h")->shape, (std::vector<std::int64_t>{B, T, H1}));
  EXPECT_NE(s.find("w2"), nullptr);  // initializers are visible
  EXPECT_EQ(s.find("y"), nullptr);   // not computed yet
  const value paused = ex.finish(s).at("y");
  EXPECT_EQ(paused.f, whole.f);
}

TEST(Executor, HooksSeeEveryNodeAndCanSwapAnInput) {
  const two_layer net;
  const executor ex(net.m);
  const std::vector<float> x = input_batch(5);
  const std::map<std::string, value> in{{"x", value::floats({B, T, K}, x)}};
  std::vector<std::string> seen;
  const value zero_w2 = value::floats({H1, N}, std::vector<float>(H1 * N, 0.0f));
  int4q::onnx::run_hooks hooks;
  hooks.before_node = [&](int, const ::onnx::NodeProto& n, std::vector<const value*>& args) {
    seen.push_back(n.name());
    if (n.name() == "mm2") args[1] = &zero_w2;
  };
  const value y = ex.run(in, hooks).at("y");
  EXPECT_EQ(seen, (std::vector<std::string>{"mm1", "relu", "mm2"}));
  for (float v : y.f) EXPECT_EQ(v, 0.0f);
}

/// y = If(c) then x @ wt else x @ we, the weights in the branches (as Silero VAD's LSTM).
int4q::onnx::model if_model(const std::vector<float>& wt, const std::vector<float>& we) {
  graph_builder g;
  g.input("c", int4q::test::onnx_bool, {});
  g.input("x", int4q::test::onnx_float, {2, static_cast<std::int64_t>(K)});
  auto branch = [&](const std::string& name, const std::vector<float>& w) {
    ::onnx::GraphProto sg;
    sg.set_name(name);
    *sg.add_initializer() =
        int4q::test::float_tensor(name + "_w", int4q::test::onnx_float, {K, N}, w);
    auto* n = sg.add_node();
    n->set_op_type("MatMul");
    n->set_name(name + "_mm");
    n->add_input("x");  // from the enclosing graph
    n->add_input(name + "_w");
    n->add_output(name + "_y");
    auto* o = sg.add_output();
    o->set_name(name + "_y");
    o->mutable_type()->mutable_tensor_type()->set_elem_type(int4q::test::onnx_float);
    return sg;
  };
  auto& n = g.node("If", {"c"}, {"y"}, "if");
  auto* a = n.add_attribute();
  a->set_name("then_branch");
  a->set_type(::onnx::AttributeProto::GRAPH);
  *a->mutable_g() = branch("then", wt);
  auto* b = n.add_attribute();
  b->set_name("else_branch");
  b->set_type(::onnx::AttributeProto::GRAPH);
  *b->mutable_g() = branch("else", we);
  g.output("y", int4q::test::onnx_float, {2, static_cast<std::int64_t>(N)});
  return g.model();
}

TEST(Executor, IfRunsTheChosenBranchWithOuterValues) {
  const auto wt = int4q::test::random_values(K * N, 21), we = int4q::test::random_values(K * N, 22);
  const auto m = if_model(wt, we);
  const executor ex(m);
  const auto x = int4q::test::random_values(2 * K, 23);
  for (const bool c : {true, false}) {
    const auto y = ex.run({{"c", value::ints({}, {c ? 1 : 0}, int4q::onnx::value_type::boolean)},
                           {"x", value::floats({2, K}, x)}})
                       .at("y");
    const auto& w = c ? wt : we;
    ASSERT_EQ(y.shape, (std::vector<std::int64_t>{2, N}));
    for (std::size_t r = 0; r < 2; ++r)
      for (std::size_t j = 0; j < N; ++j) {
        double s = 0;
        for (std::size_t a = 0; a < K; ++a) s += double(x[r * K + a]) * w[a * N + j];
        EXPECT_NEAR(y.f[r * N + j], s, 1e-5) << c;
      }
  }
}

TEST(Calibrate, WeightsInsideIfBranchesGetTheRowsOfTheBranchThatRan) {
  const auto m =
      if_model(int4q::test::random_values(K * N, 31), int4q::test::random_values(K * N, 32));
  const auto weights = int4q::onnx::find_weights(m);
  std::vector<const weight_info*> ptrs;
  for (const weight_info& w : weights) ptrs.push_back(&w);
  ASSERT_EQ(ptrs.size(), 2u);
  const auto x = int4q::test::random_values(2 * K, 33);
  int calls = 0;
  const auto stats =
      int4q::onnx::collect_activation_stats(m, ptrs, [&](std::map<std::string, value>& in) {
        if (calls++ == 1) return false;
        in["c"] = value::ints({}, {1}, int4q::onnx::value_type::boolean);
        in["x"] = value::floats({2, K}, x);
        return true;
      });
  EXPECT_EQ(stats.at("then_w").rows(), 2u);
  EXPECT_EQ(stats.at("else_w").rows(), 0u);
  std::vector<double> h(K * K, 0.0);
  add_gram(std::vector<double>(x.begin(), x.end()), 2, K, h);
  expect_hessian(stats.at("then_w"), h, K);
}

}  // namespace
