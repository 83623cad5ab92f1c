// attn/structured.hpp: structured attention as linear-chain CRF marginals —
// the segmentation attention of Kim, Denton, Hoang and Rush (2017,
// arXiv 1702.00887, section 3.2).
//
// Each key position j carries a binary selection variable z_j. A
// linear-chain CRF over z_0 .. z_{n-1} (n = the batch's key length) scores
// an assignment z by
//     score(z) = Σ_j θ_j(z_j) + Σ_{j < n-1} ψ_j(z_j, z_{j+1})
// with unary log-potentials θ_j(1) = the attention score s_j, θ_j(0) = 0
// unless given, and pairwise log-potentials ψ [2, 2] per batch or per
// position. The attention weights are the marginals
//     p_j = p(z_j = 1) = Σ_{z: z_j = 1} exp(score(z)) / Z,
// computed by the forward-backward algorithm in log space, and the context
// is c = Σ_j p_j v_j (the weights need not sum to 1: they select a set of
// keys, not one key). log Z is returned too; its gradient with respect to
// θ_j(1) is p_j (and with respect to θ_j(0), 1 − p_j), the identity the
// paper's backward pass relies on.
//
// Numerics: the forward and backward messages are renormalised at every
// position (the larger of the two states is 0), so nothing grows with n;
// log Z is the sum of the normalisers. The recurrence runs in double (it
// is O(n) per sequence against the O(n · d) of the scores and the context,
// and double keeps marginals to ~1e-12 even for n = 10,000 and potentials
// of ±1e4); scores, context and outputs are fp32 (a q·k score or a context
// feature whose fp32 sum overflows is taken again in double; log Z and the
// context saturate at ±FLT_MAX, README NaN policy 4). Potentials may be -inf
// (a forbidden state or transition); a chain with no allowed assignment
// gets marginals 0, context 0 and log Z = -inf. +inf and NaN potentials are
// not allowed (not checked: they are data). An empty chain (length 0) has
// one assignment: marginals none, context 0, log Z = 0.
//
// Two entries: one takes the scores s [B, S], the other computes them as
// s_j = scale · q · k_j from a query [B, d_k] and keys [B, S, d_k] (the
// dot-product score; scale defaults to 1/sqrt(d_k)). Values are
// [B, S, d_v]. Tensors are row-major; views may have any strides except
// that feature dims must be contiguous. Work is split over the batch; the
// same output bits for any thread count.
#pragma once

#include <Eigen/Core>
#include <array>
#include <cmath>
#include <optional>
#include <string>
#include <unsupported/Eigen/CXX11/Tensor>
#include <vector>

#include "attn/core/abi.hpp"
#include "attn/error.hpp"
#include "attn/mask.hpp"  // detail::check_key_lengths
#include "attn/overlap.hpp"
#include "attn/size_checks.hpp"
#include "attn/view.hpp"

#define ATTN_DETAIL_ALLOWED  // lets the kernel header in (attn/detail/structured.hpp)
#include "attn/detail/structured.hpp"

namespace attn {

/// Options of segmentation_attention. Shapes use B = batch, S = keys.
struct segmentation_options {
  /// Per-batch chain length: only keys j < key_lengths[b] take part (their
  /// marginals are the CRF's, the others' 0). Empty = all S. Size B, values
  /// in [0, S]. (To force z_j = 0 at one key inside a chain, give it the
  /// score -inf.)
  std::vector<index> key_lengths;
  /// [B, S] unary log-potentials θ_j(0) of "not selected". Empty = 0.
  strided<const float, 2> unary0;
  /// [B, P, 2, 2] pairwise log-potentials: ψ_j(z, z') = pairwise(b, j, z, z')
  /// scores z_j = z, z_{j+1} = z'. P = 1 shares one [2, 2] matrix across
  /// the chain (per batch; give batch stride 0 to share it across the
  /// batch too), P = S − 1 gives one per edge. Empty = 0 (independent
  /// selections: p_j = sigmoid(θ_j(1) − θ_j(0))).
  strided<const float, 4> pairwise;
  /// Query-key entry only: multiplies q · k_j. Default 1/sqrt(d_k). Must be
  /// left unset for the scores entry.
  std::optional<float> scale;
  /// Threads (0 = OpenMP's default). Results do not depend on it.
  int num_threads = 0;
};

/// The outputs of segmentation_attention (tensor form).
struct segmentation_result {
  Eigen::Tensor<float, 2, Eigen::RowMajor> marginals;      ///< [B, S]: p(z_j = 1)
  Eigen::Tensor<float, 2, Eigen::RowMajor> context;        ///< [B, d_v]: Σ_j p_j v_j
  Eigen::Tensor<float, 1, Eigen::RowMajor> log_partition;  ///< [B]: log Z
};

namespace detail {

// Each thread keeps a few rows of S doubles for the chain's recursions; a
// score source that broadcasts may claim more keys than those fit.
template <class Dims>
void check_chain_length(const char* fn, const char* arg, index S, const Dims& dims) {
  check_size<double>(fn, arg, {S, 2}, "S (the per-thread chain buffers)", dims);
}

// The checks of segmentation_attention but those of the score source
// (scores, or query and keys); S = keys.
inline void check_segmentation_args(const char* fn, index B, index S,
                                    const strided<const float, 3>& values,
                                    const strided<float, 2>& marginals,
                                    const strided<float, 2>& context,
                                    const strided<float, 1>& log_partition,
                                    const segmentation_options& opt) {
  using detail::require;
  auto absent3 = [](const strided<const float, 3>& v) {
    return v.empty() && v.dims == std::array<index, 3>{};
  };
  if (!absent3(values)) {
    detail::check_non_null(fn, "values", values);
    require(
        values.dims[0] == B && values.dims[1] == S && values.dims[2] >= 1, fn, "values",
        [&] {
          return "dims [batch = " + std::to_string(B) + ", S = " + std::to_string(S) +
                 ", d_v >= 1]";
        },
        values.dims);
    detail::check_span(fn, "values", values);
    detail::check_unit_last_stride(fn, "values.strides[2]", values, detail::short_rows::any_stride);
  }
  const bool has_context = !(context.empty() && context.dims == std::array<index, 2>{});
  if (has_context) {
    require(!absent3(values), fn, "values", "a view of [batch, S, d_v] (context is wanted)",
            "an absent view");
    const std::array<index, 2> want{B, values.dims[2]};
    detail::check_non_null(fn, "context", context);
    require(
        context.dims == want, fn, "context",
        [&] { return detail::dims_note(want, "[batch, d_v]"); }, context.dims);
    detail::check_span(fn, "context", context);
    detail::check_unit_last_stride(fn, "context.strides[1]", context,
                                   detail::short_rows::any_stride);
    detail::check_non_overlapping(fn, "context.strides", context);
  }
  if (!(marginals.empty() && marginals.dims == std::array<index, 2>{})) {
    const std::array<index, 2> want{B, S};
    detail::check_non_null(fn, "marginals", marginals);
    require(
        marginals.dims == want, fn, "marginals",
        [&] { return detail::dims_note(want, "[batch, S]"); }, marginals.dims);
    detail::check_span(fn, "marginals", marginals);
    detail::check_non_overlapping(fn, "marginals.strides", marginals);
  }
  if (!(log_partition.empty() && log_partition.dims == std::array<index, 1>{})) {
    detail::check_non_null(fn, "log_partition", log_partition);
    require(
        log_partition.dims[0] == B, fn, "log_partition",
        [&] { return "dims [batch = " + std::to_string(B) + "]"; }, log_partition.dims);
    detail::check_span(fn, "log_partition", log_partition);
    detail::check_non_overlapping(fn, "log_partition.strides", log_partition);
  }
  detail::check_key_lengths(fn, opt.key_lengths, B, S);
  if (!opt.unary0.empty()) {
    const std::array<index, 2> want{B, S};
    require(
        opt.unary0.dims == want, fn, "unary0",
        [&] { return detail::dims_note(want, "[batch, S]"); }, opt.unary0.dims);
    detail::check_span(fn, "unary0", opt.unary0);
  }
  if (!opt.pairwise.empty() || !detail::has_zero_extent(opt.pairwise)) {
    detail::check_non_null(fn, "pairwise", opt.pairwise);
    const auto& d = opt.pairwise.dims;
    require(
        d[0] == B && (d[1] == 1 || d[1] == S - 1) && d[2] == 2 && d[3] == 2, fn, "pairwise",
        [&] {
          return "dims [batch = " + std::to_string(B) + ", 1 or S - 1 = " + std::to_string(S - 1) +
                 ", 2, 2]";
        },
        d);
    detail::check_span(fn, "pairwise", opt.pairwise);
  }
  detail::check_num_threads(fn, "num_threads", opt.num_threads);
}

// The aliasing rule (attn/overlap.hpp) of both entries: the three outputs
// apart from each other and from every input; `source` and `keys` are the
// score source (scores, or query and keys).
inline void check_segmentation_disjoint(const char* fn, const memory_region& source,
                                        const memory_region& keys,
                                        const strided<const float, 3>& values,
                                        const strided<float, 2>& marginals,
                                        const strided<float, 2>& context,
                                        const strided<float, 1>& log_partition,
                                        const segmentation_options& opt) {
  check_disjoint(fn,
                 {region("marginals", marginals), region("context", context),
                  region("log_partition", log_partition)},
                 {source, keys, region("values", values), region("unary0", opt.unary0),
                  region("pairwise", opt.pairwise), region("key_lengths", opt.key_lengths)});
}

}  // namespace detail

inline namespace ATTN_ABI {

/// Segmentation attention from given scores (see the file comment).
///
/// @param scores        [B, S]: θ_j(1), the attention scores (any strides).
/// @param values        [B, S, d_v], or absent ({}) when context is absent.
/// @param marginals     out [B, S]: p(z_j = 1); 0 beyond a key length. May
///                      be absent ({}).
/// @param context       out [B, d_v]: Σ_j p_j v_j. May be absent ({}).
/// @param log_partition out [B]: log Z (natural log). May be absent ({}).
/// @param opt           key lengths, θ(0), pairwise potentials, threads;
///                      opt.scale must be unset.
/// @throws attn::error on any shape, stride or option mismatch, or when an
///         output shares memory with an input or another output
///         (attn/overlap.hpp).
inline void segmentation_attention(strided<const float, 2> scores, strided<const float, 3> values,
                                   strided<float, 2> marginals, strided<float, 2> context,
                                   strided<float, 1> log_partition,
                                   const segmentation_options& opt = {}) {
  constexpr const char* fn = "segmentation_attention";
  using detail::require;
  detail::check_non_null(fn, "scores", scores);
  require(scores.dims[0] >= 0 && scores.dims[1] >= 0, fn, "scores",
          "dims [batch, S] (non-negative)", scores.dims);
  detail::check_span(fn, "scores", scores);
  const index B = scores.dims[0], S = scores.dims[1];
  detail::check_chain_length(fn, "scores", S, scores.dims);
  require(!opt.scale.has_value(), fn, "scale", "unset (it applies to the query-key entry only)",
          opt.scale.value_or(0.0f));
  detail::check_segmentation_args(fn, B, S, values, marginals, context, log_partition, opt);
  detail::check_segmentation_disjoint(fn, detail::region("scores", scores), {}, values, marginals,
                                      context, log_partition, opt);
  if (B == 0) return;
  detail::structured::inputs in;
  in.scores = scores;
  in.S = S;
  in.values = values;
  in.unary0 = opt.unary0;
  in.pairwise = opt.pairwise;
  in.key_lengths = &opt.key_lengths;
  in.marginals = marginals;
  in.context = context;
  in.log_partition = log_partition;
  detail::structured::run(in, B, opt.num_threads);
}

/// Segmentation attention with dot-product scores θ_j(1) = scale · q · k_j.
///
/// @param query  [B, d_k], features contiguous.
/// @param keys   [B, S, d_k], features contiguous.
/// @param values, marginals, context, log_partition, opt  as in the scores
///        entry; opt.scale defaults to 1/sqrt(d_k) and must be finite.
/// @throws attn::error on any shape, stride or option mismatch.
inline void segmentation_attention(strided<const float, 2> query, strided<const float, 3> keys,
                                   strided<const float, 3> values, strided<float, 2> marginals,
                                   strided<float, 2> context, strided<float, 1> log_partition,
                                   const segmentation_options& opt = {}) {
  constexpr const char* fn = "segmentation_attention";
  using detail::require;
  detail::check_non_null(fn, "query", query);
  require(query.dims[0] >= 0 && query.dims[1] >= 1, fn, "query", "dims [batch, d_k >= 1]",
          query.dims);
  detail::check_span(fn, "query", query);
  detail::check_unit_last_stride(fn, "query.strides[1]", query, detail::short_rows::any_stride);
  const index B = query.dims[0], dk = query.dims[1];
  detail::check_non_null(fn, "keys", keys);
  require(
      keys.dims[0] == B && keys.dims[1] >= 0 && keys.dims[2] == dk, fn, "keys",
      [&] {
        return "dims [batch = " + std::to_string(B) + ", S, d_k = " + std::to_string(dk) + "]";
      },
      keys.dims);
  detail::check_span(fn, "keys", keys);
  detail::check_unit_last_stride(fn, "keys.strides[2]", keys, detail::short_rows::any_stride);
  const index S = keys.dims[1];
  detail::check_chain_length(fn, "keys", S, keys.dims);
  const float scale = opt.scale ? *opt.scale : 1.0f / std::sqrt(static_cast<float>(dk));
  require(std::isfinite(scale), fn, "scale", "a finite number", scale);
  detail::check_segmentation_args(fn, B, S, values, marginals, context, log_partition, opt);
  detail::check_segmentation_disjoint(fn, detail::region("query", query),
                                      detail::region("keys", keys), values, marginals, context,
                                      log_partition, opt);
  if (B == 0) return;
  detail::structured::inputs in;
  in.query = query;
  in.keys = keys;
  in.S = S;
  in.scale = scale;
  in.values = values;
  in.unary0 = opt.unary0;
  in.pairwise = opt.pairwise;
  in.key_lengths = &opt.key_lengths;
  in.marginals = marginals;
  in.context = context;
  in.log_partition = log_partition;
  detail::structured::run(in, B, opt.num_threads);
}

/// Tensor convenience of the scores entry: scores [B, S], values
/// [B, S, d_v]; returns marginals [B, S], context [B, d_v], log Z [B].
inline segmentation_result segmentation_attention(
    const Eigen::Tensor<float, 2, Eigen::RowMajor>& scores,
    const Eigen::Tensor<float, 3, Eigen::RowMajor>& values, const segmentation_options& opt = {}) {
  segmentation_result r;
  r.marginals.resize(scores.dimension(0), scores.dimension(1));
  detail::check_result_size("segmentation_attention", "context",
                            std::array<index, 2>{scores.dimension(0), values.dimension(2)});
  r.context.resize(scores.dimension(0), values.dimension(2));
  r.log_partition.resize(scores.dimension(0));
  segmentation_attention(view(scores), view(values), view(r.marginals), view(r.context),
                         view(r.log_partition), opt);
  return r;
}

/// Tensor convenience of the query-key entry: query [B, d_k], keys
/// [B, S, d_k], values [B, S, d_v].
inline segmentation_result segmentation_attention(
    const Eigen::Tensor<float, 2, Eigen::RowMajor>& query,
    const Eigen::Tensor<float, 3, Eigen::RowMajor>& keys,
    const Eigen::Tensor<float, 3, Eigen::RowMajor>& values, const segmentation_options& opt = {}) {
  segmentation_result r;
  detail::check_result_size("segmentation_attention", "marginals",
                            std::array<index, 2>{query.dimension(0), keys.dimension(1)});
  r.marginals.resize(query.dimension(0), keys.dimension(1));
  detail::check_result_size("segmentation_attention", "context",
                            std::array<index, 2>{query.dimension(0), values.dimension(2)});
  r.context.resize(query.dimension(0), values.dimension(2));
  r.log_partition.resize(query.dimension(0));
  segmentation_attention(view(query), view(keys), view(values), view(r.marginals), view(r.context),
                         view(r.log_partition), opt);
  return r;
}

}  // namespace ATTN_ABI
}  // namespace attn
