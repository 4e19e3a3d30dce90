// Calibration statistics from executor runs (parallel and sequential), the executor's paused
// runs (sessions) and hooks, and weights inside If branches. References: the activations
// computed in the test with plain loops in double (X W, ReLU), and X^T X summed directly.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <limits>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <int4q/onnx/apply_plan.hpp>
#include <int4q/onnx/auto_quantize.hpp>
#include <int4q/onnx/calib_data.hpp>
#include <int4q/onnx/calibrate.hpp>
#include <int4q/onnx/executor.hpp>
#include <int4q/onnx/option_error.hpp>
#include <int4q/onnx/quantize_model.hpp>
#include <int4q/onnx/weights.hpp>

#include "onnx/cli_runner.hpp"
#include "onnx/devgpt_eval.hpp"
#include "onnx/graph_builder.hpp"
#include "onnx/sanitizer.hpp"

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

// ---- sequential calibration's memory: activation budget (scratch file), freed replacements ----

namespace ox = int4q::onnx;
namespace fs = std::filesystem;

constexpr std::uint64_t kNoLimit = std::numeric_limits<std::uint64_t>::max();

/// `windows` windows of `seq` bytes of devgpt_cal.u8, `per_run` per batch (so several paused
/// runs, unlike devgpt_calibration's batches of 8).
ox::batch_source devgpt_windows(const ox::model& m, std::size_t windows, std::size_t seq,
                                std::size_t per_run) {
  ox::calib_options o;
  o.path = int4q::test::devgpt_dir() / "devgpt_cal.u8";
  o.seq_len = seq;
  o.samples = windows;
  const ox::calib_data data = ox::calib_data::open(m, o);
  auto next = std::make_shared<std::size_t>(0);
  return [data, next, per_run](std::map<std::string, value>& in) {
    if (*next >= data.samples()) return false;
    const std::size_t count = std::min(per_run, data.samples() - *next);
    in = data.batch(*next, count);
    *next += count;
    return true;
  };
}

/// The bits of everything a weight's statistics hold.
std::string stats_bits(const int4q::activation_stats& s) {
  std::string bits = std::to_string(s.rows()) + ":";
  auto add = [&bits](const auto& t) {
    bits.append(reinterpret_cast<const char*>(t.data()), t.size() * sizeof(*t.data()));
  };
  add(s.hessian());
  add(s.mean_abs());
  add(s.max_abs());
  add(s.sample());
  return bits;
}

int main_use(const weight_info& w, bool last) {
  int at = last ? -1 : std::numeric_limits<int>::max();
  for (const auto& u : w.uses) at = last ? std::max(at, u.node_index) : std::min(at, u.node_index);
  return at;
}

/// The quantizable weights by first use (sequential calibration's order).
std::vector<const weight_info*> in_graph_order(const std::vector<weight_info>& weights) {
  std::vector<const weight_info*> ws;
  for (const weight_info& w : weights)
    if (w.quantizable) ws.push_back(&w);
  std::stable_sort(ws.begin(), ws.end(), [](const weight_info* a, const weight_info* b) {
    return main_use(*a, false) < main_use(*b, false);
  });
  return ws;
}

struct sequential_trace {
  std::vector<std::string> stats;    ///< per weight, stats_bits
  std::vector<std::size_t> held;     ///< replacements_held() after each stats_for
  std::vector<std::size_t> spilled;  ///< runs_spilled() after each stats_for
};

/// Every quantizable weight of devgpt in graph order: its statistics, then a replacement (its
/// values rounded to multiples of 1/8, so that later weights see changed activations).
sequential_trace trace_devgpt(const ox::model& m, std::uint64_t budget, const fs::path& dir) {
  const auto weights = ox::find_weights(m);
  const std::vector<const weight_info*> ws = in_graph_order(weights);
  ox::collect_options co;
  co.stats.sample_rows = 16;
  co.activation_budget_bytes = budget;
  co.scratch_dir = dir;
  ox::sequential_calibration seq(m, ws, devgpt_windows(m, 8, 32, 2), co);
  sequential_trace t;
  for (const weight_info* w : ws) {
    t.stats.push_back(stats_bits(seq.stats_for(*w)));
    t.held.push_back(seq.replacements_held());
    t.spilled.push_back(seq.runs_spilled());
    const ::onnx::TensorProto* init = nullptr;
    for (const auto& i : m.proto.graph().initializer())
      if (i.name() == w->name) init = &i;
    EXPECT_TRUE(init) << w->name;
    if (!init) return t;
    value v = ox::to_value(m, *init);
    for (float& x : v.f) x = std::round(x * 8.0f) / 8.0f;
    seq.replace(*w, std::move(v));
  }
  return t;
}

fs::path fresh_dir(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("int4q_test_" + name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

std::size_t files_in(const fs::path& dir) {
  return static_cast<std::size_t>(std::distance(fs::directory_iterator(dir), {}));
}

// The runs' values written to the scratch file and read back are the same bits: the statistics
// of every weight are identical with no limit, with a budget that holds some runs, and with
// budget 0 (every run but the one being advanced in the file). Replacements are freed once the
// runs pass the weight's last use: after weight j's statistics, the replaced weights still
// held are those whose last use is at or after j's first use (counted here from the uses).
TEST(SequentialMemory, StatisticsAreTheSameBitsWithAnyActivationBudget) {
  const ox::model m = ox::load_model(int4q::test::devgpt_dir() / "devgpt_fp32.onnx");
  const fs::path dir = fresh_dir("seq_stats");
  const sequential_trace all = trace_devgpt(m, kNoLimit, dir);
  // devgpt's widest live activations: about 2 windows x 32 tokens x 4 x 128 floats per run.
  const std::uint64_t some = 2 * 2 * 32 * 128 * 4 * 4;
  const sequential_trace part = trace_devgpt(m, some, dir);
  const sequential_trace none = trace_devgpt(m, 0, dir);
  ASSERT_EQ(all.stats.size(), none.stats.size());
  ASSERT_EQ(all.stats.size(), part.stats.size());
  for (std::size_t j = 0; j < all.stats.size(); ++j) {
    EXPECT_TRUE(all.stats[j] == part.stats[j]) << "weight #" << j;
    EXPECT_TRUE(all.stats[j] == none.stats[j]) << "weight #" << j;
  }
  // 4 runs: none spilled without a limit, all of them with budget 0, some but not all between.
  EXPECT_EQ(*std::max_element(all.spilled.begin(), all.spilled.end()), 0u);
  EXPECT_EQ(*std::min_element(none.spilled.begin(), none.spilled.end()), 4u);
  std::size_t partial = 0;
  for (std::size_t n : part.spilled) partial += n > 0 && n < 4;
  EXPECT_GT(partial, 0u) << "the budget held every run or none: choose another";
  std::cout << "[seq memory] steps with some runs spilled at " << some << " bytes: " << partial
            << " of " << part.spilled.size() << "\n";
  // Replacements held, against the uses.
  const auto weights = ox::find_weights(m);
  const std::vector<const weight_info*> ws = in_graph_order(weights);
  std::size_t most = 0;
  for (std::size_t j = 0; j < ws.size(); ++j) {
    std::size_t want = 0;
    for (std::size_t i = 0; i < j; ++i) want += main_use(*ws[i], true) >= main_use(*ws[j], false);
    EXPECT_EQ(none.held[j], want) << ws[j]->name;
    EXPECT_EQ(all.held[j], want) << ws[j]->name;
    most = std::max(most, want);
  }
  EXPECT_LT(most, ws.size() / 2) << "devgpt's weights are used once each: few stay held";
  EXPECT_EQ(files_in(dir), 0u) << "the scratch file outlives the calibration";
  fs::remove_all(dir);
}

// The scratch file exists while runs are spilled, and is removed at the end, after an error in
// the data source (construction) and after an error while the runs advance.
TEST(SequentialMemory, ScratchFileIsRemovedAfterSuccessAndAfterAnError) {
  const two_layer net;
  const auto weights = int4q::onnx::find_weights(net.m);
  const weight_info* w1 = by_name(weights, "w1");
  const weight_info* w2 = by_name(weights, "w2");
  const fs::path dir = fresh_dir("seq_scratch");
  ox::collect_options co;
  co.activation_budget_bytes = 0;
  co.scratch_dir = dir;
  auto batches = [](int count, bool fail_after) {
    auto n = std::make_shared<int>(0);
    return [n, count, fail_after](std::map<std::string, value>& in) -> bool {
      if (*n == count) {
        if (fail_after) throw std::runtime_error("the data source failed");
        return false;
      }
      in["x"] = value::floats({B, T, K}, input_batch(static_cast<std::uint32_t>(40 + (*n)++)));
      return true;
    };
  };
  {
    ox::sequential_calibration seq(net.m, {w1, w2}, batches(3, false), co);
    EXPECT_EQ(seq.runs_spilled(), 3u);
    EXPECT_EQ(files_in(dir), 1u);
    seq.stats_for(*w1);
    seq.stats_for(*w2);
    EXPECT_EQ(seq.runs_spilled(), 3u);
  }
  EXPECT_EQ(files_in(dir), 0u) << "after success";
  EXPECT_THROW(ox::sequential_calibration(net.m, {w1, w2}, batches(2, true), co),
               std::runtime_error);
  EXPECT_EQ(files_in(dir), 0u) << "after an error in the data";
  {
    ox::sequential_calibration seq(net.m, {w1, w2}, batches(3, false), co);
    seq.stats_for(*w1);
    seq.replace(*w1, value::floats({K + 1, H1}, std::vector<float>((K + 1) * H1, 1.0f)));
    EXPECT_THROW(seq.stats_for(*w2), ox::model_error);  // MatMul of a wrong shape
    EXPECT_EQ(files_in(dir), 1u);
  }
  EXPECT_EQ(files_in(dir), 0u) << "after an error while advancing";
  fs::remove_all(dir);
}

std::string serialized(const ox::model& m) {
  std::string s;
  EXPECT_TRUE(m.proto.SerializeToString(&s));
  return s;
}

// The quantized model is the same bytes whatever the activation budget, for every sequential
// method and for an --auto plan applied sequentially (6 windows of 32 bytes in runs of 2).
TEST(SequentialMemory, OutputIsTheSameBytesWithAnyActivationBudget) {
  int4q::test::set_blas_threads(1);
  const ox::model fp32 = ox::load_model(int4q::test::devgpt_dir() / "devgpt_fp32.onnx");
  const fs::path dir = fresh_dir("seq_output");
  auto options = [&](ox::method algo) {
    ox::quantize_options q;
    q.algo = algo;
    q.lm_head = ox::lm_head_policy::quantize;
    q.awq.samples = 16;
    q.calibration.data = devgpt_windows(fp32, 6, 32, 2);
    q.calibration.scratch_dir = dir;
    return q;
  };
  std::vector<std::pair<std::string, ox::quantize_options>> cases;
  for (const ox::method algo : {ox::method::gptq, ox::method::awq_full, ox::method::awq_gptq})
    cases.emplace_back(ox::to_string(algo), options(algo));
  {
    ox::quantize_options q = options(ox::method::rtn);
    ox::auto_options a;
    a.effective_bits = 5.0;
    const ox::quant_plan plan = ox::auto_plan(fp32, q, a);
    q = ox::with_plan(options(ox::method::gptq), plan);
    cases.emplace_back("auto", q);
  }
  for (auto& [name, q] : cases) {
    std::vector<std::string> outputs;
    for (const std::uint64_t budget :
         {kNoLimit, std::uint64_t(2 * 32 * 128 * 4 * 4), std::uint64_t(0)}) {
      ox::model m = fp32;
      ox::quantize_options o = q;
      o.calibration.data = devgpt_windows(fp32, 6, 32, 2);
      o.calibration.activation_budget_bytes = budget;
      ox::quantize_model(m, o);
      outputs.push_back(serialized(m));
    }
    EXPECT_FALSE(outputs[0] == serialized(fp32)) << name;
    EXPECT_TRUE(outputs[0] == outputs[1]) << name << ": some runs spilled";
    EXPECT_TRUE(outputs[0] == outputs[2]) << name << ": every run spilled";
  }
  EXPECT_EQ(files_in(dir), 0u);
  fs::remove_all(dir);
}

// Peak memory of GPTQ sequential through the CLI (a child process; its --report gives the peak
// RSS) on a generated model several times the bound: 256 MatMul layers of 512 x 512 fp16
// weights in external data (128 MiB on disk, 256 MiB as fp32), 4 random samples of 16 tokens,
// --calib-memory 0 and --spill always. The bound (64 MiB) holds the program, one weight in fp32
// with its Hessian and GPTQ's work, and the live activations.
// Before the executor converted initializers lazily (its fp32 copy of every weight), the peak
// was 312 MiB here.
TEST(SequentialMemory, GptqThroughTheCliStaysUnderABoundOnAModelSeveralTimesLarger) {
#ifdef INT4Q_TEST_ASAN
  GTEST_SKIP() << "peak memory is not measured under AddressSanitizer (quarantine, shadow memory)";
#endif
  constexpr std::int64_t D = 512, L = 256;
  constexpr std::uint64_t bound = std::uint64_t(64) << 20;
  const fs::path dir = fresh_dir("seq_bound");
  {
    graph_builder g;
    g.input("x", int4q::test::onnx_float, {1, -1, D});
    std::string h = "x";
    for (std::int64_t l = 0; l < L; ++l) {
      const std::string w = "w" + std::to_string(l), y = "h" + std::to_string(l);
      g.initializer(w, int4q::test::onnx_float16, {D, D},
                    int4q::test::random_values(D * D, static_cast<std::uint32_t>(100 + l), 0.08f));
      g.matmul("mm" + std::to_string(l), h, w, y);
      h = y;
    }
    g.output(h, int4q::test::onnx_float, {1, -1, D});
    ox::save_options so;
    so.mode = ox::external_data::always;
    ox::save_model(g.model(), dir / "big.onnx", so);
  }
  const std::uint64_t on_disk =
      fs::file_size(dir / "big.onnx") + fs::file_size(dir / "big.onnx.data");
  ASSERT_GT(on_disk, 2 * bound);
  const auto r = int4q::test::run_cli(dir, {"quantize",
                                            "big.onnx",
                                            "-o",
                                            "out.onnx",
                                            "--method",
                                            "gptq",
                                            "--calib-samples",
                                            "4",
                                            "--calib-seq-len",
                                            "16",
                                            "--calib-memory",
                                            "0",
                                            "--spill",
                                            "always",
                                            "--lm-head",
                                            "quantize",
                                            "--threads",
                                            "1",
                                            "--report",
                                            "report.json",
                                            "-q"});
  ASSERT_EQ(r.status, 0) << int4q::test::describe(r);
  const auto report = nlohmann::json::parse(int4q::test::read_text(dir / "report.json"));
  const std::uint64_t peak = report["peak_rss_bytes"].get<std::uint64_t>();
  std::cout << "[seq memory] model " << (on_disk >> 20) << " MiB on disk, peak RSS " << (peak >> 20)
            << " MiB, bound " << (bound >> 20) << " MiB\n";
  EXPECT_EQ(report["totals"]["weights_quantized"].get<int>(), L);
  EXPECT_LT(peak, bound);
  fs::remove_all(dir);
}

// A scratch directory that is not a directory is an option error naming the field.
TEST(SequentialMemory, ScratchDirMustBeADirectory) {
  const fs::path dir = fresh_dir("seq_option");
  ox::quantize_options q;
  q.calibration.scratch_dir = dir;
  EXPECT_NO_THROW(ox::check_quantize_options(q));
  q.calibration.scratch_dir = dir / "missing";
  try {
    ox::check_quantize_options(q);
    ADD_FAILURE() << "a missing scratch directory was accepted";
  } catch (const ox::option_error& e) {
    EXPECT_EQ(e.field(), "calibration.scratch_dir");
    EXPECT_NE(std::string(e.what()).find("missing"), std::string::npos) << e.what();
  }
  fs::remove_all(dir);
}

}  // namespace
