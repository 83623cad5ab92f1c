// tests/fuzz/fuzz_sdpa.cpp: libFuzzer harness for
// attn::scaled_dot_product_attention on strided views (both kernel paths:
// the tiled flash forward and the split-KV decode that few query rows take).
//
// The input decodes into: the K/V element type (float, bf16, half); shapes
// B, L, S, Hq, Hkv, d_qk, d_v including zero-length dims; a layout for each
// tensor (permuted, padded, broadcast or reversed strides); values (tame,
// NaN, +-inf, 1e30, FLT_MAX, denormals, ...); scale, causal alignment,
// sliding window, key lengths, bool and additive masks (broadcast in place),
// an LSE output, softcap, ALiBi slopes and attention sinks; and, for a
// quarter of inputs, one broken argument (among them an output aliasing an
// input or the other output).
//
// Invariants checked on every call:
//  * a valid call gives the same output and LSE bits on one thread as on
//    the threads it asked for (built at -O3 with OpenMP, every call
//    parallel: tools/fuzz.sh);
//  * a broken argument throws attn::error (nothing else, message in format),
//    a valid call does not throw;
//  * every output element (and LSE) is written, nothing outside the output
//    views is;
//  * a row that can attend to no key gives exactly 0 and LSE -inf (with
//    sinks: the head's sink logit, exactly);
//  * a row whose inputs (its query, the keys and values it can see, their
//    additive mask values) are all finite gives a finite output and LSE:
//    NaN and inf from elsewhere do not leak into it;
//  * on small problems, rows whose query, keys and mask values are tame and
//    whose values are finite (of any size, up to FLT_MAX) match the fp64
//    reference (tests/reference/sdpa_reference.hpp) within the error bound
//    below.
//
// Error bound (per row, natural-log units): the scores are fp32 dot products
// of d_qk terms (pre-scaled q, so one more rounding per term): |δs| <=
// (d_qk + 4)·eps·|scale|·Σ_d |q_d|·max_j |k_jd| (worst case, no sqrt(n)
// luck), plus the additive mask's conversion to log2 units and its addition,
// 4·eps·(|a| + |s|), plus exp2's 1.5e-7, plus the modifiers' roundings
// (softcap: tanh's error times the cap; ALiBi: 4·eps·|slope·distance|; a
// sink: 4·eps·|sink| in place of a score's). Softmax weights then move by at most
// a factor e^{±2δ}, so |Δo| <= max|v|·(e^{2δ} - 1)·2, plus fp32 accumulation
// over the visible keys, (n_keys + 8)·eps·max|v|, plus split-KV merges. (A
// row whose fp32 accumulation overflows, with values near FLT_MAX, is redone
// in double by the library: only the score error and one rounding remain.)
// We allow 4x that. A real bug (a key too many or too few, a wrong row) moves
// the output by O(1/S)·|v| and fails far above it.
#include <attn/alibi.hpp>
#include <attn/sdpa.hpp>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "../reference/sdpa_reference.hpp"
#include "fuzz_alias.hpp"
#include "fuzz_input.hpp"

namespace {

using namespace attn_fuzz;
using attn::index;

constexpr float ninf = -std::numeric_limits<float>::infinity();

// The broken argument of an invalid call. `needle` is the part of the
// message that must name it.
// A [B, Hq, L, S] mask: a base tensor with extent 1 on broadcast dims, viewed
// with stride 0 there.
template <class T>
struct mask4 {
  laid_out<T, 4> base;
  attn::strided<const T, 4> view;
};
template <class T>
mask4<T> make_mask(input& in, const std::array<index, 4>& dims) {
  mask4<T> m;
  const std::uint8_t bc = in.u8();
  std::array<index, 4> base_dims = dims;
  for (int r = 0; r < 4; ++r)
    if (bc & (1 << r)) base_dims[r] = std::min<index>(dims[r], 1);
  m.base = lay_out<T, 4>(in, base_dims, layout_use::output, T{});
  m.view = m.base.view;
  m.view.dims = dims;
  for (int r = 0; r < 4; ++r)
    if (base_dims[r] != dims[r]) m.view.strides[r] = 0;
  // A mask of zero elements still counts as given (a null view means none).
  static T dummy{};
  if (m.view.data == nullptr) m.view.data = &dummy;
  return m;
}

// The invariants of a valid call. Not instrumented for coverage: these
// loops over every (row, key) would otherwise dominate each run's time and
// steer the fuzzer by the harness's own branches.
template <class KV>
ATTN_FUZZ_NO_COVERAGE void check_valid_call(const laid_out<float, 4>& out,
                                            const laid_out<float, 3>& lse,
                                            const attn::sdpa_options& opt,
                                            const attn::strided<const float, 4>& qv,
                                            const attn::strided<const KV, 4>& kv,
                                            attn::strided<const KV, 4> vv,
                                            attn::strided<float, 4> ov) {
  // With d_v = 0, V and the output may have null data; the reference (and
  // at()) form addresses in them: give them dummies.
  static const KV no_value{};
  static float no_output = 0.0f;
  if (vv.dims[3] == 0 && vv.data == nullptr) vv = {&no_value, vv.dims, {0, 0, 0, 0}};
  if (ov.dims[3] == 0 && ov.data == nullptr) ov = {&no_output, ov.dims, {0, 0, 0, 0}};
  const index B = qv.dims[0], L = qv.dims[1], Hq = qv.dims[2], Dqk = qv.dims[3];
  const index S = kv.dims[1], Hkv = kv.dims[2], Dv = vv.dims[3], group = Hq / Hkv;
  check_written_exactly(out, "out");
  if (!opt.lse.empty()) check_written_exactly(lse, "lse");

  const float scale = opt.scale ? *opt.scale : 1.0f / std::sqrt(static_cast<float>(Dqk));
  attn_ref::options ro = attn_ref::options_from(opt);  // (an additive -inf folded into allow)
  ro.scale = scale;
  const bool small = double(B) * Hq * L * S * (Dqk + Dv) <= 1e5;
  attn_ref::result ref;
  if (small) ref = attn_ref::sdpa(qv, kv, vv, ro);

  std::vector<index> visible;
  for (index b = 0; b < B; ++b)
    for (index h = 0; h < Hq; ++h)
      for (index i = 0; i < L; ++i) {
        const index hk = h / group;
        const float* qi = at(qv, b, i, h, 0);
        bool clean = true, tame = std::fabs(scale) <= 4.0f;
        for (index d = 0; d < Dqk; ++d) {
          clean = clean && std::isfinite(qi[d]);
          tame = tame && is_tame(qi[d]);
        }
        visible.clear();
        for (index j = 0; j < S; ++j) {
          if (!attn_ref::structurally_visible(ro, b, i, j, L, S)) continue;
          if (!opt.bool_mask.empty() && !*at(opt.bool_mask, b, h, i, j)) continue;
          if (!opt.additive_mask.empty()) {
            const float a = *at(opt.additive_mask, b, h, i, j);
            if (a == ninf) continue;
            clean = clean && !std::isnan(a);
            tame = tame && is_tame(a);
          }
          visible.push_back(j);
        }
        std::string where = "b=" + std::to_string(b) + " h=" + std::to_string(h) +
                            " i=" + std::to_string(i) + " (B=" + std::to_string(B) +
                            " L=" + std::to_string(L) + " S=" + std::to_string(S) +
                            " Hq=" + std::to_string(Hq) + " Hkv=" + std::to_string(Hkv) +
                            " dqk=" + std::to_string(Dqk) + " dv=" + std::to_string(Dv) + ")";
        const float* o = at(ov, b, i, h, 0);
        const float l = opt.lse.empty() ? 0.0f : *at(opt.lse, b, h, i);
        // Steering around known library issues (fuzz_input.hpp, known::):
        // F2 on the tiled path, F3/F6 on both (F13 below); all fixed now.
        bool steer_ok = true;
        const bool flash = L * group > 32;
        {
          for (index j = 0; j < S && steer_ok; ++j) {
            const KV* kj = at(kv, b, j, hk, 0);
            const KV* vj = at(vv, b, j, hk, 0);
            if (flash && known::flash_masked_value_nan_leaks)
              for (index d = 0; d < Dv; ++d) steer_ok = steer_ok && std::isfinite(as_float(vj[d]));
            // (a NaN additive entry under a false bool entry: the same addition)
            if (known::flash_additive_minus_inf_adds && !opt.additive_mask.empty() &&
                !opt.bool_mask.empty() && !*at(opt.bool_mask, b, h, i, j) &&
                std::isnan(*at(opt.additive_mask, b, h, i, j)))
              steer_ok = false;
            if (known::flash_additive_minus_inf_adds && !opt.additive_mask.empty() &&
                *at(opt.additive_mask, b, h, i, j) == ninf) {
              double s = 0;
              bool finite_k = true;
              for (index d = 0; d < Dqk; ++d) {
                finite_k = finite_k && std::isfinite(as_float(kj[d])) && std::isfinite(qi[d]);
                s += std::fabs(double(qi[d]) * double(as_float(kj[d])));
              }
              steer_ok = steer_ok && finite_k && s * std::fabs(scale) * 1.4427 < 1e38;
            }
          }
        }
        clean = clean && steer_ok;
        if (visible.empty()) {
          if (!steer_ok) continue;
          for (index d = 0; d < Dv; ++d)
            check(o[d] == 0.0f, "fully masked row gives " + std::to_string(o[d]) + " at " + where);
          // (with a sink: output 0 and the sink's LSE, exactly)
          const float empty_lse = opt.sinks.empty() ? ninf : opt.sinks[std::size_t(h)];
          if (!opt.lse.empty())
            check(l == empty_lse, "fully masked row has LSE " + std::to_string(l) + ", want " +
                                      std::to_string(empty_lse));
          continue;
        }
        double vmax = 0, row_delta = 0;
        // Scores: the library saturates a score that overflows (weight 1
        // for +inf, 0 for -inf), but a score whose terms overflow with
        // mixed signs is inf - inf = NaN: the policy covers scores whose
        // terms q_d·k_d·scale·log2(e) are representable or of one sign.
        for (index j : visible) {
          const KV* kj = at(kv, b, j, hk, 0);
          double sa = 0;
          bool pos = true, neg = true;
          for (index d = 0; d < Dqk; ++d) {
            const double t = double(qi[d]) * double(as_float(kj[d])) * scale;
            sa += std::fabs(t);
            pos = pos && t >= 0;
            neg = neg && t <= 0;
          }
          clean = clean && (sa * 1.4427 < 3e38 || pos || neg);
        }
        // A NaN that the row reads (its query, a visible key, a visible
        // additive mask entry) makes the row NaN, not 0 or a finite value
        // of the other keys (F14 until fixed).
        if (!known::nan_row_reported_empty && steer_ok && Dv > 0) {
          bool poisoned = false;
          for (index d = 0; d < Dqk; ++d) poisoned = poisoned || std::isnan(qi[d]);
          for (index j : visible) {
            for (index d = 0; d < Dqk; ++d) poisoned = poisoned || std::isnan(as_float(at(kv, b, j, hk, 0)[d]));
            if (!opt.additive_mask.empty() && std::isnan(*at(opt.additive_mask, b, h, i, j))) {
              // (a score that overflowed to -inf has weight 0 whatever is
              // added to it: the library treats it as masked)
              double sa = 0;
              for (index d = 0; d < Dqk; ++d)
                sa += std::fabs(double(qi[d]) * double(as_float(at(kv, b, j, hk, 0)[d])) * scale);
              // (softcap maps even that score to -softcap: the NaN counts)
              poisoned = poisoned || sa * 1.4427 < 3e38 || opt.softcap > 0.0f;
            }
          }
          if (poisoned) {
            bool any_nan = false;
            for (index d = 0; d < Dv; ++d) any_nan = any_nan || std::isnan(o[d]);
            check(any_nan, "a row that reads a NaN is not NaN at " + where);
            if (!opt.lse.empty()) check(std::isnan(l), "a row that reads a NaN has LSE " + std::to_string(l));
          }
        }
        if (known::prescaled_query_overflow)
          for (index d = 0; d < Dqk; ++d)
            clean = clean && std::fabs(double(qi[d]) * scale * 1.4427) < 3.4e38;
        for (index j : visible) {
          const KV* kj = at(kv, b, j, hk, 0);
          const KV* vj = at(vv, b, j, hk, 0);
          for (index d = 0; d < Dqk; ++d) {
            clean = clean && std::isfinite(as_float(kj[d]));
            tame = tame && is_tame(as_float(kj[d]));
          }
          // Values may be any finite size (up to FLT_MAX: F4 fixed), also
          // for the reference comparison: its bound scales with max|v|.
          for (index d = 0; d < Dv; ++d) {
            const float x = as_float(vj[d]);
            clean = clean && std::isfinite(x);
            vmax = std::max(vmax, std::fabs(double(x)));
          }
        }
        if (clean) {
          if (verbose()) {
            std::fprintf(stderr, "row %s:", where.c_str());
            for (index d = 0; d < Dv; ++d) std::fprintf(stderr, " %g", double(o[d]));
            std::fprintf(stderr, "\n");
            for (index j : visible) {
              std::fprintf(stderr, "  key %ld k:", long(j));
              for (index d = 0; d < Dqk; ++d) std::fprintf(stderr, " %g", double(as_float(at(kv, b, j, hk, 0)[d])));
              std::fprintf(stderr, " v:");
              for (index d = 0; d < Dv; ++d) std::fprintf(stderr, " %g", double(as_float(at(vv, b, j, hk, 0)[d])));
              std::fprintf(stderr, "\n");
            }
            std::fprintf(stderr, "  q:");
            for (index d = 0; d < Dqk; ++d) std::fprintf(stderr, " %g", double(qi[d]));
            std::fprintf(stderr, "\n");
          }
          for (index d = 0; d < Dv; ++d)
            check(std::isfinite(o[d]), "finite inputs gave " + std::to_string(o[d]) + " at " +
                                           where + " d=" + std::to_string(d));
          // (finite: not NaN, and not the -inf of an empty row, since the
          // row sees keys; scores that overflow saturate either way)
          if (!opt.lse.empty())
            check(std::isfinite(l), "finite inputs gave LSE " + std::to_string(l) + " at " + where);
        }
        // Modifiers of tame size: the bound below covers their roundings.
        tame = tame && opt.softcap <= 64.0f;
        if (!opt.alibi_slopes.empty()) tame = tame && std::fabs(opt.alibi_slopes[std::size_t(h)]) <= 4.0f;
        const double sink = opt.sinks.empty() ? 0.0 : double(opt.sinks[std::size_t(h)]);
        tame = tame && std::fabs(sink) <= 16.0;
        if (!(small && tame && clean)) continue;
        // The error bound of the file comment.
        for (index j : visible) {
          const KV* kj = at(kv, b, j, hk, 0);
          double qk = 0, s = 0;
          for (index d = 0; d < Dqk; ++d) {
            qk += std::fabs(double(qi[d])) * std::fabs(double(as_float(kj[d])));
            s += double(qi[d]) * double(as_float(kj[d]));
          }
          s *= scale;
          double delta = (Dqk + 4) * eps32 * std::fabs(scale) * qk + 1.5e-7 + 4 * eps32 * std::fabs(s);
          if (!opt.additive_mask.empty())
            delta += 4 * eps32 * std::fabs(double(*at(opt.additive_mask, b, h, i, j)) + s);
          // softcap c·tanh(s/c) passes the score's error on (slope <= 1) and
          // adds tanh's (attn::core::simd::tanh_max_abs_error, times c) and two
          // multiplications; ALiBi's bias slope·distance adds an fma.
          if (opt.softcap > 0.0f)
            delta += 2 * (double(attn::core::simd::tanh_max_abs_error) + 2 * eps32) * opt.softcap +
                     4 * eps32 * std::fabs(s);
          if (!opt.alibi_slopes.empty()) {
            const index diag = opt.causal == attn::causal::top_left ? i : i + S - L;
            delta += 4 * eps32 * std::fabs(double(opt.alibi_slopes[std::size_t(h)])) *
                     std::fabs(double(diag - j));
          }
          row_delta = std::max(row_delta, delta);
        }
        // A sink joins the denominator through its log2 value and one exp2.
        if (!opt.sinks.empty()) row_delta = std::max(row_delta, 4 * eps32 * std::fabs(sink) + 1.5e-7);
        const double n_keys = static_cast<double>(visible.size());
        const double tol =
            4 * (vmax * (std::expm1(2 * row_delta) * 2 + (n_keys + 8 + 64) * eps32) + 1e-30);
        for (index d = 0; d < Dv; ++d) {
          const double want = ref.o(b, i, h, d);
          check(std::fabs(double(o[d]) - want) <= tol,
                "out differs from the fp64 reference at " + where + " d=" + std::to_string(d) +
                    ": got " + std::to_string(o[d]) + ", want " + std::to_string(want) +
                    ", tol " + std::to_string(tol));
        }
        if (!opt.lse.empty()) {
          const double want = ref.l(b, h, i);
          const double tol_l = 4 * (row_delta + 4 * eps32 * std::fabs(want) + n_keys * eps32) + 1e-6;
          check(std::fabs(double(l) - want) <= tol_l,
                "LSE differs from the fp64 reference at " + where + ": got " + std::to_string(l) +
                    ", want " + std::to_string(want));
        }
      }
}

template <class KV>
void run(input& in) {
  // --- shapes ---------------------------------------------------------------
  const bool big = in.chance(40);
  const index B = in.chance(16) ? 0 : in.range(1, 2);
  const index Hkv = in.range(1, 3), group = in.range(1, 4), Hq = Hkv * group;
  const index Dqk = in.range(1, big ? 12 : 20), Dv = in.chance(12) ? 0 : in.range(1, big ? 12 : 20);
  // big: the tiled path over several query and key tiles (L > 32 / group),
  // or the split-KV path over several key chunks (S > 512).
  index L = in.chance(12) ? 0 : big ? (in.coin() ? in.range(1, 8) : in.range(33, 400)) : in.range(1, 12);
  index S = in.chance(12) ? 0 : in.range(1, big ? 1300 : 40);
  // Keep one execution cheap (thousands of runs a second): at most ~400k
  // multiply-adds.
  while (L > 1 && double(B) * Hq * L * S * (Dqk + Dv) > 4e5) L = L * 3 / 4;
  while (S > 1 && double(B) * Hq * L * S * (Dqk + Dv) > 4e5) S = S * 3 / 4;

  auto q = lay_out<float, 4>(in, {B, L, Hq, Dqk}, layout_use::input,
                             std::numeric_limits<float>::quiet_NaN());
  auto k = lay_out<KV, 4>(in, {B, S, Hkv, Dqk}, layout_use::input,
                          KV(std::numeric_limits<float>::quiet_NaN()));
  auto v = lay_out<KV, 4>(in, {B, S, Hkv, Dv}, layout_use::input,
                          KV(std::numeric_limits<float>::quiet_NaN()));
  auto out = lay_out<float, 4>(in, {B, L, Hq, Dv}, layout_use::output, sentinel());
  if (known::null_views_with_zero_dv && Dv == 0) {  // steer around F1
    static KV v_dummy{};
    static float out_dummy = 0.0f;
    if (!v.view.data) v.view.data = &v_dummy;
    if (!out.view.data) out.view.data = &out_dummy;
  }
  fill(in, q);
  fill(in, k);
  fill(in, v);

  // --- options --------------------------------------------------------------
  attn::sdpa_options opt;
  switch (in.u8() % 4) {
    case 0: break;
    case 1: opt.scale = 3.0f * rng{in.u32()}.unit(); break;
    case 2: opt.scale = special(in.u8()); break;  // may be invalid: see below
    default: opt.scale = static_cast<float>(in.range(0, 64)) / 16.0f; break;
  }
  static constexpr attn::causal causals[] = {attn::causal::none, attn::causal::top_left,
                                             attn::causal::bottom_right};
  opt.causal = in.pick(causals);
  if (in.chance(80)) {
    attn::sliding_window w;
    w.left = in.chance(64) ? attn::unbounded : in.range(0, S + 2);
    w.right = in.chance(64) ? attn::unbounded : in.range(0, S + 2);
    w.align = in.coin() ? attn::alignment::top_left : attn::alignment::bottom_right;
    opt.window = w;
  }
  if (B > 0 && in.chance(64))
    for (index b = 0; b < B; ++b) opt.key_lengths.push_back(in.range(0, S));
  const std::array<index, 4> mask_dims{B, Hq, L, S};
  mask4<bool> bm;
  if (in.chance(64)) {
    bm = make_mask<bool>(in, mask_dims);
    const std::uint8_t density = in.u8();
    rng g{in.u32()};
    for (index i = 0; i < bm.base.size(); ++i)
      bm.base[i] = density & 0x80 ? (in.u8() & 1) != 0 : (g.next() & 0xff) <= density;
    opt.bool_mask = bm.view;
  }
  mask4<float> am;
  if (in.chance(64)) {
    am = make_mask<float>(in, mask_dims);
    fill(in, am.base);
    if (in.coin()) {  // sprinkle -inf (masked) entries
      rng g{in.u32()};
      const std::uint8_t p = in.u8();
      for (index i = 0; i < am.base.size(); ++i)
        if ((g.next() & 0xff) < p) am.base[i] = ninf;
    }
    opt.additive_mask = am.view;
  }
  laid_out<float, 3> lse;
  if (in.chance(96)) {
    lse = lay_out<float, 3>(in, {B, Hq, L}, layout_use::output, sentinel());
    opt.lse = lse.view;
  }
  opt.num_threads = static_cast<int>(in.range(0, 2));

  // --- validity, and at most one broken argument ------------------------------
  breakage br;
  if (opt.scale) {
    const float s = *opt.scale;
    if (!(std::isfinite(s) && std::isfinite(s * attn::core::softmax::log2e)))
      br.set("scale", "scale");
  }
  attn::strided<const float, 4> qv = q.view;
  attn::strided<const KV, 4> kv = k.view, vv = v.view;
  attn::strided<float, 4> ov = out.view;
  auto no_zero = [](const std::array<index, 4>& d) {
    return d[0] != 0 && d[1] != 0 && d[2] != 0 && d[3] != 0;
  };
  if (br.valid && in.chance(72)) {
    switch (in.u8() % 30) {
      case 0: kv.dims[0] = B + 1; br.set("k batch", ": k:"); break;
      case 1: kv.dims[3] = Dqk + 1; br.set("k d_qk", ": k:"); break;
      case 2: kv.dims[2] = Hq + 1; br.set("heads_kv not dividing", "heads_kv"); break;
      case 3: kv.dims[2] = 0; br.set("heads_kv 0", "heads_kv"); break;
      case 4: vv.dims[1] = S + 1; br.set("v seq", ": v:"); break;
      case 5: vv.dims[0] = B + 1; br.set("v batch", ": v:"); break;
      case 6: ov.dims[1] = L + 1; br.set("out seq", ": out:"); break;
      case 7: ov.dims[3] = Dv + 1; br.set("out d_v", ": out:"); break;
      case 8: qv.strides[3] = 2; br.set("q head-dim stride", "q.strides[3]"); break;
      case 9: kv.strides[3] = 2; br.set("k head-dim stride", "k.strides[3]"); break;
      case 10:
        if (Dv > 1) vv.strides[3] = 2, br.set("v head-dim stride", "v.strides[3]");
        break;
      case 11:
        if (Dv > 1) ov.strides[3] = 2, br.set("out head-dim stride", "out.strides[3]");
        break;
      case 12:
        if (L > 1 && no_zero(ov.dims)) ov.strides[1] = 0, br.set("out overlaps", "out.strides");
        break;
      case 13:
        if (no_zero(qv.dims)) qv.data = nullptr, br.set("null q", ": q:");
        break;
      case 14:
        if (no_zero(kv.dims)) kv.data = nullptr, br.set("null k", ": k:");
        break;
      case 15:
        if (no_zero(vv.dims)) vv.data = nullptr, br.set("null v", ": v:");
        break;
      case 16:
        if (no_zero(ov.dims)) ov.data = nullptr, br.set("null out", ": out:");
        break;
      case 17: qv.dims[1] = -1 - in.range(0, 3); br.set("negative L", ": q:"); break;
      case 18: kv.dims[1] = -1 - in.range(0, 3); br.set("negative S", ": k:"); break;
      case 19: {
        static constexpr float bad[] = {std::numeric_limits<float>::quiet_NaN(),
                                        std::numeric_limits<float>::infinity(), -3e38f,
                                        std::numeric_limits<float>::max()};
        opt.scale = in.pick(bad);
        br.set("scale", "scale");
        break;
      }
      case 20: {
        attn::sliding_window w = opt.window ? *opt.window : attn::sliding_window{};
        w.left = -1 - in.range(0, 5);
        opt.window = w;
        br.set("window.left", "window.left");
        break;
      }
      case 21: {
        attn::sliding_window w = opt.window ? *opt.window : attn::sliding_window{};
        w.right = -1 - in.range(0, 5);
        opt.window = w;
        br.set("window.right", "window.right");
        break;
      }
      case 22:
        opt.key_lengths.assign(static_cast<std::size_t>(B + 1), 0);
        br.set("key_lengths size", "key_lengths.size()");
        break;
      case 23:
        if (B > 0) {
          opt.key_lengths.assign(static_cast<std::size_t>(B), 0);
          opt.key_lengths[static_cast<std::size_t>(in.range(0, B - 1))] = in.coin() ? S + 1 : -1;
          br.set("key_lengths value", "key_lengths[");
        }
        break;
      case 24:
        if (!opt.bool_mask.empty()) {
          opt.bool_mask.dims[3] = S + 1;
          br.set("bool_mask dims", "bool_mask");
        } else if (!opt.additive_mask.empty()) {
          opt.additive_mask.dims[2] = L + 1;
          br.set("additive_mask dims", "additive_mask");
        }
        break;
      case 25:
        if (!opt.bool_mask.empty()) {
          opt.bool_mask.strides[in.range(0, 3)] = -1;
          br.set("bool_mask negative stride", "bool_mask");
        } else if (!opt.additive_mask.empty()) {
          opt.additive_mask.strides[in.range(0, 3)] = -1;
          br.set("additive_mask negative stride", "additive_mask");
        }
        break;
      case 26:
        if (!opt.lse.empty()) {
          opt.lse.dims[2] = L + 1;
          br.set("lse dims", "lse");
        }
        break;
      case 27:
        if (!opt.lse.empty() && L > 1 && B > 0) {
          opt.lse.strides[2] = 0;
          br.set("lse overlaps", "lse.strides");
        }
        break;
      case 28: opt.num_threads = -1 - static_cast<int>(in.range(0, 3)); br.set("num_threads", "num_threads"); break;
      default:
        qv.dims[3] = 0;
        kv.dims[3] = 0;
        br.set("d_qk = 0", "d_qk");
        break;
    }
  }
  // Enum arguments outside their enumerators (static_cast from any int):
  // every enum argument is checked, none taken for a neighbour's value.
  if (br.valid && in.chance(12)) {
    const int bad = in.coin() ? 3 + static_cast<int>(in.range(0, 250))
                              : -1 - static_cast<int>(in.range(0, 3));
    if (in.coin()) {
      opt.causal = static_cast<attn::causal>(bad);
      br.set("causal out of range", "causal");
    } else {
      attn::sliding_window w = opt.window ? *opt.window : attn::sliding_window{};
      w.align = static_cast<attn::alignment>(bad);
      opt.window = w;
      br.set("window.align out of range", "window.align");
    }
  }

  // --- score modifiers (issue 20): softcap, ALiBi slopes and sinks, drawn
  // after everything else so that older corpus inputs decode as before.
  // Valid draws keep log2-unit values finite; for a quarter of the still
  // valid inputs that draw one, one modifier is broken instead.
  auto per_head_values = [&](float amplitude) {
    std::vector<float> values(static_cast<std::size_t>(Hq));
    rng g{in.u32()};
    for (float& x : values) x = amplitude * g.unit();  // [-amplitude, amplitude)
    return values;
  };
  if (in.chance(48)) {
    static constexpr float caps[] = {0.25f, 1.0f, 4.0f, 20.0f, 50.0f, 1e30f};
    opt.softcap = in.pick(caps);
  }
  if (in.chance(48)) {
    if (in.coin()) {
      opt.alibi_slopes = attn::standard_alibi_slopes(Hq);
    } else {
      static constexpr float amplitudes[] = {0.5f, 4.0f, 1e30f};
      opt.alibi_slopes = per_head_values(in.pick(amplitudes));  // (negative slopes too)
    }
  }
  if (in.chance(48)) {
    static constexpr float amplitudes[] = {2.0f, 16.0f, 1e30f};
    opt.sinks = per_head_values(in.pick(amplitudes));
  }
  if (br.valid && in.chance(16)) {
    static constexpr float bad[] = {std::numeric_limits<float>::quiet_NaN(),
                                    std::numeric_limits<float>::infinity(),
                                    -std::numeric_limits<float>::infinity(),
                                    std::numeric_limits<float>::max()};
    switch (in.u8() % 5) {
      case 0: {
        static constexpr float bad_caps[] = {-1.0f, std::numeric_limits<float>::quiet_NaN(),
                                             std::numeric_limits<float>::infinity(),
                                             std::numeric_limits<float>::max(),
                                             std::numeric_limits<float>::denorm_min()};
        opt.softcap = in.pick(bad_caps);
        br.set("softcap", "softcap");
        break;
      }
      case 1:
        opt.alibi_slopes.assign(static_cast<std::size_t>(Hq + 1), 0.5f);
        br.set("alibi_slopes size", "alibi_slopes");
        break;
      case 2:
        opt.alibi_slopes = per_head_values(1.0f);
        opt.alibi_slopes[static_cast<std::size_t>(in.range(0, Hq - 1))] = in.pick(bad);
        br.set("alibi_slopes value", "alibi_slopes");
        break;
      case 3:
        opt.sinks.assign(static_cast<std::size_t>(Hq > 1 && in.coin() ? Hq - 1 : Hq + 1), 0.0f);
        br.set("sinks size", "sinks");
        break;
      default:
        opt.sinks = per_head_values(1.0f);
        opt.sinks[static_cast<std::size_t>(in.range(0, Hq - 1))] = in.pick(bad);
        br.set("sinks value", "sinks");
        break;
    }
  }

  // --- aliased output (issue 18 item 4): out or lse shares one element
  // with an input or with the other output. Must throw, naming both.
  alias_arena arena;
  if (br.valid && in.chance(32)) {
    auto alias = [&](auto& output, const std::string& name, auto& other, const std::string& what) {
      break_by_alias(arena, br, output, name, other, what);
    };
    auto alias_input = [&](auto& output, const std::string& name) {
      switch (in.u8() % 5) {
        case 0: alias(output, name, qv, "q"); break;
        case 1: alias(output, name, kv, "k"); break;
        case 2: alias(output, name, vv, "v"); break;
        case 3: alias(output, name, opt.bool_mask, "bool_mask"); break;
        default: alias(output, name, opt.additive_mask, "additive_mask"); break;
      }
    };
    switch (in.u8() % 3) {
      case 0: alias_input(ov, "out"); break;
      case 1: alias_input(opt.lse, "lse"); break;
      default: alias(opt.lse, "lse", ov, "out"); break;  // lse is checked against out
    }
  }

  // --- impossible sizes (issue 18 item 2) ------------------------------------------
  // Strides and extents near the overflow limits: a view whose span passes
  // the address space (its addresses wrap, elements alias) and outputs of
  // broadcast inputs with huge extents must be refused by arithmetic.
  if (br.valid && in.chance(24)) {
    constexpr index lim = std::numeric_limits<index>::max();
    // Every magnitude >= 2^62: one step past any extent-2 dim of 2-byte
    // elements already leaves the address space.
    static constexpr index huge[] = {index{1} << 62, -(index{1} << 62), lim, lim / 2,
                                     std::numeric_limits<index>::min(), lim - 1};
    const index s = in.pick(huge);
    const int r = static_cast<int>(in.range(0, 2));  // not the head dim (its stride is 1)
    switch (in.u8() % 6) {
      case 0:
        if (qv.dims[r] > 1 && no_zero(qv.dims)) qv.strides[r] = s, br.set("q huge stride", ": q:");
        break;
      case 1:
        if (kv.dims[r] > 1 && no_zero(kv.dims)) kv.strides[r] = s, br.set("k huge stride", ": k:");
        break;
      case 2:
        if (vv.dims[r] > 1 && no_zero(vv.dims)) vv.strides[r] = s, br.set("v huge stride", ": v:");
        break;
      case 3:
        if (ov.dims[r] > 1 && no_zero(ov.dims) && no_zero(qv.dims))
          ov.strides[r] = s, br.set("out huge stride", ": out:");
        break;
      case 4:
        if (!opt.additive_mask.empty() && opt.additive_mask.dims[r] > 1 &&
            no_zero(opt.additive_mask.dims))
          opt.additive_mask.strides[r] = s < 0 ? lim / 2 : s,  // (mask strides are >= 0)
              br.set("additive_mask huge stride", "additive_mask");
        break;
      default:
        // A batch of more than 2^61 broadcast inputs: the output's span
        // cannot hold it, whatever its (non-zero) batch stride.
        if (no_zero(qv.dims) && no_zero(ov.dims) && ov.strides[0] != 0) {
          static constexpr index batches[] = {index{1} << 62, lim, lim / 2, lim / 3};
          const index nb = in.pick(batches);
          qv.dims[0] = kv.dims[0] = vv.dims[0] = ov.dims[0] = nb;
          qv.strides[0] = kv.strides[0] = vv.strides[0] = 0;
          br.set("huge batch", ": out:");
        }
        break;
    }
  }

  if (verbose()) {
    std::fprintf(stderr, "kv %s | B %ld L %ld S %ld Hq %ld Hkv %ld dqk %ld dv %ld | scale %s causal %d",
                 sizeof(KV) == 4 ? "float" : "16-bit", long(B), long(L), long(S), long(Hq), long(Hkv),
                 long(Dqk), long(Dv), opt.scale ? std::to_string(*opt.scale).c_str() : "default",
                 static_cast<int>(opt.causal));
    if (opt.window)
      std::fprintf(stderr, " window (%ld, %ld, %d)", long(opt.window->left), long(opt.window->right),
                   static_cast<int>(opt.window->align));
    std::fprintf(stderr, " key_lengths %zu bool %d additive %d lse %d softcap %g alibi %zu sinks %zu"
                 " | broken: %s\n",
                 opt.key_lengths.size(), int(!opt.bool_mask.empty()), int(!opt.additive_mask.empty()),
                 int(!opt.lse.empty()), double(opt.softcap), opt.alibi_slopes.size(), opt.sinks.size(),
                 br.valid ? "nothing" : br.why.c_str());
    dump("q", q);
    dump("k", k);
    dump("v", v);
    std::fprintf(stderr, "out: dims %s strides %s\n", text(out.view.dims).c_str(),
                 text(out.view.strides).c_str());
    if (!opt.bool_mask.empty()) dump("bool_mask base", bm.base);
    if (!opt.additive_mask.empty()) dump("additive_mask base", am.base);
  }

  // --- the call -----------------------------------------------------------------
  std::string message;
  const outcome got =
      call("scaled_dot_product_attention",
           [&] { attn::scaled_dot_product_attention(qv, kv, vv, ov, opt); }, &message);
  expect_outcome("scaled_dot_product_attention", got, br.valid, br.why, message);
  if (!br.valid) {
    check(message.find(br.needle) != std::string::npos,
          "error for " + br.why + " does not name \"" + br.needle + "\": " + message);
    return;
  }

  check_valid_call<KV>(out, lse, opt, qv, kv, vv, ov);

  // The same bits on one thread as on the threads asked for (0: OpenMP's
  // default), every output element and LSE entry.
  if (opt.num_threads != 1) {
    const auto out_bits = snapshot(out.buffer.data(), out.buffer.size());
    const auto lse_bits = snapshot(lse.buffer.data(), lse.buffer.size());
    attn::sdpa_options one = opt;
    one.num_threads = 1;
    attn::scaled_dot_product_attention(qv, kv, vv, ov, one);
    check(snapshot(out.buffer.data(), out.buffer.size()) == out_bits,
          "output bits differ between 1 thread and num_threads = " +
              std::to_string(opt.num_threads));
    check(snapshot(lse.buffer.data(), lse.buffer.size()) == lse_bits,
          "LSE bits differ between 1 thread and num_threads = " + std::to_string(opt.num_threads));
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  input in(data, size);
  switch (in.u8() % 3) {
    case 0: run<float>(in); break;
    case 1: run<Eigen::bfloat16>(in); break;
    default: run<Eigen::half>(in); break;
  }
  return 0;
}
