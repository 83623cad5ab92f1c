// attn/core/inline.hpp: ATTN_ALWAYS_INLINE, for the few functions whose
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
