// attn/detail/kv_rows.hpp: what the attention kernels read keys and values
// through. Arguments arrive validated.
//
// The flash and split-KV kernels only ever ask for one row at a time,
// rows.at(b, j, h, 0): the d contiguous elements of key (or value) j of
// head h in batch entry b. Two kinds of rows answer it:
//   strided<const KV, 4>  a [batch, seq, heads, dim] view (sdpa, kv_cache,
//                         packed variable-length batches);
//   paged_rows<KV>        a pool of fixed-size blocks and a block table per
//                         sequence (paged_kv_cache, paged_attention): row j
//                         is in block table[j / block_size] at slot
//                         j % block_size.
// The kernels are templates over the kind, so the strided path compiles to
// exactly the code it had before paging existed. Where a kernel can use a
// tile of rows in place (float keys, one stride between consecutive rows),
// uniform_row_stride says whether the tile's rows are evenly spaced: always
// for a strided view, within one block for a paged one. A tile that spans
// two blocks is copied instead, which reads the same values, so the results
// are the same bits either way.
#pragma once

// Internal header (docs/design.md, "What is public"): reached only through a
// public header, which defines ATTN_DETAIL_ALLOWED first.
#ifndef ATTN_DETAIL_ALLOWED
#error "attn/detail/kv_rows.hpp is internal: include <attn/paged_kv_cache.hpp>"
#endif

#include <array>
#include <cstdint>
#include <type_traits>

#include "attn/core/index.hpp"
#include "attn/view.hpp"

namespace attn::detail {

/// The element type (float, bfloat16, half) of a kind of rows.
template <class Rows>
using rows_scalar_t = std::remove_const_t<typename Rows::value_type>;

/// Rows [j0, j0 + n) of head h in batch entry b of a strided view are one
/// stride apart: the stride.
template <class T>
index uniform_row_stride(const strided<T, 4>& t, index /*b*/, index /*j0*/, index /*n*/) {
  return t.strides[1];
}

/// K or V rows of one batch of sequences in a block pool. The pool is
/// [blocks, block_size, heads, dim] with strides pool_strides; sequence b's
/// logical row j lives in physical block tables[b · table_stride + j >>
/// block_shift]. dims are [batch, S, heads, dim] as for a strided view, S
/// the longest sequence's length: each sequence's own length bounds what
/// the kernels read (the band's key length).
template <class T>
struct paged_rows {
  using value_type = const T;  ///< what at() points to

  const T* pool = nullptr;               ///< block 0, slot 0, head 0, element 0
  std::array<index, 4> pool_strides{};   ///< [block, slot, head, element] steps
  const std::int32_t* tables = nullptr;  ///< block tables, one row per sequence
  index table_stride = 0;                ///< step between sequences' table rows
  int block_shift = 0;                   ///< log2 of the block size
  std::array<index, 4> dims{};           ///< [batch, S, heads, dim]

  /// Row j of head h in sequence b, element d.
  const T* at(index b, index j, index h, index d) const {
    const index block = tables[b * table_stride + (j >> block_shift)];
    const index slot = j & ((index{1} << block_shift) - 1);
    return pool + block * pool_strides[0] + slot * pool_strides[1] + h * pool_strides[2] +
           d * pool_strides[3];
  }
};

/// Rows [j0, j0 + n) of a paged view are one stride apart when they lie in
/// one block: the slot stride; 0 when they span blocks.
template <class T>
index uniform_row_stride(const paged_rows<T>& t, index /*b*/, index j0, index n) {
  return (j0 >> t.block_shift) == ((j0 + n - 1) >> t.block_shift) ? t.pool_strides[1] : 0;
}

}  // namespace attn::detail
