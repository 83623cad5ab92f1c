// attn/core/abi.hpp: keeps code compiled for different instruction sets apart.
//
// attn is header-only, and its kernels' tile sizes and scratch layouts
// depend on the SIMD width and on OpenMP. If one translation unit of a
// program is compiled with -mavx512f and another without, the linker would
// otherwise merge same-named inline functions built for different widths,
// mixing one's buffer sizes with the other's kernels. Everything that depends
// on those flags therefore lives in an inline namespace named after them
// (abi_avx512_omp, abi_sse2_serial, ...), opened as the innermost namespace:
// attn::abi_avx2_omp::kv_cache, attn::core::simd::abi_avx2_omp::exp,
// attn::detail::sdpa::abi_avx2_omp::flash_forward. Users never name it.
// ISA-independent types (attn::error, attn::strided, attn::sdpa_options, ...)
// stay outside, so they are the same type in every translation unit. The
// rules are in docs/design.md, section 3.
#pragma once

#include <Eigen/Core>

#if defined(EIGEN_DONT_VECTORIZE)
#define ATTN_DETAIL_ISA scalar
#elif defined(EIGEN_VECTORIZE_AVX512)
#define ATTN_DETAIL_ISA avx512
#elif defined(EIGEN_VECTORIZE_AVX2)
#define ATTN_DETAIL_ISA avx2
#elif defined(EIGEN_VECTORIZE_AVX)
#define ATTN_DETAIL_ISA avx
#elif defined(EIGEN_VECTORIZE_SSE2)
#define ATTN_DETAIL_ISA sse2
#elif defined(EIGEN_VECTORIZE_NEON)
#define ATTN_DETAIL_ISA neon
#elif defined(EIGEN_VECTORIZE)
#define ATTN_DETAIL_ISA simd
#else
#define ATTN_DETAIL_ISA scalar
#endif

#if defined(_OPENMP)
#define ATTN_DETAIL_THREADS omp
#else
#define ATTN_DETAIL_THREADS serial
#endif

#define ATTN_DETAIL_CAT(isa, threads) abi_##isa##_##threads
#define ATTN_DETAIL_NAME(isa, threads) ATTN_DETAIL_CAT(isa, threads)

/// \namespace attn::abi
/// The inline namespace of attn's ISA- and OpenMP-dependent code. Its real
/// name depends on the compiler flags (attn::abi_avx512_omp,
/// attn::abi_sse2_serial, ...; the reference shows it as attn::abi); it is
/// inline, so its contents are named as members of attn (attn::kv_cache,
/// not attn::abi::kv_cache) and users never write it.

/// The inline namespace that holds attn's ISA- and OpenMP-dependent code.
#define ATTN_ABI ATTN_DETAIL_NAME(ATTN_DETAIL_ISA, ATTN_DETAIL_THREADS)
