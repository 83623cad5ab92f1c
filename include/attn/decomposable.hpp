// attn/decomposable.hpp: the soft alignment of the decomposable attention
// model (Parikh, Täckström, Das and Uszkoreit, 2016, arXiv 1606.01933).
//
// Two sequences a [La, d] and b [Lb, d] are compared through one score
// matrix
//     e_ij = scale · F(a_i) · F(b_j)
// where F is a caller-supplied feed-forward function applied to each row
// (default: the identity; Parikh et al. use a 2-layer ReLU network and
// scale = 1). Both soft alignments come from the same e:
//     β_i = Σ_j softmax_j(e_ij) b_j     (the part of b aligned to a_i)
//     α_j = Σ_i softmax_i(e_ij) a_i     (the part of a aligned to b_j)
// and the intra-sentence variant (their section 2.3) attends a sequence to
// itself with a learned distance bias:
//     a'_i = Σ_j softmax_j(f_ij + d(i − j)) a_j,  f_ij = scale · F(a_i)·F(a_j).
//
// The La × Lb score matrix is never stored: the kernel
// (attn/detail/decomposable.hpp) computes e tile by tile twice, once for the
// row and column statistics and once for the probabilities and the
// alignments, on a schedule fixed by the shape alone.
//
// Tensors are row-major [batch, seq, features]; views (attn/view.hpp) may
// have any strides on batch and seq, the feature dim must be contiguous.
//
// Conventions (as in the rest of attn, docs/design.md):
//  * bool masks: true = takes part. Lengths hide positions >= length.
//  * A masked position takes part in neither alignment and its own output
//    row is 0; a row (column) with no visible partner gets output 0, weights
//    0 and LSE -inf. Never NaN.
//  * fp32 accumulation; the same output bits for any thread count.
//  * A score of +inf (an fp32 product that overflowed) takes the row's
//    weight (shared among such scores); one that overflowed to -inf is
//    floored at -FLT_MAX: it weighs 0 beside ordinary scores, and a row
//    whose every score overflowed averages its partners (only masks and
//    lengths empty a row). A dot product with both +inf and -inf terms is
//    NaN, as in any fp32 GEMM: inputs must keep F(a_i)·F(b_j)
//    representable.
#pragma once

#include <Eigen/Core>
#include <array>
#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <type_traits>
#include <unsupported/Eigen/CXX11/Tensor>
#include <utility>
#include <vector>

#include "attn/core/abi.hpp"
#include "attn/error.hpp"
#include "attn/overlap.hpp"
#include "attn/size_checks.hpp"
#include "attn/view.hpp"

#define ATTN_DETAIL_ALLOWED  // lets the kernel header in (attn/detail/decomposable.hpp)
#include "attn/detail/decomposable.hpp"

namespace attn {

/// Per-call options of decomposable_attention::forward. Shapes use B =
/// batch, La and Lb = the lengths of a and b.
struct decomposable_options {
  /// Per-batch number of valid positions of a: a_i takes part only when
  /// i < a_lengths[b]. Empty = all La. Size B, values in [0, La].
  std::vector<index> a_lengths;
  /// The same for b: size B, values in [0, Lb].
  std::vector<index> b_lengths;
  /// [B, La] bool, true = a_i takes part (stride 0 broadcasts). Empty = all.
  strided<const bool, 2> a_mask;
  /// [B, Lb] bool, true = b_j takes part. Empty = all.
  strided<const bool, 2> b_mask;
  /// Multiplies F(a_i)·F(b_j); finite. Parikh et al. use none (1).
  float scale = 1.0f;
  /// Optional output [B, La, Lb]: softmax_j(e_ij), the weights of β_i
  /// (0 wherever i or j is masked).
  strided<float, 3> row_weights;
  /// Optional output [B, La, Lb]: softmax_i(e_ij), the weights of α_j
  /// (0 wherever i or j is masked).
  strided<float, 3> col_weights;
  /// Optional output [B, La]: log Σ_j exp(e_ij) over the visible j (natural
  /// log); -inf for a masked row or a row with no visible j.
  strided<float, 2> row_lse;
  /// Optional output [B, Lb]: log Σ_i exp(e_ij) over the visible i.
  strided<float, 2> col_lse;
  /// Threads (0 = OpenMP's default). Results do not depend on it.
  int num_threads = 0;
};

/// Per-call options of decomposable_attention::intra (the intra-sentence
/// attention of Parikh et al., section 2.3). Shapes use B = batch, L = length.
struct intra_attention_options {
  /// Per-batch number of valid positions (size B, values in [0, L]); empty
  /// = all L.
  std::vector<index> lengths;
  /// [B, L] bool, true = the position takes part. Empty = all.
  strided<const bool, 2> mask;
  /// The learned distance bias d(i − j), in natural units (added to the
  /// scaled score before the softmax). Empty = none. Signed distances
  /// (default): size 2·max_distance + 1, query i and key j use entry
  /// clamp(i − j, −max_distance, max_distance) + max_distance. With
  /// `symmetric`: size max_distance + 1, entry min(|i − j|, max_distance).
  /// Entries may be -inf (never attend at that distance); NaN and +inf
  /// throw.
  std::vector<float> distance_bias;
  /// Distances beyond this share one bucket (Parikh et al.: 10). >= 0.
  index max_distance = 10;
  /// Index distance_bias by |i − j| instead of i − j.
  bool symmetric = false;
  /// Multiplies F(a_i)·F(a_j); finite.
  float scale = 1.0f;
  /// Optional output [B, L, L]: the attention weights (0 where masked).
  strided<float, 3> weights;
  /// Optional output [B, L]: each row's natural-log LSE; -inf when empty.
  strided<float, 2> lse;
  /// Threads (0 = OpenMP's default). Results do not depend on it.
  int num_threads = 0;
};

/// The two alignments of decomposable_attention::forward (tensor form).
struct decomposable_result {
  Eigen::Tensor<float, 3, Eigen::RowMajor> beta;   ///< [B, La, d]: Σ_j softmax_j(e_ij) b_j
  Eigen::Tensor<float, 3, Eigen::RowMajor> alpha;  ///< [B, Lb, d]: Σ_i softmax_i(e_ij) a_i
};

inline namespace ATTN_ABI {

/// The decomposable attention model's soft alignment (Parikh et al. 2016):
/// see the file comment. Holds the feed-forward function F; immutable
/// after construction, so one object may serve many threads at once if F
/// may.
class decomposable_attention {
 public:
  /// Row-major float matrix: F's input and output.
  using matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  /// What F receives: the [L, d] rows of one batch element of one sequence
  /// (row-major, rows at a stride; masked positions are rows of zeros).
  using rows = Eigen::Map<const matrix, 0, Eigen::OuterStride<>>;
  /// F: maps [L, d] rows to [L, d_f] rows, each row on its own (a
  /// per-position feed-forward network). It must return exactly L rows and
  /// the same d_f >= 1 for every call. It is called from the calling
  /// thread only, once per batch element and sequence, before any kernel
  /// work; results are bit-identical for any num_threads if F's are.
  using feed_forward = std::function<matrix(const rows&)>;
  static_assert(std::is_same<feed_forward, detail::decomposable::feed_forward>::value,
                "F reaches the kernel by reference, not through a converted copy");
  /// Row-major [batch, seq, features] tensor of the convenience overloads.
  using tensor3 = Eigen::Tensor<float, 3, Eigen::RowMajor>;

  /// F empty = the identity (e_ij = scale · a_i · b_j).
  explicit decomposable_attention(feed_forward f = {}) : f_(std::move(f)) {}

  /// True when a feed-forward function was given.
  bool has_feed_forward() const { return static_cast<bool>(f_); }

  /// Both alignments of a [B, La, d] and b [B, Lb, d]: beta [B, La, d] and
  /// alpha [B, Lb, d] (written; no output of the call, options' included,
  /// shares memory with an input or another output, attn/overlap.hpp). Either output
  /// may be an absent view ({}) when not wanted. See decomposable_options
  /// for lengths, masks, scale, weights / LSE outputs and threads.
  /// @throws attn::error on any shape, stride or option mismatch, or when F
  ///         returns the wrong shape.
  void forward(strided<const float, 3> a, strided<const float, 3> b, strided<float, 3> beta,
               strided<float, 3> alpha, const decomposable_options& opt = {}) const {
    constexpr const char* fn = "decomposable_attention::forward";
    using detail::require;
    check_input(fn, "a", "a.strides[2]", a, -1, -1);
    const index B = a.dims[0], La = a.dims[1], d = a.dims[2];
    check_input(fn, "b", "b.strides[2]", b, B, d);
    const index Lb = b.dims[1];
    check_output(fn, "beta", "beta.strides[2]", beta, {B, La, d}, "[batch, La, d]");
    check_output(fn, "alpha", "alpha.strides[2]", alpha, {B, Lb, d}, "[batch, Lb, d]");
    check_lengths(fn, "a_lengths", opt.a_lengths, B, La);
    check_lengths(fn, "b_lengths", opt.b_lengths, B, Lb);
    check_mask(fn, "a_mask", "a_mask.strides", opt.a_mask, B, La, "[batch, La]");
    check_mask(fn, "b_mask", "b_mask.strides", opt.b_mask, B, Lb, "[batch, Lb]");
    detail::check_scale(fn, "scale", opt.scale);
    check_weights(fn, "row_weights", "row_weights.strides", opt.row_weights, B, La, Lb);
    check_weights(fn, "col_weights", "col_weights.strides", opt.col_weights, B, La, Lb);
    check_lse(fn, "row_lse", "row_lse.strides", opt.row_lse, B, La, "[batch, La]");
    check_lse(fn, "col_lse", "col_lse.strides", opt.col_lse, B, Lb, "[batch, Lb]");
    detail::check_num_threads(fn, "num_threads", opt.num_threads);
    using detail::region;
    detail::check_disjoint(fn,
                           {region("beta", beta), region("alpha", alpha),
                            region("row_weights", opt.row_weights),
                            region("col_weights", opt.col_weights), region("row_lse", opt.row_lse),
                            region("col_lse", opt.col_lse)},
                           {region("a", a), region("b", b), region("a_mask", opt.a_mask),
                            region("b_mask", opt.b_mask), region("a_lengths", opt.a_lengths),
                            region("b_lengths", opt.b_lengths)});
    if (B == 0) return;

    detail::decomposable::align(f_, fn, opt.scale, opt.num_threads, a, {opt.a_lengths, opt.a_mask},
                                beta, {opt.row_weights, opt.row_lse}, b,
                                {opt.b_lengths, opt.b_mask}, alpha, {opt.col_weights, opt.col_lse});
  }

  /// Tensor convenience: a [B, La, d], b [B, Lb, d]; returns
  /// {beta [B, La, d], alpha [B, Lb, d]}.
  decomposable_result forward(const tensor3& a, const tensor3& b,
                              const decomposable_options& opt = {}) const {
    decomposable_result r;
    r.beta = tensor3(a.dimension(0), a.dimension(1), a.dimension(2));
    detail::check_result_size("decomposable_attention::forward", "alpha",
                              std::array<index, 3>{b.dimension(0), b.dimension(1), a.dimension(2)});
    r.alpha = tensor3(b.dimension(0), b.dimension(1), a.dimension(2));
    forward(view(a), view(b), view(r.beta), view(r.alpha), opt);
    return r;
  }

  /// Intra-sentence attention of a [B, L, d] to itself, into out [B, L, d]
  /// (written; out, weights and lse share no memory with
  /// a, the mask, the lengths or each other): out_i = Σ_j softmax_j(scale · F(a_i)·F(a_j)
  /// + d(i − j)) a_j, with the distance bias of intra_attention_options
  /// (Parikh et al. concatenate [a_i, out_i] as the next layer's input).
  /// F here is Parikh's F_intra: make a separate object for it.
  /// @throws attn::error on any shape, stride or option mismatch, or when F
  ///         returns the wrong shape.
  void intra(strided<const float, 3> a, strided<float, 3> out,
             const intra_attention_options& opt = {}) const {
    constexpr const char* fn = "decomposable_attention::intra";
    using detail::require;
    check_input(fn, "a", "a.strides[2]", a, -1, -1);
    const index B = a.dims[0], L = a.dims[1], d = a.dims[2];
    require(!detail::decomposable::absent(out), fn, "out", "a view of [batch, L, d]",
            "an absent view");
    check_output(fn, "out", "out.strides[2]", out, {B, L, d}, "[batch, L, d]");
    check_lengths(fn, "lengths", opt.lengths, B, L);
    check_mask(fn, "mask", "mask.strides", opt.mask, B, L, "[batch, L]");
    detail::check_scale(fn, "scale", opt.scale);
    require(opt.max_distance >= 0, fn, "max_distance", ">= 0", opt.max_distance);
    const index D = opt.max_distance;
    if (!opt.distance_bias.empty()) {
      const index want = opt.symmetric ? D + 1 : 2 * D + 1;
      require(
          static_cast<index>(opt.distance_bias.size()) == want, fn, "distance_bias.size()",
          [&] {
            return std::string("0 (none) or ") +
                   (opt.symmetric ? "max_distance + 1 = " : "2 * max_distance + 1 = ") +
                   std::to_string(want);
          },
          opt.distance_bias.size());
      for (std::size_t k = 0; k < opt.distance_bias.size(); ++k) {
        const float v = opt.distance_bias[k];
        if (std::isnan(v) || v == std::numeric_limits<float>::infinity())
          detail::fail(fn, ("distance_bias[" + std::to_string(k) + "]").c_str(),
                       "a number or -inf (NaN and +inf are not)", v);
      }
    }
    check_weights(fn, "weights", "weights.strides", opt.weights, B, L, L);
    check_lse(fn, "lse", "lse.strides", opt.lse, B, L, "[batch, L]");
    detail::check_num_threads(fn, "num_threads", opt.num_threads);
    using detail::region;
    detail::check_disjoint(
        fn, {region("out", out), region("weights", opt.weights), region("lse", opt.lse)},
        {region("a", a), region("mask", opt.mask), region("lengths", opt.lengths),
         region("distance_bias", opt.distance_bias)});
    if (B == 0) return;

    detail::decomposable::intra(f_, fn, opt.scale, opt.num_threads, a, {opt.lengths, opt.mask},
                                {opt.distance_bias, D, opt.symmetric}, out, {opt.weights, opt.lse});
  }

  /// Tensor convenience of intra: a [B, L, d]; returns [B, L, d].
  tensor3 intra(const tensor3& a, const intra_attention_options& opt = {}) const {
    tensor3 out(a.dimension(0), a.dimension(1), a.dimension(2));
    intra(view(a), view(out), opt);
    return out;
  }

 private:
  // a or b: [batch (= B unless -1), L, d (= D unless -1) >= 1], features
  // contiguous.
  static void check_input(const char* fn, const char* name, const char* stride_name,
                          const strided<const float, 3>& x, index B, index D) {
    using detail::require;
    detail::check_non_null(fn, name, x);
    require(
        x.dims[0] >= 0 && x.dims[1] >= 0 && x.dims[2] >= 1 && (B < 0 || x.dims[0] == B) &&
            (D < 0 || x.dims[2] == D),
        fn, name,
        [&] {
          return std::string("dims [batch") + (B < 0 ? "" : " = " + std::to_string(B)) + ", L, d" +
                 (D < 0 ? " >= 1" : " = " + std::to_string(D)) + "]";
        },
        x.dims);
    detail::check_span(fn, name, x);
    // The kernel copies inputs to rows padded to the packet width (64
    // floats bounds every width); inputs that broadcast may claim more.
    detail::check_size<float>(fn, name, {x.dims[0], x.dims[1], detail::round_up(x.dims[2], 64)},
                              "batch · L · d (the working copy)", x.dims);
    detail::check_unit_last_stride(fn, stride_name, x, detail::short_rows::any_stride);
  }

  static void check_output(const char* fn, const char* name, const char* stride_name,
                           const strided<float, 3>& x, const std::array<index, 3>& want,
                           const char* names) {
    using detail::require;
    if (detail::decomposable::absent(x)) return;
    detail::check_non_null(fn, name, x);
    require(
        x.dims == want, fn, name, [&] { return detail::dims_note(want, names); }, x.dims);
    detail::check_span(fn, name, x);
    detail::check_unit_last_stride(fn, stride_name, x, detail::short_rows::any_stride);
    detail::check_non_overlapping(fn, detail::field_name{name, "strides"}, x);
  }

  static void check_lengths(const char* fn, const char* name, const std::vector<index>& len,
                            index B, index L) {
    detail::require(
        len.empty() || static_cast<index>(len.size()) == B, fn,
        (std::string(name) + ".size()").c_str(),
        [&] { return "0 or batch = " + std::to_string(B); }, len.size());
    for (std::size_t i = 0; i < len.size(); ++i)
      if (len[i] < 0 || len[i] > L)
        detail::fail(fn, (std::string(name) + "[" + std::to_string(i) + "]").c_str(),
                     "a value in [0, " + std::to_string(L) + "]", len[i]);
  }

  static void check_mask(const char* fn, const char* name, const char* stride_name,
                         const strided<const bool, 2>& m, index B, index L, const char* names) {
    using detail::require;
    if (m.empty()) return;
    const std::array<index, 2> want{B, L};
    require(
        m.dims == want, fn, name, [&] { return detail::dims_note(want, names); }, m.dims);
    detail::check_non_negative_strides(fn, stride_name, m);
    detail::check_span(fn, name, m);
  }

  static void check_weights(const char* fn, const char* name, const char* stride_name,
                            const strided<float, 3>& w, index B, index La, index Lb) {
    using detail::require;
    if (w.empty()) return;
    const std::array<index, 3> want{B, La, Lb};
    require(
        w.dims == want, fn, name, [&] { return detail::dims_note(want, "[batch, La, Lb]"); },
        w.dims);
    detail::check_span(fn, name, w);
    detail::check_non_overlapping(fn, stride_name, w);
  }

  static void check_lse(const char* fn, const char* name, const char* stride_name,
                        const strided<float, 2>& v, index B, index L, const char* names) {
    using detail::require;
    if (v.empty()) return;
    const std::array<index, 2> want{B, L};
    require(
        v.dims == want, fn, name, [&] { return detail::dims_note(want, names); }, v.dims);
    detail::check_span(fn, name, v);
    detail::check_non_overlapping(fn, stride_name, v);
  }

  feed_forward f_;
};

}  // namespace ATTN_ABI
}  // namespace attn