// attn/detail/flash_forward.hpp: the tiled forward pass behind
// attn::scaled_dot_product_attention. Arguments arrive validated.
//
// One task = one (batch, query head, tile of q_tile_rows queries). A task
// walks the key tiles its rows can see (the band from attn/mask.hpp), and
// for each one:
//   1. packs K (transposed, converted to float) and V into panels,
//   2. S = (scale · Q) · Kᵀ with the register-blocked micro-kernel,
//   3. masks S and takes each row's max (one pass), updates the online
//      softmax state and rescales O's row only if its max moved,
//   4. P = exp(S - max), row sums (second pass),
//   5. O += P · V.
// Tasks share nothing, so the result is the same for any thread count.
#pragma once

#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

#include <Eigen/Core>

#include "attn/core/math.hpp"
#include "attn/core/microkernel.hpp"
#include "attn/core/parallel.hpp"
#include "attn/core/simd.hpp"
#include "attn/core/softmax.hpp"
#include "attn/mask.hpp"
#include "attn/sdpa_options.hpp"
#include "attn/view.hpp"

namespace attn {
namespace detail {

inline index round_up(index x, index m) { return (x + m - 1) / m * m; }

/// Tile sizes of the flash forward pass (multiples of the micro-kernel's
/// register tile and panel width).
struct flash_tiles {
  static constexpr index q_rows = 8 * core::tile_rows;
  static constexpr index kv_cols = 4 * core::panel_cols;
};

/// One thread's working memory; sized once per call, reused by every task.
struct flash_scratch {
  std::vector<float> q;  // [q_rows][d_qk]     scaled queries
  std::vector<float> k;  // Kᵀ panels          [kv_cols / panel][d_qk][panel]
  std::vector<float> v;  // V panels           [d_v_pad / panel][kv_cols][panel]
  std::vector<float> s;  // [q_rows][kv_cols]  scores, then probabilities
  std::vector<float> o;  // [q_rows][d_v_pad]  unnormalised output rows
  std::vector<softmax::online_state> state;  // [q_rows]

  flash_scratch(index d_qk, index d_v_pad)
      : q(flash_tiles::q_rows * d_qk),
        k(flash_tiles::kv_cols * d_qk),
        v(flash_tiles::kv_cols * d_v_pad),
        s(flash_tiles::q_rows * flash_tiles::kv_cols),
        o(flash_tiles::q_rows * d_v_pad),
        state(flash_tiles::q_rows) {}
};

// Packs keys [j0, j0 + n) of one head as Kᵀ panels, zero-padded to npad
// columns, converting to float.
template <class KV>
void pack_k_panels(const strided<const KV, 4>& k, index b, index h, index j0, index n,
                   index npad, index d_qk, float* dst) {
  constexpr index pc = core::panel_cols;
  for (index jj = 0; jj < npad; ++jj) {
    float* col = dst + (jj / pc) * d_qk * pc + (jj % pc);
    if (jj < n) {
      const KV* src = k.at(b, j0 + jj, h, 0);
      for (index d = 0; d < d_qk; ++d) col[d * pc] = static_cast<float>(src[d]);
    } else {
      for (index d = 0; d < d_qk; ++d) col[d * pc] = 0.0f;
    }
  }
}

// Packs values [j0, j0 + n) of one head as panels of d_v columns, each panel
// npad rows deep; rows >= n and columns >= d_v are zero (so P = 0 there
// never meets garbage).
template <class KV>
void pack_v_panels(const strided<const KV, 4>& v, index b, index h, index j0, index n,
                   index npad, index d_v, index d_v_pad, float* dst) {
  constexpr index pc = core::panel_cols;
  for (index p0 = 0; p0 < d_v_pad; p0 += pc) {
    float* panel = dst + (p0 / pc) * npad * pc;
    const index cols = std::min(pc, d_v - p0);
    for (index jj = 0; jj < npad; ++jj) {
      float* row = panel + jj * pc;
      index c = 0;
      if (jj < n) {
        const KV* src = v.at(b, j0 + jj, h, p0);
        for (; c < cols; ++c) row[c] = static_cast<float>(src[c]);
      }
      for (; c < pc; ++c) row[c] = 0.0f;
    }
  }
}

// Fills x[from, to) with -inf.
inline void mask_range(float* x, index from, index to) {
  for (index j = from; j < to; ++j) x[j] = softmax::neg_inf;
}

// Largest of x[0, n), n a multiple of the packet width.
inline float row_max(const float* x, index n) {
  using namespace simd;
  packet m = broadcast(softmax::neg_inf);
  for (index j = 0; j < n; j += width) m = simd::max(m, load(x + j));
  return reduce_max(m);
}

// x[j] <- exp(x[j] - pivot) for j in [0, n), n a multiple of the packet
// width; returns the sum of the results.
inline float exp_and_sum(float* x, index n, float pivot) {
  using namespace simd;
  const packet pv = broadcast(pivot);
  packet sum = zero();
  for (index j = 0; j < n; j += width) {
    const packet e = simd::exp(sub(load(x + j), pv));
    store(x + j, e);
    sum = add(sum, e);
  }
  return reduce_add(sum);
}

inline void scale_row(float* x, index n, float f) {
  using namespace simd;
  const packet pf = broadcast(f);
  for (index j = 0; j < n; j += width) store(x + j, mul(load(x + j), pf));
}

template <class KV>
void flash_forward(const strided<const float, 4>& q, const strided<const KV, 4>& k,
                   const strided<const KV, 4>& v, const strided<float, 4>& out, float scale,
                   const sdpa_options& opt) {
  const index B = q.dims[0], L = q.dims[1], Hq = q.dims[2], d_qk = q.dims[3];
  const index S = k.dims[1], Hkv = k.dims[2], d_v = v.dims[3];
  const index d_v_pad = round_up(d_v, core::panel_cols);
  const index group = Hq / Hkv;
  constexpr index BQ = flash_tiles::q_rows, BK = flash_tiles::kv_cols;
  const index q_tiles = (L + BQ - 1) / BQ;
  const index tasks = B * Hq * q_tiles;
  const sliding_window* window = opt.window ? &*opt.window : nullptr;
  const bool has_bool = !opt.bool_mask.empty(), has_add = !opt.additive_mask.empty();

  auto run_task = [&](flash_scratch& ws, index t) {
    const index qt = t % q_tiles, h = (t / q_tiles) % Hq, b = t / (q_tiles * Hq);
    const index hk = h / group;
    const index i0 = qt * BQ, rows = std::min(BQ, L - i0);
    const index rows_pad = round_up(rows, core::tile_rows);
    const index key_len = opt.key_lengths.empty() ? S : opt.key_lengths[b];
    const band_mask band(L, S, key_len, opt.causal, window);

    // Scaled queries; padding rows are zero.
    for (index r = 0; r < rows_pad; ++r) {
      float* dst = ws.q.data() + r * d_qk;
      if (r < rows) {
        const float* src = q.at(b, i0 + r, h, 0);
        for (index d = 0; d < d_qk; ++d) dst[d] = src[d] * scale;
      } else {
        std::fill(dst, dst + d_qk, 0.0f);
      }
      ws.state[r] = softmax::online_state{};
    }
    std::fill(ws.o.begin(), ws.o.begin() + rows_pad * d_v_pad, 0.0f);

    const key_band span = band.rows(i0, i0 + rows);
    for (index j0 = std::max<index>(span.first, 0); j0 <= span.last; j0 += BK) {
      const index n = std::min(BK, span.last + 1 - j0);
      const index npad = round_up(n, core::panel_cols);

      // Per-row visible columns [lo, hi] of this tile from the band; skip the
      // tile when no row sees any of it (or a bool mask hides all of it).
      bool any = false;
      for (index r = 0; r < rows && !any; ++r) {
        const key_band kb = band.row(i0 + r);
        const index lo = std::max(kb.first, j0), hi = std::min(kb.last, j0 + n - 1);
        if (lo > hi) continue;
        if (!has_bool) {
          any = true;
          break;
        }
        const bool* m = opt.bool_mask.at(b, h, i0 + r, 0);
        const index ms = opt.bool_mask.strides[3];
        for (index j = lo; j <= hi; ++j)
          if (m[j * ms]) {
            any = true;
            break;
          }
      }
      if (!any) continue;

      pack_k_panels(k, b, hk, j0, n, npad, d_qk, ws.k.data());
      pack_v_panels(v, b, hk, j0, n, npad, d_v, d_v_pad, ws.v.data());
      core::gemm_block<false>(ws.q.data(), d_qk, ws.k.data(), d_qk, ws.s.data(), BK, rows_pad,
                              npad);

      const bool full = !has_bool && !has_add && n == npad && band.tile_full(i0, i0 + rows, j0, j0 + n);
      for (index r = 0; r < rows_pad; ++r) {
        float* srow = ws.s.data() + r * BK;
        if (!full) {
          const key_band kb = r < rows ? band.row(i0 + r) : key_band{0, -1};
          const index lo = std::max<index>(kb.first - j0, 0);
          const index hi = std::min<index>(kb.last - j0, n - 1);  // inclusive
          if (lo > hi) {
            mask_range(srow, 0, npad);
          } else {
            mask_range(srow, 0, lo);
            mask_range(srow, hi + 1, npad);
            if (has_bool) {
              const bool* m = opt.bool_mask.at(b, h, i0 + r, j0);
              const index ms = opt.bool_mask.strides[3];
              for (index j = lo; j <= hi; ++j)
                if (!m[j * ms]) srow[j] = softmax::neg_inf;
            }
            if (has_add) {
              const float* a = opt.additive_mask.at(b, h, i0 + r, j0);
              const index as = opt.additive_mask.strides[3];
              for (index j = lo; j <= hi; ++j) srow[j] += a[j * as];
            }
          }
        }
        softmax::online_state& st = ws.state[r];
        const float f = st.raise_max(row_max(srow, npad));
        if (f != 1.0f) scale_row(ws.o.data() + r * d_v_pad, d_v_pad, f);
        st.sum += exp_and_sum(srow, npad, st.pivot());
      }

      core::gemm_block<true>(ws.s.data(), BK, ws.v.data(), npad, ws.o.data(), d_v_pad, rows_pad,
                             d_v_pad);
    }

    for (index r = 0; r < rows; ++r) {
      const softmax::online_state& st = ws.state[r];
      const float inv = st.inv_sum();
      const float* src = ws.o.data() + r * d_v_pad;
      float* dst = out.at(b, i0 + r, h, 0);
      for (index d = 0; d < d_v; ++d) dst[d] = src[d] * inv;
      if (!opt.lse.empty()) *opt.lse.at(b, h, i0 + r) = st.lse();
    }
  };

  core::parallel_for(
      tasks, opt.num_threads, [&] { return flash_scratch(d_qk, d_v_pad); }, run_task);
}

}  // namespace detail
}  // namespace attn
