// AWQ searches (awq.hpp) on a Llama-7B-shaped layer, each timed next to the FLOPs it needs at
// the sgemm rate measured in the same run (see bench_common.hpp and README.md).
//
//   awq_lite/K/N/threads   search_awq_scales(x, mean|x|, w, default config, default options):
//                          ModelOpt's grid (11 alphas) plus s = 1, each one qdq of W' = diag(s) W
//                          and one gemm [S, K] x [K, N]. flops = 12 x 2 S K N (fp32)
//   awq_clip/K/N/threads   search_awq_clip(x, w, default config): 11 ratios per (group, column),
//                          objective e^T H_g e. flops = 11 x 2 K gs N + 2 S K gs (fp64 dgemm)
// x_sgemm = seconds / (flops / sgemm rate on `threads` BLAS threads): 1 would be the search at
// the speed of one big sgemm doing the same number of flops.
//
// Inputs: W [4096, N] normal(0, 0.02), fixed seed; the calibration sample X [512, 4096] stands for
// 512 rows drawn from 128 x 512 = 65536 calibration tokens (activation_stats' reservoir sample):
// N(0, 1) with every 17th channel x 30 (outlier channels); mean |x| from the same rows. Default
// config: 4 bits, group 128, asymmetric. int4q's threads; BLAS on one thread (bench_common).
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <map>
#include <random>
#include <utility>
#include <vector>

#include <benchmark/benchmark.h>
#include <xtensor/xtensor.hpp>

#include <int4q/quant.hpp>

#include "bench_common.hpp"

namespace {

using int4q::quant_config;
using int4q_bench::cached_weight;

constexpr std::size_t big_k = 4096;
/// Rows of the calibration sample the searches run on (512 of 128 x 512 tokens).
constexpr std::size_t sample_rows = 512;
/// Every outlier_every-th input channel is outlier_scale times larger.
constexpr std::size_t outlier_every = 17;
constexpr float outlier_scale = 30.0f;

std::size_t arg(const benchmark::State& state, int i) {
  return static_cast<std::size_t>(state.range(i));
}

/// The activation sample [sample_rows, K], generated once per K.
const xt::xtensor<float, 2>& cached_sample(std::size_t K) {
  static std::map<std::size_t, xt::xtensor<float, 2>> cache;
  auto it = cache.find(K);
  if (it == cache.end()) {
    std::mt19937_64 rng(int4q_bench::seed + 1);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    auto x = xt::xtensor<float, 2>::from_shape({sample_rows, K});
    for (std::size_t t = 0; t < sample_rows; ++t) {
      for (std::size_t k = 0; k < K; ++k) {
        x(t, k) = normal(rng) * (k % outlier_every == 3 ? outlier_scale : 1.0f);
      }
    }
    it = cache.emplace(K, std::move(x)).first;
  }
  return it->second;
}

xt::xtensor<double, 1> mean_abs(const xt::xtensor<float, 2>& x) {
  const std::size_t S = x.shape()[0], K = x.shape()[1];
  xt::xtensor<double, 1> m = xt::zeros<double>({K});
  for (std::size_t t = 0; t < S; ++t) {
    for (std::size_t k = 0; k < K; ++k) m(k) += std::abs(static_cast<double>(x(t, k)));
  }
  for (std::size_t k = 0; k < K; ++k) m(k) /= static_cast<double>(S);
  return m;
}

void set_ratio_counters(benchmark::State& state, double flops, double seconds, int threads) {
  int4q_bench::set_flops_counters(state, flops, seconds, threads);
  int4q_bench::set_multiple_counter(state, "x_sgemm", seconds,
                                    flops / int4q_bench::sgemm_reference(threads));
}

// Args: K, N, threads.
void bm_awq_lite(benchmark::State& state) {
  const std::size_t K = arg(state, 0), N = arg(state, 1), threads = arg(state, 2);
  const auto& w = cached_weight(K, N);
  const auto& x = cached_sample(K);
  const auto xbar = mean_abs(x);
  int4q::awq_options options;
  options.threads = threads;
  std::size_t evaluations = 0;
  int4q_bench::stopwatch sw;
  for (auto _ : state) {
    auto r = int4q::search_awq_scales(x, xbar, w, quant_config{}, options);
    evaluations = r.alphas.size() + 1;  // the grid and s = 1
    benchmark::DoNotOptimize(r.scales.data());
    benchmark::ClobberMemory();
  }
  const double s = sw.seconds();
  const double flops = static_cast<double>(evaluations) * 2.0 * sample_rows * K * N;
  set_ratio_counters(state, flops, s, static_cast<int>(threads));
}

// Args: K, N, threads.
void bm_awq_clip(benchmark::State& state) {
  const std::size_t K = arg(state, 0), N = arg(state, 1), threads = arg(state, 2);
  const auto& w = cached_weight(K, N);
  const auto& x = cached_sample(K);
  const quant_config config;
  int4q::awq_clip_options options;
  options.threads = threads;
  int4q_bench::stopwatch sw;
  for (auto _ : state) {
    auto r = int4q::search_awq_clip(x, w, config, options);
    benchmark::DoNotOptimize(r.ratios.data());
    benchmark::ClobberMemory();
  }
  const double s = sw.seconds();
  const double gs = static_cast<double>(config.group_size);
  const double candidates = 11;  // 1.00, 0.95, ..., 0.50
  const double flops = candidates * 2.0 * K * gs * N + 2.0 * sample_rows * K * gs;
  set_ratio_counters(state, flops, s, static_cast<int>(threads));
}

bool register_benchmarks() {
  for (auto* b : {benchmark::RegisterBenchmark("awq_lite/asym_g128", bm_awq_lite),
                  benchmark::RegisterBenchmark("awq_clip/asym_g128", bm_awq_clip)}) {
    b->ArgNames({"K", "N", "threads"});
    for (const std::int64_t n : {4096, 11008}) {
      for (const std::int64_t t : {1, 2}) b->Args({static_cast<std::int64_t>(big_k), n, t});
    }
    b->UseRealTime()->Unit(benchmark::kMillisecond);
  }
  return true;
}

const bool registered = register_benchmarks();

}  // namespace

int main(int argc, char** argv) { return int4q_bench::main(argc, argv); }
