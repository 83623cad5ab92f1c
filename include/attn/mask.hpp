// attn/mask.hpp: what a query may attend to, described without materialising
// an L x S matrix.
//
// Structural masks (causal, sliding window, key lengths) are a band of keys
// [first(i), last(i)] for each query row i, computed in O(1) per row, so the
// kernel can skip whole tiles and mask element by element only on the tiles
// that the band's edges cross. Dense masks (bool, additive) are strided
// [batch, heads, L, S] views read in place.
//
// Conventions (decided in docs/design.md):
//  * bool mask: true = may attend (PyTorch's scaled_dot_product_attention;
//    note nn.MultiheadAttention's key_padding_mask uses the opposite polarity).
//  * additive mask: added to the scaled scores; -inf means masked.
//  * causal alignment is always named:
//      top_left      query i sees keys j <= i            (PyTorch is_causal)
//      bottom_right  query i sees keys j <= i + S - L    (FlashAttention;
//                    what KV-cache decoding and chunked prefill need)
//  * a sliding window (left, right) keeps keys with
//      diag(i) - left <= j <= diag(i) + right,
//    where diag(i) is the aligned diagonal (i, or i + S - L).
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "attn/error.hpp"
#include "attn/size_checks.hpp"
#include "attn/view.hpp"

namespace attn {

/// Which diagonal a causal mask or a sliding window is measured from.
enum class alignment {
  top_left,      ///< diag(i) = i
  bottom_right,  ///< diag(i) = i + S - L
};

/// Causal masking: none, or causal with a named alignment.
enum class causal {
  none,          ///< no causal mask
  top_left,      ///< query i sees keys j <= i (PyTorch's is_causal=True)
  bottom_right,  ///< query i sees keys j <= i + S - L (FlashAttention, KV caches)
};

/// Extent that means "no limit on this side" for a sliding window.
constexpr index unbounded = std::numeric_limits<index>::max() / 4;

/// Local attention: query i sees keys diag(i) - left <= j <= diag(i) + right,
/// diag from `align`. Both sides must be >= 0; use attn::unbounded for an
/// open side. Causal attention over the w previous keys is
/// sliding_window{w, 0, alignment::bottom_right} alone (right = 0 already
/// makes it causal). When combined with `causal`, each keeps its own
/// alignment; they only differ when L != S.
struct sliding_window {
  index left = unbounded;   ///< keys before the diagonal, >= 0 (attn::unbounded: all)
  index right = unbounded;  ///< keys after the diagonal, >= 0 (attn::unbounded: all)
  alignment align = alignment::bottom_right;  ///< which diagonal the sides count from
};

namespace detail {

// The band of keys [first, last] (inclusive) that query row i may see, from
// the structural masks only. Empty when first > last.
struct key_band {
  index first;
  index last;
};

// Structural mask of one (batch) problem: causal, window and key length
// folded into two affine limits on j.
class band_mask {
 public:
  // L, S: query and key lengths; key_len: keys that exist for this batch
  // entry (<= S).
  band_mask(index L, index S, index key_len, causal c, const sliding_window* w)
      : key_len_(key_len) {
    if (c != causal::none) {
      has_hi_ = true;
      hi_off_ = c == causal::top_left ? 0 : S - L;
    }
    if (w) {
      const index diag = w->align == alignment::top_left ? 0 : S - L;
      if (w->left < unbounded) {
        has_lo_ = true;
        lo_off_ = diag - w->left;
      }
      if (w->right < unbounded) {
        const index off = diag + w->right;
        hi_off_ = has_hi_ ? std::min(hi_off_, off) : off;
        has_hi_ = true;
      }
    }
  }

  key_band row(index i) const {
    index first = has_lo_ ? std::max<index>(0, i + lo_off_) : 0;
    index last = key_len_ - 1;
    if (has_hi_) last = std::min(last, i + hi_off_);
    return {first, last};
  }

  // Union of the bands of rows [i0, i1): the keys a query tile may touch.
  key_band rows(index i0, index i1) const {
    const key_band a = row(i0), b = row(i1 - 1);  // both limits grow with i
    return {a.first, b.last};
  }

  // True when every row in [i0, i1) sees every key in [j0, j1): the tile
  // needs no element-wise structural masking.
  bool tile_full(index i0, index i1, index j0, index j1) const {
    return row(i1 - 1).first <= j0 && j1 - 1 <= row(i0).last;
  }

  // True when some row in [i, i + rows) sees some key in [j, j + keys).
  bool block_visible(index i, index rows, index j, index keys) const {
    if (rows <= 0) return false;
    return row(i + rows - 1).last >= j && row(i).first <= j + keys - 1;
  }

 private:
  index key_len_;
  bool has_lo_ = false, has_hi_ = false;
  index lo_off_ = 0, hi_off_ = 0;
};

// Checks per-batch key lengths for an entry point `fn`: empty, or B values
// each in [0, S]. The message names the offending entry; `base` prefixes
// the names as in field_name ("opt.attention").
inline void check_key_lengths(const char* fn, const std::vector<index>& key_lengths, index B,
                              index S, const char* base = "") {
  require(
      key_lengths.empty() || static_cast<index>(key_lengths.size()) == B, fn,
      field_name{base, "key_lengths.size()"},
      [&] { return "0 or batch = " + std::to_string(B); }, key_lengths.size());
  for (std::size_t i = 0; i < key_lengths.size(); ++i)
    if (key_lengths[i] < 0 || key_lengths[i] > S) {
      const std::string entry = "key_lengths[" + std::to_string(i) + "]";
      fail(fn, field_name{base, entry.c_str()}, "a value in [0, S = " + std::to_string(S) + "]",
           key_lengths[i]);
    }
}

// Checks a dense [B, H, L, S] mask view (bool or additive) for an entry
// point `fn`; `what` names the argument. An empty view is no mask.
template <class T, class Arg>
void check_mask(const char* fn, const Arg& what, const strided<const T, 4>& m, index B, index H,
                index L, index S) {
  if (m.empty()) return;
  const std::array<index, 4> want{B, H, L, S};
  require(
      m.dims == want, fn, what, [&] { return dims_note(want, "[batch, heads_q, L, S]"); }, m.dims);
  check_non_negative_strides(fn, what, m);
  check_span(fn, what, m);
}

}  // namespace detail
}  // namespace attn
