// attn/attn.hpp: the whole public API in one include.
//
//   #include <attn/attn.hpp>
//
// attn is header-only: link the CMake target attn::attn (which brings
// Eigen 3.4+ and, when available, OpenMP) or add include/ and Eigen's include
// directory to the compiler's search path. Each header below can also be
// included on its own.
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
// attn::scaled_dot_product_attention.
#include "attn/attention_weights.hpp"
#include "attn/kv_cache.hpp"
#include "attn/multi_head.hpp"
#include "attn/rope.hpp"
#include "attn/sdpa.hpp"
#include "attn/sdpa_options.hpp"

// DeepSeek multi-head latent attention with its latent cache and YaRN RoPE:
// attn::multi_head_latent_attention, attn::mla_config, attn::mla_cache.
#include "attn/mla.hpp"
#include "attn/mla_cache.hpp"
#include "attn/yarn.hpp"

// The shared SIMD core (knows nothing of attention): packets, vector exp,
// online softmax and log-sum-exp merging.
#include "attn/core/math.hpp"
#include "attn/core/simd.hpp"
#include "attn/core/softmax.hpp"
