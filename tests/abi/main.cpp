// Two translation units of one program include attn with different SIMD
// flags (-mavx2 vs the default SSE2). Their kernels use different tile
// sizes; attn's per-ISA inline namespace (attn/core/abi.hpp) keeps the
// linker from merging one's inline functions into the other's. Under
// AddressSanitizer, merging showed as a heap-buffer-overflow; here both
// results must also agree to rounding.
//
// The same for attn::kv_cache and attn::mla_cache, which sit in that
// namespace because kv_cache::attend calls the per-ISA kernels: each unit's
// cache types must carry its own namespace, each unit's attend() must give
// that unit's own scaled_dot_product_attention bits (a merged attend() gives
// the other unit's), and the units must agree to rounding.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>

#include "run_in_tu.hpp"

namespace {

int failures = 0;

void check(bool ok, const std::string& what) {
  std::printf("%s: %s\n", ok ? "ok  " : "FAIL", what.c_str());
  if (!ok) ++failures;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return INFINITY;
  double worst = 0;
  for (std::size_t i = 0; i < a.size(); ++i) worst = std::fmax(worst, std::fabs(a[i] - b[i]));
  return worst;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

void check_unit(const abi_test::cache_run& r, const char* unit) {
  const std::string u = std::string(unit) + " (" + r.abi + "): ";
  check(contains(r.kv_cache_type, r.abi), u + "kv_cache<float> is " + r.kv_cache_type);
  check(contains(r.mla_cache_type, r.abi), u + "mla_cache<float> is " + r.mla_cache_type);
  check(!r.attend.empty() && same_bits(r.attend, r.direct),
        u + "kv_cache::attend gives this unit's scaled_dot_product_attention bits");
}

}  // namespace

int main() {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) {
    std::printf("skipped: this CPU has no AVX2/FMA\n");
    return 0;
  }
#endif
  // Same maths, different summation order: agreement to 1e-5 on outputs of
  // magnitude <= 1 (values in [0, 1) or [-0.5, 0.5), 300 keys), far below
  // what a lost key or a wrong row would move.
  const std::vector<float> a = abi_test::run_wide(), b = abi_test::run_narrow();
  const double sdpa_diff = max_abs_diff(a, b);
  std::printf("max |wide - narrow| = %g\n", sdpa_diff);
  check(sdpa_diff <= 1e-5, "scaled_dot_product_attention: wide and narrow agree to rounding");

  const abi_test::cache_run wide = abi_test::run_caches_wide(),
                            narrow = abi_test::run_caches_narrow();
  check_unit(wide, "wide");
  check_unit(narrow, "narrow");
  const double attend_diff = max_abs_diff(wide.attend, narrow.attend);
  const double mla_diff = max_abs_diff(wide.mla, narrow.mla);
  std::printf("kv_cache::attend: max |wide - narrow| = %g\n", attend_diff);
  std::printf("multi_head_latent_attention over mla_cache: max |wide - narrow| = %g\n", mla_diff);
  check(attend_diff <= 1e-5, "kv_cache::attend: wide and narrow agree to rounding");
  check(!wide.mla.empty() && mla_diff <= 1e-5,
        "multi_head_latent_attention over mla_cache: wide and narrow agree to rounding");

  // The bit checks above tell the units apart only if their kernels give
  // different bits. They do when the units are built for different ISAs; a
  // build that gives both the same flags (ATTN_NATIVE) has one namespace.
  if (wide.abi != narrow.abi) {
    check(!same_bits(a, b), "scaled_dot_product_attention: the units ran different code");
    check(!same_bits(wide.direct, narrow.direct),
          "kv_cache problem: the units' kernels give different bits (the test can tell them apart)");
  } else {
    std::printf("note: both units built for %s; nothing to tell apart\n", wide.abi.c_str());
  }
  return failures == 0 ? 0 : 1;
}
