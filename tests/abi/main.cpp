// Two translation units of one program include attn with different SIMD
// flags (-mavx2 vs the default SSE2). Their kernels use different tile
// sizes; attn's per-ISA inline namespace (attn/core/abi.hpp) keeps the
// linker from merging one's inline functions into the other's. Under
// AddressSanitizer, merging showed as a heap-buffer-overflow; here both
// results must also agree to rounding.
#include <cmath>
#include <cstdio>

#include "run_in_tu.hpp"

int main() {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) {
    std::printf("skipped: this CPU has no AVX2/FMA\n");
    return 0;
  }
#endif
  const std::vector<float> a = abi_test::run_wide(), b = abi_test::run_narrow();
  if (a.size() != b.size()) return 1;
  double worst = 0;
  for (std::size_t i = 0; i < a.size(); ++i) worst = std::fmax(worst, std::fabs(a[i] - b[i]));
  std::printf("max |wide - narrow| = %g\n", worst);
  return worst <= 1e-5 ? 0 : 1;  // same maths, different summation order
}
