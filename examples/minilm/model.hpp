// examples/minilm/model.hpp: all-MiniLM-L6-v2, a BERT encoder for sentence
// embeddings, on attn's multi-head attention.
//
//   ids -> word + position + token-type embeddings -> LayerNorm
//   6 x [ x = LayerNorm(x + MHA(x))             12 heads of 32, biases,
//                                               key padding by key_lengths
//         x = LayerNorm(x + W2 gelu(W1 x + b1) + b2) ]   1536 hidden, exact erf GELU
//   mean over each sentence's own tokens -> L2 normalise   (384 floats)
//
// The shapes come from the model folder's config.json, so other BERT
// checkpoints with absolute positions and mean pooling load too. Weights are
// read straight from model.safetensors, whose nn.Linear [out, in] layout is
// the one attn::multi_head_attention and attn::dense_layer take.
// Sentences of a batch are padded on the right to the longest for
// attention, where key_lengths masks the padding keys (no mask tensor
// needed); LayerNorm, the MLP and the pooling run on the real tokens only.
#pragma once

#if defined(__GNUC__) && !defined(__clang__)
// Eigen's AVX-512 packet math trips GCC 12's -Wmaybe-uninitialized in its
// own intrinsics headers (see bench/common.hpp).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include <Eigen/Core>
#include <algorithm>
#include <attn/dense.hpp>
#include <attn/multi_head.hpp>
#include <cmath>
#include <fstream>
#include <memory>
#include <numeric>
#include <sstream>
#include <stdexcept>
#include <string>
#include <unsupported/Eigen/SpecialFunctions>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "json.hpp"
#include "safetensors.hpp"
#include "tokenizer.hpp"

namespace minilm {

using attn::index;
using matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

inline json read_json(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open");
  std::stringstream ss;
  ss << in.rdbuf();
  try {
    return json::parse(ss.str());
  } catch (const std::exception& e) {
    throw std::runtime_error(path + ": " + e.what());
  }
}

/// The fields of config.json (and sentence_bert_config.json) the encoder uses.
struct bert_config {
  index vocab_size = 0, hidden = 0, layers = 0, heads = 0, intermediate = 0;
  index max_positions = 0, type_vocab_size = 0;
  float layer_norm_eps = 1e-12f;
  index max_seq_length = 0;  ///< sentence-transformers' truncation length

  static bert_config load(const std::string& dir) {
    const json c = read_json(dir + "/config.json");
    auto require = [&](bool ok, const std::string& what) {
      if (!ok) throw std::runtime_error(dir + "/config.json: " + what);
    };
    require(c.at("model_type").as_string() == "bert", "model_type is not \"bert\"");
    require(c.at("hidden_act").as_string() == "gelu", "hidden_act is not \"gelu\" (exact erf)");
    if (const json* p = c.find("position_embedding_type"))
      require(p->as_string() == "absolute", "position_embedding_type is not \"absolute\"");
    bert_config b;
    b.vocab_size = c.at("vocab_size").as_int();
    b.hidden = c.at("hidden_size").as_int();
    b.layers = c.at("num_hidden_layers").as_int();
    b.heads = c.at("num_attention_heads").as_int();
    b.intermediate = c.at("intermediate_size").as_int();
    b.max_positions = c.at("max_position_embeddings").as_int();
    b.type_vocab_size = c.at("type_vocab_size").as_int();
    b.layer_norm_eps = static_cast<float>(c.at("layer_norm_eps").as_number());
    require(b.heads > 0 && b.hidden % b.heads == 0, "hidden_size not divisible by heads");
    b.max_seq_length = b.max_positions;
    std::ifstream st(dir + "/sentence_bert_config.json");
    if (st)
      b.max_seq_length =
          read_json(dir + "/sentence_bert_config.json").at("max_seq_length").as_int();
    b.max_seq_length = std::min(b.max_seq_length, b.max_positions);
    std::ifstream pool(dir + "/1_Pooling/config.json");
    if (pool) {
      const json p = read_json(dir + "/1_Pooling/config.json");
      if (!p.at("pooling_mode_mean_tokens").as_bool())
        throw std::runtime_error(dir + "/1_Pooling/config.json: not mean pooling");
    }
    return b;
  }
};

/// The sentence encoder. Immutable after construction; encode() may run
/// from several threads at once.
class encoder {
 public:
  /// Loads config.json, sentence_bert_config.json, vocab.txt and
  /// model.safetensors from `dir`. @throws std::runtime_error (or
  /// attn::error) naming what is missing or of the wrong shape.
  explicit encoder(const std::string& dir)
      : cfg_(bert_config::load(dir)), tokenizer_(dir + "/vocab.txt") {
    const safetensors st(dir + "/model.safetensors");
    const index H = cfg_.hidden, I = cfg_.intermediate;
    // Some exports prefix every name with "bert.".
    const std::string pre = st.contains("embeddings.word_embeddings.weight") ? "" : "bert.";
    auto get = [&](const std::string& name, std::vector<std::int64_t> shape) {
      return st.f32(pre + name, shape);
    };
    auto mat = [&](const std::string& name, index rows, index cols) {
      const std::vector<float> v = get(name, {rows, cols});
      return matrix(Eigen::Map<const matrix>(v.data(), rows, cols));
    };
    auto vec = [&](const std::string& name, index n) {
      const std::vector<float> v = get(name, {n});
      return Eigen::VectorXf(Eigen::Map<const Eigen::VectorXf>(v.data(), n));
    };
    auto linear = [&](const std::string& name, index out, index in) {
      return attn::linear{mat(name + ".weight", out, in), vec(name + ".bias", out)};
    };
    auto norm = [&](const std::string& name) {
      return layer_norm{vec(name + ".weight", H), vec(name + ".bias", H)};
    };

    word_ = mat("embeddings.word_embeddings.weight", cfg_.vocab_size, H);
    position_ = mat("embeddings.position_embeddings.weight", cfg_.max_positions, H);
    token_type_ = mat("embeddings.token_type_embeddings.weight", cfg_.type_vocab_size, H);
    embedding_norm_ = norm("embeddings.LayerNorm");
    if (static_cast<index>(tokenizer_.vocab_size()) != cfg_.vocab_size)
      throw std::runtime_error(dir + "/vocab.txt: " + std::to_string(tokenizer_.vocab_size()) +
                               " tokens, config.json says " + std::to_string(cfg_.vocab_size));

    attn::mha_config mc;
    mc.embed_dim = H;
    mc.num_heads = cfg_.heads;
    for (index l = 0; l < cfg_.layers; ++l) {
      const std::string p = "encoder.layer." + std::to_string(l) + ".";
      block b;
      // BERT's self-attention is nn.Linear query/key/value plus the
      // "attention.output.dense" projection: exactly mha_weights' q, k, v, o.
      attn::mha_weights w{
          linear(p + "attention.self.query", H, H), linear(p + "attention.self.key", H, H),
          linear(p + "attention.self.value", H, H), linear(p + "attention.output.dense", H, H)};
      b.attention = std::make_unique<attn::multi_head_attention>(mc, w);
      b.attention_norm = norm(p + "attention.output.LayerNorm");
      const attn::linear up = linear(p + "intermediate.dense", I, H);
      const attn::linear down = linear(p + "output.dense", H, I);
      b.up = attn::dense_layer(up);
      b.down = attn::dense_layer(down);
      b.output_norm = norm(p + "output.LayerNorm");
      blocks_.push_back(std::move(b));
    }
  }

  const bert_config& config() const { return cfg_; }
  const wordpiece_tokenizer& tokenizer() const { return tokenizer_; }
  index dim() const { return cfg_.hidden; }

  /// Token ids of one sentence, truncated to max_seq_length.
  std::vector<int> tokenize(const std::string& sentence) const {
    return tokenizer_.encode(sentence, static_cast<std::size_t>(cfg_.max_seq_length));
  }

  /// Embeddings [n, dim] of n sentences, in their order. As
  /// sentence-transformers does, the sentences are sorted by length (longest
  /// first) and cut into batches of batch_size, each padded to its longest.
  matrix encode(const std::vector<std::string>& sentences, index batch_size, int threads) const {
    std::vector<std::vector<int>> ids;
    for (const std::string& s : sentences) ids.push_back(tokenize(s));
    return encode_ids(ids, batch_size, threads);
  }

  /// The same for sentences already tokenized.
  matrix encode_ids(const std::vector<std::vector<int>>& ids, index batch_size, int threads) const {
    const index n = static_cast<index>(ids.size());
    batch_size = std::max<index>(batch_size, 1);
    std::vector<index> order(static_cast<std::size_t>(n));
    std::iota(order.begin(), order.end(), index(0));
    std::stable_sort(order.begin(), order.end(), [&](index a, index b) {
      return ids[static_cast<std::size_t>(a)].size() > ids[static_cast<std::size_t>(b)].size();
    });
    matrix out(n, dim());
    for (index start = 0; start < n; start += batch_size) {
      const index count = std::min(batch_size, n - start);
      std::vector<std::vector<int>> batch;
      for (index i = 0; i < count; ++i)
        batch.push_back(ids[static_cast<std::size_t>(order[static_cast<std::size_t>(start + i)])]);
      const matrix e = forward(batch, threads);
      for (index i = 0; i < count; ++i)
        out.row(order[static_cast<std::size_t>(start + i)]) = e.row(i);
    }
    return out;
  }

  /// One padded batch: token ids ([CLS] ... [SEP]) of B sentences ->
  /// normalised embeddings [B, dim].
  matrix forward(const std::vector<std::vector<int>>& batch, int threads) const {
    const index B = static_cast<index>(batch.size()), H = cfg_.hidden, I = cfg_.intermediate;
    index T = 1;
    std::vector<index> lengths;
    for (const auto& s : batch) {
      if (s.empty() || static_cast<index>(s.size()) > cfg_.max_positions)
        throw std::runtime_error("minilm::encoder::forward: a sentence of " +
                                 std::to_string(s.size()) + " tokens (1.." +
                                 std::to_string(cfg_.max_positions) + " allowed)");
      lengths.push_back(static_cast<index>(s.size()));
      T = std::max(T, lengths.back());
    }
    // The token states of all sentences one after another, no padding:
    // x [n, H], sentence b's tokens from row first(b). Only attention sees
    // the padded [B, T, H] layout; the per-token work (LayerNorm, the MLP:
    // two thirds of the FLOPs) skips the padding.
    std::vector<index> offsets(lengths.size() + 1, 0);
    std::partial_sum(lengths.begin(), lengths.end(), offsets.begin() + 1);
    auto len = [&](index b) { return lengths[static_cast<std::size_t>(b)]; };
    auto first = [&](index b) { return offsets[static_cast<std::size_t>(b)]; };
    const index n = offsets.back();

    matrix x(n, H);
    for (index b = 0; b < B; ++b)
      for (index t = 0; t < len(b); ++t) {
        const int id = batch[static_cast<std::size_t>(b)][static_cast<std::size_t>(t)];
        if (id < 0 || id >= cfg_.vocab_size) throw std::runtime_error("token id out of range");
        x.row(first(b) + t) = word_.row(id) + position_.row(t) + token_type_.row(0);
      }
    embedding_norm_.apply(x.data(), n, cfg_.layer_norm_eps, threads);

    attn::mha_options opt;
    opt.attention.key_lengths = lengths;  // keys t >= length are padding
    opt.attention.num_threads = threads;
    attn::tensor3 padded(B, T, H);
    padded.setZero();  // padding rows stay 0: finite, and masked as keys
    auto in_batch = [&](const attn::tensor3& p, index b) {  // sentence b's rows of p
      return Eigen::Map<const matrix>(p.data() + b * T * H, len(b), H);
    };
    matrix hidden(n, I), out(n, H);
    for (const block& blk : blocks_) {
      for (index b = 0; b < B; ++b)
        Eigen::Map<matrix>(padded.data() + b * T * H, len(b), H) = x.middleRows(first(b), len(b));
      const attn::tensor3 a = blk.attention->forward(padded, opt);
      for (index b = 0; b < B; ++b) x.middleRows(first(b), len(b)) += in_batch(a, b);
      blk.attention_norm.apply(x.data(), n, cfg_.layer_norm_eps, threads);
      blk.up.apply(rows_of(x), rows_of(hidden), threads);
      gelu(hidden.data(), n, I, threads);
      blk.down.apply(rows_of(hidden), rows_of(out), threads);
      x += out;
      blk.output_norm.apply(x.data(), n, cfg_.layer_norm_eps, threads);
    }

    // Mean over each sentence's own tokens, then unit length.
    matrix e(B, H);
    for (index b = 0; b < B; ++b) {
      e.row(b) = x.middleRows(first(b), len(b)).colwise().mean();
      e.row(b) /= std::max(e.row(b).norm(), 1e-12f);
    }
    return e;
  }

 private:
  struct layer_norm {
    Eigen::VectorXf gamma, beta;
    // In place over `rows` rows of gamma.size() floats.
    void apply(float* x, index rows, float eps, int threads) const {
      const index H = gamma.size();
      constexpr index chunk = 16;
      for_each_chunk((rows + chunk - 1) / chunk, threads, [&](index c) {
        for (index r = c * chunk; r < std::min(rows, (c + 1) * chunk); ++r) {
          Eigen::Map<Eigen::ArrayXf> v(x + r * H, H);
          const float mean = v.mean();
          v -= mean;
          const float var = v.square().mean();
          v = v * (1.0f / std::sqrt(var + eps)) * gamma.array() + beta.array();
        }
      });
    }
  };

  // x <- x Φ(x) = x (1 + erf(x / √2)) / 2 (the exact GELU), vectorised erf.
  static void gelu(float* h, index rows, index cols, int threads) {
    constexpr index chunk = 16;
    for_each_chunk((rows + chunk - 1) / chunk, threads, [&](index c) {
      const index r0 = c * chunk, r1 = std::min(rows, r0 + chunk);
      Eigen::Map<Eigen::ArrayXf> v(h + r0 * cols, (r1 - r0) * cols);
      v = 0.5f * v * (1.0f + (v * 0.70710678118654752f).erf());
    });
  }

  // body(c) for c in [0, n), on `threads` OpenMP threads (0 = OpenMP's
  // default) when the build has OpenMP. Each chunk is computed the same way
  // on any thread, so the bits do not depend on the thread count.
  template <class Body>
  static void for_each_chunk(index n, int threads, Body body) {
#ifdef _OPENMP
    const int team = threads > 0 ? threads : omp_get_max_threads();
#pragma omp parallel for schedule(static) num_threads(team)
    for (index c = 0; c < n; ++c) body(c);
#else
    (void)threads;
    for (index c = 0; c < n; ++c) body(c);
#endif
  }

  // A row-major matrix as the [rows, features] view dense_layer reads.
  static attn::strided<float, 2> rows_of(matrix& m) {
    return {m.data(), {m.rows(), m.cols()}, {m.cols(), 1}};
  }

  struct block {
    std::unique_ptr<attn::multi_head_attention> attention;
    layer_norm attention_norm;
    attn::dense_layer up, down;  // intermediate.dense, output.dense
    layer_norm output_norm;
  };

  bert_config cfg_;
  wordpiece_tokenizer tokenizer_;
  matrix word_, position_, token_type_;
  layer_norm embedding_norm_;
  std::vector<block> blocks_;
};

}  // namespace minilm
