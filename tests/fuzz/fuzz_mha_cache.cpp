// tests/fuzz/fuzz_mha_cache.cpp: libFuzzer harness for the multi-head layer
// with its KV cache: attn::multi_head_attention (construction, forward over a
// cache, forward without one) and attn::kv_cache (append, attend, truncate,
// clear), in random sequences of calls that include overflowing and broken
// ones.
//
// The input decodes into: the cache's element type (float, bf16, half); the
// layer (embed dim, heads, GQA groups, head dim, biases, RoPE table and
// layout; sometimes a broken config or weight); a cache (sometimes of
// another shape); then up to 12 operations: prefill / decode / chunk
// forwards of T tokens (T may pass the capacity), direct appends with
// per-sequence counts, attends, truncates, clears, and cache-less forwards,
// each with options that are sometimes invalid.
//
// Invariants checked after every operation:
//  * a broken argument throws attn::error (nothing else, message in format),
//    a valid one does not throw;
//  * a call that throws leaves the cache exactly as it was: lengths, and
//    every byte of the K and V storage;
//  * a call that succeeds changes exactly what it should: lengths grow by
//    the tokens appended, and only the storage of positions
//    [old length, new length) of each sequence changes (attend changes
//    nothing, truncate and clear only lengths);
//  * outputs are written where they should be and nowhere else, and are
//    finite for finite inputs (whose projections are representable);
//  * on small layers with tame values, forward(x, cache) matches an fp64
//    reference computed from the layer's weights, the RoPE table and the
//    K/V the cache holds, and the K/V rows it appended are the rounded
//    projections of x.
//
// Error bounds: projections are fp32 dot products of n terms:
// |err| <= (n + 2)·eps·Σ|w·x| (+ RoPE's rounding, 4·eps·|x|). Scores then err
// by δ <= |scale|·Σ_d (|q_d|·|k_d|·(hd + 4)·eps + err(q_d)·|k_d|); the
// attention output by max|v|·(2·(e^{2δ} - 1) + (n_keys + 8)·eps); the output
// projection adds Σ_c |Wo_ec|·err(o_c) + (Hq·hd + 2)·eps·Σ_c|Wo_ec·o_c|. We
// allow 4x. Stored K/V: one rounding to the storage type on top of the
// projection's error: 2^-8 (bf16) / 2^-11 (half) / 2^-24 (float) relative.
#include <attn/kv_cache.hpp>
#include <attn/multi_head.hpp>
#include <attn/rope.hpp>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "fuzz_input.hpp"

namespace {

using namespace attn_fuzz;
using attn::index;
using matrix = attn::multi_head_attention::matrix;
using tensor3 = attn::tensor3;

// A projection y = W x + b in double with its fp32 error bound and
// Σ|terms| (to decide representability).
struct projected {
  std::vector<double> y, err;
  bool representable = true;
};
ATTN_FUZZ_NO_COVERAGE projected project(const attn::linear& l, const float* x) {
  projected p;
  const index out = l.weight.rows(), in = l.weight.cols();
  for (index r = 0; r < out; ++r) {
    double s = 0, sa = 0;
    for (index c = 0; c < in; ++c) {
      const double t = double(l.weight(r, c)) * x[c];
      s += t;
      sa += std::fabs(t);
    }
    if (l.bias.size()) s += l.bias[r], sa += std::fabs(double(l.bias[r]));
    p.representable = p.representable && sa < 1e37;
    p.y.push_back(s);
    p.err.push_back((in + 2) * eps32 * sa);
  }
  return p;
}

// RoPE on one head of a projection, in double, with the table's float
// cos/sin (what the kernel multiplies by).
ATTN_FUZZ_NO_COVERAGE void rope_head(const attn::rope_table& t, attn::rope_layout layout, index pos, double* v,
               double* err, index hd) {
  const index pairs = t.pairs();
  if (pairs == 0) return;
  (void)hd;
  const float* c = t.cos(pos);
  const float* s = t.sin(pos);
  for (index i = 0; i < pairs; ++i) {
    const index a = layout == attn::rope_layout::half_split ? i : 2 * i;
    const index b = layout == attn::rope_layout::half_split ? i + pairs : 2 * i + 1;
    const double x = v[a], y = v[b];
    v[a] = x * c[i] - y * s[i];
    v[b] = x * s[i] + y * c[i];
    const double e = std::max(err[a], err[b]) * std::max(1.0, t.mscale()) * 2;
    err[a] = e + 4 * eps32 * (std::fabs(x) + std::fabs(y)) * t.mscale();
    err[b] = err[a];
  }
}

template <class Storage>
struct cache_state {
  std::vector<index> lengths;
  std::vector<unsigned char> k, v;
};
template <class Storage>
ATTN_FUZZ_NO_COVERAGE cache_state<Storage> state_of(const attn::kv_cache<Storage>& c) {
  const std::size_t nk = static_cast<std::size_t>(c.batch() * c.capacity() * c.kv_heads() * c.head_dim());
  const std::size_t nv =
      static_cast<std::size_t>(c.batch() * c.capacity() * c.kv_heads() * c.v_head_dim());
  return {c.lengths(), snapshot(c.keys().data, nk), snapshot(c.values().data, nv)};
}

// The cache changed only in positions [before.lengths[b], after.lengths[b])
// of each sequence (nothing at all when `none` is set).
template <class Storage>
ATTN_FUZZ_NO_COVERAGE void check_cache_delta(const attn::kv_cache<Storage>& c, const cache_state<Storage>& before,
                       const cache_state<Storage>& after, const char* what) {
  const index B = c.batch(), cap = c.capacity(), H = c.kv_heads();
  auto region_ok = [&](const std::vector<unsigned char>& x, const std::vector<unsigned char>& y,
                       index dim) {
    const std::size_t row = static_cast<std::size_t>(H * dim) * sizeof(Storage);
    for (index b = 0; b < B; ++b)
      for (index t = 0; t < cap; ++t) {
        const bool may_change = t >= before.lengths[static_cast<std::size_t>(b)] &&
                                t < after.lengths[static_cast<std::size_t>(b)];
        if (may_change) continue;
        const std::size_t off = static_cast<std::size_t>(b * cap + t) * row;
        if (row && std::memcmp(x.data() + off, y.data() + off, row) != 0) return false;
      }
    return true;
  };
  check(region_ok(before.k, after.k, c.head_dim()),
        std::string(what) + ": the cache's key storage changed outside the appended positions");
  check(region_ok(before.v, after.v, c.v_head_dim()),
        std::string(what) + ": the cache's value storage changed outside the appended positions");
}

template <class Storage>
ATTN_FUZZ_NO_COVERAGE void expect_unchanged(const attn::kv_cache<Storage>& c, const cache_state<Storage>& before,
                      const char* what) {
  const cache_state<Storage> now = state_of(c);
  check(now.lengths == before.lengths, std::string(what) + ": cache lengths changed");
  check(now.k == before.k, std::string(what) + ": cache key bytes changed");
  check(now.v == before.v, std::string(what) + ": cache value bytes changed");
}

// The checks of a successful forward(x, cache): finite outputs for finite
// inputs; for small tame layers, the fp64 reference and the appended K/V
// rows. Not instrumented for coverage (fuzz_input.hpp).
template <class Storage>
ATTN_FUZZ_NO_COVERAGE void check_forward(const attn::mha_weights& w, const attn::mha_rope& rope,
                                         const attn::mha_options& opt, const tensor3& x,
                                         const tensor3& y, const attn::kv_cache<Storage>& cache,
                                         const cache_state<Storage>& before,
                                         const cache_state<Storage>& after, index group) {
  const index B = x.dimension(0), T = x.dimension(1), E = x.dimension(2);
  const index Hkv = cache.kv_heads(), hd = cache.head_dim(), Hq = Hkv * group;
  // Reference for small, tame layers; finiteness for finite ones.
  const bool weights_finite =
      all_finite(w.q.weight.data(), w.q.weight.size()) && all_finite(w.k.weight.data(), w.k.weight.size()) &&
      all_finite(w.v.weight.data(), w.v.weight.size()) && all_finite(w.o.weight.data(), w.o.weight.size()) &&
      all_finite(w.q.bias.data(), w.q.bias.size()) && all_finite(w.k.bias.data(), w.k.bias.size()) &&
      all_finite(w.v.bias.data(), w.v.bias.size()) && all_finite(w.o.bias.data(), w.o.bias.size());
  const bool weights_tame =
      all_tame(w.q.weight.data(), w.q.weight.size()) && all_tame(w.k.weight.data(), w.k.weight.size()) &&
      all_tame(w.v.weight.data(), w.v.weight.size()) && all_tame(w.o.weight.data(), w.o.weight.size()) &&
      all_tame(w.q.bias.data(), w.q.bias.size()) && all_tame(w.k.bias.data(), w.k.bias.size()) &&
      all_tame(w.v.bias.data(), w.v.bias.size()) && all_tame(w.o.bias.data(), w.o.bias.size());
  const double scale = opt.attention.scale ? double(*opt.attention.scale) : 1.0 / std::sqrt(double(hd));
  const auto keys = cache.keys();
  const auto values = cache.values();
  for (index b = 0; b < B; ++b) {
    const index n = after.lengths[static_cast<std::size_t>(b)];
    // Every cached row this sequence attends to must be finite and
    // tame for the checks below; rows of earlier calls may not be.
    bool cache_finite = true, cache_tame = true;
    double vmax = 0, kmax = 0;
    for (index j = 0; j < n; ++j)
      for (index h = 0; h < Hkv; ++h) {
        for (index d = 0; d < hd; ++d) {
          const float kx = static_cast<float>(*keys.at(b, j, h, d));
          const float vx = static_cast<float>(*values.at(b, j, h, d));
          cache_finite = cache_finite && std::isfinite(kx) && std::isfinite(vx);
          cache_tame = cache_tame && is_tame(kx) && std::fabs(vx) <= 1e4f;
          vmax = std::max(vmax, std::fabs(double(vx)));
          kmax = std::max(kmax, std::fabs(double(kx)));
        }
      }
    for (index t = 0; t < T; ++t) {
      const float* xt = &x(b, t, 0);
      const index pos = before.lengths[static_cast<std::size_t>(b)] + t;
      const projected pq = project(w.q, xt), pk = project(w.k, xt), pv = project(w.v, xt);
      const bool x_finite = all_finite(xt, E), x_tame = all_tame(xt, E);
      // Scores: the policy covers score terms q_d·k_d·scale·log2(e) that are
      // representable (terms of mixed signs that overflow give inf - inf);
      // a bound from the largest |q| (RoPE: up to sqrt(2) more) and |k|.
      double qmax = 0;
      for (double qx : pq.y) qmax = std::max(qmax, std::fabs(qx));
      const bool scores_ok = 1.5 * qmax * kmax * double(hd) * std::fabs(scale) * 1.45 < 3e38;
      const bool clean = weights_finite && x_finite && cache_finite && pq.representable &&
                         pk.representable && pv.representable && scores_ok;
      const float* yt = &y(b, t, 0);
      // (the output projection of finite attention outputs, which are
      // bounded by max|v|, is representable when Σ|Wo|·max|v| is)
      double wo_l1 = 0;
      for (index e = 0; e < E; ++e) {
        double r = 0;
        for (index c = 0; c < Hq * hd; ++c) r += std::fabs(double(w.o.weight(e, c)));
        wo_l1 = std::max(wo_l1, r * vmax + (w.o.bias.size() ? std::fabs(w.o.bias[e]) : 0.0));
      }
      // (values of any finite size: F4, the attention's fp32 accumulation
      // overflowing, is fixed)
      if (clean && wo_l1 < 1e37)
        for (index e = 0; e < E; ++e)
          check(std::isfinite(yt[e]), "forward(cache): finite inputs gave " +
                                          std::to_string(yt[e]) + " at b=" + std::to_string(b) +
                                          " t=" + std::to_string(t));
      if (!(clean && weights_tame && x_tame && cache_tame && E * hd * Hq <= 4096)) continue;
      // The appended K/V rows are the rounded projections (+ RoPE on K).
      std::vector<double> kr = pk.y, ke = pk.err, qr = pq.y, qe = pq.err;
      if (rope.table)
        for (index h = 0; h < Hkv; ++h)
          rope_head(*rope.table, rope.layout, pos, kr.data() + h * hd, ke.data() + h * hd, hd);
      if (rope.table)
        for (index h = 0; h < Hq; ++h)
          rope_head(*rope.table, rope.layout, pos, qr.data() + h * hd, qe.data() + h * hd, hd);
      for (index h = 0; h < Hkv; ++h)
        for (index d = 0; d < hd; ++d) {
          const std::size_t i = static_cast<std::size_t>(h * hd + d);
          const double ks = static_cast<float>(*keys.at(b, pos, h, d));
          const double vs = static_cast<float>(*values.at(b, pos, h, d));
          const double u = storage_unit<Storage>();
          check(std::fabs(ks - kr[i]) <= 4 * (u * std::fabs(kr[i]) + ke[i]) + 1e-30 + 6e-8,
                "cached key differs from the projection at b=" + std::to_string(b) +
                    " pos=" + std::to_string(pos) + ": " + std::to_string(ks) + " vs " +
                    std::to_string(kr[i]));
          check(std::fabs(vs - pv.y[i]) <= 4 * (u * std::fabs(pv.y[i]) + pv.err[i]) + 6e-8,
                "cached value differs from the projection at b=" + std::to_string(b) +
                    " pos=" + std::to_string(pos) + ": " + std::to_string(vs) + " vs " +
                    std::to_string(pv.y[i]));
        }
      // Attention per head over the cache, then the output projection.
      std::vector<double> o(static_cast<std::size_t>(Hq * hd), 0.0), oerr(o.size(), 0.0);
      for (index h = 0; h < Hq; ++h) {
        const index hk = h / group;
        std::vector<index> vis;
        for (index j = 0; j < n; ++j) {
          if (j > pos) continue;  // bottom-right causal on the sequence's own length
          if (opt.attention.window) {
            const auto& win = *opt.attention.window;
            const index diag = win.align == attn::alignment::top_left ? t : pos;
            if (j < diag - win.left || j > diag + win.right) continue;
          }
          vis.push_back(j);
        }
        if (vis.empty()) continue;
        std::vector<double> s;
        double m = -std::numeric_limits<double>::infinity(), delta = 0;
        for (index j : vis) {
          double dot = 0, e = 0;
          for (index d = 0; d < hd; ++d) {
            const double kx = static_cast<float>(*keys.at(b, j, hk, d));
            const double qx = qr[static_cast<std::size_t>(h * hd + d)];
            dot += qx * kx;
            e += std::fabs(qx * kx) * (hd + 4) * eps32 +
                 qe[static_cast<std::size_t>(h * hd + d)] * std::fabs(kx);
          }
          s.push_back(dot * scale);
          m = std::max(m, dot * scale);
          delta = std::max(delta, e * std::fabs(scale) + 2 * eps32 * std::fabs(dot * scale));
        }
        double sum = 0;
        for (double& x2 : s) sum += (x2 = std::exp(x2 - m));
        double hv = 0;
        for (std::size_t m2 = 0; m2 < vis.size(); ++m2)
          for (index d = 0; d < hd; ++d) {
            const double vx = static_cast<float>(*values.at(b, vis[m2], hk, d));
            o[static_cast<std::size_t>(h * hd + d)] += s[m2] / sum * vx;
            hv = std::max(hv, std::fabs(vx));
          }
        for (index d = 0; d < hd; ++d)
          oerr[static_cast<std::size_t>(h * hd + d)] =
              hv * (2 * std::expm1(2 * delta) + (double(vis.size()) + 8) * eps32);
      }
      for (index e = 0; e < E; ++e) {
        double want = w.o.bias.size() ? w.o.bias[e] : 0.0, err = 0, sa = 0;
        for (index c = 0; c < Hq * hd; ++c) {
          want += double(w.o.weight(e, c)) * o[static_cast<std::size_t>(c)];
          err += std::fabs(double(w.o.weight(e, c))) * oerr[static_cast<std::size_t>(c)];
          sa += std::fabs(double(w.o.weight(e, c)) * o[static_cast<std::size_t>(c)]);
        }
        const double tol = 4 * (err + (Hq * hd + 2) * eps32 * sa) + 1e-5;
        check(std::fabs(yt[e] - want) <= tol,
              "forward(cache) differs from the fp64 reference at b=" + std::to_string(b) +
                  " t=" + std::to_string(t) + " e=" + std::to_string(e) + ": got " +
                  std::to_string(yt[e]) + ", want " + std::to_string(want) + ", tol " +
                  std::to_string(tol));
      }
    }
  }
}

tensor3 make_tensor3(input& in, index a, index b, index c) {
  tensor3 t(a, b, c);
  fill(in, t.data(), t.size());
  return t;
}

template <class Storage>
void run(input& in) {
  // --- the layer ----------------------------------------------------------------
  attn::mha_config cfg;
  const index Hkv = in.range(1, 3), group = in.range(1, 3), Hq = Hkv * group;
  cfg.num_heads = Hq;
  cfg.num_kv_heads = in.coin() ? Hkv : (group == 1 ? 0 : Hkv);
  cfg.embed_dim = in.range(1, 24);
  cfg.head_dim = in.coin() ? in.range(1, 12) : 0;
  if (cfg.head_dim == 0 && cfg.embed_dim % Hq != 0) cfg.embed_dim = Hq * in.range(1, 4);
  const index E = cfg.embed_dim;
  const index hd = cfg.head_dim ? cfg.head_dim : E / Hq;
  const bool cross_dims = in.chance(16);  // kdim / vdim != E: no cached forward works
  if (cross_dims) {
    cfg.kdim = in.range(1, 8);
    cfg.vdim = in.range(1, 8);
  }
  const index kdim = cfg.kdim ? cfg.kdim : E, vdim = cfg.vdim ? cfg.vdim : E;
  attn::mha_weights w;
  const bool biases = in.coin();
  auto make_linear = [&](index out, index inp) {
    attn::linear l;
    l.weight = matrix(out, inp);
    fill(in, l.weight.data(), l.weight.size());
    if (biases) {
      l.bias = Eigen::VectorXf(out);
      fill(in, l.bias.data(), l.bias.size());
    }
    return l;
  };
  w.q = make_linear(Hq * hd, E);
  w.k = make_linear(Hkv * hd, kdim);
  w.v = make_linear(Hkv * hd, vdim);
  w.o = make_linear(E, Hq * hd);
  attn::mha_rope rope;
  const index capacity = in.range(0, 20);
  if (in.coin()) {
    const index rot = 2 * in.range(0, hd / 2);
    const index maxp = in.chance(64) ? in.range(0, capacity + 2) : capacity + 8;
    rope.table = std::make_shared<attn::rope_table>(maxp, rot);
    rope.layout = in.coin() ? attn::rope_layout::half_split : attn::rope_layout::interleaved;
  }
  breakage lb;
  if (in.chance(20)) {
    switch (in.u8() % 8) {
      case 0: cfg.embed_dim = 0; lb.set("embed_dim 0", "config.embed_dim"); break;
      case 1: cfg.num_heads = 0; lb.set("num_heads 0", "config.num_heads"); break;
      case 2: cfg.num_kv_heads = Hq + 1; lb.set("num_kv_heads", "config.num_kv_heads"); break;
      case 3: cfg.head_dim = -1 - in.range(0, 3); lb.set("head_dim < 0", "config.head_dim"); break;
      case 4: w.q.weight = matrix::Zero(Hq * hd + 1, E); lb.set("weights.q rows", "weights.q"); break;
      case 5: w.o.weight = matrix::Zero(E, Hq * hd + 1); lb.set("weights.o cols", "weights.o"); break;
      case 6: w.k.bias = Eigen::VectorXf::Zero(Hkv * hd + 1); lb.set("weights.k bias", "weights.k"); break;
      default:
        rope.table = std::make_shared<attn::rope_table>(4, 2 * (hd / 2) + 2);
        lb.set("rotary_dim > head_dim", "rope.table->rotary_dim()");
        break;
    }
  }
  std::unique_ptr<attn::multi_head_attention> layer;
  std::string message;
  outcome got = call("multi_head_attention(config)", [&] {
    layer = std::make_unique<attn::multi_head_attention>(cfg, w, rope);
  }, &message);
  expect_outcome("multi_head_attention(config)", got, lb.valid, lb.why, message);
  if (!lb.valid) {
    check(message.find(lb.needle) != std::string::npos,
          "error for " + lb.why + " does not name \"" + lb.needle + "\": " + message);
    return;
  }

  // --- the cache ------------------------------------------------------------------
  const index B = in.chance(16) ? 0 : in.range(1, 3);
  index cB = B, cH = Hkv, cD = hd, cV = -1;
  const bool odd_cache = in.chance(12);
  if (odd_cache) {
    switch (in.u8() % 4) {
      case 0: cB = B + 1; break;
      case 1: cH = Hkv + 1; break;
      case 2: cD = hd + 1; break;
      default: cV = hd + 1; break;
    }
  }
  const bool cache_shape_ok = !odd_cache;
  attn::kv_cache<Storage> cache(cB, capacity, cH, cD, cV);
  if (verbose()) {
    auto vec = [](const char* n, const float* p, index c) {
      std::fprintf(stderr, "%s:", n);
      for (index i = 0; i < c && i < 32; ++i) std::fprintf(stderr, " %g", double(p[i]));
      std::fprintf(stderr, "\n");
    };
    vec("w.q", w.q.weight.data(), w.q.weight.size());
    vec("w.k", w.k.weight.data(), w.k.weight.size());
    vec("w.v", w.v.weight.data(), w.v.weight.size());
    vec("w.o", w.o.weight.data(), w.o.weight.size());
    vec("b.o", w.o.bias.data(), w.o.bias.size());
    std::fprintf(stderr, "storage bytes %zu\n", sizeof(Storage));
  }
  if (verbose())
    std::fprintf(stderr,
                 "E %ld Hq %ld Hkv %ld hd %ld kdim %ld vdim %ld biases %d rope %ld/%ld | cache "
                 "[%ld, %ld, %ld, %ld, %ld]\n",
                 long(E), long(Hq), long(Hkv), long(hd), long(kdim), long(vdim), int(biases),
                 rope.table ? long(rope.table->max_positions()) : -1L,
                 rope.table ? long(rope.table->rotary_dim()) : -1L, long(cB), long(capacity),
                 long(cH), long(cD), long(cache.v_head_dim()));

  // --- operations ---------------------------------------------------------------------
  const index n_ops = in.range(1, 12);
  for (index op_i = 0; op_i < n_ops && in.remaining() > 0; ++op_i) {
    const cache_state<Storage> before = state_of(cache);
    const std::uint8_t op = in.u8() % 8;
    if (verbose()) std::fprintf(stderr, "op %d, lengths:", op);
    for (index b = 0; verbose() && b < cB; ++b)
      std::fprintf(stderr, " %ld", long(cache.lengths()[static_cast<std::size_t>(b)]));
    if (verbose()) std::fprintf(stderr, "\n");

    if (op <= 2) {
      // forward(x, cache): prefill (T large), decode (T = 1) or a chunk.
      index T = op == 0 ? in.range(0, capacity + 2) : op == 1 ? 1 : in.range(0, 4);
      if (known::kv_cache_append_rejects_null_empty && B == 0) T = 0;  // steer around F10
      index xE = E;
      breakage br;
      if (in.chance(16)) xE = E + 1, br.set("x features", "x.dimension(2)");
      const tensor3 x = make_tensor3(in, B, T, xE);
      if (verbose()) {
        std::fprintf(stderr, "x [%ld, %ld, %ld]:", long(B), long(T), long(xE));
        for (index i = 0; i < x.size() && i < 64; ++i) std::fprintf(stderr, " %g", double(x.data()[i]));
        std::fprintf(stderr, "\n");
      }
      attn::mha_options opt;
      switch (in.u8() % 4) {
        case 0: break;
        case 1: opt.attention.scale = 2.0f * rng{in.u32()}.unit(); break;
        default: break;
      }
      if (in.chance(48)) {
        attn::sliding_window win;
        win.left = in.chance(64) ? attn::unbounded : in.range(0, capacity);
        win.right = in.chance(64) ? attn::unbounded : in.range(0, 3);
        win.align = in.coin() ? attn::alignment::top_left : attn::alignment::bottom_right;
        opt.attention.window = win;
      }
      opt.attention.num_threads = static_cast<int>(in.range(0, 2));
      if (br.valid && in.chance(40)) {
        // Options the cached forward refuses (each checked before the cache
        // grows, F9 fixed).
        const std::uint8_t which = in.u8() % 8;
        switch (which) {
          case 0: opt.weights = attn::weights_mode::averaged; br.set("weights", "opt.weights"); break;
          case 1: opt.weights = attn::weights_mode::per_head; br.set("weights", "opt.weights"); break;
          case 2: opt.attention.causal = attn::causal::top_left; br.set("causal", "attention.causal"); break;
          case 3: opt.attention.key_lengths.assign(static_cast<std::size_t>(B + 1), 0); br.set("key_lengths", "opt"); break;
          case 4: opt.attention.scale = std::numeric_limits<float>::quiet_NaN(); br.set("scale", "scale"); break;
          case 5: {
            attn::sliding_window win;
            win.left = -1;
            opt.attention.window = win;
            br.set("window", "window.left");
            break;
          }
          case 6: opt.attention.num_threads = -1; br.set("num_threads", "num_threads"); break;
          default: {
            static const bool mask_value = true;
            opt.attention.bool_mask.data = &mask_value;
            opt.attention.bool_mask.dims = {B, Hq, T, 1};
            br.set("bool_mask", "opt");
            break;
          }
        }
      }
      // The error model: every check of forward(x, cache) that this call
      // fails, in the layer's order (multi_head.hpp), all of them before the
      // cache grows:
      //  1. x.dimension(2) == embed_dim, and kdim == vdim == embed_dim
      //  2. the cache's batch, kv_heads and head dims match the layer
      //  3. opt.weights == none
      //  4. room for T more tokens in every sequence            } shapes
      //  5. RoPE (with a table): apply_rope's num_threads >= 0,  } matching
      //     then positions lengths[b] + [0, T) in the table      } only
      //  6. opt.attention: causal none, no key_lengths or dense masks, a
      //     finite scale, window sides >= 0, num_threads >= 0 (F9: checked
      //     here, before the append, also when B = 0 or T = 0).
      // The layer reports the first one it meets; the harness accepts any
      // that fails (the order is the layer's business), so the message must
      // name one of these, and a failed call must leave the cache as it was.
      std::vector<std::pair<std::string, std::string>> fails;  // (why, needle)
      if (xE != E) fails.emplace_back("x features", "x.dimension(2)");
      if (kdim != E || vdim != E) fails.emplace_back("kdim/vdim != embed_dim", "x.dimension(2)");
      if (!cache_shape_ok) fails.emplace_back("cache of another shape", "cache");
      if (!br.valid && br.why == "weights") fails.emplace_back(br.why, br.needle);
      if (fails.empty()) {  // 4 and 5 assume shapes that match
        for (index b = 0; b < B; ++b)
          if (cache.lengths()[static_cast<std::size_t>(b)] + T > capacity) {
            fails.emplace_back("cache overflow", "cache");
            break;
          }
        if (rope.table) {
          if (opt.attention.num_threads < 0) fails.emplace_back("num_threads", "num_threads");
          const index maxp = rope.table->max_positions();
          for (index b = 0; b < B; ++b) {
            const index off = cache.lengths()[static_cast<std::size_t>(b)];
            if (!(T == 0 || (T <= maxp && off <= maxp - T))) {
              fails.emplace_back("RoPE positions", "position_offsets");
              break;
            }
          }
        }
      }
      if (!br.valid && br.why != "weights") fails.emplace_back(br.why, br.needle);  // 6
      breakage expect;
      std::string whys;
      for (const auto& f : fails) whys += (whys.empty() ? "" : ", ") + f.first;
      if (!fails.empty()) expect.set(whys, fails.front().second);
      tensor3 y;
      got = call("multi_head_attention::forward(cache)", [&] { y = layer->forward(x, cache, opt); },
                 &message);
      expect_outcome("multi_head_attention::forward(cache)", got, expect.valid, expect.why, message);
      if (!expect.valid) {
        bool named = false;
        for (const auto& f : fails) named = named || message.find(f.second) != std::string::npos;
        check(named, "error for " + expect.why + " names none of them: " + message);
        expect_unchanged(cache, before, "failed forward(cache)");
        continue;
      }
      const cache_state<Storage> after = state_of(cache);
      for (index b = 0; b < B; ++b)
        check(after.lengths[static_cast<std::size_t>(b)] == before.lengths[static_cast<std::size_t>(b)] + T,
              "forward(cache) did not grow the length by T");
      check_cache_delta(cache, before, after, "forward(cache)");
      check(y.dimension(0) == B && y.dimension(1) == T && y.dimension(2) == E,
            "forward(cache) output has the wrong shape");

      check_forward<Storage>(w, rope, opt, x, y, cache, before, after, group);
    } else if (op == 3) {
      // append(k_new, v_new, counts), directly.
      const index T = in.range(0, 5);
      const index vD = cache.v_head_dim();
      auto kn = lay_out<float, 4>(in, {cB, T, cH, cD}, layout_use::input,
                                  std::numeric_limits<float>::quiet_NaN());
      auto vn = lay_out<float, 4>(in, {cB, T, cH, vD}, layout_use::input,
                                  std::numeric_limits<float>::quiet_NaN());
      if (known::kv_cache_append_rejects_null_empty && T > 0) {  // steer around F10
        static float dummy = 0.0f;
        if (!kn.view.data) kn.view.data = &dummy;
        if (!vn.view.data) vn.view.data = &dummy;
      }
      fill(in, kn);
      fill(in, vn);
      std::vector<index> counts;
      if (in.coin())
        for (index b = 0; b < cB; ++b) counts.push_back(in.range(0, T));
      attn::strided<const float, 4> kv = kn.view, vv = vn.view;
      breakage br;
      if (in.chance(48)) {
        switch (in.u8() % 6) {
          case 0: kv.dims[2] = cH + 1; br.set("k_new dims", "k_new"); break;
          case 1: vv.dims[3] = vD + 1; br.set("v_new dims", "v_new"); break;
          case 2:
            if (cD > 1) kv.strides[3] = 2, br.set("k_new stride", "strides[3]");
            break;
          case 3: counts.assign(static_cast<std::size_t>(cB + 1), 0); br.set("counts size", "counts.size()"); break;
          case 4:
            if (cB > 0) {
              counts.assign(static_cast<std::size_t>(cB), 0);
              counts[static_cast<std::size_t>(in.range(0, cB - 1))] = in.coin() ? T + 1 : -1;
              br.set("counts value", "counts[");
            }
            break;
          default:
            if (T > 0 && cB > 0) kv.data = nullptr, br.set("null k_new", "k_new/v_new");
            break;
        }
      }
      if (br.valid)
        for (index b = 0; b < cB && br.valid; ++b) {
          const index nb = counts.empty() ? T : counts[static_cast<std::size_t>(b)];
          if (cache.lengths()[static_cast<std::size_t>(b)] + nb > capacity)
            br.set("overflow", "sequence " + std::to_string(b));
        }
      got = call("kv_cache::append", [&] { cache.append(kv, vv, counts); }, &message);
      expect_outcome("kv_cache::append", got, br.valid, br.why, message);
      if (!br.valid) {
        check(message.find(br.needle) != std::string::npos,
              "error for " + br.why + " does not name \"" + br.needle + "\": " + message);
        expect_unchanged(cache, before, "failed append");
        continue;
      }
      const cache_state<Storage> after = state_of(cache);
      for (index b = 0; b < cB; ++b) {
        const index nb = counts.empty() ? T : counts[static_cast<std::size_t>(b)];
        const index l0 = before.lengths[static_cast<std::size_t>(b)];
        check(after.lengths[static_cast<std::size_t>(b)] == l0 + nb, "append: wrong new length");
        // The new rows are the inputs rounded to the storage type.
        for (index t = 0; t < nb; ++t)
          for (index h = 0; h < cH; ++h) {
            for (index d = 0; d < cD; ++d) {
              const Storage want = static_cast<Storage>(*kv.at(b, t, h, d));
              const Storage have = *cache.keys().at(b, l0 + t, h, d);
              check(std::memcmp(&want, &have, sizeof(Storage)) == 0 ||
                        (std::isnan(static_cast<float>(want)) && std::isnan(static_cast<float>(have))),
                    "append: stored key is not the rounded input");
            }
            for (index d = 0; d < vD; ++d) {
              const Storage want = static_cast<Storage>(*vv.at(b, t, h, d));
              const Storage have = *cache.values().at(b, l0 + t, h, d);
              check(std::memcmp(&want, &have, sizeof(Storage)) == 0 ||
                        (std::isnan(static_cast<float>(want)) && std::isnan(static_cast<float>(have))),
                    "append: stored value is not the rounded input");
            }
          }
      }
      check_cache_delta(cache, before, after, "append");
    } else if (op == 4) {
      // attend(q, out, opt, counts): reads the cache, never changes it.
      const index T = in.range(0, 4);
      const index qH = cH * group, vD = cache.v_head_dim();
      auto q = lay_out<float, 4>(in, {cB, T, qH, cD}, layout_use::input,
                                 std::numeric_limits<float>::quiet_NaN());
      auto out = lay_out<float, 4>(in, {cB, T, qH, vD}, layout_use::output, sentinel());
      fill(in, q);
      std::vector<index> counts;
      const bool use_counts = in.coin();
      for (index b = 0; use_counts && b < cB; ++b)
        counts.push_back(in.range(0, std::min(T, cache.lengths()[static_cast<std::size_t>(b)])));
      attn::sdpa_options opt;
      laid_out<float, 3> lse;
      if (in.coin()) {
        lse = lay_out<float, 3>(in, {cB, qH, T}, layout_use::output, sentinel());
        opt.lse = lse.view;
      }
      attn::strided<const float, 4> qv = q.view;
      attn::strided<float, 4> ov = out.view;
      breakage br;
      for (index b = 0; b < cB && br.valid; ++b) {
        const index nb = use_counts ? counts[static_cast<std::size_t>(b)] : T;
        if (nb > cache.lengths()[static_cast<std::size_t>(b)]) br.set("counts past lengths", "counts");
      }
      if (br.valid && in.chance(48)) {
        switch (in.u8() % 8) {
          case 0: qv.dims[3] = cD + 1; br.set("q head_dim", "head_dim"); break;
          case 1: qv.dims[0] = cB + 1; br.set("q batch", "batch"); break;
          case 2: opt.causal = attn::causal::top_left; br.set("causal", "opt.causal"); break;
          case 3: opt.key_lengths.assign(static_cast<std::size_t>(cB + 1), 0); br.set("key_lengths", "opt"); break;
          case 4:
            if (!known::kv_cache_attend_unchecked_out && cB > 0)
              counts.assign(static_cast<std::size_t>(cB + 1), 0), br.set("counts size", "counts");
            break;
          case 5:
            if (!known::kv_cache_attend_unchecked_out && cB > 1 && T > 0)
              ov.dims[0] = cB - 1, br.set("out batch", "out");
            break;
          case 6:
            if (!known::kv_cache_attend_unchecked_out && cB > 0 && T > 0)
              ov.dims[1] = T - 1, br.set("out seq", "out");
            break;
          default: opt.num_threads = -1; br.set("num_threads", "num_threads"); break;
        }
      }
      // num_threads is only seen by the attention of a sequence with rows.
      if (!br.valid && br.why == "num_threads") {
        bool any = false;
        for (index b = 0; b < cB; ++b) any = any || (use_counts ? counts[static_cast<std::size_t>(b)] : T) > 0;
        if (!any) br = breakage{};
      }
      // A cache of another shape than the layer's: q/out match the cache,
      // which is all attend sees.
      got = call("kv_cache::attend", [&] { cache.attend(qv, ov, opt, counts); }, &message);
      expect_outcome("kv_cache::attend", got, br.valid, br.why, message);
      expect_unchanged(cache, before, "attend");
      if (!br.valid) {
        check(message.find(br.needle) != std::string::npos,
              "error for " + br.why + " does not name \"" + br.needle + "\": " + message);
        continue;
      }
      // Rows t < counts[b] written, the others untouched.
      for (index b = 0; b < cB; ++b) {
        const index nb = use_counts ? counts[static_cast<std::size_t>(b)] : T;
        for (index t = 0; t < T; ++t)
          for (index h = 0; h < qH; ++h) {
            const float* o = ov.at(b, t, h, 0);
            for (index d = 0; d < vD; ++d)
              check(is_sentinel(o[d]) == (t >= nb), "attend: row t=" + std::to_string(t) +
                                                        (t >= nb ? " past counts written"
                                                                 : " not written"));
            if (!opt.lse.empty())
              check(is_sentinel(*opt.lse.at(b, h, t)) == (t >= nb), "attend: LSE rows wrong");
          }
      }
    } else if (op == 5) {
      // truncate(b, length)
      index b = cB > 0 ? in.range(0, cB - 1) : 0;
      index len = cB > 0 ? in.range(0, cache.lengths()[static_cast<std::size_t>(b)]) : 0;
      breakage br;
      if (cB == 0 || in.chance(64)) {
        switch (in.u8() % 3) {
          case 0: b = cB + in.range(0, 2); br.set("b", ": b:"); break;
          case 1: b = -1; br.set("b", ": b:"); break;
          default:
            if (cB > 0) len = cache.lengths()[static_cast<std::size_t>(b)] + 1 + in.range(0, 3), br.set("length", "length");
            else b = 0, br.set("b", ": b:");
            break;
        }
      }
      got = call("kv_cache::truncate", [&] { cache.truncate(b, len); }, &message);
      expect_outcome("kv_cache::truncate", got, br.valid, br.why, message);
      if (!br.valid) {
        expect_unchanged(cache, before, "failed truncate");
        continue;
      }
      const cache_state<Storage> after = state_of(cache);
      check(after.lengths[static_cast<std::size_t>(b)] == len, "truncate: wrong length");
      check(after.k == before.k && after.v == before.v, "truncate changed stored bytes");
    } else if (op == 6) {
      cache.clear();
      const cache_state<Storage> after = state_of(cache);
      for (index l : after.lengths) check(l == 0, "clear left a length");
      check(after.k == before.k && after.v == before.v, "clear changed stored bytes");
    } else {
      // forward without a cache: cross-attention with masks and weights.
      const index L = in.range(0, 6), S = in.range(0, 8);
      const tensor3 xq = make_tensor3(in, B, L, E), xk = make_tensor3(in, B, S, kdim),
                    xv = make_tensor3(in, B, S, vdim);
      attn::mha_options opt;
      static constexpr attn::causal causals[] = {attn::causal::none, attn::causal::top_left,
                                                 attn::causal::bottom_right};
      opt.attention.causal = in.pick(causals);
      if (B > 0 && in.coin())
        for (index b = 0; b < B; ++b) opt.attention.key_lengths.push_back(in.range(0, S));
      static constexpr attn::weights_mode modes[] = {attn::weights_mode::none,
                                                     attn::weights_mode::averaged,
                                                     attn::weights_mode::per_head};
      opt.weights = in.pick(modes);
      opt.position_offset = in.range(0, 4);
      bool valid = true;
      if (rope.table) {
        const index maxp = rope.table->max_positions();
        auto ok = [&](index seq) {
          return seq == 0 || (seq <= maxp && opt.position_offset <= maxp - seq);
        };
        valid = ok(L) && ok(S);
      }
      attn::tensor4 wts;
      const bool pass_weights = opt.weights == attn::weights_mode::none ? in.coin() : !in.chance(24);
      if (opt.weights != attn::weights_mode::none && !pass_weights) valid = false;
      tensor3 y;
      got = call("multi_head_attention::forward", [&] {
        y = layer->forward(xq, xk, xv, opt, pass_weights ? &wts : nullptr);
      }, &message);
      expect_outcome("multi_head_attention::forward", got, valid, "RoPE positions or weights", message);
      expect_unchanged(cache, before, "forward without cache");
      if (!valid) continue;
      check(y.dimension(0) == B && y.dimension(1) == L && y.dimension(2) == E,
            "forward: output has the wrong shape");
      if (opt.weights != attn::weights_mode::none) {
        const index Hw = opt.weights == attn::weights_mode::per_head ? Hq : 1;
        check(wts.dimension(0) == B && wts.dimension(1) == Hw && wts.dimension(2) == L &&
                  wts.dimension(3) == S,
              "forward: weights have the wrong shape");
        // Each row sums to 1 (or is all 0 when nothing is visible) when its
        // inputs are finite.
        const bool finite_inputs = all_finite(xq.data(), xq.size()) &&
                                   all_finite(xk.data(), xk.size()) &&
                                   all_finite(w.q.weight.data(), w.q.weight.size()) &&
                                   all_finite(w.k.weight.data(), w.k.weight.size()) &&
                                   all_tame(xq.data(), xq.size()) && all_tame(xk.data(), xk.size()) &&
                                   all_tame(w.q.weight.data(), w.q.weight.size()) &&
                                   all_tame(w.k.weight.data(), w.k.weight.size()) &&
                                   all_tame(w.q.bias.data(), w.q.bias.size()) &&
                                   all_tame(w.k.bias.data(), w.k.bias.size());
        for (index b = 0; finite_inputs && b < B; ++b)
          for (index h = 0; h < Hw; ++h)
            for (index i = 0; i < L; ++i) {
              double s = 0;
              for (index j = 0; j < S; ++j) s += wts(b, h, i, j);
              check(std::fabs(s - 1) <= 1e-4 || s == 0, "forward: weights row sums to " + std::to_string(s));
            }
      }
    }
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
