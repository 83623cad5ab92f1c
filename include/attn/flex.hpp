// attn/flex.hpp: attention with user score and mask modifiers, PyTorch's
// FlexAttention as compile-time C++ (docs/design.md, "Score modifiers").
//
//   auto rel_bias = [&](index b, index h, index q, index kv, float s) {
//     return s + table[h][bucket(q - kv)];
//   };
//   attn::flex_attention(q, k, v, out, attn::score_only(rel_bias), opt);
//
// The modifiers are template arguments, inlined into the tiles of the same
// kernels scaled_dot_product_attention runs; every option of sdpa_options
// (masks, window, softcap, ALiBi, sinks, LSE, threads) combines with them.
// attn/modifiers.hpp holds a library of ready ones.
#pragma once

#include <type_traits>

#include "attn/core/abi.hpp"
#include "attn/score_mod.hpp"
#include "attn/sdpa.hpp"
#include "attn/sdpa_checks.hpp"
#include "attn/sdpa_options.hpp"
#include "attn/view.hpp"

namespace attn {
inline namespace ATTN_ABI {

/// Scaled dot-product attention with a score_mod and a mask_mod.
///
/// @param q, k, v, out  as for attn::scaled_dot_product_attention.
/// @param mods  attn::modifiers(score_mod, mask_mod), attn::score_only or
///              attn::mask_only (attn/score_mod.hpp). The score_mod sees
///              (b, h, q_idx, kv_idx, score) with h the query head, q_idx
///              the row of q, kv_idx the row of k, and score the scaled
///              score after softcap and ALiBi, in natural-log units; it
///              returns the new score, floored at -FLT_MAX (a score_mod
///              does not hide keys: a mask_mod does). The mask_mod returns
///              true where the query sees the key; a pair is visible when
///              every mask of opt and the mask_mod allow it, and the NaN and
///              infinity rules of SDPA hold as for its own masks. Both are
///              called from the worker threads, concurrently, in no fixed
///              order: they must be pure functions of their arguments.
///              Results are bit-identical for any thread count as long as
///              they are.
/// @param opt   every option of scaled_dot_product_attention.
///
/// Tiles the mask_mod's block predicate calls empty are skipped; without a
/// predicate, the mask_mod is evaluated once per (query, key) pair of every
/// tile the other masks leave, and a tile it hides entirely is skipped too.
///
/// @throws attn::error as scaled_dot_product_attention does.
template <class KT, class VT, class ScoreMod, class MaskMod>
void flex_attention(strided<const float, 4> q, strided<KT, 4> k, strided<VT, 4> v,
                    strided<float, 4> out, const score_modifiers<ScoreMod, MaskMod>& mods,
                    const sdpa_options& opt = {}) {
  using KV = std::remove_const_t<KT>;
  static_assert(std::is_same<KV, std::remove_const_t<VT>>::value,
                "attn::flex_attention: k and v must have the same element type");
  static_assert(detail::is_kv_scalar<KV>,
                "attn::flex_attention: k/v must be float, Eigen::bfloat16 or Eigen::half");
  const float scale = detail::check_sdpa_arguments("flex_attention", q, k, v, out, opt);
  detail::sdpa::run_attention<KV>(
      q, strided<const KV, 4>(k), strided<const KV, 4>(v), out, scale, opt,
      detail::engine::score_policy<ScoreMod, MaskMod>(opt, q.dims[1], k.dims[1], &mods.score_mod,
                                                      &mods.mask_mod));
}

}  // namespace ATTN_ABI
}  // namespace attn
