// bench/bench_decode.cpp: one query row against a long KV cache, the memory
// bound case that attn::scaled_dot_product_attention serves with its split-KV
// decode path.
//
//   decode/attn/{f32,bf16,f16}/S{1024,4096,8192,16384,32768}/t{1,2}
//
// (The sweep over S is tools/plot_bench.py's GB/s against cache length
// chart: the smallest caches fit in L2/L3, the largest stream from DRAM.)
//
// batch 1, L = 1, Hq = Hkv = 32, D = 128, K/V in float, Eigen::bfloat16 or
// Eigen::half, layout [batch, seq, heads, dim]. GBps counts the K and V bytes
// read per second (2·S·Hkv·D·sizeof(KV) per call); peak_pct compares it with
// the read bandwidth for the same thread count, the best probe of the run
// (bench/shares.hpp). Counters: L, S, D, heads, nthreads, dtype_bytes, GBps, peak_pct and
// max_err (largest |attn - reference| of the output, the reference being a
// plain fp32 Eigen computation on the same K/V values); the label names the
// dtype.
#include "common.hpp"  // first: its warning settings must precede Eigen

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include <Eigen/Core>
#include <benchmark/benchmark.h>
#include <unsupported/Eigen/CXX11/Tensor>

#include "attn/sdpa.hpp"
#include "machine.hpp"

namespace {

using attn_bench::now_seconds;
using tensor4f = Eigen::Tensor<float, 4, Eigen::RowMajor>;

constexpr int kBatch = 1;
constexpr int kQueries = 1;
constexpr int kHeads = 32;  // Hq = Hkv
constexpr int kDim = 128;

template <class T>
const char* dtype_name() {
  if (std::is_same<T, float>::value) return "f32";
  if (std::is_same<T, Eigen::bfloat16>::value) return "bf16";
  return "f16";
}

// K/V of one (dtype, S) and the reference output. Every case stays cached
// (about 3.9 GiB in all), so the benchmarks may run in any order
// (--benchmark_enable_random_interleaving).
template <class T>
struct kv_data {
  using tensor4 = Eigen::Tensor<T, 4, Eigen::RowMajor>;
  int S = 0;
  tensor4f q, out, ref;
  tensor4 k, v;
  bool ref_valid = false;
};

template <class T>
kv_data<T>& data_for(int S) {
  static std::map<int, std::unique_ptr<kv_data<T>>> cache;
  std::unique_ptr<kv_data<T>>& d = cache[S];
  if (!d) {
    d = std::make_unique<kv_data<T>>();
    d->S = S;
    d->q.resize(kBatch, kQueries, kHeads, kDim);
    d->out.resize(kBatch, kQueries, kHeads, kDim);
    d->k.resize(kBatch, S, kHeads, kDim);
    d->v.resize(kBatch, S, kHeads, kDim);
    attn_bench::fill_uniform(d->q.data(), d->q.size(), 11);
    attn_bench::fill_uniform(d->k.data(), d->k.size(), 12 + S);
    attn_bench::fill_uniform(d->v.data(), d->v.size(), 13 + S);
    d->out.setZero();
  }
  return *d;
}

// out[h] = softmax(q[h] · K[:, h]ᵀ · scale) · V[:, h] in fp32, one head at a
// time, from K/V widened to float.
template <class T>
void reference(kv_data<T>& d) {
  using row_matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using map_t = Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>,
                           0, Eigen::OuterStride<>>;
  const float scale = 1.0f / std::sqrt(static_cast<float>(kDim));
  d.ref.resize(kBatch, kQueries, kHeads, kDim);
  const Eigen::Index ld = static_cast<Eigen::Index>(kHeads) * kDim;
  for (int h = 0; h < kHeads; ++h) {
    const row_matrix K = map_t(d.k.data() + h * kDim, d.S, kDim, Eigen::OuterStride<>(ld))
                             .template cast<float>();
    const row_matrix V = map_t(d.v.data() + h * kDim, d.S, kDim, Eigen::OuterStride<>(ld))
                             .template cast<float>();
    const Eigen::Map<const Eigen::RowVectorXf> q(d.q.data() + h * kDim, kDim);
    Eigen::RowVectorXf s = (q * K.transpose()) * scale;
    s = (s.array() - s.maxCoeff()).exp().matrix();
    s /= s.sum();
    Eigen::Map<Eigen::RowVectorXf>(d.ref.data() + h * kDim, kDim) = s * V;
  }
  d.ref_valid = true;
}

template <class T>
void bm_decode(benchmark::State& state, int S, int threads) {
  kv_data<T>& d = data_for<T>(S);
  attn::sdpa_options opt;
  opt.num_threads = threads;
  const attn::strided<const float, 4> q = attn::bshd(d.q);
  const attn::strided<const T, 4> k = attn::bshd(d.k), v = attn::bshd(d.v);
  const attn::strided<float, 4> o = attn::bshd(d.out);

  const double bytes = 2.0 * S * kHeads * kDim * sizeof(T);
  const double t0 = now_seconds();
  for (auto _ : state) {
    attn::scaled_dot_product_attention(q, k, v, o, opt);
    benchmark::ClobberMemory();
  }
  const double seconds = now_seconds() - t0;
  const double gbps = bytes * static_cast<double>(state.iterations()) / seconds * 1e-9;

  if (!d.ref_valid) reference(d);
  const Eigen::Map<const Eigen::ArrayXf> a(d.out.data(), d.out.size()),
      r(d.ref.data(), d.ref.size());
  double err = static_cast<double>((a - r).abs().maxCoeff());
  if (!std::isfinite(err)) err = 1e30;

  state.counters["L"] = kQueries;
  state.counters["S"] = S;
  state.counters["D"] = kDim;
  state.counters["heads"] = kHeads;
  state.counters["dtype_bytes"] = static_cast<double>(sizeof(T));
  attn_bench::set_rate(state, attn_bench::limit_kind::read_bw, gbps, threads);
  state.counters["max_err"] = err;
  state.SetLabel(dtype_name<T>());
}

template <class T>
void register_dtype() {
  for (int S : {1024, 4096, 8192, 16384, 32768})
    for (int threads = 1; threads <= attn_bench::max_threads(); ++threads) {
      const std::string name = std::string("decode/attn/") + dtype_name<T>() + "/S" +
                               std::to_string(S) + attn_bench::thread_suffix(threads);
      benchmark::RegisterBenchmark(name.c_str(), bm_decode<T>, S, threads)
          ->UseRealTime()
          ->Unit(benchmark::kMillisecond);
    }
}

}  // namespace

int main(int argc, char** argv) {
  const bool listing = attn_bench::listing_only(argc, argv);
  if (!attn_bench::init(&argc, argv)) return 1;
  if (!listing) attn_bench::measure_limits(/*fma=*/false, /*read_bw=*/true);
  attn_bench::register_bw_benchmarks();
  register_dtype<float>();
  register_dtype<Eigen::bfloat16>();
  register_dtype<Eigen::half>();
  attn_bench::run_benchmarks();
  benchmark::Shutdown();
  return 0;
}
