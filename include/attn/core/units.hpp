// attn/core/units.hpp: the constants between the API's natural-log units
// and the kernels' log2 units.
//
// The kernels keep scores as scale·log2(e)·q·k so that the softmax's
// exponentials are exp2; LSEs leave the library in natural log. The argument
// checks (error.hpp's check_scale) need log2(e) too, to refuse a scale whose
// log2 form overflows, so it lives here, below both, and is ISA-independent.
#pragma once

namespace attn::core {

constexpr float log2e = 1.44269504088896341f;  ///< log2(e)
constexpr float ln2 = 0.693147180559945309f;    ///< ln(2)

}  // namespace attn::core
