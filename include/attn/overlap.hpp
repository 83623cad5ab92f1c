// attn/overlap.hpp: whether two strided views share memory, and the check
// every writing entry makes with it (docs/design.md section 5, Aliasing).
//
// The rule: no byte of an output may belong to an input or to another output
// of the same call. Inputs may share memory with each other (packed QKV,
// one tensor passed as both keys and values). The test is exact for the
// layouts attn's views describe (dense, permuted, sliced, packed, broadcast
// inputs): an output in its own column slice of a packed buffer, next to q,
// is accepted. Where it cannot decide in a few steps it reports an overlap,
// so it never accepts aliased memory. Cost: O(rank) per pair of views in
// practice, and bounded by a small constant always; never a pass over data.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "attn/error.hpp"
#include "attn/view.hpp"

namespace attn::detail {

// One view reduced to what the test needs: the address of element 0, the
// element size, and the dimensions that move (extent > 1, stride != 0) with
// their strides in bytes. Type-erased, so float outputs meet bf16 keys and
// bool masks.
struct memory_region {
  static constexpr int max_rank = 5;
  field_name name{"", ""};
  std::uintptr_t base = 0;
  index elem = 0;  // bytes per element
  int n = 0;       // dimensions kept in step
  std::array<index, max_rank> step{};  // stride in bytes, any sign
  std::array<index, max_rank> extent{};
  bool none = true;       // no elements: overlaps nothing
  bool too_large = false;  // byte offsets beyond index: treated as overlapping
};

// a * b into r, false on overflow of index (a, b >= 0).
inline bool mul_within(index a, index b, index& r) {
  if (a != 0 && b > std::numeric_limits<index>::max() / a) return false;
  r = a * b;
  return true;
}

// Views are described before their other checks may have run, so null data,
// zero and negative extents all mean "no elements" here.
template <class T, int R>
memory_region region(field_name name, const strided<T, R>& v) {
  static_assert(R <= memory_region::max_rank, "attn: memory_region rank");
  memory_region m;
  m.name = name;
  m.elem = static_cast<index>(sizeof(T));
  if (v.data == nullptr) return m;
  for (int r = 0; r < R; ++r)
    if (v.dims[r] <= 0) return m;
  m.none = false;
  m.base = reinterpret_cast<std::uintptr_t>(v.data);
  index reach = 0;  // bytes spanned, to keep every later sum within index
  for (int r = 0; r < R; ++r) {
    if (v.dims[r] == 1 || v.strides[r] == 0) continue;
    index s = 0, span = 0;
    const index a = v.strides[r] < 0 ? -v.strides[r] : v.strides[r];
    if (v.strides[r] == std::numeric_limits<index>::min() || !mul_within(a, m.elem, s) ||
        !mul_within(s, v.dims[r] - 1, span) || span > std::numeric_limits<index>::max() / 8 - reach) {
      m.too_large = true;
      return m;
    }
    reach += span;
    m.step[m.n] = v.strides[r] < 0 ? -s : s;
    m.extent[m.n++] = v.dims[r];
  }
  return m;
}
// A std::vector the kernel reads (key lengths) as a rank-1 view.
template <class T>
memory_region region(field_name name, const std::vector<T>& v) {
  return region(name, strided<const T, 1>{v.data(), {static_cast<index>(v.size())}, {1}});
}
template <class X>
memory_region region(const char* name, const X& x) {
  return region(field_name{"", name}, x);
}

// Lowest and highest byte offsets of element starts, relative to base.
inline std::pair<index, index> offset_range(const memory_region& m) {
  index lo = 0, hi = 0;
  for (int i = 0; i < m.n; ++i) (m.step[i] < 0 ? lo : hi) += m.step[i] * (m.extent[i] - 1);
  return {lo, hi};
}

// Whether some element of `a` and some element of `b` share a byte.
//
// First the byte ranges; when they intersect, the exact question: are there
// coordinates with b.base + Σ j·t_b - (a.base + Σ i·t_a) in
// (-b.elem, a.elem)? Strides of both views are merged into one list of
// distinct step sizes, each with the range of its coefficient, and a search
// from the largest step down fixes one coefficient per step. For views whose
// steps each pass everything finer (every layout of view.hpp), each step has
// at most two candidate coefficients; if one has more, or the search grows
// past a small budget, it answers "overlap" (sound, never exact-only).
inline bool may_overlap(const memory_region& a, const memory_region& b) {
  if (a.none || b.none) return false;
  if (a.too_large || b.too_large) return true;
  const auto ra = offset_range(a), rb = offset_range(b);
  // Absolute byte ranges [lo, hi), in unsigned arithmetic (wrap is defined;
  // a range that wraps cannot be real memory and counts as overlapping).
  const std::uintptr_t a_lo = a.base - static_cast<std::uintptr_t>(-ra.first),
                       a_hi = a.base + static_cast<std::uintptr_t>(ra.second + a.elem),
                       b_lo = b.base - static_cast<std::uintptr_t>(-rb.first),
                       b_hi = b.base + static_cast<std::uintptr_t>(rb.second + b.elem);
  if (a_lo > a.base || a_hi <= a.base || b_lo > b.base || b_hi <= b.base) return true;
  if (!(a_lo < b_hi && b_lo < a_hi)) return false;

  // The ranges intersect, so the bases are within both spans of each other.
  const index delta = b.base >= a.base ? static_cast<index>(b.base - a.base)
                                       : -static_cast<index>(a.base - b.base);
  struct term {
    index step, lo, hi;  // coefficient in [lo, hi] of a positive step
  };
  std::array<term, 2 * memory_region::max_rank> t{};
  int n = 0;
  auto add = [&](index step, index extent, bool from_a) {
    // Element j of b adds j·step; element i of a subtracts i·step.
    index lo = from_a ? -(extent - 1) : 0, hi = from_a ? 0 : extent - 1;
    if (step < 0) {
      step = -step;
      std::swap(lo, hi);
      lo = -lo;
      hi = -hi;
    }
    for (int k = 0; k < n; ++k)
      if (t[k].step == step) {
        t[k].lo += lo;
        t[k].hi += hi;
        return;
      }
    t[n++] = {step, lo, hi};
  };
  for (int i = 0; i < a.n; ++i) add(a.step[i], a.extent[i], true);
  for (int i = 0; i < b.n; ++i) add(b.step[i], b.extent[i], false);
  // Largest step first; an insertion sort of at most 2 · max_rank entries
  // (std::sort here trips GCC 12's -Warray-bounds at -O3).
  for (int i = 1; i < n; ++i)
    for (int j = i; j > 0 && t[j].step > t[j - 1].step; --j) std::swap(t[j], t[j - 1]);
  // What the steps from k on can still add: [low[k], high[k]].
  std::array<index, 2 * memory_region::max_rank + 1> low{}, high{};
  for (int k = n; k-- > 0;) {
    low[k] = low[k + 1] + t[k].lo * t[k].step;
    high[k] = high[k + 1] + t[k].hi * t[k].step;
  }
  const index want_lo = -(b.elem - 1), want_hi = a.elem - 1;  // bytes apart, still sharing one
  auto floor_div = [](index x, index y) { return x / y - (x % y != 0 && x < 0); };
  auto ceil_div = [](index x, index y) { return x / y + (x % y != 0 && x > 0); };
  int budget = 64;
  bool gave_up = false;
  // Depth-first; r is the byte distance so far.
  auto search = [&](auto&& self, int k, index r) -> bool {
    if (k == n) return r >= want_lo && r <= want_hi;
    if (--budget < 0) return gave_up = true;
    const index c_lo = std::max(t[k].lo, ceil_div(want_lo - r - high[k + 1], t[k].step));
    const index c_hi = std::min(t[k].hi, floor_div(want_hi - r - low[k + 1], t[k].step));
    if (c_hi - c_lo > 1) return gave_up = true;
    for (index c = c_lo; c <= c_hi; ++c)
      if (self(self, k + 1, r + c * t[k].step)) return true;
    return false;
  };
  return search(search, 0, delta) || gave_up;
}

template <class A, int RA, class B, int RB>
bool may_overlap(const strided<A, RA>& a, const strided<B, RB>& b) {
  return may_overlap(region("", a), region("", b));
}

// The aliasing rule of every entry that writes: no output overlaps an input
// or another output. Throws "fn: OUTPUT: expected memory that does not
// overlap OTHER, got an overlapping view", naming the output first. Called
// after the entry's other checks and before anything is written.
inline void check_disjoint(const char* fn, std::initializer_list<memory_region> outputs,
                           std::initializer_list<memory_region> inputs) {
  auto require_apart = [&](const memory_region& out, const memory_region& other) {
    require(
        !may_overlap(out, other), fn, out.name,
        [&] {
          std::ostringstream s;
          s << "memory that does not overlap " << other.name;
          return s.str();
        },
        "an overlapping view");
  };
  for (auto o = outputs.begin(); o != outputs.end(); ++o) {
    for (auto p = outputs.begin(); p != o; ++p) require_apart(*o, *p);
    for (const memory_region& in : inputs) require_apart(*o, in);
  }
}

}  // namespace attn::detail
