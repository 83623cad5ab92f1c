// tests/test_errors.cpp: every attn::error the library can throw (the
// README's "Errors" table), each triggered once on purpose and checked for
// its message: "attn::<function>: <argument>: expected <what>, got <what>".
//
// One test per entry point; each row of a test is one check in the library
// (a detail::require or detail::fail call site), in the order the library
// makes them, so a missing check shows as "no exception thrown" and a check
// that moved or lost its argument's name as a message mismatch. Every call
// is otherwise valid, so the row's check is the one that fires. Views point
// into buffers large enough for the shapes claimed, so a missing check reads
// valid memory here (the fuzzers in tests/fuzz look for the reads).
//
// The MLA family and the families added after issue 7 have their errors
// tested with their own code.
#include <gtest/gtest.h>

#include <attn/attn.hpp>
#include <cmath>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "expect_error.hpp"

namespace test_errors {

using attn::index;
using tensor3 = Eigen::Tensor<float, 3, Eigen::RowMajor>;
using tensor4 = Eigen::Tensor<float, 4, Eigen::RowMajor>;
using matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
constexpr float nan_f = std::numeric_limits<float>::quiet_NaN();
constexpr float inf_f = std::numeric_limits<float>::infinity();

struct error_case {
  std::string label;
  std::function<void()> call;
  std::string prefix;  // "attn::<function>: <argument>: expected"
};

void run(const std::vector<error_case>& cases) {
  for (const error_case& c : cases)
    attn_test::expect_error(c.label, c.call, {c.prefix.c_str()});
}

// ---------------------------------------------------------------------------
// scaled_dot_product_attention

// A valid call (B 2, L 3, S 5, Hq 4, Hkv 2, d 8) whose pieces the cases break.
struct sdpa_call {
  std::vector<float> qb = std::vector<float>(4096, 0.5f), kb = qb, vb = qb, ob = qb;
  attn::strided<const float, 4> q{qb.data(), {2, 3, 4, 8}, {96, 32, 8, 1}};
  attn::strided<const float, 4> k{kb.data(), {2, 5, 2, 8}, {80, 16, 8, 1}};
  attn::strided<const float, 4> v{vb.data(), {2, 5, 2, 8}, {80, 16, 8, 1}};
  attn::strided<float, 4> out{ob.data(), {2, 3, 4, 8}, {96, 32, 8, 1}};
  attn::sdpa_options opt;
  std::vector<char> mask = std::vector<char>(4096, 1);
  std::vector<float> add = std::vector<float>(4096, 0.0f), lse = std::vector<float>(4096);
  void operator()() const { attn::scaled_dot_product_attention(q, k, v, out, opt); }
};

error_case sdpa_case(const std::string& arg, const std::function<void(sdpa_call&)>& brk) {
  auto c = std::make_shared<sdpa_call>();
  brk(*c);
  return {arg, [c] { (*c)(); }, "attn::scaled_dot_product_attention: " + arg + ": expected"};
}

TEST(Errors, ScaledDotProductAttention) {
  run({
      sdpa_case("q", [](sdpa_call& c) { c.q.data = nullptr; }),
      sdpa_case("k", [](sdpa_call& c) { c.k.data = nullptr; }),
      sdpa_case("v", [](sdpa_call& c) { c.v.data = nullptr; }),
      sdpa_case("out", [](sdpa_call& c) { c.out.data = nullptr; }),
      sdpa_case("q", [](sdpa_call& c) { c.q.dims[1] = -1; }),  // non-negative dims
      sdpa_case("k", [](sdpa_call& c) { c.k.dims[1] = -1; }),
      sdpa_case("v", [](sdpa_call& c) { c.v.dims[3] = -1; }),
      sdpa_case("q.dims[3] (d_qk)", [](sdpa_call& c) { c.q.dims[3] = c.k.dims[3] = 0; }),
      sdpa_case("q.dims[2] (heads_q)", [](sdpa_call& c) { c.q.dims[2] = 0; }),
      sdpa_case("k", [](sdpa_call& c) { c.k.dims[3] = 7; }),  // dims [batch, S, heads_kv, d_qk]
      sdpa_case("k.dims[2] (heads_kv)", [](sdpa_call& c) { c.k.dims[2] = c.v.dims[2] = 3; }),
      sdpa_case("v", [](sdpa_call& c) { c.v.dims[1] = 4; }),  // dims [batch, S, heads_kv, d_v]
      sdpa_case("out", [](sdpa_call& c) { c.out.dims[1] = 2; }),
      sdpa_case("q.strides[3]", [](sdpa_call& c) { c.q.strides[3] = 2; }),
      sdpa_case("k.strides[3]", [](sdpa_call& c) { c.k.strides[3] = 2; }),
      sdpa_case("v.strides[3]", [](sdpa_call& c) { c.v.strides[3] = 2; }),
      sdpa_case("out.strides[3]", [](sdpa_call& c) { c.out.strides[3] = 2; }),
      sdpa_case("scale", [](sdpa_call& c) { c.opt.scale = nan_f; }),
      sdpa_case("scale", [](sdpa_call& c) { c.opt.scale = std::numeric_limits<float>::max(); }),
      sdpa_case("window.left",
                [](sdpa_call& c) {
                  c.opt.window = attn::sliding_window{-1, 0};
                }),
      sdpa_case("window.right",
                [](sdpa_call& c) {
                  c.opt.window = attn::sliding_window{0, -2};
                }),
      // Enum values that name nothing (issue 18: 7 used to act as bottom_right).
      sdpa_case("causal", [](sdpa_call& c) { c.opt.causal = static_cast<attn::causal>(7); }),
      sdpa_case("window.align",
                [](sdpa_call& c) {
                  c.opt.window = attn::sliding_window{1, 1, static_cast<attn::alignment>(-1)};
                }),
      sdpa_case("key_lengths.size()", [](sdpa_call& c) { c.opt.key_lengths = {5}; }),
      sdpa_case("key_lengths[1]",
                [](sdpa_call& c) {
                  c.opt.key_lengths = {5, 6};
                }),
      sdpa_case("key_lengths[0]",
                [](sdpa_call& c) {
                  c.opt.key_lengths = {-1, 0};
                }),
      sdpa_case("bool_mask",
                [](sdpa_call& c) {  // dims [batch, heads_q, L, S]
                  c.opt.bool_mask = {reinterpret_cast<const bool*>(c.mask.data()),
                                     {2, 4, 3, 6}, {0, 0, 0, 1}};
                }),
      sdpa_case("bool_mask",
                [](sdpa_call& c) {  // non-negative strides
                  c.opt.bool_mask = {reinterpret_cast<const bool*>(c.mask.data()) + 100,
                                     {2, 4, 3, 5}, {0, -1, 0, 1}};
                }),
      sdpa_case("additive_mask",
                [](sdpa_call& c) {
                  c.opt.additive_mask = {c.add.data(), {1, 4, 3, 5}, {0, 0, 5, 1}};
                }),
      sdpa_case("additive_mask",
                [](sdpa_call& c) {
                  c.opt.additive_mask = {c.add.data() + 100, {2, 4, 3, 5}, {0, 0, -5, 1}};
                }),
      sdpa_case("lse",
                [](sdpa_call& c) {
                  c.opt.lse = {c.lse.data(), {2, 4, 2}, {8, 2, 1}};
                }),
      sdpa_case("out.strides", [](sdpa_call& c) { c.out.strides[1] = 0; }),
      sdpa_case("lse.strides",
                [](sdpa_call& c) {
                  c.opt.lse = {c.lse.data(), {2, 4, 3}, {0, 0, 1}};
                }),
      sdpa_case("num_threads", [](sdpa_call& c) { c.opt.num_threads = -1; }),
  });
  // The Eigen tensor and matrix overloads report through the same checks.
  const tensor4 q(1, 2, 3, 4), k(1, 2, 2, 4);
  run({{"tensor overload",
        [&] { (void)attn::scaled_dot_product_attention(q, k, k); },
        "attn::scaled_dot_product_attention: k.dims[2] (heads_kv): expected"}});
  const Eigen::MatrixXf mq = Eigen::MatrixXf::Zero(2, 4), mk = Eigen::MatrixXf::Zero(3, 5);
  run({{"matrix overload",
        [&] { (void)attn::scaled_dot_product_attention(mq, mk, mk); },
        "attn::scaled_dot_product_attention: k: expected"}});
}

// ---------------------------------------------------------------------------
// views

TEST(Errors, Views) {
  Eigen::Tensor<float, 5, Eigen::RowMajor> packed(1, 2, 4, 2, 8), qkv(1, 2, 3, 2, 8);
  Eigen::Tensor<float, 3, Eigen::RowMajor> m3(3, 4, 5);
  run({
      {"packed_qkv dim 2", [&] { (void)attn::packed_qkv(packed, 0); },
       "attn::packed_qkv: t.dimension(2): expected"},
      {"packed_qkv which", [&] { (void)attn::packed_qkv(qkv, 3); },
       "attn::packed_qkv: which: expected"},
      {"broadcast_mask", [&] { (void)attn::broadcast_mask(m3, 2, 4, 4, 5); },
       "attn::broadcast_mask: mask: expected"},
  });
}

// ---------------------------------------------------------------------------
// attention_weights

// A valid call (B 2, L 3, S 5, Hq 4, Hkv 2, d 8) whose pieces the cases break.
struct weights_call {
  std::vector<float> qb = std::vector<float>(4096, 0.5f), kb = qb, pb = qb;
  attn::strided<const float, 4> q{qb.data(), {2, 3, 4, 8}, {96, 32, 8, 1}};
  attn::strided<const float, 4> k{kb.data(), {2, 5, 2, 8}, {80, 16, 8, 1}};
  attn::strided<float, 4> probs{pb.data(), {2, 4, 3, 5}, {60, 15, 5, 1}};
  attn::sdpa_options opt;
  std::vector<float> sb = qb;
  attn::strided<float, 3> column_sums{sb.data(), {2, 4, 5}, {20, 5, 1}};
  std::vector<char> mask = std::vector<char>(4096, 1);
  void operator()() const {
    const attn::attention_weights_options with_sums{opt, column_sums};
    attn::attention_weights(q, k, probs, with_sums);
  }
};

error_case weights_case(const std::string& arg, const std::function<void(weights_call&)>& brk) {
  auto c = std::make_shared<weights_call>();
  brk(*c);
  return {arg, [c] { (*c)(); }, "attn::attention_weights: " + arg + ": expected"};
}

TEST(Errors, AttentionWeights) {
  run({
      weights_case("k", [](weights_call& c) { c.k.dims[3] = 7; }),
      weights_case("k.dims[2] (heads_kv)", [](weights_call& c) { c.k.dims[2] = 3; }),
      weights_case("probs", [](weights_call& c) { c.probs.dims[2] = 2; }),
      weights_case("q", [](weights_call& c) { c.q.data = nullptr; }),
      weights_case("k", [](weights_call& c) { c.k.data = nullptr; }),
      weights_case("probs", [](weights_call& c) { c.probs.data = nullptr; }),
      weights_case("q.strides[3]", [](weights_call& c) { c.q.strides[3] = 2; }),
      weights_case("k.strides[3]", [](weights_call& c) { c.k.strides[3] = 2; }),
      weights_case("scale", [](weights_call& c) { c.opt.scale = nan_f; }),
      weights_case("window.left", [](weights_call& c) { c.opt.window = attn::sliding_window{-1, 0}; }),
      weights_case("window.right", [](weights_call& c) { c.opt.window = attn::sliding_window{0, -1}; }),
      weights_case("key_lengths.size()", [](weights_call& c) { c.opt.key_lengths = {5}; }),
      weights_case("key_lengths[1]", [](weights_call& c) { c.opt.key_lengths = {5, 6}; }),
      weights_case("bool_mask",
                   [](weights_call& c) {
                     c.opt.bool_mask = {reinterpret_cast<const bool*>(c.mask.data()),
                                        {2, 4, 3, 6}, {0, 0, 0, 1}};
                   }),
      weights_case("additive_mask",
                   [](weights_call& c) {
                     static const float zero[64] = {};
                     c.opt.additive_mask = {zero + 10, {2, 4, 3, 5}, {0, 0, -1, 1}};
                   }),
      weights_case("probs.strides", [](weights_call& c) { c.probs.strides[2] = 0; }),
      weights_case("num_threads", [](weights_call& c) { c.opt.num_threads = -1; }),
      weights_case("column_sums", [](weights_call& c) { c.column_sums.dims[2] = 4; }),
      weights_case("column_sums.strides", [](weights_call& c) { c.column_sums.strides[1] = 0; }),
  });
}

// ---------------------------------------------------------------------------
// additive_attention

attn::additive_weights additive_w(index da, index dq, index dk) {
  attn::additive_weights w;
  w.w_q = matrix::Constant(da, dq, 0.1f);
  w.w_k = matrix::Constant(da, dk, 0.1f);
  w.bias = Eigen::VectorXf::Zero(da);
  w.v = Eigen::VectorXf::Ones(da);
  return w;
}

error_case additive_ctor(const std::string& arg, const std::function<void(attn::additive_weights&)>& brk) {
  auto w = std::make_shared<attn::additive_weights>(additive_w(4, 3, 5));
  brk(*w);
  return {arg, [w] { attn::additive_attention layer(*w); },
          "attn::additive_attention: " + arg + ": expected"};
}

TEST(Errors, AdditiveAttentionConstructor) {
  using sf = attn::score_function;
  auto luong = [](sf s) {
    return [s](attn::additive_weights& w) {
      w = attn::additive_weights{};
      w.score = s;
      if (s == sf::general) w.w_k = matrix::Ones(3, 5);
    };
  };
  run({
      additive_ctor("weights.score", [](attn::additive_weights& w) { w.score = static_cast<sf>(7); }),
      additive_ctor("weights.v", [](attn::additive_weights& w) { w.v.resize(0); }),
      additive_ctor("weights.w_q", [](attn::additive_weights& w) { w.w_q = matrix::Ones(3, 3); }),
      additive_ctor("weights.w_k", [](attn::additive_weights& w) { w.w_k = matrix::Ones(5, 5); }),
      additive_ctor("weights.bias", [](attn::additive_weights& w) { w.bias = Eigen::VectorXf::Ones(3); }),
      additive_ctor("weights.w_q",
                    [&](attn::additive_weights& w) {
                      luong(sf::dot)(w);
                      w.w_q = matrix::Ones(2, 2);
                    }),
      additive_ctor("weights.bias",
                    [&](attn::additive_weights& w) {
                      luong(sf::general)(w);
                      w.bias = Eigen::VectorXf::Ones(3);
                    }),
      additive_ctor("weights.v",
                    [&](attn::additive_weights& w) {
                      luong(sf::dot)(w);
                      w.v = Eigen::VectorXf::Ones(3);
                    }),
      additive_ctor("weights.normalize",
                    [&](attn::additive_weights& w) {
                      luong(sf::general)(w);
                      w.normalize = true;
                    }),
      additive_ctor("weights.w_k",
                    [&](attn::additive_weights& w) {
                      luong(sf::dot)(w);
                      w.w_k = matrix::Ones(2, 2);
                    }),
      additive_ctor("weights.w_k",
                    [&](attn::additive_weights& w) {
                      luong(sf::general)(w);
                      w.w_k.resize(0, 0);
                    }),
      additive_ctor("weights.g",
                    [](attn::additive_weights& w) {
                      w.normalize = true;
                      w.g = inf_f;
                    }),
      additive_ctor("weights.v",
                    [](attn::additive_weights& w) {
                      w.normalize = true;
                      w.v.setZero();
                    }),
  });
}

// A valid call (B 2, L 3, S 5, d_q 3, d_k 5, d_v 6) whose pieces the cases
// break.
struct additive_call {
  attn::additive_attention layer{additive_w(4, 3, 5)};
  std::vector<float> qb = std::vector<float>(1024, 0.5f), kb = qb, vb = qb, ob = qb, wb = qb;
  std::vector<char> mb = std::vector<char>(1024, 1);
  attn::strided<const float, 3> q{qb.data(), {2, 3, 3}, {9, 3, 1}};
  attn::strided<const float, 3> k{kb.data(), {2, 5, 5}, {25, 5, 1}};
  attn::strided<const float, 3> v{vb.data(), {2, 5, 6}, {30, 6, 1}};
  attn::strided<float, 3> out{ob.data(), {2, 3, 6}, {18, 6, 1}};
  attn::additive_options opt;
  bool project_first = true;  // forward over project_keys(k), else forward(q, k, v, ...)
  const attn::additive_attention* keys_layer = &layer;
  void operator()() const {
    if (project_first)
      layer.forward(q, keys_layer->project_keys(k), v, out, opt);
    else
      layer.forward(q, k, v, out, opt);
  }
};

error_case additive_fwd(const std::string& fn, const std::string& arg,
                        const std::function<void(additive_call&)>& brk) {
  auto c = std::make_shared<additive_call>();
  brk(*c);
  return {fn + " " + arg, [c] { (*c)(); }, "attn::" + fn + ": " + arg + ": expected"};
}

TEST(Errors, AdditiveAttentionForward) {
  const std::string fwd = "additive_attention::forward", proj = "additive_attention::project_keys";
  attn::additive_weights dot_w;
  dot_w.score = attn::score_function::dot;
  const attn::additive_attention dot_layer(dot_w);
  run({
      additive_fwd(fwd, "keys", [&](additive_call& c) { c.keys_layer = &dot_layer; }),
      additive_fwd(fwd, "query", [](additive_call& c) { c.q.data = nullptr; }),
      additive_fwd(fwd, "query", [](additive_call& c) { c.q.dims[2] = 4; }),
      additive_fwd(fwd, "query.strides[2]", [](additive_call& c) { c.q.strides[2] = 2; }),
      additive_fwd(fwd, "values", [](additive_call& c) { c.v.data = nullptr; }),
      additive_fwd(fwd, "values", [](additive_call& c) { c.v.dims[1] = 4; }),
      additive_fwd(fwd, "values.strides[2]", [](additive_call& c) { c.v.strides[2] = 2; }),
      additive_fwd(fwd, "out", [](additive_call& c) { c.out.data = nullptr; }),
      additive_fwd(fwd, "out", [](additive_call& c) { c.out.dims[2] = 5; }),
      additive_fwd(fwd, "out.strides[2]", [](additive_call& c) { c.out.strides[2] = 2; }),
      additive_fwd(fwd, "out.strides", [](additive_call& c) { c.out.strides[1] = 0; }),
      additive_fwd(fwd, "key_lengths.size()", [](additive_call& c) { c.opt.key_lengths = {1}; }),
      additive_fwd(fwd, "key_lengths[0]", [](additive_call& c) { c.opt.key_lengths = {6, 1}; }),
      additive_fwd(fwd, "key_mask",
                   [](additive_call& c) {
                     c.opt.key_mask = {reinterpret_cast<const bool*>(c.mb.data()), {2, 4}, {4, 1}};
                   }),
      additive_fwd(fwd, "key_mask.strides",
                   [](additive_call& c) {
                     c.opt.key_mask = {reinterpret_cast<const bool*>(c.mb.data()) + 10, {2, 5}, {-5, 1}};
                   }),
      additive_fwd(fwd, "query_mask",
                   [](additive_call& c) {
                     c.opt.query_mask = {reinterpret_cast<const bool*>(c.mb.data()), {1, 3}, {3, 1}};
                   }),
      additive_fwd(fwd, "query_mask.strides",
                   [](additive_call& c) {
                     c.opt.query_mask = {reinterpret_cast<const bool*>(c.mb.data()) + 10, {2, 3}, {3, -1}};
                   }),
      additive_fwd(fwd, "weights",
                   [](additive_call& c) { c.opt.weights = {c.wb.data(), {2, 3, 4}, {12, 4, 1}}; }),
      additive_fwd(fwd, "weights.strides",
                   [](additive_call& c) { c.opt.weights = {c.wb.data(), {2, 3, 5}, {5, 0, 1}}; }),
      additive_fwd(fwd, "num_threads", [](additive_call& c) { c.opt.num_threads = -1; }),
      // Key checks: in project_keys, and in the forward that projects itself.
      additive_fwd(proj, "keys", [](additive_call& c) { c.k.data = nullptr; }),
      additive_fwd(proj, "keys", [](additive_call& c) { c.k.dims[1] = -1; }),
      additive_fwd(proj, "keys", [](additive_call& c) { c.k.dims[2] = 4; }),
      additive_fwd(proj, "keys.strides[2]", [](additive_call& c) { c.k.strides[2] = 2; }),
      additive_fwd(fwd, "keys",
                   [](additive_call& c) {
                     c.project_first = false;
                     c.k.dims[2] = 4;
                   }),
      additive_fwd(fwd, "query",
                   [](additive_call& c) {
                     c.project_first = false;
                     c.q.dims[0] = 1;
                   }),
  });
  // dot: the keys' feature count is free but must be >= 1.
  std::vector<float> buf(64, 1.0f), ob(64);
  const attn::strided<const float, 3> q0{buf.data(), {1, 2, 0}, {0, 0, 1}}, k0 = q0;
  run({{"dot keys d = 0",
        [&] {
          (void)dot_layer.project_keys(k0);
        },
        "attn::additive_attention::project_keys: keys: expected"}});
}

// ---------------------------------------------------------------------------
// kv_cache

TEST(Errors, KvCache) {
  const std::string ctor = "attn::kv_cache: ";
  run({
      {"batch", [] { attn::kv_cache<float>(-1, 4, 1, 8); }, ctor + "batch: expected"},
      {"capacity", [] { attn::kv_cache<float>(1, -1, 1, 8); }, ctor + "capacity: expected"},
      {"kv_heads", [] { attn::kv_cache<float>(1, 4, 0, 8); }, ctor + "kv_heads: expected"},
      {"head_dim", [] { attn::kv_cache<float>(1, 4, 1, 0); }, ctor + "head_dim: expected"},
      {"size overflow", [] { attn::kv_cache<float>(1, index{1} << 62, 4, 1); },
       ctor + "capacity: expected"},
  });

  attn::kv_cache<Eigen::bfloat16> cache(2, 6, 2, 8);
  tensor4 k(2, 4, 2, 8), v(2, 4, 2, 8), q(2, 4, 4, 8), out(2, 4, 4, 8), kb(2, 4, 3, 8);
  k.setConstant(0.5f);
  v.setConstant(0.5f);
  q.setConstant(0.5f);
  kb.setZero();
  const auto K = attn::view(k).as_const(), V = attn::view(v).as_const(), KB = attn::view(kb).as_const();
  const std::string app = "attn::kv_cache::append: ";
  auto K2 = K;
  K2.strides[3] = 2;
  auto Knull = K;
  Knull.data = nullptr;
  run({
      {"k_new dims", [&] { cache.append(KB, V); }, app + "k_new: expected"},
      {"v_new dims", [&] { cache.append(K, KB); }, app + "v_new: expected"},
      {"strides", [&] { cache.append(K2, V); }, app + "k_new/v_new strides[3]: expected"},
      {"null", [&] { cache.append(Knull, V); }, app + "k_new/v_new: expected"},
      {"counts.size()", [&] { cache.append(K, V, {1}); }, app + "counts.size(): expected"},
      {"counts[1]", [&] { cache.append(K, V, {1, 5}); }, app + "counts[1]: expected"},
  });
  cache.append(K, V, {4, 1});
  run({{"overflow", [&] { cache.append(K, V); }, app + "sequence 0: expected"}});
  EXPECT_EQ(cache.lengths(), (std::vector<index>{4, 1}));  // unchanged by the failures

  const std::string att = "attn::kv_cache::attend: ";
  auto Q = attn::view(q).as_const();
  auto O = attn::view(out);
  auto Qb = Q;
  Qb.dims[0] = 1;
  auto Qd = Q;
  Qd.dims[3] = 4;
  auto Ob = O;
  Ob.dims[1] = 3;  // rows: q has 4
  tensor3 lse_t(1, 4, 4);
  attn::sdpa_options lse_opt;
  lse_opt.lse = attn::view(lse_t);  // batch 1: the cache holds 2
  attn::sdpa_options causal_opt, mask_opt;
  causal_opt.causal = attn::causal::top_left;
  mask_opt.key_lengths = {1, 1};
  run({
      {"batch", [&] { cache.attend(Qb, O); }, att + "q.dims[0] (batch): expected"},
      {"head_dim", [&] { cache.attend(Qd, O); }, att + "q.dims[3] (head_dim): expected"},
      {"causal", [&] { cache.attend(Q, O, causal_opt); }, att + "opt.causal: expected"},
      {"masks", [&] { cache.attend(Q, O, mask_opt); }, att + "opt: expected"},
      {"out", [&] { cache.attend(Q, Ob); }, att + "out: expected"},
      {"lse", [&] { cache.attend(Q, O, lse_opt); }, att + "opt.lse: expected"},
      {"counts.size()", [&] { cache.attend(Q, O, {}, {1}); }, att + "counts.size(): expected"},
      {"counts", [&] { cache.attend(Q, O, {}, {1, 2}); }, att + "counts: expected"},
  });
  const std::string tr = "attn::kv_cache::truncate: ";
  run({
      {"truncate b", [&] { cache.truncate(2, 0); }, tr + "b: expected"},
      {"truncate length", [&] { cache.truncate(1, 2); }, tr + "length: expected"},
  });
}

// ---------------------------------------------------------------------------
// multi_head_attention

struct mha_parts {
  attn::mha_config cfg;
  attn::mha_weights w;
  attn::mha_rope rope;
  mha_parts() {
    cfg.embed_dim = 16;
    cfg.num_heads = 4;
    cfg.num_kv_heads = 2;
    w.q.weight = matrix::Constant(16, 16, 0.01f);
    w.k.weight = matrix::Constant(8, 16, 0.01f);
    w.v.weight = matrix::Constant(8, 16, 0.01f);
    w.o.weight = matrix::Constant(16, 16, 0.01f);
  }
  attn::multi_head_attention make() const { return attn::multi_head_attention(cfg, w, rope); }
};

error_case mha_ctor(const std::string& arg, const std::function<void(mha_parts&)>& brk) {
  auto p = std::make_shared<mha_parts>();
  brk(*p);
  return {arg, [p] { (void)p->make(); }, "attn::multi_head_attention: " + arg + ": expected"};
}

TEST(Errors, MultiHeadAttention) {
  run({
      mha_ctor("config.embed_dim", [](mha_parts& p) { p.cfg.embed_dim = 0; }),
      mha_ctor("config.num_heads", [](mha_parts& p) { p.cfg.num_heads = 0; }),
      mha_ctor("config.num_kv_heads", [](mha_parts& p) { p.cfg.num_kv_heads = 3; }),
      mha_ctor("config.head_dim", [](mha_parts& p) { p.cfg.num_heads = p.cfg.num_kv_heads = 3; }),
      mha_ctor("config.head_dim", [](mha_parts& p) { p.cfg.head_dim = -4; }),
      mha_ctor("weights.q", [](mha_parts& p) { p.w.q.weight = matrix::Zero(16, 15); }),
      mha_ctor("weights.k", [](mha_parts& p) { p.w.k.bias = Eigen::VectorXf::Zero(16); }),
      mha_ctor("weights.v", [](mha_parts& p) { p.w.v.weight = matrix::Zero(4, 16); }),
      mha_ctor("weights.o", [](mha_parts& p) { p.w.o.weight = matrix::Zero(15, 16); }),
      mha_ctor("rope.table->rotary_dim()",
               [](mha_parts& p) { p.rope.table = std::make_shared<attn::rope_table>(8, 6); }),
  });

  mha_parts p;
  p.cfg.kdim = 8;  // cross-attention shapes
  p.w.k.weight = matrix::Constant(8, 8, 0.01f);
  const attn::multi_head_attention cross = p.make();
  const attn::multi_head_attention self = mha_parts().make();
  tensor3 x(1, 3, 16), k8(1, 5, 8), v16(1, 5, 16), k8b(1, 4, 8);
  x.setConstant(0.5f);
  k8.setConstant(0.5f);
  v16.setConstant(0.5f);
  k8b.setConstant(0.5f);
  attn::mha_options weights_opt;
  weights_opt.weights = attn::weights_mode::averaged;
  const std::string fwd = "attn::multi_head_attention::forward: ";
  run({
      {"query", [&] { (void)cross.forward(k8, k8, v16); }, fwd + "query.dimension(2): expected"},
      {"key", [&] { (void)cross.forward(x, v16, v16); }, fwd + "key: expected"},
      {"value", [&] { (void)cross.forward(x, k8, x); }, fwd + "value: expected"},
      {"weights", [&] { (void)cross.forward(x, k8, v16, weights_opt); }, fwd + "weights: expected"},
      {"opt.weights",
       [&] {
         attn::mha_options bad_mode;
         bad_mode.weights = static_cast<attn::weights_mode>(9);
         tensor4 w;
         (void)cross.forward(x, k8, v16, bad_mode, &w);
       },
       fwd + "opt.weights: expected"},
  });
  attn::kv_cache<float> cache(1, 4, 2, 4), other(1, 4, 2, 8);
  const std::string fc = "attn::multi_head_attention::forward(cache): ";
  tensor3 five(1, 5, 16);
  five.setZero();
  run({
      {"x", [&] { (void)self.forward(k8, cache); }, fc + "x.dimension(2): expected"},
      {"kdim", [&] { (void)cross.forward(x, cache); }, fc + "x.dimension(2): expected"},
      {"cache shape", [&] { (void)self.forward(x, other); }, fc + "cache: expected"},
      {"weights", [&] { (void)self.forward(x, cache, weights_opt); }, fc + "opt.weights: expected"},
      {"capacity", [&] { (void)self.forward(five, cache); }, fc + "cache: expected"},
  });
  // The attention options, checked before the cache grows.
  std::vector<attn::mha_options> bad(7);
  bad[0].attention.causal = attn::causal::top_left;
  bad[1].attention.key_lengths = {3};
  bad[2].attention.scale = nan_f;
  bad[3].attention.window = attn::sliding_window{-1, 0};
  bad[4].attention.window = attn::sliding_window{0, -1};
  bad[5].attention.num_threads = -1;
  static const bool yes = true;
  bad[6].attention.bool_mask = {&yes, {1, 4, 3, 3}, {0, 0, 0, 0}};
  const char* args[] = {"opt.attention.causal", "opt.attention", "opt.attention.scale",
                        "opt.attention.window.left", "opt.attention.window.right",
                        "opt.attention.num_threads", "opt.attention"};
  for (std::size_t i = 0; i < bad.size(); ++i)
    run({{args[i], [&] { (void)self.forward(x, cache, bad[i]); },
          fc + args[i] + ": expected"}});
  EXPECT_EQ(cache.lengths()[0], 0);
}

// ---------------------------------------------------------------------------
// aliasing (issue 18 item 4): no output may share memory with an input or
// another output (attn/overlap.hpp). Each of these calls used to be accepted.

// "attn::FN: OUTPUT: expected memory that does not overlap OTHER"
error_case aliased(const std::string& fn, const std::string& out, const std::string& other,
                   std::function<void()> call) {
  return {fn + " " + out + " on " + other, std::move(call),
          "attn::" + fn + ": " + out + ": expected memory that does not overlap " + other +
              ", got"};
}

TEST(Errors, Aliasing) {
  const std::string sdpa = "scaled_dot_product_attention";
  auto on_sdpa = [](const std::function<void(sdpa_call&)>& brk) {
    auto c = std::make_shared<sdpa_call>();
    brk(*c);
    return [c] { (*c)(); };
  };
  run({
      aliased(sdpa, "out", "q", on_sdpa([](sdpa_call& c) { c.out.data = c.qb.data(); })),
      aliased(sdpa, "out", "k", on_sdpa([](sdpa_call& c) { c.out.data = c.kb.data() + 40; })),
      aliased(sdpa, "out", "v", on_sdpa([](sdpa_call& c) { c.out.data = c.vb.data(); })),
      aliased(sdpa, "out", "bool_mask", on_sdpa([](sdpa_call& c) {
                c.opt.bool_mask = {reinterpret_cast<const bool*>(c.ob.data()) + 3,
                                   {2, 4, 3, 5}, {0, 0, 5, 1}};
              })),
      aliased(sdpa, "out", "additive_mask", on_sdpa([](sdpa_call& c) {
                c.opt.additive_mask = {c.ob.data() + 150, {2, 4, 3, 5}, {0, 0, 0, 1}};
              })),
      aliased(sdpa, "lse", "out", on_sdpa([](sdpa_call& c) {
                c.opt.lse = {c.ob.data() + 100, {2, 4, 3}, {12, 3, 1}};
              })),
      aliased(sdpa, "lse", "q", on_sdpa([](sdpa_call& c) {
                c.opt.lse = {c.qb.data(), {2, 4, 3}, {12, 3, 1}};
              })),
      // One element is enough: lse's last entry is out's first.
      aliased(sdpa, "lse", "out", on_sdpa([](sdpa_call& c) {
                c.out.data = c.ob.data() + 24;
                c.opt.lse = {c.ob.data() + 1, {2, 4, 3}, {12, 3, 1}};
              })),
  });

  auto on_weights = [](const std::function<void(weights_call&)>& brk) {
    auto c = std::make_shared<weights_call>();
    brk(*c);
    return [c] { (*c)(); };
  };
  run({
      aliased("attention_weights", "probs", "q",
              on_weights([](weights_call& c) { c.probs.data = c.qb.data(); })),
      aliased("attention_weights", "column_sums", "probs",
              on_weights([](weights_call& c) { c.column_sums.data = c.pb.data() + 7; })),
  });

  const std::string fwd = "additive_attention::forward";
  auto on_additive = [](const std::function<void(additive_call&)>& brk) {
    auto c = std::make_shared<additive_call>();
    brk(*c);
    return [c] { (*c)(); };
  };
  run({
      aliased(fwd, "out", "query", on_additive([](additive_call& c) { c.out.data = c.qb.data(); })),
      aliased(fwd, "out", "values", on_additive([](additive_call& c) { c.out.data = c.vb.data(); })),
      aliased(fwd, "out", "keys", on_additive([](additive_call& c) {
                c.project_first = false;
                c.out.data = c.kb.data();
              })),
      aliased(fwd, "weights", "out", on_additive([](additive_call& c) {
                c.opt.weights = {c.ob.data(), {2, 3, 5}, {15, 5, 1}};
              })),
      aliased(fwd, "out", "key_mask", on_additive([](additive_call& c) {
                c.opt.key_mask = {reinterpret_cast<const bool*>(c.ob.data()), {2, 5}, {5, 1}};
              })),
  });

  // decomposable: beta == alpha (La = Lb), and an output on an input.
  const attn::decomposable_attention dec;
  std::vector<float> ab(256, 0.25f), bb = ab, ob(256), ob2(256);
  const attn::strided<const float, 3> a{ab.data(), {2, 3, 4}, {12, 4, 1}},
      b{bb.data(), {2, 3, 4}, {12, 4, 1}};
  const attn::strided<float, 3> beta{ob.data(), {2, 3, 4}, {12, 4, 1}};
  attn::decomposable_options row_lse;
  row_lse.row_lse = {ob2.data(), {2, 3}, {3, 1}};
  attn::decomposable_options lse_on_beta;
  lse_on_beta.col_lse = {ob.data() + 20, {2, 3}, {3, 1}};
  const std::string df = "decomposable_attention::forward";
  run({
      aliased(df, "alpha", "beta", [&] { dec.forward(a, b, beta, beta); }),
      aliased(df, "beta", "a", [&] {
        dec.forward(a, b, {ab.data(), {2, 3, 4}, {12, 4, 1}}, {}, row_lse);
      }),
      aliased(df, "col_lse", "beta", [&] { dec.forward(a, b, beta, {}, lse_on_beta); }),
      aliased("decomposable_attention::intra", "out", "a",
              [&] { dec.intra(a, {ab.data() + 8, {2, 3, 4}, {12, 4, 1}}); }),
  });

  // structured: marginals written over its own scores.
  std::vector<float> sb(64, 0.5f), cb(64);
  const attn::strided<const float, 2> scores{sb.data(), {2, 5}, {5, 1}};
  run({aliased("segmentation_attention", "marginals", "scores", [&] {
        attn::segmentation_attention(scores, {}, {sb.data(), {2, 5}, {5, 1}}, {}, {});
      }),
       aliased("segmentation_attention", "log_partition", "marginals", [&] {
         attn::segmentation_attention(scores, {}, {cb.data(), {2, 5}, {5, 1}}, {},
                                      {cb.data() + 9, {2}, {1}});
       })});

  // kv_cache: across sequences (out's sequence 0 is q's sequence 1, which
  // the per-sequence checks cannot see), and an append from the cache itself.
  attn::kv_cache<float> cache(2, 4, 1, 8);
  tensor4 kv(2, 1, 1, 8);
  kv.setConstant(0.5f);
  cache.append(attn::view(kv).as_const(), attn::view(kv).as_const());
  std::vector<float> qo(64, 0.5f);
  const attn::strided<const float, 4> q{qo.data(), {2, 1, 1, 8}, {16, 8, 8, 1}};
  const attn::strided<float, 4> out{qo.data() + 16, {2, 1, 1, 8}, {16, 8, 8, 1}};
  const std::vector<index> before = cache.lengths();
  attn::strided<const float, 4> from_cache = cache.keys();
  from_cache.dims[1] = 1;
  run({
      aliased("kv_cache::attend", "out", "q", [&] { cache.attend(q, out); }),
      aliased("kv_cache::append", "keys()", "k_new",
              [&] { cache.append(from_cache, attn::view(kv).as_const()); }),
  });
  EXPECT_EQ(cache.lengths(), before);

  // dense_layer: y over x.
  attn::linear lin;
  lin.weight = matrix::Ones(4, 4);
  const attn::dense_layer dense(lin);
  std::vector<float> xy(64, 1.0f);
  run({aliased("dense_layer::apply", "y", "x", [&] {
    dense.apply({xy.data(), {3, 4}, {4, 1}}, {xy.data() + 8, {3, 4}, {4, 1}});
  })});
}

// In-place q == out on the fp64 repair path (issue 18): a row whose fp32
// accumulation overflows is recomputed from q after the fast path has
// written out, so in place it read the overwritten q and gave 3.40e38 where
// the out-of-place call gives the exact mean. In-place calls now throw.
TEST(Errors, InPlaceOnTheRepairPathThrows) {
  // One query, two keys of equal score whose values sum past FLT_MAX.
  tensor4 q(1, 1, 1, 4), k(1, 2, 1, 4), v(1, 2, 1, 4), out(1, 1, 1, 4);
  q.setConstant(0.5f);
  k.setConstant(0.25f);
  v.chip(0, 1).setConstant(3.0e38f);
  v.chip(1, 1).setConstant(1.5e38f);
  attn::scaled_dot_product_attention(attn::view(q).as_const(), attn::view(k).as_const(),
                                     attn::view(v).as_const(), attn::view(out));
  for (index d = 0; d < 4; ++d) EXPECT_FLOAT_EQ(out(0, 0, 0, d), 2.25e38f);
  tensor4 in_place = q;
  const tensor4 q_before = in_place;
  run({aliased("scaled_dot_product_attention", "out", "q", [&] {
    attn::scaled_dot_product_attention(attn::view(in_place).as_const(), attn::view(k).as_const(),
                                       attn::view(v).as_const(), attn::view(in_place));
  })});
  for (index d = 0; d < 4; ++d) EXPECT_EQ(in_place(0, 0, 0, d), q_before(0, 0, 0, d));  // unwritten
}

// ---------------------------------------------------------------------------
// rope

TEST(Errors, Rope) {
  const std::string tb = "attn::rope_table: ";
  auto opts = [](auto f) {
    attn::rope_options o;
    f(o);
    return o;
  };
  run({
      {"max_positions", [] { attn::rope_table(-1, 4); }, tb + "max_positions: expected"},
      {"rotary_dim odd", [] { attn::rope_table(4, 3); }, tb + "rotary_dim: expected"},
      {"rotary_dim < 0", [] { attn::rope_table(4, -2); }, tb + "rotary_dim: expected"},
      {"theta",
       [&] { attn::rope_table(4, 4, opts([](attn::rope_options& o) { o.theta = 0; })); },
       tb + "theta: expected"},
      {"inv_freq size",
       [&] { attn::rope_table(4, 4, opts([](attn::rope_options& o) { o.inv_freq = {1.0}; })); },
       tb + "opt.inv_freq: expected"},
      {"inv_freq finite",
       [&] {
         attn::rope_table(4, 4, opts([](attn::rope_options& o) { o.inv_freq = {1.0, std::nan("")}; }));
       },
       tb + "opt.inv_freq: expected"},
      {"mscale",
       [&] { attn::rope_table(4, 4, opts([](attn::rope_options& o) { o.mscale = -1; })); },
       tb + "opt.mscale: expected"},
      {"default_inv_freq",
       [] { (void)attn::rope_table::default_inv_freq(5); },
       "attn::rope_table::default_inv_freq: rotary_dim: expected"},
      {"default_inv_freq theta",
       [] { (void)attn::rope_table::default_inv_freq(4, inf_f); },
       "attn::rope_table::default_inv_freq: theta: expected"},
  });

  const attn::rope_table table(8, 4);
  tensor4 x(2, 3, 2, 8);
  x.setZero();
  const std::string ap = "attn::apply_rope: ";
  auto with = [&](auto f) {
    auto v = attn::view(x);
    f(v);
    return v;
  };
  const auto half = attn::rope_layout::half_split;
  run({
      {"dims", [&] { attn::apply_rope(table, with([](auto& v) { v.dims[1] = -1; }), 0, half); },
       ap + "x: expected"},
      {"null", [&] { attn::apply_rope(table, with([](auto& v) { v.data = nullptr; }), 0, half); },
       ap + "x: expected"},
      {"stride", [&] { attn::apply_rope(table, with([](auto& v) { v.strides[3] = 2; }), 0, half); },
       ap + "x.strides[3]: expected"},
      {"head_dim", [&] { attn::apply_rope(table, with([](auto& v) { v.dims[3] = 3; }), 0, half); },
       ap + "x.dims[3] (head_dim): expected"},
      {"layout",
       [&] { attn::apply_rope(table, attn::view(x), 0, static_cast<attn::rope_layout>(9)); },
       ap + "layout: expected"},
      {"num_threads", [&] { attn::apply_rope(table, attn::view(x), 0, half, -1); },
       ap + "num_threads: expected"},
      {"overlap", [&] { attn::apply_rope(table, with([](auto& v) { v.strides[1] = 0; }), 0, half); },
       ap + "x: expected"},
      {"position_offset", [&] { attn::apply_rope(table, attn::view(x), 6, half); },
       ap + "position_offset: expected"},
      {"position_offsets size",
       [&] { attn::apply_rope(table, attn::view(x), std::vector<index>{0}, half); },
       ap + "position_offsets: expected"},
      {"position_offsets[1]",
       [&] { attn::apply_rope(table, attn::view(x), std::vector<index>{0, -1}, half); },
       ap + "position_offsets[1]: expected"},
  });
}

// ---------------------------------------------------------------------------
// Impossible sizes (issue 18 item 2): every product of extents and strides a
// check forms is checked for overflow, so a size no machine can hold is an
// attn::error, never undefined behaviour, a crash or bad_alloc. A stride of
// 2^62 floats steps exactly 2^64 bytes: without the span check such a view
// wraps onto its own first element (no crash, so the missing error shows).

constexpr index big = index{1} << 62;
constexpr index imax = std::numeric_limits<index>::max();

TEST(Errors, ImpossibleViewSpans) {
  const std::string sd = "attn::scaled_dot_product_attention: ";
  run({
      sdpa_case("out", [](sdpa_call& c) { c.out.strides[1] = big; }),
      sdpa_case("q", [](sdpa_call& c) { c.q.strides[0] = big; }),  // 2^62 fits index, not bytes
      sdpa_case("k", [](sdpa_call& c) { c.k.strides[1] = -big; }),
      sdpa_case("v", [](sdpa_call& c) { c.v.strides[2] = big; }),
      // 1 + 2·2^62 (L = 3) overflows index itself.
      sdpa_case("q", [](sdpa_call& c) { c.q.strides[1] = big; }),
      sdpa_case("k", [](sdpa_call& c) { c.k.strides[0] = std::numeric_limits<index>::min(); }),
      sdpa_case("lse", [](sdpa_call& c) {
        c.opt.lse = {c.lse.data(), {2, 4, 3}, {12, 3, big}};
      }),
      sdpa_case("bool_mask", [](sdpa_call& c) {
        c.opt.bool_mask = {reinterpret_cast<const bool*>(c.mask.data()), {2, 4, 3, 5},
                           {0, 0, big, 1}};
      }),
  });
  run({
      weights_case("probs", [](weights_call& c) { c.probs.strides[3] = big; }),
      additive_fwd("additive_attention::forward", "out",
                   [](additive_call& c) { c.out.strides[0] = big; }),
      additive_fwd("additive_attention::forward", "values",
                   [](additive_call& c) { c.v.strides[1] = big; }),
  });
  tensor4 x(2, 3, 2, 8);
  x.setZero();
  auto xv = attn::view(x);
  xv.strides[1] = big;
  const attn::rope_table table(8, 4);
  attn::kv_cache<float> cache(2, 6, 2, 8);
  tensor4 k(2, 4, 2, 8);
  k.setZero();
  auto kv = attn::view(k).as_const();
  kv.strides[0] = big;
  attn::linear l;
  l.weight = matrix::Constant(4, 8, 0.5f);
  const attn::dense_layer dense(l);
  std::vector<float> xb(64, 0.5f), yb(64);
  const attn::strided<const float, 2> dx{xb.data(), {2, 8}, {8, 1}};
  const attn::strided<float, 2> dy{yb.data(), {2, 4}, {big, 1}};
  run({
      {"apply_rope", [&] { attn::apply_rope(table, xv, 0, attn::rope_layout::half_split); },
       "attn::apply_rope: x: expected"},
      {"kv_cache::append", [&] { cache.append(kv, attn::view(k).as_const()); },
       "attn::kv_cache::append: k_new: expected"},
      {"dense_layer::apply", [&] { dense.apply(dx, dy); }, "attn::dense_layer::apply: y: expected"},
  });
  EXPECT_EQ(cache.lengths()[0], 0);
}

TEST(Errors, ImpossibleAllocations) {
  const std::string kc = "attn::kv_cache: ", mc = "attn::mla_cache: ", tb = "attn::rope_table: ";
  run({
      // A token's row (kv_heads · head_dim = 2^80) overflows even at capacity 0.
      {"kv_cache row", [] { attn::kv_cache<float>(1, 0, index{1} << 40, index{1} << 40); },
       kc + "kv_heads: expected"},
      // 2^62 lengths: refused by arithmetic, not std::length_error.
      {"kv_cache batch", [] { attn::kv_cache<float>(big, 0, 1, 8); }, kc + "batch: expected"},
      // kv_lora_rank + rope_dim overflows index.
      {"mla_cache row", [] { attn::mla_cache<float>(1, 1, imax, 2); }, mc + "rope_dim: expected"},
      {"mla_cache batch", [] { attn::mla_cache<float>(big, 0, 1, 0); }, mc + "batch: expected"},
      // 2^62 positions of 4 pairs wrap to a table of 0 floats (it segfaulted).
      {"rope_table(2^62, 8)", [] { attn::rope_table(big, 8); }, tb + "max_positions: expected"},
      {"rope_table product", [] { attn::rope_table(index{1} << 50, index{1} << 14); },
       tb + "max_positions: expected"},
      {"rope_table frequencies", [] { attn::rope_table(0, big); }, tb + "rotary_dim: expected"},
      {"default_inv_freq", [] { (void)attn::rope_table::default_inv_freq(big); },
       "attn::rope_table::default_inv_freq: rotary_dim: expected"},
      {"yarn_inv_freq", [] { (void)attn::yarn_inv_freq(big); },
       "attn::yarn_inv_freq: rotary_dim: expected"},
  });

  // num_heads · head_dim = 2^64 wraps to 0: weights of 0 rows used to pass.
  attn::mha_config cfg;
  cfg.embed_dim = 4;
  cfg.num_heads = index{1} << 32;
  cfg.head_dim = index{1} << 32;
  attn::mha_weights w;
  w.q.weight = w.k.weight = w.v.weight = matrix(0, 4);
  w.o.weight = matrix(4, 0);
  attn::mla_config mla;
  mla.dim = 8;
  mla.n_heads = 1;
  mla.qk_nope_head_dim = imax;  // qk_head_dim() = nope + rope overflows
  mla.qk_rope_head_dim = 2;
  mla.max_seq_len = mla.original_seq_len;
  attn::mla_config heads = mla;
  heads.qk_nope_head_dim = heads.v_head_dim = 8;
  heads.kv_lora_rank = 8;
  heads.n_heads = big;  // n_heads · widths overflow
  run({
      {"multi_head_attention", [&] { attn::multi_head_attention(cfg, w); },
       "attn::multi_head_attention: config.head_dim: expected"},
      {"mla heads", [&] { attn::multi_head_latent_attention(heads, {}); },
       "attn::multi_head_latent_attention: config.n_heads: expected"},
  });
  // (Without the check the wrapped sum ended in the softmax scale's "config"
  // message: the needle names this check's own words.)
  attn_test::expect_error(
      "mla widths", [&] { attn::multi_head_latent_attention(mla, {}); },
      {"attn::multi_head_latent_attention: config: expected head widths"});
}

TEST(Errors, ImpossibleWorkingSizes) {
  // Inputs that broadcast (stride 0) may claim any extents; what the library
  // allocates from them must still fit. Keys of 2^31 · 2^31 rows: the
  // projection of 2^62 · 16 floats wrapped to 0 and was written past.
  additive_call c;
  c.k = {c.kb.data(), {index{1} << 31, index{1} << 31, 5}, {0, 0, 1}};
  attn_test::expect_error(
      "additive keys", [&] { (void)c.layer.project_keys(c.k); },
      {"attn::additive_attention::project_keys: keys: expected"});

  // A result tensor whose extents come from inputs of no elements.
  Eigen::Tensor<float, 4, Eigen::RowMajor> q(index{1} << 31, index{1} << 31, 1, 0),
      k(index{1} << 31, 0, 1, 0), v(index{1} << 31, 0, 1, index{1} << 31);
  attn_test::expect_error(
      "sdpa tensor", [&] { (void)attn::scaled_dot_product_attention(q, k, v); },
      {"attn::scaled_dot_product_attention: out: expected"});

  // The layer's attention weights [B, Hq, L, S] from inputs that fit:
  // 2^22 queries and keys over 2^17 heads make 2^61 floats.
  attn::mha_config cfg;
  cfg.embed_dim = 1;
  cfg.num_heads = index{1} << 17;
  cfg.head_dim = 1;
  attn::mha_weights w;
  w.q.weight = w.k.weight = w.v.weight = matrix::Zero(index{1} << 17, 1);
  w.o.weight = matrix::Zero(1, index{1} << 17);
  const attn::multi_head_attention layer(cfg, w);
  tensor3 xq(1, index{1} << 22, 1), xk(1, index{1} << 22, 1);
  attn::mha_options opt;
  opt.weights = attn::weights_mode::per_head;
  tensor4 weights;
  attn_test::expect_error(
      "mha weights", [&] { (void)layer.forward(xq, xk, xk, opt, &weights); },
      {"attn::multi_head_attention::forward: opt.weights: expected"});
}

}  // namespace test_errors
