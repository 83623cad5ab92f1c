// attn/attn.hpp: the whole public API in one include.
//
//   #include <attn/attn.hpp>
//
// attn is header-only: link the CMake target attn::attn (which brings
// Eigen 3.4+ and, when available, OpenMP) or add include/ and Eigen's include
// directory to the compiler's search path. Each header below can also be
// included on its own.
//
// What is public
// --------------
// This comment is the one list of attn's public API (docs/design.md,
// section 4, points here). The public headers are the ones this file
// includes:
//
//   vocabulary  attn/error.hpp, attn/view.hpp, attn/mask.hpp, attn/sdpa_options.hpp,
//               attn/score_mod.hpp, attn/alibi.hpp
//   families    attn/sdpa.hpp, attn/flex.hpp, attn/modifiers.hpp,
//               attn/attention_weights.hpp, attn/additive.hpp,
//               attn/decomposable.hpp, attn/structured.hpp, attn/mla.hpp
//   layers      attn/multi_head.hpp, attn/kv_cache.hpp, attn/rope.hpp,
//               attn/mla_cache.hpp, attn/yarn.hpp, attn/dense.hpp
//   serving     attn/varlen.hpp, attn/paged_attention.hpp,
//               attn/paged_kv_cache.hpp, attn/merge_states.hpp,
//               attn/shared_prefix.hpp
//
// The public names are these names in namespace attn, each documented in its
// header:
//
//   types       attn::index (declared in attn/core/index.hpp, which every
//               public header includes), attn::error
//   views       attn::strided, attn::view, attn::bshd, attn::bhsd,
//               attn::packed_qkv, attn::broadcast_mask
//   masks       attn::causal, attn::alignment, attn::sliding_window,
//               attn::unbounded
//   SDPA        attn::scaled_dot_product_attention, attn::sdpa_options,
//               attn::attention_weights_options,
//               attn::attention_weights, attn::standard_alibi_slopes
//   modifiers   attn::flex_attention, attn::score_modifiers, attn::modifiers,
//               attn::score_only, attn::mask_only, attn::no_score_mod,
//               attn::no_mask_mod, attn::score_block, attn::block_kind,
//               attn::blocked_mask, attn::with_block_predicate, and the
//               library: attn::causal_mask, attn::sliding_window_mask,
//               attn::document_mask, attn::prefix_lm_mask, attn::and_masks,
//               attn::both, attn::softcap_score, attn::alibi_score,
//               attn::relative_position_bias
//   additive    attn::additive_attention, attn::additive_keys,
//               attn::additive_weights, attn::additive_options,
//               attn::score_function
//   decomposable  attn::decomposable_attention, attn::decomposable_options,
//               attn::intra_attention_options, attn::decomposable_result
//   structured  attn::segmentation_attention, attn::segmentation_options,
//               attn::segmentation_result
//   multi-head  attn::multi_head_attention, attn::mha_config, attn::mha_weights,
//               attn::mha_rope, attn::mha_options,
//               attn::weights_mode, attn::tensor3, attn::tensor4, attn::kv_cache
//   dense       attn::dense_layer (nn.Linear on the micro-kernel), attn::linear
//   RoPE        attn::rope_table, attn::rope_options, attn::rope_layout,
//               attn::apply_rope, attn::yarn_options, attn::yarn_inv_freq
//   serving     attn::varlen_attention, attn::paged_attention,
//               attn::paged_kv_view, attn::paged_kv_cache, attn::merge_states,
//               attn::shared_prefix_attention
//   MLA         attn::multi_head_latent_attention, attn::mla_config,
//               attn::mla_weights, attn::mla_options, attn::mla_path,
//               attn::mla_cache
//
// with their documented members. Names inside the ISA namespace
// (attn/core/abi.hpp) are public as users spell them: attn::kv_cache, never
// attn::abi_avx2_omp::kv_cache.
//
// Everything else is internal and may change in any commit without notice:
//
//   * the namespaces attn::core (with attn::core::simd and
//     attn::core::softmax) and attn::detail (with attn::detail::sdpa,
//     attn::detail::engine, attn::detail::mla and the families'
//     attn::detail::<family>), and the ISA namespaces themselves;
//   * every header under attn/core/ and attn/detail/, but for attn::index
//     in attn/core/index.hpp. The public headers include core headers
//     (simd.hpp, math.hpp, softmax.hpp, linear.hpp, ...) for their own use,
//     so those names are reachable from here, but they are still internal;
//     this file includes none of them itself. detail/ headers refuse a
//     direct include;
//   * the macros: ATTN_ABI, ATTN_ALWAYS_INLINE and every ATTN_DETAIL_*.
#pragma once

// Errors and argument checking: attn::error (an std::invalid_argument).
#include "attn/error.hpp"

// Strided tensor views: attn::strided, attn::bshd, attn::bhsd,
// attn::packed_qkv, attn::broadcast_mask.
#include "attn/view.hpp"

// Mask descriptions: attn::causal, attn::alignment, attn::sliding_window.
#include "attn/mask.hpp"

// Additive (Bahdanau) attention and Luong's dot / general scores:
// attn::additive_attention, attn::additive_weights, attn::additive_options.
#include "attn/additive.hpp"

// Decomposable attention (Parikh et al. 2016): both soft alignments of two
// sequences and the intra-sentence variant: attn::decomposable_attention,
// attn::decomposable_options, attn::intra_attention_options.
#include "attn/decomposable.hpp"

// Structured attention (Kim et al. 2017): linear-chain CRF marginals as
// attention weights: attn::segmentation_attention, attn::segmentation_options.
#include "attn/structured.hpp"

// Scaled dot-product attention: attn::sdpa_options,
// attn::scaled_dot_product_attention, attn::attention_weights.
#include "attn/attention_weights.hpp"
#include "attn/sdpa.hpp"
#include "attn/sdpa_options.hpp"

// Score modifiers: ALiBi slopes, flex_attention with user score_mod /
// mask_mod, and a library of ready modifiers.
#include "attn/alibi.hpp"
#include "attn/flex.hpp"
#include "attn/modifiers.hpp"
#include "attn/score_mod.hpp"

// The multi-head attention layer with its KV cache and rotary embeddings:
// attn::multi_head_attention, attn::kv_cache, attn::rope_table, attn::apply_rope.
#include "attn/kv_cache.hpp"
#include "attn/multi_head.hpp"
#include "attn/rope.hpp"

// A dense layer y = x Wᵀ + b for the blocks around attention: attn::dense_layer.
#include "attn/dense.hpp"

// DeepSeek multi-head latent attention with its latent cache and YaRN RoPE:
// attn::multi_head_latent_attention, attn::mla_config, attn::mla_cache.
#include "attn/mla.hpp"
#include "attn/mla_cache.hpp"
#include "attn/yarn.hpp"

// Serving many sequences at once: packed variable-length batches, a paged
// K/V cache (the caller's or attn's own pool) and the LSE merge of partial
// results (docs/design.md, section 2.4b).
#include "attn/merge_states.hpp"
#include "attn/paged_attention.hpp"
#include "attn/paged_kv_cache.hpp"
#include "attn/shared_prefix.hpp"
#include "attn/varlen.hpp"
