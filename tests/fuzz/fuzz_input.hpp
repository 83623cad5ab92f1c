// tests/fuzz/fuzz_input.hpp: what every libFuzzer harness in tests/fuzz/
// shares: the decoder that turns fuzz bytes into sizes, choices and tensor
// values, strided layouts with gaps, and the checks that end the run with a
// message when an invariant breaks.
//
// Conventions of the harnesses
//  * Every choice reads bytes from the front of the input; an exhausted input
//    reads zeros, so every prefix of an input is itself a valid input and
//    zeros always mean "the plain case" (no corruption, dense layout, tame
//    values).
//  * Tensor values come from a small PRNG seeded by the input, plus special
//    values (NaN, +-inf, +-1e30, +-FLT_MAX, denormals, -0, ...) at positions
//    the input picks, or straight from the input bytes.
//  * A harness decides before the call whether the arguments are valid. A
//    valid call must not throw; an invalid one (the harness broke exactly one
//    argument) must throw attn::error, and nothing else, with a message in
//    the library's format. Either surprise is a finding.
//  * Checks print what broke and abort(), which libFuzzer records as a crash
//    (and ASan/UBSan findings abort on their own: -fno-sanitize-recover).
#pragma once

#include <Eigen/Core>
#include <attn/error.hpp>
#include <attn/view.hpp>
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <limits>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

/// Marks the harnesses' checking code, so that libFuzzer's coverage
/// instrumentation (which costs a call per comparison) stays on the library
/// and on the decoding of inputs.
#if defined(__clang__)
#define ATTN_FUZZ_NO_COVERAGE __attribute__((no_sanitize("coverage")))
#else
#define ATTN_FUZZ_NO_COVERAGE
#endif

namespace attn_fuzz {

using attn::index;

// ---------------------------------------------------------------------------
// Library issues the fuzzers (and their review) found that need a fix in
// include/. While a flag is true the harnesses steer around that one issue,
// so the fuzzers keep looking for new ones and CI stays green; each has a
// minimal reproducer as a DISABLED_ test in tests/test_fuzz_regressions.cpp
// or tests/test_nan_policy.cpp. After fixing the library: set the flag to
// false, enable the test, and run tools/fuzz.sh for a few minutes.
// Fixed ones stay listed, false, as the record of what was found.
namespace known {

/// F1: with d_v = 0 the views of V and of the output have no elements and
/// may have null data (as Eigen gives zero-size tensors), but the kernels
/// still form v.at(...) / out.at(...) = null + offset, undefined behaviour
/// (UBSan: "applying non-zero offset to null pointer"):
/// detail/split_kv_decode.hpp merge_row and accumulate_block,
/// detail/flash_forward.hpp pack_rows / prefetch_rows / the final store loop.
/// Regression test: FuzzRegressions.NullZeroWidthValueAndOutput.
constexpr bool null_views_with_zero_dv = false;  // fixed (sdpa.hpp: dummy views for d_v = 0)

/// F2: the tiled (flash) path of scaled_dot_product_attention multiplies
/// probabilities that are exactly 0 with V: O += P·V runs over whole
/// register blocks of query rows and over every key of a tile, so a NaN or
/// inf in the V row of a key that a row cannot see (causal / window edge,
/// bool mask, additive -inf, key_lengths inside the tile) gives that row
/// 0 · NaN = NaN. The split-KV path skips p == 0 and is right.
/// detail/flash_forward.hpp step 4. Tests: test_nan_policy.cpp
/// (DISABLED_ ... TiledPath cases).
constexpr bool flash_masked_value_nan_leaks = false;  // fixed (flash_forward.hpp: hidden keys' non-finite V entries set apart)

/// F3 / F6: both paths add the additive mask to the score instead of
/// masking: a score that is NaN (a NaN in K or q) or +inf (a finite q·k
/// that overflows fp32) plus the mask's -inf gives NaN for the row whose
/// mask hides that key, and so does a NaN mask entry under a false bool-mask
/// entry (-inf + NaN). The tiled path returns the NaN, the split path turns
/// it into 0 (F14). detail/flash_forward.hpp step 2 and
/// detail/split_kv_decode.hpp softmax_block (s += additive_to_log2(a)):
/// for a == -inf, or a score already -inf, assign -inf instead of adding.
/// Tests: test_nan_policy.cpp.
constexpr bool flash_additive_minus_inf_adds = false;  // fixed (softmax::apply_additive_log2)

/// F4: both paths accumulate O = Σ_j 2^(s_j - max) v_j unnormalised, which
/// overflows fp32 when the visible |v_j| add up past FLT_MAX (e.g. 2 keys
/// with v = 3e38): the output is inf instead of 3e38, and NaN (inf · 0) if a
/// later key then raises the row maximum far enough. Finite inputs, NaN
/// output. (additive_attention's Σ a_j v_j likewise, near FLT_MAX, where the
/// rounded weights add up to a little over 1; so could softmax::merge_partial.)
/// Tests: test_nan_policy.cpp HugeValues*, AdditiveAttentionHugeValues,
/// MergePartialOfHugeOutputsStaysFinite.
constexpr bool value_accumulation_overflow = false;  // fixed (core/fp64_row.hpp: a row that comes out non-finite is recomputed in double by both sdpa kernels and the MLA latent kernel; additive.hpp likewise per feature; merge_partial clamps)

/// F13: both sdpa paths pre-scale Q by scale · log2(e) and keep the product
/// in fp32, which overflows for |q| > FLT_MAX / (1.44 · scale): q = FLT_MAX
/// with the default scale 1/sqrt(1) becomes +inf, and a key with k = 0 then
/// scores inf · 0 = NaN (the exact score is 0). Finite inputs, NaN row.
/// detail/flash_forward.hpp (Qᵀ packing) and detail/split_kv_decode.hpp
/// (ws.q): clamp the pre-scaled value to +-FLT_MAX.
/// Regression test: FuzzRegressions.DISABLED_HugeQueryPrescaleOverflow.
constexpr bool prescaled_query_overflow = false;  // fixed (pre-scaled Q clamped to +-FLT_MAX)

/// F14: a row whose scores are NaN (a NaN in its query, in a key it sees,
/// in a visible additive mask entry) is reported as a row with no visible
/// key: softmax::finish_row_log2 tests !(sum > 0), which NaN passes, and
/// returns output scale 0 and LSE -inf. The tiled path then still returns
/// NaN (0 · NaN) with LSE -inf; the split-KV path returns 0, or, when the
/// keys span several chunks, the finite result of the other chunks
/// (merge_partial drops a partial with LSE -inf). Silent garbage.
/// Fix: test sum == 0 for "empty" and let NaN through
/// (core/softmax.hpp finish_row_log2; check core/softmax_natural.hpp
/// online_state::lse / inv_sum).
/// Tests: test_nan_policy.cpp DISABLED_*Propagates*.
constexpr bool nan_row_reported_empty = false;  // fixed (finish_row_log2 / split_kv_decode keep NaN rows NaN)

/// F7: additive_attention with Luong dot / general scores: a score that
/// overflows fp32 to +inf (finite q and k, q·k > FLT_MAX) makes the row NaN:
/// softmax::row_softmax takes max = +inf as its pivot and computes
/// exp(inf - inf). The sdpa kernels clamp the running max to FLT_MAX
/// (softmax::max_finite) for exactly this; row_softmax does not.
/// Regression test: FuzzRegressions.AdditiveDotScoreOverflow.
constexpr bool additive_score_overflow_nan = false;  // fixed (softmax_natural.hpp row_softmax)

/// F8: additive_attention with weight normalisation (normalize = true): the
/// factor g / ‖v‖ is rounded to float before it multiplies v, so a small ‖v‖
/// (v = {1e-40}, g = 1: the exact v_eff is {1}) makes it +inf and v_eff
/// inf (or NaN where v_a = 0), and every output NaN, although
/// |v_eff| <= |g|. additive.hpp, constructor: factor =
/// static_cast<float>(double(g) / sqrt(norm2)).
/// Regression test: FuzzRegressions.AdditiveNormalizeTinyV.
constexpr bool additive_normalize_factor_overflow = false;  // fixed (factor in double)

/// F5: kv_cache::attend never checks out.dims[0..1] (nor opt.lse's batch and
/// length, nor counts.size()): it cuts batch entry b's first n rows out of
/// `out` and hands that prefix to the attention, which then sees matching
/// dims. An `out` with fewer batch entries or rows than q is written past
/// its end (ASan: heap-buffer-overflow in split_kv_decode), a short `counts`
/// is read past its end. kv_cache.hpp attend().
/// Regression test: FuzzRegressions.DISABLED_KvCacheAttendChecksOut.
constexpr bool kv_cache_attend_unchecked_out = false;  // fixed (kv_cache::attend checks out, lse, counts)

/// F9: multi_head_attention::forward(x, cache) appends K/V to the cache and
/// only then lets kv_cache::attend / the attention check opt.attention
/// (causal, key_lengths, masks, scale, window, num_threads): such a call
/// throws with the cache already grown by T tokens, where "the cache is then
/// unchanged" is promised. multi_head.hpp forward(x, cache).
/// Regression test: FuzzRegressions.MhaCacheForwardBadOptionsLeaveCache.
constexpr bool mha_cache_checks_after_append = false;  // fixed (multi_head.hpp checks every option before the append; fuzz_mha_cache.cpp's error model follows its check order)

/// F10: kv_cache::append rejects k_new / v_new views with null data whenever
/// T > 0, also when they have no elements (batch 0, or a zero head dim),
/// which is how Eigen represents zero-size tensors: so
/// multi_head_attention::forward(x, cache) throws for a valid batch-0 x with
/// T > 0. kv_cache.hpp checked_counts: `T == 0 || (k.data && v.data)`
/// should accept a zero-extent view (detail::has_zero_extent), as sdpa does.
/// Regression test: FuzzRegressions.DISABLED_KvCacheAppendEmptyBatch.
constexpr bool kv_cache_append_rejects_null_empty = false;  // fixed (append accepts null zero-extent views)

}  // namespace known

// ---------------------------------------------------------------------------
// Failing

[[noreturn]] inline void fail(const std::string& what) {
  std::fprintf(stderr, "\n*** attn fuzz invariant broken: %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}

inline void check(bool ok, const std::string& what) {
  if (!ok) fail(what);
}

/// Outcome of one library call.
enum class outcome { ok, error };

/// Runs f(): returns ok, or error if it threw attn::error with a message in
/// the library's format ("attn::<fn>: <arg>: expected <E>, got <G>"). Any
/// other exception is a finding.
template <class F>
outcome call(const char* label, F&& f, std::string* message = nullptr) {
  try {
    f();
    return outcome::ok;
  } catch (const attn::error& e) {
    const std::string w = e.what();
    check(w.rfind("attn::", 0) == 0 && w.find(": expected ") != std::string::npos &&
              w.find(", got ") != std::string::npos,
          std::string(label) + ": attn::error message not in the library's format: " + w);
    if (message) *message = w;
    return outcome::error;
  } catch (const std::exception& e) {
    fail(std::string(label) + ": threw something other than attn::error: " + e.what());
  } catch (...) {
    fail(std::string(label) + ": threw a non-std exception");
  }
}

/// `got` must be what the harness predicted: `valid` calls succeed, invalid
/// ones throw attn::error. `why` says what was broken (for invalid calls).
inline void expect_outcome(const char* label, outcome got, bool valid, const std::string& why,
                           const std::string& message) {
  if (valid && got == outcome::error)
    fail(std::string(label) + ": a valid call threw: " + message);
  if (!valid && got == outcome::ok)
    fail(std::string(label) + ": an invalid call (" + why + ") did not throw attn::error");
}

// ---------------------------------------------------------------------------
// Debugging a finding: ATTN_FUZZ_VERBOSE=1 <harness> <input file> prints what
// the input decoded into.

inline bool verbose() {
  static const bool v = std::getenv("ATTN_FUZZ_VERBOSE") != nullptr;
  return v;
}

template <class T, std::size_t N>
std::string text(const std::array<T, N>& a) {
  std::string s = "[";
  for (std::size_t i = 0; i < N; ++i) s += (i ? ", " : "") + std::to_string(a[i]);
  return s + "]";
}

// ---------------------------------------------------------------------------
// The byte decoder

class input {
 public:
  input(const std::uint8_t* data, std::size_t size) : p_(data), n_(size) {}

  std::uint8_t u8() {
    if (n_ == 0) return 0;
    --n_;
    return *p_++;
  }
  std::uint16_t u16() { return static_cast<std::uint16_t>(u8() | (u8() << 8)); }
  std::uint32_t u32() { return static_cast<std::uint32_t>(u16()) | (std::uint32_t{u16()} << 16); }
  bool coin() { return (u8() & 1) != 0; }
  /// True with probability about num / 256: for bytes >= 256 - num, so a
  /// zero byte (and an exhausted input) says no.
  bool chance(unsigned num) { return n_ > 0 && u8() >= 256 - num; }
  /// A value in [lo, hi] (lo when exhausted).
  index range(index lo, index hi) {
    if (hi <= lo) return lo;
    const auto span = static_cast<std::uint64_t>(hi - lo) + 1;
    const std::uint64_t r = span <= 256 ? u8() : span <= 65536 ? u16() : u32();
    return lo + static_cast<index>(r % span);
  }
  template <class T, std::size_t N>
  const T& pick(const T (&a)[N]) {
    return a[u8() % N];
  }
  std::size_t remaining() const { return n_; }

 private:
  const std::uint8_t* p_;
  std::size_t n_;
};

// ---------------------------------------------------------------------------
// Values

/// splitmix64: a tiny PRNG for the bulk of tensor values.
struct rng {
  std::uint64_t s;
  std::uint64_t next() {
    std::uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  /// Uniform in [-1, 1).
  float unit() { return static_cast<float>(next() >> 40) * (2.0f / 16777216.0f) - 1.0f; }
};

/// The special values the harnesses mix in: edges of fp32, of bf16/half, and
/// non-finite values.
inline float special(std::uint8_t code) {
  constexpr float inf = std::numeric_limits<float>::infinity();
  constexpr float big = std::numeric_limits<float>::max();
  switch (code % 24) {
    case 0: return 0.0f;
    case 1: return -0.0f;
    case 2: return std::numeric_limits<float>::quiet_NaN();
    case 3: return inf;
    case 4: return -inf;
    case 5: return 1e30f;
    case 6: return -1e30f;
    case 7: return big;
    case 8: return -big;
    case 9: return 1e-40f;  // denormal
    case 10: return -1.4e-45f;  // smallest denormal
    case 11: return std::numeric_limits<float>::min();
    case 12: return 65504.0f;  // half's largest
    case 13: return 70000.0f;  // overflows half
    case 14: return -1e4f;
    case 15: return 1e-30f;
    case 16: return 3e38f;
    case 17: return 1e19f;  // squares to 1e38
    case 18: return -1e19f;
    case 19: return 1.0f;
    case 20: return -1.0f;
    case 21: return 1e-7f;
    case 22: return 100.0f;
    default: return -100.0f;
  }
}

namespace detail {
ATTN_FUZZ_NO_COVERAGE inline void fill_tame(float* p, index n, rng& g, float amp) {
  for (index i = 0; i < n; ++i) p[i] = amp * g.unit();
}
ATTN_FUZZ_NO_COVERAGE inline void fill_constant(float* p, index n, float x) {
  for (index i = 0; i < n; ++i) p[i] = x;
}
}  // namespace detail

/// Fills n floats: PRNG values of a tame amplitude, then the input may
/// override some positions with special values, set everything to one
/// special value, give every value itself, or make every value huge and of
/// one sign.
inline void fill(input& in, float* p, index n) {
  if (n <= 0) return;
  const std::uint8_t mode = in.u8();
  static constexpr float amplitudes[] = {1.0f, 2.0f, 0.25f, 8.0f};
  rng g{in.u32()};
  const float amp = amplitudes[(mode >> 3) & 3];
  switch (mode & 7) {
    case 0:
    case 1:
    case 2:  // tame
      detail::fill_tame(p, n, g, amp);
      break;
    case 3:
    case 4: {  // tame with a few specials
      detail::fill_tame(p, n, g, amp);
      const index k = in.range(1, 4);
      for (index i = 0; i < k; ++i) p[in.range(0, n - 1)] = special(in.u8());
      break;
    }
    case 5:  // one special value everywhere
      detail::fill_constant(p, n, special(in.u8()));
      break;
    case 6:  // values straight from the input: specials, or small integers
      for (index i = 0; i < n; ++i) {
        const std::uint8_t b = in.u8();
        p[i] = b & 0x80 ? special(b) : static_cast<float>(static_cast<int>(b & 0x7f) - 64) / 16;
      }
      break;
    default:
      if (mode & 0x20) {  // zeros
        detail::fill_constant(p, n, 0.0f);
      } else {
        // Huge, all of one sign: |x| in [1e19, 2e19). A query and a key
        // filled so with opposite signs make every score term about -1e38
        // and the dot product overflow to -inf from finite inputs (a
        // visible key all the same: issue 18, class 5).
        const float sign = mode & 0x40 ? -1.0f : 1.0f;
        for (index i = 0; i < n; ++i) p[i] = sign * 1e19f * (1.5f + 0.5f * g.unit());
      }
      break;
  }
}

/// Tame: finite and small enough that no intermediate of a small attention
/// problem overflows; such inputs are compared with the fp64 reference.
constexpr float tame_limit = 16.0f;
inline bool is_tame(float x) { return std::isfinite(x) && std::fabs(x) <= tame_limit; }

template <class T>
float as_float(const T& x) {
  return static_cast<float>(x);
}

// ---------------------------------------------------------------------------
// Strided layouts

/// A buffer and a strided view into it. The elements of the buffer outside
/// the view (gaps between rows, padding) hold `gap` values: NaN for inputs,
/// so a kernel that reads a gap shows it in its output, and a sentinel for
/// outputs, so a kernel that writes a gap is caught.
/// A heap array (not std::vector, which packs bool into bits).
template <class T>
class buffer {
 public:
  void assign(std::size_t n, const T& x) {
    p_.reset(n ? new T[n] : nullptr);
    n_ = n;
    for (std::size_t i = 0; i < n; ++i) p_[i] = x;
  }
  T* data() const { return p_.get(); }
  std::size_t size() const { return n_; }
  bool empty() const { return n_ == 0; }
  T& operator[](std::size_t i) const { return p_[i]; }

 private:
  std::unique_ptr<T[]> p_;
  std::size_t n_ = 0;
};

template <class T, int R>
struct laid_out {
  attn_fuzz::buffer<T> buffer;
  attn::strided<T, R> view;
  std::vector<index> offsets;  // buffer offset of every view element, row-major order

  index size() const { return static_cast<index>(offsets.size()); }
  T& operator[](index i) { return buffer[static_cast<std::size_t>(offsets[i])]; }
  const T& operator[](index i) const { return buffer[static_cast<std::size_t>(offsets[i])]; }
  attn::strided<const T, R> cview() const { return view; }
};

namespace detail {
// The buffer offset of every element of a view, in row-major order.
template <std::size_t R>
ATTN_FUZZ_NO_COVERAGE void enumerate_offsets(std::vector<index>& offsets,
                                             const std::array<index, R>& dims,
                                             const std::array<index, R>& strides, index base) {
  index count = 1;
  for (std::size_t r = 0; r < R; ++r) count *= dims[r];
  offsets.resize(static_cast<std::size_t>(count));
  std::array<index, R> idx{};
  for (index e = 0; e < count; ++e) {
    index off = base;
    for (std::size_t r = 0; r < R; ++r) off += idx[r] * strides[r];
    offsets[static_cast<std::size_t>(e)] = off;
    for (std::size_t r = R; r-- > 0;) {
      if (++idx[r] < dims[r]) break;
      idx[r] = 0;
    }
  }
}
}  // namespace detail

/// Pointer to element (a, b, c, d) of a rank-4 view (or (a, b, c) of a
/// rank-3 one): view::at without the coverage instrumentation.
template <class T>
ATTN_FUZZ_NO_COVERAGE inline T* at(const attn::strided<T, 4>& v, index a, index b, index c, index d) {
  return v.data + a * v.strides[0] + b * v.strides[1] + c * v.strides[2] + d * v.strides[3];
}
template <class T>
ATTN_FUZZ_NO_COVERAGE inline T* at(const attn::strided<T, 3>& v, index a, index b, index c) {
  return v.data + a * v.strides[0] + b * v.strides[1] + c * v.strides[2];
}

/// Layout freedom allowed for a tensor.
enum class layout_use {
  output,  ///< distinct elements only: permutations and padding
  input,   ///< also stride 0 (broadcast) and negative strides
};

/// Lays out a tensor of the given dims: the last dim contiguous (stride 1),
/// the others in an order and with padding the input picks; inputs may also
/// get a stride-0 or a negative stride on one dim. Elements outside the view
/// are set to `gap`.
template <class T, int R>
laid_out<T, R> lay_out(input& in, const std::array<index, R>& dims, layout_use use, T gap) {
  laid_out<T, R> t;
  const std::uint8_t mode = in.u8();
  std::array<int, R> order{};  // memory order, innermost first
  for (int r = 0; r < R; ++r) order[r] = R - 1 - r;
  if (mode & 1) {  // permute the dims above the last one
    for (int r = 1; r < R - 1; ++r) std::swap(order[r], order[in.range(r, R - 1)]);
  }
  std::array<index, R> strides{};
  index s = 1;  // order[0] is the last dim: stride 1
  for (int r = 0; r < R; ++r) {
    const int d = order[r];
    strides[d] = s;
    const index pad = (mode & 2) ? in.range(0, 3) : 0;
    s = s * std::max<index>(dims[d], 1) + pad;
  }
  bool empty = false;
  for (int r = 0; r < R; ++r) empty = empty || dims[r] == 0;
  if (use == layout_use::input && R > 1 && (mode & 4)) {
    const int d = static_cast<int>(in.range(0, R - 2));
    if (dims[d] > 1 && in.coin())
      strides[d] = 0;  // broadcast
    else
      strides[d] = -strides[d];  // reversed
  }
  index lo = 0, hi = 0;  // offset range reached
  for (int r = 0; r < R; ++r) {
    if (dims[r] == 0) continue;
    const index span = (dims[r] - 1) * strides[r];
    (span < 0 ? lo : hi) += span;
  }
  const index n = empty ? 0 : hi - lo + 1;
  t.buffer.assign(static_cast<std::size_t>(n + (mode & 8 ? 3 : 0)), gap);
  t.view.data = empty && (mode & 16) ? nullptr : t.buffer.data() + (empty ? 0 : -lo);
  t.view.dims = dims;
  t.view.strides = strides;
  if (!empty) detail::enumerate_offsets(t.offsets, dims, strides, -lo);
  return t;
}

/// Fills the view's elements (in row-major order of the view) from the input,
/// converting to T. With a stride-0 dim several view elements share one
/// buffer element; the last write wins, and readers must read the buffer
/// through the view (which they do).
template <class T, int R>
ATTN_FUZZ_NO_COVERAGE void copy_in(laid_out<T, R>& t, const std::vector<float>& v) {
  for (index i = 0; i < t.size(); ++i) t[i] = static_cast<T>(v[static_cast<std::size_t>(i)]);
}
template <class T, int R>
void fill(input& in, laid_out<T, R>& t) {
  std::vector<float> v(static_cast<std::size_t>(t.size()));
  fill(in, v.data(), t.size());
  copy_in(t, v);
}

/// Prints a view's dims, strides and values (verbose mode).
template <class T, int R>
void dump(const char* name, const laid_out<T, R>& t) {
  if (!verbose()) return;
  std::fprintf(stderr, "%s: dims %s strides %s data %p:", name, text(t.view.dims).c_str(),
               text(t.view.strides).c_str(), static_cast<const void*>(t.view.data));
  for (index i = 0; i < t.size() && i < 64; ++i)
    std::fprintf(stderr, " %g", static_cast<double>(static_cast<float>(t[i])));
  std::fprintf(stderr, "%s\n", t.size() > 64 ? " ..." : "");
}

/// The bits of a float, for sentinel checks.
inline std::uint32_t bits(float x) {
  std::uint32_t b;
  std::memcpy(&b, &x, sizeof b);
  return b;
}
/// A signalling NaN with a payload no arithmetic produces (arithmetic on it
/// would quiet it): marks output elements that must be written, and gaps that
/// must not be.
inline float sentinel() {
  const std::uint32_t b = 0x7fa5a5a5u;
  float x;
  std::memcpy(&x, &b, sizeof x);
  return x;
}
inline bool is_sentinel(float x) { return bits(x) == 0x7fa5a5a5u; }

/// Output checks common to every harness: every view element written, no
/// buffer element outside the view touched.
template <int R>
ATTN_FUZZ_NO_COVERAGE void check_written_exactly(const laid_out<float, R>& t, const char* what) {
  std::vector<char> in_view(t.buffer.size(), 0);
  for (index i = 0; i < t.size(); ++i) {
    in_view[static_cast<std::size_t>(t.offsets[static_cast<std::size_t>(i)])] = 1;
    check(!is_sentinel(t[i]), std::string(what) + ": element " + std::to_string(i) +
                                  " of the output view was not written");
  }
  for (std::size_t i = 0; i < t.buffer.size(); ++i)
    if (!in_view[i])
      check(is_sentinel(t.buffer[i]),
            std::string(what) + ": buffer element " + std::to_string(i) +
                " outside the output view was written");
}

/// Byte-for-byte snapshot of any trivially copyable storage.
template <class T>
ATTN_FUZZ_NO_COVERAGE std::vector<unsigned char> snapshot(const T* p, std::size_t n) {
  static_assert(std::is_trivially_copyable<T>::value, "snapshot: trivially copyable only");
  std::vector<unsigned char> s(n * sizeof(T));
  if (n) std::memcpy(s.data(), p, s.size());
  return s;
}

/// fp32 unit roundoff.
constexpr double eps32 = 5.9604644775390625e-8;

/// True when all n floats at p are finite / tame (is_tame).
ATTN_FUZZ_NO_COVERAGE inline bool all_finite(const float* p, index n) {
  for (index i = 0; i < n; ++i)
    if (!std::isfinite(p[i])) return false;
  return true;
}
ATTN_FUZZ_NO_COVERAGE inline bool all_tame(const float* p, index n) {
  for (index i = 0; i < n; ++i)
    if (!is_tame(p[i])) return false;
  return true;
}

/// Relative rounding unit of a value stored as S (float, bf16 or half).
template <class S>
constexpr double storage_unit() {
  if (std::is_same<S, float>::value) return eps32;
  if (std::is_same<S, Eigen::bfloat16>::value) return 1.0 / 256;
  return 1.0 / 2048;
}

/// Whether a harness's input is a valid call, and if not, why and which
/// text the attn::error it must throw has to contain.
struct breakage {
  bool valid = true;
  std::string why, needle;
  void set(const std::string& w, const std::string& n) {
    valid = false;
    why = w;
    needle = n;
  }
};

}  // namespace attn_fuzz
