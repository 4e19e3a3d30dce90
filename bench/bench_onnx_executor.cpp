// int4q's ONNX executor on two transformer forward passes of 8 x 128 tokens, next to ONNX
// Runtime's time for the same pass on the same threads, measured in this run (onnxruntime-node
// through bench/ort_forward.mjs, when node and INT4Q_NODE_MODULES, the configured
// INT4Q_NODE_MODULES or build/node/node_modules are there):
//
//   devgpt       the GPT-2-style torch export in ../shared/models/devgpt
//   llama_small  a generated Llama-shaped model (tests/models/llama_model.hpp: RoPE, GQA 8/2
//                heads, RMSNorm, SwiGLU; 4 layers, hidden 256, MLP 688, vocab 1024; fp32)
//
// The executor runs as the int4q CLI runs it: BLAS on one thread, the executor's own threads
// (executor_options::threads = T) over fixed partitions, so the outputs do not depend on T.
//
//   executor/<model>_forward/threads:T
//     best_ms      best wall time of one forward pass
//     ort_ms       ONNX Runtime's best on T intra-op threads
//     x_ort        best_ms / ort_ms
//     ideal_ms     the pass's MatMul/Gemm arithmetic (2 M N K per product, counted on a run) at
//                  the sgemm reference rate on T threads, measured in this process
//     x_ideal      best_ms / ideal_ms
//   executor/devgpt_forward_stats/threads:T    the devgpt pass with statistics collection
//     x_forward    time / the plain pass of the same thread count (the statistics' overhead)
//
// At exit, on stdout: each pass's profile (run_hooks::profile of the fastest of 5 runs: time
// per operator type and per phase), then one line per pass comparing x_ort with the ratio recorded
// in bench/README.md (kRecorded below): "REGRESSION ..." when it is more than 1.5 times the
// recorded one, "ok ..." otherwise. A benchmark ratio is not a test (the machine may be busy); this
// line is for a person or a CI log to read.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <unistd.h>

#include <llama_model.hpp>

#include <int4q/onnx/calibrate.hpp>
#include <int4q/onnx/executor.hpp>
#include <int4q/onnx/model.hpp>
#include <int4q/onnx/weights.hpp>

#include "bench_common.hpp"

namespace {

namespace fs = std::filesystem;
namespace ox = int4q::onnx;

constexpr std::int64_t kBatch = 8, kSeq = 128;

/// x_ort recorded in bench/README.md per pass and thread count (after issue 17's changes, the
/// quietest run of 2026-12-03).
const std::map<std::string, double> kRecorded = {
    {"devgpt/1", 2.35}, {"devgpt/2", 2.77}, {"llama_small/1", 1.50}, {"llama_small/2", 2.51}};
/// A ratio this many times the recorded one prints REGRESSION.
constexpr double kRegressionFactor = 1.5;

fs::path devgpt_dir() { return fs::path(INT4Q_SOURCE_DIR) / ".." / "shared" / "models" / "devgpt"; }

/// A model the bench runs, with the files ONNX Runtime reads (model, u8 token file).
struct bench_model {
  ox::model m;
  fs::path onnx_path, tokens_path;
};

int4q::test::llama_options llama_small_options() {
  int4q::test::llama_options o;
  o.layers = 4;
  o.hidden = 256;
  o.intermediate = 688;
  o.heads = 8;
  o.kv_heads = 2;
  o.vocab = 1024;
  o.max_positions = 256;
  o.external_data = false;
  return o;
}

const bench_model& get_model(const std::string& name) {
  static std::map<std::string, bench_model> models;
  auto it = models.find(name);
  if (it != models.end()) return it->second;
  bench_model b;
  if (name == "devgpt") {
    b.onnx_path = devgpt_dir() / "devgpt_fp32.onnx";
    b.tokens_path = devgpt_dir() / "devgpt_val.u8";
    b.m = ox::load_model(b.onnx_path);
  } else {  // llama_small: written to a scratch directory for ONNX Runtime
    const fs::path dir = fs::temp_directory_path() /
                         ("int4q_bench_executor_" + std::to_string(static_cast<long>(getpid())));
    fs::create_directories(dir);
    const auto o = llama_small_options();
    b.onnx_path = dir / "llama_small.onnx";
    b.tokens_path = dir / "tokens.u8";
    int4q::test::write_llama_model(o, b.onnx_path);
    int4q::test::write_token_file(b.tokens_path, 256, kBatch * kSeq, 7);
    b.m = ox::load_model(b.onnx_path);
  }
  return models.emplace(name, std::move(b)).first->second;
}

void remove_scratch() {
  fs::remove_all(fs::temp_directory_path() /
                 ("int4q_bench_executor_" + std::to_string(static_cast<long>(getpid()))));
}

std::map<std::string, ox::value> inputs_of(const bench_model& b) {
  std::ifstream in(b.tokens_path, std::ios::binary);
  std::vector<std::int64_t> ids(static_cast<std::size_t>(kBatch * kSeq));
  for (auto& v : ids) v = static_cast<unsigned char>(in.get());
  return {{"input_ids", ox::value::ints({kBatch, kSeq}, ids)}};
}

fs::path node_modules() {
  if (const char* env = std::getenv("INT4Q_NODE_MODULES")) return env;
#ifdef INT4Q_BENCH_NODE_MODULES
  return INT4Q_BENCH_NODE_MODULES;
#else
  return fs::path(INT4Q_SOURCE_DIR) / "build" / "node" / "node_modules";
#endif
}

/// ONNX Runtime's best time in seconds for the pass on `threads` threads; 0 when unavailable.
double ort_seconds(const std::string& name, int threads) {
  static std::map<std::pair<std::string, int>, double> cache;
  const auto key = std::make_pair(name, threads);
  if (cache.count(key)) return cache[key];
  const bench_model& b = get_model(name);
  const fs::path modules = node_modules();
  double s = 0;
  if (fs::exists(modules / "onnxruntime-node")) {
    const std::string cmd = "INT4Q_NODE_MODULES='" + modules.string() + "' node '" +
                            (fs::path(INT4Q_SOURCE_DIR) / "bench" / "ort_forward.mjs").string() +
                            "' '" + b.onnx_path.string() + "' '" + b.tokens_path.string() + "' " +
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
  cache[key] = s;
  return s;
}

/// Multiply-adds x 2 of every MatMul and Gemm of one run on `in` (numpy broadcasting of the
/// batch dimensions).
double matmul_flops(const ox::executor& ex, const std::map<std::string, ox::value>& in) {
  double flops = 0;
  ox::run_hooks hooks;
  hooks.before_node = [&](int, const ::onnx::NodeProto& n, std::vector<const ox::value*>& args) {
    if ((n.op_type() != "MatMul" && n.op_type() != "Gemm") || args.size() < 2 || !args[0] ||
        !args[1])
      return;
    std::vector<std::int64_t> a = args[0]->shape, b = args[1]->shape;
    if (a.size() < 2 || b.size() < 2) return;
    bool ta = false, tb = false;
    for (const auto& at : n.attribute()) {
      if (at.name() == "transA") ta = at.i() != 0;
      if (at.name() == "transB") tb = at.i() != 0;
    }
    const double M = static_cast<double>(a[a.size() - (ta ? 1 : 2)]);
    const double K = static_cast<double>(a[a.size() - (ta ? 2 : 1)]);
    const double N = static_cast<double>(b[b.size() - (tb ? 2 : 1)]);
    double batch = 1;
    const std::size_t ra = a.size() - 2, rb = b.size() - 2;
    for (std::size_t k = 0; k < std::max(ra, rb); ++k) {
      const std::int64_t da = k < ra ? a[ra - 1 - k] : 1, db = k < rb ? b[rb - 1 - k] : 1;
      batch *= static_cast<double>(std::max(da, db));
    }
    flops += 2 * batch * M * N * K;
  };
  ex.run(in, hooks);
  return flops;
}

struct pass_result {
  double best = 0, ort = 0, ideal = 0;
  ox::run_profile profile;
  int profile_runs = 0;
};
std::map<std::pair<std::string, int>, pass_result> g_results;

void bm_forward(benchmark::State& state, const std::string& name) {
  const int threads = static_cast<int>(state.range(0));
  int4q_bench::set_blas_threads(1);
  const bench_model& b = get_model(name);
  ox::executor_options options;
  options.threads = static_cast<std::size_t>(threads);
  const ox::executor ex(b.m, options);
  const auto in = inputs_of(b);
  const double flops = matmul_flops(ex, in);  // also the warm-up
  double best = 1e9;
  for (auto _ : state) {
    int4q_bench::stopwatch sw;
    benchmark::DoNotOptimize(ex.run(in));
    const double s = sw.seconds();
    best = std::min(best, s);
    state.SetIterationTime(s);
  }
  pass_result& r = g_results[{name, threads}];
  r.best = best;
  r.ideal = flops / int4q_bench::sgemm_reference(threads);
  // The profile of the fastest of 5 profiled runs (a busy machine slows some runs down).
  r.profile = {};
  for (int k = 0; k < 5; ++k) {
    ox::run_profile p;
    ox::run_hooks hooks;
    hooks.profile = &p;
    ex.run(in, hooks);
    if (k == 0 || p.total.seconds < r.profile.total.seconds) r.profile = p;
  }
  r.profile_runs = 1;
  r.ort = ort_seconds(name, threads);
  state.counters["best_ms"] = best * 1e3;
  state.counters["ort_ms"] = r.ort * 1e3;
  if (r.ort > 0) state.counters["x_ort"] = best / r.ort;
  state.counters["ideal_ms"] = r.ideal * 1e3;
  state.counters["x_ideal"] = best / r.ideal;
  state.counters["tokens_per_s"] = kBatch * kSeq / best;
}
/// executor/<name>_forward/threads:{1,2}.
bool register_forward(const std::string& name) {
  benchmark::RegisterBenchmark(("executor/" + name + "_forward").c_str(),
                               [name](benchmark::State& state) { bm_forward(state, name); })
      ->ArgName("threads")
      ->Arg(1)
      ->Arg(2)
      ->Iterations(10)
      ->UseManualTime()
      ->Unit(benchmark::kMillisecond);
  return true;
}
const bool forward_registered = register_forward("devgpt") && register_forward("llama_small");

void bm_forward_stats(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  int4q_bench::set_blas_threads(threads);
  const ox::model& m = get_model("devgpt").m;
  const auto weights = ox::find_weights(m);
  std::vector<const ox::weight_info*> ptrs;
  for (const auto& w : weights)
    if (w.quantizable) ptrs.push_back(&w);
  const auto in = inputs_of(get_model("devgpt"));
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
  int4q_bench::set_blas_threads(1);
  state.counters["best_ms"] = best * 1e3;
  state.counters["weights"] = static_cast<double>(ptrs.size());
  const auto f = g_results.find({"devgpt", threads});
  if (f != g_results.end()) state.counters["x_forward"] = best / f->second.best;
}
BENCHMARK(bm_forward_stats)
    ->Name("executor/devgpt_forward_stats")
    ->ArgName("threads")
    ->Arg(1)
    ->Arg(2)
    ->Iterations(5)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

void print_entry(const char* what, const ox::run_profile::entry& e, int runs, double total) {
  std::printf("  %-28s %6zu calls %9.2f ms %5.1f %%\n", what,
              e.calls / static_cast<std::size_t>(runs), e.seconds * 1e3 / runs,
              total > 0 ? 100 * e.seconds / total : 0.0);
}

/// The profiles and the regression lines of the passes that ran.
void report() {
  for (const auto& [key, r] : g_results) {
    if (r.profile_runs == 0) continue;
    const ox::run_profile& p = r.profile;
    const double total = p.total.seconds;
    std::printf("\nprofile %s, %d thread(s), the fastest of 5 runs:\n", key.first.c_str(),
                key.second);
    std::vector<std::pair<std::string, ox::run_profile::entry>> ops(p.ops.begin(), p.ops.end());
    std::sort(ops.begin(), ops.end(),
              [](const auto& x, const auto& y) { return x.second.seconds > y.second.seconds; });
    for (const auto& [op, e] : ops) print_entry(op.c_str(), e, r.profile_runs, total);
    print_entry("(inputs: lookups, weights)", p.inputs, r.profile_runs, total);
    print_entry("(of which weight conversion)", p.weight_conversion, r.profile_runs, total);
    print_entry("(release: store, free)", p.release, r.profile_runs, total);
    print_entry("(total)", p.total, r.profile_runs, total);
  }
  std::printf("\n");
  for (const auto& [key, r] : g_results) {
    const std::string pass = key.first + "/" + std::to_string(key.second);
    const auto rec = kRecorded.find(pass);
    if (r.ort <= 0 || rec == kRecorded.end()) continue;
    const double x = r.best / r.ort;
    const bool bad = x > kRegressionFactor * rec->second;
    std::printf("%s executor/%s_forward/threads:%d x_ort %.2f (recorded %.2f, limit %.2f)\n",
                bad ? "REGRESSION" : "ok", key.first.c_str(), key.second, x, rec->second,
                kRegressionFactor * rec->second);
  }
}

}  // namespace

int main(int argc, char** argv) {
  const int rc = int4q_bench::main(argc, argv);
  report();
  remove_scratch();
  return rc;
}
