// Consumer check: the whole public API (<attn/attn.hpp>) in one translation
// unit, with every family's templates instantiated and run once on tiny
// inputs. Built by tests/consumer/subdirectory with each compiler and
// language standard under test (ctest: compiler_*), with -Wall -Wextra
// -Wpedantic -Werror. Exit code 0 = pass.
#include <algorithm>
#include <attn/attn.hpp>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <utility>

namespace {

using tensor4 = Eigen::Tensor<float, 4, Eigen::RowMajor>;
using tensor3 = Eigen::Tensor<float, 3, Eigen::RowMajor>;

int failures = 0;

void check(bool ok, const char* what) {
  std::printf("%s: %s\n", ok ? "ok  " : "FAIL", what);
  if (!ok) ++failures;
}

// Deterministic values in [-1, 1).
template <class Tensor>
void fill(Tensor& t, unsigned seed) {
  unsigned s = seed * 2654435761u + 1u;
  for (Eigen::Index i = 0; i < t.size(); ++i) {
    s = s * 1664525u + 1013904223u;
    t.data()[i] =
        static_cast<typename Tensor::Scalar>(static_cast<float>(s >> 8) / 8388608.0f - 1.0f);
  }
}

template <class Tensor>
float max_abs_diff(const Tensor& a, const Tensor& b) {
  float m = 0.0f;
  for (Eigen::Index i = 0; i < a.size(); ++i)
    m = std::max(m, std::abs(static_cast<float>(a.data()[i]) - static_cast<float>(b.data()[i])));
  return m;
}

template <class Tensor>
bool all_finite(const Tensor& t) {
  for (Eigen::Index i = 0; i < t.size(); ++i)
    if (!std::isfinite(static_cast<float>(t.data()[i]))) return false;
  return true;
}

attn::linear random_linear(attn::index out, attn::index in, unsigned seed) {
  attn::linear l;
  l.weight.resize(out, in);
  unsigned s = seed;
  for (Eigen::Index i = 0; i < l.weight.size(); ++i) {
    s = s * 1664525u + 1013904223u;
    l.weight.data()[i] = (static_cast<float>(s >> 8) / 8388608.0f - 1.0f) * 0.3f;
  }
  return l;
}

void scaled_dot_product() {
  const Eigen::Index B = 2, L = 3, S = 7, Hq = 4, Hkv = 2, D = 16;
  tensor4 q(B, L, Hq, D), k(B, S, Hkv, D), v(B, S, Hkv, D);
  fill(q, 1);
  fill(k, 2);
  fill(v, 3);
  tensor3 lse(B, Hq, L);
  attn::sdpa_options opt;
  opt.causal = attn::causal::bottom_right;
  opt.lse = attn::view(lse);
  const tensor4 out = attn::scaled_dot_product_attention(q, k, v, opt);
  check(all_finite(out) && all_finite(lse), "sdpa float K/V (GQA, causal, LSE)");

  // The same with bf16 and half K/V: within their rounding of the float result.
  const Eigen::Tensor<Eigen::bfloat16, 4, Eigen::RowMajor> kb = k.cast<Eigen::bfloat16>(),
                                                           vb = v.cast<Eigen::bfloat16>();
  const Eigen::Tensor<Eigen::half, 4, Eigen::RowMajor> kh = k.cast<Eigen::half>(),
                                                       vh = v.cast<Eigen::half>();
  attn::sdpa_options plain;
  plain.causal = attn::causal::bottom_right;
  check(max_abs_diff(attn::scaled_dot_product_attention(q, kb, vb, plain), out) < 3e-2f,
        "sdpa bf16 K/V within bf16 rounding of float");
  check(max_abs_diff(attn::scaled_dot_product_attention(q, kh, vh, plain), out) < 5e-3f,
        "sdpa half K/V within half rounding of float");

  // A PyTorch-layout [B, H, S, D] tensor viewed without a copy.
  tensor4 k_bhsd = k.shuffle(Eigen::array<int, 4>{0, 2, 1, 3});
  tensor4 v_bhsd = v.shuffle(Eigen::array<int, 4>{0, 2, 1, 3});
  tensor4 out2(B, L, Hq, D);
  attn::scaled_dot_product_attention(attn::bshd(q).as_const(), attn::bhsd(k_bhsd).as_const(),
                                     attn::bhsd(v_bhsd).as_const(), attn::bshd(out2), plain);
  check(max_abs_diff(out2, out) < 1e-6f, "sdpa on attn::bhsd views");

  // Probabilities: rows sum to 1.
  tensor4 probs(B, Hq, L, S);
  attn::attention_weights(attn::bshd(q).as_const(), attn::bshd(k).as_const(), attn::view(probs),
                          plain);
  float worst = 0.0f;
  for (Eigen::Index b = 0; b < B; ++b)
    for (Eigen::Index h = 0; h < Hq; ++h)
      for (Eigen::Index i = 0; i < L; ++i) {
        float sum = 0.0f;
        for (Eigen::Index j = 0; j < S; ++j) sum += probs(b, h, i, j);
        worst = std::max(worst, std::abs(sum - 1.0f));
      }
  check(worst < 1e-5f, "attention_weights rows sum to 1");

  // Single-head matrices.
  Eigen::MatrixXf qm = Eigen::MatrixXf::Random(3, 8), km = Eigen::MatrixXf::Random(5, 8),
                  vm = Eigen::MatrixXf::Random(5, 4);
  const auto om = attn::scaled_dot_product_attention(qm, km, vm);
  check(om.rows() == 3 && om.cols() == 4 && om.allFinite(), "sdpa on Eigen matrices");
}

void additive() {
  const Eigen::Index B = 2, L = 3, S = 5, Dq = 6, Dk = 7, Da = 9, Dv = 4;
  attn::additive_weights w;
  w.w_q = random_linear(Da, Dq, 11).weight;
  w.w_k = random_linear(Da, Dk, 12).weight;
  w.v = Eigen::VectorXf::Ones(Da);
  w.normalize = true;
  w.g = 2.0f;
  const attn::additive_attention layer(w);
  tensor3 q(B, L, Dq), k(B, S, Dk), v(B, S, Dv), weights(B, L, S), out(B, L, Dv);
  fill(q, 4);
  fill(k, 5);
  fill(v, 6);
  attn::additive_options opt;
  opt.key_lengths = {5, 3};
  opt.weights = attn::view(weights);
  const attn::additive_keys memory = layer.project_keys(attn::view(k));
  layer.forward(attn::view(q), memory, attn::view(v), attn::view(out), opt);
  float sum = 0.0f;
  for (Eigen::Index j = 0; j < S; ++j) sum += weights(1, 0, j);
  check(all_finite(out) && std::abs(sum - 1.0f) < 1e-5f && weights(1, 0, 4) == 0.0f,
        "additive attention (projected keys, key lengths, weights)");

  attn::additive_weights dot;
  dot.score = attn::score_function::dot;
  tensor3 kd(B, S, Dq);
  fill(kd, 7);
  const tensor3 od = attn::additive_attention(dot).forward(q, kd);
  check(od.dimension(2) == Dq && all_finite(od), "Luong dot attention");
}

void multi_head() {
  const attn::index E = 32, H = 4, Hkv = 2, hd = 8, T = 6;
  attn::mha_config cfg;
  cfg.embed_dim = E;
  cfg.num_heads = H;
  cfg.num_kv_heads = Hkv;
  attn::mha_weights w{random_linear(H * hd, E, 21), random_linear(Hkv * hd, E, 22),
                      random_linear(Hkv * hd, E, 23), random_linear(E, H * hd, 24)};
  auto rope = std::make_shared<attn::rope_table>(64, hd);
  const attn::multi_head_attention layer(cfg, std::move(w), {rope, attn::rope_layout::half_split});

  attn::tensor3 x(1, T, E);
  fill(x, 8);
  attn::mha_options full;
  full.attention.causal = attn::causal::bottom_right;
  const attn::tensor3 y = layer.forward(x, full);

  // Prefill T - 1 tokens into a cache, then one decode step: the step's
  // output is row T - 1 of the full causal forward.
  attn::kv_cache<float> cache(1, 16, Hkv, hd);
  const attn::tensor3 prompt =
      x.slice(Eigen::array<Eigen::Index, 3>{0, 0, 0}, Eigen::array<Eigen::Index, 3>{1, T - 1, E});
  const attn::tensor3 last =
      x.slice(Eigen::array<Eigen::Index, 3>{0, T - 1, 0}, Eigen::array<Eigen::Index, 3>{1, 1, E});
  (void)layer.forward(prompt, cache);
  const attn::tensor3 step = layer.forward(last, cache);
  float err = 0.0f;
  for (attn::index e = 0; e < E; ++e) err = std::max(err, std::abs(step(0, 0, e) - y(0, T - 1, e)));
  check(cache.lengths()[0] == T && err < 1e-4f,
        "multi_head_attention: KV-cache decode step = full causal forward");

  attn::kv_cache<Eigen::bfloat16> cache16(1, 16, Hkv, hd);
  check(all_finite(layer.forward(x, cache16)), "multi_head_attention with a bf16 cache");
}

void errors() {
#if defined(__cpp_exceptions) || defined(__EXCEPTIONS)
  bool threw = false;
  try {
    tensor4 q(1, 2, 2, 8), k(1, 3, 2, 9);
    q.setZero();
    k.setZero();
    (void)attn::scaled_dot_product_attention(q, k, k);
  } catch (const attn::error& e) {
    threw = std::string(e.what()).find("scaled_dot_product_attention") != std::string::npos;
  }
  check(threw, "a bad shape throws attn::error naming the function");
#endif
}

}  // namespace

int main() {
  std::printf("attn consumer (all families), C++ %ld\n", static_cast<long>(__cplusplus));
  scaled_dot_product();
  additive();
  multi_head();
  errors();
  std::puts(failures ? "FAIL" : "PASS");
  return failures ? 1 : 0;
}
