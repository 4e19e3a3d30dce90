// int4q's ONNX executor on the devgpt model: a forward pass over 8 x 128 tokens, alone and with
// the calibration statistics of every quantizable weight collected on the way (H = X^T X in
// double, mean/max |x|), next to ONNX Runtime's time for the same pass on the same threads,
// measured in this run (onnxruntime-node through bench/ort_forward.mjs, when node and
// INT4Q_NODE_MODULES or build/node/node_modules are there).
//
//   executor/devgpt_forward/threads:T          one forward pass
//     x_ort        executor time / ONNX Runtime's (the goal: <= 2)
//   executor/devgpt_forward_stats/threads:T    the same pass with statistics collection
//     x_forward    time / the plain pass of the same thread count (the statistics' overhead)
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <int4q/onnx/calibrate.hpp>
#include <int4q/onnx/executor.hpp>
#include <int4q/onnx/model.hpp>
#include <int4q/onnx/weights.hpp>

#include "bench_common.hpp"

namespace {

namespace fs = std::filesystem;
namespace ox = int4q::onnx;

constexpr std::int64_t kBatch = 8, kSeq = 128;

fs::path devgpt_dir() { return fs::path(INT4Q_SOURCE_DIR) / ".." / "shared" / "models" / "devgpt"; }

const ox::model& devgpt() {
  static const ox::model m = ox::load_model(devgpt_dir() / "devgpt_fp32.onnx");
  return m;
}

std::map<std::string, ox::value> devgpt_inputs() {
  std::ifstream in(devgpt_dir() / "devgpt_val.u8", std::ios::binary);
  std::vector<std::int64_t> ids(static_cast<std::size_t>(kBatch * kSeq));
  for (auto& v : ids) v = static_cast<unsigned char>(in.get());
  return {{"input_ids", ox::value::ints({kBatch, kSeq}, ids)}};
}

/// ONNX Runtime's best time in seconds for the pass on `threads` threads; 0 when unavailable.
double ort_seconds(int threads) {
  static std::map<int, double> cache;
  if (cache.count(threads)) return cache[threads];
  const char* env = std::getenv("INT4Q_NODE_MODULES");
  const fs::path modules =
      env ? fs::path(env) : fs::path(INT4Q_SOURCE_DIR) / "build" / "node" / "node_modules";
  double s = 0;
  if (fs::exists(modules / "onnxruntime-node")) {
    const std::string cmd = "INT4Q_NODE_MODULES='" + modules.string() + "' node '" +
                            (fs::path(INT4Q_SOURCE_DIR) / "bench" / "ort_forward.mjs").string() +
                            "' '" + (devgpt_dir() / "devgpt_fp32.onnx").string() + "' '" +
                            (devgpt_dir() / "devgpt_val.u8").string() + "' " +
                            std::to_string(kBatch) + " " + std::to_string(kSeq) + " " +
                            std::to_string(threads) + " 10 2>/dev/null";
    if (FILE* p = popen(cmd.c_str(), "r")) {
      char line[256] = {};
      if (std::fgets(line, sizeof line, p)) {
        const char* at = std::strstr(line, "\"best_ms\":");
        if (at) s = std::atof(at + 10) / 1000.0;
      }
      pclose(p);
    }
  }
  cache[threads] = s;
  return s;
}

std::map<int, double> g_forward;  // seconds per pass, by threads

void bm_forward(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  int4q_bench::set_blas_threads(threads);
  const ox::executor ex(devgpt());
  const auto in = devgpt_inputs();
  ex.run(in);  // warm-up
  double best = 1e9;
  for (auto _ : state) {
    int4q_bench::stopwatch sw;
    benchmark::DoNotOptimize(ex.run(in));
    const double s = sw.seconds();
    best = std::min(best, s);
    state.SetIterationTime(s);
  }
  g_forward[threads] = best;
  const double ort = ort_seconds(threads);
  state.counters["best_ms"] = best * 1e3;
  state.counters["ort_ms"] = ort * 1e3;
  if (ort > 0) state.counters["x_ort"] = best / ort;
  state.counters["tokens_per_s"] = kBatch * kSeq / best;
}
BENCHMARK(bm_forward)
    ->Name("executor/devgpt_forward")
    ->ArgName("threads")
    ->Arg(1)
    ->Arg(2)
    ->Iterations(10)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

void bm_forward_stats(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  int4q_bench::set_blas_threads(threads);
  const ox::model& m = devgpt();
  const auto weights = ox::find_weights(m);
  std::vector<const ox::weight_info*> ptrs;
  for (const auto& w : weights)
    if (w.quantizable) ptrs.push_back(&w);
  const auto in = devgpt_inputs();
  double best = 1e9;
  for (auto _ : state) {
    int4q_bench::stopwatch sw;
    bool given = false;
    const auto stats =
        ox::collect_activation_stats(m, ptrs, [&](std::map<std::string, ox::value>& b) {
          if (given) return false;
          b = in;
          given = true;
          return true;
        });
    benchmark::DoNotOptimize(stats);
    const double s = sw.seconds();
    best = std::min(best, s);
    state.SetIterationTime(s);
  }
  state.counters["best_ms"] = best * 1e3;
  state.counters["weights"] = static_cast<double>(ptrs.size());
  if (g_forward.count(threads)) state.counters["x_forward"] = best / g_forward[threads];
}
BENCHMARK(bm_forward_stats)
    ->Name("executor/devgpt_forward_stats")
    ->ArgName("threads")
    ->Arg(1)
    ->Arg(2)
    ->Iterations(5)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace

int main(int argc, char** argv) { return int4q_bench::main(argc, argv); }
