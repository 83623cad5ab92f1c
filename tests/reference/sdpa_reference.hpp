// tests/reference/sdpa_reference.hpp: scaled dot-product attention the
// obvious way, in fp64, written independently of attn's kernel.
//
// No tiling, no online softmax, no SIMD, no band logic from attn/mask.hpp:
// every (batch, head, query) row builds its full list of scores in double,
// decides visibility of each key directly from the conventions in docs/design.md,
// and does a two-pass max-subtracted softmax. Inputs are read element-wise
// through attn::strided views (only view::at(), i.e. pointer + sum of
// index*stride), converted to double from whatever element type they hold,
// so for bf16/half K/V the reference sees exactly the rounded values the
// kernel sees.
//
// Conventions implemented here:
//   causal top_left      query i sees j <= i
//   causal bottom_right  query i sees j <= i + S - L
//   window (l, r, align) diag(i) - l <= j <= diag(i) + r,
//                        diag(i) = i (top_left) or i + S - L (bottom_right)
//   key_lengths[b]       j < key_lengths[b]
//   bool mask            true = may attend
//   additive mask        added to the scaled score (-inf = masked)
//   GQA                  query head h reads kv head h / (Hq / Hkv)
//   scale                default 1 / sqrt(d_qk)
//   softcap c > 0        score <- c · tanh(score / c), before the bias
//   ALiBi slopes         score -= slope[h] · |i + S - L - j| (|i - j| when
//                        causal is top_left), after softcap
//   score_mod            score <- score_mod(b, h, i, j, score), after ALiBi
//   additive mask        added to the (modified) scaled score
//   sinks                a logit per head in the softmax with no value:
//                        out = Σ e^s v / (e^sink + Σ e^s), LSE includes it
//   nothing visible      output 0, LSE -inf (the sink's LSE with a sink)
#pragma once

#include <Eigen/Core>
#include <attn/mask.hpp>
#include <attn/sdpa_options.hpp>
#include <attn/view.hpp>
#include <cmath>
#include <cstddef>
#include <functional>
#include <limits>
#include <optional>
#include <stdexcept>
#include <vector>

namespace attn_ref {

using attn::index;

/// The options of the reference. Masks are functions of (b, h, i, j) so that
/// tests can state them independently of attn's strided views.
struct options {
  std::optional<double> scale;
  attn::causal causal = attn::causal::none;
  bool window = false;
  index window_left = 0;   ///< may be attn::unbounded
  index window_right = 0;  ///< may be attn::unbounded
  attn::alignment window_align = attn::alignment::bottom_right;
  std::vector<index> key_lengths;                          ///< empty = all S
  std::function<bool(index, index, index, index)> allow;   ///< empty = all true
  std::function<double(index, index, index, index)> bias;  ///< empty = 0
  double softcap = 0.0;                                    ///< 0 = off
  std::vector<double> alibi_slopes;                        ///< [Hq], empty = off
  std::vector<double> sinks;                               ///< [Hq], empty = off
  /// (b, h, i, j, score) -> score; empty = identity
  std::function<double(index, index, index, index, double)> score_mod;
};

/// The reference options for attn's: structural fields copied, dense masks
/// read element by element through (copies of) their views. An additive -inf
/// is folded into `allow`: the policy masks such a key whatever its score
/// (a NaN or overflowed +inf score under it must not stay visible), where
/// adding -inf to such a score would not.
inline options options_from(const attn::sdpa_options& o) {
  options r;
  if (o.scale) r.scale = static_cast<double>(*o.scale);
  r.causal = o.causal;
  if (o.window) {
    r.window = true;
    r.window_left = o.window->left;
    r.window_right = o.window->right;
    r.window_align = o.window->align;
  }
  r.key_lengths = o.key_lengths;
  r.softcap = static_cast<double>(o.softcap);
  r.alibi_slopes.assign(o.alibi_slopes.begin(), o.alibi_slopes.end());
  r.sinks.assign(o.sinks.begin(), o.sinks.end());
  constexpr float minus_inf = -std::numeric_limits<float>::infinity();
  const auto allow = o.bool_mask;
  const auto add = o.additive_mask;
  if (!allow.empty() || !add.empty())
    r.allow = [allow, add](index b, index h, index i, index j) {
      if (!allow.empty() && !*allow.at(b, h, i, j)) return false;
      return add.empty() || *add.at(b, h, i, j) != minus_inf;
    };
  if (!add.empty())
    r.bias = [add](index b, index h, index i, index j) {
      const float a = *add.at(b, h, i, j);
      return a == minus_inf ? 0.0 : static_cast<double>(a);
    };
  return r;
}

/// Output [B, L, Hq, Dv] and LSE [B, Hq, L], row-major, in double.
struct result {
  index B = 0, L = 0, Hq = 0, Dv = 0;
  std::vector<double> out;
  std::vector<double> lse;
  double& o(index b, index i, index h, index d) { return out[idx4(b, i, h, d)]; }
  double o(index b, index i, index h, index d) const { return out[idx4(b, i, h, d)]; }
  double& l(index b, index h, index i) {
    return lse[static_cast<std::size_t>((b * Hq + h) * L + i)];
  }
  double l(index b, index h, index i) const {
    return lse[static_cast<std::size_t>((b * Hq + h) * L + i)];
  }

 private:
  std::size_t idx4(index b, index i, index h, index d) const {
    return static_cast<std::size_t>(((b * L + i) * Hq + h) * Dv + d);
  }
};

template <class T>
double to_double(const T& x) {
  return static_cast<double>(static_cast<float>(x));
}
inline double to_double(const double& x) { return x; }

/// True when query i may see key j according to the structural masks only.
inline bool structurally_visible(const options& opt, index b, index i, index j, index L, index S) {
  if (!opt.key_lengths.empty() && !(j < opt.key_lengths[static_cast<std::size_t>(b)])) return false;
  if (opt.causal == attn::causal::top_left && !(j <= i)) return false;
  if (opt.causal == attn::causal::bottom_right && !(j <= i + S - L)) return false;
  if (opt.window) {
    const index diag = opt.window_align == attn::alignment::top_left ? i : i + S - L;
    if (!(diag - opt.window_left <= j)) return false;
    if (!(j <= diag + opt.window_right)) return false;
  }
  return true;
}

/// Scaled dot-product attention in fp64.
///   q [B, L, Hq, Dqk], k [B, S, Hkv, Dqk], v [B, S, Hkv, Dv].
template <class QT, class KT, class VT>
result sdpa(const attn::strided<QT, 4>& q, const attn::strided<KT, 4>& k,
            const attn::strided<VT, 4>& v, const options& opt = {}) {
  result r;
  const index B = q.dims[0], L = q.dims[1], Hq = q.dims[2], Dqk = q.dims[3];
  const index S = k.dims[1], Hkv = k.dims[2], Dv = v.dims[3];
  if (k.dims[0] != B || k.dims[3] != Dqk || v.dims[0] != B || v.dims[1] != S || v.dims[2] != Hkv ||
      Hkv < 1 || Hq % Hkv != 0)
    throw std::logic_error("attn_ref::sdpa: inconsistent shapes (test bug)");
  r.B = B;
  r.L = L;
  r.Hq = Hq;
  r.Dv = Dv;
  r.out.assign(static_cast<std::size_t>(B * L * Hq * Dv), 0.0);
  r.lse.assign(static_cast<std::size_t>(B * Hq * L), -std::numeric_limits<double>::infinity());
  const double scale = opt.scale ? *opt.scale : 1.0 / std::sqrt(static_cast<double>(Dqk));
  const index group = Hq / Hkv;

  std::vector<double> s(static_cast<std::size_t>(S));
  std::vector<char> vis(static_cast<std::size_t>(S));
  for (index b = 0; b < B; ++b)
    for (index h = 0; h < Hq; ++h) {
      const index hk = h / group;
      for (index i = 0; i < L; ++i) {
        double m = -std::numeric_limits<double>::infinity();
        bool any = false;
        for (index j = 0; j < S; ++j) {
          const auto ju = static_cast<std::size_t>(j);
          vis[ju] =
              structurally_visible(opt, b, i, j, L, S) && (!opt.allow || opt.allow(b, h, i, j));
          if (!vis[ju]) continue;
          const QT* qi = q.at(b, i, h, 0);
          const KT* kj = k.at(b, j, hk, 0);
          double dot = 0.0;
          for (index d = 0; d < Dqk; ++d)
            dot += to_double(qi[d * q.strides[3]]) * to_double(kj[d * k.strides[3]]);
          double x = dot * scale;
          if (opt.softcap > 0.0) x = opt.softcap * std::tanh(x / opt.softcap);
          if (!opt.alibi_slopes.empty()) {
            const index diag = opt.causal == attn::causal::top_left ? i : i + S - L;
            x -= opt.alibi_slopes[static_cast<std::size_t>(h)] *
                 std::fabs(static_cast<double>(diag - j));
          }
          if (opt.score_mod) x = opt.score_mod(b, h, i, j, x);
          s[ju] = x + (opt.bias ? opt.bias(b, h, i, j) : 0.0);
          if (s[ju] == -std::numeric_limits<double>::infinity()) {
            vis[ju] = 0;  // an additive -inf masks the key
            continue;
          }
          any = true;
          if (s[ju] > m) m = s[ju];
        }
        const bool has_sink = !opt.sinks.empty();
        const double sink = has_sink ? opt.sinks[static_cast<std::size_t>(h)] : 0.0;
        if (!any) {  // output stays 0; LSE -inf, or the sink's
          if (has_sink) r.l(b, h, i) = sink;
          continue;
        }
        if (has_sink && sink > m) m = sink;
        double sum = has_sink ? std::exp(sink - m) : 0.0;
        for (index j = 0; j < S; ++j) {
          const auto ju = static_cast<std::size_t>(j);
          if (vis[ju]) sum += std::exp(s[ju] - m);
        }
        r.l(b, h, i) = m + std::log(sum);
        for (index j = 0; j < S; ++j) {
          const auto ju = static_cast<std::size_t>(j);
          if (!vis[ju]) continue;
          const double p = std::exp(s[ju] - m) / sum;
          const VT* vj = v.at(b, j, hk, 0);
          for (index d = 0; d < Dv; ++d) r.o(b, i, h, d) += p * to_double(vj[d * v.strides[3]]);
        }
      }
    }
  return r;
}

}  // namespace attn_ref
