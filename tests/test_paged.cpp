// tests/test_paged.cpp: attn::paged_attention over a caller's block pool,
// attn::paged_kv_cache (blocks, forks, copy-on-write, truncation) and
// attn::merge_states.
//
// What is checked
//  * paged_attention equals varlen_attention over the same tokens laid out
//    contiguously, bit for bit, for float, bf16 and half pools: the kernels
//    read the same values in the same order (a key tile inside one block is
//    used in place, one across blocks is copied; both give the same
//    numbers), so any difference is a bug, not rounding. Block sizes 1, 16
//    and 64, lengths that are and are not multiples of them, blocks placed
//    at random in the pool, prefill chunks and decodes in one batch.
//  * paged_kv_cache against a model of the pool kept in plain vectors: after
//    random add / fork / append / truncate / free, every sequence's tokens
//    read back through its block table equal the model's (rounded to the
//    storage type), and attend() equals varlen_attention over the model's
//    tokens, bit for bit.
//  * Batch invariance over the cache: a sequence attended alone and inside
//    random subsets of the live sequences, in random orders, at 1 and 2
//    threads, gives the same bytes.
//  * Every failed call raises attn::error naming the argument and leaves the
//    pool byte-identical (its K/V bytes, tables, lengths, reference counts
//    and free list).
//  * merge_states: attention over keys split in two parts and merged equals
//    attention over all keys within the fp32 tolerance of
//    tests/sdpa_check.hpp (two normalisations and one merge add a few ulps
//    per element); -inf states contribute nothing; bits independent of the
//    thread count.
#include <gtest/gtest.h>

#include <algorithm>
#include <attn/merge_states.hpp>
#include <attn/multi_head.hpp>
#include <attn/paged_kv_cache.hpp>
#include <attn/shared_prefix.hpp>
#include <attn/varlen.hpp>
#include <cstring>
#include <map>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "expect_error.hpp"
#include "sdpa_check.hpp"

namespace test_paged {

using attn::index;
using sdpa_check::tensor3;
using sdpa_check::tensor4;
using sdpa_check::tensor_t;

const float kNaN = std::numeric_limits<float>::quiet_NaN();

template <class T>
bool same_bytes(const std::vector<T>& a, const std::vector<T>& b) {
  // memcmp of an empty vector's null data() is undefined; GCC at -O3 then
  // drops the null check of a later free.
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

tensor3 randn3(index a, index b, index c, std::mt19937& g) {
  tensor3 t(a, b, c);
  std::normal_distribution<float> n(0.0f, 1.0f);
  for (index i = 0; i < t.size(); ++i) t.data()[i] = n(g);
  return t;
}

struct outputs {
  tensor3 out, lse;
  bool operator==(const outputs& o) const {
    return sdpa_check::same_bytes(out, o.out) && sdpa_check::same_bytes(lse, o.lse);
  }
};
outputs nan_outputs(index total_q, index Hq, index Dv) {
  outputs r{tensor3(total_q, Hq, Dv), tensor3(1, Hq, total_q)};
  r.out.setConstant(kNaN);
  r.lse.setConstant(kNaN);
  return r;
}

// ---------------------------------------------------------------------------
// paged_attention over a pool the test owns

/// The sequences' keys and values both contiguous (for varlen) and in a
/// block pool at random blocks (for paged_attention).
template <class KV>
struct paged_problem {
  index bs, Hkv, D;
  std::vector<index> seq_lens, cu_k, cu_q;
  tensor_t<KV, 3> k, v;                   // [total_k, Hkv, D]
  tensor_t<KV, 4> key_pool, value_pool;   // [blocks, bs, Hkv, D]
  tensor_t<std::int32_t, 2> tables;       // [batch, max_blocks]
  tensor3 q;                              // [total_q, Hq, D]

  attn::paged_kv_view<KV> view() const {
    return {attn::view(key_pool), attn::view(value_pool), attn::view(tables), seq_lens};
  }
};

template <class KV>
paged_problem<KV> make_paged(const std::vector<std::pair<index, index>>& LS, index bs, index Hq,
                             index Hkv, index D, unsigned seed, index spare_blocks = 3) {
  std::mt19937 g(seed);
  paged_problem<KV> p{bs, Hkv, D, {}, {0}, {0}, {}, {}, {}, {}, {}, {}};
  index max_blocks = 1, total_blocks = spare_blocks;
  for (auto [L, S] : LS) {
    p.seq_lens.push_back(S);
    p.cu_k.push_back(p.cu_k.back() + S);
    p.cu_q.push_back(p.cu_q.back() + L);
    max_blocks = std::max(max_blocks, attn::detail::ceil_div(S, bs) + 1);  // +1: an unused entry
    total_blocks += attn::detail::ceil_div(S, bs);
  }
  const index B = static_cast<index>(LS.size());
  const tensor3 kf = randn3(p.cu_k.back(), Hkv, D, g), vf = randn3(p.cu_k.back(), Hkv, D, g);
  p.k = kf.cast<KV>();
  p.v = vf.cast<KV>();
  p.q = randn3(p.cu_q.back(), Hq, D, g);
  p.key_pool = tensor_t<KV, 4>(total_blocks, bs, Hkv, D);
  p.value_pool = tensor_t<KV, 4>(total_blocks, bs, Hkv, D);
  p.key_pool.setConstant(KV(1e30f));  // slots past a sequence's length: never read
  p.value_pool.setConstant(KV(kNaN));
  std::vector<std::int32_t> order(static_cast<std::size_t>(total_blocks));
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), g);
  p.tables = tensor_t<std::int32_t, 2>(B, max_blocks);
  p.tables.setConstant(-1);  // entries past a sequence's blocks: never read
  std::size_t next = 0;
  for (index b = 0; b < B; ++b)
    for (index j = 0; j < p.seq_lens[b]; ++j) {
      if (j % bs == 0) p.tables(b, j / bs) = order[next++];
      const index blk = p.tables(b, j / bs);
      for (index h = 0; h < Hkv; ++h)
        for (index d = 0; d < D; ++d) {
          p.key_pool(blk, j % bs, h, d) = p.k(p.cu_k[b] + j, h, d);
          p.value_pool(blk, j % bs, h, d) = p.v(p.cu_k[b] + j, h, d);
        }
    }
  return p;
}

template <class KV>
outputs run_paged(const paged_problem<KV>& p, attn::sdpa_options opt) {
  outputs r = nan_outputs(p.q.dimension(0), p.q.dimension(1), p.D);
  opt.lse = attn::view(r.lse);
  attn::paged_attention(attn::view(p.q), p.cu_q, p.view(), attn::view(r.out), opt);
  return r;
}
template <class KV>
outputs run_contiguous(const paged_problem<KV>& p, attn::sdpa_options opt) {
  outputs r = nan_outputs(p.q.dimension(0), p.q.dimension(1), p.D);
  opt.lse = attn::view(r.lse);
  attn::varlen_attention(attn::view(p.q), attn::view(p.k), attn::view(p.v), attn::view(r.out),
                         p.cu_q, p.cu_k, opt);
  return r;
}

// (L, S): decodes over long caches (split-KV), prefill chunks, a fresh
// prompt, lengths on and off block boundaries.
const std::vector<std::pair<index, index>> kBatch = {
    {1, 1300}, {16, 64}, {7, 33}, {1, 1}, {0, 17}, {40, 40}, {1, 2048}, {3, 129}, {2, 0}};

template <class KV>
void expect_paged_equals_contiguous() {
  for (index bs : {1, 16, 64}) {
    SCOPED_TRACE("block_size " + std::to_string(bs));
    const auto p = make_paged<KV>(kBatch, bs, 6, 2, 32, 11 + static_cast<unsigned>(bs));
    attn::sdpa_options opt;
    opt.causal = attn::causal::bottom_right;
    EXPECT_TRUE(run_paged(p, opt) == run_contiguous(p, opt)) << "causal";
    opt.window = attn::sliding_window{50, 0};
    opt.softcap = 30.0f;
    opt.sinks = {0.1f, 0.2f, -0.3f, 1.0f, 0.0f, -2.0f};
    EXPECT_TRUE(run_paged(p, opt) == run_contiguous(p, opt)) << "window, softcap, sinks";
    attn::sdpa_options plain;
    plain.num_threads = 2;
    EXPECT_TRUE(run_paged(p, plain) == run_contiguous(p, plain)) << "no mask, 2 threads";
  }
}

TEST(PagedAttention, FloatEqualsContiguousBitForBit) { expect_paged_equals_contiguous<float>(); }
TEST(PagedAttention, Bfloat16EqualsContiguousBitForBit) {
  expect_paged_equals_contiguous<Eigen::bfloat16>();
}
TEST(PagedAttention, HalfEqualsContiguousBitForBit) { expect_paged_equals_contiguous<Eigen::half>(); }

TEST(PagedAttention, AgainstReference) {
  // Odd head dim, GQA 3:1, block size 16, against fp64 directly.
  const auto p = make_paged<float>({{1, 100}, {9, 31}, {1, 16}}, 16, 3, 1, 21, 5);
  attn::sdpa_options opt;
  opt.causal = attn::causal::bottom_right;
  const outputs got = run_paged(p, opt);
  for (index b = 0; b < 3; ++b) {
    const index L = p.cu_q[b + 1] - p.cu_q[b], S = p.seq_lens[b];
    tensor4 q(1, L, 3, 21), k(1, S, 1, 21), v(1, S, 1, 21);
    std::copy_n(p.q.data() + p.cu_q[b] * 3 * 21, q.size(), q.data());
    std::copy_n(p.k.data() + p.cu_k[b] * 21, k.size(), k.data());
    std::copy_n(p.v.data() + p.cu_k[b] * 21, v.size(), v.data());
    const auto ref = attn_ref::sdpa(attn::bshd(q), attn::bshd(k), attn::bshd(v),
                                    attn_ref::options_from(opt));
    sdpa_check::outputs mine{tensor4(1, L, 3, 21), tensor3(1, 3, L)};
    std::copy_n(got.out.data() + p.cu_q[b] * 3 * 21, mine.out.size(), mine.out.data());
    for (index h = 0; h < 3; ++h)
      for (index i = 0; i < L; ++i) mine.lse(0, h, i) = got.lse(0, h, p.cu_q[b] + i);
    EXPECT_TRUE(sdpa_check::agrees(mine, ref, sdpa_check::max_abs(v))) << "sequence " << b;
  }
}

TEST(PagedAttention, BadTablesAndPools) {
  auto p = make_paged<float>({{1, 20}, {2, 5}}, 8, 2, 1, 8, 3);
  tensor3 out(3, 2, 8);
  out.setConstant(7.0f);
  auto call = [&](const attn::paged_kv_view<float>& kv) {
    return [&, kv] { attn::paged_attention(attn::view(p.q), p.cu_q, kv, attn::view(out)); };
  };
  auto kv = p.view();
  kv.block_tables = attn::view(p.tables);
  tensor_t<std::int32_t, 2> bad = p.tables;
  bad(0, 1) = static_cast<std::int32_t>(p.key_pool.dimension(0));
  kv.block_tables = attn::view(bad);
  attn_test::expect_error("entry past the pool", call(kv), {"kv.block_tables", "num_blocks"});
  bad = p.tables;
  bad(1, 0) = -3;
  kv.block_tables = attn::view(bad);
  attn_test::expect_error("negative entry", call(kv), {"kv.block_tables"});
  bad = p.tables;
  bad(0, 2) = bad(0, 0);
  kv.block_tables = attn::view(bad);
  attn_test::expect_error("block twice", call(kv), {"kv.block_tables", "twice"});
  // Another sequence may share a block: that is a fork, not an error.
  bad = p.tables;
  bad(1, 0) = bad(0, 0);
  kv.block_tables = attn::view(bad);
  EXPECT_NO_THROW(call(kv)());
  out.setConstant(7.0f);
  kv = p.view();
  kv.seq_lens[0] = p.tables.dimension(1) * 8 + 1;
  attn_test::expect_error("length past the table", call(kv), {"kv.seq_lens", "max_blocks"});
  kv = p.view();
  kv.seq_lens.pop_back();
  attn_test::expect_error("lengths for another batch", call(kv), {"kv.seq_lens.size()"});
  tensor_t<float, 4> pool6(p.key_pool.dimension(0), 6, 1, 8);
  kv = p.view();
  kv.key_pool = attn::view(pool6);
  attn_test::expect_error("block size 6", call(kv), {"block_size", "power of two"});
  kv = p.view();
  kv.value_pool.dims[2] = 2;
  attn_test::expect_error("value pool heads", call(kv), {"kv.value_pool"});
  kv = p.view();
  tensor_t<std::int32_t, 2> three(3, p.tables.dimension(1));
  three.setZero();
  kv.block_tables = attn::view(three);
  attn_test::expect_error("table batch", call(kv), {"kv.block_tables.dims[0]"});
  for (index i = 0; i < out.size(); ++i) ASSERT_EQ(out.data()[i], 7.0f);
  // out inside the key pool.
  attn::strided<float, 3> in_pool{p.key_pool.data(), {3, 2, 8}, {16, 8, 1}};
  const auto pool_copy = p.key_pool;
  attn_test::expect_error("out inside the pool", [&] {
    attn::paged_attention(attn::view(p.q), p.cu_q, p.view(), in_pool);
  }, {"out", "kv.key_pool"});
  EXPECT_TRUE(sdpa_check::same_bytes(pool_copy, p.key_pool));
}

// ---------------------------------------------------------------------------
// paged_kv_cache against a model

/// What the pool must hold: every live sequence's tokens, as rounded floats.
template <class KV>
struct pool_model {
  index Hkv, D;
  std::map<index, std::vector<float>> k, v;  // id -> [length, Hkv, D]

  index length(index s) const { return static_cast<index>(k.at(s).size()) / (Hkv * D); }
  void append(index s, const tensor3& kn, const tensor3& vn, index first, index n) {
    for (index i = first * Hkv * D; i < (first + n) * Hkv * D; ++i) {
      k[s].push_back(static_cast<float>(KV(kn.data()[i])));
      v[s].push_back(static_cast<float>(KV(vn.data()[i])));
    }
  }
};

/// A snapshot of everything a failed call must leave alone.
template <class KV>
struct cache_state {
  std::vector<KV> keys, values;
  std::map<index, std::vector<std::int32_t>> tables;
  std::map<index, index> lengths;
  std::vector<index> refs;
  index free_blocks;

  explicit cache_state(const attn::paged_kv_cache<KV>& c) : free_blocks(c.free_blocks()) {
    const auto kp = c.key_pool(), vp = c.value_pool();
    keys.assign(kp.data, kp.data + kp.dims[0] * kp.strides[0]);
    values.assign(vp.data, vp.data + vp.dims[0] * vp.strides[0]);
    for (index s : c.sequences()) {
      tables[s] = c.block_table(s);
      lengths[s] = c.length(s);
    }
    for (index b = 0; b < c.num_blocks(); ++b) refs.push_back(c.references(b));
  }
  bool operator==(const cache_state& o) const {
    return same_bytes(keys, o.keys) && same_bytes(values, o.values) && tables == o.tables &&
           lengths == o.lengths && refs == o.refs && free_blocks == o.free_blocks;
  }
};

/// The cache holds what the model holds, read through the block tables;
/// reference counts equal the tables' use of each block.
template <class KV>
void expect_cache_matches(const attn::paged_kv_cache<KV>& c, const pool_model<KV>& m) {
  const auto kp = c.key_pool(), vp = c.value_pool();
  std::vector<index> uses(static_cast<std::size_t>(c.num_blocks()), 0);
  for (index s : c.sequences()) {
    ASSERT_EQ(c.length(s), m.length(s)) << "sequence " << s;
    const auto& table = c.block_table(s);
    ASSERT_EQ(static_cast<index>(table.size()), attn::detail::ceil_div(m.length(s), c.block_size()));
    for (std::int32_t b : table) ++uses[static_cast<std::size_t>(b)];
    for (index j = 0; j < m.length(s); ++j)
      for (index h = 0; h < m.Hkv; ++h)
        for (index d = 0; d < m.D; ++d) {
          const index blk = table[static_cast<std::size_t>(j / c.block_size())];
          const std::size_t at = static_cast<std::size_t>((j * m.Hkv + h) * m.D + d);
          ASSERT_EQ(static_cast<float>(*kp.at(blk, j % c.block_size(), h, d)), m.k.at(s)[at])
              << "key of sequence " << s << " token " << j;
          ASSERT_EQ(static_cast<float>(*vp.at(blk, j % c.block_size(), h, d)), m.v.at(s)[at]);
        }
  }
  index used = 0;
  for (index b = 0; b < c.num_blocks(); ++b) {
    EXPECT_EQ(c.references(b), uses[static_cast<std::size_t>(b)]) << "block " << b;
    used += uses[static_cast<std::size_t>(b)] > 0;
  }
  EXPECT_EQ(c.used_blocks(), used);
}

/// attend() over `ids` (each with its last n_new[i] tokens as queries)
/// equals varlen_attention over the model's tokens, bit for bit.
template <class KV>
void expect_attend_matches(const attn::paged_kv_cache<KV>& c, const pool_model<KV>& m,
                           const std::vector<index>& ids, const std::vector<index>& n_new,
                           index Hq, std::mt19937& g, int threads = 1) {
  std::vector<index> cu_q{0}, cu_k{0};
  for (std::size_t i = 0; i < ids.size(); ++i) {
    cu_q.push_back(cu_q.back() + n_new[i]);
    cu_k.push_back(cu_k.back() + m.length(ids[i]));
  }
  tensor_t<KV, 3> k(cu_k.back(), m.Hkv, m.D), v(cu_k.back(), m.Hkv, m.D);
  for (std::size_t i = 0; i < ids.size(); ++i)
    for (std::size_t e = 0; e < m.k.at(ids[i]).size(); ++e) {
      k.data()[cu_k[i] * m.Hkv * m.D + static_cast<index>(e)] = KV(m.k.at(ids[i])[e]);
      v.data()[cu_k[i] * m.Hkv * m.D + static_cast<index>(e)] = KV(m.v.at(ids[i])[e]);
    }
  const tensor3 q = randn3(cu_q.back(), Hq, m.D, g);
  attn::sdpa_options opt;
  opt.num_threads = threads;
  outputs got = nan_outputs(cu_q.back(), Hq, m.D), want = nan_outputs(cu_q.back(), Hq, m.D);
  opt.lse = attn::view(got.lse);
  c.attend(ids, attn::view(q), cu_q, attn::view(got.out), opt);
  opt.lse = attn::view(want.lse);
  opt.causal = attn::causal::bottom_right;
  attn::varlen_attention(attn::view(q), attn::view(k), attn::view(v), attn::view(want.out), cu_q,
                         cu_k, opt);
  EXPECT_TRUE(got == want) << "attend over " << ids.size() << " sequences";
}

template <class KV>
void random_workload(index bs, unsigned seed) {
  SCOPED_TRACE("block_size " + std::to_string(bs) + " seed " + std::to_string(seed));
  const index Hkv = 2, Hq = 4, D = 16, blocks = 96;
  attn::paged_kv_cache<KV> c(blocks, bs, Hkv, D);
  pool_model<KV> m{Hkv, D, {}, {}};
  std::mt19937 g(seed);
  auto pick = [&](const std::vector<index>& ids) {
    return ids[std::uniform_int_distribution<std::size_t>(0, ids.size() - 1)(g)];
  };
  for (int step = 0; step < 120; ++step) {
    const std::vector<index> live = c.sequences();
    const int op = live.empty() ? 0 : std::uniform_int_distribution<int>(0, 9)(g);
    if (op == 0) {
      const index s = c.add_sequence();
      m.k[s], m.v[s];
    } else if (op == 1) {  // fork
      const index src = pick(live), s = c.fork(src);
      m.k[s] = m.k[src];
      m.v[s] = m.v[src];
    } else if (op == 2 && live.size() > 1) {
      const index s = pick(live);
      c.free(s);
      m.k.erase(s);
      m.v.erase(s);
    } else if (op == 3) {
      const index s = pick(live);
      const index len = std::uniform_int_distribution<index>(0, m.length(s))(g);
      c.truncate(s, len);
      m.k[s].resize(static_cast<std::size_t>(len * Hkv * D));
      m.v[s].resize(static_cast<std::size_t>(len * Hkv * D));
    } else {  // a batched append of up to 3 sequences, then attend
      std::vector<index> ids = live;
      std::shuffle(ids.begin(), ids.end(), g);
      ids.resize(std::min<std::size_t>(ids.size(), 3));
      std::vector<index> cu{0}, n;
      for (std::size_t i = 0; i < ids.size(); ++i) {
        n.push_back(std::uniform_int_distribution<index>(0, bs + 3)(g));
        cu.push_back(cu.back() + n.back());
      }
      const tensor3 kn = randn3(cu.back(), Hkv, D, g), vn = randn3(cu.back(), Hkv, D, g);
      const cache_state<KV> before(c);
      try {
        c.append(ids, attn::view(kn), attn::view(vn), cu);
      } catch (const attn::error& e) {  // the pool ran out: nothing changed
        EXPECT_NE(std::string(e.what()).find("free blocks"), std::string::npos) << e.what();
        EXPECT_TRUE(cache_state<KV>(c) == before);
        continue;
      }
      for (std::size_t i = 0; i < ids.size(); ++i) m.append(ids[i], kn, vn, cu[i], n[i]);
      expect_attend_matches(c, m, ids, n, Hq, g, step % 2 + 1);
    }
    expect_cache_matches(c, m);
    if (::testing::Test::HasFailure()) return;
  }
}

TEST(PagedKvCache, RandomWorkloadMatchesModel) {
  for (index bs : {1, 16, 64}) random_workload<float>(bs, 1);
  random_workload<Eigen::bfloat16>(16, 2);
  random_workload<Eigen::half>(4, 3);
}

TEST(PagedKvCache, ForkSharesBlocksAndCopiesOnWrite) {
  const index bs = 16;
  attn::paged_kv_cache<float> c(8, bs, 1, 4);
  pool_model<float> m{1, 4, {}, {}};
  std::mt19937 g(5);
  const index a = c.add_sequence();
  const tensor3 prompt = randn3(40, 1, 4, g);  // 2 full blocks + 8 tokens
  c.append(a, attn::view(prompt), attn::view(prompt));
  m.append(a, prompt, prompt, 0, 40);
  const index b = c.fork(a);
  m.k[b] = m.k[a];
  m.v[b] = m.v[a];
  EXPECT_EQ(c.used_blocks(), 3);  // shared, not copied
  EXPECT_EQ(c.block_table(a), c.block_table(b));
  EXPECT_EQ(c.references(c.block_table(a)[2]), 2);
  // b appends into the shared partial block: b gets a copy, a keeps its own.
  const tensor3 tb = randn3(1, 1, 4, g);
  c.append(b, attn::view(tb), attn::view(tb));
  m.append(b, tb, tb, 0, 1);
  EXPECT_EQ(c.used_blocks(), 4);
  EXPECT_EQ(c.block_table(a)[0], c.block_table(b)[0]);
  EXPECT_EQ(c.block_table(a)[1], c.block_table(b)[1]);
  EXPECT_NE(c.block_table(a)[2], c.block_table(b)[2]);
  // a appends into what is now its own block alone: no copy.
  const tensor3 ta = randn3(2, 1, 4, g);
  c.append(a, attn::view(ta), attn::view(ta));
  m.append(a, ta, ta, 0, 2);
  EXPECT_EQ(c.used_blocks(), 4);
  expect_cache_matches(c, m);
  expect_attend_matches(c, m, {a, b}, {2, 1}, 2, g);
  // Freeing a returns only its own block; the shared ones stay for b.
  c.free(a);
  m.k.erase(a);
  m.v.erase(a);
  EXPECT_EQ(c.used_blocks(), 3);
  expect_cache_matches(c, m);
  c.free(b);
  EXPECT_EQ(c.used_blocks(), 0);
  EXPECT_EQ(c.free_blocks(), 8);
}

TEST(PagedKvCache, TruncateIntoASharedBlockThenAppendCopies) {
  attn::paged_kv_cache<float> c(6, 4, 1, 2);
  pool_model<float> m{1, 2, {}, {}};
  std::mt19937 g(9);
  const index a = c.add_sequence();
  const tensor3 t = randn3(8, 1, 2, g);
  c.append(a, attn::view(t), attn::view(t));
  m.append(a, t, t, 0, 8);
  const index b = c.fork(a);
  m.k[b] = m.k[a];
  m.v[b] = m.v[a];
  c.truncate(b, 6);  // inside a's second (full, shared) block
  m.k[b].resize(12);
  m.v[b].resize(12);
  const tensor3 u = randn3(3, 1, 2, g);
  c.append(b, attn::view(u), attn::view(u));
  m.append(b, u, u, 0, 3);
  expect_cache_matches(c, m);  // a's tokens 6, 7 untouched
  c.truncate(b, 0);
  m.k[b].clear();
  m.v[b].clear();
  expect_cache_matches(c, m);
  EXPECT_EQ(c.used_blocks(), 2);
}

TEST(PagedKvCache, BatchInvariance) {
  const index bs = 16, Hkv = 2, Hq = 8, D = 64;
  attn::paged_kv_cache<Eigen::bfloat16> c(600, bs, Hkv, D);
  std::mt19937 g(77);
  // Live sequences of many lengths; each gets its last `news` tokens as
  // queries: decodes over long caches and prefill chunks.
  const std::vector<std::pair<index, index>> shapes = {
      {1, 3000}, {1, 1}, {33, 33}, {5, 700}, {1, 1500}, {64, 200}, {1, 17}};
  std::vector<index> ids;
  for (auto [L, S] : shapes) {
    ids.push_back(c.add_sequence());
    const tensor3 k = randn3(S, Hkv, D, g), v = randn3(S, Hkv, D, g);
    c.append(ids.back(), attn::view(k), attn::view(v));
  }
  std::vector<tensor3> queries;
  for (auto [L, S] : shapes) queries.push_back(randn3(L, Hq, D, g));
  auto run = [&](const std::vector<std::size_t>& members, int threads) {
    std::vector<index> seqs, cu{0};
    for (std::size_t i : members) seqs.push_back(ids[i]), cu.push_back(cu.back() + shapes[i].first);
    tensor3 q(cu.back(), Hq, D);
    for (std::size_t i = 0; i < members.size(); ++i)
      std::copy_n(queries[members[i]].data(), queries[members[i]].size(), q.data() + cu[i] * Hq * D);
    outputs r = nan_outputs(cu.back(), Hq, D);
    attn::sdpa_options opt;
    opt.num_threads = threads;
    opt.lse = attn::view(r.lse);
    c.attend(seqs, attn::view(q), cu, attn::view(r.out), opt);
    return std::make_pair(r, cu);
  };
  for (std::size_t subject = 0; subject < shapes.size(); ++subject) {
    const auto alone = run({subject}, 1).first;
    for (int trial = 0; trial < 3; ++trial) {
      std::vector<std::size_t> members;
      for (std::size_t i = 0; i < shapes.size(); ++i)
        if (i == subject || std::bernoulli_distribution(0.6)(g)) members.push_back(i);
      std::shuffle(members.begin(), members.end(), g);
      const std::size_t at = static_cast<std::size_t>(
          std::find(members.begin(), members.end(), subject) - members.begin());
      for (int threads : {1, 2}) {
        const auto [r, cu] = run(members, threads);
        const index L = shapes[subject].first, first = cu[at];
        EXPECT_EQ(std::memcmp(r.out.data() + first * Hq * D, alone.out.data(),
                              static_cast<std::size_t>(L * Hq * D) * sizeof(float)),
                  0)
            << "subject " << subject << " trial " << trial << " threads " << threads;
        for (index h = 0; h < Hq; ++h)
          for (index i = 0; i < L; ++i)
            ASSERT_EQ(std::memcmp(&r.lse(0, h, first + i), &alone.lse(0, h, i), sizeof(float)), 0);
      }
    }
  }
}

TEST(PagedKvCache, FailedCallsLeaveThePoolUnchanged) {
  attn::paged_kv_cache<Eigen::half> c(4, 4, 1, 2);
  std::mt19937 g(3);
  const index a = c.add_sequence(), b = c.add_sequence();
  const tensor3 t = randn3(6, 1, 2, g);
  c.append(a, attn::view(t), attn::view(t));
  const index fa = c.fork(a);
  const index dead = c.add_sequence();
  c.free(dead);
  const cache_state<Eigen::half> before(c);
  auto expect_rejected = [&](const std::string& label, auto f,
                             const std::vector<const char*>& needles) {
    attn_test::expect_error(label, f, needles);
    EXPECT_TRUE(cache_state<Eigen::half>(c) == before) << label << ": the pool changed";
  };
  const tensor3 ten = randn3(10, 1, 2, g), one = randn3(1, 1, 2, g);
  expect_rejected("append past the pool", [&] { c.append(b, attn::view(ten), attn::view(ten)); },
                  {"the pool", "free blocks"});
  // 2 free blocks: b needs 1, fa 1 for its copy-on-write; a, then the only
  // holder of its partial block (2 of 4 slots used), needs 1 for 3 tokens.
  const tensor3 three = randn3(3, 1, 2, g), five = randn3(5, 1, 2, g);
  expect_rejected("a batch that needs one block too many", [&] {
    c.append({b, fa, a}, attn::view(five), attn::view(five), {0, 1, 2, 5});
  }, {"the pool", "free blocks"});
  expect_rejected("a dead sequence", [&] { c.append(dead, attn::view(one), attn::view(one)); },
                  {"sequence", "live"});
  expect_rejected("fork of a freed sequence", [&] { c.fork(dead); }, {"sequence", "live"});
  expect_rejected("free of a freed sequence", [&] { c.free(dead); }, {"sequence", "live"});
  expect_rejected("truncate past the end", [&] { c.truncate(a, 7); }, {"length"});
  expect_rejected("a sequence twice", [&] {
    c.append({b, b}, attn::view(three), attn::view(three), {0, 1, 3});
  }, {"seqs", "distinct"});
  expect_rejected("cumulative lengths", [&] {
    c.append({a, b}, attn::view(three), attn::view(three), {0, 2, 1});
  }, {"cu_seqlens", "non-decreasing"});
  tensor3 wide(1, 1, 3);
  wide.setZero();
  expect_rejected("k_new head dim", [&] { c.append(a, attn::view(wide), attn::view(one)); },
                  {"k_new"});
  // k_new read from the pool itself.
  attn::strided<const float, 3> bogus{reinterpret_cast<const float*>(c.key_pool().data), {1, 1, 2},
                                      {2, 2, 1}};
  expect_rejected("k_new inside the pool", [&] { c.append(b, bogus, attn::view(one)); },
                  {"k_new", "key_pool()"});

  // attend: too many queries, a dead sequence, causal given, out over q.
  tensor3 q = randn3(7, 2, 2, g), out(7, 2, 2);
  out.setConstant(5.0f);
  expect_rejected("more queries than tokens", [&] {
    c.attend({a}, attn::view(q), {0, 7}, attn::view(out));
  }, {"cu_seqlens_q", "length"});
  expect_rejected("attend a dead sequence", [&] {
    c.attend({dead}, attn::view(q), {0, 7}, attn::view(out));
  }, {"sequence", "live"});
  attn::sdpa_options causal;
  causal.causal = attn::causal::top_left;
  expect_rejected("causal set", [&] { c.attend({a, b}, attn::view(q), {0, 6, 7}, attn::view(out), causal); },
                  {"opt.causal"});
  for (index i = 0; i < out.size(); ++i) ASSERT_EQ(out.data()[i], 5.0f);
  expect_rejected("block_size 0", [] { attn::paged_kv_cache<float>(1, 0, 1, 1); },
                  {"block_size", "power of two"});
  expect_rejected("block_size 24", [] { attn::paged_kv_cache<float>(1, 24, 1, 1); },
                  {"block_size", "power of two"});
}

TEST(PagedKvCache, FreeListHandsOutLowBlocksFirstAndReusesFreedOnes) {
  attn::paged_kv_cache<float> c(3, 2, 1, 1);
  tensor3 t(4, 1, 1);
  t.setConstant(1.0f);
  const index a = c.add_sequence();
  c.append(a, attn::view(t), attn::view(t));
  EXPECT_EQ(c.block_table(a), (std::vector<std::int32_t>{0, 1}));
  c.truncate(a, 2);
  EXPECT_EQ(c.free_blocks(), 2);
  const index b = c.add_sequence();
  c.append(b, attn::view(t), attn::view(t));  // block 1 again, then 2
  EXPECT_EQ(c.block_table(b), (std::vector<std::int32_t>{1, 2}));
  EXPECT_EQ(c.free_blocks(), 0);
}

// ---------------------------------------------------------------------------
// shared_prefix_attention

/// Sequences forked from one prompt of `prefix` tokens, each with its own
/// tokens after it, in a paged_kv_cache.
struct forked_batch {
  attn::paged_kv_cache<Eigen::bfloat16> pool;
  std::vector<index> ids;
  std::vector<std::int32_t> tables;  // [B, max_blocks]
  index max_blocks = 0;

  forked_batch(index bs, index prefix, const std::vector<index>& own, index Hkv, index D,
               std::mt19937& g)
      : pool(512, bs, Hkv, D) {
    const index root = pool.add_sequence();
    const tensor3 k = randn3(prefix, Hkv, D, g), v = randn3(prefix, Hkv, D, g);
    pool.append(root, attn::view(k), attn::view(v));
    for (index n : own) {
      ids.push_back(pool.fork(root));
      const tensor3 kn = randn3(n, Hkv, D, g), vn = randn3(n, Hkv, D, g);
      pool.append(ids.back(), attn::view(kn), attn::view(vn));
    }
    pool.free(root);
    for (index s : ids) max_blocks = std::max(max_blocks, static_cast<index>(pool.block_table(s).size()));
    tables.assign(ids.size() * static_cast<std::size_t>(max_blocks), 0);
    for (std::size_t i = 0; i < ids.size(); ++i) {
      const auto& t = pool.block_table(ids[i]);
      std::copy(t.begin(), t.end(), tables.begin() + static_cast<std::ptrdiff_t>(i) * max_blocks);
    }
  }
  attn::paged_kv_view<Eigen::bfloat16> view() const {
    attn::paged_kv_view<Eigen::bfloat16> kv{pool.key_pool(), pool.value_pool(),
                                            {tables.data(), {static_cast<index>(ids.size()), max_blocks},
                                             {max_blocks, 1}},
                                            {}};
    for (index s : ids) kv.seq_lens.push_back(pool.length(s));
    return kv;
  }
};

TEST(SharedPrefix, EqualsPagedAttentionToRounding) {
  // The two results differ by one LSE merge in another order: each output
  // is a convex combination of the same V rows with weights off by a few
  // fp32 ulps, so the sdpa_check tolerances (1e-5 max|V|, 1e-5 (1 + |lse|))
  // hold with the same argument.
  std::mt19937 g(8);
  const index bs = 16, Hq = 8, Hkv = 2, D = 32;
  for (index prefix : {16, 40, 256}) {
    const std::vector<index> own = {1, 7, 16, 33, 3};
    forked_batch fb(bs, prefix, own, Hkv, D, g);
    const auto kv = fb.view();
    // Queries, all after the prefix: decodes and short chunks (8 queries,
    // 32 rows once the 4 heads of a group are rows: the split-KV kernel),
    // then longer chunks (47 queries, 188 rows: the flash kernel).
    for (const std::vector<index>& L :
         {std::vector<index>{1, 3, 1, 2, 1}, std::vector<index>{1, 7, 16, 20, 3}}) {
      std::vector<index> cu{0};
      for (index n : L) cu.push_back(cu.back() + n);
      const tensor3 q = randn3(cu.back(), Hq, D, g);
      const index shared = prefix / bs;  // full blocks only
      for (int variant = 0; variant < 3; ++variant) {
        attn::sdpa_options opt;
        opt.causal = variant == 2 ? attn::causal::none : attn::causal::bottom_right;
        if (variant == 1) {
          opt.softcap = 15.0f;
          opt.sinks = {0.5f, -1.0f, 0.0f, 2.0f, 1.0f, -0.5f, 0.25f, 3.0f};
        }
        opt.num_threads = variant + 1;
        outputs want = nan_outputs(cu.back(), Hq, D), got = nan_outputs(cu.back(), Hq, D);
        opt.lse = attn::view(want.lse);
        attn::paged_attention(attn::view(q), cu, kv, attn::view(want.out), opt);
        opt.lse = attn::view(got.lse);
        attn::shared_prefix_attention(attn::view(q), cu, kv, shared, attn::view(got.out), opt);
        for (index i = 0; i < got.out.size(); ++i)
          ASSERT_NEAR(got.out.data()[i], want.out.data()[i], 1e-5 * 4.5 + 1e-7)
              << "prefix " << prefix << " variant " << variant << " element " << i;
        for (index i = 0; i < got.lse.size(); ++i)
          ASSERT_NEAR(got.lse.data()[i], want.lse.data()[i],
                      1e-5 * (1 + std::abs(want.lse.data()[i])));
      }
    }
  }
}

TEST(SharedPrefix, BadInput) {
  std::mt19937 g(2);
  forked_batch fb(4, 8, {2, 3}, 1, 8, g);
  auto kv = fb.view();
  const tensor3 q = randn3(2, 2, 8, g);
  tensor3 out(2, 2, 8);
  out.setConstant(7.0f);
  const std::vector<index> cu = {0, 1, 2};
  attn_test::expect_error("prefix past a query", [&] {
    attn::shared_prefix_attention(attn::view(q), cu, kv, 3, attn::view(out));
  }, {"kv.seq_lens", "after the prefix"});
  attn::sdpa_options window;
  window.window = attn::sliding_window{4, 0};
  attn_test::expect_error("window", [&] {
    attn::shared_prefix_attention(attn::view(q), cu, kv, 2, attn::view(out), window);
  }, {"opt", "window"});
  fb.tables[static_cast<std::size_t>(fb.max_blocks)] = fb.tables[1];  // row 1 starts elsewhere
  fb.tables[static_cast<std::size_t>(fb.max_blocks) + 1] = fb.tables[0];
  kv = fb.view();
  attn_test::expect_error("different prefixes", [&] {
    attn::shared_prefix_attention(attn::view(q), cu, kv, 2, attn::view(out));
  }, {"kv.block_tables", "same prefix"});
  for (index i = 0; i < out.size(); ++i) ASSERT_EQ(out.data()[i], 7.0f);
}

// ---------------------------------------------------------------------------
// multi_head_attention over the paged cache

attn::linear random_linear(index out, index in, std::mt19937& g) {
  attn::linear l;
  l.weight.resize(out, in);
  l.bias.resize(out);
  std::normal_distribution<float> n(0.0f, 0.2f);
  for (index i = 0; i < l.weight.size(); ++i) l.weight.data()[i] = n(g);
  for (index i = 0; i < l.bias.size(); ++i) l.bias.data()[i] = n(g);
  return l;
}

TEST(PagedLayer, ServingStepsEqualEachSequenceThroughItsOwnKvCache) {
  // A batch of three sequences served step by step (prefill chunks and
  // decodes mixed in one call) against the same layer over a contiguous
  // kv_cache per sequence: the same bits. The projections compute each
  // output element in one fixed order whatever rows share the call
  // (docs/design.md section 6, point 4), the attention is batch-invariant
  // and reads the same K/V values paged or contiguous.
  std::mt19937 g(31);
  const index E = 48, Hq = 8, Hkv = 2, hd = 6;
  attn::mha_config cfg;
  cfg.embed_dim = E;
  cfg.num_heads = Hq;
  cfg.num_kv_heads = Hkv;
  attn::mha_weights w{random_linear(Hq * hd, E, g), random_linear(Hkv * hd, E, g),
                      random_linear(Hkv * hd, E, g), random_linear(E, Hq * hd, g)};
  attn::mha_rope rope{std::make_shared<attn::rope_table>(128, 6), attn::rope_layout::half_split};
  const attn::multi_head_attention layer(cfg, w, rope);

  attn::paged_kv_cache<float> pool(32, 4, Hkv, hd);
  std::vector<attn::kv_cache<float>> alone;
  std::vector<index> ids;
  for (int i = 0; i < 3; ++i) {
    ids.push_back(pool.add_sequence());
    alone.emplace_back(1, 128, Hkv, hd);
  }
  // Tokens per sequence per step.
  const std::vector<std::vector<index>> steps = {{5, 17, 1}, {1, 1, 1}, {3, 1, 0}, {1, 9, 2}};
  for (const auto& counts : steps) {
    std::vector<index> cu{0};
    for (index n : counts) cu.push_back(cu.back() + n);
    const tensor3 x = randn3(1, cu.back(), E, g);
    const tensor3 y = layer.forward(x, pool, ids, cu);
    ASSERT_EQ(y.dimension(1), cu.back());
    for (std::size_t s = 0; s < ids.size(); ++s) {
      if (counts[s] == 0) continue;
      tensor3 xs(1, counts[s], E);
      std::copy_n(x.data() + cu[s] * E, xs.size(), xs.data());
      const tensor3 ys = layer.forward(xs, alone[s]);
      for (index i = 0; i < ys.size(); ++i)
        ASSERT_EQ(y.data()[cu[s] * E + i], ys.data()[i])
            << "sequence " << s << " element " << i;
      EXPECT_EQ(pool.length(ids[s]), alone[s].lengths()[0]);
    }
  }
  // A failed step (a dead sequence) leaves the pool as it was.
  const cache_state<float> before(pool);
  const tensor3 x = randn3(1, 2, E, g);
  attn_test::expect_error("dead sequence", [&] { layer.forward(x, pool, {ids[0], 99}, {0, 1, 2}); },
                          {"sequence", "live"});
  attn_test::expect_error("repeated sequence",
                          [&] { layer.forward(x, pool, {ids[0], ids[0]}, {0, 1, 2}); },
                          {"seqs", "distinct"});
  EXPECT_TRUE(cache_state<float>(pool) == before);
}

// ---------------------------------------------------------------------------
// merge_states

TEST(MergeStates, SplitKeysMergeToTheWhole) {
  const index L = 5, S = 300, Hq = 4, D = 24, split = 123;
  std::mt19937 g(21);
  const tensor4 q = sdpa_check::randn(1, L, Hq, D, g), k = sdpa_check::randn(1, S, Hq, D, g),
                v = sdpa_check::randn(1, S, Hq, D, g);
  auto attend = [&](index first, index n, tensor4& out, tensor3& lse) {
    const tensor4 kp = k.slice(std::array<index, 4>{0, first, 0, 0}, std::array<index, 4>{1, n, Hq, D});
    const tensor4 vp = v.slice(std::array<index, 4>{0, first, 0, 0}, std::array<index, 4>{1, n, Hq, D});
    out = tensor4(1, L, Hq, D);
    lse = tensor3(1, Hq, L);
    attn::sdpa_options opt;
    opt.lse = attn::view(lse);
    attn::scaled_dot_product_attention(attn::bshd(q), attn::bshd(kp), attn::bshd(vp),
                                       attn::bshd(out), opt);
  };
  tensor4 oa, ob;
  tensor3 la, lb;
  attend(0, split, oa, la);
  attend(split, S - split, ob, lb);
  // As [rows = L, states = 2, heads, d] and [L, 2, heads].
  tensor4 states(L, 2, Hq, D);
  tensor3 lses(L, 2, Hq);
  for (index i = 0; i < L; ++i)
    for (index h = 0; h < Hq; ++h) {
      lses(i, 0, h) = la(0, h, i);
      lses(i, 1, h) = lb(0, h, i);
      for (index d = 0; d < D; ++d) {
        states(i, 0, h, d) = oa(0, i, h, d);
        states(i, 1, h, d) = ob(0, i, h, d);
      }
    }
  tensor3 merged(L, Hq, D);
  tensor_t<float, 2> merged_lse(L, Hq);
  attn::merge_states(attn::view(states), attn::view(lses), attn::view(merged),
                     attn::view(merged_lse));
  const auto ref = attn_ref::sdpa(attn::bshd(q), attn::bshd(k), attn::bshd(v), attn_ref::options{});
  sdpa_check::outputs got{tensor4(1, L, Hq, D), tensor3(1, Hq, L)};
  for (index i = 0; i < L; ++i)
    for (index h = 0; h < Hq; ++h) {
      got.lse(0, h, i) = merged_lse(i, h);
      for (index d = 0; d < D; ++d) got.out(0, i, h, d) = merged(i, h, d);
    }
  EXPECT_TRUE(sdpa_check::agrees(got, ref, sdpa_check::max_abs(v)));

  // The two-state form gives the same bits, at any thread count.
  const tensor3 a3 = oa.reshape(std::array<index, 3>{L, Hq, D});
  const tensor3 b3 = ob.reshape(std::array<index, 3>{L, Hq, D});
  tensor_t<float, 2> la2(L, Hq), lb2(L, Hq);
  for (index i = 0; i < L; ++i)
    for (index h = 0; h < Hq; ++h) la2(i, h) = la(0, h, i), lb2(i, h) = lb(0, h, i);
  tensor3 pair_out(L, Hq, D);
  tensor_t<float, 2> pair_lse(L, Hq);
  attn::merge_states(attn::view(a3), attn::view(la2), attn::view(b3), attn::view(lb2),
                     attn::view(pair_out), attn::view(pair_lse), 2);
  EXPECT_TRUE(sdpa_check::same_bytes(pair_out, merged));
  EXPECT_TRUE(sdpa_check::same_bytes(pair_lse, merged_lse));
}

TEST(MergeStates, EmptyStatesContributeNothing) {
  const float inf = std::numeric_limits<float>::infinity();
  tensor4 v(2, 3, 1, 2);
  tensor3 lse(2, 3, 1);
  // Row 0: only state 1 saw keys; row 1: none did.
  v.setConstant(9.0f);
  v(0, 1, 0, 0) = 0.25f;
  v(0, 1, 0, 1) = -0.5f;
  lse.setConstant(-inf);
  lse(0, 1, 0) = 1.5f;
  tensor3 out(2, 1, 2);
  tensor_t<float, 2> out_lse(2, 1);
  attn::merge_states(attn::view(v), attn::view(lse), attn::view(out), attn::view(out_lse));
  EXPECT_EQ(out(0, 0, 0), 0.25f);
  EXPECT_EQ(out(0, 0, 1), -0.5f);
  EXPECT_EQ(out_lse(0, 0), 1.5f);
  EXPECT_EQ(out(1, 0, 0), 0.0f);
  EXPECT_EQ(out(1, 0, 1), 0.0f);
  EXPECT_EQ(out_lse(1, 0), -inf);
  // The LSE output is optional.
  EXPECT_NO_THROW(attn::merge_states(attn::view(v), attn::view(lse), attn::view(out)));
}

TEST(MergeStates, BadInput) {
  tensor4 v(2, 3, 1, 2);
  tensor3 lse(2, 3, 1), out(2, 1, 2), wrong(2, 2, 2);
  v.setZero();
  lse.setZero();
  attn_test::expect_error("out dims", [&] {
    attn::merge_states(attn::view(v), attn::view(lse), attn::view(wrong));
  }, {"v_out", "[rows, heads, d]"});
  tensor3 lse_wrong(2, 2, 1);
  attn_test::expect_error("lse dims", [&] {
    attn::merge_states(attn::view(v), attn::view(lse_wrong), attn::view(out));
  }, {"lse", "[rows, states, heads]"});
  attn::strided<float, 3> over_v{v.data(), {2, 1, 2}, {6, 2, 1}};
  attn_test::expect_error("out over v", [&] {
    attn::merge_states(attn::view(v), attn::view(lse), over_v);
  }, {"v_out", "v"});
}

}  // namespace test_paged
