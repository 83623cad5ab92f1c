// attn/view.hpp: strided, non-owning views over tensors.
//
// A view is a pointer, the extents and the strides (in elements, not bytes)
// of each dimension. Kernels read every tensor through a view, so layouts that
// are a permutation or a slice of a dense tensor need no copy:
//
//   [batch, seq, heads, dim]   attn::bshd(t)   (the default layout)
//   [batch, heads, seq, dim]   attn::bhsd(t)   (PyTorch's SDPA layout)
//   packed QKV [b, s, 3, h, d] attn::packed_qkv(t, 0|1|2)
//
// Rule: the innermost (head-dim) stride of Q, K, V and the output must be 1,
// so head vectors are contiguous and SIMD loads are plain loads. Every other
// stride is free, including 0 for broadcast dimensions of masks.
#pragma once

#include <array>
#include <cstdint>
#include <ostream>
#include <type_traits>
#include <unsupported/Eigen/CXX11/Tensor>
#include <utility>

#include "attn/core/checked_arith.hpp"
#include "attn/error.hpp"

namespace attn {

/// A non-owning strided view of rank `Rank` over elements of type T
/// (T may be const). dims[r] is the extent, strides[r] the distance in
/// elements between neighbours along dimension r.
template <class T, int Rank>
struct strided {
  using value_type = T;              ///< element type, possibly const
  static constexpr int rank = Rank;  ///< number of dimensions

  T* data = nullptr;                   ///< element (0, ..., 0); nullptr = an absent view
  std::array<index, Rank> dims{};      ///< extent of each dimension
  std::array<index, Rank> strides{};   ///< step of each dimension, in elements (not bytes)

  /// True when the view points at nothing (an absent optional argument).
  bool empty() const { return data == nullptr; }

  /// Element address for the given coordinates.
  template <class... I>
  T* at(I... i) const {
    static_assert(sizeof...(I) == Rank, "attn::strided::at: one index per dimension");
    const index idx[] = {static_cast<index>(i)...};
    index off = 0;
    for (int r = 0; r < Rank; ++r) off += idx[r] * strides[r];
    return data + off;
  }

  /// The same view with const elements.
  strided<const T, Rank> as_const() const { return {data, dims, strides}; }
  /// Implicit conversion to the const view (a writable view may be passed
  /// where a read-only one is expected).
  operator strided<const T, Rank>() const { return {data, dims, strides}; }  // NOLINT
};

namespace detail {

// Row-major dense strides for the given extents.
template <std::size_t N>
std::array<index, N> dense_strides(const std::array<index, N>& dims) {
  std::array<index, N> s{};
  index acc = 1;
  for (std::size_t r = N; r-- > 0;) {
    s[r] = acc;
    acc *= dims[r];
  }
  return s;
}

/// True when some extent is 0 (the view has no elements).
template <class T, int R>
bool has_zero_extent(const strided<T, R>& v) {
  for (int r = 0; r < R; ++r)
    if (v.dims[r] == 0) return true;
  return false;
}

// The elements a view's addresses run over, from its lowest to its highest
// element: 1 + Σ (dims[r] − 1)·|strides[r]| (0 for no elements). False when
// that does not fit in one object of T (core::max_elements): its addresses
// would then wrap around the address space, and element offsets overflow.
// Dims must be non-negative.
template <class T, int R>
bool span_fits(const strided<T, R>& v, index* span = nullptr) {
  index n = 0;
  if (!has_zero_extent(v)) {
    n = 1;
    for (int r = 0; r < R; ++r) {
      index step = 0;
      if (v.dims[r] > 1 && (!core::checked_abs(v.strides[r], step) ||
                            !core::checked_mul(step, v.dims[r] - 1, step) ||
                            !core::checked_add(n, step, n)))
        return false;
    }
    if (n > core::max_elements<T>()) return false;
  }
  if (span) *span = n;
  return true;
}

/// True when no two elements of a view share an address: with the
// dimensions of extent > 1 ordered by stride, each stride must step past
// everything the inner dimensions cover. (Sufficient, and what every dense,
// permuted or sliced layout satisfies.) Overlapping outputs would make the
// result depend on which thread wrote last.
template <class T, int R>
bool non_overlapping(const strided<T, R>& v) {
  if (has_zero_extent(v)) return true;  // no elements, nothing to overlap
  if (!span_fits(v)) return false;      // addresses wrap onto each other
  std::array<std::pair<index, index>, R> dim{};
  int n = 0;
  for (int r = 0; r < R; ++r)
    if (v.dims[r] > 1) dim[n++] = {v.strides[r] < 0 ? -v.strides[r] : v.strides[r], v.dims[r]};
  for (int i = 1; i < n; ++i)  // insertion sort of at most R entries
    for (int j = i; j > 0 && dim[j] < dim[j - 1]; --j) std::swap(dim[j], dim[j - 1]);
  index covered = 1;  // elements spanned by the dimensions so far
  for (int i = 0; i < n; ++i) {
    if (dim[i].first < covered) return false;
    covered += dim[i].first * (dim[i].second - 1);
  }
  return true;
}

// ---------------------------------------------------------------------------
// The checks every entry makes on its views, each phrased once. `arg` names
// the argument as the caller spells it ("q", "out.strides").

// A view of zero elements may have null data (Eigen gives zero-size tensors
// none); any other view must point somewhere.
template <class T, int R, class Arg>
void check_non_null(const char* fn, const Arg& arg, const strided<T, R>& v) {
  require(!v.empty() || has_zero_extent(v), fn, arg, "a non-null view", "null data");
}

template <class T, int R, class Arg>
void check_non_negative_dims(const char* fn, const Arg& arg, const strided<T, R>& v) {
  for (int r = 0; r < R; ++r) require(v.dims[r] >= 0, fn, arg, "non-negative dims", v.dims);
}

// Read-only views such as masks may broadcast (stride 0) but not run backwards.
template <class T, int R, class Arg>
void check_non_negative_strides(const char* fn, const Arg& arg, const strided<T, R>& v) {
  for (int r = 0; r < R; ++r) require(v.strides[r] >= 0, fn, arg, "non-negative strides", v.strides);
}

// What the unit-stride rule asks of a view whose innermost extent is 0 or 1,
// where no two elements of a row are ever read together.
enum class short_rows {
  unit_stride,  // stride 1 all the same
  any_stride,   // any stride
};

// The innermost stride must be 1, so rows are contiguous and SIMD loads are
// plain loads. A rank-4 view is [batch, seq, heads, head_dim]; lower ranks
// end in features.
template <class T, int R, class Arg>
void check_unit_last_stride(const char* fn, const Arg& arg, const strided<T, R>& v,
                            short_rows rule = short_rows::unit_stride) {
  const bool short_ok = rule == short_rows::any_stride && v.dims[R - 1] <= 1;
  require(v.strides[R - 1] == 1 || short_ok, fn, arg,
          R == 4 ? "1 (contiguous head dim)" : "1 (contiguous features)", v.strides[R - 1]);
}

// For outputs: overlapping elements would make the result depend on which
// thread wrote last.
template <class T, int R, class Arg>
void check_non_overlapping(const char* fn, const Arg& arg, const strided<T, R>& v) {
  require(non_overlapping(v), fn, arg, "strides under which no two elements overlap", v.strides);
}

template <class E>
using tensor_scalar_t = std::remove_reference_t<decltype(*std::declval<E&>().data())>;

template <class E>
constexpr void check_row_major() {
  static_assert(static_cast<int>(std::decay_t<E>::Layout) == static_cast<int>(Eigen::RowMajor),
                "attn: tensors must be row-major (Eigen::RowMajor); wrap column-major data "
                "with attn::strided and explicit strides instead");
}

}  // namespace detail

/// View of a dense row-major Eigen::Tensor / TensorMap of any rank, in its own
/// dimension order. Column-major tensors are rejected at compile time.
template <class E>
auto view(E& t) {
  detail::check_row_major<E>();
  constexpr int R = std::decay_t<E>::NumDimensions;
  using T = detail::tensor_scalar_t<E>;
  strided<T, R> v;
  v.data = t.data();
  for (int r = 0; r < R; ++r) v.dims[r] = t.dimension(r);
  v.strides = detail::dense_strides(v.dims);
  return v;
}

/// [batch, seq, heads, dim] tensor viewed in attn's order (no permutation).
template <class E>
auto bshd(E& t) {
  static_assert(std::decay_t<E>::NumDimensions == 4, "attn::bshd: needs a rank-4 tensor");
  return view(t);
}

/// [batch, heads, seq, dim] tensor (PyTorch's SDPA layout) viewed as
/// [batch, seq, heads, dim] by swapping strides; no data moves.
template <class E>
auto bhsd(E& t) {
  static_assert(std::decay_t<E>::NumDimensions == 4, "attn::bhsd: needs a rank-4 tensor");
  auto v = view(t);
  std::swap(v.dims[1], v.dims[2]);
  std::swap(v.strides[1], v.strides[2]);
  return v;
}

/// One of Q (which = 0), K (1) or V (2) from a packed projection output of
/// shape [batch, seq, 3, heads, dim], as a [batch, seq, heads, dim] view.
/// @throws attn::error if t.dimension(2) != 3 or `which` is not 0, 1 or 2.
template <class E>
auto packed_qkv(E& t, int which) {
  static_assert(std::decay_t<E>::NumDimensions == 5,
                "attn::packed_qkv: needs a rank-5 tensor [batch, seq, 3, heads, dim]");
  auto v = view(t);
  detail::require(v.dims[2] == 3, "packed_qkv", "t.dimension(2)", 3, v.dims[2]);
  detail::require(which >= 0 && which < 3, "packed_qkv", "which", "0 (Q), 1 (K) or 2 (V)", which);
  strided<typename decltype(v)::value_type, 4> out;
  out.data = v.data + which * v.strides[2];
  out.dims = {v.dims[0], v.dims[1], v.dims[3], v.dims[4]};
  out.strides = {v.strides[0], v.strides[1], v.strides[3], v.strides[4]};
  return out;
}

/// View of a rank-4 mask of any of the shapes PyTorch broadcasts to
/// [batch, heads, L, S] — a tensor of rank 2 ([L, S]), 3 ([heads|1, L, S]) or
/// 4 ([batch|1, heads|1, L|1, S|1]) — as a [batch, heads, L, S] view in which
/// every broadcast dimension has stride 0. The mask is read in place, never
/// copied. Throws attn::error when a dimension is neither 1 nor the target.
template <class E>
auto broadcast_mask(E& t, index batch, index heads, index L, index S) {
  auto v = view(t);
  constexpr int R = decltype(v)::rank;
  static_assert(R >= 2 && R <= 4, "attn::broadcast_mask: mask rank must be 2, 3 or 4");
  using T = typename decltype(v)::value_type;
  const std::array<index, 4> target{batch, heads, L, S};
  strided<T, 4> out;
  out.data = v.data;
  out.dims = target;
  for (int r = 0; r < 4; ++r) {
    const int src = r - (4 - R);  // right-aligned, as in NumPy broadcasting
    if (src < 0) {
      out.strides[r] = 0;
      continue;
    }
    if (v.dims[src] == target[r]) {
      out.strides[r] = v.dims[src] == 1 ? 0 : v.strides[src];
    } else if (v.dims[src] == 1) {
      out.strides[r] = 0;
    } else {
      std::ostringstream exp;
      exp << "dims broadcastable to ";
      detail::write(exp, target);
      exp << " ([batch, heads, L, S])";
      detail::fail("broadcast_mask", "mask", exp.str(), v.dims);
    }
  }
  return out;
}

}  // namespace attn
