// tests/fuzz/fuzz_paged_cache.cpp: libFuzzer harness for attn::paged_kv_cache
// (a pool of K/V blocks shared by many sequences: add_sequence, fork with
// copy-on-write, single and batched append, attend, truncate, free), driven
// by random sequences of calls, many of them broken, against a model of the
// pool kept in plain vectors.
//
// The input decodes into: the storage type (float, bf16, half); block_size
// (powers of two from 1 to 64; 0 and non-powers such as 3, 5, 7, 6, 24 are
// first tried and must be refused, then rounded down to a power of two);
// sometimes one more constructor call with a bad size; a pool of 0..12
// blocks (small, so that it runs out), kv_heads, head dims d_qk and d_v
// (d_v may be 0: accepted by the constructor, refused by every attend);
// heads_q a multiple of kv_heads; then up to 32 operations:
//  * add_sequence; fork of a live, freed, never issued or negative id;
//  * append of T tokens to one sequence, or a batch with cu_seqlens (counts
//    up to past the pool), with strided and broadcast inputs holding NaN,
//    +-inf, huge values, denormals; broken: bad cu_seqlens (first entry,
//    decreasing, last entry, empty), seqs.size(), dead or repeated ids,
//    wrong shapes, a non-unit or negative extent, null data, k_new/v_new
//    inside the pool;
//  * attend over 0..4 listed sequences (repeats allowed) with 0..40 queries
//    each, threads 1, 2 or 0, options (scale, sliding window, softcap,
//    ALiBi, sinks, LSE); broken: causal or key_lengths set, bad threads,
//    scale, softcap or sinks, q / out / lse shapes, q's last stride, more
//    queries than tokens, bad cu_seqlens_q, seqs.size(), dead ids, out
//    aliasing q or lying inside the pool, lse aliasing out;
//  * truncate (to any length, past the end, negative, dead ids); free
//    (also twice); the lookups length / block_table / references / contains
//    on dead ids and out-of-range blocks.
//
// The model holds, for every live sequence, its tokens as the storage type
// (the inputs rounded as append rounds them) and its blocks under names of
// its own, with their reference counts: fork shares every block, an append
// into a partly filled block that another sequence holds first copies it,
// truncate and free release blocks no one else holds.
//
// Invariants checked after every operation:
//  1. a broken call throws attn::error (nothing else, message in the
//     library's format, naming what was broken) and a valid one does not;
//     after a throw the cache is byte-identical to its snapshot from before
//     the call: key and value pool bytes, the live ids, every block table and
//     length, every reference count, free_blocks(). attend never changes it.
//  2. after a success the cache equals the model: every live sequence's
//     tokens read through its block table are the model's bytes; its table
//     has ceil(length / block_size) entries, inside the pool, no block twice;
//     the tables' physical blocks correspond one to one to the model's
//     blocks (so sharing and copy-on-write happen exactly where the model
//     says); references(b) is the number of tables holding b; used_blocks()
//     is the model's block count and used + free == num_blocks(); ids are
//     never reused, freed ones stay dead.
//  3. a successful attend writes every element of out (and lse) and nothing
//     outside their views, gives the bits of attn::varlen_attention over the
//     model's tokens packed contiguously (causal bottom_right, the same
//     options), output and LSE, at the thread count it asked for and at the
//     other of 1 and 2; and a query row whose own values and the keys and
//     values of its sequence up to its position are finite gets a finite
//     output and LSE.
//
// Sizes are bounded (<= 768 tokens in the pool, d <= 32, <= 9 heads_q) so an
// input runs in about a millisecond.
#include <attn/paged_kv_cache.hpp>
#include <attn/varlen.hpp>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <iterator>
#include <limits>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "fuzz_alias.hpp"
#include "fuzz_input.hpp"

namespace {

using namespace attn_fuzz;
using attn::index;
using block_t = std::int32_t;

// Library issues found by this harness (the convention of fuzz_input.hpp's
// attn_fuzz::known): while a flag is true the harness accepts that one
// behaviour, so the fuzzer keeps looking for others.
namespace known_paged {
/// P1: append over several sequences counts the blocks it needs on the
/// state before the call, one copy-on-write for every listed sequence whose
/// partly filled last block is shared (blocks_for_append). When two listed
/// sequences hold that block and no one else does, the first one's copy
/// leaves the second its only holder, which then writes in place: the batch
/// takes one block fewer than counted, and a batch that fits the free
/// blocks is refused ("the pool: expected 2 free blocks for this append,
/// got 1 free"), while the same appends one at a time succeed.
/// include/attn/paged_kv_cache.hpp, append(): blocks_wanted.
/// While true, a batch whose exact need fits but whose count does not must
/// throw, naming the pool.
constexpr bool batch_append_overcounts_copies = false;  // fixed (append counts the copies in order)

/// P2: with v_head_dim = 0 (which the constructor accepts) v_new has no
/// elements and may have null data (check_new_rows allows it, as Eigen gives
/// zero-size tensors none), but append still forms v_new.data + row ·
/// strides[0] + h · strides[1] for every row and head: null plus a non-zero
/// offset, undefined (UBSan: "applying non-zero offset to null pointer")
/// whenever the strides are not 0. include/attn/paged_kv_cache.hpp,
/// append(), the copy_row(v_new.data + ...) call (as F1 / F10 were for
/// sdpa and kv_cache). While true the harness gives such a v_new a
/// non-null pointer.
constexpr bool append_null_zero_width_offsets = false;  // fixed (append skips value rows when v_head_dim is 0)
}  // namespace known_paged

// check() whose message is built only when the check fails: the checks of
// the model run per token, and building their messages cost more than
// the checking.
template <class Message>
void ensure(bool ok, Message&& message) {
  if (!ok) fail(message());
}

const char* storage_name(float*) { return "float"; }
const char* storage_name(Eigen::bfloat16*) { return "bf16"; }
const char* storage_name(Eigen::half*) { return "half"; }

// ---------------------------------------------------------------------------
// The model of the pool

template <class KV>
struct seq_model {
  index length = 0;
  std::vector<KV> k, v;       // [length, kv_heads, d_qk] and [length, kv_heads, d_v]
  std::vector<index> blocks;  // the model's names of its blocks, in logical order
};

template <class KV>
struct pool_model {
  index num_blocks = 0, bs = 1, Hkv = 1, D = 1, Dv = 1;
  std::map<index, seq_model<KV>> seqs;  // live sequences
  std::set<index> issued;               // every id ever handed out
  std::vector<index> freed;             // ids freed (dead for good)
  std::map<index, index> refs;          // model block -> sequences holding it
  index next_name = 0;

  bool live(index id) const { return seqs.count(id) != 0; }
  index used() const { return static_cast<index>(refs.size()); }
  index free_blocks() const { return num_blocks - used(); }
  index length(index id) const { return seqs.at(id).length; }

  index take() {
    refs[next_name] = 1;
    return next_name++;
  }
  void release_from(seq_model<KV>& s, index keep) {
    while (static_cast<index>(s.blocks.size()) > keep) {
      const index b = s.blocks.back();
      s.blocks.pop_back();
      if (--refs.at(b) == 0) refs.erase(b);
    }
  }
  // The partly filled last block is held by another sequence too (under
  // reference counts r).
  bool shares_partial(const seq_model<KV>& s, const std::map<index, index>& r) const {
    return s.length % bs != 0 && r.at(s.blocks[static_cast<std::size_t>(s.length / bs)]) > 1;
  }
  index growth(const seq_model<KV>& s, index n) const {
    return std::max<index>(
        attn::detail::ceil_div(s.length + n, bs) - static_cast<index>(s.blocks.size()), 0);
  }
  // Blocks a batch of appends takes, done in order (a copy made for one
  // sequence may leave the next the only holder of the old block).
  index exact_need(const std::vector<index>& ids, const std::vector<index>& n) const {
    std::map<index, index> r = refs;
    index need = 0;
    for (std::size_t i = 0; i < ids.size(); ++i) {
      if (n[i] == 0) continue;
      const seq_model<KV>& s = seqs.at(ids[i]);
      if (shares_partial(s, r)) {
        --r.at(s.blocks[static_cast<std::size_t>(s.length / bs)]);
        ++need;
      }
      need += growth(s, n[i]);
    }
    return need;
  }
  // What the library counts (known_paged::batch_append_overcounts_copies):
  // every copy-on-write judged on the state before the call.
  index counted_need(const std::vector<index>& ids, const std::vector<index>& n) const {
    index need = 0;
    for (std::size_t i = 0; i < ids.size(); ++i)
      if (n[i] > 0)
        need += growth(seqs.at(ids[i]), n[i]) + (shares_partial(seqs.at(ids[i]), refs) ? 1 : 0);
    return need;
  }

  void add(index id) {
    seqs[id];
    issued.insert(id);
  }
  void fork(index src, index id) {
    seq_model<KV> copy = seqs.at(src);
    for (index b : copy.blocks) ++refs.at(b);
    seqs[id] = std::move(copy);
    issued.insert(id);
  }
  // Rows [first, first + n) of k_new / v_new appended to sequence id.
  void append(index id, const attn::strided<const float, 3>& k,
              const attn::strided<const float, 3>& v, index first, index n) {
    if (n == 0) return;
    seq_model<KV>& s = seqs.at(id);
    if (shares_partial(s, refs)) {  // copy-on-write
      index& b = s.blocks[static_cast<std::size_t>(s.length / bs)];
      --refs.at(b);
      b = take();
    }
    while (static_cast<index>(s.blocks.size()) * bs < s.length + n) s.blocks.push_back(take());
    push_rows(s.k, k, first, n, D);
    push_rows(s.v, v, first, n, Dv);
    s.length += n;
  }
  ATTN_FUZZ_NO_COVERAGE void push_rows(std::vector<KV>& dst, const attn::strided<const float, 3>& t,
                                       index first, index n, index dim) const {
    for (index r = first; r < first + n; ++r)
      for (index h = 0; h < Hkv; ++h)
        for (index d = 0; d < dim; ++d) dst.push_back(static_cast<KV>(*at(t, r, h, d)));
  }
  void truncate(index id, index len) {
    seq_model<KV>& s = seqs.at(id);
    release_from(s, attn::detail::ceil_div(len, bs));
    s.length = len;
    s.k.resize(static_cast<std::size_t>(len * Hkv * D));
    s.v.resize(static_cast<std::size_t>(len * Hkv * Dv));
  }
  void free(index id) {
    release_from(seqs.at(id), 0);
    seqs.erase(id);
    freed.push_back(id);
  }
};

// ---------------------------------------------------------------------------
// Snapshots and the checks against the model

template <class KV>
struct cache_state {
  std::vector<unsigned char> keys, values;
  std::vector<index> ids, lengths, refs;
  std::vector<std::vector<block_t>> tables;
  index free_blocks = 0, used_blocks = 0;
};

template <class KV>
ATTN_FUZZ_NO_COVERAGE cache_state<KV> state_of(const attn::paged_kv_cache<KV>& c) {
  cache_state<KV> s;
  const auto kp = c.key_pool(), vp = c.value_pool();
  s.keys = snapshot(kp.data,
                    static_cast<std::size_t>(kp.dims[0] * kp.dims[1] * kp.dims[2] * kp.dims[3]));
  s.values = snapshot(vp.data,
                      static_cast<std::size_t>(vp.dims[0] * vp.dims[1] * vp.dims[2] * vp.dims[3]));
  s.ids = c.sequences();
  for (index id : s.ids) {
    s.lengths.push_back(c.length(id));
    s.tables.push_back(c.block_table(id));
  }
  for (index b = 0; b < c.num_blocks(); ++b) s.refs.push_back(c.references(b));
  s.free_blocks = c.free_blocks();
  s.used_blocks = c.used_blocks();
  return s;
}

template <class KV>
ATTN_FUZZ_NO_COVERAGE void expect_unchanged(const attn::paged_kv_cache<KV>& c,
                                            const cache_state<KV>& before,
                                            const std::string& what) {
  const cache_state<KV> now = state_of(c);
  ensure(now.keys == before.keys, [&] { return what + ": the key pool's bytes changed"; });
  ensure(now.values == before.values, [&] { return what + ": the value pool's bytes changed"; });
  ensure(now.ids == before.ids, [&] { return what + ": the live sequences changed"; });
  ensure(now.lengths == before.lengths, [&] { return what + ": a length changed"; });
  ensure(now.tables == before.tables, [&] { return what + ": a block table changed"; });
  ensure(now.refs == before.refs, [&] { return what + ": a reference count changed"; });
  ensure(now.free_blocks == before.free_blocks && now.used_blocks == before.used_blocks,
         [&] { return what + ": free_blocks() / used_blocks() changed"; });
}

// Invariant 2 of the file comment.
template <class KV>
ATTN_FUZZ_NO_COVERAGE void expect_model(const attn::paged_kv_cache<KV>& c, const pool_model<KV>& m,
                                        const std::string& what) {
  const index nb = m.num_blocks, bs = m.bs, H = m.Hkv;
  std::vector<index> want_ids;
  for (const auto& e : m.seqs) want_ids.push_back(e.first);
  ensure(c.sequences() == want_ids,
         [&] { return what + ": sequences() is not the model's live ids"; });
  for (index id : m.freed)
    ensure(!c.contains(id),
           [&] { return what + ": freed sequence " + std::to_string(id) + " is live"; });
  std::map<index, block_t> to_physical;
  std::map<block_t, index> to_model;
  std::vector<index> uses(static_cast<std::size_t>(nb), 0);
  const auto kp = c.key_pool(), vp = c.value_pool();
  for (const auto& e : m.seqs) {
    const index id = e.first;
    const seq_model<KV>& s = e.second;
    const std::string seq = " (sequence " + std::to_string(id) + ")";
    ensure(c.contains(id), [&] { return what + ": a live sequence is not contained" + seq; });
    ensure(c.length(id) == s.length, [&] {
      return what + ": length " + std::to_string(c.length(id)) + ", the model has " +
             std::to_string(s.length) + seq;
    });
    const std::vector<block_t>& table = c.block_table(id);
    ensure(static_cast<index>(table.size()) == attn::detail::ceil_div(s.length, bs) &&
               table.size() == s.blocks.size(),
           [&] {
             return what + ": block table of " + std::to_string(table.size()) +
                    " entries for length " + std::to_string(s.length) + seq;
           });
    std::set<block_t> mine;
    for (std::size_t i = 0; i < table.size(); ++i) {
      const block_t p = table[i];
      ensure(p >= 0 && p < nb, [&] {
        return what + ": block table entry " + std::to_string(p) + " outside the pool" + seq;
      });
      ensure(mine.insert(p).second,
             [&] { return what + ": block " + std::to_string(p) + " twice in one table" + seq; });
      ++uses[static_cast<std::size_t>(p)];
      const index name = s.blocks[i];
      const auto a = to_physical.find(name);
      if (a == to_physical.end()) {
        ensure(to_model.count(p) == 0, [&] {
          return what + ": physical block " + std::to_string(p) +
                 " holds two blocks the model keeps apart (a missing copy-on-write)" + seq;
        });
        to_physical[name] = p;
        to_model[p] = name;
      } else {
        ensure(a->second == p, [&] {
          return what +
                 ": a block the model shares is two physical blocks "
                 "(an extra copy, or a fork that copied)" +
                 seq;
        });
      }
    }
    // The tokens, read through the table, are the model's bytes.
    for (index j = 0; j < s.length; ++j) {
      const index blk = table[static_cast<std::size_t>(j / bs)];
      for (index h = 0; h < H; ++h) {
        const KV* kr = at(kp, blk, j % bs, h, 0);
        const KV* vr = at(vp, blk, j % bs, h, 0);
        const std::size_t ko = static_cast<std::size_t>((j * H + h) * m.D);
        const std::size_t vo = static_cast<std::size_t>((j * H + h) * m.Dv);
        ensure(std::memcmp(kr, s.k.data() + ko, static_cast<std::size_t>(m.D) * sizeof(KV)) == 0,
               [&] {
                 return what + ": key of token " + std::to_string(j) + " head " +
                        std::to_string(h) + " is not the model's" + seq;
               });
        if (m.Dv > 0)
          ensure(std::memcmp(vr, s.v.data() + vo, static_cast<std::size_t>(m.Dv) * sizeof(KV)) == 0,
                 [&] {
                   return what + ": value of token " + std::to_string(j) + " head " +
                          std::to_string(h) + " is not the model's" + seq;
                 });
      }
    }
  }
  index distinct = 0;
  for (index b = 0; b < nb; ++b) {
    const index u = uses[static_cast<std::size_t>(b)];
    ensure(c.references(b) == u, [&] {
      return what + ": references(" + std::to_string(b) + ") = " + std::to_string(c.references(b)) +
             ", the tables use it " + std::to_string(u) + " times";
    });
    const auto name = to_model.find(static_cast<block_t>(b));
    if (name != to_model.end())
      ensure(m.refs.at(name->second) == u, [&] {
        return what + ": block " + std::to_string(b) +
               " is held by another number of sequences than the model says";
      });
    distinct += u > 0;
  }
  ensure(c.used_blocks() == distinct && c.used_blocks() == m.used(), [&] {
    return what + ": used_blocks() = " + std::to_string(c.used_blocks()) + ", the tables hold " +
           std::to_string(distinct) + ", the model " + std::to_string(m.used());
  });
  ensure(c.used_blocks() + c.free_blocks() == c.num_blocks(),
         [&] { return what + ": used_blocks() + free_blocks() != num_blocks()"; });
}

// ---------------------------------------------------------------------------
// Decoding helpers

// An id for a call: mostly a live sequence, else a freed one, one never
// handed out, a negative one or an extreme one.
template <class KV>
index pick_id(input& in, const pool_model<KV>& m) {
  const std::uint8_t mode = in.u8();
  if (mode < 224 && !m.seqs.empty()) {
    auto it = m.seqs.begin();
    std::advance(it, in.range(0, static_cast<index>(m.seqs.size()) - 1));
    return it->first;
  }
  const index next = m.issued.empty() ? 0 : *m.issued.rbegin() + 1;
  switch (mode % 4) {
    case 0:
      if (!m.freed.empty())
        return m
            .freed[static_cast<std::size_t>(in.range(0, static_cast<index>(m.freed.size()) - 1))];
      return next;
    case 1:
      return next + in.range(0, 2);
    case 2:
      return -1 - in.range(0, 2);
    default:
      return in.coin() ? std::numeric_limits<index>::max() : std::numeric_limits<index>::min();
  }
}

// The sequences of a batched call: usually 1..4 picked ids, sometimes
// none, sometimes every live sequence in order (up to 4), so that the forks
// of one prompt meet in one call. `distinct`: a repeated pick is dropped
// (append refuses repeats; the harness repeats one on purpose).
template <class KV>
std::vector<index> pick_ids(input& in, const pool_model<KV>& m, bool distinct) {
  const std::uint8_t mode = in.u8();
  std::vector<index> ids;
  if (mode >= 240) return ids;
  if (mode >= 192) {
    for (auto it = m.seqs.begin(); it != m.seqs.end() && ids.size() < 4; ++it)
      ids.push_back(it->first);
    return ids;
  }
  for (index i = 0; i < 1 + mode % 4; ++i) {
    const index id = pick_id(in, m);
    if (!distinct || std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(id);
  }
  return ids;
}

// Tokens of one append: usually 1 .. 2·block_size + 3 (decodes, chunks
// across block edges), sometimes 0, sometimes up to past the whole pool.
index token_count(input& in, index bs, index num_blocks) {
  const std::uint8_t mode = in.u8();
  if (mode >= 240) return 0;
  if (mode >= 208) return in.range(0, (num_blocks + 1) * bs);
  return 1 + in.range(0, 2 * bs + 2);
}

// What a call must be refused for: each reason with the text its message
// must contain (one of them, whichever the library checks first).
struct reasons {
  std::vector<std::pair<std::string, std::string>> list;
  void add(const std::string& why, const std::string& needle) { list.emplace_back(why, needle); }
  bool valid() const { return list.empty(); }
  std::string whys() const {
    std::string s;
    for (const auto& r : list) s += (s.empty() ? "" : ", ") + r.first;
    return s;
  }
};

// Runs a call and checks its outcome against the reasons; after a refusal
// the cache must be as it was. Returns true when the call succeeded.
template <class KV, class F>
bool run_call(const char* label, F&& f, const reasons& r, const attn::paged_kv_cache<KV>& c,
              const cache_state<KV>& before) {
  std::string message;
  const outcome got = call(label, f, &message);
  if (verbose())
    std::fprintf(stderr, "  %s: %s -> %s\n", label, r.valid() ? "valid" : r.whys().c_str(),
                 got == outcome::ok ? "ok" : message.c_str());
  expect_outcome(label, got, r.valid(), r.whys(), message);
  if (got == outcome::ok) return true;
  bool named = false;
  for (const auto& x : r.list) named = named || message.find(x.second) != std::string::npos;
  ensure(named, [&] {
    return std::string(label) + ": the error for " + r.whys() + " names none of it: " + message;
  });
  expect_unchanged(c, before, std::string("failed ") + label);
  return false;
}

// Cumulative lengths of counts.
std::vector<index> cumulative(const std::vector<index>& n) {
  std::vector<index> cu{0};
  for (index x : n) cu.push_back(cu.back() + x);
  return cu;
}

bool has_duplicates(const std::vector<index>& ids) {
  return std::set<index>(ids.begin(), ids.end()).size() != ids.size();
}

// Breaks one cu_seqlens (with `total` rows behind it): a first entry that is
// not 0, a decreasing entry, a last entry past the rows, no entries.
void break_cu(input& in, std::vector<index>& cu) {
  switch (in.u8() % 4) {
    case 0:
      cu.front() = 1 + in.range(0, 2);
      break;
    case 1:
      if (cu.size() >= 3) {
        const std::size_t i =
            static_cast<std::size_t>(in.range(1, static_cast<index>(cu.size()) - 2));
        cu[i] = cu[i + 1] + 1;  // above its successor
      } else {
        cu.back() += 1;
      }
      break;
    case 2:
      cu.back() += 1 + in.range(0, 2);
      break;
    default:
      cu.clear();
      break;
  }
}

// ---------------------------------------------------------------------------
// The appends

// Fills a tensor's view with tame PRNG values in [-1, 1).
ATTN_FUZZ_NO_COVERAGE void fill_plain(input& in, laid_out<float, 3>& t) {
  std::vector<float> v(static_cast<std::size_t>(t.size()));
  rng g{in.u32()};
  attn_fuzz::detail::fill_tame(v.data(), t.size(), g, 1.0f);
  copy_in(t, v);
}

// Lays out and fills k_new [rows, Hkv, D] and v_new [rows, Hkv, Dv].
struct new_rows {
  laid_out<float, 3> k, v;
  attn::strided<const float, 3> kv, vv;  // what the call gets (maybe broken)
};
new_rows make_rows(input& in, index rows, index Hkv, index D, index Dv) {
  new_rows r;
  r.k = lay_out<float, 3>(in, {rows, Hkv, D}, layout_use::input,
                          std::numeric_limits<float>::quiet_NaN());
  r.v = lay_out<float, 3>(in, {rows, Hkv, Dv}, layout_use::input,
                          std::numeric_limits<float>::quiet_NaN());
  // Mostly tame values: a NaN or inf, once appended, stays in the cache and
  // sends every later row over it through the library's slow fp64 redo of
  // non-finite rows (the exec rate halved); fill()'s specials for 1 in 4.
  const bool special = in.chance(64);
  if (special) {
    fill(in, r.k);
    fill(in, r.v);
  } else {
    fill_plain(in, r.k);
    fill_plain(in, r.v);
  }
  if (known_paged::append_null_zero_width_offsets && rows > 0 &&
      !r.v.view.data) {  // steer around P2
    static const float dummy = 0.0f;
    r.v.view.data = const_cast<float*>(&dummy);
  }
  r.kv = r.k.view;
  r.vv = r.v.view;
  return r;
}

// Breaks of k_new / v_new other than their row count; `kind` picks one.
// Returns false when the kind does not apply to these sizes.
template <class KV>
bool break_rows(int kind, new_rows& r, const attn::paged_kv_cache<KV>& c, reasons& why) {
  const index Hkv = c.kv_heads(), D = c.head_dim(), Dv = c.v_head_dim();
  const index rows = r.kv.dims[0];
  const std::size_t slot_bytes =
      static_cast<std::size_t>(c.num_blocks() * c.block_size()) * sizeof(KV);
  switch (kind) {
    case 0:
      r.kv.dims[1] = Hkv + 1;
      why.add("k_new heads", "k_new");
      return true;
    case 1:
      r.kv.dims[2] = D + 1;
      why.add("k_new head dim", "k_new");
      return true;
    case 2:
      r.vv.dims[2] = Dv + 1;
      why.add("v_new head dim", "v_new");
      return true;
    case 3:
      r.vv.dims[0] = rows + 1;
      why.add("v_new rows", "v_new");
      return true;  // (or null data now with rows)
    case 4:
      r.kv.strides[2] = 2;
      why.add("k_new last stride", "k_new");
      return true;
    case 5:
      r.kv.dims[0] = -1;
      why.add("k_new negative extent", "k_new");
      return true;
    case 6:
      if (rows == 0) return false;
      r.kv.data = nullptr;
      why.add("null k_new", "k_new");
      return true;
    case 7:
      if (rows == 0 || Dv == 0) return false;
      r.vv.data = nullptr;
      why.add("null v_new", "v_new");
      return true;
    // k_new (v_new) one row read from the start of its pool, the other one
    // row of its own. The pool holds num_blocks · block_size · heads · dim
    // elements of KV, the row heads · dim floats: it fits when
    // num_blocks · block_size · sizeof(KV) >= sizeof(float).
    case 8:
      if (rows == 0 || slot_bytes < sizeof(float)) return false;
      r.kv.data = reinterpret_cast<const float*>(c.key_pool().data);
      r.kv.dims = {1, Hkv, D};
      r.kv.strides = {Hkv * D, D, 1};
      r.vv.dims[0] = 1;
      why.add("k_new inside the key pool", "key_pool()");
      return true;
    default:
      if (rows == 0 || Dv == 0 || slot_bytes < sizeof(float)) return false;
      r.vv.data = reinterpret_cast<const float*>(c.value_pool().data);
      r.vv.dims = {1, Hkv, Dv};
      r.vv.strides = {Hkv * Dv, Dv, 1};
      r.kv.dims[0] = 1;
      why.add("v_new inside the value pool", "value_pool()");
      return true;
  }
}

// Reasons the pool and the ids give for refusing appends of n[i] tokens to
// ids[i] (the shapes and cu_seqlens fine).
template <class KV>
void append_reasons(const pool_model<KV>& m, const std::vector<index>& ids,
                    const std::vector<index>& n, reasons& why) {
  bool all_live = true;
  for (index id : ids)
    if (!m.live(id)) all_live = false;
  if (!all_live) why.add("a dead sequence", "sequence");
  if (has_duplicates(ids)) why.add("a sequence twice", "distinct");
  if (!all_live || has_duplicates(ids)) return;
  const index exact = m.exact_need(ids, n), counted = m.counted_need(ids, n);
  if (exact > m.free_blocks())
    why.add("past the pool (" + std::to_string(exact) + " blocks, " +
                std::to_string(m.free_blocks()) + " free)",
            "the pool");
  else if (known_paged::batch_append_overcounts_copies && counted > m.free_blocks())
    why.add("P1: counted " + std::to_string(counted) + " blocks, " +
                std::to_string(m.free_blocks()) + " free",
            "the pool");
}

// ---------------------------------------------------------------------------
// attend

// Invariant 3 for a successful attend: the bits of varlen_attention over the
// model's tokens, and finite rows for finite inputs.
template <class KV>
ATTN_FUZZ_NO_COVERAGE void check_attend(const pool_model<KV>& m, const std::vector<index>& ids,
                                        const std::vector<index>& cu_q, const laid_out<float, 3>& q,
                                        const attn::sdpa_options& opt, index Hq,
                                        const std::vector<float>& out,
                                        const std::vector<float>& lse, bool with_lse) {
  const index Hkv = m.Hkv, D = m.D, Dv = m.Dv, total_q = cu_q.back(), group = Hq / Hkv;
  std::vector<index> cu_k{0};
  std::vector<KV> k, v;
  for (index id : ids) {
    const seq_model<KV>& s = m.seqs.at(id);
    k.insert(k.end(), s.k.begin(), s.k.end());
    v.insert(v.end(), s.v.begin(), s.v.end());
    cu_k.push_back(cu_k.back() + s.length);
  }
  const index total_k = cu_k.back();
  const attn::strided<const KV, 3> kview{k.data(), {total_k, Hkv, D}, {Hkv * D, D, 1}};
  const attn::strided<const KV, 3> vview{v.data(), {total_k, Hkv, Dv}, {Hkv * Dv, Dv, 1}};
  std::vector<float> ref_out(static_cast<std::size_t>(total_q * Hq * Dv), sentinel());
  std::vector<float> ref_lse(static_cast<std::size_t>(Hq * total_q), sentinel());
  attn::sdpa_options o = opt;
  o.causal = attn::causal::bottom_right;
  o.num_threads = 1;
  o.lse =
      with_lse
          ? attn::strided<float, 3>{ref_lse.data(), {1, Hq, total_q}, {Hq * total_q, total_q, 1}}
          : attn::strided<float, 3>{};
  const attn::strided<float, 3> oview{ref_out.data(), {total_q, Hq, Dv}, {Hq * Dv, Dv, 1}};
  std::string message;
  const outcome got = call(
      "varlen_attention (reference)",
      [&] { attn::varlen_attention(q.cview(), kview, vview, oview, cu_q, cu_k, o); }, &message);
  expect_outcome("varlen_attention (reference)", got, true, "", message);
  for (std::size_t i = 0; i < ref_out.size(); ++i)
    if (bits(out[i]) != bits(ref_out[i]))
      fail("attend differs from varlen_attention over the model's tokens at output element " +
           std::to_string(i) + ": " + std::to_string(out[i]) + " vs " + std::to_string(ref_out[i]) +
           " (threads " + std::to_string(opt.num_threads) + ")");
  if (with_lse)
    for (std::size_t i = 0; i < ref_lse.size(); ++i)
      if (bits(lse[i]) != bits(ref_lse[i]))
        fail("attend's LSE differs from varlen_attention's at element " + std::to_string(i) + ": " +
             std::to_string(lse[i]) + " vs " + std::to_string(ref_lse[i]));
  // Finite rows: the query row, and every key and value of its KV head up
  // to its position, finite.
  for (std::size_t i = 0; i < ids.size(); ++i) {
    const seq_model<KV>& s = m.seqs.at(ids[i]);
    const index L = cu_q[i + 1] - cu_q[i];
    std::vector<index> finite_prefix(static_cast<std::size_t>(Hkv), s.length);
    for (index h = 0; h < Hkv; ++h)
      for (index j = 0; j < s.length; ++j) {
        bool ok = true;
        for (index d = 0; d < D; ++d)
          ok = ok && std::isfinite(
                         static_cast<float>(s.k[static_cast<std::size_t>((j * Hkv + h) * D + d)]));
        for (index d = 0; d < Dv; ++d)
          ok = ok && std::isfinite(
                         static_cast<float>(s.v[static_cast<std::size_t>((j * Hkv + h) * Dv + d)]));
        if (!ok) {
          finite_prefix[static_cast<std::size_t>(h)] = j;
          break;
        }
      }
    for (index r = 0; r < L; ++r) {
      const index row = cu_q[i] + r, pos = s.length - L + r;
      for (index h = 0; h < Hq; ++h) {
        if (pos >= finite_prefix[static_cast<std::size_t>(h / group)]) continue;
        bool q_finite = true;
        for (index d = 0; d < D; ++d) q_finite = q_finite && std::isfinite(*at(q.view, row, h, d));
        if (!q_finite) continue;
        for (index d = 0; d < Dv; ++d)
          ensure(std::isfinite(out[static_cast<std::size_t>((row * Hq + h) * Dv + d)]), [&] {
            return "attend: finite inputs gave " +
                   std::to_string(out[static_cast<std::size_t>((row * Hq + h) * Dv + d)]) +
                   " at query row " + std::to_string(row) + " head " + std::to_string(h);
          });
        if (with_lse)
          ensure(std::isfinite(lse[static_cast<std::size_t>(h * total_q + row)]), [&] {
            return "attend: finite inputs gave LSE " +
                   std::to_string(lse[static_cast<std::size_t>(h * total_q + row)]) +
                   " at query row " + std::to_string(row) + " head " + std::to_string(h);
          });
      }
    }
  }
}

// The elements of a laid-out output in row-major order; the buffer reset
// to the sentinel for the next call.
ATTN_FUZZ_NO_COVERAGE std::vector<float> take_output(laid_out<float, 3>& t) {
  std::vector<float> v(static_cast<std::size_t>(t.size()));
  for (index i = 0; i < t.size(); ++i) v[static_cast<std::size_t>(i)] = t[i];
  for (std::size_t i = 0; i < t.buffer.size(); ++i) t.buffer[i] = sentinel();
  return v;
}

// ---------------------------------------------------------------------------
// The run

template <class KV>
void run(input& in) {
  KV* tag = nullptr;
  // --- the pool ---------------------------------------------------------------------
  static constexpr index kBlockSizes[] = {16, 1, 4, 2, 8, 32, 64, 16, 1, 3, 5, 7, 6, 0, 24, 2};
  index bs = in.pick(kBlockSizes);
  const index num_blocks = in.range(0, 12);
  const index Hkv = in.range(1, 3), group = in.range(1, 3), Hq = Hkv * group;
  static constexpr index kDims[] = {4, 1, 2, 3, 5, 8, 16, 7, 4, 1, 2, 32, 6, 4, 8, 13};
  const index D = in.pick(kDims);
  index v_arg = -1;  // the constructor's v_head_dim: -1 = d_qk
  if (in.chance(48)) {
    static constexpr index kVDims[] = {1, 2, 3, 5, 8, 0, -2, 16};
    v_arg = in.pick(kVDims);
  }
  const index Dv = v_arg < 0 ? D : v_arg;
  std::string message;
  if (!attn::detail::paged::is_power_of_two(bs)) {
    // Non-powers of two are refused; then the largest power of two below.
    const outcome got = call(
        "paged_kv_cache(block_size)",
        [&] { attn::paged_kv_cache<KV> c(num_blocks, bs, Hkv, D, v_arg); }, &message);
    expect_outcome("paged_kv_cache(block_size)", got, false, "block_size " + std::to_string(bs),
                   message);
    ensure(message.find("block_size") != std::string::npos,
           [&] { return "paged_kv_cache: error does not name block_size: " + message; });
    index p = 1;
    while (p * 2 <= bs) p *= 2;
    bs = p;
  }
  if (in.chance(12)) {  // one other bad size
    index a[4] = {num_blocks, bs, Hkv, D};
    const char* needle = "";
    switch (in.u8() % 6) {
      case 0:
        a[0] = -1 - in.range(0, 2);
        needle = "num_blocks";
        break;
      case 1:
        a[0] = index{1} << 31;
        needle = "num_blocks";
        break;
      case 2:
        a[2] = -in.range(0, 2);
        needle = "kv_heads";
        break;
      case 3:
        a[3] = -in.range(0, 2);
        needle = "head_dim";
        break;
      case 4:
        a[1] = index{1} << 62;
        needle = "block_size";
        break;  // one block past the address space
      default:
        a[0] = (index{1} << 31) - 1, a[1] = index{1} << 32;
        needle = "num_blocks";
        break;
    }
    const outcome got = call(
        "paged_kv_cache(sizes)", [&] { attn::paged_kv_cache<KV> c(a[0], a[1], a[2], a[3], v_arg); },
        &message);
    expect_outcome("paged_kv_cache(sizes)", got, false, needle, message);
    ensure(message.find(needle) != std::string::npos, [&] {
      return std::string("paged_kv_cache: error does not name ") + needle + ": " + message;
    });
  }
  if (verbose())
    std::fprintf(stderr, "%s: %ld blocks of %ld, Hkv %ld Hq %ld D %ld Dv %ld\n", storage_name(tag),
                 long(num_blocks), long(bs), long(Hkv), long(Hq), long(D), long(Dv));
  attn::paged_kv_cache<KV> cache(num_blocks, bs, Hkv, D, v_arg);
  ensure(
      cache.num_blocks() == num_blocks && cache.block_size() == bs && cache.kv_heads() == Hkv &&
          cache.head_dim() == D && cache.v_head_dim() == Dv && cache.free_blocks() == num_blocks &&
          cache.used_blocks() == 0 && cache.sequences().empty() &&
          cache.bytes() == static_cast<std::size_t>(num_blocks * bs * Hkv * (D + Dv)) * sizeof(KV),
      [&] { return "paged_kv_cache reports the wrong sizes"; });
  pool_model<KV> m;
  m.num_blocks = num_blocks;
  m.bs = bs;
  m.Hkv = Hkv;
  m.D = D;
  m.Dv = Dv;

  // --- operations -------------------------------------------------------------------
  const index n_ops = in.range(1, 24);
  for (index op_i = 0; op_i < n_ops && in.remaining() > 0; ++op_i) {
    const cache_state<KV> before = state_of(cache);
    // Appends and attends most often, lookups least; with no live sequence
    // mostly an add (the calls on dead ids come from pick_id all the same).
    static constexpr std::uint8_t kOps[] = {0, 1, 2, 3, 4, 5, 6, 2, 4, 3, 1, 2, 4, 3, 0, 7};
    const std::uint8_t op_byte = in.u8();
    const std::uint8_t op = m.seqs.empty() && op_byte < 224 ? 0 : kOps[op_byte % 16];
    if (verbose()) {
      std::fprintf(stderr, "op %d, free %ld, lengths:", op, long(cache.free_blocks()));
      for (const auto& e : m.seqs)
        std::fprintf(stderr, " %ld:%ld", long(e.first), long(e.second.length));
      std::fprintf(stderr, "\n");
    }
    if (op == 0) {
      index id = -1;
      if (!run_call(
              "paged_kv_cache::add_sequence", [&] { id = cache.add_sequence(); }, reasons{}, cache,
              before))
        continue;
      ensure(m.issued.count(id) == 0,
             [&] { return "add_sequence reused id " + std::to_string(id); });
      m.add(id);
      expect_model(cache, m, "add_sequence");
    } else if (op == 1) {
      const index src = pick_id(in, m);
      reasons why;
      if (!m.live(src)) why.add("fork of dead sequence " + std::to_string(src), "sequence");
      index id = -1;
      if (!run_call(
              "paged_kv_cache::fork", [&] { id = cache.fork(src); }, why, cache, before))
        continue;
      ensure(m.issued.count(id) == 0, [&] { return "fork reused id " + std::to_string(id); });
      m.fork(src, id);
      expect_model(cache, m, "fork");
    } else if (op == 2) {
      // append(s, k_new, v_new)
      const int brk = in.chance(40) ? in.u8() % 10 : -1;
      const index id = pick_id(in, m);
      const index T = token_count(in, bs, num_blocks);
      new_rows r = make_rows(in, T, Hkv, D, Dv);
      reasons why;
      // The library checks the shapes first, the ids and the pool next, the
      // overlap with the pool last: a shape break is the only reason it
      // reports, an overlap may come after the others.
      const bool shape_broken = brk >= 0 && brk < 8 && break_rows(brk, r, cache, why);
      if (brk >= 8) break_rows(brk, r, cache, why);
      if (!shape_broken) append_reasons(m, {id}, {r.kv.dims[0]}, why);
      if (!run_call(
              "paged_kv_cache::append", [&] { cache.append(id, r.kv, r.vv); }, why, cache, before))
        continue;
      m.append(id, r.kv, r.vv, 0, T);
      expect_model(cache, m, "append");
    } else if (op == 3) {
      // append(seqs, k_new, v_new, cu_seqlens)
      const int brk = in.chance(48) ? in.u8() % 16 : -1;
      std::vector<index> ids = pick_ids(in, m, true), n;
      for (std::size_t i = 0; i < ids.size(); ++i) n.push_back(token_count(in, bs, num_blocks));
      std::vector<index> cu = cumulative(n);
      new_rows r = make_rows(in, cu.back(), Hkv, D, Dv);
      reasons why;
      bool early = false;  // a reason the library finds before the ids and the pool
      if (brk >= 0 && brk < 8) {
        early = break_rows(brk, r, cache, why);
      } else if (brk >= 8 && brk < 10) {
        if (break_rows(brk, r, cache, why)) {
          // One row now: the first sequence takes it.
          n.assign(ids.size(), 0);
          if (!n.empty()) n[0] = 1;
          cu = cumulative(n);
          if (ids.empty()) why.add("one row for no sequence", "cu_seqlens"), early = true;
        }
      } else if (brk >= 10 && brk < 13) {
        break_cu(in, cu);
        why.add("bad cu_seqlens", "cu_seqlens");
        early = true;
      } else if (brk == 13) {
        ids.push_back(pick_id(in, m));
        why.add("seqs.size() > batch", "seqs.size()");
        early = true;
      } else if (brk == 14 && !ids.empty()) {
        ids.pop_back();
        why.add("seqs.size() < batch", "seqs.size()");
        early = true;
      } else if (brk == 15 && ids.size() >= 2) {
        ids[1] = ids[0];  // append_reasons names it
      }
      if (!early) append_reasons(m, ids, n, why);
      if (verbose()) {
        std::fprintf(stderr, "  batch:");
        for (std::size_t i = 0; i < ids.size(); ++i)
          std::fprintf(stderr, " %ld+%ld", long(ids[i]), long(i < n.size() ? n[i] : -1));
        std::fprintf(stderr, "\n");
      }
      if (!run_call(
              "paged_kv_cache::append(batch)", [&] { cache.append(ids, r.kv, r.vv, cu); }, why,
              cache, before))
        continue;
      for (std::size_t i = 0; i < ids.size(); ++i) m.append(ids[i], r.kv, r.vv, cu[i], n[i]);
      expect_model(cache, m, "append(batch)");
    } else if (op == 4) {
      // attend(seqs, q, cu_seqlens_q, out, opt)
      const int brk = in.chance(48) ? in.u8() % 17 : -1;
      std::vector<index> ids = pick_ids(in, m, false), L;
      const index Lmax = in.chance(40) ? 40 : 8;
      reasons why;
      for (index id : ids) {
        // Queries: a decode (1) most often, up to Lmax (prefill chunks), or none.
        const index len = m.live(id) ? m.length(id) : 0;
        L.push_back(len == 0 || in.chance(24) ? 0 : 1 + in.range(0, std::min(len, Lmax) - 1));
        if (!m.live(id) && why.valid()) why.add("attend a dead sequence", "sequence");
      }
      // A bound on the attention's work (Σ queries · keys · heads_q · (d_qk +
      // d_v)), so that an input stays fast under the sanitizers: the longest
      // query runs are halved until it holds (decodes stay).
      auto work = [&] {
        index w = 0;
        for (std::size_t i = 0; i < ids.size(); ++i)
          if (m.live(ids[i])) w += L[i] * m.length(ids[i]) * Hq * (D + Dv);
        return w;
      };
      while (work() > (index{1} << 15)) {
        const auto longest = std::max_element(L.begin(), L.end());
        if (*longest <= 1) break;
        *longest /= 2;
      }
      if (brk == 0 && !ids.empty() && m.live(ids[0])) {
        L[0] = m.length(ids[0]) + 1 + in.range(0, 2);
        why.add("more queries than tokens", "cu_seqlens_q");
      }
      std::vector<index> cu = cumulative(L);
      const index total_q = cu.back();
      attn::sdpa_options opt;
      static constexpr int kThreads[] = {1, 2, 1, 2, 0};
      opt.num_threads = in.pick(kThreads);
      static constexpr float kScales[] = {0, 0, 0, 0, 1.0f, 0.125f, 3.0f, -0.5f};
      if (const float s = in.pick(kScales); s != 0) opt.scale = s;
      if (in.chance(40))
        opt.window = attn::sliding_window{
            in.range(0, 8), in.range(0, 3),
            in.coin() ? attn::alignment::top_left : attn::alignment::bottom_right};
      if (in.chance(40)) {
        static constexpr float kCaps[] = {5.0f, 30.0f, 0.5f, 1e-3f};
        opt.softcap = in.pick(kCaps);
      }
      if (in.chance(32)) {
        static constexpr float kSlopes[] = {0.5f, 0.0625f, 1.0f, 0.0f, -0.25f, 100.0f};
        for (index h = 0; h < Hq; ++h) opt.alibi_slopes.push_back(in.pick(kSlopes));
      }
      if (in.chance(32)) {
        static constexpr float kSinks[] = {0.0f, 1.0f, -2.0f, 5.0f, -30.0f, 80.0f};
        for (index h = 0; h < Hq; ++h) opt.sinks.push_back(in.pick(kSinks));
      }
      laid_out<float, 3> q = lay_out<float, 3>(in, {total_q, Hq, D}, layout_use::input,
                                               std::numeric_limits<float>::quiet_NaN());
      fill(in, q);
      laid_out<float, 3> out =
          lay_out<float, 3>(in, {total_q, Hq, Dv}, layout_use::output, sentinel());
      const bool with_lse = in.coin();
      laid_out<float, 3> lse;
      if (with_lse) {
        lse = lay_out<float, 3>(in, {1, Hq, total_q}, layout_use::output, sentinel());
        opt.lse = lse.view;
      }
      attn::strided<const float, 3> qv = q.view;
      attn::strided<float, 3> ov = out.view;
      alias_arena arena;
      const std::size_t key_pool_bytes =
          static_cast<std::size_t>(num_blocks * bs * Hkv * D) * sizeof(KV);
      switch (brk) {
        case 1:
          opt.causal = in.coin() ? attn::causal::top_left : attn::causal::bottom_right;
          why.add("causal set", "opt.causal");
          break;
        case 2:
          opt.key_lengths.assign(ids.size() + 1, 0);
          why.add("key_lengths set", "key_lengths");
          break;
        case 3:
          opt.num_threads = -1 - static_cast<int>(in.range(0, 2));
          why.add("num_threads < 0", "num_threads");
          break;
        case 4:
          opt.scale = in.coin() ? std::numeric_limits<float>::quiet_NaN()
                                : std::numeric_limits<float>::infinity();
          why.add("scale not finite", "scale");
          break;
        case 5:
          opt.softcap = in.coin() ? -1.0f : std::numeric_limits<float>::infinity();
          why.add("bad softcap", "softcap");
          break;
        case 6:
          opt.sinks.assign(static_cast<std::size_t>(Hq + 1), 0.0f);
          why.add("sinks size", "sinks");
          break;
        case 7:
          qv.dims[2] = D + 1;
          why.add("q head dim", "q.dims[2]");
          break;
        case 8:
          qv.dims[1] = Hkv > 1 ? Hq + 1 : 0;
          why.add("heads_q", "heads_q");
          break;
        case 9:
          ov.dims[2] = Dv + 1;
          why.add("out dims", ": out: expected");
          break;
        case 10:
          // (a null lse is no lse, whatever its dims: sdpa_options)
          if (with_lse && opt.lse.data)
            opt.lse.dims[2] = total_q + 1, why.add("lse dims", "opt.lse");
          break;
        case 11:
          break_cu(in, cu);
          why.add("bad cu_seqlens_q", "cu_seqlens_q");
          break;
        case 12:
          if (in.coin())
            ids.push_back(pick_id(in, m)), why.add("seqs.size() > batch", "seqs.size()");
          else if (!ids.empty())
            ids.pop_back(), why.add("seqs.size() < batch", "seqs.size()");
          break;
        case 13: {
          breakage br;
          break_by_alias(arena, br, ov, "out", qv, "q");
          if (!br.valid) why.add(br.why, br.needle);
          break;
        }
        case 14:
          if (with_lse) {
            breakage br;
            break_by_alias(arena, br, opt.lse, "opt.lse", ov, "out");
            if (!br.valid) why.add(br.why, br.needle);
          }
          break;
        case 15:  // out inside the key pool: a write there would show in the snapshot
          if (total_q > 0 && Dv > 0 &&
              static_cast<std::size_t>(total_q * Hq * Dv) * sizeof(float) <= key_pool_bytes) {
            ov.data = reinterpret_cast<float*>(const_cast<KV*>(cache.key_pool().data));
            ov.strides = {Hq * Dv, Dv, 1};
            why.add("out inside the key pool", "key_pool()");
          }
          break;
        case 16:
          if (in.coin())
            qv.strides[2] = 2, why.add("q last stride", "q.strides[2]");
          else if (total_q > 0)
            qv.data = nullptr, why.add("null q", ": q: expected a non-null");
          break;
        default:
          break;
      }
      if (Dv == 0) why.add("d_v 0", "d_v");
      const int threads = opt.num_threads;
      if (verbose()) {
        std::fprintf(stderr, "  attend:");
        for (std::size_t i = 0; i < ids.size(); ++i)
          std::fprintf(stderr, " %ld<-%ld", long(ids[i]), long(i < L.size() ? L[i] : -1));
        std::fprintf(stderr,
                     " | threads %d scale %g window %d softcap %g alibi %d sinks %d lse %d\n",
                     threads, opt.scale ? double(*opt.scale) : -1.0, int(bool(opt.window)),
                     double(opt.softcap), int(!opt.alibi_slopes.empty()), int(!opt.sinks.empty()),
                     int(with_lse));
        dump("q", q);
      }
      const bool ok = run_call(
          "paged_kv_cache::attend", [&] { cache.attend(ids, qv, cu, ov, opt); }, why, cache,
          before);
      if (!ok) continue;
      expect_unchanged(cache, before, "attend");
      check_written_exactly(out, "attend: out");
      if (with_lse) check_written_exactly(lse, "attend: lse");
      const std::vector<float> out1 = take_output(out);
      const std::vector<float> lse1 = with_lse ? take_output(lse) : std::vector<float>{};
      // The other thread count: the same bits.
      opt.num_threads = threads == 1 ? 2 : 1;
      std::string msg2;
      const outcome got2 = call(
          "paged_kv_cache::attend (other threads)", [&] { cache.attend(ids, qv, cu, ov, opt); },
          &msg2);
      expect_outcome("paged_kv_cache::attend (other threads)", got2, true, "", msg2);
      check_written_exactly(out, "attend (other threads): out");
      const std::vector<float> out2 = take_output(out);
      for (std::size_t i = 0; i < out1.size(); ++i)
        ensure(bits(out1[i]) == bits(out2[i]), [&] {
          return "attend: threads " + std::to_string(threads) + " and " +
                 std::to_string(opt.num_threads) + " differ at output element " + std::to_string(i);
        });
      if (with_lse) {
        check_written_exactly(lse, "attend (other threads): lse");
        const std::vector<float> lse2 = take_output(lse);
        for (std::size_t i = 0; i < lse1.size(); ++i)
          ensure(bits(lse1[i]) == bits(lse2[i]),
                 [&] { return "attend: threads change LSE element " + std::to_string(i); });
      }
      opt.num_threads = threads;
      opt.lse = {};
      check_attend(m, ids, cu, q, opt, Hq, out1, lse1, with_lse);
      expect_unchanged(cache, before, "attend (other threads)");
    } else if (op == 5) {
      const index id = pick_id(in, m);
      const index len0 = m.live(id) ? m.length(id) : 0;
      index len = in.range(0, len0);
      reasons why;
      if (in.chance(40)) {
        if (in.coin())
          len = len0 + 1 + in.range(0, 2), why.add("past the length", "length");
        else
          len = in.coin() ? -1 - in.range(0, 2) : std::numeric_limits<index>::min(),
          why.add("negative", "length");
      }
      if (!m.live(id)) why.add("truncate a dead sequence", "sequence");
      if (verbose()) std::fprintf(stderr, "  truncate(%ld, %ld)\n", long(id), long(len));
      if (!run_call(
              "paged_kv_cache::truncate", [&] { cache.truncate(id, len); }, why, cache, before))
        continue;
      m.truncate(id, len);
      expect_model(cache, m, "truncate");
    } else if (op == 6) {
      const index id = pick_id(in, m);
      reasons why;
      if (!m.live(id)) why.add("free a dead sequence", "sequence");
      if (verbose()) std::fprintf(stderr, "  free(%ld)\n", long(id));
      if (!run_call(
              "paged_kv_cache::free", [&] { cache.free(id); }, why, cache, before))
        continue;
      m.free(id);
      expect_model(cache, m, "free");
    } else {
      // Lookups, which change nothing.
      const index id = pick_id(in, m);
      reasons dead;
      if (!m.live(id)) dead.add("a dead sequence", "sequence");
      ensure(cache.contains(id) == m.live(id),
             [&] { return "contains(" + std::to_string(id) + ") is not the model's"; });
      index len = -1;
      if (run_call(
              "paged_kv_cache::length", [&] { len = cache.length(id); }, dead, cache, before))
        ensure(len == m.length(id), [&] { return "length() is not the model's"; });
      std::size_t entries = 0;
      if (run_call(
              "paged_kv_cache::block_table", [&] { entries = cache.block_table(id).size(); }, dead,
              cache, before))
        ensure(entries == m.seqs.at(id).blocks.size(),
               [&] { return "block_table() has the wrong size"; });
      static constexpr index kBlocks[] = {0, -1, 1,  std::numeric_limits<index>::min(),
                                          2, 11, 12, 100};
      index b = in.pick(kBlocks);
      if (b == 100) b = num_blocks;
      reasons outside;
      if (b < 0 || b >= num_blocks) outside.add("block outside the pool", "block");
      index refs = -1;
      if (run_call(
              "paged_kv_cache::references", [&] { refs = cache.references(b); }, outside, cache,
              before))
        ensure(refs >= 0, [&] { return "references() < 0"; });
      expect_unchanged(cache, before, "lookups");
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  input in(data, size);
  switch (in.u8() % 3) {
    case 0:
      run<float>(in);
      break;
    case 1:
      run<Eigen::bfloat16>(in);
      break;
    default:
      run<Eigen::half>(in);
      break;
  }
  return 0;
}
