// tests/counting_allocator.hpp: replaces the global operator new / delete of
// the test program that includes it (include it from exactly one translation
// unit, the test's only one) with versions that count every heap byte, so a
// test can check a call's peak extra memory:
//
//   const long long before = live_bytes.load();
//   peak_bytes = before;
//   ... the call ...
//   EXPECT_LE(peak_bytes - before, budget);
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <new>

namespace {

std::atomic<long long> live_bytes{0};  // bytes allocated and not yet freed
std::atomic<long long> peak_bytes{0};  // largest live_bytes seen since last reset

struct counted_header {
  std::size_t size;
  std::size_t pad;  // keeps the user block 16-byte aligned
};

void* counted_alloc(std::size_t n) {
  void* p = std::malloc(n + sizeof(counted_header));
  if (!p) throw std::bad_alloc();
  static_cast<counted_header*>(p)->size = n;
  const long long now = live_bytes += static_cast<long long>(n);
  long long peak = peak_bytes.load();
  while (now > peak && !peak_bytes.compare_exchange_weak(peak, now)) {
  }
  return static_cast<counted_header*>(p) + 1;
}

void counted_free(void* p) noexcept {
  if (!p) return;
  counted_header* h = static_cast<counted_header*>(p) - 1;
  live_bytes -= static_cast<long long>(h->size);
  std::free(h);
}

}  // namespace

void* operator new(std::size_t n) { return counted_alloc(n); }
void* operator new[](std::size_t n) { return counted_alloc(n); }
void operator delete(void* p) noexcept { counted_free(p); }
void operator delete[](void* p) noexcept { counted_free(p); }
void operator delete(void* p, std::size_t) noexcept { counted_free(p); }
void operator delete[](void* p, std::size_t) noexcept { counted_free(p); }
