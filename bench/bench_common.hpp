// Shared machinery of the int4q benchmarks: the machine's limits measured in the same run, and
// the counters that report every result as a fraction of them.
//
// Including this header registers two reference benchmarks before the ones of the including
// file (an inline variable is initialised before the file's own BENCHMARK registrations):
//
//   machine/memcpy_256MiB           memcpy of a 256 MiB buffer on one thread; GB/s = bytes copied
//                                   per second (each byte is read once and written once)
//   machine/sgemm_2048/threads:T    cblas_sgemm 2048 x 2048 x 2048 on T OpenBLAS threads; GFLOP/s
//
// A benchmark then reports with
//
//   stopwatch sw;  for (auto _ : state) { ... }  then, with s = sw.seconds():
//   set_bandwidth_counters(state, bytes, s)      GB/s and pct_memcpy (percent of the memcpy rate)
//   set_flops_counters(state, flops, s, t)       GFLOP/s and pct_sgemm (of sgemm on t threads)
//   set_multiple_counter(state, name, s, ref)    one iteration's time in units of `ref` seconds
//
// Times are wall-clock: register every benchmark with UseRealTime() (int4q's worker threads do
// not show in the calling thread's CPU time). The references are the best rate of the reference
// benchmark in this process; when a filter left it out, it is measured briefly on first use.
// Call int4q_bench::main(argc, argv) from the file's main() to also get the build context and a
// summary of the references.
#ifndef INT4Q_BENCH_BENCH_COMMON_HPP
#define INT4Q_BENCH_BENCH_COMMON_HPP

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <benchmark/benchmark.h>
#include <cblas.h>
#include <xsimd/xsimd.hpp>
#include <xtensor/xtensor.hpp>

#include <int4q/version.hpp>

namespace int4q_bench {

// ---- Inputs
// --------------------------------------------------------------------------------------

/// Fixed seed of every random input, so that runs compare.
constexpr std::uint64_t seed = 20240601;

/// A [K, N] fp32 weight, normal with standard deviation 0.02 (a typical LLM linear layer).
inline xt::xtensor<float, 2> random_weight(std::size_t K, std::size_t N, std::uint64_t s = seed) {
  std::mt19937_64 rng(s);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  auto w = xt::xtensor<float, 2>::from_shape({K, N});
  for (float& v : w) v = normal(rng);
  return w;
}

/// random_weight(K, N), generated once per shape and kept for the whole process (generating
/// 45 M normals takes longer than quantizing them, and inputs must be allocated outside the
/// timed loop).
inline const xt::xtensor<float, 2>& cached_weight(std::size_t K, std::size_t N) {
  static std::map<std::pair<std::size_t, std::size_t>, xt::xtensor<float, 2>> cache;
  auto it = cache.find({K, N});
  if (it == cache.end()) it = cache.emplace(std::make_pair(K, N), random_weight(K, N)).first;
  return it->second;
}

// ---- Timing
// --------------------------------------------------------------------------------------

/// Wall-clock seconds since construction.
class stopwatch {
 public:
  stopwatch() : start_(std::chrono::steady_clock::now()) {}
  double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }

 private:
  std::chrono::steady_clock::time_point start_;
};

/// A timed loop shorter than this is not trusted as a reference (Google Benchmark's first
/// probing runs of one or a few iterations).
constexpr double min_reference_seconds = 0.05;

// ---- Machine limits
// ------------------------------------------------------------------------------

/// Best rates measured so far in this process (0 = not measured yet).
struct machine_limits {
  double memcpy_bytes_per_second = 0;            ///< bytes copied per second, one thread
  std::map<int, double> sgemm_flops_per_second;  ///< by OpenBLAS thread count
};

inline machine_limits& limits() {
  static machine_limits l;
  return l;
}

/// Bytes of each memcpy buffer: far above the last-level cache of any current CPU.
constexpr std::size_t memcpy_bytes = std::size_t(256) << 20;

/// The two memcpy buffers, allocated and touched (so page faults are not timed) on first use.
inline std::pair<char*, char*> memcpy_buffers() {
  static std::vector<char> src(memcpy_bytes, 1);
  static std::vector<char> dst(memcpy_bytes, 2);
  return {src.data(), dst.data()};
}

/// Copies the buffers `repeats` times; returns bytes copied per second.
inline double time_memcpy(int repeats) {
  const auto buffers = memcpy_buffers();
  stopwatch sw;
  for (int r = 0; r < repeats; ++r) {
    std::memcpy(buffers.second, buffers.first, memcpy_bytes);
    benchmark::ClobberMemory();
  }
  return static_cast<double>(memcpy_bytes) * repeats / sw.seconds();
}

/// The memcpy reference (bytes/s): the best rate of machine/memcpy_256MiB so far, or, if that
/// benchmark did not run, the best of 5 timed runs of 2 copies.
inline double memcpy_reference() {
  double& ref = limits().memcpy_bytes_per_second;
  if (ref == 0) {
    time_memcpy(1);  // warm up
    for (int i = 0; i < 5; ++i) ref = std::max(ref, time_memcpy(2));
  }
  return ref;
}

/// Edge of the square sgemm reference.
constexpr int sgemm_n = 2048;

inline void set_blas_threads(int threads) {
#if defined(OPENBLAS_VERSION)
  openblas_set_num_threads(threads);
#else
  (void)threads;  // another BLAS: its own threading settings apply
#endif
}

/// One sgemm_n^3 product C = A B on the current BLAS threads (operands allocated on first use).
inline void sgemm_once() {
  static const std::vector<float> a(std::size_t(sgemm_n) * sgemm_n, 0.5f);
  static const std::vector<float> b(std::size_t(sgemm_n) * sgemm_n, 0.25f);
  static std::vector<float> c(std::size_t(sgemm_n) * sgemm_n, 0.0f);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, sgemm_n, sgemm_n, sgemm_n, 1.0f, a.data(),
              sgemm_n, b.data(), sgemm_n, 0.0f, c.data(), sgemm_n);
  benchmark::ClobberMemory();
}

constexpr double sgemm_flops = 2.0 * sgemm_n * sgemm_n * sgemm_n;

/// Runs sgemm_once `repeats` times on `threads` BLAS threads; returns FLOP/s.
inline double time_sgemm(int threads, int repeats) {
  set_blas_threads(threads);
  stopwatch sw;
  for (int r = 0; r < repeats; ++r) sgemm_once();
  const double s = sw.seconds();
  set_blas_threads(1);
  return sgemm_flops * repeats / s;
}

/// The sgemm reference (FLOP/s) on `threads` BLAS threads, measured briefly if missing.
inline double sgemm_reference(int threads) {
  double& ref = limits().sgemm_flops_per_second[threads];
  if (ref == 0) {
    time_sgemm(threads, 1);
    for (int i = 0; i < 3; ++i) ref = std::max(ref, time_sgemm(threads, 2));
  }
  return ref;
}

// ---- Counters
// ------------------------------------------------------------------------------------
//
// Each takes `seconds`, the wall time of the whole timed loop measured with a stopwatch started
// just before it (the same span as the benchmark's real time), and sets plain counters, so that
// they print as numbers and aggregate over repetitions like the times do.

/// GB/s (10^9 bytes per second) and pct_memcpy for `bytes` processed per iteration.
inline void set_bandwidth_counters(benchmark::State& state, double bytes, double seconds) {
  const double rate = bytes * static_cast<double>(state.iterations()) / seconds;
  state.counters["GB/s"] = rate / 1e9;
  state.counters["pct_memcpy"] = 100.0 * rate / memcpy_reference();
}

/// GFLOP/s and pct_sgemm (percent of sgemm on `threads` BLAS threads) for `flops` per iteration.
inline void set_flops_counters(benchmark::State& state, double flops, double seconds, int threads) {
  const double rate = flops * static_cast<double>(state.iterations()) / seconds;
  state.counters["GFLOP/s"] = rate / 1e9;
  state.counters["pct_sgemm"] = 100.0 * rate / sgemm_reference(threads);
}

/// Counter `name` = (seconds of one iteration) / `reference_seconds`.
inline void set_multiple_counter(benchmark::State& state, const std::string& name, double seconds,
                                 double reference_seconds) {
  state.counters[name] = seconds / static_cast<double>(state.iterations()) / reference_seconds;
}

// ---- Reference benchmarks
// ------------------------------------------------------------------------

inline void bm_memcpy(benchmark::State& state) {
  const auto buffers = memcpy_buffers();
  stopwatch sw;
  for (auto _ : state) {
    std::memcpy(buffers.second, buffers.first, memcpy_bytes);
    benchmark::ClobberMemory();
  }
  const double s = sw.seconds();
  if (s >= min_reference_seconds) {
    double& ref = limits().memcpy_bytes_per_second;
    ref = std::max(ref, static_cast<double>(memcpy_bytes) * state.iterations() / s);
  }
  state.counters["GB/s"] = static_cast<double>(memcpy_bytes) * state.iterations() / s / 1e9;
}

inline void bm_sgemm(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  time_sgemm(threads, 1);  // allocate and warm up outside the timed loop
  set_blas_threads(threads);
  stopwatch sw;
  for (auto _ : state) sgemm_once();
  const double s = sw.seconds();
  set_blas_threads(1);
  if (s >= min_reference_seconds) {
    double& ref = limits().sgemm_flops_per_second[threads];
    ref = std::max(ref, sgemm_flops * state.iterations() / s);
  }
  state.counters["GFLOP/s"] = sgemm_flops * state.iterations() / s / 1e9;
}

/// Registers the reference benchmarks; runs once, before the including file's registrations.
inline bool register_machine_benchmarks() {
  benchmark::RegisterBenchmark("machine/memcpy_256MiB", bm_memcpy)->UseRealTime();
  benchmark::RegisterBenchmark("machine/sgemm_2048", bm_sgemm)
      ->ArgName("threads")
      ->Arg(1)
      ->Arg(2)
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond);
  return true;
}
inline const bool machine_benchmarks_registered = register_machine_benchmarks();

// ---- main
// ----------------------------------------------------------------------------------------

/// What the binary was built with, for the context block of the report.
inline void add_build_context() {
  benchmark::AddCustomContext("int4q", int4q::version_string());
  benchmark::AddCustomContext("int4q_simd", xsimd::default_arch::name());
#if defined(OPENBLAS_VERSION)
  benchmark::AddCustomContext("openblas", openblas_get_config());
#endif
#if defined(__VERSION__)
  benchmark::AddCustomContext("compiler", __VERSION__);
#endif
#if defined(NDEBUG)
  benchmark::AddCustomContext("assertions", "off (NDEBUG)");
#else
  benchmark::AddCustomContext("assertions", "on");
#endif
}

/// Google Benchmark's main plus the build context and, on stderr, the references used.
inline int main(int argc, char** argv) {
  add_build_context();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  set_blas_threads(1);  // one level of parallelism: int4q's threads, never BLAS threads inside
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  const machine_limits& l = limits();
  if (l.memcpy_bytes_per_second > 0) {
    std::fprintf(stderr, "reference: memcpy %.2f GB/s (1 thread, best run)\n",
                 l.memcpy_bytes_per_second / 1e9);
  }
  for (const auto& s : l.sgemm_flops_per_second) {
    std::fprintf(stderr, "reference: sgemm %d^3 %.1f GFLOP/s (%d BLAS threads, best run)\n",
                 sgemm_n, s.second / 1e9, s.first);
  }
  return 0;
}

}  // namespace int4q_bench

#endif  // INT4Q_BENCH_BENCH_COMMON_HPP
