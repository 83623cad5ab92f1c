// attn/core/parallel.hpp: a parallel loop over independent tasks.
//
// OpenMP when the including translation unit is compiled with it, a plain
// loop otherwise. Each task must write only its own outputs, so results do
// not depend on the thread count or on which thread ran which task.
//
// Both loops call one out-of-line copy of the task body (run_task). Inlined
// into each loop, the body would be compiled twice, and at -O3 with FMA
// (-march=native) g++ contracts a multiply-add in one copy and not in the
// other: the bits then depended on the thread count (decomposable attention
// differed in 175 of 3200 elements between 1 and 2 threads). One copy, one
// choice, whatever the flags (docs/design.md "Determinism").
#pragma once

#include <algorithm>

#include "attn/core/abi.hpp"
#include "attn/core/index.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

/// The shared core below every attention family: the parallel loop, the
/// register-blocked micro-kernel and the packed linear layer. Knows nothing
/// of attention. Internal, not part of the API (see attn/attn.hpp).
namespace attn::core {
inline namespace ATTN_ABI {

/// Number of threads parallel_for will use for `requested` (0 = default),
/// never more than the OpenMP thread limit.
inline int resolve_threads(int requested) {
#if defined(_OPENMP)
  const int limit = omp_get_thread_limit();
  const int n = requested > 0 ? requested : omp_get_max_threads();
  return n < limit ? n : limit;
#else
  (void)requested;
  return 1;
#endif
}

// The default of min_parallel_flops (below), overridable for tests.
#ifndef ATTN_MIN_PARALLEL_FLOPS
#define ATTN_MIN_PARALLEL_FLOPS 4.0e6
#endif

/// Below this many floating-point operations in a whole call, starting a
/// parallel region costs more than it saves (waking threads takes
/// microseconds, and on a loaded machine spinning workers can stall for
/// milliseconds), so callers run such calls on one thread.
/// ATTN_MIN_PARALLEL_FLOPS overrides it: the fuzzers define it as 0 so that
/// their small problems run on the threads they ask for, and their
/// thread-count checks compare real parallel runs.
constexpr double min_parallel_flops = ATTN_MIN_PARALLEL_FLOPS;

/// Thread count for a call of `flops` operations: 1 below min_parallel_flops.
inline int threads_for_work(int requested, double flops) {
  return flops < min_parallel_flops ? 1 : requested;
}

/// ATTN_SINGLE_COPY: the function is compiled once and never inlined, cloned
/// or specialised per call site (GCC's noipa also stops interprocedural
/// constant propagation, which would otherwise make a second copy).
#if defined(__clang__)
#define ATTN_SINGLE_COPY __attribute__((noinline))
#elif defined(__GNUC__)
#define ATTN_SINGLE_COPY __attribute__((noipa))
#elif defined(_MSC_VER)
#define ATTN_SINGLE_COPY __declspec(noinline)
#else
#define ATTN_SINGLE_COPY
#endif

namespace parallel_detail {
/// The one compiled copy of a task body that every thread count runs.
template <class Scratch, class Body>
ATTN_SINGLE_COPY void run_task(Scratch& scratch, const Body& body, index t) {
  body(scratch, t);
}
}  // namespace parallel_detail

/// Runs body(scratch, t) for t in [0, n). `make_scratch()` is called once per
/// thread to build that thread's working memory, so the loop itself never
/// allocates. Tasks are handed out dynamically (they may differ in cost, as
/// causal tiles do).
template <class MakeScratch, class Body>
void parallel_for(index n, int requested_threads, MakeScratch make_scratch, Body body) {
#if defined(_OPENMP)
  // No more threads than tasks: each thread builds its own scratch.
  const int nt = static_cast<int>(std::min<index>(resolve_threads(requested_threads), n));
  if (nt > 1) {
#pragma omp parallel num_threads(nt)
    {
      auto scratch = make_scratch();
#pragma omp for schedule(dynamic, 1)
      for (index t = 0; t < n; ++t) parallel_detail::run_task(scratch, body, t);
    }
    return;
  }
#else
  (void)requested_threads;
#endif
  auto scratch = make_scratch();
  for (index t = 0; t < n; ++t) parallel_detail::run_task(scratch, body, t);
}

/// Runs body(t) for t in [0, n): parallel_for for tasks that need no
/// working memory.
template <class Body>
void parallel_for(index n, int requested_threads, Body body) {
  struct none {};
  parallel_for(
      n, requested_threads, [] { return none{}; }, [&](none&, index t) { body(t); });
}

}  // namespace ATTN_ABI
}  // namespace attn::core
