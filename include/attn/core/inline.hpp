// attn/core/inline.hpp: ATTN_ALWAYS_INLINE and ATTN_UNROLL.
//
// ATTN_ALWAYS_INLINE is for the few functions whose
// speed depends on being inlined into their caller: the register-tile
// products, whose strides and shapes are constants at the call site. Left
// to its heuristics, g++ keeps them out of line once a kernel's tile loop
// grows (a call per register tile, strides read from memory), which cost
// the MLA latent kernel a quarter of its speed.
#pragma once

#if defined(__GNUC__) || defined(__clang__)
#define ATTN_ALWAYS_INLINE inline __attribute__((always_inline))
#elif defined(_MSC_VER)
#define ATTN_ALWAYS_INLINE __forceinline
#else
#define ATTN_ALWAYS_INLINE inline
#endif

// ATTN_UNROLL: unroll the next loop completely. For the loops over a register
// tile's rows and packets: their trip counts are template constants, but
// g++ -O2 unrolls only small bodies, and a loop left rolled indexes the
// accumulator array, which then lives on the stack (on AVX2 the 4 x 2 score
// tile ran every FMA through a load and a store, at a third of the peak).
#if defined(__clang__)
#define ATTN_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define ATTN_UNROLL _Pragma("GCC unroll 64")
#else
#define ATTN_UNROLL
#endif
