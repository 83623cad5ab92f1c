// bench/bench_serving.cpp: the serving entries (attn/paged_attention.hpp,
// attn/varlen.hpp) against the contiguous kernel on the same work.
//
//   serving/decode/{contiguous,paged_bs16,paged_bs64}/{f32,bf16}/S{4096,32768}/t{1,2}
//     one query row per head against S cached tokens, Hq = Hkv = 32, D = 128
//     (bench_decode's shape). contiguous: varlen_attention over a
//     [S, heads, dim] cache (the kernel of scaled_dot_product_attention);
//     paged: paged_attention over the same tokens in blocks of 16 or 64 at
//     shuffled places in a pool. GBps counts the K and V bytes read.
//   serving/mixed/{one_call,separate_calls}/bf16/t{1,2}
//     a continuous-batching step: 1 sequence prefilling 512 tokens plus 31
//     decoding one token over 4096 cached tokens each (Hq 32, Hkv 8, D 128,
//     bf16, paged, block 16). one_call: one paged_attention over the packed
//     batch; separate_calls: 32 paged_attention calls, one per sequence,
//     the same work and the same bits. GBps counts the K/V bytes of the
//     decodes (the prefill's are a rounding error beside them).
//   serving/prefix/{cascade,paged}/bf16/t{1,2}
//     parallel sampling past a shared prompt: 32 sequences whose block
//     tables begin with the same 4096-token prefix (256 blocks of 16), each
//     with 64 tokens of its own, one decode query each (Hq 32, Hkv 8, D 128,
//     bf16). cascade: shared_prefix_attention (the prefix read once for all
//     32 queries, then merged with each suffix); paged: paged_attention,
//     which reads the prefix once per sequence. The work is the same, so
//     GFLOPS counts the same useful FLOPs for both (4 · D · Hq per query
//     and key; peak_pct against the FMA peak probed in the same run) and
//     the speed-up is the ratio of the two. max_diff: |cascade - paged|.
//
// peak_pct compares GBps with the read bandwidth (GFLOPS with the FMA peak)
// probed in the same run
// (bench/shares.hpp). Counters also carry max_diff, the largest |paged -
// contiguous| of the output (0: the bits are the same).
#include "common.hpp"  // first: its warning settings must precede Eigen

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstdint>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include <Eigen/Core>
#include <benchmark/benchmark.h>
#include <unsupported/Eigen/CXX11/Tensor>

#include "attn/paged_attention.hpp"
#include "attn/shared_prefix.hpp"
#include "attn/varlen.hpp"
#include "machine.hpp"

namespace {

using attn::index;
using attn_bench::now_seconds;
template <class T, int R>
using tensor = Eigen::Tensor<T, R, Eigen::RowMajor>;

template <class T>
const char* dtype_name() {
  return std::is_same<T, float>::value ? "f32" : "bf16";
}

/// Sequences' K/V both contiguous (packed [total, heads, dim]) and in a
/// shuffled block pool, with their packed queries.
template <class T>
struct serving_data {
  index Hq = 0, Hkv = 0, D = 0;
  std::vector<index> cu_q, cu_k, seq_lens;
  tensor<float, 3> q, out;
  tensor<T, 3> k, v;
  std::map<index, tensor<T, 4>> key_pool, value_pool;        // by block size
  std::map<index, tensor<std::int32_t, 2>> tables;           // by block size

  attn::paged_kv_view<T> paged(index bs) const {
    return {attn::view(key_pool.at(bs)), attn::view(value_pool.at(bs)), attn::view(tables.at(bs)),
            seq_lens};
  }
};

template <class T>
std::unique_ptr<serving_data<T>> make_data(const std::vector<std::pair<index, index>>& LS,
                                           index Hq, index Hkv, index D,
                                           const std::vector<index>& block_sizes) {
  auto d = std::make_unique<serving_data<T>>();
  d->Hq = Hq, d->Hkv = Hkv, d->D = D;
  d->cu_q = {0}, d->cu_k = {0};
  for (auto [L, S] : LS) {
    d->cu_q.push_back(d->cu_q.back() + L);
    d->cu_k.push_back(d->cu_k.back() + S);
    d->seq_lens.push_back(S);
  }
  const index total_k = d->cu_k.back();
  d->q.resize(d->cu_q.back(), Hq, D);
  d->out.resize(d->cu_q.back(), Hq, D);
  d->k.resize(total_k, Hkv, D);
  d->v.resize(total_k, Hkv, D);
  attn_bench::fill_uniform(d->q.data(), static_cast<std::size_t>(d->q.size()), 21);
  attn_bench::fill_uniform(d->k.data(), static_cast<std::size_t>(d->k.size()), 22);
  attn_bench::fill_uniform(d->v.data(), static_cast<std::size_t>(d->v.size()), 23);
  const index row = Hkv * D;
  for (index bs : block_sizes) {
    index blocks = 0, max_blocks = 1;
    for (index S : d->seq_lens) {
      blocks += (S + bs - 1) / bs;
      max_blocks = std::max(max_blocks, (S + bs - 1) / bs);
    }
    std::vector<std::int32_t> order(static_cast<std::size_t>(blocks));
    std::iota(order.begin(), order.end(), 0);
    // ATTN_BENCH_PAGED_IN_ORDER=1 keeps the blocks in order (the pool as
    // one contiguous cache): separates the cost of scattered blocks from
    // the paged kernel's own.
    if (!std::getenv("ATTN_BENCH_PAGED_IN_ORDER"))
      std::shuffle(order.begin(), order.end(), std::mt19937(5));
    tensor<T, 4> kp(blocks, bs, Hkv, D), vp(blocks, bs, Hkv, D);
    tensor<std::int32_t, 2> table(static_cast<index>(LS.size()), max_blocks);
    table.setZero();
    std::size_t next = 0;
    for (std::size_t b = 0; b < LS.size(); ++b)
      for (index j = 0; j < d->seq_lens[b]; j += bs) {
        const std::int32_t blk = order[next++];
        table(static_cast<index>(b), j / bs) = blk;
        const index n = std::min(bs, d->seq_lens[b] - j);
        std::copy_n(d->k.data() + (d->cu_k[b] + j) * row, n * row, kp.data() + blk * bs * row);
        std::copy_n(d->v.data() + (d->cu_k[b] + j) * row, n * row, vp.data() + blk * bs * row);
      }
    d->key_pool.emplace(bs, std::move(kp));
    d->value_pool.emplace(bs, std::move(vp));
    d->tables.emplace(bs, std::move(table));
  }
  return d;
}

/// What a case runs: contiguous (block size 0) or paged.
template <class T>
void run_once(serving_data<T>& d, index bs, const attn::sdpa_options& opt) {
  if (bs == 0)
    attn::varlen_attention(attn::view(d.q), attn::view(d.k), attn::view(d.v), attn::view(d.out),
                           d.cu_q, d.cu_k, opt);
  else
    attn::paged_attention(attn::view(d.q), d.cu_q, d.paged(bs), attn::view(d.out), opt);
}

double max_abs_diff(const tensor<float, 3>& a, const tensor<float, 3>& b) {
  double m = 0.0;
  for (index i = 0; i < a.size(); ++i)
    m = std::max(m, std::abs(static_cast<double>(a.data()[i]) - b.data()[i]));
  return std::isfinite(m) ? m : 1e30;
}

template <class T>
serving_data<T>& decode_data(index S) {
  static std::map<index, std::unique_ptr<serving_data<T>>> cache;
  auto& d = cache[S];
  if (!d) d = make_data<T>({{1, S}}, 32, 32, 128, {16, 64});
  return *d;
}

template <class T>
void bm_decode(benchmark::State& state, index S, index bs, int threads) {
  serving_data<T>& d = decode_data<T>(S);
  attn::sdpa_options opt;
  opt.causal = attn::causal::bottom_right;
  opt.num_threads = threads;
  const double bytes = 2.0 * static_cast<double>(S * d.Hkv * d.D) * sizeof(T);
  const double t0 = now_seconds();
  for (auto _ : state) {
    run_once(d, bs, opt);
    benchmark::ClobberMemory();
  }
  const double seconds = now_seconds() - t0;
  const tensor<float, 3> got = d.out;
  run_once(d, 0, opt);
  state.counters["S"] = static_cast<double>(S);
  state.counters["block_size"] = static_cast<double>(bs);
  state.counters["max_diff"] = max_abs_diff(got, d.out);
  attn_bench::set_rate(state, attn_bench::limit_kind::read_bw,
                       bytes * static_cast<double>(state.iterations()) / seconds * 1e-9, threads);
  state.SetLabel(dtype_name<T>());
}

// The mixed step: sequence 0 prefills 512, sequences 1..31 decode over 4096.
serving_data<Eigen::bfloat16>& mixed_data() {
  static std::unique_ptr<serving_data<Eigen::bfloat16>> d;
  if (!d) {
    std::vector<std::pair<index, index>> LS = {{512, 512}};
    for (int i = 0; i < 31; ++i) LS.push_back({1, 4096});
    d = make_data<Eigen::bfloat16>(LS, 32, 8, 128, {16});
  }
  return *d;
}

void bm_mixed(benchmark::State& state, bool one_call, int threads) {
  auto& d = mixed_data();
  attn::sdpa_options opt;
  opt.causal = attn::causal::bottom_right;
  opt.num_threads = threads;
  const index B = static_cast<index>(d.seq_lens.size());
  // Sequence b alone: its rows of q and out, its table row.
  std::vector<attn::paged_kv_view<Eigen::bfloat16>> alone;
  std::vector<attn::strided<const float, 3>> q_of;
  std::vector<attn::strided<float, 3>> out_of;
  for (index b = 0; b < B; ++b) {
    auto kv = d.paged(16);
    kv.block_tables.data += b * kv.block_tables.strides[0];
    kv.block_tables.dims[0] = 1;
    kv.seq_lens = {d.seq_lens[b]};
    alone.push_back(kv);
    const index first = d.cu_q[b], L = d.cu_q[b + 1] - first;
    attn::strided<const float, 3> q = attn::view(d.q);
    attn::strided<float, 3> o = attn::view(d.out);
    q.data += first * q.strides[0], q.dims[0] = L;
    o.data += first * o.strides[0], o.dims[0] = L;
    q_of.push_back(q);
    out_of.push_back(o);
  }
  const double t0 = now_seconds();
  for (auto _ : state) {
    if (one_call) {
      attn::paged_attention(attn::view(d.q), d.cu_q, d.paged(16), attn::view(d.out), opt);
    } else {
      for (index b = 0; b < B; ++b)
        attn::paged_attention(q_of[b], {0, d.cu_q[b + 1] - d.cu_q[b]}, alone[b], out_of[b], opt);
    }
    benchmark::ClobberMemory();
  }
  const double seconds = now_seconds() - t0;
  double bytes = 0.0;
  for (index b = 1; b < B; ++b)
    bytes += 2.0 * static_cast<double>(d.seq_lens[b] * d.Hkv * d.D) * sizeof(Eigen::bfloat16);
  attn_bench::set_rate(state, attn_bench::limit_kind::read_bw,
                       bytes * static_cast<double>(state.iterations()) / seconds * 1e-9, threads);
  state.counters["sequences"] = static_cast<double>(B);
  state.SetLabel("bf16");
}

/// The shared-prefix batch: one pool, every table row starting with the
/// same prefix blocks, then the sequence's own, all at shuffled places.
struct prefix_data {
  static constexpr index batch = 32, prefix = 4096, own = 64, bs = 16, Hq = 32, Hkv = 8,
                         D = 128;
  std::vector<index> cu_q, seq_lens;
  tensor<float, 3> q, out, out_paged;
  tensor<Eigen::bfloat16, 4> key_pool, value_pool;
  tensor<std::int32_t, 2> table;

  prefix_data() {
    const index prefix_blocks = prefix / bs, own_blocks = own / bs;
    const index blocks = prefix_blocks + batch * own_blocks;
    key_pool.resize(blocks, bs, Hkv, D);
    value_pool.resize(blocks, bs, Hkv, D);
    attn_bench::fill_uniform(key_pool.data(), static_cast<std::size_t>(key_pool.size()), 31);
    attn_bench::fill_uniform(value_pool.data(), static_cast<std::size_t>(value_pool.size()), 32);
    std::vector<std::int32_t> order(static_cast<std::size_t>(blocks));
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), std::mt19937(6));
    table.resize(batch, prefix_blocks + own_blocks);
    for (index b = 0; b < batch; ++b)
      for (index i = 0; i < prefix_blocks + own_blocks; ++i)
        table(b, i) = order[static_cast<std::size_t>(
            i < prefix_blocks ? i : prefix_blocks + b * own_blocks + (i - prefix_blocks))];
    cu_q.resize(batch + 1);
    std::iota(cu_q.begin(), cu_q.end(), index{0});
    seq_lens.assign(batch, prefix + own);
    q.resize(batch, Hq, D);
    attn_bench::fill_uniform(q.data(), static_cast<std::size_t>(q.size()), 33);
    out.resize(batch, Hq, D);
    out_paged.resize(batch, Hq, D);
  }
  attn::paged_kv_view<Eigen::bfloat16> view() const {
    return {attn::view(key_pool), attn::view(value_pool), attn::view(table), seq_lens};
  }
};

void bm_prefix(benchmark::State& state, bool cascade, int threads) {
  static prefix_data d;
  attn::sdpa_options opt;
  opt.causal = attn::causal::bottom_right;
  opt.num_threads = threads;
  const auto kv = d.view();
  const double t0 = now_seconds();
  for (auto _ : state) {
    if (cascade)
      attn::shared_prefix_attention(attn::view(d.q), d.cu_q, kv, d.prefix / d.bs,
                                    attn::view(d.out), opt);
    else
      attn::paged_attention(attn::view(d.q), d.cu_q, kv, attn::view(d.out), opt);
    benchmark::ClobberMemory();
  }
  const double seconds = now_seconds() - t0;
  const double flops = 4.0 * static_cast<double>(d.D * d.Hq * d.batch * (d.prefix + d.own));
  attn::shared_prefix_attention(attn::view(d.q), d.cu_q, kv, d.prefix / d.bs, attn::view(d.out),
                                opt);
  attn::paged_attention(attn::view(d.q), d.cu_q, kv, attn::view(d.out_paged), opt);
  state.counters["max_diff"] = max_abs_diff(d.out, d.out_paged);
  state.counters["sequences"] = static_cast<double>(d.batch);
  attn_bench::set_rate(state, attn_bench::limit_kind::fma,
                       flops * static_cast<double>(state.iterations()) / seconds * 1e-9, threads);
  state.SetLabel("bf16");
}

template <class T>
void register_decode() {
  for (index S : {4096, 32768})
    for (index bs : {0, 16, 64})
      for (int threads = 1; threads <= attn_bench::max_threads(); ++threads) {
        const std::string kind = bs == 0 ? "contiguous" : "paged_bs" + std::to_string(bs);
        const std::string name = "serving/decode/" + kind + "/" + dtype_name<T>() + "/S" +
                                 std::to_string(S) + attn_bench::thread_suffix(threads);
        benchmark::RegisterBenchmark(name.c_str(), bm_decode<T>, S, bs, threads)
            ->UseRealTime()
            ->Unit(benchmark::kMillisecond);
      }
}

}  // namespace

int main(int argc, char** argv) {
  const bool listing = attn_bench::listing_only(argc, argv);
  if (!attn_bench::init(&argc, argv)) return 1;
  if (!listing) attn_bench::measure_limits(/*fma=*/true, /*read_bw=*/true);
  attn_bench::register_fma_benchmarks();
  attn_bench::register_bw_benchmarks();
  register_decode<float>();
  register_decode<Eigen::bfloat16>();
  for (bool one_call : {true, false})
    for (int threads = 1; threads <= attn_bench::max_threads(); ++threads) {
      const std::string name = std::string("serving/mixed/") +
                               (one_call ? "one_call" : "separate_calls") + "/bf16" +
                               attn_bench::thread_suffix(threads);
      benchmark::RegisterBenchmark(name.c_str(), bm_mixed, one_call, threads)
          ->UseRealTime()
          ->Unit(benchmark::kMillisecond);
    }
  for (bool cascade : {true, false})
    for (int threads = 1; threads <= attn_bench::max_threads(); ++threads) {
      const std::string name = std::string("serving/prefix/") + (cascade ? "cascade" : "paged") +
                               "/bf16" + attn_bench::thread_suffix(threads);
      benchmark::RegisterBenchmark(name.c_str(), bm_prefix, cascade, threads)
          ->UseRealTime()
          ->Unit(benchmark::kMillisecond);
    }
  attn_bench::run_benchmarks();
  benchmark::Shutdown();
  return 0;
}
