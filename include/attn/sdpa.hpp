// attn/sdpa.hpp: scaled dot-product attention, softmax(Q Kᵀ · scale + mask) V.
//
// Flash-style: queries are processed in tiles against tiles of keys with an
// online softmax, so memory is O(L + S), never O(L · S). Tiles that the
// causal / window / key-length masks exclude are skipped.
//
// Layout: [batch, seq, heads, dim] views (attn/view.hpp) with a contiguous
// head dim; [batch, heads, seq, dim], packed QKV and slices are strided views
// of the same kind. Accumulation is fp32; K and V may be float,
// Eigen::bfloat16 or Eigen::half.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <array>
#include <cmath>
#include <type_traits>
#include <unsupported/Eigen/CXX11/Tensor>
#include <utility>

#include "attn/core/abi.hpp"
#define ATTN_DETAIL_ALLOWED  // lets the detail headers in (docs/design.md)
#include "attn/detail/flash_forward.hpp"
#include "attn/detail/score_policy.hpp"
#include "attn/detail/split_kv_decode.hpp"
#include "attn/error.hpp"
#include "attn/mask.hpp"
#include "attn/sdpa_checks.hpp"
#include "attn/sdpa_options.hpp"
#include "attn/size_checks.hpp"
#include "attn/view.hpp"

namespace attn {

namespace detail {

template <class T>
constexpr bool is_kv_scalar =
    std::is_same<T, float>::value || std::is_same<T, Eigen::bfloat16>::value ||
    std::is_same<T, Eigen::half>::value;

namespace sdpa {
inline namespace ATTN_ABI {

// The attention of checked arguments under a score policy
// (detail/score_policy.hpp): the kernel for the shape (split-KV for few
// query rows per KV head, else the tiled flash pass). Shared by
// scaled_dot_product_attention, flex_attention and kv_cache::attend.
template <class KV, class Policy>
void run_attention(const strided<const float, 4>& q, const strided<const KV, 4>& k,
                   strided<const KV, 4> v, strided<float, 4> out, float scale,
                   const sdpa_options& opt, const Policy& policy) {
  const index L = q.dims[1], Hq = q.dims[2], Hkv = k.dims[2];
  if (q.dims[0] == 0 || L == 0) return;
  if (v.dims[3] == 0) {
    // No value features: only the LSE is computed. V and the output have no
    // elements and may have null data (Eigen's zero-size tensors); point
    // them at a dummy with zero strides, so the kernels' address arithmetic
    // stays defined and touches nothing.
    static const KV dummy_v{};
    static float dummy_out = 0.0f;
    v = strided<const KV, 4>{&dummy_v, v.dims, {0, 0, 0, 0}};
    out = strided<float, 4>{&dummy_out, out.dims, {0, 0, 0, 0}};
  }
  if (split_kv_policy::applies(L, Hq / Hkv))
    split_kv_decode(q, k, v, out, scale, opt, policy);
  else
    flash_forward(q, k, v, out, scale, opt, policy);
}

}  // namespace ATTN_ABI
}  // namespace sdpa
}  // namespace detail

inline namespace ATTN_ABI {

/// Scaled dot-product attention over strided views.
///
/// @param q    [B, L, Hq, d_qk] float.
/// @param k    [B, S, Hkv, d_qk] float, Eigen::bfloat16 or Eigen::half.
/// @param v    [B, S, Hkv, d_v], same element type as k.
/// @param out  [B, L, Hq, d_v] float, written. It may share no memory with
///             q, k, v, the masks, key_lengths or opt.lse: there is no
///             in-place call, out == q included (attn/overlap.hpp). Outputs
///             in their own slices of a buffer the inputs live in are fine.
/// @param opt  scale, masks, softcap, ALiBi, sinks, LSE output, threads
///             (attn/sdpa_options.hpp).
///
/// Hkv must divide Hq (GQA; Hkv = 1 is MQA): query head h reads KV head
/// h / (Hq / Hkv). The head dim of every tensor must have stride 1. A query
/// row with no visible key gets output 0 and LSE -inf.
///
/// @throws attn::error on any shape, stride or option mismatch, or when an
///         output overlaps an input or the other output; the message names
///         the argument, the expected and the actual value.
template <class KT, class VT>
void scaled_dot_product_attention(strided<const float, 4> q, strided<KT, 4> k, strided<VT, 4> v,
                                  strided<float, 4> out, const sdpa_options& opt = {}) {
  using KV = std::remove_const_t<KT>;
  static_assert(std::is_same<KV, std::remove_const_t<VT>>::value,
                "attn::scaled_dot_product_attention: k and v must have the same element type");
  static_assert(detail::is_kv_scalar<KV>,
                "attn::scaled_dot_product_attention: k/v must be float, Eigen::bfloat16 or "
                "Eigen::half");
  const float scale =
      detail::check_sdpa_arguments("scaled_dot_product_attention", q, k, v, out, opt);

  detail::sdpa::run_attention<KV>(q, strided<const KV, 4>(k), strided<const KV, 4>(v), out, scale,
                                  opt,
                                  detail::engine::score_policy<>(opt, q.dims[1], k.dims[1]));
}

/// Tensor convenience overload: [B, L, Hq, d_qk], [B, S, Hkv, d_qk],
/// [B, S, Hkv, d_v] row-major tensors in, a new [B, L, Hq, d_v] tensor out.
template <class KV>
Eigen::Tensor<float, 4, Eigen::RowMajor> scaled_dot_product_attention(
    const Eigen::Tensor<float, 4, Eigen::RowMajor>& q,
    const Eigen::Tensor<KV, 4, Eigen::RowMajor>& k, const Eigen::Tensor<KV, 4, Eigen::RowMajor>& v,
    const sdpa_options& opt = {}) {
  detail::check_result_size(
      "scaled_dot_product_attention", "out",
      std::array<index, 4>{q.dimension(0), q.dimension(1), q.dimension(2), v.dimension(3)});
  Eigen::Tensor<float, 4, Eigen::RowMajor> out(q.dimension(0), q.dimension(1), q.dimension(2),
                                               v.dimension(3));
  scaled_dot_product_attention(bshd(q), bshd(k), bshd(v), bshd(out), opt);
  return out;
}

/// Single-head convenience overload on matrices whose rows are positions:
/// q [L, d_qk], k [S, d_qk], v [S, d_v]; returns [L, d_v]. Any Eigen storage
/// order is accepted (the inputs are copied once into row-major float). Masks in `opt`
/// are viewed as [1, 1, L, S].
template <class DQ, class DK, class DV>
Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> scaled_dot_product_attention(
    const Eigen::MatrixBase<DQ>& q, const Eigen::MatrixBase<DK>& k, const Eigen::MatrixBase<DV>& v,
    const sdpa_options& opt = {}) {
  using row_major = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const row_major qm = q.template cast<float>(), km = k.template cast<float>(),
                  vm = v.template cast<float>();
  row_major o(qm.rows(), vm.cols());
  auto as_view = [](auto* data, index rows, index cols) {
    using T = std::remove_pointer_t<decltype(data)>;
    return strided<T, 4>{data, {1, rows, 1, cols}, {rows * cols, cols, cols, 1}};
  };
  scaled_dot_product_attention(
      as_view(qm.data(), qm.rows(), qm.cols()), as_view(km.data(), km.rows(), km.cols()),
      as_view(vm.data(), vm.rows(), vm.cols()), as_view(o.data(), o.rows(), o.cols()), opt);
  return o;
}

}  // namespace ATTN_ABI
}  // namespace attn
