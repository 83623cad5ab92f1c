// attn/core/aligned.hpp: vectors whose storage starts on a cache line.
//
// Kernels that keep rows padded to the packet width (a multiple of 64 bytes
// with AVX-512) read them as whole packets; when the first row starts on a
// cache line, no packet load straddles two lines. std::vector's storage
// does not: glibc returns 16-byte aligned blocks, and every 64-byte load
// from such rows touches two lines (docs/performance.md, additive).
#pragma once

#include <cstddef>
#include <new>
#include <vector>

#include "attn/core/abi.hpp"

namespace attn::core {
inline namespace ATTN_ABI {

/// Bytes per cache line on the targets attn is tuned for.
constexpr std::size_t cache_line = 64;

/// A standard allocator whose blocks start on a cache line.
template <class T>
struct cache_line_allocator {
  /// The element type.
  using value_type = T;
  cache_line_allocator() = default;
  /// Converts from the allocator of another element type (for rebinding).
  template <class U>
  cache_line_allocator(const cache_line_allocator<U>&) noexcept {}
  /// Storage for n elements, aligned to cache_line.
  T* allocate(std::size_t n) {
    return static_cast<T*>(::operator new (n * sizeof(T), std::align_val_t{cache_line}));
  }
  /// Frees storage from allocate().
  void deallocate(T* p, std::size_t) noexcept {
    ::operator delete (p, std::align_val_t{cache_line});
  }
  /// All such allocators are interchangeable.
  template <class U>
  bool operator==(const cache_line_allocator<U>&) const noexcept {
    return true;
  }
  /// All such allocators are interchangeable.
  template <class U>
  bool operator!=(const cache_line_allocator<U>&) const noexcept {
    return false;
  }
};

/// A std::vector whose data() starts on a cache line.
template <class T>
using aligned_vector = std::vector<T, cache_line_allocator<T>>;

}  // namespace ATTN_ABI
}  // namespace attn::core
