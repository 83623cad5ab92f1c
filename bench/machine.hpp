// bench/machine.hpp: the machine's own limits, measured in the same run as the
// benchmarks that are compared against them.
//
//  * fp32 FMA peak: independent FMA chains on the widest float packet Eigen
//    selects for this translation unit (AVX-512: 16 lanes, AVX2: 8, ...),
//    enough chains to cover latency x pipes on current cores.
//  * read bandwidth: every thread streams its own slice of a buffer far larger
//    than the last-level cache, reading several streams at once.
//
// The probe cannot read low: each limit is measured many times — five
// interleaved rounds at program start (measure_limits), once per repetition
// of the machine/... benchmarks, which Google Benchmark's random
// interleaving spreads between the cases, and a last round when the run ends
// — and the best measurement is the limit. Cases only record their rate
// (set_rate); their peak_pct is computed when the run ends, against that
// best, by shares_reporter (shares.hpp), which also writes the probe's best,
// median, worst and sample count into the JSON context
// (fma_peak_gflops_t<T>, read_bw_gbps_t<T>, ..._median_t<T>, ..._min_t<T>,
// ..._samples_t<T>).
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

// ---------------------------------------------------------------------------
// The probe: every measurement of the limits a program makes, kept

/// Which machine limit a rate is a share of.
enum class limit_kind { fma, read_bw };

/// Every measurement of one limit at one thread count. The limit is the best
/// of them: a limit can be read too low (a neighbour on a shared core, a
/// clock still ramping up) but not too high, so the maximum is the estimate
/// that cannot be fooled, and min / median show how noisy the run was.
struct probe_samples {
  std::vector<double> values;
  void add(double v) {
    if (v > 0 && v < 1e12) values.push_back(v);
  }
  double best() const { return values.empty() ? 0.0 : *std::max_element(values.begin(), values.end()); }
  double worst() const { return values.empty() ? 0.0 : *std::min_element(values.begin(), values.end()); }
  double median() const {
    if (values.empty()) return 0.0;
    std::vector<double> v = values;
    std::sort(v.begin(), v.end());
    const std::size_t n = v.size();
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
  }
};

struct limits {
  probe_samples fma[3];  // index = threads
  probe_samples read_bw[3];
  bool wants[2] = {false, false};  // which limits this program measures (index = limit_kind)
  probe_samples* of(limit_kind k) { return k == limit_kind::fma ? fma : read_bw; }
};

inline limits& machine() {
  static limits l;
  return l;
}

/// The best measurement so far of `kind` for `threads` threads (0 if none).
inline double best_limit(limit_kind kind, int threads) {
  if (threads < 1 || threads > 2) return 0.0;
  return machine().of(kind)[threads].best();
}

inline std::string fmt(double x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", x);
  return buf;
}

/// The read buffer the probe and the machine/read_bw benchmarks share (made
/// on first use: 512 MiB, first touched by max_threads() threads).
inline const float_buffer& read_buffer() {
  static const float_buffer buf = [] {
    float_buffer b = make_read_buffer(read_bytes / sizeof(float), max_threads());
    read_pass_gbps(b.get(), read_bytes / sizeof(float), max_threads());  // warm-up
    return b;
  }();
  return buf;
}

/// One short measurement of `kind` on `threads` threads, recorded.
inline double probe_once(limit_kind kind, int threads) {
  double v = 0.0;
  if (kind == limit_kind::fma) {
    static const std::int64_t iters = fma_iters_for(0.05);
    v = fma_gflops_once(threads, iters);
  } else {
    v = read_pass_gbps(read_buffer().get(), read_bytes / sizeof(float), threads);
  }
  machine().of(kind)[threads].add(v);
  return v;
}

/// `rounds` rounds of one measurement of every wanted limit at every thread
/// count, interleaved, so that a slow spell of the machine hits one sample of
/// each rather than every sample of one.
inline void probe_rounds(int rounds) {
  for (int r = 0; r < rounds; ++r)
    for (int t = 1; t <= max_threads(); ++t)
      for (limit_kind k : {limit_kind::fma, limit_kind::read_bw})
        if (machine().wants[static_cast<int>(k)]) probe_once(k, t);
}

/// Start-up measurement of the limits a program reports shares of. The
/// probe is measured again between the cases (the machine/... benchmarks,
/// randomly interleaved with them) and once more at the end (see
/// shares_reporter in shares.hpp); the shares are computed at the end, from
/// the best of all of them.
inline void measure_limits(bool fma, bool read_bw) {
  machine().wants[static_cast<int>(limit_kind::fma)] = fma;
  machine().wants[static_cast<int>(limit_kind::read_bw)] = read_bw;
  if (fma) fma_iters_for(0.05);  // also warms the clock up
  probe_rounds(5);
  for (int t = 1; t <= max_threads(); ++t) {
    if (fma)
      std::fprintf(stderr, "machine: fp32 FMA peak, %d thread(s): best %.1f GFLOP/s of %zu at start (%s, %d lanes)\n",
                   t, machine().fma[t].best(), machine().fma[t].values.size(), simd_name(), lanes);
    if (read_bw)
      std::fprintf(stderr, "machine: read bandwidth, %d thread(s): best %.1f GB/s of %zu at start\n", t,
                   machine().read_bw[t].best(), machine().read_bw[t].values.size());
  }
  benchmark::AddCustomContext("simd", simd_name());
  benchmark::AddCustomContext("simd_lanes", std::to_string(lanes));
}

/// achieved / limit in percent (0 when the limit was not measured).
inline double pct(double achieved, double limit) {
  return limit > 0 ? 100.0 * achieved / limit : 0.0;
}

/// The rate counters of a case that is reported as a share of `kind`:
/// "GFLOPS" or "GBps" and "nthreads". Its "peak_pct" is added when the run
/// ends (shares_reporter), against the best probe of the whole run.
inline void set_rate(benchmark::State& state, limit_kind kind, double rate, int threads) {
  state.counters["nthreads"] = threads;
  state.counters[kind == limit_kind::fma ? "GFLOPS" : "GBps"] = rate;
}

// ---------------------------------------------------------------------------
// The same measurements as registered benchmarks: samples between the cases

inline void bm_fma_peak(benchmark::State& state, int threads) {
  static std::int64_t iters = fma_iters_for(0.05);
  double flops = 0.0;
  double best = 0.0;
  const double t0 = now_seconds();
  for (auto _ : state) {
    best = std::max(best, fma_gflops_once(threads, iters));
    flops += fma_flops_per_iter * static_cast<double>(iters) * threads;
  }
  machine().fma[threads].add(best);
  set_rate(state, limit_kind::fma, flops / (now_seconds() - t0) * 1e-9, threads);
  state.SetLabel(std::string(simd_name()) + " x" + std::to_string(lanes));
}

inline void bm_read_bw(benchmark::State& state, int threads) {
  const std::size_t n = read_bytes / sizeof(float);
  const float* buf = read_buffer().get();
  double bytes = 0.0;
  double best = 0.0;
  const double t0 = now_seconds();
  for (auto _ : state) {
    best = std::max(best, read_pass_gbps(buf, n, threads));
    bytes += static_cast<double>(n * sizeof(float));
  }
  machine().read_bw[threads].add(best);
  set_rate(state, limit_kind::read_bw, bytes / (now_seconds() - t0) * 1e-9, threads);
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
