// bench/bench_additive.cpp: additive (Bahdanau) attention, attn's fused
// kernel against a naive Eigen version that forms the [L, S, d_a] tensor of
// pre-activations, on NMT shapes, in the same run.
//
//   additive/{attn,naive}/{keras,bahdanau}/S{50,1000}/L{1,S}/t{1,2}
//
// d_a = 1000 (the paper's alignment model), batch 1, values d_v = 1000.
//  * keras: no projections in the call (d_q = d_k = d_a): the call is the
//    fused score kernel, softmax and context alone. This is what a decoder
//    step costs once W_q s_i is known, and what the tanh bound applies to.
//  * bahdanau: W_q [d_a, d_q = 1000] and a bias inside the call (the query
//    projection of every step); W_k [d_a, d_k = 2000] is applied once per
//    source, outside the timing (attn::additive_attention::project_keys;
//    the naive version also precomputes K W_kᵀ once).
// L = 1 is one decoding step; L = S scores a whole sentence.
//
// Counters: S, L, da, nthreads; Gelem_per_s = L·S·d_a / time / 1e9 (score
// elements × d_a per second: one tanh and two flops each); tanh_pct = that
// rate as a share of the vector tanh throughput this program measures alone
// at start (machine: lines, and the machine/tanh/t<T> benchmarks): every
// thread applying attn::core::simd::tanh to an L1-resident buffer and summing.
// attn's kernel evaluates the elements in the exponential form when the
// projections allow it (attn/additive.hpp: a few FMAs and half a division
// each instead of a tanh), so its tanh_pct can pass 100%: the bound is what
// one tanh per element would allow.
// attn records also carry max_err, the largest |attn - naive| output
// difference, and speedup_vs_naive when the naive case ran earlier in the
// same process.
//
// At L = 1 and S = 1000 attn splits the step's keys between the threads
// (merged by LSE; a step over S = 50 is one task and runs on one thread);
// the naive version has only its one query to split, so it runs on one
// thread whatever t says.
//
// Naive baseline, per block of queries: Qp = Q W_qᵀ + b (Eigen GEMM), then
// E = tanh(Qp[:, None, :] + Kp[None, :, :]) as an Eigen::Tensor [L, S, d_a]
// (allocated once, outside the timing: 4 GB at L = S = 1000), scores
// E·v (a tensor contraction), a row softmax loop, C = A·V (Eigen GEMM). Two
// threads split the queries (L = 1 runs on one).
#include "common.hpp"  // first: its warning settings must precede Eigen

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <tuple>
#include <memory>
#include <string>
#include <vector>

#include <Eigen/Core>
#include <benchmark/benchmark.h>
#include <unsupported/Eigen/CXX11/Tensor>

#include "attn/additive.hpp"
#include "machine.hpp"

namespace {

using attn_bench::now_seconds;
using tensor3 = Eigen::Tensor<float, 3, Eigen::RowMajor>;
using matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

constexpr int kDa = 1000;
constexpr int kDq = 1000;  // bahdanau: decoder state size n
constexpr int kDk = 2000;  // bahdanau: bidirectional annotations 2n
constexpr int kDv = 1000;

// ---------------------------------------------------------------------------
// The tanh bound

constexpr int kTanhBuf = 1024;  // floats: 4 KiB, L1-resident

ATTN_BENCH_NOINLINE float tanh_kernel(const float* x, std::int64_t iters) {
  using namespace attn::core::simd;
  packet a0 = zero(), a1 = zero(), a2 = zero(), a3 = zero();
  for (std::int64_t it = 0; it < iters; ++it)
    for (int i = 0; i < kTanhBuf; i += 4 * width) {
      a0 = add(a0, attn::core::simd::tanh(load(x + i)));
      a1 = add(a1, attn::core::simd::tanh(load(x + i + width)));
      a2 = add(a2, attn::core::simd::tanh(load(x + i + 2 * width)));
      a3 = add(a3, attn::core::simd::tanh(load(x + i + 3 * width)));
    }
  return reduce_add(add(add(a0, a1), add(a2, a3)));
}

// Gtanh/s of `threads` threads at once, best of `trials`.
double measure_tanh(int threads, int trials = 5) {
  std::vector<float> x(kTanhBuf);
  attn_bench::fill_uniform(x.data(), x.size(), 7);
  for (float& v : x) v *= 3.0f;
  std::int64_t iters = 1 << 10;
  for (;;) {  // about 0.1 s per trial
    const double t0 = now_seconds();
    benchmark::DoNotOptimize(tanh_kernel(x.data(), iters));
    const double dt = now_seconds() - t0;
    if (dt > 0.02) {
      iters = std::max<std::int64_t>(1, static_cast<std::int64_t>(iters * 0.1 / dt));
      break;
    }
    iters *= 4;
  }
  double best = 0;
  for (int t = 0; t < trials; ++t) {
    const double t0 = now_seconds();
    attn_bench::on_threads(threads, [&](int, int) {
      std::vector<float> local(x);
      benchmark::DoNotOptimize(tanh_kernel(local.data(), iters));
    });
    best = std::max(best, double(kTanhBuf) * iters * threads / (now_seconds() - t0) * 1e-9);
  }
  return best;
}

double g_tanh[3] = {0, 0, 0};  // Gtanh/s by thread count

// ---------------------------------------------------------------------------
// Data

struct shape_data {
  int S = 0, L = 0;
  bool projected = false;  // bahdanau variant
  matrix q, k, v;          // [L, dq], [S, dk], [S, dv]
  std::unique_ptr<attn::additive_attention> layer;
  attn::additive_keys cache;
  matrix kp;               // naive: K W_kᵀ, [S, da]
  matrix out, ref;         // [L, dv]
  bool ref_valid = false;
  double naive_seconds_per_call[3] = {0, 0, 0};
};

shape_data& data_for(int S, int L, bool projected) {
  static std::map<std::tuple<int, int, bool>, std::unique_ptr<shape_data>> cache;
  auto& d = cache[{S, L, projected}];
  if (d) return *d;
  d = std::make_unique<shape_data>();
  d->S = S;
  d->L = L;
  d->projected = projected;
  const int dq = projected ? kDq : kDa, dk = projected ? kDk : kDa;
  d->q.resize(L, dq);
  d->k.resize(S, dk);
  d->v.resize(S, kDv);
  attn_bench::fill_uniform(d->q.data(), d->q.size(), 11 + S + L);
  attn_bench::fill_uniform(d->k.data(), d->k.size(), 12 + S);
  attn_bench::fill_uniform(d->v.data(), d->v.size(), 13 + S);
  attn::additive_weights w;
  if (projected) {
    w.w_q.resize(kDa, dq);
    w.w_k.resize(kDa, dk);
    w.bias.resize(kDa);
    attn_bench::fill_uniform(w.w_q.data(), w.w_q.size(), 21);
    attn_bench::fill_uniform(w.w_k.data(), w.w_k.size(), 22);
    attn_bench::fill_uniform(w.bias.data(), w.bias.size(), 23);
    w.w_q *= 1.0f / std::sqrt(float(dq));
    w.w_k *= 1.0f / std::sqrt(float(dk));
  }
  w.v.resize(kDa);
  attn_bench::fill_uniform(w.v.data(), w.v.size(), 24);
  w.v *= 1.0f / std::sqrt(float(kDa));
  d->layer = std::make_unique<attn::additive_attention>(w);
  d->cache = d->layer->project_keys(
      attn::strided<const float, 3>{d->k.data(), {1, S, dk}, {S * dk, dk, 1}});
  d->kp = projected ? matrix(d->k * w.w_k.transpose()) : d->k;
  d->out = matrix::Zero(L, kDv);
  d->ref = matrix::Zero(L, kDv);
  return *d;
}

// The naive pre-activation tensor, shared by all naive cases (grown as
// needed, outside the timing).
std::vector<float>& naive_buffer(std::size_t n) {
  static std::vector<float> b;
  if (b.size() < n) {
    b.clear();
    b.shrink_to_fit();
    b.assign(n, 0.0f);
  }
  return b;
}

void naive_block(const shape_data& d, int l0, int l1, float* ebuf, matrix& out) {
  const attn::additive_attention& layer = *d.layer;
  const int S = d.S, nl = l1 - l0;
  const Eigen::Ref<const Eigen::VectorXf> v = layer.effective_v();
  matrix qp;
  if (d.projected) {
    // The layer's weights are not exposed; recompute from the same seeds.
    static const matrix wq = [] {
      matrix m(kDa, kDq);
      attn_bench::fill_uniform(m.data(), m.size(), 21);
      return matrix(m * (1.0f / std::sqrt(float(kDq))));
    }();
    static const Eigen::VectorXf bias = [] {
      Eigen::VectorXf b(kDa);
      attn_bench::fill_uniform(b.data(), b.size(), 23);
      return b;
    }();
    qp.noalias() = d.q.middleRows(l0, nl) * wq.transpose();
    qp.rowwise() += bias.transpose();
  } else {
    qp = d.q.middleRows(l0, nl);
  }
  using cmap2 = Eigen::TensorMap<const Eigen::Tensor<float, 2, Eigen::RowMajor>>;
  const cmap2 Qp(qp.data(), nl, kDa), Kp(d.kp.data(), S, kDa);
  Eigen::TensorMap<Eigen::Tensor<float, 3, Eigen::RowMajor>> E(ebuf, nl, S, kDa);
  E = (Qp.reshape(Eigen::array<Eigen::Index, 3>{nl, 1, kDa})
           .broadcast(Eigen::array<Eigen::Index, 3>{1, S, 1}) +
       Kp.reshape(Eigen::array<Eigen::Index, 3>{1, S, kDa})
           .broadcast(Eigen::array<Eigen::Index, 3>{nl, 1, 1}))
          .tanh();
  const Eigen::TensorMap<const Eigen::Tensor<float, 1, Eigen::RowMajor>> vt(v.data(), kDa);
  Eigen::Tensor<float, 2, Eigen::RowMajor> scores =
      E.contract(vt, Eigen::array<Eigen::IndexPair<int>, 1>{Eigen::IndexPair<int>(2, 0)});
  Eigen::Map<matrix> A(scores.data(), nl, S);
  for (int i = 0; i < nl; ++i) {
    auto row = A.row(i).array();
    const float m = row.maxCoeff();
    row = (row - m).exp();
    row /= row.sum();
  }
  out.middleRows(l0, nl).noalias() = A * d.v;
}

void naive(shape_data& d, matrix& out, int threads) {
  const int L = d.L, nt = std::min(threads, L);
  float* ebuf = naive_buffer(std::size_t(L) * d.S * kDa).data();
  attn_bench::on_threads(nt, [&](int t, int n) {
    const int l0 = L * t / n, l1 = L * (t + 1) / n;
    naive_block(d, l0, l1, ebuf + std::size_t(l0) * d.S * kDa, out);
  });
}

void attn_call(shape_data& d, int threads) {
  attn::additive_options opt;
  opt.num_threads = threads;
  const int dq = int(d.q.cols());
  d.layer->forward(attn::strided<const float, 3>{d.q.data(), {1, d.L, dq}, {d.L * dq, dq, 1}},
                   d.cache,
                   attn::strided<const float, 3>{d.v.data(), {1, d.S, kDv}, {d.S * kDv, kDv, 1}},
                   attn::strided<float, 3>{d.out.data(), {1, d.L, kDv}, {d.L * kDv, kDv, 1}},
                   opt);
}

double report(benchmark::State& state, const shape_data& d, int threads, double seconds) {
  const double per_call = seconds / static_cast<double>(state.iterations());
  const double g = double(d.L) * d.S * kDa / per_call * 1e-9;
  state.counters["S"] = d.S;
  state.counters["L"] = d.L;
  state.counters["da"] = kDa;
  state.counters["nthreads"] = threads;
  state.counters["Gelem_per_s"] = g;
  state.counters["tanh_pct"] = attn_bench::pct(g, g_tanh[threads]);
  return per_call;
}

void bm_naive(benchmark::State& state, int S, int L, bool projected, int threads) {
  shape_data& d = data_for(S, L, projected);
  naive_buffer(std::size_t(L) * S * kDa);
  const double t0 = now_seconds();
  for (auto _ : state) {
    naive(d, d.ref, threads);
    benchmark::ClobberMemory();
  }
  d.naive_seconds_per_call[threads] = report(state, d, threads, now_seconds() - t0);
  d.ref_valid = true;
}

void bm_attn(benchmark::State& state, int S, int L, bool projected, int threads) {
  shape_data& d = data_for(S, L, projected);
  const double t0 = now_seconds();
  for (auto _ : state) {
    attn_call(d, threads);
    benchmark::ClobberMemory();
  }
  const double per_call = report(state, d, threads, now_seconds() - t0);
  if (d.naive_seconds_per_call[threads] > 0)
    state.counters["speedup_vs_naive"] = d.naive_seconds_per_call[threads] / per_call;
  if (!d.ref_valid) {
    naive(d, d.ref, attn_bench::max_threads());
    d.ref_valid = true;
  }
  double err = (d.out - d.ref).cwiseAbs().maxCoeff();
  if (!std::isfinite(err)) err = 1e30;
  state.counters["max_err"] = err;
}

void bm_tanh(benchmark::State& state, int threads) {
  double g = 0;
  for (auto _ : state) g = measure_tanh(threads, 1);
  state.counters["nthreads"] = threads;
  state.counters["Gtanh_per_s"] = g;
}

void register_all() {
  for (int t = 1; t <= attn_bench::max_threads(); ++t)
    benchmark::RegisterBenchmark(("machine/tanh/t" + std::to_string(t)).c_str(), bm_tanh, t)
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  for (bool projected : {false, true})
    for (int S : {50, 1000})
      for (int L : {1, S})
        for (int t = 1; t <= attn_bench::max_threads(); ++t) {
          // A step over a short source is one task (attn::detail::additive::key_chunks).
          if (L == 1 && t > 1 && S <= attn::detail::additive::chunk_keys) continue;
          const std::string tail = std::string(projected ? "bahdanau" : "keras") + "/S" +
                                   std::to_string(S) + "/L" + std::to_string(L) +
                                   attn_bench::thread_suffix(t);
          // The naive case first, so the attn case can report its speed-up.
          benchmark::RegisterBenchmark(("additive/naive/" + tail).c_str(), bm_naive, S, L,
                                       projected, t)
              ->UseRealTime()
              ->Unit(benchmark::kMicrosecond);
          benchmark::RegisterBenchmark(("additive/attn/" + tail).c_str(), bm_attn, S, L,
                                       projected, t)
              ->UseRealTime()
              ->Unit(benchmark::kMicrosecond);
        }
}

}  // namespace

int main(int argc, char** argv) {
  const bool listing = attn_bench::listing_only(argc, argv);
  if (!attn_bench::init(&argc, argv)) return 1;
  if (!listing) {
    for (int t = 1; t <= attn_bench::max_threads(); ++t) {
      g_tanh[t] = measure_tanh(t);
      benchmark::AddCustomContext("tanh_gps_t" + std::to_string(t), attn_bench::fmt(g_tanh[t]));
      std::fprintf(stderr,
                   "machine: attn::core::simd::tanh alone, %d thread(s): %.2f Gtanh/s (%s)\n", t,
                   g_tanh[t], attn_bench::simd_name());
    }
  }
  register_all();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
