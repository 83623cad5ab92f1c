// tests/test_modifier_golden.cpp: attn's score modifiers (sdpa_options
// softcap, alibi_slopes, sinks; flex_attention with attn::document_mask)
// against golden files that tools/make_golden.py wrote with torch 2.15.0
// (tests/data/mod_*.golden, format in tests/golden.hpp). The reference of
// each file is in its meta "reference":
//   flex_attention_eager  torch.nn.attention.flex_attention on CPU with a
//       score_mod (softcap, ALiBi) and a mask_mod from create_block_mask
//       (causal, window, documents); every softcap, ALiBi and document case
//       (its explicit_fp64 fallback, for a torch whose FlexAttention fails,
//       was not needed);
//   gpt_oss_formula  GPT-OSS's reference attention with sinks (the sink
//       appended as one more logit column, softmax, column dropped), in
//       float32 torch; the sink cases (FlexAttention has no sinks).
// Both give the LSE as well as the output; both are compared.
//
// The arrays are in torch's layout q [B, Hq, L, E], out [B, Hq, L, Ev], lse
// [B, Hq, L]; attn::bhsd views q, k, v and out as attn's [B, L, H, E], and
// attn's LSE layout [B, Hq, L] is torch's.
//
// Tolerances (the same as tests/test_sdpa_golden.cpp and tests/sdpa_check.hpp,
// not loosened for the modifiers):
//   out: |ours - torch| <= 1e-5 · max|V| + 1e-7 per element.
//   lse: |ours - torch| <= 1e-5 · (1 + |lse_torch|).
//   Both sides are fp32 on the same fp32 inputs, so the difference is at most
//   the sum of their errors against the exact answer. Torch's own error,
//   measured by make_golden.py against fp64 on the same inputs, is <= 3.1e-7
//   on out (<= 1.1e-7 · max|V|) and <= 5.5e-7 on the LSE over these files.
//   Ours is the budget of tests/sdpa_check.hpp (<= ~5e-6 · max|V| on out,
//   a few 1e-7 (1 + |lse|) on the LSE), to which the modifiers add less than
//   its score term (tests/test_score_modifiers.cpp: softcap's tanh <= 4.5e-7
//   relative, ALiBi's fp32 bias slope·d two roundings on keys whose weight
//   e^(-slope·d) shrinks as the bias grows, a sink one more exp per row).
//   The sum with a 2x margin is 1e-5; a semantic difference (ALiBi distance
//   from the wrong diagonal, softcap after ALiBi instead of before, a sink
//   left out, a key of another document seen) moves the output by
//   >= 1e-3 · max|V|, which the *Matters tests below check on the same data.
//   The 1e-7 absolute term only matters if V were 0.
// Measured (x86-64; default build and -DATTN_NATIVE=ON on AVX-512), printed
// per case as "[ golden   ]": the worst output error is 3.6e-7 = 0.011 of
// the tolerance, the worst LSE error 4.8e-7 = 0.016 of it (one or two ulps,
// the size of torch's own error); the *Matters tests miss by 0.8 to 2.1,
// 26000x to 82000x the tolerance.
//
// Rows that see no key (mod_sinks_window_masked, mod_document_cross): ours
// must be exactly 0 with LSE exactly the sink (-inf without sinks), the
// docs/design.md convention; torch 2.15 gives the same there (FlexAttention's
// safe softmax; the GPT-OSS formula's softmax over [-inf..., sink]), which is
// asserted too.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <attn/alibi.hpp>
#include <attn/flex.hpp>
#include <attn/modifiers.hpp>
#include <attn/sdpa.hpp>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "golden.hpp"

namespace test_modifier_golden {

using attn::index;
using tensor3 = Eigen::Tensor<float, 3, Eigen::RowMajor>;
using tensor4 = Eigen::Tensor<float, 4, Eigen::RowMajor>;
template <int R>
using cmap = Eigen::TensorMap<const Eigen::Tensor<float, R, Eigen::RowMajor>>;

constexpr double kRel = 1e-5;     // out: the tolerance explained at the top of the file
constexpr double kAbs = 1e-7;
constexpr double kLseRel = 1e-5;  // lse: 1e-5 · (1 + |lse|)
constexpr float kInf = std::numeric_limits<float>::infinity();

cmap<4> map4(const golden::array& a) {
  if (a.dims.size() != 4)
    throw std::runtime_error("golden: expected a rank-4 array, got " + a.dims_string());
  return cmap<4>(a.values.data(), a.dims[0], a.dims[1], a.dims[2], a.dims[3]);
}

double max_abs(const std::vector<float>& x) {
  double m = 0;
  for (float e : x) m = std::max(m, static_cast<double>(std::fabs(e)));
  return m;
}

std::vector<index> ids(const golden::array& a) {
  std::vector<index> r;
  for (float x : a.values) r.push_back(static_cast<index>(x));
  return r;
}

attn::alignment parse_alignment(const std::string& s) {
  if (s == "top_left") return attn::alignment::top_left;
  if (s == "bottom_right") return attn::alignment::bottom_right;
  throw std::runtime_error("golden: unknown alignment '" + s + "'");
}

attn::causal parse_causal(const std::string& s) {
  if (s == "none") return attn::causal::none;
  if (s == "top_left") return attn::causal::top_left;
  if (s == "bottom_right") return attn::causal::bottom_right;
  throw std::runtime_error("golden: unknown causal '" + s + "'");
}

// One golden case, its options as attn takes them, and attn's outputs.
struct mod_run {
  golden::file f;                    ///< the case as read
  index B = 0;                       ///< batch
  index Hq = 0;                      ///< query heads
  index Hkv = 0;                     ///< key/value heads
  index L = 0;                       ///< queries
  index S = 0;                       ///< keys
  index E = 0;                       ///< q/k feature size
  index Ev = 0;                      ///< v feature size
  std::unique_ptr<bool[]> bool_mask; ///< the u8 mask [B, 1, L, S] as C++ bool (owned here)
  std::vector<index> q_ids;          ///< query document ids; empty = no document mask
  std::vector<index> k_ids;          ///< key document ids
  attn::sdpa_options opt;            ///< the file's options as attn takes them (no lse)
  tensor4 out;                       ///< attn's output in torch layout [B, Hq, L, Ev]
  tensor3 lse;                       ///< attn's LSE [B, Hq, L]

  // Does query (b, h, i) see key j under the file's masks? (softcap, ALiBi
  // and sinks hide nothing.)
  bool visible(index b, index h, index i, index j) const {
    const index br = S - L;
    if (opt.causal == attn::causal::top_left && j > i) return false;
    if (opt.causal == attn::causal::bottom_right && j > i + br) return false;
    if (opt.window) {
      const index d = i + (opt.window->align == attn::alignment::top_left ? 0 : br);
      if (j < d - opt.window->left || j > d + opt.window->right) return false;
    }
    if (!opt.bool_mask.empty() && !*opt.bool_mask.at(b, h, i, j)) return false;
    if (!q_ids.empty() &&
        q_ids[static_cast<std::size_t>(i)] != k_ids[static_cast<std::size_t>(j)])
      return false;
    return true;
  }
};

// Reads the case into r.opt (and the document ids), without running it.
void load(mod_run& r, const std::string& name) {
  r.f = golden::load(name);
  const golden::file& f = r.f;
  if (f.meta_at("op") != "sdpa_mod")
    throw std::runtime_error("golden: " + f.path + " is not an sdpa_mod case");
  const golden::array &q = f.at("q"), &k = f.at("k"), &v = f.at("v");
  r.B = q.dims[0], r.Hq = q.dims[1], r.L = q.dims[2], r.E = q.dims[3];
  r.Hkv = k.dims[1], r.S = k.dims[2], r.Ev = v.dims[3];

  const std::string& scale = f.meta_at("scale");
  if (scale != "default") r.opt.scale = std::stof(scale);
  r.opt.causal = parse_causal(f.meta_at("causal"));
  const std::string& window = f.meta_at("window");
  if (window != "none") {
    std::istringstream ws(window);
    index left = -1, right = -1;
    std::string align;
    ws >> left >> right >> align;
    if (!ws || left < 0 || right < 0)
      throw std::runtime_error("golden: malformed window '" + window + "'");
    r.opt.window = attn::sliding_window{left, right, parse_alignment(align)};
  }
  r.opt.softcap = std::stof(f.meta_at("softcap"));
  if (f.has("alibi_slopes")) r.opt.alibi_slopes = f.at("alibi_slopes").values;
  if (f.has("sinks")) r.opt.sinks = f.at("sinks").values;
  if (f.has("attn_mask")) {  // bool [B, 1, L, S], true = may attend (as in attn)
    const golden::array& m = f.at("attn_mask");
    if (m.dims != std::vector<int64_t>{r.B, 1, r.L, r.S})
      throw std::runtime_error("golden: attn_mask must be [B, 1, L, S], got " + m.dims_string());
    r.bool_mask.reset(new bool[m.values.size()]);
    for (std::size_t i = 0; i < m.values.size(); ++i) r.bool_mask[i] = m.values[i] != 0.0f;
    Eigen::TensorMap<const Eigen::Tensor<bool, 4, Eigen::RowMajor>> mm(r.bool_mask.get(), r.B, 1,
                                                                       r.L, r.S);
    r.opt.bool_mask = attn::broadcast_mask(mm, r.B, r.Hq, r.L, r.S);
  }
  if (f.has("query_doc_ids")) {
    r.q_ids = ids(f.at("query_doc_ids"));
    r.k_ids = ids(f.at("key_doc_ids"));
  }
}

// Runs attn on the loaded case with r.opt: scaled_dot_product_attention, or
// flex_attention with attn::document_mask when the case has document ids.
void run(mod_run& r) {
  const cmap<4> qm = map4(r.f.at("q")), km = map4(r.f.at("k")), vm = map4(r.f.at("v"));
  r.out = tensor4(r.B, r.Hq, r.L, r.Ev);
  r.out.setConstant(std::numeric_limits<float>::quiet_NaN());  // unwritten shows up
  r.lse = tensor3(r.B, r.Hq, r.L);
  r.lse.setConstant(std::numeric_limits<float>::quiet_NaN());
  attn::sdpa_options opt = r.opt;
  opt.lse = attn::view(r.lse);
  if (r.q_ids.empty())
    attn::scaled_dot_product_attention(attn::bhsd(qm), attn::bhsd(km), attn::bhsd(vm),
                                       attn::bhsd(r.out), opt);
  else
    attn::flex_attention(attn::bhsd(qm), attn::bhsd(km), attn::bhsd(vm), attn::bhsd(r.out),
                         attn::mask_only(attn::document_mask(r.q_ids, r.k_ids)), opt);
}

// max |ours - torch| over the output.
double out_distance(const mod_run& r) {
  const golden::array& want = r.f.at("out");
  double worst = 0;
  for (std::size_t i = 0; i < want.values.size(); ++i)
    worst = std::max(worst, std::fabs(static_cast<double>(r.out.data()[i]) - want.values[i]));
  return worst;
}

double out_tol(const mod_run& r) { return kRel * max_abs(r.f.at("v").values) + kAbs; }

// Rows (b, h, l) in which no key is visible, per case.
int expected_empty_rows(const std::string& name) {
  if (name == "mod_sinks_window_masked") return 4;  // (b=1, l=4) and (b=0, l=8), both heads
  if (name == "mod_document_cross") return 10;      // query document 3 (l = 7..11), both heads
  return 0;
}

const std::vector<std::string> kCases = {
    "mod_softcap",         "mod_softcap_long",         "mod_softcap_gqa",
    "mod_softcap_gqa_long", "mod_alibi_causal_br",     "mod_alibi_causal_br_long",
    "mod_alibi_top_left",  "mod_alibi_bidirectional",  "mod_softcap_alibi",
    "mod_sinks",           "mod_sinks_window",         "mod_sinks_window_masked",
    "mod_document",        "mod_document_short",       "mod_document_causal",
    "mod_document_cross",
};

class ModifierGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(ModifierGolden, MatchesTorch) {
  const std::string name = GetParam();
  mod_run r;
  load(r, name);
  const std::string& reference = r.f.meta_at("reference");
  // make_golden.py falls back to explicit fp64 math only where FlexAttention
  // fails on the generating machine (torch 2.15: none of these cases).
  if (r.opt.sinks.empty())
    EXPECT_TRUE(reference == "flex_attention_eager" || reference == "explicit_fp64")
        << name << ": reference " << reference;
  else
    EXPECT_EQ(reference, "gpt_oss_formula") << name;
  // The file's slopes are the ALiBi paper's (computed in Python); attn's
  // standard_alibi_slopes must give the same floats.
  if (r.f.meta_at("alibi") == "standard") {
    EXPECT_EQ(r.opt.alibi_slopes, attn::standard_alibi_slopes(r.Hq)) << name;
  }
  run(r);

  const golden::array &want = r.f.at("out"), &want_lse = r.f.at("lse");
  ASSERT_EQ(want.dims, (std::vector<int64_t>{r.B, r.Hq, r.L, r.Ev}));
  ASSERT_EQ(want_lse.dims, (std::vector<int64_t>{r.B, r.Hq, r.L}));
  const double tol = out_tol(r);
  double worst = 0, worst_lse = 0, worst_lse_ratio = 0;
  int empty = 0;
  for (index b = 0; b < r.B; ++b)
    for (index h = 0; h < r.Hq; ++h)
      for (index i = 0; i < r.L; ++i) {
        bool any = false;
        for (index j = 0; j < r.S && !any; ++j) any = r.visible(b, h, i, j);
        const std::size_t row = static_cast<std::size_t>((b * r.Hq + h) * r.L + i);
        const float* theirs = &want.values[row * static_cast<std::size_t>(r.Ev)];
        const float* ours = &r.out(b, h, i, 0);
        const float their_lse = want_lse.values[row], our_lse = r.lse(b, h, i);
        const std::string where = name + " b=" + std::to_string(b) + " h=" + std::to_string(h) +
                                  " l=" + std::to_string(i);
        if (!any) {
          // No key: output exactly 0 and LSE exactly the sink (-inf without
          // one), in attn and, for these references, in torch.
          ++empty;
          const float sink = r.opt.sinks.empty() ? -kInf : r.opt.sinks[static_cast<std::size_t>(h)];
          EXPECT_EQ(our_lse, sink) << where;
          EXPECT_EQ(their_lse, sink) << where << " (torch)";
          for (index e = 0; e < r.Ev; ++e) {
            ASSERT_EQ(ours[e], 0.0f) << where << " e=" << e;
            EXPECT_EQ(theirs[e], 0.0f) << where << " e=" << e << " (torch)";
          }
          continue;
        }
        for (index e = 0; e < r.Ev; ++e) {
          ASSERT_TRUE(std::isfinite(theirs[e])) << where << ": torch not finite";
          const double d = std::fabs(static_cast<double>(ours[e]) - theirs[e]);
          worst = std::max(worst, d);
          ASSERT_LE(d, tol) << where << " e=" << e << ": ours " << ours[e] << " torch "
                            << theirs[e];
        }
        ASSERT_TRUE(std::isfinite(their_lse)) << where << ": torch lse not finite";
        const double d = std::fabs(static_cast<double>(our_lse) - their_lse);
        const double lse_tol = kLseRel * (1.0 + std::fabs(static_cast<double>(their_lse)));
        worst_lse = std::max(worst_lse, d);
        worst_lse_ratio = std::max(worst_lse_ratio, d / lse_tol);
        ASSERT_LE(d, lse_tol) << where << ": lse ours " << our_lse << " torch " << their_lse;
      }
  EXPECT_EQ(empty, expected_empty_rows(name)) << name;
  std::printf(
      "[ golden   ] %-26s out: max|ours-torch| = %.3g = %.3f of tol %.3g; lse: max %.3g = %.3f "
      "of tol%s\n",
      name.c_str(), worst, worst / tol, tol, worst_lse, worst_lse_ratio,
      empty ? (", rows without keys: " + std::to_string(empty)).c_str() : "");
}

INSTANTIATE_TEST_SUITE_P(Torch, ModifierGolden, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<std::string>& p) { return p.param; });

// ---------------------------------------------------------------------------
// The golden data tells the semantics apart: each modifier left out, or
// applied with another convention, misses torch by far more than the
// tolerance.

constexpr double kMissFactor = 100;  // "by far": 100 x the tolerance, >= 1e-3 · max|V|

// Expects r's output to miss torch's by more than kMissFactor tolerances.
void expect_miss(const mod_run& r, const std::string& what) {
  const double d = out_distance(r), tol = out_tol(r);
  EXPECT_GT(d, kMissFactor * tol) << what;
  std::printf("[ golden   ] %-52s misses by %.3g = %.0f x tol\n", what.c_str(), d, d / tol);
}

TEST(ModifierGoldenSanity, SoftcapMatters) {
  mod_run r;
  load(r, "mod_softcap");
  r.opt.softcap = 0.0f;
  run(r);
  expect_miss(r, "mod_softcap without softcap");
}

TEST(ModifierGoldenSanity, SinksMatter) {
  mod_run r;
  load(r, "mod_sinks_window");
  r.opt.sinks.clear();
  run(r);
  expect_miss(r, "mod_sinks_window without sinks");
}

// Without causal masking, ALiBi's distance is measured from the bottom-right
// diagonal, |i + S - L - j|: the same bias through a score_mod matches torch,
// the top-left distance |i - j| does not.
TEST(ModifierGoldenSanity, AlibiDistanceIsBottomRightWithoutCausal) {
  mod_run r;
  load(r, "mod_alibi_bidirectional");
  ASSERT_NE(r.L, r.S);
  ASSERT_EQ(r.opt.causal, attn::causal::none);
  const std::vector<float> slopes = r.opt.alibi_slopes;
  r.opt.alibi_slopes.clear();
  const cmap<4> qm = map4(r.f.at("q")), km = map4(r.f.at("k")), vm = map4(r.f.at("v"));
  for (const index offset : {r.S - r.L, index{0}}) {
    auto bias = [&slopes, offset](index, index h, index i, index j, float s) {
      return s - slopes[static_cast<std::size_t>(h)] *
                     static_cast<float>(std::abs(i + offset - j));
    };
    r.out = tensor4(r.B, r.Hq, r.L, r.Ev);
    attn::flex_attention(attn::bhsd(qm), attn::bhsd(km), attn::bhsd(vm), attn::bhsd(r.out),
                         attn::score_only(bias), r.opt);
    if (offset == r.S - r.L)
      EXPECT_LE(out_distance(r), out_tol(r)) << "bottom-right distance";
    else
      expect_miss(r, "mod_alibi_bidirectional with distance |i - j|");
  }
}

// Softcap is applied before ALiBi: capping the biased score instead misses.
TEST(ModifierGoldenSanity, SoftcapComesBeforeAlibi) {
  mod_run r;
  load(r, "mod_softcap_alibi");
  ASSERT_GT(r.opt.softcap, 0.0f);
  ASSERT_EQ(r.opt.causal, attn::causal::bottom_right);
  const std::vector<float> slopes = r.opt.alibi_slopes;
  const float cap = r.opt.softcap;
  const index offset = r.S - r.L;
  r.opt.alibi_slopes.clear();
  r.opt.softcap = 0.0f;
  const cmap<4> qm = map4(r.f.at("q")), km = map4(r.f.at("k")), vm = map4(r.f.at("v"));
  auto alibi_then_cap = [&slopes, cap, offset](index, index h, index i, index j, float s) {
    const float biased =
        s - slopes[static_cast<std::size_t>(h)] * static_cast<float>(std::abs(i + offset - j));
    return cap * std::tanh(biased / cap);
  };
  r.out = tensor4(r.B, r.Hq, r.L, r.Ev);
  attn::flex_attention(attn::bhsd(qm), attn::bhsd(km), attn::bhsd(vm), attn::bhsd(r.out),
                       attn::score_only(alibi_then_cap), r.opt);
  expect_miss(r, "mod_softcap_alibi with ALiBi before softcap");
}

// The document mask: every query seeing every key (no document mask) misses.
TEST(ModifierGoldenSanity, DocumentMaskMatters) {
  mod_run r;
  load(r, "mod_document");
  r.q_ids.clear();
  r.k_ids.clear();
  run(r);
  expect_miss(r, "mod_document without the document mask");
}

}  // namespace test_modifier_golden
