// The problems both translation units solve (included by each of them).
//
// Everything here has internal linkage (an unnamed namespace): an inline
// function would be one symbol in both units, the linker would keep one
// unit's copy for both, and both would run the same instruction set's code,
// which is what this test must tell apart.
#pragma once

#include <attn/kv_cache.hpp>
#include <attn/mla.hpp>
#include <attn/mla_cache.hpp>
#include <attn/sdpa.hpp>
#include <typeinfo>
#include <vector>

#include "run_in_tu.hpp"

#define ABI_TEST_STRING(x) ABI_TEST_STRING_(x)
#define ABI_TEST_STRING_(x) #x

namespace abi_test {
namespace {

using tensor4 = Eigen::Tensor<float, 4, Eigen::RowMajor>;

std::vector<float> solve() {
  tensor4 q(1, 300, 2, 40), k(1, 300, 2, 40), v(1, 300, 2, 24);
  for (Eigen::Index i = 0; i < q.size(); ++i) q.data()[i] = static_cast<float>((i * 7919) % 97) / 97.0f;
  for (Eigen::Index i = 0; i < k.size(); ++i) k.data()[i] = static_cast<float>((i * 104729) % 89) / 89.0f;
  for (Eigen::Index i = 0; i < v.size(); ++i) v.data()[i] = static_cast<float>((i * 31) % 83) / 83.0f;
  attn::sdpa_options opt;
  opt.causal = attn::causal::bottom_right;
  const tensor4 out = attn::scaled_dot_product_attention(q, k, v, opt);
  return std::vector<float>(out.data(), out.data() + out.size());
}

// Deterministic values in [-scale/2, scale/2).
void fill(float* data, Eigen::Index n, Eigen::Index prime, Eigen::Index mod, float scale = 1.0f) {
  for (Eigen::Index i = 0; i < n; ++i)
    data[i] = scale * (static_cast<float>((i * prime) % mod) / static_cast<float>(mod) - 0.5f);
}

void append(std::vector<float>& to, const float* data, Eigen::Index n) {
  to.insert(to.end(), data, data + n);
}

// kv_cache::attend over a 300-token prefill, then over one decoded token
// (the flash and the split-KV kernels), next to the same two attentions
// through scaled_dot_product_attention. With attend() in this unit's ISA
// namespace the two agree to the bit; were attend() shared between the
// units, one unit's attend would give the other unit's bits.
void solve_kv_cache(cache_run& r) {
  const Eigen::Index S = 300, Hq = 4, Hkv = 2, D = 40, Dv = 24;
  tensor4 q(1, S + 1, Hq, D), k(1, S + 1, Hkv, D), v(1, S + 1, Hkv, Dv);
  fill(q.data(), q.size(), 7919, 97);
  fill(k.data(), k.size(), 104729, 89);
  fill(v.data(), v.size(), 31, 83);
  using cache_type = attn::kv_cache<float>;
  cache_type cache(1, 320, Hkv, D, Dv);
  // attend() through a pointer the compiler cannot see through: the call
  // then goes to the out-of-line attend() the linker keeps, which an ODR
  // merge would replace (an inlined copy would hide the merge).
  using attend_fn = void (cache_type::*)(attn::strided<const float, 4>, attn::strided<float, 4>,
                                         const attn::sdpa_options&,
                                         const std::vector<attn::index>&) const;
  attend_fn volatile attend_ptr = &cache_type::attend;
  const attend_fn attend = attend_ptr;
  attn::sdpa_options causal;
  causal.causal = attn::causal::bottom_right;
  for (const Eigen::Index T : {S, Eigen::Index{1}}) {
    const Eigen::Index n = cache.lengths()[0] + T;  // tokens once these T are in
    const Eigen::array<Eigen::Index, 4> at{0, n - T, 0, 0};
    const tensor4 q_new = q.slice(at, Eigen::array<Eigen::Index, 4>{1, T, Hq, D});
    const tensor4 k_new = k.slice(at, Eigen::array<Eigen::Index, 4>{1, T, Hkv, D});
    const tensor4 v_new = v.slice(at, Eigen::array<Eigen::Index, 4>{1, T, Hkv, Dv});
    cache.append(attn::bshd(k_new), attn::bshd(v_new));
    tensor4 out(1, T, Hq, Dv);
    (cache.*attend)(attn::bshd(q_new), attn::bshd(out), attn::sdpa_options{}, {});
    append(r.attend, out.data(), out.size());

    const Eigen::array<Eigen::Index, 4> first{0, 0, 0, 0};
    const tensor4 k_all = k.slice(first, Eigen::array<Eigen::Index, 4>{1, n, Hkv, D});
    const tensor4 v_all = v.slice(first, Eigen::array<Eigen::Index, 4>{1, n, Hkv, Dv});
    const tensor4 direct = attn::scaled_dot_product_attention(q_new, k_all, v_all, causal);
    append(r.direct, direct.data(), direct.size());
  }
}

// multi_head_latent_attention writing and reading an mla_cache: a 7-token
// prefill on the naive path (flash kernel), one decoded token on the
// absorbed path (latent kernel).
void solve_mla(cache_run& r) {
  attn::mla_config c;
  c.dim = 64;
  c.n_heads = 2;
  c.q_lora_rank = 0;
  c.kv_lora_rank = 32;
  c.qk_nope_head_dim = 16;
  c.qk_rope_head_dim = 8;
  c.v_head_dim = 16;
  c.max_seq_len = 64;  // <= original_seq_len: no YaRN
  const Eigen::Index H = c.n_heads, qk = c.qk_head_dim(), rank = c.kv_lora_rank;
  attn::mla_weights w;
  w.wq.resize(H * qk, c.dim);
  w.wkv_a.resize(rank + c.qk_rope_head_dim, c.dim);
  w.kv_norm.resize(rank);
  w.wkv_b.resize(H * (c.qk_nope_head_dim + c.v_head_dim), rank);
  w.wo.resize(c.dim, H * c.v_head_dim);
  fill(w.wq.data(), w.wq.size(), 7919, 97, 0.25f);
  fill(w.wkv_a.data(), w.wkv_a.size(), 104729, 89, 0.25f);
  fill(w.kv_norm.data(), w.kv_norm.size(), 13, 7, 0.5f);
  w.kv_norm.array() += 1.0f;
  fill(w.wkv_b.data(), w.wkv_b.size(), 31, 83, 0.5f);
  fill(w.wo.data(), w.wo.size(), 61, 79, 0.25f);
  const attn::multi_head_latent_attention layer(c, w);
  attn::mla_cache<float> cache = layer.make_cache<float>(1, 16);
  const Eigen::Index steps[2] = {7, 1};
  const attn::mla_path paths[2] = {attn::mla_path::naive, attn::mla_path::absorbed};
  for (int s = 0; s < 2; ++s) {
    attn::tensor3 x(1, steps[s], c.dim);
    fill(x.data(), x.size(), 53 + s, 71);
    attn::mla_options opt;
    opt.path = paths[s];
    const attn::tensor3 y = layer.forward(x, cache, opt);
    append(r.mla, y.data(), y.size());
  }
}

cache_run solve_caches() {
  cache_run r;
  r.abi = ABI_TEST_STRING(ATTN_ABI);
  r.kv_cache_type = typeid(attn::kv_cache<float>).name();
  r.mla_cache_type = typeid(attn::mla_cache<float>).name();
  solve_kv_cache(r);
  solve_mla(r);
  return r;
}

}  // namespace
}  // namespace abi_test
