// attn/detail/decomposable.hpp: the kernel behind attn::decomposable_attention
// (attn/decomposable.hpp): packing, the two passes over the score tiles and
// their schedule. Arguments arrive validated.
//
// Internal header. A public header defines ATTN_DETAIL_ALLOWED before it
// includes its detail headers and never undefines it, so public headers
// nest and combine in any order; a translation unit that reaches this file
// without going through one stops at the #error below (Eigen's scheme).
//
// The La × Lb score matrix is never stored. e is computed tile by tile
// (tile × tile positions, on the core micro-kernel) twice. Pass 1 keeps the
// online max and sum of every row (over j) and every column (over i) — one
// pass over e's tiles gives both statistics. Pass 2 recomputes each tile,
// turns it into the row-normalised and the column-normalised probabilities
// with the final statistics (no rescaling) and accumulates β += P_row · b
// and α += P_colᵀ · a. Memory: the inputs re-packed (plus F's outputs) and
// two tiles per thread. Tiles are scheduled as a wavefront: in step s, row
// block I meets column block (I + s) mod n, so no two concurrent tasks touch
// the same row or column statistics and every row and column sees its
// tiles in an order fixed by the shape alone: the same bits for any thread
// count. (Parallelism is therefore over batch × min(row blocks, column
// blocks).)
#pragma once

#ifndef ATTN_DETAIL_ALLOWED
#error "attn/detail/decomposable.hpp is internal: include <attn/decomposable.hpp>"
#endif

#include <Eigen/Core>
#include <algorithm>
#include <array>
#include <cstddef>
#include <functional>
#include <string>
#include <vector>

#include "attn/core/abi.hpp"
#include "attn/core/index.hpp"
#include "attn/core/math.hpp"
#include "attn/core/microkernel.hpp"
#include "attn/core/parallel.hpp"
#include "attn/core/simd.hpp"
#include "attn/core/softmax.hpp"
#include "attn/error.hpp"
#include "attn/size_checks.hpp"
#include "attn/view.hpp"

namespace attn::detail::decomposable {
inline namespace ATTN_ABI {

/// Positions per side of a score tile: a multiple of both micro-kernel
/// shapes' rows and columns on every instruction set.
constexpr index tile = 96;
using score_shape = core::score_tile;
using acc_shape = core::accumulate_tile;
static_assert(tile % score_shape::rows == 0 && tile % score_shape::cols == 0 &&
                  tile % core::simd::width == 0,
              "detail::decomposable::tile must be a whole number of micro-kernel tiles");

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
  const char* vis_a = nullptr;   // [B, La]
  const char* vis_b = nullptr;   // [B, Lb]
  const index* len_a = nullptr;  // [B] extent of the visible prefix
  const index* len_b = nullptr;
  float scale_log2 = 0.0f;           // scale · log2 e: scores come out in log2 units
  const float* bias_log2 = nullptr;  // intra: distance bias in log2 units
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
  constexpr float ninf = core::softmax::neg_inf;
  gemm_rows<score_shape, false>(core::lhs{p.fa + b * p.fa_batch + x.i0 * p.fa_row, p.fa_row, 1},
                                core::rhs{p.fbt + (b * p.nJ + x.j0 / tile) * p.df * tile, tile},
                                p.df, e, tile, x.ti, x.tjp);
  const char* va = p.vis_a + b * p.La + x.i0;
  const char* vb = p.vis_b + b * p.Lb + x.j0;
  const float scale_log2 = p.scale_log2;
  for (index r = 0; r < x.ti; ++r) {
    float* er = e + r * tile;
    if (!va[r]) {
      for (index c = 0; c < x.tjp; ++c) er[c] = ninf;
      continue;
    }
    // Visible scores are floored at -FLT_MAX (core::softmax::floor_score):
    // a finite product that overflows stays a visible key.
    for (index c = 0; c < x.tj; ++c)
      er[c] = vb[c] ? core::softmax::floor_score(er[c] * scale_log2) : ninf;
    for (index c = x.tj; c < x.tjp; ++c) er[c] = ninf;
    if (p.bias_log2) {
      const index D = p.max_distance;
      for (index c = 0; c < x.tj; ++c) {
        const index dist = (x.i0 + r) - (x.j0 + c);
        const index k = p.symmetric ? std::min(dist < 0 ? -dist : dist, D)
                                    : std::min(std::max(dist, -D), D) + D;
        const float bias = p.bias_log2[k];
        er[c] = bias == ninf || er[c] == ninf ? ninf : core::softmax::floor_score(er[c] + bias);
      }
    }
  }
}

// Pass 1 on one tile: online row statistics over its columns and column
// statistics over its rows (log2 units, maxima clamped to max_finite).
inline void stats_tile(const problem& p, index b, const tile_extent& x, float* e) {
  using namespace core::simd;
  scores(p, b, x, e);
  if (p.rows) {
    float* rm = p.rm + b * p.La + x.i0;
    float* rl = p.rl + b * p.La + x.i0;
    for (index r = 0; r < x.ti; ++r) {
      const float* er = e + r * tile;
      packet vm = broadcast(core::softmax::neg_inf);
      for (index c = 0; c < x.tjp; c += width) vm = core::simd::max(vm, load(er + c));
      const float tmax = reduce_max(vm);
      if (!(tmax > core::softmax::neg_inf)) continue;  // nothing visible (or NaN)
      const float mn = std::min(std::max(rm[r], tmax), core::softmax::max_finite);
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
      packet vm = broadcast(core::softmax::neg_inf);
      for (index r = 0; r < x.ti; ++r) vm = core::simd::max(vm, load(e + r * tile + c));
      const packet run_m = load(cm + c);
      const core::softmax::packet_step st = core::softmax::online_step(run_m, vm);
      packet vs = zero();
      for (index r = 0; r < x.ti; ++r)
        vs = add(vs, exp2_nonpositive(sub(load(e + r * tile + c), st.pivot)));
      store(cl + c, core::simd::fma(load(cl + c), st.factor, vs));
      store(cm + c, st.max);
    }
  }
}

// Pass 2 on one tile: probabilities from the final statistics, then
// alpha[j0..] += P_colᵀ · a[i0..] and beta[i0..] += P_row · b[j0..].
inline void accumulate_tile(const problem& p, index b, const tile_extent& x, float* e, float* pc) {
  using namespace core::simd;
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
    const core::softmax::row_result res = core::softmax::finish_row_log2(m[k], l[k]);
    if (lse_out && k < n_lse) lse_out[k * lse_stride] = res.lse;
    m[k] = m[k] == core::softmax::neg_inf ? 0.0f : m[k];
    l[k] = res.inv_sum;
  }
}

struct scratch {
  std::vector<float> e, pc;
};

// Both passes. With column statistics the tiles run as a wavefront (see
// the comment at the top); with row statistics only, each task owns a row block
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

// F's types, as attn::decomposable_attention names them: F maps the [L, d]
// rows of one batch element to [L, d_f] rows.
using matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using input_rows = Eigen::Map<const matrix, 0, Eigen::OuterStride<>>;
using feed_forward = std::function<matrix(const input_rows&)>;

// Which positions of one sequence take part: the first lengths[b] (all L
// when empty), less those whose mask entry is false.
struct positions {
  const std::vector<index>& lengths;  // [B] or empty
  strided<const bool, 2> mask;        // [B, L] or empty
};

// The optional outputs of one direction: the weights and the LSE of each
// row of the softmax (rows: over j for each i; columns: over i for each j).
struct outputs {
  strided<float, 3> weights;  // [B, La, Lb] or empty
  strided<float, 2> lse;      // [B, L] or empty
};

// The distance bias of the intra-sentence attention, in natural units.
struct distance_bias {
  const std::vector<float>& values;  // empty: none
  index max_distance;
  bool symmetric;
};

// An optional argument left out: null data and all extents 0 ({}).
template <class T, int R>
bool absent(const strided<T, R>& v) {
  return v.empty() && v.dims == std::array<index, R>{};
}

// Buffers behind a problem.
struct packed {
  problem p;
  std::vector<float> fa, fbt, aval, bval, rm, rl, cm, cl, beta, alpha;
  std::vector<char> vis_a, vis_b;
  std::vector<index> len_a, len_b;
};

template <int R>
void fill(const strided<float, R>& v, float x) {
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

// Applies F to the [L, d] rows of one batch element (masked rows zero) and
// checks what comes back (`fn` names the entry point); df < 0 on the first
// call.
inline matrix apply_f(const feed_forward& f, const char* fn, const char* what,
                      const float* rows_data, index L, index d, index stride, index& df) {
  const input_rows x(rows_data, L, d, Eigen::OuterStride<>(stride));
  matrix y = f(x);
  detail::require(
      y.rows() == L && y.cols() >= 1 && (df < 0 || y.cols() == df), fn, what,
      [&] {
        return "a matrix of [L = " + std::to_string(L) + ", " +
               (df < 0 ? std::string("d_f >= 1") : "d_f = " + std::to_string(df)) + "]";
      },
      [&] { return "[" + std::to_string(y.rows()) + ", " + std::to_string(y.cols()) + "]"; });
  df = y.cols();
  return y;
}

// F(b)ᵀ in column tiles (see problem); row(b, j) gives F(b_j), p.df floats.
template <class Row>
void pack_fbt(packed& pk, Row row) {
  const problem& p = pk.p;
  pk.fbt.assign(static_cast<std::size_t>(p.B * p.nJ * p.df * tile), 0.0f);
  for (index b = 0; b < p.B; ++b)
    for (index j = 0; j < p.Lb; ++j) {
      const float* src = row(b, j);
      float* dst = pk.fbt.data() + ((b * p.nJ + j / tile) * p.df) * tile + j % tile;
      for (index k = 0; k < p.df; ++k) dst[k * tile] = src[k];
    }
}

// Packs the inputs (visibility, zero-padded values, F(a), F(b)ᵀ) and the
// statistics buffers in the calling thread. For intra, b is a. F empty:
// the identity.
inline void pack(const feed_forward& f, const char* fn, packed& pk,
                 const strided<const float, 3>& a, const strided<const float, 3>& b, bool intra,
                 const positions& a_pos, const positions& b_pos, float scale) {
  problem& p = pk.p;
  const index B = a.dims[0], La = a.dims[1], Lb = b.dims[1], d = a.dims[2];
  p.B = B;
  p.La = La;
  p.Lb = Lb;
  p.d = d;
  p.las = detail::round_up(La, score_shape::cols);
  p.lbs = detail::round_up(Lb, score_shape::cols);
  p.dpad = detail::round_up(d, acc_shape::cols);
  p.scale_log2 = scale * core::softmax::log2e;
  p.nJ = detail::ceil_div(Lb, tile);
  auto visibility = [&](const strided<const float, 3>& x, const positions& pos, index Lx, index Ls,
                        std::vector<char>& vis, std::vector<index>& ext, std::vector<float>& val) {
    vis.assign(static_cast<std::size_t>(B * Lx), 0);
    ext.assign(static_cast<std::size_t>(B), 0);
    val.assign(static_cast<std::size_t>(B * Ls * p.dpad), 0.0f);
    for (index bb = 0; bb < B; ++bb) {
      const index n = pos.lengths.empty() ? Lx : pos.lengths[static_cast<std::size_t>(bb)];
      ext[static_cast<std::size_t>(bb)] = n;
      for (index i = 0; i < n; ++i) {
        const bool on = pos.mask.empty() || *pos.mask.at(bb, i);
        vis[static_cast<std::size_t>(bb * Lx + i)] = on;
        if (!on) continue;
        const float* src = x.at(bb, i, 0);
        float* dst = val.data() + (bb * Ls + i) * p.dpad;
        std::copy(src, src + d, dst);
      }
    }
  };
  visibility(a, a_pos, La, p.las, pk.vis_a, pk.len_a, pk.aval);
  if (intra) {
    pk.vis_b = pk.vis_a;
    pk.len_b = pk.len_a;
  } else {
    visibility(b, b_pos, Lb, p.lbs, pk.vis_b, pk.len_b, pk.bval);
  }
  p.aval = pk.aval.data();
  p.bval = intra ? pk.aval.data() : pk.bval.data();
  p.vis_a = pk.vis_a.data();
  p.vis_b = pk.vis_b.data();
  p.len_a = pk.len_a.data();
  p.len_b = pk.len_b.data();

  // Scores' left operand F(a) and right operand F(b)ᵀ.
  if (!f || La == 0 || Lb == 0) {
    p.df = d;
    p.fa = p.aval;
    p.fa_batch = p.las * p.dpad;
    p.fa_row = p.dpad;
    pack_fbt(pk, [&](index bb, index j) { return p.bval + (bb * p.lbs + j) * p.dpad; });
  } else {
    index df = -1;
    std::vector<matrix> fb(intra ? 0 : static_cast<std::size_t>(B));
    for (index bb = 0; bb < B; ++bb) {
      matrix fa =
          apply_f(f, fn, "feed_forward(a)", p.aval + bb * p.las * p.dpad, La, d, p.dpad, df);
      if (bb == 0) {
        // F's width is known only now; B copies of its output (and of F(b)
        // below, in tiles) must fit before they are allocated.
        check_size<float>(fn, "feed_forward(a)", {B, std::max(La, Lb) + tile, df},
                          "batch · L · d_f (F's outputs)", df);
        pk.fa.assign(static_cast<std::size_t>(B * La * df), 0.0f);
      }
      std::copy(fa.data(), fa.data() + La * df, pk.fa.data() + bb * La * df);
      if (!intra)
        fb[static_cast<std::size_t>(bb)] =
            apply_f(f, fn, "feed_forward(b)", p.bval + bb * p.lbs * p.dpad, Lb, d, p.dpad, df);
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
    pk.rm.assign(static_cast<std::size_t>(B * La), core::softmax::neg_inf);
    pk.rl.assign(static_cast<std::size_t>(B * La), 0.0f);
    p.rm = pk.rm.data();
    p.rl = pk.rl.data();
  }
  if (p.cols) {
    pk.cm.assign(static_cast<std::size_t>(B * p.lbs), core::softmax::neg_inf);
    pk.cl.assign(static_cast<std::size_t>(B * p.lbs), 0.0f);
    p.cm = pk.cm.data();
    p.cl = pk.cl.data();
  }
}

// Copies [B, L, dpad] accumulators into the [B, L, d] output view.
inline void unpack(const std::vector<float>& acc, index dpad, const strided<float, 3>& out) {
  const index B = out.dims[0], L = out.dims[1], d = out.dims[2];
  for (index b = 0; b < B; ++b)
    for (index i = 0; i < L; ++i) {
      const float* src = acc.data() + (b * L + i) * dpad;
      float* dst = out.at(b, i, 0);
      for (index k = 0; k < d; ++k) dst[k * out.strides[2]] = src[k];
    }
}

// attn::decomposable_attention::forward after its checks (B >= 1): beta
// from the row softmax and alpha from the column softmax, each an absent
// view ({}) when not wanted, with their weights and LSE on request.
inline void align(const feed_forward& f, const char* fn, float scale, int threads,
                  const strided<const float, 3>& a, const positions& a_pos,
                  const strided<float, 3>& beta, const outputs& row_out,
                  const strided<const float, 3>& b, const positions& b_pos,
                  const strided<float, 3>& alpha, const outputs& col_out) {
  const index B = a.dims[0], La = a.dims[1], Lb = b.dims[1], d = a.dims[2];
  const bool want_rows = !absent(beta) || !row_out.weights.empty() || !row_out.lse.empty();
  const bool want_cols = !absent(alpha) || !col_out.weights.empty() || !col_out.lse.empty();
  packed pk;
  pk.p.rows = want_rows;
  pk.p.cols = want_cols;
  pack(f, fn, pk, a, b, /*intra=*/false, a_pos, b_pos, scale);
  if (!absent(beta)) pk.beta.assign(static_cast<std::size_t>(B * La * pk.p.dpad), 0.0f);
  if (!absent(alpha)) pk.alpha.assign(static_cast<std::size_t>(B * Lb * pk.p.dpad), 0.0f);
  fill(row_out.weights, 0.0f);
  fill(col_out.weights, 0.0f);
  fill(row_out.lse, core::softmax::neg_inf);
  fill(col_out.lse, core::softmax::neg_inf);
  if (La > 0 && Lb > 0 && (want_rows || want_cols)) {
    pk.p.beta = pk.beta.empty() ? nullptr : pk.beta.data();
    pk.p.alpha = pk.alpha.empty() ? nullptr : pk.alpha.data();
    pk.p.row_w = row_out.weights;
    pk.p.col_w = col_out.weights;
    const double flops = static_cast<double>(B) * double(La) * double(Lb) *
                         (4.0 * double(pk.p.df) + 2.0 * double(d) * (want_rows + want_cols) + 40.0);
    run(pk.p, row_out.lse, col_out.lse, core::threads_for_work(threads, flops));
  }
  if (!absent(beta)) unpack(pk.beta, pk.p.dpad, beta);
  if (!absent(alpha)) unpack(pk.alpha, pk.p.dpad, alpha);
}

// attn::decomposable_attention::intra after its checks (B >= 1): out from
// the row softmax of a against itself, with the distance bias, weights and
// LSE on request.
inline void intra(const feed_forward& f, const char* fn, float scale, int threads,
                  const strided<const float, 3>& a, const positions& pos, const distance_bias& bias,
                  const strided<float, 3>& out, const outputs& row_out) {
  const index B = a.dims[0], L = a.dims[1], d = a.dims[2];
  packed pk;
  pk.p.rows = true;
  pack(f, fn, pk, a, a, /*intra=*/true, pos, pos, scale);
  pk.beta.assign(static_cast<std::size_t>(B * L * pk.p.dpad), 0.0f);
  fill(row_out.weights, 0.0f);
  fill(row_out.lse, core::softmax::neg_inf);
  std::vector<float> bias_log2(bias.values.size());
  for (std::size_t k = 0; k < bias_log2.size(); ++k)
    bias_log2[k] = core::softmax::additive_to_log2(bias.values[k]);
  if (L > 0) {
    pk.p.beta = pk.beta.data();
    pk.p.row_w = row_out.weights;
    pk.p.bias_log2 = bias_log2.empty() ? nullptr : bias_log2.data();
    pk.p.max_distance = bias.max_distance;
    pk.p.symmetric = bias.symmetric;
    const double flops = static_cast<double>(B) * double(L) * double(L) *
                         (2.0 * double(pk.p.df) + 2.0 * double(d) + 30.0);
    run(pk.p, row_out.lse, {}, core::threads_for_work(threads, flops));
  }
  unpack(pk.beta, pk.p.dpad, out);
}

}  // namespace ATTN_ABI
}  // namespace attn::detail::decomposable
