// bench/bench_mla.cpp: DeepSeek multi-head latent attention (attn/mla.hpp).
//
//   mla/attention/<model>/absorbed/S<s>/t<T>  one decode step's attention over a
//       bf16 latent cache of s tokens (the latent kernel alone: all heads'
//       absorbed queries against [c (512) | k_pe (64)] rows). FLOPs 2·H·s·(576
//       + 512); GFLOPS and peak_pct (share of the FMA peak, best probe of the run).
//   mla/attention/<model>/mha/S<s>/t<T>  the same step as MHA over an expanded
//       bf16 cache (K [s, H, 192], V [s, H, 128]: what a cache of per-head keys
//       and values holds), through attn's split-KV decode. GBps and peak_pct
//       (share of the measured read bandwidth).
//   mla/decode/<model>/<path>/S<s>/t<T>  the whole layer for one new token
//       (projections, RoPE, cache append, attention, wo) with a bf16 latent
//       cache of s tokens, absorbed or naive (naive expands K/V of every
//       cached token per call). ms per token; GFLOPS of its attention part.
//   mla/prefill/<model>/<path>/N<n>/t<T>  the whole layer on an n-token
//       prompt into an empty cache; tokens_per_s.
//
// <model>: v2lite (dim 2048, 16 heads, no query LoRA) or v3 (dim 7168, 128
// heads, q_lora_rank 1536), random weights. Every record carries S (or N),
// heads, nthreads, cache_bytes (the latent cache: s · 576 · 2 bytes) and
// mha_cache_bytes (the expanded cache: s · H · 320 · 2 bytes), so the plots
// can put cache size and step time side by side.
#include "common.hpp"

#include <attn/mla.hpp>

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace {

using attn::index;
using bf16 = Eigen::bfloat16;

attn::mla_config model_config(const std::string& model) {
  return model == "v3" ? attn::mla_config::deepseek_v3() : attn::mla_config::deepseek_v2_lite();
}

attn::mla_weights::matrix random_matrix(index rows, index cols, std::uint64_t seed) {
  attn::mla_weights::matrix m(rows, cols);
  attn_bench::fill_uniform(m.data(), static_cast<std::size_t>(m.size()), seed);
  m *= 1.0f / std::sqrt(static_cast<float>(cols));
  return m;
}

// One layer per model, built on first use (V3's weights are ~1.5 GB).
const attn::multi_head_latent_attention& layer(const std::string& model) {
  static std::map<std::string, std::unique_ptr<attn::multi_head_latent_attention>> layers;
  auto& slot = layers[model];
  if (!slot) {
    const attn::mla_config c = model_config(model);
    const index H = c.n_heads, qk = c.qk_head_dim();
    attn::mla_weights w;
    if (c.q_lora_rank == 0) {
      w.wq = random_matrix(H * qk, c.dim, 11);
    } else {
      w.wq_a = random_matrix(c.q_lora_rank, c.dim, 12);
      w.q_norm = Eigen::VectorXf::Ones(c.q_lora_rank);
      w.wq_b = random_matrix(H * qk, c.q_lora_rank, 13);
    }
    w.wkv_a = random_matrix(c.kv_lora_rank + c.qk_rope_head_dim, c.dim, 14);
    w.kv_norm = Eigen::VectorXf::Ones(c.kv_lora_rank);
    w.wkv_b = random_matrix(H * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank, 15);
    w.wo = random_matrix(c.dim, H * c.v_head_dim, 16);
    slot = std::make_unique<attn::multi_head_latent_attention>(c, w);
  }
  return *slot;
}

void common_counters(benchmark::State& state, const attn::mla_config& c, index S, int threads) {
  state.counters["S"] = double(S);
  state.counters["heads"] = double(c.n_heads);
  state.counters["nthreads"] = threads;
  state.counters["cache_bytes"] = double(S) * double(c.kv_lora_rank + c.qk_rope_head_dim) * 2.0;
  state.counters["mha_cache_bytes"] =
      double(S) * double(c.n_heads) * double(c.qk_head_dim() + c.v_head_dim) * 2.0;
}

double attention_flops(const attn::mla_config& c, index S) {
  return 2.0 * double(c.n_heads) * double(S) *
         double(c.kv_lora_rank + c.qk_rope_head_dim + c.kv_lora_rank);
}

void bm_latent_attention(benchmark::State& state, std::string model, index S, int threads) {
  const attn::mla_config c = model_config(model);
  const index H = c.n_heads, rank = c.kv_lora_rank, rope = c.qk_rope_head_dim;
  std::vector<float> q(static_cast<std::size_t>(H * (rank + rope)));
  std::vector<bf16> rows(static_cast<std::size_t>(S * (rank + rope)));
  std::vector<float> out(static_cast<std::size_t>(H * rank));
  attn_bench::fill_uniform(q.data(), q.size(), 21);
  attn_bench::fill_uniform(rows.data(), rows.size(), 22);
  const index length = S;
  const attn::detail::mla::latent_problem<bf16> p{
      q.data(), rows.data(), &length, out.data(), 1, 1, H, rank, rope, S, float(c.softmax_scale())};
  const double t0 = attn_bench::now_seconds();
  for (auto _ : state) {
    attn::detail::mla::latent_attention(p, threads);
    benchmark::ClobberMemory();
  }
  const double gflops =
      attention_flops(c, S) * double(state.iterations()) / (attn_bench::now_seconds() - t0) * 1e-9;
  common_counters(state, c, S, threads);
  attn_bench::set_rate(state, attn_bench::limit_kind::fma, gflops, threads);
}

void bm_mha_attention(benchmark::State& state, std::string model, index S, int threads) {
  const attn::mla_config c = model_config(model);
  const index H = c.n_heads, qk = c.qk_head_dim(), vd = c.v_head_dim;
  Eigen::Tensor<float, 4, Eigen::RowMajor> q(1, 1, H, qk), out(1, 1, H, vd);
  Eigen::Tensor<bf16, 4, Eigen::RowMajor> k(1, S, H, qk), v(1, S, H, vd);
  attn_bench::fill_uniform(q.data(), static_cast<std::size_t>(q.size()), 31);
  attn_bench::fill_uniform(k.data(), static_cast<std::size_t>(k.size()), 32);
  attn_bench::fill_uniform(v.data(), static_cast<std::size_t>(v.size()), 33);
  attn::sdpa_options opt;
  opt.num_threads = threads;
  opt.scale = float(c.softmax_scale());
  const double t0 = attn_bench::now_seconds();
  for (auto _ : state) {
    attn::scaled_dot_product_attention(attn::bshd(q), attn::bshd(k), attn::bshd(v),
                                       attn::bshd(out), opt);
    benchmark::ClobberMemory();
  }
  const double bytes = double(k.size() + v.size()) * sizeof(bf16);
  const double gbps = bytes * double(state.iterations()) / (attn_bench::now_seconds() - t0) * 1e-9;
  common_counters(state, c, S, threads);
  attn_bench::set_rate(state, attn_bench::limit_kind::read_bw, gbps, threads);
}

void bm_decode(benchmark::State& state, std::string model, attn::mla_path path, index S,
               int threads) {
  const attn::multi_head_latent_attention& l = layer(model);
  const attn::mla_config& c = l.config();
  auto cache = l.make_cache<bf16>(1, S + 1);
  {  // S cached tokens: a naive prefill in chunks of 4096 (cheaper than absorbed at this size)
    attn::mla_options o;
    o.path = attn::mla_path::naive;
    o.num_threads = attn_bench::max_threads();
    for (index done = 0; done < S;) {
      const index n = std::min<index>(4096, S - done);
      attn::tensor3 x(1, n, c.dim);
      attn_bench::fill_uniform(x.data(), static_cast<std::size_t>(x.size()), 40 + done);
      l.forward(x, cache, o);
      done += n;
    }
  }
  attn::tensor3 x(1, 1, c.dim);
  attn_bench::fill_uniform(x.data(), static_cast<std::size_t>(x.size()), 41);
  attn::mla_options o;
  o.path = path;
  o.num_threads = threads;
  const double t0 = attn_bench::now_seconds();
  for (auto _ : state) {
    benchmark::DoNotOptimize(l.forward(x, cache, o).data());
    cache.truncate(0, S);  // the next step sees the same cache length again
  }
  const double seconds = (attn_bench::now_seconds() - t0) / double(state.iterations());
  common_counters(state, c, S, threads);
  state.counters["ms_per_token"] = seconds * 1e3;
  state.counters["attention_GFLOPS"] = attention_flops(c, S + 1) / seconds * 1e-9;
}

void bm_prefill(benchmark::State& state, std::string model, attn::mla_path path, index N,
                int threads) {
  const attn::multi_head_latent_attention& l = layer(model);
  const attn::mla_config& c = l.config();
  auto cache = l.make_cache<bf16>(1, N);
  attn::tensor3 x(1, N, c.dim);
  attn_bench::fill_uniform(x.data(), static_cast<std::size_t>(x.size()), 51);
  attn::mla_options o;
  o.path = path;
  o.num_threads = threads;
  for (auto _ : state) {
    benchmark::DoNotOptimize(l.forward(x, cache, o).data());
    cache.clear();
  }
  common_counters(state, c, N, threads);
  state.counters["N"] = double(N);
  state.counters["tokens_per_s"] =
      benchmark::Counter(double(N), benchmark::Counter::kIsIterationInvariantRate);
}

const char* path_name(attn::mla_path p) {
  return p == attn::mla_path::naive ? "naive" : "absorbed";
}

template <class Fn, class... Args>
void add(const std::string& name, Fn fn, Args... args) {
  benchmark::RegisterBenchmark(name.c_str(), fn, args...)
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond);
}

void register_all() {
  const std::vector<index> lengths{1024, 4096, 16384, 32768};
  for (const std::string model : {"v2lite", "v3"})
    for (int t = 1; t <= attn_bench::max_threads(); ++t) {
      const std::string ts = attn_bench::thread_suffix(t);
      for (index S : lengths) {
        const std::string s = "/S" + std::to_string(S) + ts;
        add("mla/attention/" + model + "/absorbed" + s, bm_latent_attention, model, S, t);
        // V3's expanded cache at 32k tokens is 2.7 GB: left out.
        if (model == "v2lite" || S <= 16384)
          add("mla/attention/" + model + "/mha" + s, bm_mha_attention, model, S, t);
      }
      for (index S : lengths)
        for (attn::mla_path p : {attn::mla_path::absorbed, attn::mla_path::naive}) {
          // The naive step expands every cached token (2·S·H·512·256 FLOPs):
          // seconds per token past a few thousand tokens; measured up to 4k.
          if (p == attn::mla_path::naive && S > 4096) continue;
          add("mla/decode/" + model + "/" + path_name(p) + "/S" + std::to_string(S) + ts,
              bm_decode, model, p, S, t);
        }
      for (attn::mla_path p : {attn::mla_path::absorbed, attn::mla_path::naive})
        add("mla/prefill/" + model + "/" + path_name(p) + "/N512" + ts, bm_prefill, model, p,
            index(512), t);
    }
}

}  // namespace

int main(int argc, char** argv) {
  const bool listing = attn_bench::listing_only(argc, argv);
  if (!attn_bench::init(&argc, argv)) return 1;
  if (!listing) attn_bench::measure_limits(/*fma=*/true, /*read_bw=*/true);
  attn_bench::register_fma_benchmarks();
  attn_bench::register_bw_benchmarks();
  register_all();
  attn_bench::run_benchmarks();
  benchmark::Shutdown();
  return 0;
}
