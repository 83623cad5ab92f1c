// tests/reference/mla_reference.hpp: DeepSeek multi-head latent attention
// in fp64, written from the equations (the file comment of attn/mla.hpp and
// DeepSeek's reference inference code): expanded per-head keys and values,
// one softmax per query row, no caching, no absorption, no tiling. Also
// YaRN's frequencies and DeepSeek's softmax scale from their closed forms.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <vector>

namespace attn_ref {

using index = std::ptrdiff_t;

struct mla_shape {
  index dim, heads, q_lora_rank, rank, nope, rope, v;
  double eps = 1e-6;
  index qk() const { return nope + rope; }
};

/// Weights in double, row-major, [out, in] as nn.Linear.
struct mla_params {
  std::vector<double> wq, wq_a, q_norm, wq_b, wkv_a, kv_norm, wkv_b, wo;
};

/// YaRN inverse frequencies from the closed form, evaluated in long double.
inline std::vector<double> yarn_inv_freq(index dim, double theta, double factor,
                                         index original_seq_len, double beta_fast,
                                         double beta_slow) {
  using ld = long double;
  const ld pi = 3.141592653589793238462643383279502884L;
  auto corr = [&](ld turns) {
    // The pair index whose wavelength 2π/f_i fits `turns` times in the
    // original context: f_i = theta^(-2i/dim) = 2π turns / original_seq_len.
    return static_cast<ld>(dim) *
           std::log(static_cast<ld>(original_seq_len) / (turns * 2 * pi)) /
           (2 * std::log(static_cast<ld>(theta)));
  };
  const ld low = std::max<ld>(std::floor(corr(beta_fast)), 0);
  ld high = std::min<ld>(std::ceil(corr(beta_slow)), static_cast<ld>(dim - 1));
  if (high == low) high += 0.001L;
  std::vector<double> f(static_cast<std::size_t>(dim / 2));
  for (std::size_t i = 0; i < f.size(); ++i) {
    const ld base = std::pow(static_cast<ld>(theta), -2.0L * static_cast<ld>(i) / dim);
    ld ramp = (static_cast<ld>(i) - low) / (high - low);
    ramp = std::min<ld>(std::max<ld>(ramp, 0), 1);
    f[i] = static_cast<double>(base / factor * ramp + base * (1 - ramp));
  }
  return f;
}

/// y = W x for W [out, in].
inline std::vector<double> matvec(const std::vector<double>& w, index out, index in,
                                  const double* x) {
  std::vector<double> y(static_cast<std::size_t>(out), 0.0);
  for (index o = 0; o < out; ++o) {
    double s = 0.0;
    for (index i = 0; i < in; ++i) s += w[static_cast<std::size_t>(o * in + i)] * x[i];
    y[static_cast<std::size_t>(o)] = s;
  }
  return y;
}

inline void rms_norm(double* x, index n, const std::vector<double>& w, double eps) {
  double ss = 0.0;
  for (index i = 0; i < n; ++i) ss += x[i] * x[i];
  const double inv = 1.0 / std::sqrt(ss / static_cast<double>(n) + eps);
  for (index i = 0; i < n; ++i) x[i] *= inv * w[static_cast<std::size_t>(i)];
}

// Interleaved pairs (2i, 2i+1) rotated by pos · inv_freq[i].
inline void rope_interleaved(double* x, index rope, double pos, const std::vector<double>& f) {
  for (index i = 0; i < rope / 2; ++i) {
    const double a = x[2 * i], b = x[2 * i + 1];
    const double c = std::cos(pos * f[static_cast<std::size_t>(i)]);
    const double s = std::sin(pos * f[static_cast<std::size_t>(i)]);
    x[2 * i] = a * c - b * s;
    x[2 * i + 1] = a * s + b * c;
  }
}

/// The layer over one whole sequence of N tokens at positions 0..N-1, each
/// token seeing tokens 0..itself: x [N, dim] -> [N, dim].
inline std::vector<double> mla_forward(const mla_shape& s, const mla_params& p,
                                       const std::vector<double>& inv_freq, double scale,
                                       const std::vector<double>& x, index N) {
  const index H = s.heads, qk = s.qk();
  std::vector<std::vector<double>> q(static_cast<std::size_t>(N)), k(q.size()), v(q.size());
  for (index t = 0; t < N; ++t) {
    const double* xt = x.data() + t * s.dim;
    std::vector<double> qt;
    if (s.q_lora_rank == 0) {
      qt = matvec(p.wq, H * qk, s.dim, xt);
    } else {
      std::vector<double> a = matvec(p.wq_a, s.q_lora_rank, s.dim, xt);
      rms_norm(a.data(), s.q_lora_rank, p.q_norm, s.eps);
      qt = matvec(p.wq_b, H * qk, s.q_lora_rank, a.data());
    }
    for (index h = 0; h < H; ++h) rope_interleaved(qt.data() + h * qk + s.nope, s.rope, t, inv_freq);
    std::vector<double> kv = matvec(p.wkv_a, s.rank + s.rope, s.dim, xt);
    rms_norm(kv.data(), s.rank, p.kv_norm, s.eps);
    rope_interleaved(kv.data() + s.rank, s.rope, t, inv_freq);
    std::vector<double> up = matvec(p.wkv_b, H * (s.nope + s.v), s.rank, kv.data());
    std::vector<double> kt(static_cast<std::size_t>(H * qk)), vt(static_cast<std::size_t>(H * s.v));
    for (index h = 0; h < H; ++h) {
      for (index i = 0; i < s.nope; ++i) kt[h * qk + i] = up[h * (s.nope + s.v) + i];
      for (index i = 0; i < s.rope; ++i) kt[h * qk + s.nope + i] = kv[s.rank + i];
      for (index i = 0; i < s.v; ++i) vt[h * s.v + i] = up[h * (s.nope + s.v) + s.nope + i];
    }
    q[t] = qt;
    k[t] = kt;
    v[t] = vt;
  }
  std::vector<double> y(static_cast<std::size_t>(N * s.dim));
  std::vector<double> o(static_cast<std::size_t>(H * s.v)), w(static_cast<std::size_t>(N));
  for (index t = 0; t < N; ++t) {
    for (index h = 0; h < H; ++h) {
      double m = -INFINITY;
      for (index j = 0; j <= t; ++j) {
        double d = 0.0;
        for (index i = 0; i < qk; ++i) d += q[t][h * qk + i] * k[j][h * qk + i];
        w[j] = d * scale;
        m = std::max(m, w[j]);
      }
      double sum = 0.0;
      for (index j = 0; j <= t; ++j) sum += (w[j] = std::exp(w[j] - m));
      for (index i = 0; i < s.v; ++i) {
        double acc = 0.0;
        for (index j = 0; j <= t; ++j) acc += w[j] * v[j][h * s.v + i];
        o[h * s.v + i] = acc / sum;
      }
    }
    const std::vector<double> yt = matvec(p.wo, s.dim, H * s.v, o.data());
    std::copy(yt.begin(), yt.end(), y.begin() + t * s.dim);
  }
  return y;
}

}  // namespace attn_ref
