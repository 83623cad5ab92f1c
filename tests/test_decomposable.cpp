// tests/test_decomposable.cpp: attn::decomposable_attention (Parikh et al.
// 2016) — both soft alignments and the intra-sentence variant — against the
// fp64 direct formulas of tests/reference/decomposable_reference.hpp, plus
// masks and lengths on both sides, F, extreme scores, threads, layouts,
// memory and every error path.
//
// Tolerances (fp32 kernel vs fp64 reference on the same fp32 inputs)
// -------------------------------------------------------------------
// Everything follows from a bound err_ij on each score's error, computed by
// the reference from the magnitudes that enter it (score_error in
// decomposable_reference.hpp: F's fp32 products, the fp32 dot product of
// d_f terms, the scaling by scale·log2 e, the distance bias). For a softmax
// over a row (column) let E = max err over that row (column) and n its
// number of visible entries:
//  * weights: |p - p_ref| <= (e^{2E} - 1 + rel)·p_ref + 1e-37. Scores that
//    each move by at most E move every probability by a factor within
//    e^{±2E}. rel is the kernel's own fp32 softmax arithmetic:
//    exp2_nonpositive (1.5e-7 relative, taken 3e-7) on the term and on each
//    of the (2 + tiles) rescalings of the running sum, the sum's
//    accumulation over n positive terms (2·sqrt(n)·eps, random-sign
//    rounding, 2x margin), and the rounding of the argument e - max
//    (eps·|e - max| relative after exp). 1e-37: results below FLT_MIN flush
//    to 0.
//  * beta / alpha: |β_ik - ref| <= Σ_j tol(p_ij)·|b_jk| + 2·sqrt(n)·eps·Σ_j
//    p_ij·|b_jk| + 1e-30: the weight errors, plus the fp32 accumulation of n
//    products (2x margin over random-sign rounding).
//  * LSE: |lse - ref| <= E + rel + 2·eps·|lse|: the score errors shift it by
//    at most E, the sum's relative error becomes absolute, and its two
//    roundings (log2 units, then natural).
// The worst ratio error / tolerance is printed at the end (see the report
// line); a real bug (a key too many or too few, a wrong mask, a transposed
// softmax) moves weights by O(1/n) >= 3e-3, thousands of times these
// tolerances.
// Masked or empty rows/columns must be exactly 0 (outputs, weights) and
// -inf (LSE).
//
// Bit-for-bit (memcmp) comparisons: 1 vs 2 vs 3 threads; strided vs dense
// views; tensor vs view entries; outputs requested alone vs together.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <attn/attn.hpp>
#include <attn/decomposable.hpp>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <new>
#include <random>
#include <string>
#include <vector>

#include "expect_error.hpp"
#include "reference/decomposable_reference.hpp"

// ---------------------------------------------------------------------------
// Every heap allocation of this binary is counted, so that one test can show
// that no La x Lb matrix is ever allocated (see DecomposableMemory).
#include "counting_allocator.hpp"

namespace test_decomposable {

using attn::index;
using tensor2 = Eigen::Tensor<float, 2, Eigen::RowMajor>;
using tensor2b = Eigen::Tensor<bool, 2, Eigen::RowMajor>;
using tensor3 = Eigen::Tensor<float, 3, Eigen::RowMajor>;
using layer_t = attn::decomposable_attention;
using matrix = layer_t::matrix;
constexpr double eps = attn_ref::eps32_decomp;
constexpr float kInf = std::numeric_limits<float>::infinity();

double g_worst_w = 0.0, g_worst_out = 0.0, g_worst_lse = 0.0;

std::vector<double> to_double(const float* p, index n) { return std::vector<double>(p, p + n); }

tensor3 randt(index a, index b, index c, std::mt19937& g, float sd = 1.0f) {
  std::normal_distribution<float> n(0.0f, sd);
  tensor3 t(a, b, c);
  for (index i = 0; i < t.size(); ++i) t.data()[i] = n(g);
  return t;
}
tensor3 nan_tensor(index a, index b, index c) {
  tensor3 t(a, b, c);
  t.setConstant(std::numeric_limits<float>::quiet_NaN());
  return t;
}
tensor2 nan_tensor2(index a, index b) {
  tensor2 t(a, b);
  t.setConstant(std::numeric_limits<float>::quiet_NaN());
  return t;
}
bool same_bits(const tensor3& a, const tensor3& b) {
  return a.size() == b.size() &&
         (a.size() == 0 ||  // memcmp of a null data() is undefined
          std::memcmp(a.data(), b.data(), sizeof(float) * static_cast<std::size_t>(a.size())) == 0);
}
bool same_bits(const tensor2& a, const tensor2& b) {
  return a.size() == b.size() &&
         (a.size() == 0 ||  // memcmp of a null data() is undefined
          std::memcmp(a.data(), b.data(), sizeof(float) * static_cast<std::size_t>(a.size())) == 0);
}

// The feed-forward function of the tests: x Wᵀ + c, optionally ReLU.
struct ff {
  matrix W;  // [df, d]; empty = identity (no F at all)
  Eigen::VectorXf c;
  bool relu = false;
  layer_t::feed_forward fn() const {
    if (W.size() == 0) return {};
    const ff self = *this;
    return [self](const layer_t::rows& x) -> matrix {
      matrix y = x * self.W.transpose();
      if (self.c.size()) y.rowwise() += self.c.transpose();
      if (self.relu) y = y.cwiseMax(0.0f);
      return y;
    };
  }
  attn_ref::decomp_ff ref(index d) const {
    attn_ref::decomp_ff r;
    r.d = d;
    if (W.size() == 0) return r;
    r.df = W.rows();
    r.W = to_double(W.data(), W.size());
    r.c = to_double(c.data(), c.size());
    r.relu = relu;
    return r;
  }
};

ff make_ff(int kind, index d, index df, std::mt19937& g) {
  ff f;
  if (kind == 0) return f;
  std::normal_distribution<float> n(0.0f, 1.0f / std::sqrt(float(d)));
  f.W.resize(df, d);
  for (index i = 0; i < f.W.size(); ++i) f.W.data()[i] = n(g);
  if (kind >= 2) {
    f.c.resize(df);
    for (index i = 0; i < df; ++i) f.c[i] = 0.3f * n(g);
    f.relu = true;
  }
  return f;
}

struct masks {
  std::vector<index> a_len, b_len;
  tensor2b a_mask, b_mask;  // size 0 = none
};

// kind bits: 1 lengths on a, 2 lengths on b, 4 mask on a, 8 mask on b.
// Lengths include a 0 (a fully masked batch element) when B > 2.
masks make_masks(int kind, index B, index La, index Lb, std::mt19937& g) {
  masks m;
  std::bernoulli_distribution coin(0.75);
  for (index b = 0; b < B; ++b) {
    if (kind & 1) m.a_len.push_back(b == 2 ? 0 : std::max<index>(1, La - 2 * b - 1));
    if (kind & 2) m.b_len.push_back(b == 1 && B > 2 ? 0 : std::max<index>(1, Lb - 3 * b));
  }
  if (kind & 4) {
    m.a_mask.resize(B, La);
    for (index i = 0; i < m.a_mask.size(); ++i) m.a_mask.data()[i] = coin(g);
  }
  if (kind & 8) {
    m.b_mask.resize(B, Lb);
    for (index i = 0; i < m.b_mask.size(); ++i) m.b_mask.data()[i] = coin(g);
  }
  return m;
}

std::vector<char> to_chars(const tensor2b& m) {
  std::vector<char> r;
  for (index i = 0; i < m.size(); ++i) r.push_back(m.data()[i]);
  return r;
}

// Per-softmax tolerance data: E (max score error), n (visible entries), m
// (max score), tiles.
struct slice_tol {
  double E = 0, m = -INFINITY;
  index n = 0;
};

double rel_slack(index n) {
  const double tiles = std::ceil(double(n) / double(attn::detail::decomposable::tile));
  return (2.0 + tiles) * 3e-7 + 2.0 * std::sqrt(double(n)) * eps;
}

double weight_tol(const slice_tol& s, double e, double p_ref) {
  return (std::expm1(2.0 * s.E) + rel_slack(s.n) + eps * std::abs(e - s.m)) * p_ref + 1e-37;
}

// Checks one softmax direction: weights w (or null), output out [B, Lo, d]
// (or null) against the reference, values `val` [B, Lv, d]. rows = true:
// softmax over j for each i (β); false: over i for each j (α).
void check_direction(const std::string& label, const attn_ref::decomp_result& r, index B,
                     index La, index Lb, index d, const std::vector<double>& val, bool rows,
                     const tensor3* w, const tensor3* out, const tensor2* lse) {
  SCOPED_TRACE(label + (rows ? " rows" : " cols"));
  const index Lo = rows ? La : Lb, Lv = rows ? Lb : La;
  const std::vector<double>& P = rows ? r.pr : r.pc;
  const std::vector<double>& ref_out = rows ? r.beta : r.alpha;
  const std::vector<double>& ref_lse = rows ? r.row_lse : r.col_lse;
  for (index b = 0; b < B; ++b)
    for (index o = 0; o < Lo; ++o) {
      auto at = [&](index v) {
        const index i = rows ? o : v, j = rows ? v : o;
        return static_cast<std::size_t>((b * La + i) * Lb + j);
      };
      slice_tol s;
      for (index v = 0; v < Lv; ++v)
        if (r.e[at(v)] > -INFINITY) {
          s.E = std::max(s.E, r.err[at(v)]);
          s.m = std::max(s.m, r.e[at(v)]);
          ++s.n;
        }
      const bool empty = s.n == 0;
      std::vector<double> tolp(static_cast<std::size_t>(Lv), 0.0);
      for (index v = 0; v < Lv; ++v) {
        const double ref = P[at(v)];
        if (!empty && r.e[at(v)] > -INFINITY) tolp[static_cast<std::size_t>(v)] =
            weight_tol(s, r.e[at(v)], ref);
        if (!w) continue;
        const float got = rows ? (*w)(b, o, v) : (*w)(b, v, o);
        if (empty || r.e[at(v)] == -INFINITY) {
          ASSERT_EQ(got, 0.0f) << "masked weight b=" << b << " o=" << o << " v=" << v;
          continue;
        }
        const double tol = tolp[static_cast<std::size_t>(v)];
        g_worst_w = std::max(g_worst_w, std::abs(got - ref) / tol);
        ASSERT_LE(std::abs(got - ref), tol) << "weight b=" << b << " o=" << o << " v=" << v;
      }
      if (lse) {
        const float got = (*lse)(b, o);
        const double ref = ref_lse[static_cast<std::size_t>(b * Lo + o)];
        if (empty) {
          ASSERT_EQ(got, -kInf) << "empty LSE b=" << b << " o=" << o;
        } else {
          const double tol = s.E + rel_slack(s.n) + 2 * eps * std::abs(ref);
          g_worst_lse = std::max(g_worst_lse, std::abs(got - ref) / tol);
          ASSERT_LE(std::abs(got - ref), tol) << "LSE b=" << b << " o=" << o;
        }
      }
      if (!out) continue;
      for (index k = 0; k < d; ++k) {
        const float got = (*out)(b, o, k);
        if (empty) {
          ASSERT_EQ(got, 0.0f) << "empty output b=" << b << " o=" << o;
          continue;
        }
        double tol = 1e-30, acc = 0;
        for (index v = 0; v < Lv; ++v) {
          const double x = std::abs(val[static_cast<std::size_t>((b * Lv + v) * d + k)]);
          tol += tolp[static_cast<std::size_t>(v)] * x;
          acc += P[at(v)] * x;
        }
        tol += 2.0 * std::sqrt(double(s.n)) * eps * acc;
        const double ref = ref_out[static_cast<std::size_t>((b * Lo + o) * d + k)];
        g_worst_out = std::max(g_worst_out, std::abs(got - ref) / tol);
        ASSERT_LE(std::abs(got - ref), tol) << "output b=" << b << " o=" << o << " k=" << k;
      }
    }
}

struct shape {
  index B = 2, La = 5, Lb = 7, d = 4, df = 6;
};

attn_ref::decomp_problem ref_problem(const shape& s, const tensor3& a, const tensor3& b,
                                     const ff& f, const masks& m, float scale) {
  attn_ref::decomp_problem p;
  p.B = s.B;
  p.La = s.La;
  p.Lb = s.Lb;
  p.d = s.d;
  p.a = to_double(a.data(), a.size());
  p.b = to_double(b.data(), b.size());
  p.f = f.ref(s.d);
  p.a_len = m.a_len;
  p.b_len = m.b_len;
  p.a_mask = to_chars(m.a_mask);
  p.b_mask = to_chars(m.b_mask);
  p.scale = scale;
  return p;
}

struct outputs {
  tensor3 beta, alpha, rw, cw;
  tensor2 rl, cl;
};

outputs run_forward(const layer_t& layer, const shape& s, const tensor3& a, const tensor3& b,
                    const masks& m, float scale, int threads) {
  outputs o;
  o.beta = nan_tensor(s.B, s.La, s.d);
  o.alpha = nan_tensor(s.B, s.Lb, s.d);
  o.rw = nan_tensor(s.B, s.La, s.Lb);
  o.cw = nan_tensor(s.B, s.La, s.Lb);
  o.rl = nan_tensor2(s.B, s.La);
  o.cl = nan_tensor2(s.B, s.Lb);
  attn::decomposable_options opt;
  opt.a_lengths = m.a_len;
  opt.b_lengths = m.b_len;
  if (m.a_mask.size()) opt.a_mask = attn::view(m.a_mask);
  if (m.b_mask.size()) opt.b_mask = attn::view(m.b_mask);
  opt.scale = scale;
  opt.row_weights = attn::view(o.rw);
  opt.col_weights = attn::view(o.cw);
  opt.row_lse = attn::view(o.rl);
  opt.col_lse = attn::view(o.cl);
  opt.num_threads = threads;
  layer.forward(attn::view(a), attn::view(b), attn::view(o.beta), attn::view(o.alpha), opt);
  return o;
}

void check_forward(const std::string& label, const shape& s, const tensor3& a, const tensor3& b,
                   const ff& f, const masks& m, float scale, const outputs& o) {
  const attn_ref::decomp_problem p = ref_problem(s, a, b, f, m, scale);
  const attn_ref::decomp_result r = attn_ref::decomposable(p, false);
  check_direction(label, r, s.B, s.La, s.Lb, s.d, p.b, true, &o.rw, &o.beta, &o.rl);
  check_direction(label, r, s.B, s.La, s.Lb, s.d, p.a, false, &o.cw, &o.alpha, &o.cl);
}

void run_case(const std::string& label, shape s, int ff_kind, int mask_kind, unsigned seed,
              float scale = 1.0f, float sd = 1.0f) {
  std::mt19937 g(seed);
  const ff f = make_ff(ff_kind, s.d, s.df, g);
  const layer_t layer(f.fn());
  const tensor3 a = randt(s.B, s.La, s.d, g, sd), b = randt(s.B, s.Lb, s.d, g, sd);
  const masks m = make_masks(mask_kind, s.B, s.La, s.Lb, g);
  const outputs o = run_forward(layer, s, a, b, m, scale, 0);
  check_forward(label, s, a, b, f, m, scale, o);
}

// ---------------------------------------------------------------------------

TEST(DecomposableReference, ShapesFeedForwardsAndMasks) {
  unsigned seed = 100;
  for (int fk : {0, 1, 2})
    for (int mk : {0, 1, 2, 3, 4, 8, 12, 15}) {
      shape s;
      s.B = 3;
      run_case("ff=" + std::to_string(fk) + " masks=" + std::to_string(mk), s, fk, mk, seed++);
    }
}

TEST(DecomposableReference, EdgeShapesAroundTheTile) {
  unsigned seed = 200;
  const index T = attn::detail::decomposable::tile;
  for (auto L : std::vector<std::array<index, 2>>{
           {1, 1}, {1, 9}, {9, 1}, {3, 5}, {T - 1, 2}, {T, T}, {T + 1, 3}, {2, T + 1},
           {T + 5, 2 * T + 7}, {2 * T + 3, T - 7}})
    for (index d : {1, 3, 16, 37}) {
      shape s;
      s.B = 2;
      s.La = L[0];
      s.Lb = L[1];
      s.d = d;
      s.df = d + 3;
      const int fk = static_cast<int>(seed % 3);
      run_case("La=" + std::to_string(L[0]) + " Lb=" + std::to_string(L[1]) +
                   " d=" + std::to_string(d) + " ff=" + std::to_string(fk),
               s, fk, static_cast<int>(seed % 16), seed);
      ++seed;
    }
}

TEST(DecomposableReference, ScaleAndLargerInputs) {
  shape s;
  s.B = 2;
  s.La = 150;
  s.Lb = 230;
  s.d = 24;
  s.df = 40;
  run_case("large identity", s, 0, 3, 300, 0.25f);
  run_case("large relu ff", s, 2, 15, 301, 0.7f);
}

TEST(DecomposableMasks, FullyMaskedRowsAndColumnsAreZero) {
  std::mt19937 g(400);
  shape s;
  s.B = 3;
  s.La = 6;
  s.Lb = 8;
  const layer_t layer;
  const tensor3 a = randt(s.B, s.La, s.d, g), b = randt(s.B, s.Lb, s.d, g);
  masks m;
  m.a_len = {0, s.La, s.La};  // batch 0: no a at all -> β rows 0, α all 0
  m.b_len = {s.Lb, 0, s.Lb};  // batch 1: no b at all -> β all 0, α rows 0
  m.a_mask.resize(s.B, s.La);
  m.a_mask.setConstant(true);
  m.a_mask(2, 1) = m.a_mask(2, 4) = false;  // batch 2: two masked a rows
  m.b_mask.resize(s.B, s.Lb);
  m.b_mask.setConstant(true);
  m.b_mask(2, 0) = m.b_mask(2, 7) = false;
  const outputs o = run_forward(layer, s, a, b, m, 1.0f, 0);
  for (index i = 0; i < s.La; ++i)
    for (index k = 0; k < s.d; ++k) {
      EXPECT_EQ(o.beta(0, i, k), 0.0f);
      EXPECT_EQ(o.beta(1, i, k), 0.0f);
    }
  for (index j = 0; j < s.Lb; ++j)
    for (index k = 0; k < s.d; ++k) {
      EXPECT_EQ(o.alpha(0, j, k), 0.0f);
      EXPECT_EQ(o.alpha(1, j, k), 0.0f);
    }
  for (index k = 0; k < s.d; ++k) {
    EXPECT_EQ(o.beta(2, 1, k), 0.0f);
    EXPECT_EQ(o.alpha(2, 7, k), 0.0f);
  }
  EXPECT_EQ(o.rl(0, 0), -kInf);
  EXPECT_EQ(o.cl(1, 3), -kInf);
  EXPECT_EQ(o.rl(2, 1), -kInf);
  check_forward("fully masked", s, a, b, ff{}, m, 1.0f, o);

  // All-false masks broadcast with stride 0: everything 0, LSE -inf.
  bool none = false;
  attn::decomposable_options opt;
  opt.a_mask = attn::strided<const bool, 2>{&none, {s.B, s.La}, {0, 0}};
  tensor3 beta = nan_tensor(s.B, s.La, s.d), alpha = nan_tensor(s.B, s.Lb, s.d);
  tensor2 rl = nan_tensor2(s.B, s.La);
  opt.row_lse = attn::view(rl);
  layer.forward(attn::view(a), attn::view(b), attn::view(beta), attn::view(alpha), opt);
  for (index i = 0; i < beta.size(); ++i) ASSERT_EQ(beta.data()[i], 0.0f);
  for (index i = 0; i < alpha.size(); ++i) ASSERT_EQ(alpha.data()[i], 0.0f);
  for (index i = 0; i < rl.size(); ++i) ASSERT_EQ(rl.data()[i], -kInf);
}

TEST(DecomposableExtreme, ScoresOf1e4AndOverflowNeverNaN) {
  // Inputs of magnitude 100 with d = 1: scores up to ~1e4 and differences
  // of thousands between neighbours; the weights are near one-hot. The
  // score-error bound grows with |e| (2·eps·|e| ~ 1e-3), and so does the
  // tolerance; the comparison is the same.
  shape s;
  s.B = 2;
  s.La = 9;
  s.Lb = 11;
  s.d = 1;
  run_case("scores 1e4", s, 0, 0, 500, 1.0f, 100.0f);
  s.d = 3;
  run_case("scores 1e4 ff", s, 1, 15, 501, 1.0f, 100.0f);

  // Products that overflow fp32 to +-inf (d = 1, so a score is one product:
  // with d > 1, +inf and -inf terms of one dot product make NaN in any fp32
  // GEMM): never NaN; each row and column sums to 1 (+inf scores share the
  // weight) or, when all its scores are -inf, is all 0.
  std::mt19937 g(502);
  std::bernoulli_distribution coin(0.5);
  s.d = 1;
  for (float big : {1e4f, 1e20f, 3e38f}) {
    tensor3 a(s.B, s.La, s.d), b(s.B, s.Lb, s.d);
    for (index i = 0; i < a.size(); ++i) a.data()[i] = coin(g) ? big : -big;
    for (index i = 0; i < b.size(); ++i) b.data()[i] = coin(g) ? big : -big;
    const outputs o = run_forward(layer_t{}, s, a, b, masks{}, 1.0f, 0);
    for (const tensor3* t : {&o.beta, &o.alpha, &o.rw, &o.cw})
      for (index i = 0; i < t->size(); ++i) ASSERT_FALSE(std::isnan(t->data()[i])) << big;
    for (index bb = 0; bb < s.B; ++bb)
      for (index i = 0; i < s.La; ++i) {
        double sum = 0;
        for (index j = 0; j < s.Lb; ++j) sum += o.rw(bb, i, j);
        EXPECT_TRUE(std::abs(sum - 1.0) < 1e-5 || sum == 0.0) << big << " row sum " << sum;
      }
    for (index bb = 0; bb < s.B; ++bb)
      for (index j = 0; j < s.Lb; ++j) {
        double sum = 0;
        for (index i = 0; i < s.La; ++i) sum += o.cw(bb, i, j);
        EXPECT_TRUE(std::abs(sum - 1.0) < 1e-5 || sum == 0.0) << big << " col sum " << sum;
      }
  }
}

TEST(DecomposableThreads, BitIdenticalForAnyThreadCount) {
  // Large enough to run in parallel (attn::core::min_parallel_flops) and to
  // span several tiles on both sides, so the wavefront has many steps.
  for (int fk : {0, 2}) {
    std::mt19937 g(600 + static_cast<unsigned>(fk));
    shape s;
    s.B = 2;
    s.La = 230;
    s.Lb = 310;
    s.d = 24;
    s.df = 32;
    const ff f = make_ff(fk, s.d, s.df, g);
    const layer_t layer(f.fn());
    const tensor3 a = randt(s.B, s.La, s.d, g), b = randt(s.B, s.Lb, s.d, g);
    const masks m = make_masks(15, s.B, s.La, s.Lb, g);
    const outputs ref = run_forward(layer, s, a, b, m, 0.5f, 1);
    check_forward("threads", s, a, b, f, m, 0.5f, ref);
    for (int t : {2, 3, 0}) {
      const outputs o = run_forward(layer, s, a, b, m, 0.5f, t);
      EXPECT_TRUE(same_bits(o.beta, ref.beta)) << "threads " << t;
      EXPECT_TRUE(same_bits(o.alpha, ref.alpha)) << "threads " << t;
      EXPECT_TRUE(same_bits(o.rw, ref.rw)) << "threads " << t;
      EXPECT_TRUE(same_bits(o.cw, ref.cw)) << "threads " << t;
      EXPECT_TRUE(same_bits(o.rl, ref.rl)) << "threads " << t;
      EXPECT_TRUE(same_bits(o.cl, ref.cl)) << "threads " << t;
    }
    // Intra as well.
    attn::intra_attention_options io;
    io.distance_bias.resize(21);
    for (std::size_t k = 0; k < 21; ++k) io.distance_bias[k] = 0.1f * float(k) - 1.0f;
    io.lengths = m.a_len;
    io.num_threads = 1;
    const tensor3 one = layer.intra(a, io);
    for (int t : {2, 3, 0}) {
      io.num_threads = t;
      EXPECT_TRUE(same_bits(layer.intra(a, io), one)) << "intra threads " << t;
    }
  }
}

TEST(DecomposableOutputs, EachAloneGivesTheSameBits) {
  std::mt19937 g(700);
  shape s;
  s.La = 13;
  s.Lb = 101;
  const ff f = make_ff(2, s.d, s.df, g);
  const layer_t layer(f.fn());
  const tensor3 a = randt(s.B, s.La, s.d, g), b = randt(s.B, s.Lb, s.d, g);
  const masks m = make_masks(15, s.B, s.La, s.Lb, g);
  const outputs all = run_forward(layer, s, a, b, m, 1.0f, 0);
  attn::decomposable_options opt;
  opt.a_lengths = m.a_len;
  opt.b_lengths = m.b_len;
  opt.a_mask = attn::view(m.a_mask);
  opt.b_mask = attn::view(m.b_mask);
  tensor3 beta = nan_tensor(s.B, s.La, s.d), alpha = nan_tensor(s.B, s.Lb, s.d);
  layer.forward(attn::view(a), attn::view(b), attn::view(beta), {}, opt);
  EXPECT_TRUE(same_bits(beta, all.beta));
  layer.forward(attn::view(a), attn::view(b), {}, attn::view(alpha), opt);
  EXPECT_TRUE(same_bits(alpha, all.alpha));
  tensor2 rl = nan_tensor2(s.B, s.La);
  opt.row_lse = attn::view(rl);
  layer.forward(attn::view(a), attn::view(b), {}, {}, opt);
  EXPECT_TRUE(same_bits(rl, all.rl));
  // The tensor convenience.
  attn::decomposable_options plain;
  plain.a_lengths = m.a_len;
  plain.b_lengths = m.b_len;
  plain.a_mask = attn::view(m.a_mask);
  plain.b_mask = attn::view(m.b_mask);
  const attn::decomposable_result r = layer.forward(a, b, plain);
  EXPECT_TRUE(same_bits(r.beta, all.beta));
  EXPECT_TRUE(same_bits(r.alpha, all.alpha));
}

TEST(DecomposableLayouts, StridedViews) {
  std::mt19937 g(800);
  shape s;
  s.La = 10;
  s.Lb = 14;
  s.d = 5;
  const layer_t layer;
  const tensor3 aw = randt(s.B, s.La, s.d + 3, g), bw = randt(s.B, s.Lb, s.d + 2, g);
  const Eigen::array<index, 3> off{0, 0, 1};
  const tensor3 a = aw.slice(off, Eigen::array<index, 3>{s.B, s.La, s.d});
  const tensor3 b = bw.slice(off, Eigen::array<index, 3>{s.B, s.Lb, s.d});
  auto slice = [](const tensor3& t, index d) {
    attn::strided<const float, 3> v = attn::view(t);
    v.data += 1;
    v.dims[2] = d;
    return v;
  };
  const attn::decomposable_result dense = layer.forward(a, b);
  tensor3 bw_out(s.B, s.La, s.d + 4), aw_out(s.B, s.Lb, s.d + 4);
  bw_out.setZero();
  aw_out.setZero();
  attn::strided<float, 3> bo = attn::view(bw_out), ao = attn::view(aw_out);
  bo.data += 2;
  bo.dims[2] = s.d;
  ao.data += 3;
  ao.dims[2] = s.d;
  layer.forward(slice(aw, s.d), slice(bw, s.d), bo, ao);
  for (index b0 = 0; b0 < s.B; ++b0) {
    for (index i = 0; i < s.La; ++i)
      for (index k = 0; k < s.d; ++k) ASSERT_EQ(dense.beta(b0, i, k), bw_out(b0, i, k + 2));
    for (index j = 0; j < s.Lb; ++j)
      for (index k = 0; k < s.d; ++k) ASSERT_EQ(dense.alpha(b0, j, k), aw_out(b0, j, k + 3));
  }
}

TEST(DecomposableFeedForward, CalledOncePerBatchAndSideFromTheCallingThread) {
  std::mt19937 g(900);
  shape s;
  s.B = 3;
  s.La = 120;
  s.Lb = 200;
  s.d = 16;
  s.df = 16;
  const ff f = make_ff(2, s.d, s.df, g);
  int calls = 0;
  bool all_outside_parallel = true;
  const layer_t::feed_forward inner = f.fn();
  const layer_t layer([&](const layer_t::rows& x) {
    ++calls;
#if defined(_OPENMP)
    all_outside_parallel = all_outside_parallel && !omp_in_parallel();
#endif
    return inner(x);
  });
  const tensor3 a = randt(s.B, s.La, s.d, g), b = randt(s.B, s.Lb, s.d, g);
  attn::decomposable_options opt;
  opt.num_threads = 2;
  tensor3 beta(s.B, s.La, s.d), alpha(s.B, s.Lb, s.d);
  layer.forward(attn::view(a), attn::view(b), attn::view(beta), attn::view(alpha), opt);
  EXPECT_EQ(calls, 2 * s.B);
  calls = 0;
  layer.intra(a);
  EXPECT_EQ(calls, s.B);
  EXPECT_TRUE(all_outside_parallel);
  EXPECT_TRUE(layer.has_feed_forward());
  EXPECT_FALSE(layer_t{}.has_feed_forward());
}

// ---------------------------------------------------------------------------
// Intra-sentence attention

void run_intra(const std::string& label, shape s, int ff_kind, int mask_kind, unsigned seed,
               index D, bool symmetric, bool with_bias, bool neg_inf_entry = false) {
  std::mt19937 g(seed);
  s.Lb = s.La;
  const ff f = make_ff(ff_kind, s.d, s.df, g);
  const layer_t layer(f.fn());
  const tensor3 a = randt(s.B, s.La, s.d, g);
  masks m = make_masks(mask_kind & 5, s.B, s.La, s.La, g);
  attn::intra_attention_options opt;
  opt.lengths = m.a_len;
  if (m.a_mask.size()) opt.mask = attn::view(m.a_mask);
  opt.max_distance = D;
  opt.symmetric = symmetric;
  opt.scale = 0.8f;
  std::normal_distribution<float> n(0.0f, 1.0f);
  if (with_bias) {
    opt.distance_bias.resize(static_cast<std::size_t>(symmetric ? D + 1 : 2 * D + 1));
    for (float& x : opt.distance_bias) x = n(g);
    if (neg_inf_entry) opt.distance_bias[symmetric ? 0 : static_cast<std::size_t>(D)] = -kInf;
  }
  tensor3 out = nan_tensor(s.B, s.La, s.d), w = nan_tensor(s.B, s.La, s.La);
  tensor2 lse = nan_tensor2(s.B, s.La);
  opt.weights = attn::view(w);
  opt.lse = attn::view(lse);
  layer.intra(attn::view(a), attn::view(out), opt);

  attn_ref::decomp_problem p = ref_problem(s, a, a, f, m, opt.scale);
  p.bias.assign(opt.distance_bias.begin(), opt.distance_bias.end());
  p.max_distance = D;
  p.symmetric = symmetric;
  const attn_ref::decomp_result r = attn_ref::decomposable(p, true);
  check_direction(label, r, s.B, s.La, s.La, s.d, p.a, true, &w, &out, &lse);
  if (neg_inf_entry) {  // the -inf bucket (distance 0): no row attends to itself
    for (index b = 0; b < s.B; ++b)
      for (index i = 0; i < s.La; ++i) ASSERT_EQ(w(b, i, i), 0.0f);
  }
  // Same bits through the tensor convenience.
  attn::intra_attention_options o2 = opt;
  o2.weights = {};
  o2.lse = {};
  EXPECT_TRUE(same_bits(layer.intra(a, o2), out)) << label;
}

TEST(DecomposableIntra, DistanceBiasSignedAndSymmetric) {
  unsigned seed = 1000;
  for (index L : {1, 4, 23, 97, 130})
    for (index D : {0, 2, 10})
      for (bool sym : {false, true}) {
        shape s;
        s.La = L;
        s.d = 7;
        s.df = 9;
        const int fk = static_cast<int>(seed % 3), mk = static_cast<int>(seed % 8);
        run_intra("L=" + std::to_string(L) + " D=" + std::to_string(D) + " sym=" +
                      std::to_string(sym) + " ff=" + std::to_string(fk) +
                      " masks=" + std::to_string(mk),
                  s, fk, mk, seed, D, sym, true);
        ++seed;
      }
  shape s;
  s.La = 17;
  run_intra("no bias", s, 1, 5, 1100, 10, false, false);
  run_intra("-inf bias at distance 0", s, 0, 0, 1101, 3, false, true, true);
  run_intra("-inf bias at distance 0, symmetric", s, 2, 1, 1102, 3, true, true, true);
  s.La = 1;
  run_intra("-inf bias, L = 1: nothing to attend", s, 0, 0, 1103, 3, false, true, true);
}

TEST(DecomposableIntra, MatchesForwardWithoutBias) {
  // With no bias, intra(a) is forward(a, a)'s β: the same scores, the same
  // row statistics in the same tile order, the same bits.
  std::mt19937 g(1200);
  shape s;
  s.La = s.Lb = 150;
  s.d = 12;
  const ff f = make_ff(2, s.d, s.df, g);
  const layer_t layer(f.fn());
  const tensor3 a = randt(s.B, s.La, s.d, g);
  tensor3 beta(s.B, s.La, s.d);
  layer.forward(attn::view(a), attn::view(a), attn::view(beta), {});
  EXPECT_TRUE(same_bits(layer.intra(a), beta));
}

// ---------------------------------------------------------------------------

TEST(DecomposableMemory, NoLaByLbMatrixIsAllocated) {
  // La = Lb = 2048: the score matrix alone would be 16 MiB. The call may
  // allocate its packed inputs (O((La + Lb)·d)) and two tiles per thread.
  std::mt19937 g(1300);
  const index B = 1, L = 2048, d = 8;
  const tensor3 a = randt(B, L, d, g, 0.3f), b = randt(B, L, d, g, 0.3f);
  tensor3 beta(B, L, d), alpha(B, L, d);
  const layer_t layer;
  attn::decomposable_options opt;
  opt.num_threads = 2;
  const long long before = live_bytes.load();
  peak_bytes = before;
  layer.forward(attn::view(a), attn::view(b), attn::view(beta), attn::view(alpha), opt);
  const long long peak = peak_bytes.load() - before;
  const long long matrix_bytes = L * L * static_cast<long long>(sizeof(float));
  std::printf("[ measured ] peak working memory %.2f MiB (the La x Lb matrix: %.0f MiB)\n",
              double(peak) / (1 << 20), double(matrix_bytes) / (1 << 20));
  EXPECT_LT(peak, matrix_bytes / 4);
  for (index i = 0; i < beta.size(); ++i) ASSERT_TRUE(std::isfinite(beta.data()[i]));
}

// ---------------------------------------------------------------------------

TEST(DecomposableZeroSize, EmptyBatchAndSequences) {
  int calls = 0;
  const layer_t layer([&](const layer_t::rows& x) -> matrix {
    ++calls;
    return x;
  });
  std::mt19937 g(1400);
  // B = 0: nothing.
  layer.forward(tensor3(0, 3, 4), tensor3(0, 5, 4));
  // La = 0: alpha is all 0; Lb = 0: beta is all 0. F is not called.
  const attn::decomposable_result r1 = layer.forward(tensor3(2, 0, 4), randt(2, 5, 4, g));
  for (index i = 0; i < r1.alpha.size(); ++i) EXPECT_EQ(r1.alpha.data()[i], 0.0f);
  const attn::decomposable_result r2 = layer.forward(randt(2, 3, 4, g), tensor3(2, 0, 4));
  for (index i = 0; i < r2.beta.size(); ++i) EXPECT_EQ(r2.beta.data()[i], 0.0f);
  EXPECT_EQ(calls, 0);
  const tensor3 e = layer.intra(tensor3(2, 0, 3));
  EXPECT_EQ(e.size(), 0);
}

// ---------------------------------------------------------------------------
// Errors

using attn_test::expect_error;

TEST(DecomposableErrors, Forward) {
  std::mt19937 g(1500);
  shape s;
  const layer_t layer;
  const tensor3 a = randt(s.B, s.La, s.d, g), b = randt(s.B, s.Lb, s.d, g);
  tensor3 beta(s.B, s.La, s.d), alpha(s.B, s.Lb, s.d), w(s.B, s.La, s.Lb);
  tensor2 rl(s.B, s.La), cl(s.B, s.Lb);
  struct call {
    attn::strided<const float, 3> a, b;
    attn::strided<float, 3> beta, alpha;
    attn::decomposable_options opt;
    const layer_t* layer = nullptr;
    void operator()() const { layer->forward(a, b, beta, alpha, opt); }
  };
  call base;
  base.a = attn::view(a);
  base.b = attn::view(b);
  base.beta = attn::view(beta);
  base.alpha = attn::view(alpha);
  base.layer = &layer;
  base();
  auto with = [&](std::function<void(call&)> edit) {
    call c = base;
    edit(c);
    return c;
  };
  const char* fn = "decomposable_attention::forward";
  expect_error("a null", with([](call& c) { c.a.data = nullptr; }), {fn, ": a:", "null"});
  expect_error("a no features", with([](call& c) { c.a.dims[2] = 0; }), {": a:", "d >= 1"});
  expect_error("a stride", with([](call& c) { c.a.strides[2] = 2; }), {"a.strides[2]"});
  expect_error("b batch", with([](call& c) { c.b.dims[0] = 1; }), {": b:", "batch = 2"});
  expect_error("b features", with([](call& c) { c.b.dims[2] = 3; }), {": b:", "d = 4"});
  expect_error("b null", with([](call& c) { c.b.data = nullptr; }), {": b:", "null"});
  expect_error("b stride", with([](call& c) { c.b.strides[2] = 3; }), {"b.strides[2]"});
  expect_error("beta dims", with([](call& c) { c.beta.dims[1] += 1; }), {": beta:", "La"});
  expect_error("beta null", with([](call& c) { c.beta.data = nullptr; }), {": beta:", "null"});
  expect_error("beta stride", with([](call& c) { c.beta.strides[2] = 2; }),
               {"beta.strides[2]"});
  expect_error("beta overlap", with([](call& c) { c.beta.strides[1] = 1; }), {"beta.strides"});
  expect_error("alpha dims", with([](call& c) { c.alpha.dims[1] -= 1; }), {": alpha:", "Lb"});
  expect_error("alpha overlap", with([](call& c) { c.alpha.strides[0] = 0; }),
               {"alpha.strides"});
  expect_error("alpha stride", with([](call& c) { c.alpha.strides[2] = 2; }),
               {"alpha.strides[2]"});
  expect_error("a_lengths size", with([](call& c) { c.opt.a_lengths = {1}; }),
               {"a_lengths.size()"});
  expect_error("a_lengths value", with([&](call& c) { c.opt.a_lengths = {1, s.La + 1}; }),
               {"a_lengths[1]"});
  expect_error("b_lengths value", with([](call& c) { c.opt.b_lengths = {-1, 1}; }),
               {"b_lengths[0]"});
  tensor2b am(s.B, s.La + 1), bm(s.B + 1, s.Lb);
  expect_error("a_mask dims", with([&](call& c) { c.opt.a_mask = attn::view(am); }),
               {": a_mask:"});
  expect_error("a_mask stride", with([&](call& c) {
                 c.opt.a_mask = attn::strided<const bool, 2>{am.data(), {s.B, s.La}, {-1, 1}};
               }),
               {"a_mask.strides"});
  expect_error("b_mask dims", with([&](call& c) { c.opt.b_mask = attn::view(bm); }),
               {": b_mask:"});
  expect_error("b_mask stride", with([&](call& c) {
                 c.opt.b_mask = attn::strided<const bool, 2>{bm.data(), {s.B, s.Lb}, {1, -1}};
               }),
               {"b_mask.strides"});
  expect_error("scale inf", with([](call& c) { c.opt.scale = kInf; }), {": scale:"});
  expect_error("scale nan", with([](call& c) {
                 c.opt.scale = std::numeric_limits<float>::quiet_NaN();
               }),
               {": scale:"});
  expect_error("scale huge", with([](call& c) { c.opt.scale = 3e38f; }), {": scale:"});
  tensor3 bad_w(s.B, s.Lb, s.La);
  expect_error("row_weights dims", with([&](call& c) { c.opt.row_weights = attn::view(bad_w); }),
               {": row_weights:"});
  expect_error("col_weights dims", with([&](call& c) { c.opt.col_weights = attn::view(bad_w); }),
               {": col_weights:"});
  expect_error("row_weights overlap", with([&](call& c) {
                 c.opt.row_weights = attn::view(w);
                 c.opt.row_weights.strides[2] = 0;
               }),
               {"row_weights.strides"});
  expect_error("col_weights overlap", with([&](call& c) {
                 c.opt.col_weights = attn::view(w);
                 c.opt.col_weights.strides[1] = 1;
               }),
               {"col_weights.strides"});
  expect_error("row_lse dims", with([&](call& c) { c.opt.row_lse = attn::view(cl); }),
               {": row_lse:"});
  expect_error("col_lse dims", with([&](call& c) { c.opt.col_lse = attn::view(rl); }),
               {": col_lse:"});
  expect_error("row_lse overlap", with([&](call& c) {
                 c.opt.row_lse = attn::view(rl);
                 c.opt.row_lse.strides[1] = 0;
               }),
               {"row_lse.strides"});
  expect_error("col_lse overlap", with([&](call& c) {
                 c.opt.col_lse = attn::view(cl);
                 c.opt.col_lse.strides[0] = 1;
               }),
               {"col_lse.strides"});
  expect_error("threads", with([](call& c) { c.opt.num_threads = -1; }), {"num_threads"});

  // F returning the wrong shape, for a and for b.
  const layer_t rows_off([](const layer_t::rows& x) -> matrix { return matrix::Zero(x.rows() + 1, 3); });
  expect_error("F rows", [&] { rows_off.forward(a, b); }, {fn, "feed_forward(a)", "L = 5"});
  const layer_t cols_differ([](const layer_t::rows& x) -> matrix {
    return matrix::Zero(x.rows(), x.rows() == 5 ? 3 : 4);
  });
  expect_error("F cols", [&] { cols_differ.forward(a, b); }, {"feed_forward(b)", "d_f = 3"});
  const layer_t no_cols([](const layer_t::rows& x) -> matrix { return matrix(x.rows(), 0); });
  expect_error("F no cols", [&] { no_cols.forward(a, b); }, {"feed_forward(a)", "d_f >= 1"});
}

TEST(DecomposableErrors, Intra) {
  std::mt19937 g(1600);
  shape s;
  const layer_t layer;
  const tensor3 a = randt(s.B, s.La, s.d, g);
  tensor3 out(s.B, s.La, s.d), w(s.B, s.La, s.La);
  tensor2 lse(s.B, s.La);
  struct call {
    attn::strided<const float, 3> a;
    attn::strided<float, 3> out;
    attn::intra_attention_options opt;
    const layer_t* layer = nullptr;
    void operator()() const { layer->intra(a, out, opt); }
  };
  call base;
  base.a = attn::view(a);
  base.out = attn::view(out);
  base.layer = &layer;
  base.opt.distance_bias.assign(21, 0.5f);
  base();
  auto with = [&](std::function<void(call&)> edit) {
    call c = base;
    edit(c);
    return c;
  };
  const char* fn = "decomposable_attention::intra";
  expect_error("a null", with([](call& c) { c.a.data = nullptr; }), {fn, ": a:", "null"});
  expect_error("a stride", with([](call& c) { c.a.strides[2] = 2; }), {"a.strides[2]"});
  expect_error("out absent", with([](call& c) { c.out = {}; }), {": out:", "absent"});
  expect_error("out dims", with([](call& c) { c.out.dims[2] = 1; }), {": out:"});
  expect_error("out stride", with([](call& c) { c.out.strides[2] = 2; }), {"out.strides[2]"});
  expect_error("out overlap", with([](call& c) { c.out.strides[1] = 0; }), {"out.strides"});
  expect_error("lengths", with([&](call& c) { c.opt.lengths = {1, s.La + 1}; }), {"lengths[1]"});
  expect_error("lengths size", with([&](call& c) { c.opt.lengths = {1, 1, 1}; }),
               {"lengths.size()"});
  tensor2b m(s.B, s.La + 1);
  expect_error("mask", with([&](call& c) { c.opt.mask = attn::view(m); }), {": mask:"});
  expect_error("max_distance", with([](call& c) { c.opt.max_distance = -1; }),
               {": max_distance:"});
  expect_error("bias size", with([](call& c) { c.opt.distance_bias.resize(11); }),
               {"distance_bias.size()", "21"});
  expect_error("bias size symmetric", with([](call& c) { c.opt.symmetric = true; }),
               {"distance_bias.size()", "11"});
  expect_error("bias nan", with([](call& c) {
                 c.opt.distance_bias[4] = std::numeric_limits<float>::quiet_NaN();
               }),
               {"distance_bias[4]"});
  expect_error("bias +inf", with([](call& c) { c.opt.distance_bias[0] = kInf; }),
               {"distance_bias[0]"});
  expect_error("scale", with([](call& c) { c.opt.scale = -kInf; }), {": scale:"});
  tensor3 bad_w(s.B, s.La, s.La + 1);
  expect_error("weights", with([&](call& c) { c.opt.weights = attn::view(bad_w); }),
               {": weights:"});
  expect_error("weights overlap", with([&](call& c) {
                 c.opt.weights = attn::view(w);
                 c.opt.weights.strides[0] = 1;
               }),
               {"weights.strides"});
  tensor2 bad_lse(s.B, s.La + 2);
  expect_error("lse", with([&](call& c) { c.opt.lse = attn::view(bad_lse); }), {": lse:"});
  expect_error("lse overlap", with([&](call& c) {
                 c.opt.lse = attn::view(lse);
                 c.opt.lse.strides[1] = 0;
               }),
               {"lse.strides"});
  expect_error("threads", with([](call& c) { c.opt.num_threads = -2; }), {"num_threads"});
  const layer_t bad_f([](const layer_t::rows& x) -> matrix { return matrix::Zero(1, x.cols()); });
  expect_error("F rows", [&] { bad_f.intra(a); }, {fn, "feed_forward(a)"});
}

TEST(DecomposableReport, WorstErrorRatios) {
  std::printf("[ measured ] worst error / tolerance: weights %.3g, outputs %.3g, LSE %.3g\n",
              g_worst_w, g_worst_out, g_worst_lse);
  EXPECT_LE(g_worst_w, 1.0);
  EXPECT_LE(g_worst_out, 1.0);
  EXPECT_LE(g_worst_lse, 1.0);
}

}  // namespace test_decomposable
