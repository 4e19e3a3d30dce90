// GPTQ (gptq.hpp) next to the time its floating-point work would take at the BLAS gemm rates
// measured in the same run (see bench_common.hpp and README.md).
//
//   machine/dgemm_2048/threads:T      cblas_dgemm 2048^3 on T BLAS threads (GFLOP/s), the rate of
//                                     the double part; machine/sgemm_2048 (bench_common) the other
//   gptq/g128/K/N/threads             gptq(W, H, 4-bit asymmetric g128, block 128) with
//                                     gptq_options::threads (BLAS on one thread), report.rtn_loss
//                                     off: the algorithm alone
//   gptq_rtn_loss/g128/K/N/threads    the same with the default options (+ RTN's loss, one more
//                                     K x K x N product)
//   gptq_phase/inverse_cholesky/K/T   the double part alone: dpotrf + dtrtri of the damped H
//   stats/hessian/K/rows/threads      activation_stats::add of rows x K floats, H read once: float
//                                     blocks summed in double (ideal: the K (K + 1) rows flops
//                                     at the sgemm rate on `threads`)
//   stats/hessian_dsyrk/K/rows/T      the former way: rows copied to double, one dsyrk
//
// Counters: ideal_ms = the work at gemm speed: the updates, N K (K - 1) flops in the weight's
// type (float: sgemm rate), plus the factorization, 2 K^3 / 3 flops in double (dgemm rate);
// x_ideal = time / ideal_ms (goal: <= 2); GFLOP/s and pct_sgemm of the update flops alone.
// Inputs: W normal(0, 0.02) fp32 (bench_common), H = X^T X of 2K normal rows; fixed seeds.
#include <cstddef>
#include <map>
#include <vector>

#include <benchmark/benchmark.h>
#include <cblas.h>
#include <xtensor/xtensor.hpp>

#include <int4q/quant.hpp>

#include "bench_common.hpp"

namespace {

using int4q_bench::stopwatch;

// ---- dgemm reference ---------------------------------------------------------------------------

constexpr int dgemm_n = 2048;
constexpr double dgemm_flops = 2.0 * dgemm_n * dgemm_n * dgemm_n;

std::map<int, double>& dgemm_rates() {
  static std::map<int, double> r;
  return r;
}

void dgemm_once() {
  static const std::vector<double> a(std::size_t(dgemm_n) * dgemm_n, 0.5);
  static const std::vector<double> b(std::size_t(dgemm_n) * dgemm_n, 0.25);
  static std::vector<double> c(std::size_t(dgemm_n) * dgemm_n, 0.0);
  cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, dgemm_n, dgemm_n, dgemm_n, 1.0, a.data(),
              dgemm_n, b.data(), dgemm_n, 0.0, c.data(), dgemm_n);
  benchmark::ClobberMemory();
}

void bm_dgemm(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  int4q_bench::set_blas_threads(threads);
  dgemm_once();  // allocate and warm up
  stopwatch sw;
  for (auto _ : state) dgemm_once();
  const double s = sw.seconds();
  int4q_bench::set_blas_threads(1);
  if (s >= int4q_bench::min_reference_seconds) {
    double& ref = dgemm_rates()[threads];
    ref = std::max(ref, dgemm_flops * state.iterations() / s);
  }
  state.counters["GFLOP/s"] = dgemm_flops * state.iterations() / s / 1e9;
}

/// dgemm FLOP/s on `threads` BLAS threads (measured briefly if machine/dgemm did not run).
double dgemm_reference(int threads) {
  double& ref = dgemm_rates()[threads];
  if (ref == 0) {
    int4q_bench::set_blas_threads(threads);
    dgemm_once();
    for (int i = 0; i < 3; ++i) {
      stopwatch sw;
      dgemm_once();
      ref = std::max(ref, dgemm_flops / sw.seconds());
    }
    int4q_bench::set_blas_threads(1);
  }
  return ref;
}

// ---- Inputs ------------------------------------------------------------------------------------

/// H = X^T X for X [2K, K] normal (full rank), computed once per K.
const xt::xtensor<double, 2>& cached_hessian(std::size_t K) {
  static std::map<std::size_t, xt::xtensor<double, 2>> cache;
  auto it = cache.find(K);
  if (it != cache.end()) return it->second;
  const auto& xf = int4q_bench::cached_weight(2 * K, K);
  std::vector<double> x(xf.begin(), xf.end());
  auto h = xt::xtensor<double, 2>::from_shape({K, K});
  cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, static_cast<int>(K), static_cast<int>(2 * K),
              1.0, x.data(), static_cast<int>(K), 0.0, h.data(), static_cast<int>(K));
  for (std::size_t a = 0; a < K; ++a) {
    for (std::size_t b = 0; b < a; ++b) h(a, b) = h(b, a);
  }
  return cache.emplace(K, std::move(h)).first->second;
}

double update_flops(double K, double N) { return N * K * (K - 1); }
double factor_flops(double K) { return 2.0 * K * K * K / 3.0; }

// ---- Benchmarks --------------------------------------------------------------------------------

// Args: K, N, threads (gptq_options::threads; BLAS on one thread, the factorization too).
void bm_gptq(benchmark::State& state, bool rtn_loss) {
  const std::size_t K = static_cast<std::size_t>(state.range(0));
  const std::size_t N = static_cast<std::size_t>(state.range(1));
  const int threads = static_cast<int>(state.range(2));
  const auto& w = int4q_bench::cached_weight(K, N);
  const auto& h = cached_hessian(K);
  int4q::quant_config config;  // 4-bit asymmetric, group 128
  int4q::gptq_options options;
  options.block_size = 128;
  options.rtn_loss = rtn_loss;
  // As the CLI runs it: BLAS on one thread, GPTQ's own threads over chunks of columns.
  options.threads = static_cast<std::size_t>(threads);
  int4q_bench::set_blas_threads(1);
  stopwatch sw;
  for (auto _ : state) {
    auto r = int4q::gptq(w, h, config, options);
    benchmark::DoNotOptimize(r.q.codes.data());
    benchmark::ClobberMemory();
  }
  const double s = sw.seconds();
  int4q_bench::set_blas_threads(1);
  const double ideal = update_flops(K, N) / int4q_bench::sgemm_reference(threads) +
                       factor_flops(K) / dgemm_reference(threads);
  state.counters["ideal_ms"] = ideal * 1e3;
  int4q_bench::set_multiple_counter(state, "x_ideal", s, ideal);
  int4q_bench::set_flops_counters(state, update_flops(K, N), s, threads);
}

// Args: K, threads (of the blocked factorization; BLAS on one thread). The double part alone
// (internal API).
void bm_inverse_cholesky(benchmark::State& state) {
  const std::size_t K = static_cast<std::size_t>(state.range(0));
  const int threads = static_cast<int>(state.range(1));
  const auto& h = cached_hessian(K);
  std::vector<std::size_t> perm(K);
  for (std::size_t k = 0; k < K; ++k) perm[k] = k;
  const std::vector<char> dead(K, 0);
  std::vector<double> u(K * K);
  double mean = 0;
  for (std::size_t k = 0; k < K; ++k) mean += h(k, k) / static_cast<double>(K);
  int4q_bench::set_blas_threads(1);  // the blocks go over `threads`, as in gptq()
  stopwatch sw;
  for (auto _ : state) {
    const bool ok = int4q::detail::inverse_cholesky(h.data(), K, perm, dead, 0.01 * mean, u.data(),
                                                    static_cast<std::size_t>(threads));
    benchmark::DoNotOptimize(ok);
  }
  const double s = sw.seconds();
  int4q_bench::set_blas_threads(1);
  const double ideal = factor_flops(K) / dgemm_reference(threads);
  state.counters["ideal_ms"] = ideal * 1e3;
  int4q_bench::set_multiple_counter(state, "x_ideal", s, ideal);
}

// ---- Statistics: H = X^T X
// -----------------------------------------------------------------------

// Args: K, rows, threads (activation_stats_options::threads; BLAS single-threaded, as the CLI
// runs it). The upper triangle's K (K + 1) rows flops (symmetric rank-k update).
double hessian_flops(double K, double rows) { return K * (K + 1) * rows; }

void bm_hessian(benchmark::State& state) {
  const std::size_t K = static_cast<std::size_t>(state.range(0));
  const std::size_t rows = static_cast<std::size_t>(state.range(1));
  const int threads = static_cast<int>(state.range(2));
  const auto& x = int4q_bench::cached_weight(rows, K);
  int4q::activation_stats_options o;
  o.threads = static_cast<std::size_t>(threads);
  int4q_bench::set_blas_threads(1);
  // One accumulator for all iterations: allocating and first touching K^2 doubles (0.97 GB at
  // K = 11008: 2.7 s of page faults on this VM) is not the accumulation's cost, and the CLI
  // reuses that memory from one weight to the next.
  int4q::activation_stats acc(K, o);
  acc.add(x.data(), rows);  // touches H once, as the dsyrk variant's h is before its loop
  stopwatch sw;
  for (auto _ : state) {
    acc.add(x.data(), rows);
    benchmark::DoNotOptimize(acc.hessian_upper().data());
  }
  const double s = sw.seconds();
  const double ideal = hessian_flops(K, rows) / int4q_bench::sgemm_reference(threads);
  state.counters["ideal_ms"] = ideal * 1e3;
  int4q_bench::set_multiple_counter(state, "x_ideal", s, ideal);
  int4q_bench::set_flops_counters(state, hessian_flops(K, rows), s, threads);
}

// The same H accumulated as before this change (int4q <= stop 21): the rows copied to double,
// one dsyrk per batch, on `threads` BLAS threads: the baseline the float blocks replace.
void bm_hessian_dsyrk(benchmark::State& state) {
  const std::size_t K = static_cast<std::size_t>(state.range(0));
  const std::size_t rows = static_cast<std::size_t>(state.range(1));
  const int threads = static_cast<int>(state.range(2));
  const auto& x = int4q_bench::cached_weight(rows, K);
  std::vector<double> h(K * K);  // allocated outside the loop too (see bm_hessian)
  int4q_bench::set_blas_threads(threads);
  stopwatch sw;
  for (auto _ : state) {
    std::vector<double> wide(x.begin(), x.end());
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, static_cast<int>(K), static_cast<int>(rows),
                1.0, wide.data(), static_cast<int>(K), 0.0, h.data(), static_cast<int>(K));
    benchmark::DoNotOptimize(h.data());
  }
  const double s = sw.seconds();
  int4q_bench::set_blas_threads(1);
  const double ideal = hessian_flops(K, rows) / int4q_bench::sgemm_reference(threads);
  state.counters["ideal_ms"] = ideal * 1e3;
  int4q_bench::set_multiple_counter(state, "x_ideal", s, ideal);
  int4q_bench::set_flops_counters(state, hessian_flops(K, rows), s, threads);
}

bool register_benchmarks() {
  using benchmark::RegisterBenchmark;
  RegisterBenchmark("machine/dgemm_2048", bm_dgemm)
      ->ArgName("threads")
      ->Arg(1)
      ->Arg(2)
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond);
  for (int threads : {1, 2}) {
    RegisterBenchmark("gptq_phase/inverse_cholesky", bm_inverse_cholesky)
        ->ArgNames({"K", "threads"})
        ->Args({4096, threads})
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  }
  RegisterBenchmark("gptq/g128", bm_gptq, false)
      ->ArgNames({"K", "N", "threads"})
      ->Args({4096, 4096, 1})
      ->Args({4096, 4096, 2})
      ->Args({4096, 11008, 1})
      ->Args({4096, 11008, 2})
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond);
  RegisterBenchmark("gptq_rtn_loss/g128", bm_gptq, true)
      ->ArgNames({"K", "N", "threads"})
      ->Args({4096, 4096, 2})
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond);
  for (auto* b : {RegisterBenchmark("stats/hessian", bm_hessian),
                  RegisterBenchmark("stats/hessian_dsyrk", bm_hessian_dsyrk)}) {
    b->ArgNames({"K", "rows", "threads"})
        ->Args({4096, 2048, 1})
        ->Args({4096, 2048, 2})
        ->Args({11008, 1024, 2})
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  }
  return true;
}

const bool registered = register_benchmarks();

}  // namespace

int main(int argc, char** argv) { return int4q_bench::main(argc, argv); }
