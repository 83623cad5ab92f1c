// attn/merge_states.hpp: merging attention results over disjoint key sets
// by their log-sum-exps (FlashInfer's merge_state / merge_states).
//
// Attention of a query over keys K = K_1 ∪ K_2 ∪ ... (disjoint) can be
// computed part by part: each part gives an output o_i (normalised over its
// own keys) and LSE l_i (natural log of its softmax denominator, as attn's
// kernels report it in opt.lse). The whole is
//     lse = log Σ exp(l_i),   o = Σ exp(l_i - lse) · o_i,
// which is how cascade attention splits a shared prefix from per-sequence
// suffixes, or how keys spread over machines are attended.
//
// The states are merged one after another in their index order with the
// kernels' own merge (core/softmax.hpp), so the result's bits do not depend
// on the thread count. A state with LSE -inf (no visible key) contributes
// nothing; a row all of whose states have LSE -inf gets output 0 and LSE
// -inf. Non-finite outputs or LSEs otherwise propagate.
#pragma once

#include <algorithm>
#include <array>
#include <string>
#include <utility>

#include "attn/core/abi.hpp"
#include "attn/core/parallel.hpp"
#include "attn/core/softmax.hpp"
#include "attn/error.hpp"
#include "attn/overlap.hpp"
#include "attn/size_checks.hpp"
#include "attn/view.hpp"

namespace attn {
namespace detail::merge {
// (In the ISA namespace: run() calls the kernels, see attn/core/abi.hpp.)
inline namespace ATTN_ABI {

template <class T, int R>
void check_view(const char* fn, const char* arg, const char* strides_arg,
                const strided<T, R>& v, const std::array<index, R>& want, const char* layout) {
  check_non_null(fn, arg, v);
  check_non_negative_dims(fn, arg, v);
  require(v.dims == want, fn, arg, [&] { return dims_note(want, layout); }, v.dims);
  check_span(fn, arg, v);
  if constexpr (R >= 3) check_unit_last_stride(fn, strides_arg, v, short_rows::any_stride);
}

// v_out [rows, heads, d] and, unless empty, lse_out [rows, heads]: shaped,
// addressable and free of self-overlap. Returns whether lse_out is wanted.
inline bool check_outputs(const char* fn, const strided<float, 3>& v_out,
                          const strided<float, 2>& lse_out, index rows, index heads, index d) {
  check_view(fn, "v_out", "v_out.strides[2]", v_out, {rows, heads, d}, "[rows, heads, d]");
  check_non_overlapping(fn, "v_out.strides", v_out);
  if (lse_out.empty()) return false;
  check_view(fn, "lse_out", "lse_out.strides", lse_out, {rows, heads}, "[rows, heads]");
  check_non_overlapping(fn, "lse_out.strides", lse_out);
  return true;
}

// Each (row, head) of the output: 0 and -inf, then state 0, 1, ... merged in
// (state_of(r, s, h) gives the state's output row and LSE). Rows are
// contiguous, or of at most one element, so plain pointers do.
template <class StateOf>
void run(index rows, index states, index heads, index d, StateOf state_of,
         const strided<float, 3>& v_out, const strided<float, 2>& lse_out, int threads) {
  const bool want_lse = !lse_out.empty();
  core::parallel_for(rows * heads,
                     core::threads_for_work(threads, 3.0 * rows * states * heads * d),
                     [&](index t) {
                       const index r = t / heads, h = t % heads;
                       float* o = v_out.at(r, h, 0);
                       std::fill(o, o + d, 0.0f);
                       float l = core::softmax::neg_inf;
                       for (index s = 0; s < states; ++s) {
                         const std::pair<const float*, float> st = state_of(r, s, h);
                         core::softmax::merge_partial(o, l, st.first, st.second, d);
                       }
                       if (want_lse) *lse_out.at(r, h) = l;
                     });
}

}  // namespace ATTN_ABI
}  // namespace detail::merge

inline namespace ATTN_ABI {

/// Merges `states` partial attention results per (row, head).
///
/// @param v       [rows, states, heads, d] float: each state's output.
/// @param lse     [rows, states, heads] float: each state's LSE (natural log).
/// @param v_out   [rows, heads, d] float, written: the merged output.
/// @param lse_out [rows, heads] float, written (may be empty: not wanted).
/// @param num_threads threads (0 = OpenMP's default); the bits do not
///        depend on it.
/// @throws attn::error on a shape or stride mismatch, or when an output
///         overlaps an input or the other output, before anything is written.
inline void merge_states(strided<const float, 4> v, strided<const float, 3> lse,
                         strided<float, 3> v_out, strided<float, 2> lse_out = {},
                         int num_threads = 1) {
  constexpr const char* fn = "merge_states";
  detail::check_non_negative_dims(fn, "v", v);
  const index rows = v.dims[0], states = v.dims[1], heads = v.dims[2], d = v.dims[3];
  detail::merge::check_view(fn, "v", "v.strides[3]", v, {rows, states, heads, d},
                            "[rows, states, heads, d]");
  detail::merge::check_view(fn, "lse", "lse.strides", lse, {rows, states, heads},
                            "[rows, states, heads]");
  detail::merge::check_outputs(fn, v_out, lse_out, rows, heads, d);
  detail::check_disjoint(fn, {detail::region("v_out", v_out), detail::region("lse_out", lse_out)},
                         {detail::region("v", v), detail::region("lse", lse)});
  detail::merge::run(
      rows, states, heads, d,
      [&](index r, index s, index h) { return std::make_pair(v.at(r, s, h, 0), *lse.at(r, s, h)); },
      v_out, lse_out, num_threads);
}

/// Merges two partial results: v_a, v_b [rows, heads, d] with LSEs
/// lse_a, lse_b [rows, heads], into v_out [rows, heads, d] and lse_out
/// [rows, heads] (may be empty). As merge_states with two states, a then b.
inline void merge_states(strided<const float, 3> v_a, strided<const float, 2> lse_a,
                         strided<const float, 3> v_b, strided<const float, 2> lse_b,
                         strided<float, 3> v_out, strided<float, 2> lse_out = {},
                         int num_threads = 1) {
  constexpr const char* fn = "merge_states";
  detail::check_non_negative_dims(fn, "v_a", v_a);
  detail::check_non_negative_dims(fn, "v_b", v_b);
  detail::require(v_b.dims == v_a.dims, fn, "v_b", "v_a's dims", v_b.dims);
  detail::require(lse_b.dims == lse_a.dims, fn, "lse_b", "lse_a's dims", lse_b.dims);
  const index rows = v_a.dims[0], heads = v_a.dims[1], d = v_a.dims[2];
  detail::merge::check_view(fn, "v_a", "v_a.strides[2]", v_a, {rows, heads, d}, "[rows, heads, d]");
  detail::merge::check_view(fn, "v_b", "v_b.strides[2]", v_b, {rows, heads, d}, "[rows, heads, d]");
  detail::merge::check_view(fn, "lse_a", "lse_a.strides", lse_a, {rows, heads}, "[rows, heads]");
  detail::merge::check_view(fn, "lse_b", "lse_b.strides", lse_b, {rows, heads}, "[rows, heads]");
  detail::merge::check_outputs(fn, v_out, lse_out, rows, heads, d);
  detail::check_disjoint(fn, {detail::region("v_out", v_out), detail::region("lse_out", lse_out)},
                         {detail::region("v_a", v_a), detail::region("lse_a", lse_a),
                          detail::region("v_b", v_b), detail::region("lse_b", lse_b)});
  detail::merge::run(
      rows, 2, heads, d,
      [&](index r, index s, index h) {
        return s == 0 ? std::make_pair(v_a.at(r, h, 0), *lse_a.at(r, h))
                      : std::make_pair(v_b.at(r, h, 0), *lse_b.at(r, h));
      },
      v_out, lse_out, num_threads);
}

}  // namespace ATTN_ABI
}  // namespace attn
