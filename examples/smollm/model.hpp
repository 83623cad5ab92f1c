// examples/smollm/model.hpp: a Llama-architecture decoder (SmolLM2) read from
// a GGUF file, on attn's multi-head attention and KV cache.
//
//   ids -> token embedding
//   L x [ x += W_o attention(RoPE(W_q n), RoPE(W_k n), W_v n)   n = RMSNorm(x) · g_attn
//                                                               GQA, causal over the cache
//         x += W_down (silu(W_gate n) * (W_up n))               n = RMSNorm(x) · g_ffn ]
//   logits = W_head (RMSNorm(x) · g_out)      W_head = the token embedding when the
//                                             file has no output.weight (tied)
//
// Shapes come from the llama.* metadata (SmolLM2-135M: 30 layers, width 576,
// 9 query heads and 3 KV heads of 64, MLP 1536, RoPE θ = 100000 over all 64
// features, RMSNorm ε = 1e-5, vocabulary 49152). Every weight is dequantised
// to float once (gguf.hpp) and packed for attn's micro-kernel: the
// attention projections inside attn::multi_head_attention, the MLP's gate
// and up projections as one attn::dense_layer of 2 x 1536 rows, the down
// projection and the head as dense layers. The model is immutable after
// construction; each sequence is a set of per-layer attn::kv_cache
// (float, bf16 or half), so prefill, chunked prefill and decoding are the
// same forward() of 1..T new tokens.
//
// RoPE layout. Hugging Face's Llama rotates pairs (i, i + 32) of each head
// ("rotate_half", attn::rope_layout::half_split). llama.cpp's converter
// permutes the rows of W_q and W_k within each head when it writes the GGUF
// (convert_hf_to_gguf.py, LlamaModel.permute: rows (i, i + 32) become rows
// (2i, 2i + 1)), because ggml's Llama RoPE rotates adjacent pairs. So the
// GGUF's W_q and W_k are used as stored, with
// attn::rope_layout::interleaved: pair i of the permuted head is pair i of
// Hugging Face's, rotated by the same angle p · θ^(-2i/64), and since both
// q and k are permuted the same way, every score q · k is Hugging Face's.
// (transformers' GGUF loader undoes the permutation instead and rotates
// half-split; tests/data/smollm_reference.txt comes from that path.) V and
// W_o are not permuted.
#pragma once

#if defined(__GNUC__) && !defined(__clang__)
// Eigen's AVX-512 packet math trips GCC 12's -Wmaybe-uninitialized in its
// own intrinsics headers (see bench/common.hpp).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include <Eigen/Core>
#include <attn/dense.hpp>
#include <attn/multi_head.hpp>
#include <chrono>
#include <cmath>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "gguf.hpp"
#include "tokenizer.hpp"

namespace smollm {

using attn::index;
using matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// The llama.* metadata the decoder uses.
struct llama_config {
  index vocab = 0, dim = 0, layers = 0, heads = 0, kv_heads = 0, head_dim = 0, hidden = 0;
  index context = 0, rotary_dim = 0;
  double rope_theta = 10000.0;
  float rms_eps = 1e-5f;

  static llama_config load(const gguf_file& f) {
    if (f.string("general.architecture") != "llama")
      f.fail("general.architecture is \"" + f.string("general.architecture") +
             "\", only \"llama\" is read");
    llama_config c;
    c.dim = f.integer("llama.embedding_length", 1, 1 << 16);
    c.layers = f.integer("llama.block_count", 1, 1024);
    c.heads = f.integer("llama.attention.head_count", 1, 1024);
    c.kv_heads = f.find("llama.attention.head_count_kv")
                     ? f.integer("llama.attention.head_count_kv", 1, 1024)
                     : c.heads;
    c.hidden = f.integer("llama.feed_forward_length", 1, 1 << 18);
    c.context = f.integer("llama.context_length", 1, 1 << 24);
    if (c.dim % c.heads != 0 || c.heads % c.kv_heads != 0)
      f.fail("heads do not divide the width, or KV heads the heads");
    c.head_dim = c.dim / c.heads;
    c.rotary_dim = f.find("llama.rope.dimension_count")
                       ? f.integer("llama.rope.dimension_count", 0, c.head_dim)
                       : c.head_dim;
    if (c.rotary_dim % 2) f.fail("llama.rope.dimension_count is odd");
    if (f.find("llama.rope.freq_base")) c.rope_theta = f.number("llama.rope.freq_base");
    if (!(c.rope_theta > 0)) f.fail("llama.rope.freq_base is not > 0");
    c.rms_eps = static_cast<float>(f.number("llama.attention.layer_norm_rms_epsilon"));
    if (f.find("llama.rope.scaling.type") && f.string("llama.rope.scaling.type") != "none")
      f.fail("RoPE scaling is not supported by this example");
    const gguf_file::tensor* emb = f.find_tensor("token_embd.weight");
    if (!emb || emb->ne.size() != 2) f.fail("no 2-d token_embd.weight");
    c.vocab = static_cast<index>(emb->ne[1]);
    return c;
  }
};

/// Where a forward's time went (seconds, accumulated over calls).
struct forward_timing {
  double attention = 0;  ///< multi_head_attention::forward: projections, RoPE, cache, attend
  double mlp = 0;        ///< gate/up, SiLU, down
  double head = 0;       ///< final norm and the output head
  double other = 0;      ///< embedding lookup, norms, residual adds
};

class llama {
 public:
  /// Reads the config, the tokenizer, the chat template and every weight.
  /// @throws std::runtime_error (or attn::error) naming what is missing or
  ///         of the wrong shape.
  explicit llama(const gguf_file& f) : cfg_(llama_config::load(f)), tokenizer_(f) {
    const index E = cfg_.dim, H = cfg_.hidden, hd = cfg_.head_dim;
    const auto u = [](index v) { return static_cast<std::uint64_t>(v); };
    auto mat = [&](const std::string& name, index rows, index cols) {
      const std::vector<float> v = f.floats(name, {u(cols), u(rows)});
      return matrix(Eigen::Map<const matrix>(v.data(), rows, cols));
    };
    auto vec = [&](const std::string& name, index n) {
      const std::vector<float> v = f.floats(name, {u(n)});
      return Eigen::VectorXf(Eigen::Map<const Eigen::VectorXf>(v.data(), n));
    };
    if (static_cast<index>(tokenizer_.vocab_size()) != cfg_.vocab)
      f.fail("the tokenizer has " + std::to_string(tokenizer_.vocab_size()) +
             " tokens, token_embd.weight " + std::to_string(cfg_.vocab) + " rows");
    if (const gguf_file::value* t = f.find("tokenizer.chat_template"))
      if (t->type == gguf_file::value_type::string) template_ = std::make_unique<chat_template>(t->s);
    eos_ = static_cast<int>(f.integer("tokenizer.ggml.eos_token_id", 0, cfg_.vocab - 1));

    embedding_ = mat("token_embd.weight", cfg_.vocab, E);
    output_norm_ = vec("output_norm.weight", E);
    tied_ = f.find_tensor("output.weight") == nullptr;
    head_ = attn::dense_layer(attn::linear{tied_ ? embedding_ : mat("output.weight", cfg_.vocab, E), {}});

    rope_ = std::make_shared<attn::rope_table>(cfg_.context, cfg_.rotary_dim,
                                               attn::rope_options{cfg_.rope_theta, {}, 1.0});
    attn::mha_config mc;
    mc.embed_dim = E;
    mc.num_heads = cfg_.heads;
    mc.num_kv_heads = cfg_.kv_heads;
    for (index l = 0; l < cfg_.layers; ++l) {
      const std::string p = "blk." + std::to_string(l) + ".";
      block b;
      const attn::mha_weights w{{mat(p + "attn_q.weight", cfg_.heads * hd, E), {}},
                                {mat(p + "attn_k.weight", cfg_.kv_heads * hd, E), {}},
                                {mat(p + "attn_v.weight", cfg_.kv_heads * hd, E), {}},
                                {mat(p + "attn_output.weight", E, cfg_.heads * hd), {}}};
      // Interleaved: the GGUF's permuted W_q / W_k (see the file comment).
      b.attention = std::make_unique<attn::multi_head_attention>(
          mc, w, attn::mha_rope{rope_, attn::rope_layout::interleaved});
      b.attn_norm = vec(p + "attn_norm.weight", E);
      b.ffn_norm = vec(p + "ffn_norm.weight", E);
      matrix gate_up(2 * H, E);
      gate_up.topRows(H) = mat(p + "ffn_gate.weight", H, E);
      gate_up.bottomRows(H) = mat(p + "ffn_up.weight", H, E);
      b.gate_up = attn::dense_layer(attn::linear{gate_up, {}});
      b.down = attn::dense_layer(attn::linear{mat(p + "ffn_down.weight", E, H), {}});
      blocks_.push_back(std::move(b));
    }
  }

  const llama_config& config() const { return cfg_; }
  const bpe_tokenizer& tokenizer() const { return tokenizer_; }
  bool tied_head() const { return tied_; }
  /// Bytes of float weights a decode step reads: every projection, the MLPs
  /// and the head (the embedding lookup reads one row).
  std::size_t weight_bytes() const {
    const std::size_t E = std::size_t(cfg_.dim), A = std::size_t(cfg_.heads * cfg_.head_dim),
                      KV = std::size_t(cfg_.kv_heads * cfg_.head_dim), H = std::size_t(cfg_.hidden);
    const std::size_t per_layer = 2 * A * E + 2 * KV * E + 3 * H * E;
    return sizeof(float) * (std::size_t(cfg_.layers) * per_layer + std::size_t(cfg_.vocab) * E);
  }
  int eos_id() const { return eos_; }

  /// The prompt ids of a chat: the GGUF's chat template (its default system
  /// prompt unless `system` is given), then the tokenizer.
  std::vector<int> chat_ids(const std::string& user, const std::string* system = nullptr) const {
    if (!template_) throw std::runtime_error("the GGUF has no tokenizer.chat_template");
    std::vector<chat_template::message> m;
    if (system) m.push_back({"system", *system});
    m.push_back({"user", user});
    return tokenizer_.encode(template_->render(m));
  }

  /// Per-layer caches for one sequence of up to `capacity` tokens.
  template <class Storage>
  std::vector<attn::kv_cache<Storage>> make_caches(index capacity) const {
    if (capacity > cfg_.context)
      throw std::runtime_error("a cache of " + std::to_string(capacity) +
                               " tokens, past the model's context of " +
                               std::to_string(cfg_.context));
    std::vector<attn::kv_cache<Storage>> c;
    for (index l = 0; l < cfg_.layers; ++l) c.emplace_back(1, capacity, cfg_.kv_heads, cfg_.head_dim);
    return c;
  }

  /// Runs `tokens` (appended to the caches, at positions caches[0].lengths()[0]
  /// on) and returns the logits [vocab] of the last one.
  template <class Storage>
  Eigen::VectorXf forward(const std::vector<int>& tokens, std::vector<attn::kv_cache<Storage>>& caches,
                          int threads, forward_timing* timing = nullptr) const {
    using clock = std::chrono::steady_clock;
    const index T = static_cast<index>(tokens.size()), E = cfg_.dim, H = cfg_.hidden;
    if (T == 0) throw std::runtime_error("llama::forward: no tokens");
    if (static_cast<index>(caches.size()) != cfg_.layers)
      throw std::runtime_error("llama::forward: caches for another model");
    auto t0 = clock::now();
    auto lap = [&](double forward_timing::*field) {
      if (!timing) return;
      const auto t1 = clock::now();
      timing->*field += std::chrono::duration<double>(t1 - t0).count();
      t0 = t1;
    };
    attn::tensor3 x(1, T, E), n(1, T, E);
    for (index t = 0; t < T; ++t) {
      const int id = tokens[static_cast<std::size_t>(t)];
      if (id < 0 || id >= cfg_.vocab) throw std::runtime_error("llama::forward: token id out of range");
      Eigen::Map<Eigen::VectorXf>(x.data() + t * E, E) = embedding_.row(id).transpose();
    }
    attn::mha_options opt;
    opt.attention.num_threads = threads;
    matrix gu(T, 2 * H), act(T, H), down(T, E);
    for (index l = 0; l < cfg_.layers; ++l) {
      const block& b = blocks_[static_cast<std::size_t>(l)];
      rms_norm(x.data(), n.data(), T, b.attn_norm);
      lap(&forward_timing::other);
      const attn::tensor3 a = b.attention->forward(n, caches[static_cast<std::size_t>(l)], opt);
      lap(&forward_timing::attention);
      x += a;
      rms_norm(x.data(), n.data(), T, b.ffn_norm);
      lap(&forward_timing::other);
      b.gate_up.apply({n.data(), {T, E}, {E, 1}}, {gu.data(), {T, 2 * H}, {2 * H, 1}}, threads);
      for (index t = 0; t < T; ++t)
        for (index i = 0; i < H; ++i) {
          const float g = gu(t, i);
          act(t, i) = g / (1.0f + std::exp(-g)) * gu(t, H + i);  // silu(gate) * up
        }
      b.down.apply({act.data(), {T, H}, {H, 1}}, {down.data(), {T, E}, {E, 1}}, threads);
      Eigen::Map<matrix>(x.data(), T, E) += down;
      lap(&forward_timing::mlp);
    }
    Eigen::VectorXf last(E), logits(cfg_.vocab);
    rms_norm(x.data() + (T - 1) * E, last.data(), 1, output_norm_);
    head_.apply({last.data(), {1, E}, {E, 1}}, {logits.data(), {1, cfg_.vocab}, {cfg_.vocab, 1}},
                threads);
    lap(&forward_timing::head);
    return logits;
  }

 private:
  // y = x / sqrt(mean(x²) + ε) · g per row of E floats (Hugging Face's
  // LlamaRMSNorm: the mean of squares, then the gain).
  void rms_norm(const float* x, float* y, index rows, const Eigen::VectorXf& g) const {
    const index E = cfg_.dim;
    for (index r = 0; r < rows; ++r) {
      Eigen::Map<const Eigen::ArrayXf> a(x + r * E, E);
      const float ms = a.square().mean();
      const float inv = 1.0f / std::sqrt(ms + cfg_.rms_eps);
      Eigen::Map<Eigen::ArrayXf>(y + r * E, E) = g.array() * (a * inv);
    }
  }

  struct block {
    std::unique_ptr<attn::multi_head_attention> attention;
    Eigen::VectorXf attn_norm, ffn_norm;
    attn::dense_layer gate_up, down;  // [2·hidden, dim] (gate rows, then up rows), [dim, hidden]
  };

  llama_config cfg_;
  bpe_tokenizer tokenizer_;
  std::unique_ptr<chat_template> template_;
  int eos_ = -1;
  bool tied_ = true;
  matrix embedding_;
  Eigen::VectorXf output_norm_;
  attn::dense_layer head_;
  std::shared_ptr<attn::rope_table> rope_;
  std::vector<block> blocks_;
};

/// The next token from logits: the argmax (the first on ties) when
/// temperature <= 0, else a draw from softmax(logits / temperature) cut to
/// the smallest set of most likely tokens whose probability reaches top_p.
inline int sample(const Eigen::VectorXf& logits, float temperature, float top_p,
                  std::mt19937_64& rng) {
  index best = 0;
  logits.maxCoeff(&best);
  if (!(temperature > 0)) return static_cast<int>(best);
  const float mx = logits[best];
  std::vector<std::pair<double, int>> p;
  p.reserve(static_cast<std::size_t>(logits.size()));
  double total = 0;
  for (index i = 0; i < logits.size(); ++i) {
    const double e = std::exp(double(logits[i] - mx) / temperature);
    p.emplace_back(e, static_cast<int>(i));
    total += e;
  }
  std::sort(p.begin(), p.end(), [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  });
  double kept = 0;
  std::size_t k = 0;
  while (k < p.size() && (k == 0 || kept < top_p * total)) kept += p[k++].first;
  double u = std::uniform_real_distribution<double>(0.0, kept)(rng);
  for (std::size_t i = 0; i < k; ++i) {
    if (u < p[i].first) return p[i].second;
    u -= p[i].first;
  }
  return p[k - 1].second;
}

}  // namespace smollm
