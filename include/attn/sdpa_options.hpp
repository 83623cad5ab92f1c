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

  /// Optional output [B, Hq, L]: the natural-log log-sum-exp of each row's
  /// scaled, masked scores; -inf for a row that attends to nothing. Shares
  /// no memory with the inputs or the main output.
  strided<float, 3> lse;

  /// Threads to use; 0 = OpenMP's default. Results are bit-identical for any
  /// value. Ignored when attn is built without OpenMP.
  int num_threads = 0;
};

}  // namespace attn
