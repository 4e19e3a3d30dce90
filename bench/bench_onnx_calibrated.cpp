// Calibrated quantization of a Llama-2-7B-shaped model (tests/models/llama_model.hpp: RMSNorm,
// RoPE, attention, SwiGLU, untied lm_head, fp16 weights in external data, random weights) by
// the int4q CLI, one child process per run, against the FLOP ideal measured in the same run.
//
//   calibrated/<method>/layers:<L>   `int4q quantize MODEL --method gptq | awq_full` or `--auto
//                                    --effective-bits 4.5`, with S windows of T random tokens
//
// Environment (defaults keep a plain run short; the issue-12 table is layers 4, 8 and 32):
//   INT4Q_BENCH_DIR          work folder (models, token file, outputs); default
//                            $TMPDIR/int4q_bench_calibrated. Models are generated once and
//                            reused (llama7b_L<L>.onnx + .data: 0.42 GB per layer + 0.52 GB)
//   INT4Q_BENCH_LAYERS       layer counts, comma separated (default 1; "4,8,32" for the table)
//   INT4Q_BENCH_SAMPLES      calibration windows (default 64)
//   INT4Q_BENCH_SEQ          tokens per window (default 128)
//   INT4Q_BENCH_THREADS      --threads of the CLI (default 0: all cores)
//   INT4Q_BENCH_RANKS        MPI ranks, comma separated (default 1: no mpiexec; "1,2,4" for the
//                            issue-14 table): `mpiexec -np R int4q quantize ...`, each rank
//                            with INT4Q_BENCH_THREADS threads (set it: 0 is all cores per rank)
//
// Counters per run (the child's numbers, from wait4):
//   wall_s, cpu_s (user + sys), peak_rss_MB (the child's maximum resident set), TFLOP (the
//   FLOP ideal below), ideal_s (TFLOP / sgemm FLOP/s wall-clock on the CLI's thread count,
//   measured by this process before the run), x_ideal = wall_s / ideal_s, ideal_cpu_s (TFLOP /
//   sgemm FLOP per CPU-second on one thread), x_ideal_cpu = cpu_s / ideal_cpu_s (the fair
//   figure on a machine shared with other jobs, where wall-clock rates fall with the load),
//   forward_s, weights_s, load_s, save_s (from the CLI's --report: weights_s is the sum of the
//   per-weight "seconds", which run from reading the weight through its statistics and solve to its
//   packed tensors; forward_s = the quantize phase minus weights_s: the executor's forward passes
//   and the activation hooks; --auto's calibration and scoring are in auto_s), model_GB;
//   ranks, comm_MB_per_layer (what rank 0 sent and received, the report's communication_bytes,
//   over the layers; with MPI the times are the whole job's, cpu_s all ranks' together).
//
// FLOP ideal (multiply-add = 2 FLOPs; T = S * seq tokens; per layer: the 7 linear weights
// W [K, N], the 4 distinct activations that feed them: q/k/v share one (K = hidden), o one
// (hidden), gate/up one (hidden), down one (K = intermediate)):
//   forward     2 T sum(K N) + attention 2 * 2 S heads seq^2 d (Q K^T and P V, full squares).
//               The lm_head is kept in float (the CLI's default) and needs no forward.
//   statistics  T K^2 per distinct activation (X^T X, symmetric: one triangle).
//   GPTQ        K^3 per distinct activation (Cholesky of H, its inverse, the Cholesky of H^-1:
//               K^3/3 each) + K^2 N per weight (the lazy-batch error propagation: row k
//               updates the N columns of the K - k rows after it, sum 2 N (K - k) = K^2 N).
//   awq_full    the AWQ scale search, 11 alphas (--awq-alpha-step 0.1), and the clip search,
//               11 ratios (--awq-clip-step 0.05 from 1 to 0.5): each grid point is one product
//               X_r (W - Q(W)) over the R = min(T, 512) sampled rows: 2 R K N per point and
//               weight; plus the forward (no X^T X: AWQ needs per-channel means only).
//   --auto      forward + statistics + each quantizing candidate's Hessian loss tr(E^T H E):
//               2 K^2 N per candidate and weight (3 candidates: int4-g32, int4-g128, int8-g128).
// The ideal leaves out what is not arithmetic (reading 13.5 GB, conversions) and is a lower
// bound: no method can be faster than its FLOPs at the sgemm rate.
#include "bench_common.hpp"

#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "llama_model.hpp"

namespace fs = std::filesystem;

namespace {

std::string env_or(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::string(v) : fallback;
}

fs::path work_dir() {
  static const fs::path dir = [] {
    fs::path d =
        env_or("INT4Q_BENCH_DIR", (fs::temp_directory_path() / "int4q_bench_calibrated").string());
    fs::create_directories(d);
    return d;
  }();
  return dir;
}

int samples() { return std::stoi(env_or("INT4Q_BENCH_SAMPLES", "64")); }
int seq_len() { return std::stoi(env_or("INT4Q_BENCH_SEQ", "128")); }
int cli_threads() { return std::stoi(env_or("INT4Q_BENCH_THREADS", "0")); }

/// The Llama-2-7B-shaped model of `layers` layers, generated on first use.
fs::path model_path(int layers) {
  const fs::path path = work_dir() / ("llama7b_L" + std::to_string(layers) + ".onnx");
  if (!fs::exists(path) || !fs::exists(path.string() + ".data")) {
    int4q_bench::stopwatch sw;
    int4q::test::write_llama_model(int4q::test::llama_options::llama2_7b(layers), path);
    std::fprintf(stderr, "generated %s in %.1f s\n", path.c_str(), sw.seconds());
  }
  return path;
}

/// S * seq random tokens (u16): the CLI cuts them into S windows, evenly spaced = back to back.
fs::path token_file() {
  const fs::path path = work_dir() / ("tokens_" + std::to_string(samples()) + "x" +
                                      std::to_string(seq_len()) + ".u16");
  if (!fs::exists(path)) {
    int4q::test::write_token_file(path, 32000, std::uint64_t(samples()) * seq_len(), 7);
  }
  return path;
}

struct child_result {
  int status = -1;
  double wall_s = 0, cpu_s = 0;
  double peak_rss_bytes = 0;
};

/// Runs `argv` as a child process; its wall time, CPU time and peak RSS (wait4's rusage).
child_result run_child(const std::vector<std::string>& args) {
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  child_result r;
  int4q_bench::stopwatch sw;
  const pid_t pid = fork();
  if (pid < 0) return r;
  if (pid == 0) {
    execv(argv[0], argv.data());
    _exit(127);
  }
  struct rusage ru {};
  if (wait4(pid, &r.status, 0, &ru) != pid) return r;
  r.wall_s = sw.seconds();
  r.cpu_s = static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
            static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
  r.peak_rss_bytes = static_cast<double>(ru.ru_maxrss) * 1024.0;  // Linux: kilobytes
  return r;
}

enum class method { gptq, awq_full, autoq };

const char* method_name(method m) {
  return m == method::gptq ? "gptq" : m == method::awq_full ? "awq_full" : "auto";
}

/// FLOPs of `m` on the model `o` with `samples` windows of `seq` tokens (formulas at the top).
double ideal_flops(method m, const int4q::test::llama_options& o, double samples, double seq) {
  const double t = samples * seq, h = o.hidden, i = o.intermediate;
  const double kn = 4 * h * h + 3 * h * i;  // q, k, v, o; gate, up, down (kv_heads = heads)
  const double forward = 2 * t * kn + 4 * samples * o.heads * seq * seq * o.head_dim();
  const double stats = t * (3 * h * h + i * i);
  const double k3 = 3 * h * h * h + i * i * i;
  const double k2n = 4 * h * h * h + 2 * h * h * i + i * i * h;
  double per_layer = 0;
  switch (m) {
    case method::gptq: per_layer = forward + stats + k3 + k2n; break;
    case method::awq_full: per_layer = forward + 22 * 2 * std::min(t, 512.0) * kn; break;
    case method::autoq: per_layer = forward + stats + 3 * 2 * k2n; break;
  }
  return per_layer * o.layers;
}

/// sgemm FLOPs per CPU-second on one BLAS thread (best of 3 products, CPU time of this thread):
/// on a machine shared with other jobs, wall-clock rates fall with the load, CPU-time rates do not.
double sgemm_cpu_rate() {
  static const double rate = [] {
    int4q_bench::set_blas_threads(1);
    int4q_bench::sgemm_once();  // allocate and warm up
    double best = 0;
    for (int r = 0; r < 3; ++r) {
      timespec a{}, b{};
      clock_gettime(CLOCK_THREAD_CPUTIME_ID, &a);
      int4q_bench::sgemm_once();
      clock_gettime(CLOCK_THREAD_CPUTIME_ID, &b);
      const double s = static_cast<double>(b.tv_sec - a.tv_sec) +
                       1e-9 * static_cast<double>(b.tv_nsec - a.tv_nsec);
      best = std::max(best, int4q_bench::sgemm_flops / s);
    }
    return best;
  }();
  return rate;
}

double json_number(const nlohmann::json& j, const char* a, const char* b = nullptr) {
  const nlohmann::json* v = j.contains(a) ? &j.at(a) : nullptr;
  if (v && b) v = v->contains(b) ? &v->at(b) : nullptr;
  return v && v->is_number() ? v->get<double>() : 0.0;
}

void bm_calibrated(benchmark::State& state, method m) {
  const int layers = static_cast<int>(state.range(0));
  const int ranks = static_cast<int>(state.range(1));
  const auto o = int4q::test::llama_options::llama2_7b(layers);
  const fs::path model = model_path(layers);
  const fs::path tokens = token_file();
  const fs::path out = work_dir() / "out.onnx";
  const fs::path report = work_dir() / ("report_" + std::string(method_name(m)) + "_L" +
                                        std::to_string(layers) + ".json");
  // Threads of the whole job: each rank runs the CLI's --threads.
  const int threads =
      ranks *
      (cli_threads() > 0 ? cli_threads() : static_cast<int>(std::thread::hardware_concurrency()));
  // The sgemm rates, measured in this process: wall-clock on the CLI's thread count (the machine
  // as it is now, loaded or not) and per CPU-second on one thread (load-independent).
  const double sgemm = int4q_bench::sgemm_reference(threads);
  const double sgemm_cpu = sgemm_cpu_rate();
  std::vector<std::string> args = {INT4Q_CLI_PATH,
                                   "quantize",
                                   model.string(),
                                   "-o",
                                   out.string(),
                                   "--calib",
                                   tokens.string(),
                                   "--token-dtype",
                                   "u16",
                                   "--calib-samples",
                                   std::to_string(samples()),
                                   "--calib-seq-len",
                                   std::to_string(seq_len()),
                                   "--threads",
                                   std::to_string(cli_threads()),
                                   "--report",
                                   report.string(),
                                   "-q"};
  if (m == method::autoq) {
    args.insert(args.end(), {"--auto", "--effective-bits", "4.5"});
  } else {
    args.insert(args.end(), {"--method", method_name(m)});
  }
  if (ranks > 1) {
#if defined(INT4Q_MPIEXEC)
    // --oversubscribe: more ranks than cores is allowed (a 2-core machine measuring 4 ranks).
    args.insert(args.begin(), {INT4Q_MPIEXEC, "--allow-run-as-root", "--oversubscribe", "-np",
                               std::to_string(ranks)});
#else
    state.SkipWithError("ranks > 1 needs MPI (int4q built without it)");
    return;
#endif
  }
  child_result r;
  for (auto _ : state) {
    fs::remove(report);
    r = run_child(args);
    state.SetIterationTime(r.wall_s);
    if (!WIFEXITED(r.status) || WEXITSTATUS(r.status) != 0) {
      state.SkipWithError("int4q quantize failed (run the command by hand to see why)");
      return;
    }
  }
  nlohmann::json rep;
  {
    std::ifstream in(report);
    if (in) rep = nlohmann::json::parse(in, nullptr, false);
  }
  double weights_s = 0;
  if (rep.is_object() && rep.contains("tensors"))
    for (const auto& t : rep["tensors"])
      if (t.contains("seconds") && t["seconds"].is_number())
        weights_s += t["seconds"].get<double>();
  const double quantize_s = json_number(rep, "timing", "quantize_seconds");
  const double flops = ideal_flops(m, o, samples(), seq_len());
  const double ideal_s = flops / sgemm;
  const double ideal_cpu_s = flops / sgemm_cpu;
  state.counters["wall_s"] = r.wall_s;
  state.counters["cpu_s"] = r.cpu_s;
  state.counters["peak_rss_MB"] = r.peak_rss_bytes / 1e6;
  state.counters["TFLOP"] = flops / 1e12;
  state.counters["ideal_s"] = ideal_s;
  state.counters["x_ideal"] = r.wall_s / ideal_s;
  // CPU time against the FLOPs at one core's sgemm rate per CPU-second: on a shared machine
  // the fair comparison (a perfect run on C free cores takes ideal_cpu_s / C of wall time).
  state.counters["ideal_cpu_s"] = ideal_cpu_s;
  state.counters["x_ideal_cpu"] = r.cpu_s / ideal_cpu_s;
  state.counters["sgemm_GFLOPs"] = sgemm / 1e9;
  state.counters["sgemm_cpu_GFLOPs"] = sgemm_cpu / 1e9;
  state.counters["load_s"] = json_number(rep, "timing", "load_seconds");
  state.counters["auto_s"] = json_number(rep, "timing", "auto_plan_seconds");
  state.counters["forward_s"] = quantize_s - weights_s;
  state.counters["weights_s"] = weights_s;
  state.counters["save_s"] = json_number(rep, "timing", "save_seconds");
  state.counters["ranks"] = ranks;
  state.counters["comm_MB_per_layer"] = json_number(rep, "communication_bytes") / 1e6 / layers;
  state.counters["model_GB"] =
      static_cast<double>(fs::file_size(model) + fs::file_size(model.string() + ".data")) / 1e9;
  fs::remove(out);
  fs::remove(fs::path(out.string() + ".data"));
}

bool register_calibrated() {
  const auto numbers = [](const char* name) {
    std::vector<int> out;
    std::stringstream list(env_or(name, "1"));
    for (std::string item; std::getline(list, item, ',');)
      if (!item.empty()) out.push_back(std::stoi(item));
    return out;
  };
  const std::vector<int> layer_counts = numbers("INT4Q_BENCH_LAYERS");
  const std::vector<int> rank_counts = numbers("INT4Q_BENCH_RANKS");
  for (method m : {method::gptq, method::awq_full, method::autoq}) {
    auto* b = benchmark::RegisterBenchmark((std::string("calibrated/") + method_name(m)).c_str(),
                                           [m](benchmark::State& s) { bm_calibrated(s, m); });
    b->ArgNames({"layers", "ranks"})->Iterations(1)->UseManualTime()->Unit(benchmark::kSecond);
    for (int l : layer_counts)
      for (int r : rank_counts) b->Args({l, r});
  }
  return true;
}
const bool registered = register_calibrated();

}  // namespace

int main(int argc, char** argv) { return int4q_bench::main(argc, argv); }
