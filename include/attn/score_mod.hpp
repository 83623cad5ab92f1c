// attn/score_mod.hpp: the vocabulary of user score and mask modifiers
// (FlexAttention's score_mod and mask_mod as compile-time C++), shared by
// attn::flex_attention (attn/flex.hpp), kv_cache::attend and the modifier
// library (attn/modifiers.hpp). docs/design.md, "Score modifiers".
//
// A score_mod is any callable
//     float (index b, index h, index q_idx, index kv_idx, float score)
// taking the scaled score (softcap and ALiBi of sdpa_options already applied)
// and returning the new one. It may instead, or as well, be callable with one
// attn::score_block, the vectorised form: a whole tile of scores to rewrite
// in place. A mask_mod is any callable
//     bool (index b, index h, index q_idx, index kv_idx)
// returning true where the query may attend to the key; with a member
//     block_kind block(index b, index h, index q_begin, index q_end,
//                      index kv_begin, index kv_end) const
// (the block predicate) the kernels skip tiles it calls empty and mask no
// element of tiles it calls full. Both are template arguments: the kernels
// are compiled with them inlined into the tile loop.
#pragma once

#include "attn/view.hpp"

namespace attn {

/// The score_mod that leaves every score as it is (the default).
struct no_score_mod {};

/// The mask_mod that hides nothing (the default).
struct no_mask_mod {};

/// What a mask_mod's block predicate says about a block of (query, key)
/// pairs.
enum class block_kind {
  empty,    ///< no query of the block sees any key of it: the tile is skipped
  partial,  ///< some see, some do not: the mask_mod is evaluated per element
  full,     ///< every query sees every key: no element is masked
};

/// A tile of scaled scores handed to a vectorised score_mod, rewritten in
/// place: the score of (q_idx = q_begin + r, kv_idx = kv_begin + c) is
/// scores[r * q_stride + c * kv_stride] for r < rows, c < keys. The flash
/// kernel hands tiles with q_stride = 1 (consecutive queries are contiguous),
/// the decode kernel rows with kv_stride = 1; a score_mod vectorises along
/// whichever stride is 1.
struct score_block {
  index b;         ///< batch entry
  index h;         ///< query head
  index q_begin;   ///< q_idx of row 0
  index kv_begin;  ///< kv_idx of column 0
  index rows;      ///< queries in the tile
  index keys;      ///< keys in the tile
  float* scores;   ///< the scores, natural-log units (as a scalar score_mod sees them)
  index q_stride;  ///< floats between consecutive queries
  index kv_stride; ///< floats between consecutive keys
};

/// A score_mod and a mask_mod, passed together to attn::flex_attention and
/// kv_cache::attend. Make one with attn::modifiers, attn::score_only or
/// attn::mask_only.
template <class ScoreMod = no_score_mod, class MaskMod = no_mask_mod>
struct score_modifiers {
  ScoreMod score_mod{};  ///< rewrites scores (see the file comment)
  MaskMod mask_mod{};    ///< hides (query, key) pairs (see the file comment)
};

/// Both modifiers.
template <class ScoreMod, class MaskMod>
score_modifiers<ScoreMod, MaskMod> modifiers(ScoreMod score_mod, MaskMod mask_mod) {
  return {score_mod, mask_mod};
}

/// A score_mod alone.
template <class ScoreMod>
score_modifiers<ScoreMod, no_mask_mod> score_only(ScoreMod score_mod) {
  return {score_mod, {}};
}

/// A mask_mod alone.
template <class MaskMod>
score_modifiers<no_score_mod, MaskMod> mask_only(MaskMod mask_mod) {
  return {{}, mask_mod};
}

/// A mask_mod with a block predicate from two callables: `mask` as the
/// mask_mod, `block` as its block(b, h, q_begin, q_end, kv_begin, kv_end)
/// (ranges half-open). The predicate must be exact where it says empty or
/// full: the kernels trust it without evaluating the mask.
template <class Mask, class Block>
struct blocked_mask {
  Mask mask;    ///< the per-element mask_mod
  Block block_predicate;  ///< the block predicate

  /// The per-element mask.
  bool operator()(index b, index h, index q_idx, index kv_idx) const {
    return mask(b, h, q_idx, kv_idx);
  }
  /// The block predicate.
  block_kind block(index b, index h, index q_begin, index q_end, index kv_begin,
                   index kv_end) const {
    return block_predicate(b, h, q_begin, q_end, kv_begin, kv_end);
  }
};

/// blocked_mask from a mask and its block predicate.
template <class Mask, class Block>
blocked_mask<Mask, Block> with_block_predicate(Mask mask, Block block) {
  return {mask, block};
}

}  // namespace attn
