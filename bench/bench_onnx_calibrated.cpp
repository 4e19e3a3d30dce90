// Calibrated quantization of a Llama-2-7B-shaped model (tests/models/llama_model.hpp: RMSNorm,
// RoPE, attention, SwiGLU, untied lm_head, fp16 weights in external data, random weights) by
// the int4q CLI, one child process per run, against the FLOP ideal measured in the same run.
//
//   calibrated/<method>/layers:<L>   `int4q quantize MODEL --method gptq | awq_full` or `--auto
//                                    --effective-bits 4.5`, with S windows of T random tokens
//   calibrated/block/layers:<L>      `int4q quantize MODEL --method block --block-iters I`, same
//                                    calibration, run twice: with I and with 2 I iterations (the
//                                    difference is I steps of every block: the time per step)
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
//   INT4Q_BENCH_BLOCK_ITERS  I, the --block-iters of calibrated/block's first run (default 4:
//                            one layer in minutes; the CLI's default is 200); its second run
//                            has 2 I. --calib-batch is given as 8 (the CLI's default)
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
//   block       per layer, fixed: the float runs' forward over all T tokens (the targets) and the
//               quantized runs' forward (same again): 2 forward. Per step, on one batch of
//               B = 8 windows = 8 seq tokens, for the layer's 2 blocks (attention: q, k, v, o;
//               MLP: gate, up, down) together: forward 2 B sum(K N) + attention 4 * 8 heads
//               seq^2 d; backward dW = X^T dY for every weight, 2 B sum(K N), dX = dY W^T only
//               where the input depends on a tuned weight (o's and down's: 2 B (hidden^2 +
//               hidden intermediate); q/k/v and gate/up read the normed block input, which needs
//               none, and int4q's gradient does not compute it), attention's backward 8 * 8 heads
//               seq^2 d (dV, dP, dQ, dK). A step is 2.3 forwards of its batch, not the 3 of a
//               full backward. The tuned_rounding work per step (dequantize, the gradient's
//               transpose, backward, step: a few passes over the 202 M parameters) is
//               memory-bound and not counted. Not counted either: the float and quantized runs
//               also advance through the blocks with nothing to tune (the final norm and the
//               kept lm_head, 2 x 2 T hidden vocab), work a block method does not need.
//               Counters of calibrated/block (from both runs' --report): blocks (the tuned
//               blocks: the report's "block" weights grouped by name without its last two
//               parts, e.g. model.layers.0.self_attn), blocks_s (each block's time = the largest
//               "seconds" of its weights: every one counts from the block's start to its own
//               packing, so the sum over the weights would count a block 3-4 times),
//               outside_s = quantize phase - blocks_s (embedding, final norm, lm_head, both
//               runs), s_per_step = (blocks_s(2 I) - blocks_s(I)) / (I blocks), the mean over
//               attention and MLP blocks, cpu_per_step likewise from the child's CPU times (the
//               runs differ only by the steps), fixed_s_per_block = blocks_s(I) / blocks - I
//               s_per_step (targets, quantized advance, tuner setup, packing), and at the CLI's
//               default 200 steps: s_per_block_200 = fixed + 200 s_per_step and wall_200_s =
//               wall(I) + (200 - I) blocks s_per_step, each beside its ideal (ideal_*: FLOPs at
//               the wall-clock sgemm rate, per block the layer's FLOPs / 2).
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
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include <int4q/onnx/quantize_model.hpp>

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

/// sum(K N) of one layer's 7 linear weights: q, k, v, o; gate, up, down (kv_heads = heads).
double layer_kn(const int4q::test::llama_options& o) {
  const double h = o.hidden, i = o.intermediate;
  return 4 * h * h + 3 * h * i;
}

/// One layer's forward over `windows` windows of `seq` tokens: 2 T sum(K N) + attention's
/// Q K^T and P V (full squares).
double forward_flops(const int4q::test::llama_options& o, double windows, double seq) {
  return 2 * windows * seq * layer_kn(o) + 4 * windows * o.heads * seq * seq * o.head_dim();
}

/// FLOPs of `m` on the model `o` with `samples` windows of `seq` tokens (formulas at the top).
double ideal_flops(method m, const int4q::test::llama_options& o, double samples, double seq) {
  const double t = samples * seq, h = o.hidden, i = o.intermediate;
  const double kn = layer_kn(o);
  const double forward = forward_flops(o, samples, seq);
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

/// calibrated/block's --calib-batch: the CLI's default, given explicitly so the FLOPs match.
constexpr int block_calib_batch = 8;

/// Method block's FLOPs per layer (formulas at the top): `fixed` (targets and quantized
/// advance over all windows) and `step` (one step of both blocks on one batch).
struct block_flops {
  double fixed = 0, step = 0;
};

block_flops block_ideal(const int4q::test::llama_options& o, double samples, double seq) {
  const double h = o.hidden, i = o.intermediate;
  const double windows = std::min<double>(block_calib_batch, samples), b = windows * seq;
  const double attention_backward = 8 * windows * o.heads * seq * seq * o.head_dim();
  block_flops f;
  f.fixed = 2 * forward_flops(o, samples, seq);
  f.step = forward_flops(o, windows, seq) + 2 * b * layer_kn(o) + 2 * b * (h * h + h * i) +
           attention_backward;
  return f;
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

/// `int4q quantize MODEL -o OUT` with the token file as calibration and a --report: the
/// arguments every run shares (the method's come after).
std::vector<std::string> quantize_args(const fs::path& model, const fs::path& tokens,
                                       const fs::path& out, const fs::path& report) {
  return {INT4Q_CLI_PATH,
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
}

/// The --report at `path` (a null json when missing or unreadable).
nlohmann::json read_report(const fs::path& path) {
  std::ifstream in(path);
  return in ? nlohmann::json::parse(in, nullptr, false) : nlohmann::json();
}

/// The counters every run has: the child's wall, CPU and peak RSS, and `flops` against the
/// sgemm rates (wall-clock on the job's threads, per CPU-second on one thread).
void set_run_counters(benchmark::State& state, const child_result& r, double flops, double sgemm,
                      double sgemm_cpu) {
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
  std::vector<std::string> args = quantize_args(model, tokens, out, report);
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
  const nlohmann::json rep = read_report(report);
  double weights_s = 0;
  if (rep.is_object() && rep.contains("tensors"))
    for (const auto& t : rep["tensors"])
      if (t.contains("seconds") && t["seconds"].is_number())
        weights_s += t["seconds"].get<double>();
  const double quantize_s = json_number(rep, "timing", "quantize_seconds");
  const double flops = ideal_flops(m, o, samples(), seq_len());
  set_run_counters(state, r, flops, sgemm, sgemm_cpu);
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

int block_iters() { return std::stoi(env_or("INT4Q_BENCH_BLOCK_ITERS", "4")); }

/// What one method-block run's --report says about its tuned blocks.
struct block_times {
  std::size_t blocks = 0;  ///< tuned blocks
  double blocks_s = 0;     ///< their time, summed
  double quantize_s = 0;   ///< the quantize phase
  double loss_ratio = 0;   ///< mean over the blocks of block_loss / block_loss_start
};

/// A block's weights share their name up to the last two parts ("model.layers.0.self_attn" of
/// "model.layers.0.self_attn.q_proj.weight"); each weight's "seconds" runs from its block's
/// start to its own packing, so a block's time is the largest of them.
block_times read_block_times(const nlohmann::json& rep) {
  std::map<std::string, std::pair<double, double>> blocks;  // seconds, loss ratio
  if (rep.is_object() && rep.contains("tensors"))
    for (const auto& t : rep["tensors"]) {
      if (!t.contains("method") || t["method"] != "block") continue;
      const std::string name = t.value("weight", "");
      const std::size_t last = name.rfind('.');
      const std::size_t cut =
          last == std::string::npos || last == 0 ? std::string::npos : name.rfind('.', last - 1);
      auto& [seconds, ratio] = blocks[name.substr(0, cut)];
      seconds = std::max(seconds, json_number(t, "seconds"));
      const double start = json_number(t, "block_loss_start");
      ratio = start > 0 ? json_number(t, "block_loss") / start : 0.0;
    }
  block_times b;
  b.blocks = blocks.size();
  for (const auto& [name, s] : blocks) {
    b.blocks_s += s.first;
    b.loss_ratio += s.second / static_cast<double>(blocks.size());
  }
  b.quantize_s = json_number(rep, "timing", "quantize_seconds");
  return b;
}

/// calibrated/block: two runs, I and 2 I steps per block; the difference is the steps' time.
void bm_block(benchmark::State& state) {
  const int layers = static_cast<int>(state.range(0));
  const int iters = block_iters();
  const auto o = int4q::test::llama_options::llama2_7b(layers);
  const fs::path model = model_path(layers);
  const fs::path tokens = token_file();
  const fs::path out = work_dir() / "out.onnx";
  const auto report = [&](int i) {
    return work_dir() /
           ("report_block_L" + std::to_string(layers) + "_I" + std::to_string(i) + ".json");
  };
  const int threads =
      cli_threads() > 0 ? cli_threads() : static_cast<int>(std::thread::hardware_concurrency());
  const double sgemm = int4q_bench::sgemm_reference(threads);
  const double sgemm_cpu = sgemm_cpu_rate();
  const auto args = [&](int i) {
    std::vector<std::string> a = quantize_args(model, tokens, out, report(i));
    a.insert(a.end(), {"--method", "block", "--block-iters", std::to_string(i), "--calib-batch",
                       std::to_string(block_calib_batch)});
    return a;
  };
  child_result r1, r2;
  for (auto _ : state) {
    for (int i : {iters, 2 * iters}) fs::remove(report(i));
    r1 = run_child(args(iters));
    r2 = run_child(args(2 * iters));
    state.SetIterationTime(r1.wall_s);
    for (const child_result& r : {r1, r2})
      if (!WIFEXITED(r.status) || WEXITSTATUS(r.status) != 0) {
        state.SkipWithError("int4q quantize failed (run the command by hand to see why)");
        return;
      }
  }
  const nlohmann::json rep1 = read_report(report(iters));
  const block_times b1 = read_block_times(rep1);
  const block_times b2 = read_block_times(read_report(report(2 * iters)));
  // The Llama layer's two blocks (attention, MLP), each with weights to tune.
  if (b1.blocks != 2 * static_cast<std::size_t>(layers) || b2.blocks != b1.blocks) {
    state.SkipWithError("the reports do not show 2 tuned blocks per layer");
    return;
  }
  const double blocks = static_cast<double>(b1.blocks);
  const block_flops f = block_ideal(o, samples(), seq_len());
  set_run_counters(state, r1, layers * (f.fixed + iters * f.step), sgemm, sgemm_cpu);
  const double steps = iters * blocks;  // the steps the second run adds
  const double step_s = (b2.blocks_s - b1.blocks_s) / steps;
  const double fixed_s = b1.blocks_s / blocks - iters * step_s;
  // The CLI's default steps per block.
  const double default_iters = static_cast<double>(int4q::onnx::block_settings{}.iterations);
  state.counters["iters"] = iters;
  state.counters["blocks"] = blocks;
  state.counters["blocks_s"] = b1.blocks_s;
  state.counters["outside_s"] = b1.quantize_s - b1.blocks_s;
  state.counters["load_s"] = json_number(rep1, "timing", "load_seconds");
  state.counters["save_s"] = json_number(rep1, "timing", "save_seconds");
  state.counters["wall_2I_s"] = r2.wall_s;
  state.counters["cpu_2I_s"] = r2.cpu_s;
  state.counters["peak_rss_2I_MB"] = r2.peak_rss_bytes / 1e6;
  state.counters["s_per_step"] = step_s;
  // Per block: half a layer's FLOPs (the attention and MLP blocks averaged).
  state.counters["ideal_step_s"] = f.step / 2 / sgemm;
  state.counters["x_ideal_step"] = step_s / (f.step / 2 / sgemm);
  state.counters["cpu_per_step"] = (r2.cpu_s - r1.cpu_s) / steps;
  state.counters["x_ideal_cpu_step"] = (r2.cpu_s - r1.cpu_s) / steps / (f.step / 2 / sgemm_cpu);
  state.counters["fixed_s_per_block"] = fixed_s;
  state.counters["ideal_fixed_s"] = f.fixed / 2 / sgemm;
  state.counters["s_per_block_200"] = fixed_s + default_iters * step_s;
  state.counters["ideal_block_200_s"] = (f.fixed + default_iters * f.step) / 2 / sgemm;
  state.counters["wall_200_s"] = r1.wall_s + (default_iters - iters) * blocks * step_s;
  state.counters["loss_ratio"] = b1.loss_ratio;
  state.counters["loss_ratio_2I"] = b2.loss_ratio;
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
  // Method block runs in one process (no ranks).
  auto* b = benchmark::RegisterBenchmark("calibrated/block", bm_block);
  b->ArgNames({"layers"})->Iterations(1)->UseManualTime()->Unit(benchmark::kSecond);
  for (int l : layer_counts) b->Args({l});
  return true;
}
const bool registered = register_calibrated();

}  // namespace

int main(int argc, char** argv) { return int4q_bench::main(argc, argv); }
