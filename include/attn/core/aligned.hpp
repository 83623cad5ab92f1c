// attn/core/aligned.hpp: vectors whose storage starts on a cache line, and
// large buffers that ask the kernel for huge pages.
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

#if defined(__linux__)
#include <sys/mman.h>  // madvise
#endif

#include "attn/core/abi.hpp"

namespace attn::core {
inline namespace ATTN_ABI {

/// Bytes per cache line on the targets attn is tuned for.
constexpr std::size_t cache_line = 64;

/// Bytes of a transparent huge page (x86-64; AArch64 with 4 KiB base pages).
constexpr std::size_t huge_page = std::size_t{2} << 20;

/// A standard allocator whose blocks start on a cache line. With HugePages,
/// for the buffers a decode step streams whole (the KV caches attn owns), a
/// block of huge_page bytes or more starts on a huge-page boundary instead
/// and, on Linux, is marked MADV_HUGEPAGE, so that where transparent huge
/// pages are enabled (Debian's default "madvise" mode included) the kernel
/// may back it with 2 MiB pages: a step over a 32k-token cache then walks 512
/// times fewer pages (decode 4-9% faster on Zen 4; docs/performance.md, "Huge
/// pages"). The advice is a hint: where it is refused, nothing else changes.
template <class T, bool HugePages = false>
struct aligned_allocator {
  /// The element type.
  using value_type = T;
  /// The same allocator for another element type.
  template <class U>
  struct rebind {
    using other = aligned_allocator<U, HugePages>;  ///< the rebound allocator
  };
  aligned_allocator() = default;
  /// Converts from the allocator of another element type (for rebinding).
  template <class U>
  aligned_allocator(const aligned_allocator<U, HugePages>&) noexcept {}
  /// Storage for n elements.
  T* allocate(std::size_t n) {
    void* p = ::operator new (n * sizeof(T), std::align_val_t{alignment(n)});
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    // Whole huge pages only (p is on a huge-page boundary when this applies).
    if (alignment(n) == huge_page)
      (void)madvise(p, n * sizeof(T) / huge_page * huge_page, MADV_HUGEPAGE);
#endif
    return static_cast<T*>(p);
  }
  /// Frees storage from allocate(n).
  void deallocate(T* p, std::size_t n) noexcept {
    ::operator delete (p, std::align_val_t{alignment(n)});
  }
  /// All such allocators are interchangeable.
  template <class U>
  bool operator==(const aligned_allocator<U, HugePages>&) const noexcept {
    return true;
  }
  /// All such allocators are interchangeable.
  template <class U>
  bool operator!=(const aligned_allocator<U, HugePages>&) const noexcept {
    return false;
  }

 private:
  // The alignment of a block of n elements: the same in allocate and
  // deallocate, as aligned operator delete requires.
  static std::size_t alignment(std::size_t n) {
    return HugePages && n * sizeof(T) >= huge_page ? huge_page : cache_line;
  }
};

/// A std::vector whose data() starts on a cache line.
template <class T>
using aligned_vector = std::vector<T, aligned_allocator<T>>;

/// A std::vector for large streamed buffers: aligned_allocator with huge pages.
template <class T>
using huge_page_vector = std::vector<T, aligned_allocator<T, true>>;

}  // namespace ATTN_ABI
}  // namespace attn::core
