// bench/machine.hpp: the machine's own limits, measured in the same run as the
// benchmarks that are compared against them.
//
//  * fp32 FMA peak: independent FMA chains on the widest float packet Eigen
//    selects for this translation unit (AVX-512: 16 lanes, AVX2: 8, ...),
//    enough chains to cover latency x pipes on current cores.
//  * read bandwidth: every thread streams its own slice of a buffer far larger
//    than the last-level cache, reading several streams at once.
//
// Both are measured once at program start (measure_*()) so that every other
// benchmark can report peak_pct = achieved / measured limit for its own thread
// count, and are also registered as ordinary benchmarks (machine/...) so the
// JSON output carries them with repetitions like everything else. The start-up
// figures go into the JSON context as fma_peak_gflops_t<T> / read_bw_gbps_t<T>.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include <Eigen/Core>
#include <benchmark/benchmark.h>

#if defined(_OPENMP)
#include <omp.h>
#endif

#if defined(__GNUC__)
#define ATTN_BENCH_NOINLINE __attribute__((noinline))
#else
#define ATTN_BENCH_NOINLINE
#endif

namespace attn_bench {

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wignored-attributes"
#endif
using packet = typename Eigen::internal::packet_traits<float>::type;
constexpr int lanes = Eigen::internal::unpacket_traits<packet>::size;
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

/// Name of the vector ISA the benchmarks were compiled for.
inline const char* simd_name() {
#if defined(__AVX512F__)
  return "AVX-512";
#elif defined(__AVX2__) && defined(__FMA__)
  return "AVX2+FMA";
#elif defined(__AVX__)
  return "AVX";
#elif defined(__SSE2__)
  return "SSE2";
#elif defined(__ARM_NEON)
  return "NEON";
#else
  return "scalar";
#endif
}

/// Threads the benchmarks are run with: 1 and, with OpenMP, 2.
inline int max_threads() {
#if defined(_OPENMP)
  return 2;
#else
  return 1;
#endif
}

inline double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

/// Runs f(thread, threads) on exactly `threads` threads (OpenMP), or once
/// on the calling thread.
template <class F>
void on_threads(int threads, F f) {
#if defined(_OPENMP)
  if (threads > 1) {
#pragma omp parallel num_threads(threads)
    f(omp_get_thread_num(), omp_get_num_threads());
    return;
  }
#else
  (void)threads;
#endif
  f(0, 1);
}

// ---------------------------------------------------------------------------
// FMA peak

/// Independent multiply-add chains: 12 packets cover 2 FMA pipes x 4 cycles
/// latency with room to spare and fit in 16 vector registers (AVX2) as well
/// as 32 (AVX-512).
constexpr int fma_chains = 12;

/// FLOPs done by one call of fma_kernel per iteration (2 per lane per FMA).
constexpr double fma_flops_per_iter = 2.0 * fma_chains * lanes;

/// `iters` rounds of fma_chains dependent-per-chain multiply-adds. The chains
/// converge to a fixed point, so no overflow or denormals whatever iters is.
ATTN_BENCH_NOINLINE inline float fma_kernel(std::int64_t iters, float seed) {
  namespace ei = Eigen::internal;
  packet acc[fma_chains];
  for (int c = 0; c < fma_chains; ++c) acc[c] = ei::pset1<packet>(seed + 0.01f * c);
  const packet a = ei::pset1<packet>(0.999f), b = ei::pset1<packet>(0.001f);
  for (std::int64_t i = 0; i < iters; ++i) {
    for (int c = 0; c < fma_chains; ++c) acc[c] = ei::pmadd(acc[c], a, b);
  }
  packet s = acc[0];
  for (int c = 1; c < fma_chains; ++c) s = ei::padd(s, acc[c]);
  return ei::predux(s);
}

/// GFLOP/s of `threads` threads each running fma_kernel(iters) at once.
inline double fma_gflops_once(int threads, std::int64_t iters) {
  float sink = 0.0f;
  const double t0 = now_seconds();
  on_threads(threads, [&](int t, int) {
    const float r = fma_kernel(iters, 1.0f + static_cast<float>(t));
    if (t == 0) sink = r;
  });
  const double dt = now_seconds() - t0;
  benchmark::DoNotOptimize(sink);
  return fma_flops_per_iter * static_cast<double>(iters) * threads / dt * 1e-9;
}

/// Iterations of fma_kernel that take about `seconds` on one thread.
inline std::int64_t fma_iters_for(double seconds) {
  std::int64_t n = 1 << 16;
  for (;;) {
    const double t0 = now_seconds();
    benchmark::DoNotOptimize(fma_kernel(n, 1.0f));
    const double dt = now_seconds() - t0;
    if (dt > 0.02) return std::max<std::int64_t>(1, static_cast<std::int64_t>(n * seconds / dt));
    n *= 4;
  }
}

/// Best of `trials` runs of about `seconds` each.
inline double measure_fma_peak(int threads, int trials = 5, double seconds = 0.1) {
  const std::int64_t iters = fma_iters_for(seconds);
  double best = 0.0;
  for (int i = 0; i < trials; ++i) best = std::max(best, fma_gflops_once(threads, iters));
  return best;
}

// ---------------------------------------------------------------------------
// Read bandwidth

/// Read buffer size: 512 MiB, 16x a 32 MiB L3.
constexpr std::size_t read_bytes = std::size_t(512) << 20;

/// Streams read at once by each thread.
constexpr int read_streams = 4;

struct aligned_free {
  void operator()(float* p) const { std::free(p); }
};
using float_buffer = std::unique_ptr<float[], aligned_free>;

/// A page-aligned buffer of n floats, first touched by the threads that will
/// read it (same split as read_pass).
inline float_buffer make_read_buffer(std::size_t n, int threads) {
  void* p = std::aligned_alloc(4096, n * sizeof(float));
  if (!p) throw std::bad_alloc();
  float* f = static_cast<float*>(p);
  on_threads(threads, [&](int t, int nt) {
    const std::size_t lo = n * t / nt, hi = n * (t + 1) / nt;
    for (std::size_t i = lo; i < hi; ++i) f[i] = static_cast<float>(i & 1023) * 1e-3f;
  });
  return float_buffer(f);
}

/// Sums p[0, n) as read_streams interleaved streams of contiguous quarters.
/// n must be a multiple of read_streams * 2 * lanes.
ATTN_BENCH_NOINLINE inline float read_kernel(const float* p, std::size_t n) {
  namespace ei = Eigen::internal;
  const std::size_t part = n / read_streams;
  packet acc[2 * read_streams];
  for (auto& a : acc) a = ei::pset1<packet>(0.0f);
  for (std::size_t i = 0; i < part; i += 2 * lanes) {
    for (int s = 0; s < read_streams; ++s) {
      const float* q = p + s * part + i;
      acc[2 * s] = ei::padd(acc[2 * s], ei::pload<packet>(q));
      acc[2 * s + 1] = ei::padd(acc[2 * s + 1], ei::pload<packet>(q + lanes));
    }
  }
  packet s = acc[0];
  for (int k = 1; k < 2 * read_streams; ++k) s = ei::padd(s, acc[k]);
  return ei::predux(s);
}

/// One pass of `threads` threads over n floats, each reading its own slice.
/// Returns GB/s (1e9 bytes per second).
inline double read_pass_gbps(const float* p, std::size_t n, int threads) {
  const std::size_t chunk = std::size_t(read_streams) * 2 * lanes;
  float sink = 0.0f;
  const double t0 = now_seconds();
  on_threads(threads, [&](int t, int nt) {
    std::size_t lo = n * t / nt, hi = n * (t + 1) / nt;
    lo -= lo % chunk;
    hi -= hi % chunk;
    const float r = read_kernel(p + lo, hi - lo);
    if (t == 0) sink = r;
  });
  const double dt = now_seconds() - t0;
  benchmark::DoNotOptimize(sink);
  return static_cast<double>(n * sizeof(float)) / dt * 1e-9;
}

/// Best of `passes` passes (after one warm-up) over a read_bytes buffer.
inline double measure_read_bw(int threads, int passes = 12) {
  const std::size_t n = read_bytes / sizeof(float);
  const float_buffer buf = make_read_buffer(n, threads);
  read_pass_gbps(buf.get(), n, threads);
  double best = 0.0;
  for (int i = 0; i < passes; ++i) best = std::max(best, read_pass_gbps(buf.get(), n, threads));
  return best;
}

// ---------------------------------------------------------------------------
// Start-up measurements, shared by every benchmark of the program

struct limits {
  double fma_gflops[3] = {0, 0, 0};  // index = threads
  double read_gbps[3] = {0, 0, 0};
};

inline limits& machine() {
  static limits l;
  return l;
}

inline std::string fmt(double x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", x);
  return buf;
}

/// Measures the FMA peak for 1..max_threads() threads, records it in the JSON
/// context and prints it to stderr.
inline void measure_fma_limits() {
  for (int t = 1; t <= max_threads(); ++t) {
    machine().fma_gflops[t] = measure_fma_peak(t);
    benchmark::AddCustomContext("fma_peak_gflops_t" + std::to_string(t),
                                fmt(machine().fma_gflops[t]));
    std::fprintf(stderr, "machine: fp32 FMA peak, %d thread(s): %.1f GFLOP/s (%s, %d lanes)\n",
                 t, machine().fma_gflops[t], simd_name(), lanes);
  }
  benchmark::AddCustomContext("simd", simd_name());
  benchmark::AddCustomContext("simd_lanes", std::to_string(lanes));
}

/// Measures the read bandwidth for 1..max_threads() threads (as above).
inline void measure_bw_limits() {
  for (int t = 1; t <= max_threads(); ++t) {
    machine().read_gbps[t] = measure_read_bw(t);
    benchmark::AddCustomContext("read_bw_gbps_t" + std::to_string(t),
                                fmt(machine().read_gbps[t]));
    std::fprintf(stderr, "machine: read bandwidth, %d thread(s): %.1f GB/s\n", t,
                 machine().read_gbps[t]);
  }
}

/// achieved / limit in percent (0 when the limit was not measured).
inline double pct(double achieved, double limit) {
  return limit > 0 ? 100.0 * achieved / limit : 0.0;
}

// ---------------------------------------------------------------------------
// The same measurements as registered benchmarks

inline void bm_fma_peak(benchmark::State& state, int threads) {
  static std::int64_t iters = fma_iters_for(0.05);
  double flops = 0.0;
  const double t0 = now_seconds();
  for (auto _ : state) {
    on_threads(threads, [&](int t, int) {
      benchmark::DoNotOptimize(fma_kernel(iters, 1.0f + static_cast<float>(t)));
    });
    flops += fma_flops_per_iter * static_cast<double>(iters) * threads;
  }
  const double gflops = flops / (now_seconds() - t0) * 1e-9;
  state.counters["nthreads"] = threads;
  state.counters["GFLOPS"] = gflops;
  state.counters["peak_pct"] = pct(gflops, machine().fma_gflops[threads]);
  state.SetLabel(std::string(simd_name()) + " x" + std::to_string(lanes));
}

// The buffer bm_read_bw keeps between its runs.
inline float_buffer& read_buffer() {
  static float_buffer buf;
  return buf;
}

inline void bm_read_bw(benchmark::State& state, int threads) {
  const std::size_t n = read_bytes / sizeof(float);
  float_buffer& buf = read_buffer();
  if (!buf) {
    buf = make_read_buffer(n, max_threads());
    read_pass_gbps(buf.get(), n, threads);
  }
  double bytes = 0.0;
  const double t0 = now_seconds();
  for (auto _ : state) {
    read_pass_gbps(buf.get(), n, threads);
    bytes += static_cast<double>(n * sizeof(float));
  }
  const double gbps = bytes / (now_seconds() - t0) * 1e-9;
  state.counters["nthreads"] = threads;
  state.counters["GBps"] = gbps;
  state.counters["peak_pct"] = pct(gbps, machine().read_gbps[threads]);
}

inline void register_fma_benchmarks() {
  for (int t = 1; t <= max_threads(); ++t)
    benchmark::RegisterBenchmark(("machine/fma_peak/t" + std::to_string(t)).c_str(), bm_fma_peak, t)
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
}

inline void register_bw_benchmarks() {
  for (int t = 1; t <= max_threads(); ++t)
    benchmark::RegisterBenchmark(("machine/read_bw/t" + std::to_string(t)).c_str(), bm_read_bw, t)
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
}

/// True when argv asks only to list the benchmarks (skip the measurements).
inline bool listing_only(int argc, char** argv) {
  for (int i = 1; i < argc; ++i)
    if (std::string(argv[i]).rfind("--benchmark_list_tests", 0) == 0 &&
        std::string(argv[i]) != "--benchmark_list_tests=false")
      return true;
  return false;
}

}  // namespace attn_bench
