// README: score modifiers, built in (softcap, ALiBi, sinks) and user ones
// (flex_attention with a score_mod and a mask_mod). The lines between the
// "//! [readme]" markers are the README's code block (ctest readme_snippets);
// this file is built and run as ctest readme_modifiers.
//! [readme]
#include <attn/attn.hpp>

#include <cstdio>
#include <vector>

int main() {
  using tensor4 = Eigen::Tensor<float, 4, Eigen::RowMajor>;
  const Eigen::Index L = 256, heads = 4, dim = 64;
  tensor4 q(1, L, heads, dim), k(1, L, heads, dim), v(1, L, heads, dim), out(1, L, heads, dim);
  q.setRandom();
  k.setRandom();
  v.setRandom();

  // Built in: Gemma's soft-capping, BLOOM's ALiBi, GPT-OSS's sinks, with any mask.
  attn::sdpa_options opt;
  opt.causal = attn::causal::bottom_right;
  opt.softcap = 50.0f;
  opt.alibi_slopes = attn::standard_alibi_slopes(heads);
  opt.sinks = std::vector<float>(heads, 0.5f);
  attn::scaled_dot_product_attention(attn::bshd(q), attn::bshd(k), attn::bshd(v),
                                     attn::bshd(out), opt);

  // FlexAttention-style: three documents packed in one sequence, causal inside each,
  // plus a score_mod of our own. Both are inlined into the kernel's tiles, and the
  // tiles between documents are skipped.
  std::vector<attn::index> doc(L);
  for (attn::index i = 0; i < L; ++i) doc[i] = i < 100 ? 0 : (i < 180 ? 1 : 2);
  const auto mask = attn::both(attn::document_mask(doc), attn::causal_mask{0});
  const auto bias = [](attn::index, attn::index h, attn::index q_idx, attn::index kv_idx,
                       float score) { return score - 0.01f * float(h + 1) * float(q_idx - kv_idx); };
  attn::flex_attention(attn::bshd(q), attn::bshd(k), attn::bshd(v), attn::bshd(out),
                       attn::modifiers(bias, mask));
  std::printf("out(0,0,0,0) = %f\n", out(0, 0, 0, 0));
}
//! [readme]
