// tests/reference/attention_weights_reference.hpp: the attention
// probabilities softmax(Q Kᵀ · scale + masks) the obvious way, in fp64,
// written independently of attn's kernel: every row builds its full list of
// scores in double and takes a two-pass max-subtracted softmax; visibility
// comes from the conventions of docs/design.md as sdpa_reference.hpp states
// them (its options and structurally_visible). Finite scores only: the
// saturation rules for +inf are tested directly in test_nan_policy.cpp.
#pragma once

#include <cmath>
#include <cstddef>
#include <limits>
#include <stdexcept>
#include <vector>

#include "sdpa_reference.hpp"

namespace attn_ref {

/// Probabilities [B, Hq, L, S] and their column sums [B, Hq, S], row-major,
/// in double.
struct weights_result {
  index B = 0, Hq = 0, L = 0, S = 0;
  std::vector<double> probs;
  std::vector<double> column_sums;
  double p(index b, index h, index i, index j) const {
    return probs[static_cast<std::size_t>(((b * Hq + h) * L + i) * S + j)];
  }
  double column_sum(index b, index h, index j) const {
    return column_sums[static_cast<std::size_t>((b * Hq + h) * S + j)];
  }
};

/// q [B, L, Hq, Dqk], k [B, S, Hkv, Dqk]. A row that sees no key is all 0.
template <class QT, class KT>
weights_result attention_weights(const attn::strided<QT, 4>& q, const attn::strided<KT, 4>& k,
                                 const options& opt = {}) {
  const index B = q.dims[0], L = q.dims[1], Hq = q.dims[2], Dqk = q.dims[3];
  const index S = k.dims[1], Hkv = k.dims[2];
  if (k.dims[0] != B || k.dims[3] != Dqk || Hkv < 1 || Hq % Hkv != 0)
    throw std::logic_error("attn_ref::attention_weights: inconsistent shapes (test bug)");
  weights_result r;
  r.B = B;
  r.Hq = Hq;
  r.L = L;
  r.S = S;
  r.probs.assign(static_cast<std::size_t>(B * Hq * L * S), 0.0);
  r.column_sums.assign(static_cast<std::size_t>(B * Hq * S), 0.0);
  const double scale = opt.scale ? *opt.scale : 1.0 / std::sqrt(static_cast<double>(Dqk));
  constexpr double minus_inf = -std::numeric_limits<double>::infinity();
  std::vector<double> s(static_cast<std::size_t>(S));
  for (index b = 0; b < B; ++b)
    for (index h = 0; h < Hq; ++h)
      for (index i = 0; i < L; ++i) {
        double m = minus_inf;
        for (index j = 0; j < S; ++j) {
          double& x = s[static_cast<std::size_t>(j)];
          x = minus_inf;
          if (!structurally_visible(opt, b, i, j, L, S) || (opt.allow && !opt.allow(b, h, i, j)))
            continue;
          const QT* qi = q.at(b, i, h, 0);
          const KT* kj = k.at(b, j, h / (Hq / Hkv), 0);
          double dot = 0.0;
          for (index d = 0; d < Dqk; ++d)
            dot += to_double(qi[d * q.strides[3]]) * to_double(kj[d * k.strides[3]]);
          x = dot * scale + (opt.bias ? opt.bias(b, h, i, j) : 0.0);
          if (x > m) m = x;
        }
        if (m == minus_inf) continue;  // nothing visible: the row stays 0
        double sum = 0.0;
        for (index j = 0; j < S; ++j) sum += std::exp(s[static_cast<std::size_t>(j)] - m);
        for (index j = 0; j < S; ++j) {
          const double p = std::exp(s[static_cast<std::size_t>(j)] - m) / sum;
          r.probs[static_cast<std::size_t>(((b * Hq + h) * L + i) * S + j)] = p;
          r.column_sums[static_cast<std::size_t>((b * Hq + h) * S + j)] += p;
        }
      }
  return r;
}

}  // namespace attn_ref
