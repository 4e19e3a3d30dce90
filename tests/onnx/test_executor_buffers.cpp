// The executor's buffers and threads (issue 17): operators write into the inputs the executor
// frees after them and into buffers of freed values, and split large elementwise and row-wise
// work over threads in fixed items. Checked here: a chain of such operators on tensors larger
// than one work item against plain loops in double; byte-identical outputs for 1, 2 and 3
// threads, for later runs of one executor (reusing the buffers of earlier runs, or not) and for
// a run where no input may be taken over (a hook hands every operator copies);
// graph outputs and inputs read twice by one node are never overwritten; run_profile counts
// what ran.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <int4q/onnx/executor.hpp>
#include <int4q/onnx/model.hpp>

#include "onnx/graph_builder.hpp"

namespace {

namespace ox = int4q::onnx;
using int4q::test::graph_builder;
using int4q::test::onnx_float;
using int4q::test::random_values;

// [I, J, K] with I * J * K = 120000 elements: several work items of the executor's loops.
constexpr std::int64_t I = 4, J = 300, K = 100;

struct chain_case {
  ox::model m;
  std::map<std::string, ox::value> in;
  std::vector<float> x, b, s, y, scale, bias;
};

/// t1 = x + b; t2 = t1 * s; t3 = y - t2 (output); t4 = t3 / 2; t5 = erf(t4);
/// t6 = softmax(t5, last axis); t7 = reshape(t6, [I*J, K]); t8 = layernorm(t7, scale, bias);
/// t9 = t8^2; t10 = mean(t9, last axis) (output); t11 = t8 * t8 (output).
chain_case make_chain() {
  chain_case c;
  c.x = random_values(I * J * K, 1);
  c.b = random_values(K, 2);
  c.s = random_values(I * J, 3);
  c.y = random_values(J * K, 4);
  c.scale = random_values(K, 5);
  c.bias = random_values(K, 6);
  graph_builder g;
  g.input("x", onnx_float, {I, J, K});
  g.input("b", onnx_float, {K});
  g.input("s", onnx_float, {I, J, 1});
  g.input("y", onnx_float, {J, K});
  g.initializer("scale", onnx_float, {K}, c.scale);
  g.initializer("bias", onnx_float, {K}, c.bias);
  g.initializer("two", onnx_float, {}, {2.0f});
  g.initializer_i64("shape", {2}, {I * J, K});
  g.initializer_i64("axes", {1}, {-1});
  g.node("Add", {"x", "b"}, {"t1"});
  g.node("Mul", {"t1", "s"}, {"t2"});
  g.node("Sub", {"y", "t2"}, {"t3"});
  g.node("Div", {"t3", "two"}, {"t4"});
  g.node("Erf", {"t4"}, {"t5"});
  int4q::test::set_attr(g.node("Softmax", {"t5"}, {"t6"}), "axis", std::int64_t{-1});
  g.node("Reshape", {"t6", "shape"}, {"t7"});
  g.node("LayerNormalization", {"t7", "scale", "bias"}, {"t8"});
  g.node("Pow", {"t8", "two"}, {"t9"});
  g.node("ReduceMean", {"t9", "axes"}, {"t10"});
  g.node("Mul", {"t8", "t8"}, {"t11"});
  g.output("t3", onnx_float, {I, J, K});
  g.output("t10", onnx_float, {I * J, 1});
  g.output("t11", onnx_float, {I * J, K});
  g.set_opset(18);
  c.m = g.model();
  c.in = {{"x", ox::value::floats({I, J, K}, c.x)},
          {"b", ox::value::floats({K}, c.b)},
          {"s", ox::value::floats({I, J, 1}, c.s)},
          {"y", ox::value::floats({J, K}, c.y)}};
  return c;
}

void expect_same_bits(const std::map<std::string, ox::value>& a,
                      const std::map<std::string, ox::value>& b, const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (const auto& [name, v] : a) {
    const ox::value& w = b.at(name);
    ASSERT_EQ(v.shape, w.shape) << what << ": " << name;
    ASSERT_EQ(v.f.size(), w.f.size()) << what << ": " << name;
    for (std::size_t e = 0; e < v.f.size(); ++e)
      ASSERT_EQ(std::memcmp(&v.f[e], &w.f[e], sizeof(float)), 0)
          << what << ": " << name << " element " << e << ": " << v.f[e] << " vs " << w.f[e];
  }
}

TEST(ExecutorBuffers, ChainMatchesPlainLoopsAndIsTheSameForAnyThreadCount) {
  const chain_case c = make_chain();
  const auto one = ox::executor(c.m, ox::executor_options{1}).run(c.in);

  // Plain loops in double.
  const std::size_t rows = I * J;
  std::vector<double> t3(rows * K), t8(rows * K);
  for (std::size_t r = 0; r < rows; ++r) {
    const std::size_t j = r % J;
    std::vector<double> t5(K);
    for (std::size_t k = 0; k < K; ++k) {
      const double t2 = (double(c.x[r * K + k]) + c.b[k]) * c.s[r];
      t3[r * K + k] = c.y[j * K + k] - t2;
      t5[k] = std::erf(t3[r * K + k] / 2);
    }
    double mx = -INFINITY, sum = 0;
    for (const double v : t5) mx = std::max(mx, v);
    for (double& v : t5) sum += (v = std::exp(v - mx));
    double mean = 0, var = 0;
    for (double& v : t5) mean += (v /= sum);
    mean /= K;
    for (const double v : t5) var += (v - mean) * (v - mean);
    var /= K;
    for (std::size_t k = 0; k < K; ++k)
      t8[r * K + k] = (t5[k] - mean) / std::sqrt(var + 1e-5) * c.scale[k] + c.bias[k];
  }
  const ox::value& o3 = one.at("t3");
  const ox::value& o10 = one.at("t10");
  const ox::value& o11 = one.at("t11");
  ASSERT_EQ(o3.shape, (std::vector<std::int64_t>{I, J, K}));
  ASSERT_EQ(o10.shape, (std::vector<std::int64_t>{I * J, 1}));
  ASSERT_EQ(o11.shape, (std::vector<std::int64_t>{I * J, K}));
  for (std::size_t r = 0; r < rows; ++r) {
    double m2 = 0;
    for (std::size_t k = 0; k < K; ++k) {
      const std::size_t e = r * K + k;
      ASSERT_NEAR(o3.f[e], t3[e], 1e-5 * (1 + std::fabs(t3[e]))) << e;
      ASSERT_NEAR(o11.f[e], t8[e] * t8[e], 1e-3 * (1 + t8[e] * t8[e])) << e;
      m2 += t8[e] * t8[e];
    }
    ASSERT_NEAR(o10.f[r], m2 / K, 1e-3 * (1 + m2 / K)) << r;
  }

  for (const std::size_t threads : {std::size_t{2}, std::size_t{3}})
    expect_same_bits(one, ox::executor(c.m, ox::executor_options{threads}).run(c.in),
                     std::to_string(threads) + " threads");
  // Later runs reuse the buffers the earlier ones left (kept_buffer_bytes), or none.
  ox::executor_options none;
  none.threads = 2;
  none.kept_buffer_bytes = 0;
  for (const ox::executor_options& o : {ox::executor_options{2}, none}) {
    const ox::executor e(c.m, o);
    for (int run = 0; run < 3; ++run)
      expect_same_bits(one, e.run(c.in), "run " + std::to_string(run));
  }

  // Every operator handed copies (the hook's own values): nothing is taken over or overwritten,
  // and the outputs are the same bits.
  std::vector<std::unique_ptr<ox::value>> copies;
  ox::run_hooks hooks;
  hooks.before_node = [&](int, const ::onnx::NodeProto&, std::vector<const ox::value*>& args) {
    for (const ox::value*& a : args) {
      if (!a) continue;
      copies.push_back(std::make_unique<ox::value>(*a));
      a = copies.back().get();
    }
  };
  for (const std::size_t threads : {std::size_t{1}, std::size_t{2}})
    expect_same_bits(one, ox::executor(c.m, ox::executor_options{threads}).run(c.in, hooks),
                     "copies, " + std::to_string(threads) + " threads");
}

// The values a hook sees are each node's true inputs, also when earlier nodes computed in place:
// the inputs of Mul(t1, s) are x + b and s, unchanged by later nodes until they have run.
TEST(ExecutorBuffers, HooksSeeInputsBeforeTheyAreOverwritten) {
  const chain_case c = make_chain();
  std::vector<float> t1_seen;
  ox::run_hooks hooks;
  hooks.before_node = [&](int, const ::onnx::NodeProto& n, std::vector<const ox::value*>& args) {
    if (n.op_type() == "Mul" && n.input(0) == "t1") t1_seen = args[0]->f;
  };
  const auto out = ox::executor(c.m, ox::executor_options{2}).run(c.in, hooks);
  ASSERT_EQ(t1_seen.size(), static_cast<std::size_t>(I * J * K));
  for (std::size_t e = 0; e < t1_seen.size(); ++e) ASSERT_EQ(t1_seen[e], c.x[e] + c.b[e % K]) << e;
  // The caller's inputs are never written.
  EXPECT_EQ(c.in.at("x").f, c.x);
  EXPECT_EQ(c.in.at("y").f, c.y);
}

TEST(ExecutorBuffers, ProfileCountsEveryNodeAndWeightConversion) {
  const chain_case c = make_chain();
  // Plus a large initializer (over small_initializer_bytes): converted through the weight cache.
  graph_builder g;
  g.input("x", onnx_float, {8, 256});
  g.initializer("w", onnx_float, {256, 256}, random_values(256 * 256, 7));
  g.matmul("mm", "x", "w", "h");
  g.node("Add", {"h", "h"}, {"y"});
  g.output("y", onnx_float, {8, 256});
  const ox::model m = g.model();
  const std::map<std::string, ox::value> in{
      {"x", ox::value::floats({8, 256}, random_values(2048, 8))}};
  ox::run_profile p;
  ox::run_hooks hooks;
  hooks.profile = &p;
  const ox::executor cached(m, ox::executor_options{1});
  const ox::executor uncached(m, ox::executor_options{1, 0});
  cached.run(in, hooks);
  cached.run(in, hooks);  // the weight from the cache
  uncached.run(in, hooks);
  EXPECT_EQ(p.total.calls, 3u);
  EXPECT_EQ(p.ops.at("MatMul").calls, 3u);
  EXPECT_EQ(p.ops.at("Add").calls, 3u);
  EXPECT_EQ(p.ops.size(), 2u);
  EXPECT_EQ(p.inputs.calls, 6u);
  EXPECT_EQ(p.release.calls, 6u);
  EXPECT_EQ(p.weight_conversion.calls, 2u);  // first cached run, the uncached one
  EXPECT_EQ(p.hooks.calls, 0u);              // no before_node
  double parts = p.inputs.seconds + p.release.seconds;
  for (const auto& [op, e] : p.ops) parts += e.seconds;
  EXPECT_LE(parts, p.total.seconds);
  EXPECT_LE(p.weight_conversion.seconds, p.inputs.seconds);

  // The chain: one entry per operator type, calls = nodes of that type.
  ox::run_profile q;
  hooks.profile = &q;
  const auto with = ox::executor(c.m, ox::executor_options{2}).run(c.in, hooks);
  EXPECT_EQ(q.ops.at("Mul").calls, 2u);
  EXPECT_EQ(q.ops.at("Softmax").calls, 1u);
  EXPECT_EQ(q.ops.size(), 10u);
  // Profiling changes nothing computed.
  expect_same_bits(with, ox::executor(c.m, ox::executor_options{2}).run(c.in), "profiled");
}

}  // namespace
