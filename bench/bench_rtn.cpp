// Round-to-nearest quantization and the operations around it, as fractions of the machine's
// memcpy bandwidth measured in the same run (see bench_common.hpp and README.md).
//
//   rtn/<config>/K/N/threads       quant_tensor(w, config, {threads}); GB/s = fp32 input bytes / s
//   rtn_into/...                   quant_tensor_into with one result reused across calls: the
//                                  difference to rtn/ is the cost of allocating and first touching
//                                  a fresh result in every call
//   rtn_pass/{minmax,params,codes} the three stages of one RTN pass, each alone (internal API)
//   qdq, dequant                   fake-quant in one pass; codes back to fp32 (GB/s of fp32 bytes)
//   pack/{matmulnbits,flat}        packing the codes (GB/s of code bytes, one byte per code)
//   search_clip                    51-candidate clip search per group; x_rtn = multiples of one
//                                  rtn/asym_g128 pass on the same weight and thread count 1
// Inputs: normal(0, 0.02) fp32, fixed seed, allocated once outside the timed loops.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <tuple>
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

std::size_t arg(const benchmark::State& state, int i) {
  return static_cast<std::size_t>(state.range(i));
}

// ---- Reference: one RTN pass -----------------------------------------------------------------

/// Best seconds per quant_tensor(w[K, N], default config) on one thread seen so far.
std::map<std::pair<std::size_t, std::size_t>, double>& rtn_seconds() {
  static std::map<std::pair<std::size_t, std::size_t>, double> s;
  return s;
}

void record_rtn(std::size_t K, std::size_t N, double seconds_per_pass) {
  double& best = rtn_seconds()[{K, N}];
  if (best == 0 || seconds_per_pass < best) best = seconds_per_pass;
}

/// Seconds of one default RTN pass on one thread (measured briefly if rtn/ did not run).
double rtn_reference(std::size_t K, std::size_t N) {
  auto it = rtn_seconds().find({K, N});
  if (it != rtn_seconds().end()) return it->second;
  const auto& w = cached_weight(K, N);
  benchmark::DoNotOptimize(int4q::quant_tensor(w, quant_config{}));  // warm up
  for (int i = 0; i < 5; ++i) {
    int4q_bench::stopwatch sw;
    auto q = int4q::quant_tensor(w, quant_config{});
    benchmark::DoNotOptimize(q);
    record_rtn(K, N, sw.seconds());
  }
  return rtn_seconds()[{K, N}];
}

// ---- Benchmarks ------------------------------------------------------------------------------

// Args: K, N, threads.
void bm_rtn(benchmark::State& state, quant_config config, bool is_reference) {
  const std::size_t K = arg(state, 0), N = arg(state, 1), threads = arg(state, 2);
  const auto& w = cached_weight(K, N);
  int4q::quant_options options;
  options.threads = threads;
  int4q_bench::stopwatch sw;
  for (auto _ : state) {
    auto q = int4q::quant_tensor(w, config, options);
    benchmark::DoNotOptimize(q.codes.data());
    benchmark::ClobberMemory();
  }
  const double s = sw.seconds();
  if (is_reference && threads == 1 && s >= int4q_bench::min_reference_seconds) {
    record_rtn(K, N, s / static_cast<double>(state.iterations()));
  }
  int4q_bench::set_bandwidth_counters(state, 4.0 * K * N, s);
}

// Args: K, N, threads. quant_tensor_into with one result reused across iterations.
void bm_rtn_into(benchmark::State& state, quant_config config) {
  const std::size_t K = arg(state, 0), N = arg(state, 1);
  const auto& w = cached_weight(K, N);
  int4q::quant_options options;
  options.threads = arg(state, 2);
  int4q::quantized<float> q;
  int4q::quant_tensor_into(w, config, q, options);  // allocates and touches the result once
  int4q_bench::stopwatch sw;
  for (auto _ : state) {
    int4q::quant_tensor_into(w, config, q, options);
    benchmark::DoNotOptimize(q.codes.data());
    benchmark::ClobberMemory();
  }
  int4q_bench::set_bandwidth_counters(state, 4.0 * K * N, sw.seconds());
}

// The stages of quantize_matrix for the default config, one thread, same work items
// (group x 256-column tile). Args: K, N.
enum class stage { minmax, params, codes };

void bm_rtn_pass(benchmark::State& state, stage which) {
  namespace d = int4q::detail;
  const std::size_t K = arg(state, 0), N = arg(state, 1);
  const quant_config c;
  const auto& w = cached_weight(K, N);
  auto q = int4q::quant_tensor(w, c);
  const std::size_t gs = c.group_size, G = c.num_groups(K);
  std::vector<float> lo(G * N), hi(G * N);
  for (std::size_t g = 0; g < G; ++g) {  // the ranges, for the params stage
    for (std::size_t c0 = 0; c0 < N; c0 += d::max_tile_cols) {
      const std::size_t n = std::min(d::max_tile_cols, N - c0);
      d::minmax_columns(d::simd_tag{}, w.data() + g * gs * N + c0, N, std::min(gs, K - g * gs), n,
                        lo.data() + g * N + c0, hi.data() + g * N + c0);
    }
  }
  const d::quantize_mode mode = d::mode_of(c);
  int4q_bench::stopwatch sw;
  for (auto _ : state) {
    for (std::size_t g = 0; g < G; ++g) {
      const std::size_t r0 = g * gs, rows = std::min(gs, K - r0);
      for (std::size_t c0 = 0; c0 < N; c0 += d::max_tile_cols) {
        const std::size_t n = std::min(d::max_tile_cols, N - c0);
        const std::size_t at = g * N + c0;
        if (which == stage::minmax) {
          benchmark::DoNotOptimize(d::minmax_columns(d::simd_tag{}, w.data() + r0 * N + c0, N, rows,
                                                     n, lo.data() + at, hi.data() + at));
        } else if (which == stage::params) {
          for (std::size_t j = 0; j < n; ++j) {
            const auto p = int4q::compute_group_param(lo[at + j], hi[at + j], 1.0f, c);
            q.scales.data()[at + j] = p.scale;
            q.zero_points.data()[at + j] = p.zero_point;
          }
        } else {
          float div[d::max_tile_cols], zp[d::max_tile_cols];
          for (std::size_t j = 0; j < n; ++j) {
            div[j] = d::kernel_divisor(q.scales.data()[at + j], c.scale_division);
            zp[j] = static_cast<float>(q.zero_points.data()[at + j]);
          }
          d::quantize_columns(d::simd_tag{}, w.data() + r0 * N + c0, N, rows, n, div, zp,
                              static_cast<float>(c.qmax()), mode, q.codes.data() + r0 * N + c0, N);
        }
      }
    }
    benchmark::ClobberMemory();
  }
  // Bytes each stage streams: the weight for minmax and codes, the ranges for params.
  const double bytes = which == stage::params ? 8.0 * G * N : 4.0 * K * N;
  const double s = sw.seconds();
  int4q_bench::set_bandwidth_counters(state, bytes, s);
  int4q_bench::set_multiple_counter(state, "x_rtn", s, rtn_reference(K, N));
}

// Args: K, N, threads.
void bm_qdq(benchmark::State& state) {
  const std::size_t K = arg(state, 0), N = arg(state, 1);
  const auto& w = cached_weight(K, N);
  int4q::quant_options options;
  options.threads = arg(state, 2);
  int4q_bench::stopwatch sw;
  for (auto _ : state) {
    auto out = int4q::qdq(w, quant_config{}, options);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  const double s = sw.seconds();
  int4q_bench::set_bandwidth_counters(state, 4.0 * K * N, s);
  int4q_bench::set_multiple_counter(state, "x_rtn", s, rtn_reference(K, N));
}

// Args: K, N, threads. GB/s counts the fp32 output.
void bm_dequant(benchmark::State& state) {
  const std::size_t K = arg(state, 0), N = arg(state, 1);
  const auto q = int4q::quant_tensor(cached_weight(K, N), quant_config{});
  int4q::quant_options options;
  options.threads = arg(state, 2);
  int4q_bench::stopwatch sw;
  for (auto _ : state) {
    auto out = int4q::dequant(q, options);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  const double s = sw.seconds();
  int4q_bench::set_bandwidth_counters(state, 4.0 * K * N, s);
  int4q_bench::set_multiple_counter(state, "x_rtn", s, rtn_reference(K, N));
}

// Args: K, N. GB/s counts the codes (one byte each).
void bm_pack_matmulnbits(benchmark::State& state) {
  const std::size_t K = arg(state, 0), N = arg(state, 1);
  const auto q = int4q::quant_tensor(cached_weight(K, N), quant_config{});
  int4q_bench::stopwatch sw;
  for (auto _ : state) {
    auto t = int4q::pack_matmulnbits(q);
    benchmark::DoNotOptimize(t.b.data());
    benchmark::ClobberMemory();
  }
  const double s = sw.seconds();
  int4q_bench::set_bandwidth_counters(state, 1.0 * K * N, s);
  int4q_bench::set_multiple_counter(state, "x_rtn", s, rtn_reference(K, N));
}

void bm_pack_flat(benchmark::State& state) {
  const std::size_t K = arg(state, 0), N = arg(state, 1);
  const auto q = int4q::quant_tensor(cached_weight(K, N), quant_config{});
  int4q_bench::stopwatch sw;
  for (auto _ : state) {
    auto bytes = int4q::pack_flat(q.codes, q.config.bits);
    benchmark::DoNotOptimize(bytes.data());
    benchmark::ClobberMemory();
  }
  const double s = sw.seconds();
  int4q_bench::set_bandwidth_counters(state, 1.0 * K * N, s);
  int4q_bench::set_multiple_counter(state, "x_rtn", s, rtn_reference(K, N));
}

// Args: K, N, threads. Default options: group granularity, 51 candidates 1.00 .. 0.50.
void bm_search_clip(benchmark::State& state) {
  const std::size_t K = arg(state, 0), N = arg(state, 1);
  const auto& w = cached_weight(K, N);
  int4q::clip_search_options options;
  options.threads = arg(state, 2);
  int4q_bench::stopwatch sw;
  for (auto _ : state) {
    auto r = int4q::search_clip(w, quant_config{}, options);
    benchmark::DoNotOptimize(r.ratios.data());
    benchmark::ClobberMemory();
  }
  const double s = sw.seconds();
  int4q_bench::set_bandwidth_counters(state, 4.0 * K * N, s);
  int4q_bench::set_multiple_counter(state, "x_rtn", s, rtn_reference(K, N));
}

// ---- Registration ----------------------------------------------------------------------------

quant_config symmetric_g128() {
  quant_config c;
  c.scheme = int4q::scheme::symmetric;
  return c;
}

quant_config divide_g128() {
  quant_config c;
  c.scale_division = int4q::scale_division::divide;  // w / scale, as the GPTQ and ModelOpt presets
  return c;
}

quant_config nf4_g64() {
  quant_config c;
  c.data_type = int4q::data_type::nf4;
  c.group_size = 64;
  return c;
}

using shape = std::tuple<std::size_t, std::size_t, std::size_t>;  // K, N, threads

benchmark::internal::Benchmark* with_shapes(benchmark::internal::Benchmark* b,
                                            const std::vector<shape>& shapes) {
  b->ArgNames({"K", "N", "threads"});
  for (const auto& s : shapes) {
    b->Args({static_cast<std::int64_t>(std::get<0>(s)), static_cast<std::int64_t>(std::get<1>(s)),
             static_cast<std::int64_t>(std::get<2>(s))});
  }
  return b->UseRealTime()->Unit(benchmark::kMillisecond);
}

bool register_benchmarks() {
  const std::vector<shape> scaling = {
      {big_k, 4096, 1}, {big_k, 4096, 2}, {big_k, 11008, 1}, {big_k, 11008, 2}};
  const std::vector<shape> square1 = {{big_k, 4096, 1}};
  const std::vector<shape> square12 = {{big_k, 4096, 1}, {big_k, 4096, 2}};
  using benchmark::RegisterBenchmark;

  with_shapes(RegisterBenchmark("rtn/asym_g128", bm_rtn, quant_config{}, true), scaling);
  with_shapes(RegisterBenchmark("rtn/sym_g128", bm_rtn, symmetric_g128(), false), square1);
  with_shapes(RegisterBenchmark("rtn/ort_matmulnbits_asym_g128", bm_rtn,
                                int4q::presets::ort_matmulnbits(4, 128, false), false),
              square1);
  with_shapes(RegisterBenchmark("rtn/nf4_g64", bm_rtn, nf4_g64(), false), square1);
  with_shapes(RegisterBenchmark("rtn/asym_g128_divide", bm_rtn, divide_g128(), false), square1);
  with_shapes(RegisterBenchmark("rtn_into/asym_g128", bm_rtn_into, quant_config{}), scaling);

  for (const auto& p : {std::make_pair("rtn_pass/minmax", stage::minmax),
                        std::make_pair("rtn_pass/params", stage::params),
                        std::make_pair("rtn_pass/codes", stage::codes)}) {
    RegisterBenchmark(p.first, bm_rtn_pass, p.second)
        ->ArgNames({"K", "N"})
        ->Args({big_k, 4096})
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  }

  with_shapes(RegisterBenchmark("qdq/asym_g128", bm_qdq), square12);
  with_shapes(RegisterBenchmark("dequant/asym_g128", bm_dequant), square12);
  for (auto* b : {RegisterBenchmark("pack/matmulnbits", bm_pack_matmulnbits),
                  RegisterBenchmark("pack/flat", bm_pack_flat)}) {
    b->ArgNames({"K", "N"})->Args({big_k, 4096})->UseRealTime()->Unit(benchmark::kMillisecond);
  }
  with_shapes(RegisterBenchmark("search_clip/asym_g128", bm_search_clip), square12);
  return true;
}

const bool registered = register_benchmarks();

}  // namespace

int main(int argc, char** argv) { return int4q_bench::main(argc, argv); }
