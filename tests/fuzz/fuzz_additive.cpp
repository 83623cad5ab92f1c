// tests/fuzz/fuzz_additive.cpp: libFuzzer harness for attn::additive_attention
// (Bahdanau's additive score, Luong's dot and general): construction from
// weights, project_keys, and both forward overloads on strided views.
//
// The input decodes into: the score function and its weights (projections
// present or identity, bias, weight normalisation with g), shapes including
// zero-length B, L, S, layouts with gaps, broadcast or reversed strides,
// values (tame, NaN, +-inf, 1e30, FLT_MAX, denormals, ...), key lengths, key
// and query masks, an attention-weights output; and for a quarter of inputs
// one broken weight or argument (among them an output aliasing an input or
// the other output).
//
// Invariants checked on every call:
//  * a broken weight or argument throws attn::error (nothing else, message in
//    format); a valid one does not throw;
//  * every output element (and weight) is written, nothing outside the views;
//  * a row with no visible key gives output 0 and weights 0; a query whose
//    query_mask entry is false gives output 0;
//  * a row whose inputs (its query, the visible keys and values, the weights
//    of the layer) are finite gives a finite output and finite weights, of
//    any finite size: projection sums and scores that pass FLT_MAX are
//    taken in double by the library and saturate (issue 18 item 7; one
//    input in 12 puts query and key entries near ±FLT_MAX / 2 so that they
//    do), values up to FLT_MAX;
//  * on small problems, rows whose query, keys and layer weights are tame
//    and whose values are finite (any size) match the fp64 reference
//    (tests/reference/additive_reference.hpp).
//
// Error bound: the reference returns E, a bound on each row's fp32 score
// error that assumes random-sign rounding (sqrt(n)·eps per n-term dot
// product). Fuzz inputs can be adversarial (all terms of one sign), so we
// take the worst case, E·sqrt(n) with n the longest dot product, and then
// test_additive.cpp's bounds with a factor 4: weights |a - a_ref| <=
// 4·(2·E·a_ref + 1e-6), out |c - c_ref| <= 4·((2·E + 1e-6 + (S + 4)·eps)·
// max|V|) + 1e-6.
#include <attn/additive.hpp>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "../reference/additive_reference.hpp"
#include "fuzz_alias.hpp"
#include "fuzz_input.hpp"

namespace {

using namespace attn_fuzz;
using attn::index;
using matrix = attn::additive_weights::matrix;

matrix make_matrix(input& in, index rows, index cols) {
  matrix m(rows, cols);
  fill(in, m.data(), m.size());
  return m;
}
Eigen::VectorXf make_vector(input& in, index n) {
  Eigen::VectorXf v(n);
  fill(in, v.data(), v.size());
  return v;
}

// A [B, X] bool mask laid out without negative strides, with optional
// broadcasting (stride 0) on either dim.
struct mask2 {
  laid_out<bool, 2> base;
  attn::strided<const bool, 2> view;
};
mask2 make_mask(input& in, index B, index X) {
  mask2 m;
  const std::uint8_t bc = in.u8();
  const std::array<index, 2> dims{B, X};
  std::array<index, 2> base_dims = dims;
  for (int r = 0; r < 2; ++r)
    if (bc & (1 << r)) base_dims[r] = std::min<index>(dims[r], 1);
  m.base = lay_out<bool, 2>(in, base_dims, layout_use::output, false);
  const std::uint8_t density = in.u8();
  rng g{in.u32()};
  for (index i = 0; i < m.base.size(); ++i) m.base[i] = (g.next() & 0xff) <= density;
  m.view = m.base.view;
  m.view.dims = dims;
  for (int r = 0; r < 2; ++r)
    if (base_dims[r] != dims[r]) m.view.strides[r] = 0;
  static bool dummy = false;
  if (m.view.data == nullptr) m.view.data = &dummy;
  return m;
}

void run(input& in) {
  // --- the layer ---------------------------------------------------------------
  static constexpr attn::score_function kinds[] = {
      attn::score_function::additive, attn::score_function::additive, attn::score_function::dot,
      attn::score_function::general};
  attn::additive_weights w;
  w.score = in.pick(kinds);
  const index Da = in.range(1, 24);
  index Dq = in.range(1, 24), Dk = in.range(1, 24);
  if (w.score == attn::score_function::additive) {
    if (in.coin()) w.w_q = make_matrix(in, Da, Dq);
    else Dq = Da;
    if (in.coin()) w.w_k = make_matrix(in, Da, Dk);
    else Dk = Da;
    if (in.coin()) w.bias = make_vector(in, Da);
    w.v = make_vector(in, Da);
    if (in.chance(64)) {
      w.normalize = true;
      w.g = in.coin() ? special(in.u8()) : 2.0f * rng{in.u32()}.unit();
    }
  } else if (w.score == attn::score_function::dot) {
    Dq = Dk;
  } else {
    w.w_k = make_matrix(in, Dq, Dk);
  }
  breakage wb;
  if (w.normalize) {
    double n2 = 0;
    for (index a = 0; a < w.v.size(); ++a) n2 += double(w.v[a]) * double(w.v[a]);
    if (!std::isfinite(w.g)) wb.set("normalize with g not finite", "weights.g");
    else if (!(n2 > 0 && std::isfinite(n2))) wb.set("normalize with |v| 0 or not finite", "weights.v");
  }
  if (wb.valid && in.chance(24)) {
    const bool additive = w.score == attn::score_function::additive;
    switch (in.u8() % 8) {
      case 0:
        if (additive) w.v.resize(0), wb.set("v empty", "weights.v");
        else w.v = Eigen::VectorXf::Ones(2), wb.set("v given", "weights.v");
        break;
      case 1:
        if (additive) w.w_q = matrix::Ones(Da + 1, Dq), wb.set("w_q rows", "weights.w_q");
        else w.w_q = matrix::Ones(2, 2), wb.set("w_q given", "weights.w_q");
        break;
      case 2:
        if (additive) w.w_k = matrix::Ones(Da + 1, Dk), wb.set("w_k rows", "weights.w_k");
        else if (w.score == attn::score_function::dot)
          w.w_k = matrix::Ones(2, 2), wb.set("w_k given", "weights.w_k");
        else w.w_k.resize(0, 0), wb.set("w_k missing", "weights.w_k");
        break;
      case 3:
        if (additive) w.bias = Eigen::VectorXf::Ones(Da + 1), wb.set("bias size", "weights.bias");
        else w.bias = Eigen::VectorXf::Ones(2), wb.set("bias given", "weights.bias");
        break;
      case 4:
        if (additive) {
          w.normalize = true;
          w.v.setZero();
          wb.set("normalize with |v| = 0", "weights.v");
        } else {
          w.normalize = true;
          wb.set("normalize given", "weights.normalize");
        }
        break;
      case 5:
        if (additive) {
          w.normalize = true;
          w.g = std::numeric_limits<float>::infinity();
          wb.set("g infinite", "weights.g");
        }
        break;
      default:
        w.score = static_cast<attn::score_function>(3 + in.range(0, 100));
        wb.set("score function out of range", "weights.score");
        break;
    }
  }
  const attn::additive_weights w_copy = w;
  std::unique_ptr<attn::additive_attention> layer;
  std::string message;
  const outcome made = call("additive_attention(weights)", [&] {
    layer = std::make_unique<attn::additive_attention>(w);
  }, &message);
  expect_outcome("additive_attention(weights)", made, wb.valid, wb.why, message);
  if (!wb.valid) {
    check(message.find(wb.needle) != std::string::npos,
          "error for " + wb.why + " does not name \"" + wb.needle + "\": " + message);
    return;
  }
  const bool dot = w.score == attn::score_function::dot;
  const bool additive = w.score == attn::score_function::additive;

  // --- one call ----------------------------------------------------------------
  // big: longer rows; among those, a decoder step over a source long
  // enough to split its keys into chunks (attn::detail::additive::key_chunks), or
  // enough query rows for tasks of attn::detail::additive::max_task_rows.
  const bool big = in.chance(32);
  const int shape = big ? static_cast<int>(in.range(0, 3)) : 0;  // 1: long source, 2: long run
  const index B = in.chance(16) ? 0 : in.range(1, 2);
  const index L = in.chance(16) ? 0
                  : shape == 1  ? in.range(1, 3)
                  : shape == 2  ? in.range(128, 140)
                                : in.range(1, big ? 40 : 9);
  const index S = in.chance(16) ? 0
                  : shape == 1  ? in.range(513, 1600)
                  : shape == 2  ? in.range(1, 20)
                                : in.range(1, big ? 300 : 40);
  const bool values_absent = in.chance(48);
  const index Dv = values_absent ? Dk : in.range(1, 16);
  auto q = lay_out<float, 3>(in, {B, L, Dq}, layout_use::input,
                             std::numeric_limits<float>::quiet_NaN());
  auto k = lay_out<float, 3>(in, {B, S, Dk}, layout_use::input,
                             std::numeric_limits<float>::quiet_NaN());
  laid_out<float, 3> v;
  if (!values_absent)
    v = lay_out<float, 3>(in, {B, S, Dv}, layout_use::input,
                          std::numeric_limits<float>::quiet_NaN());
  auto out = lay_out<float, 3>(in, {B, L, Dv}, layout_use::output, sentinel());
  fill(in, q);
  fill(in, k);
  if (!values_absent) fill(in, v);
  // Huge projection terms (issue 18 item 7): entries of FLT_MAX / 2 times
  // [1, 2) and random sign, so sums of two (W q + b, W k, q + k, q·k)
  // overflow fp32, often one side to +inf and the other to -inf.
  if (in.chance(21)) {
    rng g{in.u32()};
    const std::uint8_t share = in.u8();
    for (laid_out<float, 3>* t : {&q, &k})
      for (index e = 0; e < t->size(); ++e)
        if ((g.next() & 0xff) <= share) {
          const float u = g.unit();
          (*t)[e] = std::copysign(std::numeric_limits<float>::max() / 2 * (1.0f + std::fabs(u)), u);
        }
  }

  attn::additive_options opt;
  if (B > 0 && in.chance(64))
    for (index b = 0; b < B; ++b) opt.key_lengths.push_back(in.range(0, S));
  mask2 km, qm;
  if (in.chance(64)) {
    km = make_mask(in, B, S);
    opt.key_mask = km.view;
  }
  if (in.chance(48)) {
    qm = make_mask(in, B, L);
    opt.query_mask = qm.view;
  }
  laid_out<float, 3> wt;
  if (in.chance(96)) {
    wt = lay_out<float, 3>(in, {B, L, S}, layout_use::output, sentinel());
    opt.weights = wt.view;
  }
  opt.num_threads = static_cast<int>(in.range(0, 2));
  const bool cached = in.coin();
  if (verbose()) {
    std::fprintf(stderr, "score %d Da %ld Dq %ld Dk %ld Dv %ld w_q %ldx%ld w_k %ldx%ld bias %ld v %ld "
                 "normalize %d g %g | B %ld L %ld S %ld values_absent %d cached %d\n",
                 static_cast<int>(w.score), long(Da), long(Dq), long(Dk), long(Dv),
                 long(w.w_q.rows()), long(w.w_q.cols()), long(w.w_k.rows()), long(w.w_k.cols()),
                 long(w.bias.size()), long(w.v.size()), int(w.normalize), double(w.g), long(B),
                 long(L), long(S), int(values_absent), int(cached));
    auto vec = [](const char* n, const float* p, index c) {
      std::fprintf(stderr, "%s:", n);
      for (index i = 0; i < c && i < 64; ++i) std::fprintf(stderr, " %g", double(p[i]));
      std::fprintf(stderr, "\n");
    };
    vec("w_q", w.w_q.data(), w.w_q.size());
    vec("w_k", w.w_k.data(), w.w_k.size());
    vec("bias", w.bias.data(), w.bias.size());
    vec("v", w.v.data(), w.v.size());
    dump("query", q);
    dump("keys", k);
    if (!values_absent) dump("values", v);
  }

  attn::strided<const float, 3> qv = q.view, kv = k.view;
  attn::strided<const float, 3> vv = values_absent ? attn::strided<const float, 3>{} : v.cview();
  attn::strided<float, 3> ov = out.view;
  breakage br;
  auto no_zero = [](const std::array<index, 3>& d) { return d[0] != 0 && d[1] != 0 && d[2] != 0; };
  std::unique_ptr<attn::additive_attention> other;
  if (in.chance(64)) {
    switch (in.u8() % 24) {
      case 0: qv.dims[2] = Dq + 1; br.set("query d_q", "query"); break;
      case 1: qv.dims[0] = B + 1; br.set("query batch", "query"); break;
      case 2:
        if (!dot) kv.dims[2] = Dk + 1, br.set("keys d_k", "keys");
        else kv.dims[2] = 0, qv.dims[2] = 0, br.set("keys d = 0", "keys");
        break;
      case 3:
        if (!values_absent) vv.dims[1] = S + 1, br.set("values S", "values");
        break;
      case 4:
        // (not when that makes the view {null, [0, 0, 0]}: that means "no
        // values, use the keys", which is valid)
        if (!values_absent && !(vv.data == nullptr && B == 0 && S == 0))
          vv.dims[2] = 0, br.set("values d_v = 0", "values");
        break;
      case 5: ov.dims[1] = L + 1; br.set("out L", ": out:"); break;
      case 6:
        if (Dq > 1) qv.strides[2] = 2, br.set("query stride", "query.strides[2]");
        break;
      case 7:
        if (Dk > 1) kv.strides[2] = 2, br.set("keys stride", "keys.strides[2]");
        break;
      case 8:
        if (!values_absent && Dv > 1) vv.strides[2] = 2, br.set("values stride", "values.strides[2]");
        break;
      case 9:
        if (Dv > 1) ov.strides[2] = 2, br.set("out stride", "out.strides[2]");
        break;
      case 10:
        if (L > 1 && no_zero(ov.dims)) ov.strides[1] = 0, br.set("out overlaps", "out.strides");
        break;
      case 11:
        opt.key_lengths.assign(static_cast<std::size_t>(B + 1), 0);
        br.set("key_lengths size", "key_lengths.size()");
        break;
      case 12:
        if (B > 0) {
          opt.key_lengths.assign(static_cast<std::size_t>(B), 0);
          opt.key_lengths[static_cast<std::size_t>(in.range(0, B - 1))] = in.coin() ? S + 1 : -1;
          br.set("key_lengths value", "key_lengths[");
        }
        break;
      case 13:
        if (!opt.key_mask.empty()) opt.key_mask.dims[1] = S + 1, br.set("key_mask dims", "key_mask");
        break;
      case 14:
        if (!opt.key_mask.empty())
          opt.key_mask.strides[in.range(0, 1)] = -1, br.set("key_mask stride", "key_mask.strides");
        break;
      case 15:
        if (!opt.query_mask.empty())
          opt.query_mask.dims[1] = L + 1, br.set("query_mask dims", "query_mask");
        break;
      case 16:
        if (!opt.query_mask.empty())
          opt.query_mask.strides[in.range(0, 1)] = -1,
          br.set("query_mask stride", "query_mask.strides");
        break;
      case 17:
        if (!opt.weights.empty()) opt.weights.dims[2] = S + 1, br.set("weights dims", "weights");
        break;
      case 18:
        if (!opt.weights.empty() && L > 1 && B > 0 && S > 0)
          opt.weights.strides[1] = 0, br.set("weights overlap", "weights.strides");
        break;
      case 19: opt.num_threads = -1; br.set("num_threads", "num_threads"); break;
      case 20:
        if (no_zero(qv.dims)) qv.data = nullptr, br.set("null query", "query");
        break;
      case 21:
        if (no_zero(kv.dims)) kv.data = nullptr, br.set("null keys", "keys");
        break;
      case 22:
        if (no_zero(ov.dims)) ov.data = nullptr, br.set("null out", ": out:");
        break;
      default: {
        // Keys projected by another layer: another score function.
        attn::additive_weights w2;
        w2.score = dot ? attn::score_function::general : attn::score_function::dot;
        if (dot) w2.w_k = matrix::Ones(Dq, Dk);  // general needs its W
        other = std::make_unique<attn::additive_attention>(w2);
        br.set("keys of another layer", "keys");
        break;
      }
    }
  }
  if (other && !cached) br = breakage{};  // only the cached path takes a projection

  // --- aliased output (issue 18 item 4): out or weights shares one element
  // with an input or with the other output. Must throw, naming both.
  alias_arena arena;
  if (br.valid && in.chance(32)) {
    auto alias = [&](auto& output, const std::string& name, auto& other, const std::string& what) {
      break_by_alias(arena, br, output, name, other, what);
    };
    auto alias_input = [&](auto& output, const std::string& name) {
      switch (in.u8() % 5) {
        case 0: alias(output, name, qv, "query"); break;
        case 1:
          if (!values_absent) alias(output, name, vv, "values");
          break;
        case 2:  // the keys are this call's input when it projects them, else as the values
          if (!cached) alias(output, name, kv, "keys");
          else if (values_absent) alias(output, name, kv, "values");
          break;
        case 3: alias(output, name, opt.key_mask, "key_mask"); break;
        default: alias(output, name, opt.query_mask, "query_mask"); break;
      }
    };
    switch (in.u8() % 3) {
      case 0: alias_input(ov, "out"); break;
      case 1: alias_input(opt.weights, "weights"); break;
      default: alias(opt.weights, "weights", ov, "out"); break;
    }
  }

  const outcome got = call("additive_attention::forward", [&] {
    if (cached) {
      const attn::additive_keys kp = (other ? *other : *layer).project_keys(kv);
      layer->forward(qv, kp, values_absent ? kv : vv, ov, opt);
    } else {
      layer->forward(qv, kv, vv, ov, opt);
    }
  }, &message);
  expect_outcome("additive_attention::forward", got, br.valid, br.why, message);
  if (!br.valid) {
    check(message.find(br.needle) != std::string::npos,
          "error for " + br.why + " does not name \"" + br.needle + "\": " + message);
    return;
  }

  // --- invariants ------------------------------------------------------------------
  check_written_exactly(out, "out");
  if (!opt.weights.empty()) check_written_exactly(wt, "weights");
  if (B == 0 || L == 0) return;
  const attn::strided<const float, 3> values = values_absent ? kv : vv;

  // Weights of the layer as the kernel uses them.
  bool weights_finite =
      all_finite(w.w_q.data(), w.w_q.size()) && all_finite(w.w_k.data(), w.w_k.size()) &&
      all_finite(w.bias.data(), w.bias.size()) && all_finite(w.v.data(), w.v.size()) &&
      (!w.normalize || std::isfinite(w.g));
  bool weights_tame =
      all_tame(w.w_q.data(), w.w_q.size()) && all_tame(w.w_k.data(), w.w_k.size()) &&
      all_tame(w.bias.data(), w.bias.size()) && all_tame(w.v.data(), w.v.size()) &&
      (!w.normalize || is_tame(w.g));
  bool factor_ok = true;  // F8: the float factor g / ‖v‖ is finite
  {
    double n2 = 0;
    for (index a = 0; a < w.v.size(); ++a) n2 += double(w.v[a]) * double(w.v[a]);
    if (w.normalize && known::additive_normalize_factor_overflow)
      factor_ok = std::isfinite(static_cast<float>(double(w.g) / std::sqrt(n2)));
  }
  weights_finite = weights_finite && factor_ok;
  weights_tame = weights_tame && factor_ok;

  const bool small = double(B) * L * S * (std::max({Da, Dq, Dk}) + Dv) <= 1e5;
  attn_ref::additive_result ref;
  std::vector<char> row_tame(static_cast<std::size_t>(B * L), 1);
  if (small) {
    attn_ref::additive_params p;
    p.kind = additive ? attn_ref::score::additive : dot ? attn_ref::score::dot
                                                        : attn_ref::score::general;
    p.da = Da;
    p.dq = Dq;
    p.dk = Dk;
    auto copy = [](const matrix& m) {
      std::vector<double> r;
      for (index i = 0; i < m.rows(); ++i)
        for (index j = 0; j < m.cols(); ++j) r.push_back(m(i, j));
      return r;
    };
    p.wq = copy(w.w_q);
    p.wk = copy(w.w_k);
    for (index a = 0; a < w.bias.size(); ++a) p.bias.push_back(w.bias[a]);
    for (index a = 0; a < w.v.size(); ++a) p.v.push_back(w.v[a]);
    p.normalize = w.normalize;
    p.g = w.g;
    std::vector<double> qd, kd, vd;
    for (index b = 0; b < B; ++b) {
      for (index i = 0; i < L; ++i)
        for (index c = 0; c < Dq; ++c) qd.push_back(*qv.at(b, i, c));
      // The reference sums 0 · v_j over hidden keys too: give it zeros
      // there, so a NaN in a hidden value does not reach its output.
      const index len = opt.key_lengths.empty() ? S : opt.key_lengths[static_cast<std::size_t>(b)];
      for (index j = 0; j < S; ++j) {
        const bool seen = j < len && (opt.key_mask.empty() || *opt.key_mask.at(b, j));
        for (index c = 0; c < Dk; ++c) kd.push_back(seen ? *kv.at(b, j, c) : 0.0f);
        for (index c = 0; c < Dv; ++c) vd.push_back(seen ? *values.at(b, j, c) : 0.0f);
      }
    }
    attn_ref::additive_masks m;
    m.key_lengths = opt.key_lengths;
    if (!opt.key_mask.empty())
      for (index b = 0; b < B; ++b)
        for (index j = 0; j < S; ++j) m.key_mask.push_back(*opt.key_mask.at(b, j));
    if (!opt.query_mask.empty())
      for (index b = 0; b < B; ++b)
        for (index i = 0; i < L; ++i) m.query_mask.push_back(*opt.query_mask.at(b, i));
    ref = attn_ref::additive_attention(p, qd, kd, vd, B, L, S, Dv, m,
                                       attn::core::simd::tanh_max_abs_error);
  }

  for (index b = 0; b < B; ++b) {
    const index len = opt.key_lengths.empty() ? S : opt.key_lengths[static_cast<std::size_t>(b)];
    std::vector<index> vis;
    for (index j = 0; j < len; ++j)
      if (opt.key_mask.empty() || *opt.key_mask.at(b, j)) vis.push_back(j);
    for (index i = 0; i < L; ++i) {
      const std::string where = "b=" + std::to_string(b) + " i=" + std::to_string(i) +
                                " (B=" + std::to_string(B) + " L=" + std::to_string(L) +
                                " S=" + std::to_string(S) + ")";
      const float* o = ov.at(b, i, 0);
      const index os = ov.strides[2];
      const bool on = opt.query_mask.empty() || *opt.query_mask.at(b, i);
      const float* wrow = opt.weights.empty() ? nullptr : opt.weights.at(b, i, 0);
      const index ws = opt.weights.empty() ? 0 : opt.weights.strides[2];
      if (!on || vis.empty()) {
        for (index d = 0; d < Dv; ++d)
          check(o[d * os] == 0.0f, std::string(on ? "row with no visible key" : "masked query") +
                                       " gives " + std::to_string(o[d * os]) + " at " + where);
      }
      if (vis.empty() && wrow)
        for (index j = 0; j < S; ++j)
          check(wrow[j * ws] == 0.0f, "row with no visible key has weight " +
                                          std::to_string(wrow[j * ws]) + " at " + where);
      if (vis.empty()) continue;
      // Finite inputs give finite outputs, whatever their size.
      const float* qi = qv.at(b, i, 0);
      bool clean = weights_finite && all_finite(qi, Dq);
      bool tame = weights_tame && all_tame(qi, Dq);
      double vmax = 0;
      for (index j : vis) {
        for (index c = 0; c < Dk; ++c) {
          clean = clean && std::isfinite(*kv.at(b, j, c));
          tame = tame && is_tame(*kv.at(b, j, c));
        }
        for (index c = 0; c < Dv; ++c) {  // any finite size: the bound scales with max|V|
          const float x = *values.at(b, j, c);
          clean = clean && std::isfinite(x);
          vmax = std::max(vmax, std::fabs(double(x)));
        }
        if (!clean) break;
      }
      // (values of any finite size: Σ a_j v_j near FLT_MAX is repaired in
      // double by the library, F4; projections and scores past FLT_MAX too,
      // issue 18 item 7)
      if (clean) {
        if (on)
          for (index d = 0; d < Dv; ++d)
            check(std::isfinite(o[d * os]), "finite inputs gave " + std::to_string(o[d * os]) +
                                                " at " + where + " d=" + std::to_string(d));
        if (wrow)
          for (index j = 0; j < S; ++j)
            check(std::isfinite(wrow[j * ws]), "finite inputs gave weight " +
                                                   std::to_string(wrow[j * ws]) + " at " + where);
      }
      if (!(small && tame && clean)) continue;
      const std::size_t row = static_cast<std::size_t>(b * L + i);
      const double n = static_cast<double>(std::max({Da, Dq, Dk}));
      const double E = ref.score_err[row] * std::sqrt(n);
      if (wrow)
        for (index j = 0; j < S; ++j) {
          const double want = ref.weights[row * static_cast<std::size_t>(S) + static_cast<std::size_t>(j)];
          const double tol = 4 * (2 * E * want + 1e-6);
          check(std::fabs(wrow[j * ws] - want) <= tol,
                "weight differs from the fp64 reference at " + where + " j=" + std::to_string(j) +
                    ": got " + std::to_string(wrow[j * ws]) + ", want " + std::to_string(want));
        }
      if (on) {
        const double tol = 4 * ((2 * E + 1e-6 + (double(S) + 4) * eps32) * vmax) + 1e-6;
        for (index d = 0; d < Dv; ++d) {
          const double want = ref.out[row * static_cast<std::size_t>(Dv) + static_cast<std::size_t>(d)];
          check(std::fabs(o[d * os] - want) <= tol,
                "out differs from the fp64 reference at " + where + " d=" + std::to_string(d) +
                    ": got " + std::to_string(o[d * os]) + ", want " + std::to_string(want) +
                    ", tol " + std::to_string(tol));
        }
      }
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  input in(data, size);
  run(in);
  return 0;
}
