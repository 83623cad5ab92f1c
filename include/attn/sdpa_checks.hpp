// attn/sdpa_checks.hpp: the argument rules of scaled dot-product attention,
// each stated once, for every entry that takes its tensors or its options:
// scaled_dot_product_attention, attention_weights, kv_cache::attend and the
// layers that reach them (multi_head_attention, the MLA layer).
//
// Every function throws attn::error before anything is written and leaves
// the message form of docs/design.md section 5.
#pragma once

#include <array>
#include <cmath>
#include <string>

#include "attn/error.hpp"
#include "attn/mask.hpp"
#include "attn/overlap.hpp"
#include "attn/sdpa_options.hpp"
#include "attn/size_checks.hpp"
#include "attn/view.hpp"

namespace attn::detail {

// q [B, L, Hq, d_qk] and k [B, S, Hkv, d_qk], as every entry that scores
// queries against keys reads them: Hkv divides Hq (GQA), head dims
// contiguous.
template <class KT>
void check_query_key(const char* fn, const strided<const float, 4>& q, const strided<KT, 4>& k) {
  check_non_null(fn, "q", q);
  check_non_null(fn, "k", k);
  check_non_negative_dims(fn, "q", q);
  check_non_negative_dims(fn, "k", k);
  check_span(fn, "q", q);
  check_span(fn, "k", k);
  const index B = q.dims[0], Hq = q.dims[2], Dqk = q.dims[3];
  const index S = k.dims[1], Hkv = k.dims[2];
  require(Dqk >= 1, fn, "q.dims[3] (d_qk)", ">= 1", Dqk);
  require(Hq >= 1, fn, "q.dims[2] (heads_q)", ">= 1", Hq);
  require(
      k.dims[0] == B && k.dims[3] == Dqk, fn, "k",
      [&] {
        return dims_note(std::array<index, 4>{B, S, Hkv, Dqk}, "[batch, S, heads_kv, d_qk]");
      },
      k.dims);
  require(
      Hkv >= 1 && Hq % Hkv == 0, fn, "k.dims[2] (heads_kv)",
      [&] { return "a divisor of heads_q = " + std::to_string(Hq); }, Hkv);
  check_unit_last_stride(fn, "q.strides[3]", q);
  check_unit_last_stride(fn, "k.strides[3]", k);
}

// softcap, alibi_slopes and sinks: each off or well-formed for Hq query
// heads. The kernels work in log2 units, so each value times log2 e (and
// for softcap its inverse) must be finite as well.
inline void check_score_modifiers(const char* fn, const char* base, const sdpa_options& opt,
                                  index Hq) {
  const float cap_log2 = opt.softcap * log2e;
  require(opt.softcap == 0.0f || (opt.softcap > 0.0f && std::isfinite(cap_log2) &&
                                  std::isfinite(1.0f / cap_log2)),
          fn, field_name{base, "softcap"}, "0 (off) or a finite number > 0 whose log2 units and "
          "their inverse are finite", opt.softcap);
  auto per_head = [&](const char* name, const std::vector<float>& values) {
    require(values.empty() || static_cast<index>(values.size()) == Hq, fn,
            field_name{base, name}, [&] { return "0 or heads_q = " + std::to_string(Hq) +
                                         " values"; },
            values.size());
    for (std::size_t h = 0; h < values.size(); ++h)
      require(std::isfinite(values[h] * log2e), fn, field_name{base, name},
              "finite values below FLT_MAX / log2(e)",
              [&] { return std::to_string(values[h]) + " at head " + std::to_string(h); });
  };
  per_head("alibi_slopes", opt.alibi_slopes);
  per_head("sinks", opt.sinks);
}

// The options every entry taking sdpa_options reads (all but lse, which is
// an output and checked with the others): scale, window, key_lengths, masks
// and threads, for B batch entries, Hq query heads, L queries, S keys and
// head dim d_qk. `base` is how the caller spells the options: "" when they
// are the entry's own argument, "opt.attention" inside mha_options. Returns
// the scale in use (default 1/sqrt(d_qk)).
inline float check_sdpa_options(const char* fn, const char* base, const sdpa_options& opt,
                                index B, index Hq, index L, index S, index d_qk) {
  const float scale = opt.scale ? *opt.scale : 1.0f / std::sqrt(static_cast<float>(d_qk));
  check_scale(fn, field_name{base, "scale"}, scale);
  // Enums from a cast integer: an unnamed value would otherwise act as one
  // of the named ones.
  require(opt.causal == causal::none || opt.causal == causal::top_left ||
              opt.causal == causal::bottom_right,
          fn, field_name{base, "causal"}, "causal::none, causal::top_left or causal::bottom_right",
          static_cast<int>(opt.causal));
  if (opt.window)
    require(
        opt.window->align == alignment::top_left || opt.window->align == alignment::bottom_right,
        fn, field_name{base, "window.align"}, "alignment::top_left or alignment::bottom_right",
        static_cast<int>(opt.window->align));
  if (opt.window) {
    const char* open_side = ">= 0 (attn::unbounded for no limit)";
    require(opt.window->left >= 0, fn, field_name{base, "window.left"}, open_side,
            opt.window->left);
    require(opt.window->right >= 0, fn, field_name{base, "window.right"}, open_side,
            opt.window->right);
  }
  check_key_lengths(fn, opt.key_lengths, B, S, base);
  check_mask(fn, field_name{base, "bool_mask"}, opt.bool_mask, B, Hq, L, S);
  check_mask(fn, field_name{base, "additive_mask"}, opt.additive_mask, B, Hq, L, S);
  check_num_threads(fn, field_name{base, "num_threads"}, opt.num_threads);
  check_score_modifiers(fn, base, opt, Hq);
  return scale;
}

// The aliasing rule (attn/overlap.hpp) for one attention call: its two
// outputs (out and lse, or probs and column_sums) apart from each other and
// from everything the kernels read. `base` spells the options as in
// check_sdpa_options.
template <class KT, class VT>
void check_sdpa_disjoint(const char* fn, const char* base, const strided<const float, 4>& q,
                         const strided<KT, 4>& k, const strided<VT, 4>& v,
                         const memory_region& out, const memory_region& extra,
                         const sdpa_options& opt) {
  check_disjoint(fn, {out, extra},
                 {region("q", q), region("k", k), region("v", v),
                  region(field_name{base, "bool_mask"}, opt.bool_mask),
                  region(field_name{base, "additive_mask"}, opt.additive_mask),
                  region(field_name{base, "key_lengths"}, opt.key_lengths)});
}

// All of scaled_dot_product_attention's checks, in its documented order;
// returns the scale in use. Entries that run the attention on slices of
// their arguments (kv_cache::attend) call it on every slice before the
// first one is computed.
template <class KT, class VT>
float check_sdpa_arguments(const char* fn, const strided<const float, 4>& q,
                           const strided<KT, 4>& k, const strided<VT, 4>& v,
                           const strided<float, 4>& out, const sdpa_options& opt) {
  check_query_key(fn, q, k);
  check_non_null(fn, "v", v);
  check_non_null(fn, "out", out);
  check_non_negative_dims(fn, "v", v);
  check_span(fn, "v", v);
  const index B = q.dims[0], L = q.dims[1], Hq = q.dims[2], Dqk = q.dims[3];
  const index S = k.dims[1], Hkv = k.dims[2], Dv = v.dims[3];
  require(
      v.dims[0] == B && v.dims[1] == S && v.dims[2] == Hkv, fn, "v",
      [&] { return dims_note(std::array<index, 4>{B, S, Hkv, Dv}, "[batch, S, heads_kv, d_v]"); },
      v.dims);
  const std::array<index, 4> out_dims{B, L, Hq, Dv};
  require(
      out.dims == out_dims, fn, "out",
      [&] { return dims_note(out_dims, "[batch, L, heads_q, d_v]"); }, out.dims);
  check_span(fn, "out", out);
  check_unit_last_stride(fn, "v.strides[3]", v, short_rows::any_stride);
  check_unit_last_stride(fn, "out.strides[3]", out, short_rows::any_stride);
  const float scale = check_sdpa_options(fn, "", opt, B, Hq, L, S, Dqk);
  if (!opt.lse.empty()) {
    const std::array<index, 3> want{B, Hq, L};
    require(
        opt.lse.dims == want, fn, "lse", [&] { return dims_note(want, "[batch, heads_q, L]"); },
        opt.lse.dims);
    check_span(fn, "lse", opt.lse);
  }
  check_non_overlapping(fn, "out.strides", out);
  if (!opt.lse.empty()) check_non_overlapping(fn, "lse.strides", opt.lse);
  check_sdpa_disjoint(fn, "", q, k, v, region("out", out), region("lse", opt.lse), opt);
  return scale;
}

// What a cache's attention takes from sdpa_options: it applies bottom-right
// causal on each sequence's own length and sets the key lengths itself, so
// causal, key_lengths and dense masks must be left unset. `base` as in
// check_sdpa_options ("opt", "opt.attention").
inline void check_cache_options(const char* fn, const char* base, const sdpa_options& opt) {
  require(opt.causal == causal::none, fn, field_name{base, "causal"},
          "causal::none (the cache applies bottom-right causal itself)", "another value");
  require(opt.key_lengths.empty() && opt.bool_mask.empty() && opt.additive_mask.empty(), fn,
          field_name{base, ""}, "no key_lengths or dense masks (the cache sets them)",
          "some given");
}

}  // namespace attn::detail
