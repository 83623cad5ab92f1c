// attn/sdpa_options.hpp: the arguments of scaled dot-product attention other
// than Q, K, V and the output.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "attn/mask.hpp"
#include "attn/view.hpp"

namespace attn {

/// Options of attn::scaled_dot_product_attention. Every field has a default
/// that means "off"; combine any of them.
///
/// Shapes below use B = batch, Hq = query heads, L = query length,
/// S = key length.
struct sdpa_options {
  /// Multiplies Q·Kᵀ. Default: 1 / sqrt(d_qk).
  std::optional<float> scale;

  /// Causal masking and its alignment (see attn/mask.hpp).
  attn::causal causal = attn::causal::none;

  /// Local attention band (see attn/mask.hpp). Combined with `causal` by
  /// intersection. Negative sides throw attn::error.
  std::optional<sliding_window> window;

  /// Per-batch number of valid keys, each in [0, S]; keys j >= key_lengths[b]
  /// are masked. Empty = all S keys valid. Size must be B. This is key
  /// padding: it does not move the bottom-right diagonal, which stays at
  /// S - L as in PyTorch (FlashAttention's varlen mode instead aligns each
  /// sequence on its own length).
  std::vector<index> key_lengths;

  /// Dense bool mask viewed as [B, Hq, L, S], true = may attend (each byte
  /// must hold 0 or 1, as a C++ bool does). Broadcast
  /// dimensions have stride 0 (make it with attn::broadcast_mask). Empty view
  /// = none.
  strided<const bool, 4> bool_mask;

  /// Dense additive mask viewed as [B, Hq, L, S], added to the scaled scores;
  /// -inf masks. Broadcast like bool_mask. Empty view = none.
  strided<const float, 4> additive_mask;

  /// Logit soft-capping (Gemma 2, FlashAttention's `softcap`): each scaled
  /// score s becomes softcap · tanh(s / softcap) before ALiBi and the masks
  /// (the additive mask is added to the capped score). 0 = off; otherwise
  /// finite and > 0.
  float softcap = 0.0f;

  /// ALiBi (BLOOM, MPT): per query head slopes [Hq], finite; the scaled
  /// score of query i and key j in head h gets -slopes[h] · |i + S - L - j|
  /// (after softcap), the distance measured from the causal diagonal:
  /// bottom-right, or top-left (|i - j|) when causal is top_left, so that a
  /// KV cache's decoding and chunked prefill give a full forward's scores.
  /// attn::standard_alibi_slopes(Hq) gives the paper's geometric slopes.
  /// Empty = off. Distances are exact below 2^24 positions.
  std::vector<float> alibi_slopes;

  /// Attention sinks (GPT-OSS; ggml's add_sinks, ONNX Runtime's head_sink):
  /// one finite logit per query head [Hq], in the units of the scaled
  /// scores, that joins every row's softmax denominator with no value:
  /// out = Σ_j e^(s_j) v_j / (e^(sink) + Σ_j e^(s_j)). A row that sees no key
  /// gets output 0 and LSE = sinks[h]; the LSE output includes the sink.
  /// Empty = off.
  std::vector<float> sinks;

  /// Optional output [B, Hq, L]: the natural-log log-sum-exp of each row's
  /// scaled, masked scores; -inf for a row that attends to nothing. Shares
  /// no memory with the inputs or the main output.
  strided<float, 3> lse;

  /// Threads to use; 0 = OpenMP's default. Results are bit-identical for any
  /// value. Ignored when attn is built without OpenMP.
  int num_threads = 0;
};

}  // namespace attn
