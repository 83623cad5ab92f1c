// attn/core/scratch.hpp: per-thread working arrays that outlive one call.
//
// A call's temporaries of a few hundred KiB lie above glibc's mmap
// threshold, so a fresh std::vector for each costs page faults on every call
// (docs/performance.md, additive; worse on two threads, where the faults
// contend for the process's memory map). A
// scratch_array instead borrows its thread's buffer for the given Tag and
// gives it back when it goes out of scope; the buffer is kept for the next
// call while it is at most retain_bytes.
#pragma once

#include <cstddef>
#include <vector>

#include "attn/core/abi.hpp"
#include "attn/core/aligned.hpp"

namespace attn::core {
inline namespace ATTN_ABI {

/// n elements of T borrowed from this thread's buffer for Tag (one buffer per
/// (T, Tag) and thread), starting on a cache line. The contents are unspecified: whatever the
/// previous borrower left. A second scratch_array of the same type alive in the same thread gets
/// memory of its own, so nesting is safe, only slower.
template <class T, class Tag>
class scratch_array {
 public:
  /// Buffers up to this size stay with their thread between calls; larger
  /// ones are freed when the borrower is done (their calls are long enough
  /// not to notice the allocation).
  static constexpr std::size_t retain_bytes = std::size_t{4} << 20;

  /// Borrows n elements (the thread's buffer grows to n if needed).
  explicit scratch_array(std::size_t n) : size_(n) {
    slot& s = thread_slot();
    if (!s.borrowed) {
      if (s.buffer.size() < n) s.buffer.resize(n);  // (may throw: then not borrowed)
      s.borrowed = true;
      owner_ = &s;
      data_ = s.buffer.data();
    } else {
      own_.resize(n);
      data_ = own_.data();
    }
  }
  /// Gives the buffer back (and frees it if it passed retain_bytes).
  ~scratch_array() {
    if (owner_ == nullptr) return;
    if (owner_->buffer.size() * sizeof(T) > retain_bytes) {
      owner_->buffer.clear();
      owner_->buffer.shrink_to_fit();
    }
    owner_->borrowed = false;
  }
  scratch_array(const scratch_array&) = delete;
  scratch_array& operator=(const scratch_array&) = delete;

  /// The first of the n elements.
  T* data() { return data_; }
  /// The first of the n elements.
  const T* data() const { return data_; }
  /// n.
  std::size_t size() const { return size_; }
  /// Element i < n.
  T& operator[](std::size_t i) { return data_[i]; }
  /// Element i < n.
  const T& operator[](std::size_t i) const { return data_[i]; }

 private:
  struct slot {
    aligned_vector<T> buffer;
    bool borrowed = false;
  };
  static slot& thread_slot() {
    thread_local slot s;
    return s;
  }

  slot* owner_ = nullptr;  // the thread's slot, when borrowed from it
  aligned_vector<T> own_;  // otherwise the memory is this array's own
  T* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace ATTN_ABI
}  // namespace attn::core
