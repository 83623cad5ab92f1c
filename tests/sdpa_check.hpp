// tests/sdpa_check.hpp: how the SDPA-family tests compare attn with the fp64
// reference (tests/reference/sdpa_reference.hpp): random inputs, the
// kernel run with NaN-filled outputs, and agrees() with the tolerances
// below. Used by test_sdpa.cpp and test_score_modifiers.cpp.
//
// Tolerances (fp32 kernel vs fp64 reference on the same inputs)
// --------------------------------------------------------------
// out:  max |out - ref| <= 1e-5 * max|V| + 1e-7.
//   The output row is a convex combination of V rows, so every error term
//   scales with max|V|:
//   * P·V accumulation in fp32 over S keys: a sum of S terms of size <= |V|
//     whose weights sum to 1; rounding grows like sqrt(S)·eps for random
//     signs (worst case S·eps): sqrt(1000)·6e-8 ~ 2e-6.
//   * exp() relative error <= attn::core::simd::exp_max_rel_error = 3e-7 on every
//     p_j and on the row sum: <= ~2·3e-7·|V|.
//   * score error: fp32 dot products of length d (<= 256) of N(0,1) data,
//     |s| = O(1) after 1/sqrt(d): ~ sqrt(d)·eps·|q||k|/sqrt(d) ~ 1e-6, which
//     moves the output by ~ 1e-6·|v - o| <= 2e-6·max|V|.
//   * online-softmax rescales by exp(m_old - m_new): a few eps per tile.
//   Sum ~ 5e-6·max|V| in the worst of our cases; 1e-5 leaves a 2x margin
//   and is still ~100x tighter than any real bug (a missing/extra key or a
//   wrong rescale moves the output by O(|V|/S) >= 1e-3·|V|). The 1e-7
//   absolute term only matters for V == 0.
// lse:  |lse - ref| <= 1e-5 * (1 + |ref|): lse = m + log(sum); the sum has
//   the exp error (3e-7 relative -> 3e-7 absolute in the log) plus
//   accumulation (sqrt(S)·eps), and m carries the score's relative error.
// One exception: the SdpaLargeScores tests (|score| ~ 1e4) add the fp32
// score-representation term explained at score_rounding_tol().
// Rows the reference finds fully masked must be *exactly* 0 with LSE -inf.
// For bf16/half K/V the reference is computed on the rounded K/V values, so
// the fp32 tolerance above still applies.
//
// Bit-for-bit comparisons: where two calls give the kernel exactly the same
// numbers in the same order (only addresses/strides differ: bhsd, packed QKV,
// slices, strided out/lse, GQA vs K/V copied per head, broadcast vs
// materialised masks, the Tensor/Matrix overloads, any thread count, LSE
// requested or not) results must be identical bytes (memcmp). Strides only
// change where the kernel reads a value from (in place or from its own
// packed copy), never which values meet in which order.
//
// Measured (x86-64, SSE / AVX-512 / scalar builds): the worst output error
// over the whole suite is 0.29 of the tolerance, the worst LSE error 0.08.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <attn/sdpa.hpp>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "reference/sdpa_reference.hpp"

namespace sdpa_check {

using attn::index;
using tensor3 = Eigen::Tensor<float, 3, Eigen::RowMajor>;
using tensor4 = Eigen::Tensor<float, 4, Eigen::RowMajor>;
using tensor5 = Eigen::Tensor<float, 5, Eigen::RowMajor>;
template <class T>
using tensor4_t = Eigen::Tensor<T, 4, Eigen::RowMajor>;
template <class T, int R>
using tensor_t = Eigen::Tensor<T, R, Eigen::RowMajor>;

inline const float kNaN = std::numeric_limits<float>::quiet_NaN();
inline const float kInfF = std::numeric_limits<float>::infinity();
constexpr double kInf = std::numeric_limits<double>::infinity();

// The tolerance constants explained at the top of the file.
constexpr double kOutRel = 1e-5;
constexpr double kOutAbs = 1e-7;
constexpr double kLseRel = 1e-5;

// Largest (error / tolerance) seen over the whole run; printed at the end so
// the margin is visible.
inline double g_worst_out_ratio = 0.0, g_worst_lse_ratio = 0.0;
// Time spent in the kernel and in the reference by check().
inline double g_kernel_seconds = 0.0, g_ref_seconds = 0.0;

struct shape {
  index B, L, S, Hq, Hkv, Dqk, Dv;
};
inline std::string str(const shape& s) {
  std::ostringstream o;
  o << "B=" << s.B << " L=" << s.L << " S=" << s.S << " Hq=" << s.Hq << " Hkv=" << s.Hkv
    << " Dqk=" << s.Dqk << " Dv=" << s.Dv;
  return o.str();
}

inline tensor4 randn(index a, index b, index c, index d, std::mt19937& g, float sd = 1.0f) {
  tensor4 t(a, b, c, d);
  std::normal_distribution<float> n(0.0f, sd);
  for (index i = 0; i < t.size(); ++i) t.data()[i] = n(g);
  return t;
}

template <class KV>
struct inputs {
  tensor4 q;
  tensor4_t<KV> k, v;
};

template <class KV = float>
inputs<KV> make_inputs(const shape& s, unsigned seed) {
  std::mt19937 g(seed);
  inputs<KV> in;
  in.q = randn(s.B, s.L, s.Hq, s.Dqk, g);
  tensor4 k = randn(s.B, s.S, s.Hkv, s.Dqk, g);
  tensor4 v = randn(s.B, s.S, s.Hkv, s.Dv, g);
  in.k = k.template cast<KV>();
  in.v = v.template cast<KV>();
  return in;
}

struct outputs {
  tensor4 out;
  tensor3 lse;
};

// Runs the kernel on contiguous [B, S, H, D] tensors; out and lse start as
// NaN so anything left unwritten shows up.
template <class KV>
outputs run(const inputs<KV>& in, attn::sdpa_options opt, bool want_lse = true) {
  const index B = in.q.dimension(0), L = in.q.dimension(1), Hq = in.q.dimension(2);
  outputs r{tensor4(B, L, Hq, in.v.dimension(3)), tensor3(B, Hq, L)};
  r.out.setConstant(kNaN);
  r.lse.setConstant(kNaN);
  if (want_lse) opt.lse = attn::view(r.lse);
  attn::scaled_dot_product_attention(attn::bshd(in.q), attn::bshd(in.k), attn::bshd(in.v),
                                     attn::bshd(r.out), opt);
  return r;
}

// The reference's options from attn's.
inline attn_ref::options to_ref(const attn::sdpa_options& o) { return attn_ref::options_from(o); }

template <class T>
double max_abs(const tensor4_t<T>& t) {
  double m = 0.0;
  for (index i = 0; i < t.size(); ++i)
    m = std::max(m, std::abs(static_cast<double>(static_cast<float>(t.data()[i]))));
  return m;
}

// Compares the kernel's out/lse with the reference (see the tolerances at
// the top). Fully masked reference rows must be exactly 0 / -inf.
//
// extra_tol is added to the output tolerance by the large-score tests only
// (see score_rounding_tol).
inline ::testing::AssertionResult agrees(const outputs& got, const attn_ref::result& ref, double vmax,
                                  bool check_lse = true, double extra_tol = 0.0) {
  const double tol = kOutRel * vmax + kOutAbs + extra_tol;
  double worst_out = 0.0, worst_lse = 0.0;
  index bad = 0;
  std::ostringstream msg;
  auto report = [&](const std::string& s) {
    if (bad++ < 8) msg << "\n  " << s;
  };
  for (index b = 0; b < ref.B; ++b)
    for (index h = 0; h < ref.Hq; ++h)
      for (index i = 0; i < ref.L; ++i) {
        const double rl = ref.l(b, h, i);
        const float gl = got.lse(b, h, i);
        const bool masked = rl == -kInf;
        std::ostringstream where;
        where << "(b=" << b << ", h=" << h << ", i=" << i << ")";
        if (check_lse) {
          if (masked) {
            if (!(gl == -kInfF))
              report("lse" + where.str() + " = " + std::to_string(gl) + ", want -inf");
          } else {
            const double e = std::abs(static_cast<double>(gl) - rl);
            const double t = kLseRel * (1.0 + std::abs(rl));
            if (!(e <= t))
              report("lse" + where.str() + " = " + std::to_string(gl) + ", ref " +
                     std::to_string(rl));
            else
              worst_lse = std::max(worst_lse, e / t);
          }
        }
        for (index d = 0; d < ref.Dv; ++d) {
          const float go = got.out(b, i, h, d);
          const double ro = ref.o(b, i, h, d);
          if (masked) {
            if (!(go == 0.0f))
              report("out" + where.str() + "[" + std::to_string(d) + "] = " + std::to_string(go) +
                     ", want exactly 0 (fully masked row)");
            continue;
          }
          const double e = std::abs(static_cast<double>(go) - ro);
          if (!(e <= tol)) {  // also catches NaN
            std::ostringstream s;
            s.precision(9);
            s << "out" << where.str() << "[" << d << "] = " << go << ", ref " << ro << ", |err| "
              << e << " > tol " << tol;
            report(s.str());
          } else {
            worst_out = std::max(worst_out, tol > 0 ? e / tol : 0.0);
          }
        }
      }
  g_worst_out_ratio = std::max(g_worst_out_ratio, worst_out);
  g_worst_lse_ratio = std::max(g_worst_lse_ratio, worst_lse);
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << bad << " mismatches (tol " << tol << ")" << msg.str();
}

// For |scores| ~ 1e4 no fp32 kernel can match fp64 to 1e-5: a score of
// magnitude |s| is held in fp32 only to u·|s| (u = 2^-24; ulp(1e4) = 2^-10),
// and attn's kernel also rounds once more when it pre-scales Q by
// scale·log2(e). Each score is off by up to ~2u·|s|, which moves the output
// row (a convex combination of V) by at most max|ds| · max|v_j - o|
// <= 2u|s| · 2 max|V|. For |s| = 1e4 that is ~5e-3·max|V|: still far below
// what a real bug (a wrong key, rescale or overflow) does, O(max|V|).
inline double score_rounding_tol(double max_score, double vmax) {
  const double u = std::ldexp(1.0, -24);
  return 2.0 * u * max_score * 2.0 * vmax;
}

// Largest |lse| of the reference: a proxy for the largest score.
inline double max_abs_lse(const attn_ref::result& r) {
  double m = 0.0;
  for (double x : r.lse)
    if (std::isfinite(x)) m = std::max(m, std::abs(x));
  return m;
}

// Kernel vs reference for one shape and option set.
template <class KV = float>
void check(const shape& s, const attn::sdpa_options& opt, unsigned seed,
           const attn_ref::options* ropt = nullptr) {
  SCOPED_TRACE(str(s) + " seed=" + std::to_string(seed));
  const inputs<KV> in = make_inputs<KV>(s, seed);
  const auto t0 = std::chrono::steady_clock::now();
  const outputs got = run(in, opt);
  const auto t1 = std::chrono::steady_clock::now();
  const attn_ref::result ref = attn_ref::sdpa(attn::bshd(in.q), attn::bshd(in.k), attn::bshd(in.v),
                                              ropt ? *ropt : to_ref(opt));
  const auto t2 = std::chrono::steady_clock::now();
  g_kernel_seconds += std::chrono::duration<double>(t1 - t0).count();
  g_ref_seconds += std::chrono::duration<double>(t2 - t1).count();
  EXPECT_TRUE(agrees(got, ref, max_abs(in.v)));
}

template <class T, int R>
bool same_bytes(const tensor_t<T, R>& a, const tensor_t<T, R>& b) {
  // An empty tensor's data() is null, and memcmp of null is undefined even
  // for 0 bytes (GCC -O3 then drops the null check of the tensor's free).
  return a.dimensions() == b.dimensions() &&
         (a.size() == 0 ||
          std::memcmp(a.data(), b.data(), static_cast<std::size_t>(a.size()) * sizeof(T)) == 0);
}

inline void expect_same(const outputs& a, const outputs& b, const std::string& what) {
  EXPECT_TRUE(same_bytes(a.out, b.out)) << what << ": out differs bitwise";
  EXPECT_TRUE(same_bytes(a.lse, b.lse)) << what << ": lse differs bitwise";
}

inline bool has_nan(const tensor4& t) {
  for (index i = 0; i < t.size(); ++i)
    if (std::isnan(t.data()[i])) return true;
  return false;
}

inline tensor_t<bool, 4> random_bool(index a, index b, index c, index d, double p_true, std::mt19937& g) {
  tensor_t<bool, 4> t(a, b, c, d);
  std::bernoulli_distribution bern(p_true);
  for (index i = 0; i < t.size(); ++i) t.data()[i] = bern(g);
  return t;
}

// ---------------------------------------------------------------------------
// Shapes


}  // namespace sdpa_check
