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
// How it runs: the La × Lb score matrix is never stored. e is computed tile
// by tile (96 × 96 positions, on the core micro-kernel) twice. Pass 1 keeps
// the online max and sum of every row (over j) and every column (over i) —
// one pass over e's tiles gives both statistics. Pass 2 recomputes each tile,
// turns it into the row-normalised and the column-normalised probabilities
// with the final statistics (no rescaling) and accumulates β += P_row · b and
// α += P_colᵀ · a. Memory: the inputs re-packed (plus F's outputs) and two
// tiles per thread. Tiles are scheduled as a wavefront: in step s, row block
// I meets column block (I + s) mod n, so no two concurrent tasks touch the
// same row or column statistics and every row and column sees its tiles in
// an order fixed by the shape alone: the same bits for any thread count.
// (Parallelism is therefore over batch × min(row blocks, column blocks).)
//
// Tensors are row-major [batch, seq, features]; views (attn/view.hpp) may
// have any strides on batch and seq, the feature dim must be contiguous.
//
// Conventions (as in the rest of attn, DESIGN.md):
//  * bool masks: true = takes part. Lengths hide positions >= length.
//  * A masked position takes part in neither alignment and its own output
//    row is 0; a row (column) with no visible partner gets output 0, weights
//    0 and LSE -inf. Never NaN.
//  * fp32 accumulation; the same output bits for any thread count.
//  * A score of +inf (an fp32 product that overflowed) takes the row's
//    weight (shared among such scores); -inf weighs 0, and a row whose
//    scores are all -inf is empty. A dot product with both +inf and -inf
//    terms is NaN, as in any fp32 GEMM: inputs must keep F(a_i)·F(b_j)
//    representable.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <array>
#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <unsupported/Eigen/CXX11/Tensor>
#include <utility>
#include <vector>

#include "attn/core/abi.hpp"
#include "attn/core/math.hpp"
#include "attn/core/microkernel.hpp"
#include "attn/core/parallel.hpp"
#include "attn/core/simd.hpp"
#include "attn/core/softmax.hpp"
#include "attn/error.hpp"
#include "attn/sdpa.hpp"  // detail::dims_note
#include "attn/view.hpp"

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
namespace decomposable_kernel {

/// Positions per side of a score tile: a multiple of both micro-kernel
/// shapes' rows and columns on every instruction set.
constexpr index tile = 96;
using score_shape = core::score_tile;
using acc_shape = core::accumulate_tile;
static_assert(tile % score_shape::rows == 0 && tile % score_shape::cols == 0 &&
                  tile % simd::width == 0,
              "decomposable_kernel::tile must be a whole number of micro-kernel tiles");

// C (=|+=) A · B for any number of rows (whole Shape::rows blocks, then
// single rows) and cols a multiple of Shape::cols. Every element is the
// same fma chain over the depth whichever path computes it.
template <class Shape, bool Accumulate>
inline void gemm_rows(const core::lhs& a, const core::rhs& b, index depth, float* c, index ldc,
                      index rows, index cols) {
  using one = core::tile_shape<1, Shape::packets>;
  index r = 0;
  for (; r + Shape::rows <= rows; r += Shape::rows) {
    const core::lhs ar{a.data + r * a.row_stride, a.row_stride, a.depth_stride};
    for (index c0 = 0; c0 < cols; c0 += Shape::cols)
      core::gemm_tile<Shape, Accumulate>(ar, core::rhs{b.data + c0, b.row_stride}, depth,
                                         c + r * ldc + c0, ldc);
  }
  for (; r < rows; ++r) {
    const core::lhs ar{a.data + r * a.row_stride, a.row_stride, a.depth_stride};
    for (index c0 = 0; c0 < cols; c0 += Shape::cols)
      core::gemm_tile<one, Accumulate>(ar, core::rhs{b.data + c0, b.row_stride}, depth,
                                       c + r * ldc + c0, ldc);
  }
}

// Everything one call needs, packed by the calling thread. Per batch b:
//   fa    F(a) rows, depth df, row stride fa_row          (read)
//   fbt   F(b)ᵀ per column tile J: [nJ][df][tile], zero-padded, so a
//         tile's right operand is contiguous (a row stride of lbs would
//         be a multiple of 4 KiB for many lengths: L1 set conflicts)  (read)
//   aval  a [las, dpad], masked rows and padding zero     (read)
//   bval  b [lbs, dpad], the same                          (read)
//   rm/rl row max / sum (pass 1), then pivot / 1/sum       [La]
//   cm/cl the same per column                              [lbs]
//   beta  Σ P_row b accumulators [La, dpad]; alpha [Lb, dpad]
// las / lbs round La / Lb up to the score tile's columns.
struct problem {
  index B = 0, La = 0, Lb = 0, las = 0, lbs = 0, d = 0, dpad = 0, df = 0, nJ = 0;
  const float* fa = nullptr;
  index fa_batch = 0, fa_row = 0;
  const float* fbt = nullptr;
  const float* aval = nullptr;
  const float* bval = nullptr;
  const char* vis_a = nullptr;  // [B, La]
  const char* vis_b = nullptr;  // [B, Lb]
  const index* len_a = nullptr;  // [B] extent of the visible prefix
  const index* len_b = nullptr;
  float c2 = 0.0f;  // scale · log2 e
  const float* bias2 = nullptr;  // intra: distance bias in log2 units
  index max_distance = 0;
  bool symmetric = false;
  bool rows = false, cols = false;  // which statistics / outputs are wanted
  float* rm = nullptr;
  float* rl = nullptr;
  float* cm = nullptr;
  float* cl = nullptr;
  float* beta = nullptr;   // null: not wanted
  float* alpha = nullptr;  // null: not wanted
  strided<float, 3> row_w, col_w;
};

// The extents of tile (I, J) of batch b: rows [i0, i0 + ti), columns
// [j0, j0 + tj), tjp = tj rounded up to whole score-tile columns. False
// when the tile lies beyond the visible prefix.
struct tile_extent {
  index i0, ti, j0, tj, tjp;
};
inline bool extent(const problem& p, index b, index I, index J, tile_extent& x) {
  x.i0 = I * tile;
  x.j0 = J * tile;
  x.ti = std::min(tile, p.len_a[b] - x.i0);
  x.tj = std::min(tile, p.len_b[b] - x.j0);
  if (x.ti <= 0 || x.tj <= 0) return false;
  x.tjp = detail::round_up(x.tj, score_shape::cols);
  return true;
}

// e [ti x tile]: the tile's scores in log2 units (scale · log2 e · F(a)·F(b)
// (+ distance bias)); -inf where a row or column is masked and in the
// padding columns [tj, tjp).
inline void scores(const problem& p, index b, const tile_extent& x, float* e) {
  constexpr float ninf = softmax::neg_inf;
  gemm_rows<score_shape, false>(
      core::lhs{p.fa + b * p.fa_batch + x.i0 * p.fa_row, p.fa_row, 1},
      core::rhs{p.fbt + (b * p.nJ + x.j0 / tile) * p.df * tile, tile}, p.df, e, tile, x.ti,
      x.tjp);
  const char* va = p.vis_a + b * p.La + x.i0;
  const char* vb = p.vis_b + b * p.Lb + x.j0;
  const float c2 = p.c2;
  for (index r = 0; r < x.ti; ++r) {
    float* er = e + r * tile;
    if (!va[r]) {
      for (index c = 0; c < x.tjp; ++c) er[c] = ninf;
      continue;
    }
    for (index c = 0; c < x.tj; ++c) er[c] = vb[c] ? er[c] * c2 : ninf;
    for (index c = x.tj; c < x.tjp; ++c) er[c] = ninf;
    if (p.bias2) {
      const index D = p.max_distance;
      for (index c = 0; c < x.tj; ++c) {
        const index dist = (x.i0 + r) - (x.j0 + c);
        const index k = p.symmetric ? std::min(dist < 0 ? -dist : dist, D)
                                    : std::min(std::max(dist, -D), D) + D;
        const float bias = p.bias2[k];
        er[c] = bias == ninf ? ninf : er[c] + bias;
      }
    }
  }
}

// Pass 1 on one tile: online row statistics over its columns and column
// statistics over its rows (log2 units, maxima clamped to max_finite).
inline void stats_tile(const problem& p, index b, const tile_extent& x, float* e) {
  using namespace simd;
  scores(p, b, x, e);
  if (p.rows) {
    float* rm = p.rm + b * p.La + x.i0;
    float* rl = p.rl + b * p.La + x.i0;
    for (index r = 0; r < x.ti; ++r) {
      const float* er = e + r * tile;
      packet vm = broadcast(softmax::neg_inf);
      for (index c = 0; c < x.tjp; c += width) vm = simd::max(vm, load(er + c));
      const float tmax = reduce_max(vm);
      if (!(tmax > softmax::neg_inf)) continue;  // nothing visible (or NaN)
      const float mn = std::min(std::max(rm[r], tmax), softmax::max_finite);
      const packet pv = broadcast(mn);
      packet vs = zero();
      for (index c = 0; c < x.tjp; c += width)
        vs = add(vs, exp2_nonpositive(sub(load(er + c), pv)));
      rl[r] = rl[r] * exp2_nonpositive_scalar(rm[r] - mn) + reduce_add(vs);
      rm[r] = mn;
    }
  }
  if (p.cols) {
    float* cm = p.cm + b * p.lbs + x.j0;
    float* cl = p.cl + b * p.lbs + x.j0;
    for (index c = 0; c < x.tjp; c += width) {
      packet vm = broadcast(softmax::neg_inf);
      for (index r = 0; r < x.ti; ++r) vm = simd::max(vm, load(e + r * tile + c));
      const packet run_m = load(cm + c);
      const softmax::packet_step st = softmax::online_step(run_m, vm);
      packet vs = zero();
      for (index r = 0; r < x.ti; ++r)
        vs = add(vs, exp2_nonpositive(sub(load(e + r * tile + c), st.pivot)));
      store(cl + c, simd::fma(load(cl + c), st.factor, vs));
      store(cm + c, st.max);
    }
  }
}

// Pass 2 on one tile: probabilities from the final statistics, then
// alpha[j0..] += P_colᵀ · a[i0..] and beta[i0..] += P_row · b[j0..].
inline void accumulate_tile(const problem& p, index b, const tile_extent& x, float* e,
                            float* pc) {
  using namespace simd;
  scores(p, b, x, e);
  if (p.cols) {
    const float* cm = p.cm + b * p.lbs + x.j0;  // pivots
    const float* cl = p.cl + b * p.lbs + x.j0;  // 1 / sums
    for (index c = 0; c < x.tjp; c += width) {
      const packet pv = load(cm + c), inv = load(cl + c);
      for (index r = 0; r < x.ti; ++r)
        store(pc + r * tile + c, mul(exp2_nonpositive(sub(load(e + r * tile + c), pv)), inv));
    }
    if (p.alpha)
      gemm_rows<acc_shape, true>(core::lhs{pc, 1, tile},
                                 core::rhs{p.aval + (b * p.las + x.i0) * p.dpad, p.dpad}, x.ti,
                                 p.alpha + (b * p.Lb + x.j0) * p.dpad, p.dpad, x.tj, p.dpad);
    if (!p.col_w.empty())
      for (index r = 0; r < x.ti; ++r)
        for (index c = 0; c < x.tj; ++c) *p.col_w.at(b, x.i0 + r, x.j0 + c) = pc[r * tile + c];
  }
  if (p.rows) {
    const float* rm = p.rm + b * p.La + x.i0;
    const float* rl = p.rl + b * p.La + x.i0;
    for (index r = 0; r < x.ti; ++r) {
      float* er = e + r * tile;
      const packet pv = broadcast(rm[r]), inv = broadcast(rl[r]);
      for (index c = 0; c < x.tjp; c += width)
        store(er + c, mul(exp2_nonpositive(sub(load(er + c), pv)), inv));
    }
    if (p.beta)
      gemm_rows<acc_shape, true>(core::lhs{e, tile, 1},
                                 core::rhs{p.bval + (b * p.lbs + x.j0) * p.dpad, p.dpad}, x.tjp,
                                 p.beta + (b * p.La + x.i0) * p.dpad, p.dpad, x.ti, p.dpad);
    if (!p.row_w.empty())
      for (index r = 0; r < x.ti; ++r)
        for (index c = 0; c < x.tj; ++c) *p.row_w.at(b, x.i0 + r, x.j0 + c) = e[r * tile + c];
  }
}

// Turns n (max, sum) statistics into (pivot, 1 / sum) and writes the
// first n_lse LSEs (the rest are padding columns).
inline void finish_stats(float* m, float* l, index n, float* lse_out, index lse_stride,
                         index n_lse) {
  for (index k = 0; k < n; ++k) {
    const softmax::row_result res = softmax::finish_row_log2(m[k], l[k]);
    if (lse_out && k < n_lse) lse_out[k * lse_stride] = res.lse;
    m[k] = m[k] == softmax::neg_inf ? 0.0f : m[k];
    l[k] = res.inv_sum;
  }
}

struct scratch {
  std::vector<float> e, pc;
};

// Both passes. With column statistics the tiles run as a wavefront (see
// the file comment); with row statistics only, each task owns a row block
// and sweeps its column blocks in order.
inline void run(problem& p, strided<float, 2> row_lse, strided<float, 2> col_lse, int threads) {
  const index nI = detail::ceil_div(p.La, tile), nJ = detail::ceil_div(p.Lb, tile);
  auto make = [] {
    scratch s;
    s.e.assign(static_cast<std::size_t>(tile * tile), 0.0f);
    s.pc.assign(static_cast<std::size_t>(tile * tile), 0.0f);
    return s;
  };
  const problem& cp = p;
  auto finish = [&] {
    for (index b = 0; b < p.B; ++b) {
      if (p.rows)
        finish_stats(p.rm + b * p.La, p.rl + b * p.La, p.La,
                     row_lse.empty() ? nullptr : row_lse.at(b, 0), row_lse.strides[1], p.La);
      if (p.cols)
        finish_stats(p.cm + b * p.lbs, p.cl + b * p.lbs, p.lbs,
                     col_lse.empty() ? nullptr : col_lse.at(b, 0), col_lse.strides[1], p.Lb);
    }
  };
  if (p.cols) {
    const index n = std::max(nI, nJ);
    for (int pass = 1; pass <= 2; ++pass) {
      for (index s = 0; s < n; ++s)
        core::parallel_for(p.B * nI, threads, make, [&](scratch& sc, index t) {
          const index b = t / nI, I = t % nI, J = (I + s) % n;
          tile_extent x;
          if (J >= nJ || !extent(cp, b, I, J, x)) return;
          if (pass == 1)
            stats_tile(cp, b, x, sc.e.data());
          else
            accumulate_tile(cp, b, x, sc.e.data(), sc.pc.data());
        });
      if (pass == 1) finish();
    }
  } else {
    for (int pass = 1; pass <= 2; ++pass) {
      core::parallel_for(p.B * nI, threads, make, [&](scratch& sc, index t) {
        const index b = t / nI, I = t % nI;
        for (index J = 0; J < nJ; ++J) {
          tile_extent x;
          if (!extent(cp, b, I, J, x)) continue;
          if (pass == 1)
            stats_tile(cp, b, x, sc.e.data());
          else
            accumulate_tile(cp, b, x, sc.e.data(), sc.pc.data());
        }
      });
      if (pass == 1) finish();
    }
  }
}

}  // namespace decomposable_kernel

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
  /// Row-major [batch, seq, features] tensor of the convenience overloads.
  using tensor3 = Eigen::Tensor<float, 3, Eigen::RowMajor>;

  /// F empty = the identity (e_ij = scale · a_i · b_j).
  explicit decomposable_attention(feed_forward f = {}) : f_(std::move(f)) {}

  /// True when a feed-forward function was given.
  bool has_feed_forward() const { return static_cast<bool>(f_); }

  /// Both alignments of a [B, La, d] and b [B, Lb, d]: beta [B, La, d] and
  /// alpha [B, Lb, d] (written; must not alias the inputs). Either output
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
    check_scale(fn, opt.scale);
    check_weights(fn, "row_weights", "row_weights.strides", opt.row_weights, B, La, Lb);
    check_weights(fn, "col_weights", "col_weights.strides", opt.col_weights, B, La, Lb);
    check_lse(fn, "row_lse", "row_lse.strides", opt.row_lse, B, La, "[batch, La]");
    check_lse(fn, "col_lse", "col_lse.strides", opt.col_lse, B, Lb, "[batch, Lb]");
    require(opt.num_threads >= 0, fn, "num_threads", ">= 0 (0 = default)", opt.num_threads);
    if (B == 0) return;

    const bool want_rows = !absent(beta) || !opt.row_weights.empty() || !opt.row_lse.empty();
    const bool want_cols = !absent(alpha) || !opt.col_weights.empty() || !opt.col_lse.empty();
    packed pk;
    pk.p.rows = want_rows;
    pk.p.cols = want_cols;
    pack(fn, pk, a, b, /*intra=*/false, opt.a_lengths, opt.b_lengths, opt.a_mask, opt.b_mask,
         opt.scale);
    if (!absent(beta)) pk.beta.assign(static_cast<std::size_t>(B * La * pk.p.dpad), 0.0f);
    if (!absent(alpha)) pk.alpha.assign(static_cast<std::size_t>(B * Lb * pk.p.dpad), 0.0f);
    fill(opt.row_weights, 0.0f);
    fill(opt.col_weights, 0.0f);
    fill(opt.row_lse, softmax::neg_inf);
    fill(opt.col_lse, softmax::neg_inf);
    if (La > 0 && Lb > 0 && (want_rows || want_cols)) {
      pk.p.beta = pk.beta.empty() ? nullptr : pk.beta.data();
      pk.p.alpha = pk.alpha.empty() ? nullptr : pk.alpha.data();
      pk.p.row_w = opt.row_weights;
      pk.p.col_w = opt.col_weights;
      const double flops = static_cast<double>(B) * double(La) * double(Lb) *
                           (4.0 * double(pk.p.df) + 2.0 * double(d) * (want_rows + want_cols) + 40.0);
      decomposable_kernel::run(pk.p, opt.row_lse, opt.col_lse,
                               core::threads_for_work(opt.num_threads, flops));
    }
    if (!absent(beta)) unpack(pk.beta, pk.p.dpad, beta);
    if (!absent(alpha)) unpack(pk.alpha, pk.p.dpad, alpha);
  }

  /// Tensor convenience: a [B, La, d], b [B, Lb, d]; returns
  /// {beta [B, La, d], alpha [B, Lb, d]}.
  decomposable_result forward(const tensor3& a, const tensor3& b,
                              const decomposable_options& opt = {}) const {
    decomposable_result r;
    r.beta = tensor3(a.dimension(0), a.dimension(1), a.dimension(2));
    r.alpha = tensor3(b.dimension(0), b.dimension(1), a.dimension(2));
    forward(view(a), view(b), view(r.beta), view(r.alpha), opt);
    return r;
  }

  /// Intra-sentence attention of a [B, L, d] to itself, into out [B, L, d]
  /// (written; must not alias a): out_i = Σ_j softmax_j(scale · F(a_i)·F(a_j)
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
    require(!absent(out), fn, "out", "a view of [batch, L, d]", "an absent view");
    check_output(fn, "out", "out.strides[2]", out, {B, L, d}, "[batch, L, d]");
    check_lengths(fn, "lengths", opt.lengths, B, L);
    check_mask(fn, "mask", "mask.strides", opt.mask, B, L, "[batch, L]");
    check_scale(fn, opt.scale);
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
    require(opt.num_threads >= 0, fn, "num_threads", ">= 0 (0 = default)", opt.num_threads);
    if (B == 0) return;

    packed pk;
    pk.p.rows = true;
    pack(fn, pk, a, a, /*intra=*/true, opt.lengths, opt.lengths, opt.mask, opt.mask, opt.scale);
    pk.beta.assign(static_cast<std::size_t>(B * L * pk.p.dpad), 0.0f);
    fill(opt.weights, 0.0f);
    fill(opt.lse, softmax::neg_inf);
    std::vector<float> bias2(opt.distance_bias.size());
    for (std::size_t k = 0; k < bias2.size(); ++k)
      bias2[k] = softmax::additive_to_log2(opt.distance_bias[k]);
    if (L > 0) {
      pk.p.beta = pk.beta.data();
      pk.p.row_w = opt.weights;
      pk.p.bias2 = bias2.empty() ? nullptr : bias2.data();
      pk.p.max_distance = D;
      pk.p.symmetric = opt.symmetric;
      const double flops = static_cast<double>(B) * double(L) * double(L) *
                           (2.0 * double(pk.p.df) + 2.0 * double(d) + 30.0);
      decomposable_kernel::run(pk.p, opt.lse, {}, core::threads_for_work(opt.num_threads, flops));
    }
    unpack(pk.beta, pk.p.dpad, out);
  }

  /// Tensor convenience of intra: a [B, L, d]; returns [B, L, d].
  tensor3 intra(const tensor3& a, const intra_attention_options& opt = {}) const {
    tensor3 out(a.dimension(0), a.dimension(1), a.dimension(2));
    intra(view(a), view(out), opt);
    return out;
  }

 private:
  // Buffers behind a decomposable_kernel::problem.
  struct packed {
    decomposable_kernel::problem p;
    std::vector<float> fa, fbt, aval, bval, rm, rl, cm, cl, beta, alpha;
    std::vector<char> vis_a, vis_b;
    std::vector<index> len_a, len_b;
  };

  // An optional argument left out: null data and all extents 0 ({}).
  template <class T, int R>
  static bool absent(const strided<T, R>& v) {
    return v.empty() && v.dims == std::array<index, R>{};
  }

  template <int R>
  static void fill(const strided<float, R>& v, float x) {
    if (v.empty() || detail::has_zero_extent(v)) return;
    if constexpr (R == 2) {
      for (index i = 0; i < v.dims[0]; ++i)
        for (index j = 0; j < v.dims[1]; ++j) *v.at(i, j) = x;
    } else {
      for (index i = 0; i < v.dims[0]; ++i)
        for (index j = 0; j < v.dims[1]; ++j)
          for (index k = 0; k < v.dims[2]; ++k) *v.at(i, j, k) = x;
    }
  }

  // a or b: [batch (= B unless -1), L, d (= D unless -1) >= 1], features
  // contiguous.
  static void check_input(const char* fn, const char* name, const char* stride_name,
                          const strided<const float, 3>& x, index B, index D) {
    using detail::require;
    require(!x.empty() || detail::has_zero_extent(x), fn, name, "a non-null view", "null data");
    require(
        x.dims[0] >= 0 && x.dims[1] >= 0 && x.dims[2] >= 1 && (B < 0 || x.dims[0] == B) &&
            (D < 0 || x.dims[2] == D),
        fn, name,
        [&] {
          return std::string("dims [batch") + (B < 0 ? "" : " = " + std::to_string(B)) +
                 ", L, d" + (D < 0 ? " >= 1" : " = " + std::to_string(D)) + "]";
        },
        x.dims);
    require(x.strides[2] == 1 || x.dims[2] <= 1, fn, stride_name, "1 (contiguous features)",
            x.strides[2]);
  }

  static void check_output(const char* fn, const char* name, const char* stride_name,
                           const strided<float, 3>& x, const std::array<index, 3>& want,
                           const char* names) {
    using detail::require;
    if (absent(x)) return;
    require(!x.empty() || detail::has_zero_extent(x), fn, name, "a non-null view", "null data");
    require(
        x.dims == want, fn, name, [&] { return detail::dims_note(want, names); }, x.dims);
    require(x.strides[2] == 1 || x.dims[2] <= 1, fn, stride_name, "1 (contiguous features)",
            x.strides[2]);
    require(detail::non_overlapping(x), fn, (std::string(name) + ".strides").c_str(),
            "strides under which no two elements overlap", x.strides);
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
    require(m.strides[0] >= 0 && m.strides[1] >= 0, fn, stride_name, "non-negative strides",
            m.strides);
  }

  static void check_scale(const char* fn, float scale) {
    detail::require(std::isfinite(scale) && std::isfinite(scale * softmax::log2e), fn, "scale",
                    "a finite number below FLT_MAX / log2(e)", scale);
  }

  static void check_weights(const char* fn, const char* name, const char* stride_name,
                            const strided<float, 3>& w, index B, index La, index Lb) {
    using detail::require;
    if (w.empty()) return;
    const std::array<index, 3> want{B, La, Lb};
    require(
        w.dims == want, fn, name, [&] { return detail::dims_note(want, "[batch, La, Lb]"); },
        w.dims);
    require(detail::non_overlapping(w), fn, stride_name,
            "strides under which no two elements overlap", w.strides);
  }

  static void check_lse(const char* fn, const char* name, const char* stride_name,
                        const strided<float, 2>& v, index B, index L, const char* names) {
    using detail::require;
    if (v.empty()) return;
    const std::array<index, 2> want{B, L};
    require(
        v.dims == want, fn, name, [&] { return detail::dims_note(want, names); }, v.dims);
    require(detail::non_overlapping(v), fn, stride_name,
            "strides under which no two elements overlap", v.strides);
  }

  // Applies F to the [L, d] rows of one batch element (masked rows zero)
  // and checks what comes back; df < 0 on the first call.
  matrix apply_f(const char* fn, const char* what, const float* rows_data, index L, index d,
                 index stride, index& df) const {
    const rows x(rows_data, L, d, Eigen::OuterStride<>(stride));
    matrix y = f_(x);
    detail::require(
        y.rows() == L && y.cols() >= 1 && (df < 0 || y.cols() == df), fn, what,
        [&] {
          return "a matrix of [L = " + std::to_string(L) + ", " +
                 (df < 0 ? std::string("d_f >= 1") : "d_f = " + std::to_string(df)) + "]";
        },
        [&] {
          return "[" + std::to_string(y.rows()) + ", " + std::to_string(y.cols()) + "]";
        });
    df = y.cols();
    return y;
  }

  // Packs the inputs (visibility, zero-padded values, F(a), F(b)ᵀ) and the
  // statistics buffers in the calling thread. For intra, b is a.
  void pack(const char* fn, packed& pk, const strided<const float, 3>& a,
            const strided<const float, 3>& b, bool intra, const std::vector<index>& a_len,
            const std::vector<index>& b_len, const strided<const bool, 2>& a_mask,
            const strided<const bool, 2>& b_mask, float scale) const {
    using decomposable_kernel::score_shape;
    decomposable_kernel::problem& p = pk.p;
    const index B = a.dims[0], La = a.dims[1], Lb = b.dims[1], d = a.dims[2];
    p.B = B;
    p.La = La;
    p.Lb = Lb;
    p.d = d;
    p.las = detail::round_up(La, score_shape::cols);
    p.lbs = detail::round_up(Lb, score_shape::cols);
    p.dpad = detail::round_up(d, decomposable_kernel::acc_shape::cols);
    p.c2 = scale * softmax::log2e;
    p.nJ = detail::ceil_div(Lb, decomposable_kernel::tile);
    auto visibility = [&](const strided<const float, 3>& x, const std::vector<index>& len,
                          const strided<const bool, 2>& mask, index Lx, index Ls,
                          std::vector<char>& vis, std::vector<index>& ext,
                          std::vector<float>& val) {
      vis.assign(static_cast<std::size_t>(B * Lx), 0);
      ext.assign(static_cast<std::size_t>(B), 0);
      val.assign(static_cast<std::size_t>(B * Ls * p.dpad), 0.0f);
      for (index bb = 0; bb < B; ++bb) {
        const index n = len.empty() ? Lx : len[static_cast<std::size_t>(bb)];
        ext[static_cast<std::size_t>(bb)] = n;
        for (index i = 0; i < n; ++i) {
          const bool on = mask.empty() || *mask.at(bb, i);
          vis[static_cast<std::size_t>(bb * Lx + i)] = on;
          if (!on) continue;
          const float* src = x.at(bb, i, 0);
          float* dst = val.data() + (bb * Ls + i) * p.dpad;
          std::copy(src, src + d, dst);
        }
      }
    };
    visibility(a, a_len, a_mask, La, p.las, pk.vis_a, pk.len_a, pk.aval);
    if (intra) {
      pk.vis_b = pk.vis_a;
      pk.len_b = pk.len_a;
    } else {
      visibility(b, b_len, b_mask, Lb, p.lbs, pk.vis_b, pk.len_b, pk.bval);
    }
    p.aval = pk.aval.data();
    p.bval = intra ? pk.aval.data() : pk.bval.data();
    p.vis_a = pk.vis_a.data();
    p.vis_b = pk.vis_b.data();
    p.len_a = pk.len_a.data();
    p.len_b = pk.len_b.data();

    // Scores' left operand F(a) and right operand F(b)ᵀ.
    if (!f_ || La == 0 || Lb == 0) {
      p.df = d;
      p.fa = p.aval;
      p.fa_batch = p.las * p.dpad;
      p.fa_row = p.dpad;
      pack_fbt(pk, [&](index bb, index j) { return p.bval + (bb * p.lbs + j) * p.dpad; });
    } else {
      index df = -1;
      std::vector<matrix> fb(intra ? 0 : static_cast<std::size_t>(B));
      for (index bb = 0; bb < B; ++bb) {
        matrix fa = apply_f(fn, "feed_forward(a)",
                            p.aval + bb * p.las * p.dpad, La, d, p.dpad, df);
        if (bb == 0) pk.fa.assign(static_cast<std::size_t>(B * La * df), 0.0f);
        std::copy(fa.data(), fa.data() + La * df, pk.fa.data() + bb * La * df);
        if (!intra)
          fb[static_cast<std::size_t>(bb)] =
              apply_f(fn, "feed_forward(b)", p.bval + bb * p.lbs * p.dpad, Lb, d, p.dpad, df);
      }
      p.df = df;
      p.fa = pk.fa.data();
      p.fa_batch = La * df;
      p.fa_row = df;
      pack_fbt(pk, [&](index bb, index j) {
        return intra ? pk.fa.data() + (bb * La + j) * df
                     : fb[static_cast<std::size_t>(bb)].data() + j * df;
      });
    }
    p.fbt = pk.fbt.data();

    if (p.rows) {
      pk.rm.assign(static_cast<std::size_t>(B * La), softmax::neg_inf);
      pk.rl.assign(static_cast<std::size_t>(B * La), 0.0f);
      p.rm = pk.rm.data();
      p.rl = pk.rl.data();
    }
    if (p.cols) {
      pk.cm.assign(static_cast<std::size_t>(B * p.lbs), softmax::neg_inf);
      pk.cl.assign(static_cast<std::size_t>(B * p.lbs), 0.0f);
      p.cm = pk.cm.data();
      p.cl = pk.cl.data();
    }
  }

  // F(b)ᵀ in column tiles (see decomposable_kernel::problem); row(b, j)
  // gives F(b_j), p.df floats.
  template <class Row>
  static void pack_fbt(packed& pk, Row row) {
    using decomposable_kernel::tile;
    const decomposable_kernel::problem& p = pk.p;
    pk.fbt.assign(static_cast<std::size_t>(p.B * p.nJ * p.df * tile), 0.0f);
    for (index b = 0; b < p.B; ++b)
      for (index j = 0; j < p.Lb; ++j) {
        const float* src = row(b, j);
        float* dst = pk.fbt.data() + ((b * p.nJ + j / tile) * p.df) * tile + j % tile;
        for (index k = 0; k < p.df; ++k) dst[k * tile] = src[k];
      }
  }

  // Copies [B, L, dpad] accumulators into the [B, L, d] output view.
  static void unpack(const std::vector<float>& acc, index dpad, const strided<float, 3>& out) {
    const index B = out.dims[0], L = out.dims[1], d = out.dims[2];
    for (index b = 0; b < B; ++b)
      for (index i = 0; i < L; ++i) {
        const float* src = acc.data() + (b * L + i) * dpad;
        float* dst = out.at(b, i, 0);
        for (index k = 0; k < d; ++k) dst[k * out.strides[2]] = src[k];
      }
  }

  feed_forward f_;
};

}  // namespace ATTN_ABI
}  // namespace attn
