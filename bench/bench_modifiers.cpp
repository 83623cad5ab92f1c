// bench/bench_modifiers.cpp: what the score modifiers cost (issue 20's
// targets: softcap, ALiBi and sinks within 10% of plain attention; a causal
// mask_mod with its block predicate within 5% of the built-in causal; a
// document mask_mod skipping the cross-document blocks a dense mask computes).
//
//   modifiers/prefill/D128/N2048/{plain,softcap,alibi,sinks}/t1
//   modifiers/prefill/D128/N2048/causal/{builtin,mask_mod,mask_mod_no_predicate}/t1
//   modifiers/decode/S32768/{plain,softcap,alibi,sinks}/t1
//   modifiers/document/N4096/docs8/{dense_bool,mask_mod}/t1
//
// Prefill: batch 1, 8 heads, L = S = N, fp32, GFLOP/s counted as 4·N²·D per
// head (the useful half for causal and, for documents, the in-document
// pairs only: 4·D·Σ len² per head). Decode: one query, 32 heads = KV heads,
// D = 128, f32 K/V, GB/s of K and V read. Both carry peak_pct, the share of
// the machine limit measured in the same run (bench/shares.hpp).
#include "common.hpp"  // first: its warning settings must precede Eigen

#include <cmath>
#include <string>
#include <vector>

#include <Eigen/Core>
#include <benchmark/benchmark.h>
#include <unsupported/Eigen/CXX11/Tensor>

#include "attn/alibi.hpp"
#include "attn/flex.hpp"
#include "attn/modifiers.hpp"
#include "attn/sdpa.hpp"
#include "machine.hpp"

namespace {

using attn_bench::now_seconds;
using tensor4 = Eigen::Tensor<float, 4, Eigen::RowMajor>;
using attn::index;

enum class builtin { plain, softcap, alibi, sinks };
const char* name_of(builtin b) {
  switch (b) {
    case builtin::softcap: return "softcap";
    case builtin::alibi: return "alibi";
    case builtin::sinks: return "sinks";
    default: return "plain";
  }
}

attn::sdpa_options options_for(builtin b, int heads) {
  attn::sdpa_options opt;
  opt.num_threads = 1;
  if (b == builtin::softcap) opt.softcap = 50.0f;  // Gemma 2's attention cap
  if (b == builtin::alibi) opt.alibi_slopes = attn::standard_alibi_slopes(heads);
  if (b == builtin::sinks) opt.sinks.assign(static_cast<std::size_t>(heads), 0.5f);
  return opt;
}

struct problem {
  tensor4 q, k, v, out;
  problem(int L, int S, int Hq, int Hkv, int D, unsigned seed)
      : q(1, L, Hq, D), k(1, S, Hkv, D), v(1, S, Hkv, D), out(1, L, Hq, D) {
    attn_bench::fill_uniform(q.data(), q.size(), seed);
    attn_bench::fill_uniform(k.data(), k.size(), seed + 1);
    attn_bench::fill_uniform(v.data(), v.size(), seed + 2);
  }
};

problem& prefill_problem(int N) {
  static problem p(N, N, 8, 8, 128, 10);
  return p;
}

// Times `call` and reports GFLOP/s for `flops` per call.
template <class Call>
void time_flops(benchmark::State& state, double flops, Call call) {
  const double t0 = now_seconds();
  for (auto _ : state) {
    call();
    benchmark::ClobberMemory();
  }
  const double gflops = flops * static_cast<double>(state.iterations()) / (now_seconds() - t0) * 1e-9;
  attn_bench::set_rate(state, attn_bench::limit_kind::fma, gflops, 1);
}

void bm_prefill(benchmark::State& state, builtin b) {
  constexpr int N = 2048, D = 128, H = 8;
  problem& p = prefill_problem(N);
  const attn::sdpa_options opt = options_for(b, H);
  time_flops(state, 4.0 * N * N * D * H, [&] {
    attn::scaled_dot_product_attention(attn::bshd(p.q), attn::bshd(p.k), attn::bshd(p.v),
                                       attn::bshd(p.out), opt);
  });
}

enum class causal_kind { builtin, mask_mod, mask_mod_no_predicate };

void bm_causal(benchmark::State& state, causal_kind c) {
  constexpr int N = 2048, D = 128, H = 8;
  problem& p = prefill_problem(N);
  attn::sdpa_options opt;
  opt.num_threads = 1;
  const double flops = 4.0 * (double(N) * (N + 1) / 2) * D * H;
  const attn::causal_mask mask{0};
  auto lambda = [](index, index, index i, index j) { return j <= i; };
  time_flops(state, flops, [&] {
    const auto q = attn::bshd(p.q), k = attn::bshd(p.k), v = attn::bshd(p.v);
    const auto o = attn::bshd(p.out);
    if (c == causal_kind::builtin) {
      attn::sdpa_options co = opt;
      co.causal = attn::causal::top_left;
      attn::scaled_dot_product_attention(q, k, v, o, co);
    } else if (c == causal_kind::mask_mod) {
      attn::flex_attention(q, k, v, o, attn::mask_only(mask), opt);
    } else {
      attn::flex_attention(q, k, v, o, attn::mask_only(lambda), opt);
    }
  });
}

void bm_decode(benchmark::State& state, builtin b) {
  constexpr int S = 32768, D = 128, H = 32;
  static problem p(1, S, H, H, D, 20);
  const attn::sdpa_options opt = options_for(b, H);
  const double bytes = 2.0 * S * H * D * sizeof(float);
  const double t0 = now_seconds();
  for (auto _ : state) {
    attn::scaled_dot_product_attention(attn::bshd(p.q), attn::bshd(p.k), attn::bshd(p.v),
                                       attn::bshd(p.out), opt);
    benchmark::ClobberMemory();
  }
  const double gbps = bytes * static_cast<double>(state.iterations()) / (now_seconds() - t0) * 1e-9;
  attn_bench::set_rate(state, attn_bench::limit_kind::read_bw, gbps, 1);
}

void bm_document(benchmark::State& state, bool dense) {
  constexpr int N = 4096, D = 128, H = 8, docs = 8, len = N / docs;
  static problem p(N, N, H, H, D, 30);
  std::vector<index> ids;
  for (int d = 0; d < docs; ++d) ids.insert(ids.end(), len, d);
  static Eigen::Tensor<bool, 4, Eigen::RowMajor> allow;
  if (dense && allow.size() == 0) {
    allow.resize(1, 1, N, N);
    for (int i = 0; i < N; ++i)
      for (int j = 0; j < N; ++j) allow(0, 0, i, j) = ids[i] == ids[j];
  }
  const attn::document_mask mask(ids);
  attn::sdpa_options opt;
  opt.num_threads = 1;
  if (dense) opt.bool_mask = attn::broadcast_mask(allow, 1, H, N, N);
  time_flops(state, 4.0 * docs * double(len) * len * D * H, [&] {
    const auto q = attn::bshd(p.q), k = attn::bshd(p.k), v = attn::bshd(p.v);
    const auto o = attn::bshd(p.out);
    if (dense)
      attn::scaled_dot_product_attention(q, k, v, o, opt);
    else
      attn::flex_attention(q, k, v, o, attn::mask_only(mask), opt);
  });
}

void register_modifiers() {
  auto reg = [](const std::string& name, auto fn, auto arg) {
    benchmark::RegisterBenchmark(name.c_str(), fn, arg)->UseRealTime()->Unit(benchmark::kMillisecond);
  };
  for (builtin b : {builtin::plain, builtin::softcap, builtin::alibi, builtin::sinks})
    reg(std::string("modifiers/prefill/D128/N2048/") + name_of(b) + "/t1", bm_prefill, b);
  reg("modifiers/prefill/D128/N2048/causal/builtin/t1", bm_causal, causal_kind::builtin);
  reg("modifiers/prefill/D128/N2048/causal/mask_mod/t1", bm_causal, causal_kind::mask_mod);
  reg("modifiers/prefill/D128/N2048/causal/mask_mod_no_predicate/t1", bm_causal,
      causal_kind::mask_mod_no_predicate);
  for (builtin b : {builtin::plain, builtin::softcap, builtin::alibi, builtin::sinks})
    reg(std::string("modifiers/decode/S32768/") + name_of(b) + "/t1", bm_decode, b);
  reg("modifiers/document/N4096/docs8/dense_bool/t1", bm_document, true);
  reg("modifiers/document/N4096/docs8/mask_mod/t1", bm_document, false);
}

}  // namespace

int main(int argc, char** argv) {
  const bool listing = attn_bench::listing_only(argc, argv);
  if (!attn_bench::init(&argc, argv)) return 1;
  if (!listing) attn_bench::measure_limits(/*fma=*/true, /*read_bw=*/true);
  attn_bench::register_fma_benchmarks();
  attn_bench::register_bw_benchmarks();
  register_modifiers();
  attn_bench::run_benchmarks();
  benchmark::Shutdown();
  return 0;
}
