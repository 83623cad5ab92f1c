// bench/bench_prefill.cpp: the O(N²) hot path, attn's flash forward against a
// naive Eigen baseline on the same inputs, in the same run.
//
//   prefill/{attn,naive}/D128/N{512,1024,2048,4096,8192}/causal{0,1}/t{1,2}
//   prefill/{attn,naive}/D64/N{512,2048,8192}/causal{0,1}/t{1,2}
//
// (D = 128 sweeps N in powers of two for tools/plot_bench.py's GFLOP/s
// against N chart; D = 64 keeps the three sizes of the summary table.)
//
// batch 1, 8 heads, L = S = N, fp32, layout [batch, seq, heads, dim]; causal
// is attn::causal::bottom_right (= top-left here, since L = S). FLOPs are
// 4·N·N·D per head, and only the unmasked part, 4·D·N(N+1)/2 per head, for
// causal (the naive baseline is credited with the same useful FLOPs although
// it computes the whole matrix). Counters: N, D, heads, nthreads, causal,
// GFLOPS, peak_pct (% of the fp32 FMA peak for the same thread count, the best
// probe of the run: bench/shares.hpp); attn records also carry max_err, the largest
// |attn - naive| over the output.
//
// Naive baseline, per (batch, head): S = Q·Kᵀ (Eigen GEMM on strided Maps of
// the [b, s, h, d] data, no copies), a per-row softmax loop (max, exp, sum,
// scale; causal masks in that loop), O = P·V; two threads split the heads with
// OpenMP, each with its own N×N scores buffer allocated outside the timing
// (2 × 256 MiB at N = 8192).
#include "common.hpp"  // first: its warning settings must precede Eigen

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <Eigen/Core>
#include <benchmark/benchmark.h>
#include <unsupported/Eigen/CXX11/Tensor>

#include "attn/sdpa.hpp"
#include "machine.hpp"

namespace {

using attn_bench::now_seconds;
using tensor4 = Eigen::Tensor<float, 4, Eigen::RowMajor>;
using row_matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using const_rows = Eigen::Map<const row_matrix, 0, Eigen::OuterStride<>>;
using rows = Eigen::Map<row_matrix, 0, Eigen::OuterStride<>>;

constexpr int kBatch = 1;
constexpr int kHeads = 8;

double prefill_flops(int N, int D, bool causal) {
  const double n = N;
  const double pairs = causal ? n * (n + 1) / 2 : n * n;
  return 4.0 * pairs * D * kHeads * kBatch;
}

// Inputs of one (N, D) shape, shared by every benchmark of that shape, and
// the naive outputs, kept as references for attn's max_err. Every shape stays
// cached (about 0.4 GiB in all), so the benchmarks may run in any order
// (--benchmark_enable_random_interleaving).
struct shape_data {
  int N = 0, D = 0;
  tensor4 q, k, v, out;
  tensor4 ref[2];  // naive output, causal 0/1
  bool ref_valid[2] = {false, false};
};

shape_data& data_for(int N, int D) {
  static std::map<std::pair<int, int>, std::unique_ptr<shape_data>> cache;
  std::unique_ptr<shape_data>& d = cache[{N, D}];
  if (!d) {
    d = std::make_unique<shape_data>();
    d->N = N;
    d->D = D;
    for (tensor4* t : {&d->q, &d->k, &d->v, &d->out, &d->ref[0], &d->ref[1]})
      t->resize(kBatch, N, kHeads, D);
    attn_bench::fill_uniform(d->q.data(), d->q.size(), 1000 + N + D);
    attn_bench::fill_uniform(d->k.data(), d->k.size(), 2000 + N + D);
    attn_bench::fill_uniform(d->v.data(), d->v.size(), 3000 + N + D);
    d->out.setZero();
  }
  return *d;
}

// The naive baseline's N×N scores buffer of each thread, sized for the
// largest N so far and touched when it grows, outside the timing.
std::vector<float>& scores_buffer(int thread, int N) {
  static std::vector<std::vector<float>> buffers(static_cast<std::size_t>(attn_bench::max_threads()));
  std::vector<float>& b = buffers[static_cast<std::size_t>(thread)];
  const std::size_t need = static_cast<std::size_t>(N) * static_cast<std::size_t>(N);
  if (b.size() < need) {
    b.clear();
    b.shrink_to_fit();
    b.assign(need, 0.0f);
  }
  return b;
}

// One (batch, head) of the naive baseline. `s` is an N×N row-major buffer.
void naive_head(const shape_data& d, tensor4& out, int b, int h, bool causal, float scale,
                Eigen::Map<row_matrix> s) {
  const int N = d.N, D = d.D;
  const Eigen::Index ld = static_cast<Eigen::Index>(kHeads) * D;  // row stride
  const Eigen::Index off = static_cast<Eigen::Index>(b) * N * ld + static_cast<Eigen::Index>(h) * D;
  const const_rows Q(d.q.data() + off, N, D, Eigen::OuterStride<>(ld));
  const const_rows K(d.k.data() + off, N, D, Eigen::OuterStride<>(ld));
  const const_rows V(d.v.data() + off, N, D, Eigen::OuterStride<>(ld));
  rows O(out.data() + off, N, D, Eigen::OuterStride<>(ld));

  s.noalias() = Q * K.transpose();
  for (int i = 0; i < N; ++i) {
    const int len = causal ? i + 1 : N;  // bottom-right with L = S: keys j <= i
    auto row = s.row(i).head(len).array();
    const float m = row.maxCoeff();
    row = ((row - m) * scale).exp();
    const float inv = 1.0f / row.sum();
    row *= inv;
    if (len < N) s.row(i).tail(N - len).setZero();
  }
  O.noalias() = s * V;
}

void naive_sdpa(shape_data& d, tensor4& out, bool causal, int threads) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(d.D));
  const int tasks = kBatch * kHeads;
  std::vector<float*> scores(static_cast<std::size_t>(threads));
  for (int t = 0; t < threads; ++t) scores[t] = scores_buffer(t, d.N).data();
  attn_bench::on_threads(threads, [&](int t, int nt) {
    const Eigen::Map<row_matrix> s(scores[static_cast<std::size_t>(t)], d.N, d.N);
    for (int task = t; task < tasks; task += nt)
      naive_head(d, out, task / kHeads, task % kHeads, causal, scale, s);
  });
}

void report(benchmark::State& state, int N, int D, bool causal, int threads, double seconds,
            std::int64_t iters) {
  const double gflops = prefill_flops(N, D, causal) * static_cast<double>(iters) / seconds * 1e-9;
  state.counters["N"] = N;
  state.counters["D"] = D;
  state.counters["heads"] = kHeads;
  state.counters["causal"] = causal ? 1 : 0;
  attn_bench::set_rate(state, attn_bench::limit_kind::fma, gflops, threads);
}

void bm_naive(benchmark::State& state, int N, int D, bool causal, int threads) {
  shape_data& d = data_for(N, D);
  tensor4& out = d.ref[causal];
  for (int t = 0; t < threads; ++t) scores_buffer(t, N);

  const double t0 = now_seconds();
  for (auto _ : state) {
    naive_sdpa(d, out, causal, threads);
    benchmark::ClobberMemory();
  }
  report(state, N, D, causal, threads, now_seconds() - t0, state.iterations());
  d.ref_valid[causal] = true;
}

void bm_attn(benchmark::State& state, int N, int D, bool causal, int threads) {
  shape_data& d = data_for(N, D);
  attn::sdpa_options opt;
  opt.causal = causal ? attn::causal::bottom_right : attn::causal::none;
  opt.num_threads = threads;
  const attn::strided<const float, 4> q = attn::bshd(d.q), k = attn::bshd(d.k),
                                      v = attn::bshd(d.v);
  const attn::strided<float, 4> o = attn::bshd(d.out);

  const double t0 = now_seconds();
  for (auto _ : state) {
    attn::scaled_dot_product_attention(q, k, v, o, opt);
    benchmark::ClobberMemory();
  }
  report(state, N, D, causal, threads, now_seconds() - t0, state.iterations());

  // Compare with the naive output (computed here, untimed, when the naive
  // case has not run yet or is filtered out).
  if (!d.ref_valid[causal]) {
    naive_sdpa(d, d.ref[causal], causal, attn_bench::max_threads());
    d.ref_valid[causal] = true;
  }
  const Eigen::Map<const Eigen::ArrayXf> a(d.out.data(), d.out.size()),
      r(d.ref[causal].data(), d.ref[causal].size());
  double err = static_cast<double>((a - r).abs().maxCoeff());
  if (!std::isfinite(err)) err = 1e30;
  state.counters["max_err"] = err;
}

std::string case_name(const char* impl, int N, int D, bool causal, int threads) {
  return std::string("prefill/") + impl + "/D" + std::to_string(D) + "/N" + std::to_string(N) +
         "/causal" + (causal ? "1" : "0") + attn_bench::thread_suffix(threads);
}

void register_prefill() {
  for (int N : {512, 1024, 2048, 4096, 8192})
    for (int D : {64, 128}) {
      if (D == 64 && (N == 1024 || N == 4096)) continue;  // D = 64: three sizes only
      for (bool causal : {false, true})
        for (int threads = 1; threads <= attn_bench::max_threads(); ++threads) {
          benchmark::RegisterBenchmark(case_name("naive", N, D, causal, threads).c_str(), bm_naive,
                                       N, D, causal, threads)
              ->UseRealTime()
              ->Unit(benchmark::kMillisecond);
          benchmark::RegisterBenchmark(case_name("attn", N, D, causal, threads).c_str(), bm_attn, N,
                                       D, causal, threads)
              ->UseRealTime()
              ->Unit(benchmark::kMillisecond);
        }
    }
}

}  // namespace

int main(int argc, char** argv) {
  const bool listing = attn_bench::listing_only(argc, argv);
  if (!attn_bench::init(&argc, argv)) return 1;
  if (!listing) attn_bench::measure_limits(/*fma=*/true, /*read_bw=*/false);
  attn_bench::register_fma_benchmarks();
  register_prefill();
  attn_bench::run_benchmarks();
  benchmark::Shutdown();
  return 0;
}
