// attn/detail/split_kv_decode.hpp: attention for few query rows against a
// long key sequence (token-by-token decoding), behind
// attn::scaled_dot_product_attention. Arguments arrive validated.
//
// Decoding reads every K and V element once and does O(1) work with it, so
// it is bound by memory bandwidth, and one (batch, head) is too little work
// to share between threads. So:
//  * the key axis is split into chunks; one task = (batch entry, chunk) over
//    all heads, visiting keys in memory order (in [batch, seq, heads, dim]
//    one head's consecutive keys sit heads·dim apart, a page or more: per-
//    head walks measured 5-10 GB/s, TLB- and prefetch-bound). Each K/V row
//    serves every query head of its GQA group, so it is loaded once;
//  * K and V stay where they are: bf16/half values are widened to float in
//    registers as they are loaded (simd::load_as_float); accumulation is fp32;
//  * each task leaves a normalised partial output and its LSE, and the
//    partials of one row are merged in chunk order with
//    softmax::merge_partial; a merged row that came out non-finite from an
//    overflowing fp32 accumulation (values near FLT_MAX) is recomputed in
//    double (recompute_sdpa_row, detail/flash_forward.hpp).
// The chunking depends only on the shapes, never on the thread count, and
// the merge order is fixed, so results are bit-identical for any thread
// count.
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

#include "attn/core/abi.hpp"
#include "attn/core/math.hpp"
#include "attn/core/parallel.hpp"
#include "attn/core/simd.hpp"
#include "attn/core/softmax.hpp"
#include "attn/detail/flash_forward.hpp"  // recompute_sdpa_row
#include "attn/mask.hpp"
#include "attn/sdpa_options.hpp"
#include "attn/view.hpp"

namespace attn {
inline namespace ATTN_ABI {
namespace kernel {

/// When the split-KV path runs instead of the tiled one: few query rows per
/// KV head (L · group), where the tiled kernel would mostly compute padding.
struct split_kv_policy {
  static constexpr index max_rows = 32;   // L · (Hq / Hkv) per KV head
  static constexpr index key_block = 64;  // keys per online-softmax step
  static_assert(key_block % simd::width == 0, "key_block must hold whole packets");
  static constexpr index min_chunk = 512;     // keys per task, at least
  static constexpr index target_tasks = 128;  // enough to balance 2+ threads

  static bool applies(index L, index group) { return L * group <= max_rows; }

  static constexpr index max_partial_floats = 1 << 21;  // 8 MiB of partial results

  // Chunks per batch entry: enough tasks overall, each chunk not tiny, and
  // the partial results (B · chunks · row_floats) bounded.
  static index chunks(index B, index S, index row_floats) {
    const index by_tasks = detail::ceil_div(target_tasks, B);
    const index by_size = detail::ceil_div(S, min_chunk);
    const index by_memory = max_partial_floats / std::max<index>(B * row_floats, 1);
    return std::max<index>(std::min({by_tasks, by_size, by_memory}), 1);
  }
};

// s[j] = sum_d q[d] * k[d] for one query row and one key: d_qk floats of q
// against the widened key row.
template <class KV>
inline float dot_row(const float* q, const KV* k, index d) {
  using namespace simd;
  packet acc0 = zero(), acc1 = zero();
  index i = 0;
  for (; i + 2 * width <= d; i += 2 * width) {
    acc0 = fma(load(q + i), load_as_float(k + i), acc0);
    acc1 = fma(load(q + i + width), load_as_float(k + i + width), acc1);
  }
  for (; i + width <= d; i += width) acc0 = fma(load(q + i), load_as_float(k + i), acc0);
  float s = reduce_add(add(acc0, acc1));
  for (; i < d; ++i) s += q[i] * static_cast<float>(k[i]);
  return s;
}

// out[r] = sum_d q[r][d] * k[d] for 4 query rows (row stride ldq) that share
// one key row: each key packet is loaded and widened once for all four.
template <class KV>
inline void dot_rows4(const float* q, index ldq, const KV* k, index d, float* out, index ldo) {
  using namespace simd;
  packet acc[4] = {zero(), zero(), zero(), zero()};
  index i = 0;
  for (; i + width <= d; i += width) {
    const packet kp = load_as_float(k + i);
    for (int r = 0; r < 4; ++r) acc[r] = fma(load(q + r * ldq + i), kp, acc[r]);
  }
  for (int r = 0; r < 4; ++r) {
    float s = reduce_add(acc[r]);
    for (index j = i; j < d; ++j) s += q[r * ldq + j] * static_cast<float>(k[j]);
    out[r * ldo] = s;
  }
}

// o[r][d] += p[r] * v[d] for 4 output rows (row stride ldo) sharing one
// value row, loaded and widened once.
template <class KV>
inline void axpy_rows4(float* o, index ldo, const float* p, index ldp, const KV* v, index n) {
  using namespace simd;
  const packet pp[4] = {broadcast(p[0]), broadcast(p[ldp]), broadcast(p[2 * ldp]),
                        broadcast(p[3 * ldp])};
  index i = 0;
  for (; i + width <= n; i += width) {
    const packet vp = load_as_float(v + i);
    for (int r = 0; r < 4; ++r) store(o + r * ldo + i, fma(pp[r], vp, load(o + r * ldo + i)));
  }
  for (; i < n; ++i)
    for (int r = 0; r < 4; ++r) o[r * ldo + i] += p[r * ldp] * static_cast<float>(v[i]);
}

// o[d] += p * v[d] for d < n.
template <class KV>
inline void axpy_row(float* o, float p, const KV* v, index n) {
  using namespace simd;
  const packet pp = broadcast(p);
  index i = 0;
  for (; i + width <= n; i += width) store(o + i, fma(pp, load_as_float(v + i), load(o + i)));
  for (; i < n; ++i) o[i] += p * static_cast<float>(v[i]);
}

template <class KV>
void split_kv_decode(const strided<const float, 4>& q, const strided<const KV, 4>& k,
                     const strided<const KV, 4>& v, const strided<float, 4>& out, float scale,
                     const sdpa_options& opt) {
  using policy = split_kv_policy;
  constexpr index KB = policy::key_block;
  const index B = q.dims[0], L = q.dims[1], Hq = q.dims[2], d_qk = q.dims[3];
  const index S = k.dims[1], Hkv = k.dims[2], d_v = v.dims[3];
  // Rows of one task: every (query head, position) of the batch entry, row
  // r = h * L + i, so the rows of KV head hk are [hk·group·L, (hk+1)·group·L).
  const index group = Hq / Hkv, R = Hq * L, rows_per_kv = group * L;
  const index n_chunks = policy::chunks(B, S, R * (d_v + 1));
  const index chunk = detail::ceil_div(S, n_chunks);
  const index tasks = B * n_chunks;
  const sliding_window* window = opt.window ? &*opt.window : nullptr;
  const bool has_bool = !opt.bool_mask.empty(), has_add = !opt.additive_mask.empty();
  const float scale2 = scale * softmax::log2e;

  // Partial results of every task: R rows of d_v outputs and R LSEs.
  std::vector<float> part_o(static_cast<std::size_t>(tasks * R * d_v));
  std::vector<float> part_lse(static_cast<std::size_t>(tasks * R));

  struct scratch {
    std::vector<float> q, s, o, max, sum;
  };
  auto make_scratch = [&] {
    return scratch{std::vector<float>(R * d_qk), std::vector<float>(R * KB),
                   std::vector<float>(R * d_v), std::vector<float>(R), std::vector<float>(R)};
  };

  auto run_task = [&](scratch& ws, index t) {
    const index c = t % n_chunks, b = t / n_chunks;
    const index key_len = opt.key_lengths.empty() ? S : opt.key_lengths[b];
    const detail::band_mask band(L, S, key_len, opt.causal, window);
    for (index r = 0; r < R; ++r) {
      const float* src = q.at(b, r % L, r / L, 0);
      // Clamped: |q| near FLT_MAX would overflow to inf and score inf · 0 =
      // NaN against a zero key (the exact score is finite).
      for (index d = 0; d < d_qk; ++d) ws.q[r * d_qk + d] = softmax::clamp_finite(src[d] * scale2);
    }
    std::fill(ws.o.begin(), ws.o.end(), 0.0f);
    std::fill(ws.max.begin(), ws.max.end(), softmax::neg_inf);
    std::fill(ws.sum.begin(), ws.sum.end(), 0.0f);

    // Masks, then one online-softmax step per row, turning the block's
    // scores sb (R rows of KB) into probabilities relative to the rows'
    // running maxima.
    auto softmax_block = [&](index j0, index n, float* sb) {
      // Rows are padded with -inf to whole packets (key_block is a multiple
      // of the width) so every pass below is a vector loop.
      const index n_vec = detail::round_up(n, simd::width);
      for (index r = 0; r < R; ++r) {
        float* s = sb + r * KB;
        const index i = r % L, h = r / L;
        const detail::key_band kb = band.row(i);
        const index lo = std::min(std::max<index>(kb.first - j0, 0), n);  // visible: [lo, hi)
        const index hi = std::max(std::min<index>(kb.last - j0 + 1, n), lo);
        std::fill(s, s + lo, softmax::neg_inf);
        std::fill(s + hi, s + n_vec, softmax::neg_inf);
        if (has_bool) {
          const bool* m = opt.bool_mask.at(b, h, i, j0);
          const index ms = opt.bool_mask.strides[3];
          for (index jj = lo; jj < hi; ++jj)
            if (!m[jj * ms]) s[jj] = softmax::neg_inf;
        }
        if (has_add) {
          const float* a = opt.additive_mask.at(b, h, i, j0);
          const index as = opt.additive_mask.strides[3];
          for (index jj = lo; jj < hi; ++jj) s[jj] = softmax::apply_additive_log2(s[jj], a[jj * as]);
        }
        simd::packet block_max = simd::broadcast(softmax::neg_inf);
        for (index jj = 0; jj < n_vec; jj += simd::width)
          block_max = simd::max(block_max, simd::load(s + jj));
        const float m = std::min(simd::reduce_max(block_max), softmax::max_finite);
        if (m == softmax::neg_inf) {  // nothing visible in this block...
          // ...unless the max skipped NaN scores (a NaN query or key): then
          // the row is NaN, never an empty row's 0.
          for (index jj = 0; jj < n; ++jj)
            if (std::isnan(s[jj])) ws.sum[r] = s[jj];
          std::fill(s, s + n, 0.0f);
          continue;
        }
        const float m_old = ws.max[r];
        if (m > m_old) {
          const float f =
              m_old == softmax::neg_inf ? 0.0f : simd::exp2_nonpositive_scalar(m_old - m);
          ws.sum[r] *= f;
          for (index d = 0; d < d_v; ++d) ws.o[r * d_v + d] *= f;
          ws.max[r] = m;
        }
        const simd::packet pivot = simd::broadcast(ws.max[r]);
        simd::packet sum = simd::zero();
        for (index jj = 0; jj < n_vec; jj += simd::width) {
          const simd::packet e = simd::exp2_nonpositive(simd::sub(simd::load(s + jj), pivot));
          simd::store(s + jj, e);
          sum = simd::add(sum, e);
        }
        ws.sum[r] += simd::reduce_add(sum);
      }
    };

    const detail::key_band span = band.rows(0, L);
    const index c0 = std::max(c * chunk, span.first);
    const index c1 = std::min((c + 1) * chunk, span.last + 1);

    // Both passes below walk the block in memory order (key j: every head's
    // row, then key j + 1), and each K or V row serves every query row of
    // its GQA group.
    auto score_block = [&](index j0, index n, float* sb) {
      for (index jj = 0; jj < n; ++jj)
        for (index hk = 0; hk < Hkv; ++hk) {
          const KV* kr = k.at(b, j0 + jj, hk, 0);
          index r = hk * rows_per_kv;
          const index r_end = r + rows_per_kv;
          for (; r + 4 <= r_end; r += 4)  // GQA: four query rows per key load
            dot_rows4(ws.q.data() + r * d_qk, d_qk, kr, d_qk, sb + r * KB + jj, KB);
          for (; r < r_end; ++r) sb[r * KB + jj] = dot_row(ws.q.data() + r * d_qk, kr, d_qk);
        }
    };
    auto accumulate_block = [&](index j0, index n, const float* pb) {
      for (index jj = 0; jj < n; ++jj)
        for (index hk = 0; hk < Hkv; ++hk) {
          const KV* vr = v.at(b, j0 + jj, hk, 0);
          index r = hk * rows_per_kv;
          const index r_end = r + rows_per_kv;
          for (; r + 4 <= r_end; r += 4) {
            const float* p4 = pb + r * KB + jj;
            const int zeros =
                (p4[0] == 0.0f) + (p4[KB] == 0.0f) + (p4[2 * KB] == 0.0f) + (p4[3 * KB] == 0.0f);
            if (zeros == 0) {
              axpy_rows4(ws.o.data() + r * d_v, d_v, p4, KB, vr, d_v);
            } else if (zeros < 4) {  // a key masked for some rows: never read it for them
              for (index q4 = 0; q4 < 4; ++q4)
                if (p4[q4 * KB] != 0.0f)
                  axpy_row(ws.o.data() + (r + q4) * d_v, p4[q4 * KB], vr, d_v);
            }
          }
          for (; r < r_end; ++r) {
            const float p = pb[r * KB + jj];
            if (p != 0.0f) axpy_row(ws.o.data() + r * d_v, p, vr, d_v);
          }
        }
    };

    for (index j0 = c0; j0 < c1; j0 += KB) {
      const index n = std::min(KB, c1 - j0);
      score_block(j0, n, ws.s.data());
      softmax_block(j0, n, ws.s.data());
      accumulate_block(j0, n, ws.s.data());
    }

    for (index r = 0; r < R; ++r) {
      const softmax::row_result res = softmax::finish_row_log2(ws.max[r], ws.sum[r]);
      float* dst = part_o.data() + (t * R + r) * d_v;
      for (index d = 0; d < d_v; ++d) dst[d] = ws.o[r * d_v + d] * res.inv_sum;
      part_lse[t * R + r] = res.lse;
    }
  };
  const int threads = core::threads_for_work(
      opt.num_threads, 2.0 * B * Hq * static_cast<double>(L) * S * (d_qk + d_v));
  core::parallel_for(tasks, threads, make_scratch, run_task);

  // Merge the chunks of each row in chunk order, then write it out.
  auto merge_row = [&](index row) {
    const index r = row % R, b = row / R;
    const index first = b * n_chunks;
    float* o = part_o.data() + (first * R + r) * d_v;
    float lse = part_lse[first * R + r];
    for (index c = 1; c < n_chunks; ++c)
      softmax::merge_partial(o, lse, part_o.data() + ((first + c) * R + r) * d_v,
                             part_lse[(first + c) * R + r], d_v);
    const index i = r % L, h = r / L;
    float* dst = out.at(b, i, h, 0);
    for (index d = 0; d < d_v; ++d) dst[d] = lse == softmax::neg_inf ? 0.0f : o[d];
    float* lse_out = opt.lse.empty() ? nullptr : opt.lse.at(b, h, i);
    if (lse_out) *lse_out = lse;
    // A chunk's unnormalised O overflows fp32 when its visible |v| sum past
    // FLT_MAX (inf, or NaN once rescaled), and the merged row inherits it:
    // such a row, and only such a row, is redone in double.
    if (!softmax::all_finite(dst, d_v)) {
      std::vector<float> q2(static_cast<std::size_t>(d_qk));
      const float* src = q.at(b, i, h, 0);
      for (index d = 0; d < d_qk; ++d) q2[d] = softmax::clamp_finite(src[d] * scale2);
      const index key_len = opt.key_lengths.empty() ? S : opt.key_lengths[b];
      const detail::band_mask band(L, S, key_len, opt.causal, window);
      recompute_sdpa_row(q2.data(), 1, k, v, opt, band, b, i, h, h / group, dst, lse_out);
    }
  };
  core::parallel_for(B * R, threads, merge_row);
}

}  // namespace kernel
}  // namespace ATTN_ABI
}  // namespace attn
