// tests/fuzz/fuzz_alias.hpp: makes an output view alias another view, for
// the harnesses' "aliased output" broken argument (issue 18 item 4: every
// writing entry must reject an output that shares memory with an input or
// another output).
//
// Both views are moved into one fresh arena, contents copied, so that the
// highest element of the output and the lowest element of the other view
// share their first byte: exactly one element in common, the smallest
// overlap there is, while every element of both views stays inside the
// arena (a library that missed the overlap still reads and writes valid
// memory, and the harness reports "no exception").
#pragma once

#include <attn/view.hpp>
#include <cstddef>
#include <cstring>
#include <memory>
#include <string>
#include <utility>

#include "fuzz_input.hpp"

namespace attn_fuzz {

/// Memory of an aliased pair; keep it alive for the call.
struct alias_arena {
  std::unique_ptr<std::max_align_t[]> memory;
  unsigned char* bytes() const { return reinterpret_cast<unsigned char*>(memory.get()); }
};

namespace detail {
// Lowest and highest element offsets of a view with elements.
template <class T, int R>
std::pair<attn::index, attn::index> element_range(const attn::strided<T, R>& v) {
  attn::index lo = 0, hi = 0;
  for (int r = 0; r < R; ++r) (v.strides[r] < 0 ? lo : hi) += v.strides[r] * (v.dims[r] - 1);
  return {lo, hi};
}
template <class T, int R>
bool has_elements(const attn::strided<T, R>& v) {
  if (v.data == nullptr) return false;
  for (int r = 0; r < R; ++r)
    if (v.dims[r] <= 0) return false;
  return true;
}
}  // namespace detail

/// Repoints `out` and `other` into `arena` so that they share one element;
/// false (nothing changed) when either has no elements.
template <class O, int RO, class I, int RI>
bool alias_last_onto_first(alias_arena& arena, attn::strided<O, RO>& out,
                           attn::strided<I, RI>& other) {
  static_assert(alignof(I) <= sizeof(O), "the other view starts at a multiple of sizeof(O)");
  if (!detail::has_elements(out) || !detail::has_elements(other)) return false;
  const auto ro = detail::element_range(out), rt = detail::element_range(other);
  const std::size_t so = sizeof(O), st = sizeof(I);
  const std::size_t out_bytes = static_cast<std::size_t>(ro.second - ro.first + 1) * so;
  const std::size_t other_bytes = static_cast<std::size_t>(rt.second - rt.first + 1) * st;
  const std::size_t other_at = out_bytes - so;  // out's highest element
  const std::size_t total = other_at + other_bytes;
  arena.memory.reset(new std::max_align_t[total / sizeof(std::max_align_t) + 1]);
  unsigned char* m = arena.bytes();
  std::memcpy(m, reinterpret_cast<const unsigned char*>(out.data + ro.first), out_bytes);
  std::memcpy(m + other_at, reinterpret_cast<const unsigned char*>(other.data + rt.first),
              other_bytes);
  out.data = reinterpret_cast<O*>(m) - ro.first;
  other.data = reinterpret_cast<I*>(m + other_at) - rt.first;
  return true;
}

/// Breaks a call by making output `out` (named `name`) share one element
/// with `other` (named `what`): the call must then throw an attn::error
/// naming both. Nothing is broken when either view has no elements.
template <class O, int RO, class I, int RI>
void break_by_alias(alias_arena& arena, breakage& br, attn::strided<O, RO>& out,
                    const std::string& name, attn::strided<I, RI>& other,
                    const std::string& what) {
  if (alias_last_onto_first(arena, out, other))
    br.set(name + " aliases " + what,
           ": " + name + ": expected memory that does not overlap " + what);
}

}  // namespace attn_fuzz
