// attn/multi_head.hpp: the Transformer's multi-head attention layer.
//
//   Q = x_q W_qᵀ + b_q,  K = x_k W_kᵀ + b_k,  V = x_v W_vᵀ + b_v
//   (optional RoPE on Q and K)
//   O = attention(Q, K, V)   per head, GQA: query head h reads KV head
//                            h / (num_heads / num_kv_heads)
//   y = O W_oᵀ + b_o
//
// Weights use PyTorch nn.Linear's orientation, [out_features, in_features],
// so checkpoints load without transposes. Tensors are row-major
// [batch, seq, features]. Masks, causal alignment, windows, key lengths and
// threads are those of scaled_dot_product_attention (attn/sdpa_options.hpp);
// note that nn.MultiheadAttention's key_padding_mask and bool attn_mask use
// the opposite polarity (true = masked) to ours (true = may attend).
#pragma once

#include <Eigen/Core>
#include <memory>
#include <string>
#include <unsupported/Eigen/CXX11/Tensor>
#include <vector>

#include "attn/attention_weights.hpp"
#include "attn/core/linear.hpp"
#include "attn/dense.hpp"  // attn::linear
#include "attn/error.hpp"
#include "attn/kv_cache.hpp"
#include "attn/paged_kv_cache.hpp"
#include "attn/rope.hpp"
#include "attn/sdpa.hpp"
#include "attn/sdpa_checks.hpp"
#include "attn/size_checks.hpp"

namespace attn {

/// Shape of a multi_head_attention layer. Zeros mean "the usual default".
struct mha_config {
  index embed_dim = 0;     ///< model width E (query input and output features)
  index num_heads = 0;     ///< query heads Hq
  index num_kv_heads = 0;  ///< key/value heads Hkv, dividing Hq; 0 = Hq (MHA), 1 = MQA
  index head_dim = 0;      ///< features per head; 0 = embed_dim / num_heads
  index kdim = 0;          ///< key input features; 0 = embed_dim
  index vdim = 0;          ///< value input features; 0 = embed_dim
};

/// The four projections: q [Hq·head_dim, E], k [Hkv·head_dim, kdim],
/// v [Hkv·head_dim, vdim], o [E, Hq·head_dim]; biases optional.
struct mha_weights {
  linear q;  ///< query projection [Hq·head_dim, E]
  linear k;  ///< key projection [Hkv·head_dim, kdim]
  linear v;  ///< value projection [Hkv·head_dim, vdim]
  linear o;  ///< output projection [E, Hq·head_dim]
};

/// Rotary embeddings applied to Q and K inside the layer.
struct mha_rope {
  std::shared_ptr<const rope_table> table;       ///< rotary_dim <= head_dim; null = no RoPE
  rope_layout layout = rope_layout::half_split;  ///< how the rotated features are paired
};

/// What to return besides the output, as nn.MultiheadAttention's
/// need_weights / average_attn_weights.
enum class weights_mode {
  none,      ///< the fast path only; no L x S matrix is formed
  averaged,  ///< [B, 1, L, S]: the mean over heads
  per_head,  ///< [B, Hq, L, S]
};

/// Per-call options of multi_head_attention::forward.
struct mha_options {
  /// Masks, scale, causal, window, key lengths, threads; `lse` is ignored.
  sdpa_options attention;
  /// Position of the first token of each sequence for RoPE (a forward
  /// without a cache); cached forwards use the cache's lengths.
  index position_offset = 0;
  /// Attention probabilities to return through forward's `weights`
  /// argument (none, averaged over heads, or per head).
  weights_mode weights = weights_mode::none;
};

/// Row-major float tensor of rank 3: the layer's [batch, seq, features].
using tensor3 = Eigen::Tensor<float, 3, Eigen::RowMajor>;
/// Row-major float tensor of rank 4: [batch, seq, heads, head_dim], or
/// [batch, heads, L, S] attention weights.
using tensor4 = Eigen::Tensor<float, 4, Eigen::RowMajor>;

// The layer holds weights packed for this instruction set's micro-kernel, so
// it lives in the ISA namespace (see attn/core/abi.hpp).
inline namespace ATTN_ABI {

/// Multi-head attention layer (see the file comment). Immutable after
/// construction: one layer may serve many threads at once, each with its
/// own caches.
class multi_head_attention {
 public:
  /// Row-major float matrix, the type of linear::weight.
  using matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

  /// Checks the config and weights and packs the weights for the
  /// micro-kernel (the layer keeps its own copy; `weights` may go).
  /// @throws attn::error naming the field if the config is inconsistent
  ///         (heads not dividing, head_dim unset and E % Hq != 0) or a weight
  ///         or bias has the wrong shape.
  multi_head_attention(const mha_config& config, const mha_weights& weights, mha_rope rope = {})
      : rope_(std::move(rope)) {
    constexpr const char* fn = "multi_head_attention";
    using detail::require;
    E_ = config.embed_dim;
    Hq_ = config.num_heads;
    require(E_ >= 1, fn, "config.embed_dim", ">= 1", E_);
    require(Hq_ >= 1, fn, "config.num_heads", ">= 1", Hq_);
    Hkv_ = config.num_kv_heads == 0 ? Hq_ : config.num_kv_heads;
    require(
        Hkv_ >= 1 && Hq_ % Hkv_ == 0, fn, "config.num_kv_heads",
        [&] { return "a divisor of num_heads = " + std::to_string(Hq_); }, Hkv_);
    if (config.head_dim == 0)
      require(E_ % Hq_ == 0, fn, "config.head_dim", "set, or embed_dim divisible by num_heads",
              "0 with a remainder");
    hd_ = config.head_dim == 0 ? E_ / Hq_ : config.head_dim;
    require(hd_ >= 1, fn, "config.head_dim", ">= 1", hd_);
    // The projections' widths (Hkv <= Hq), formed below and in every forward.
    detail::check_size<float>(fn, "config.head_dim", {Hq_, hd_}, "num_heads · head_dim", hd_);
    kdim_ = config.kdim == 0 ? E_ : config.kdim;
    vdim_ = config.vdim == 0 ? E_ : config.vdim;
    check_linear(weights.q, "weights.q", Hq_ * hd_, E_);
    check_linear(weights.k, "weights.k", Hkv_ * hd_, kdim_);
    check_linear(weights.v, "weights.v", Hkv_ * hd_, vdim_);
    check_linear(weights.o, "weights.o", E_, Hq_ * hd_);
    q_ = core::packed_linear(weights.q.weight, weights.q.bias);
    k_ = core::packed_linear(weights.k.weight, weights.k.bias);
    v_ = core::packed_linear(weights.v.weight, weights.v.bias);
    o_ = core::packed_linear(weights.o.weight, weights.o.bias);

    if (rope_.table)
      require(
          rope_.table->rotary_dim() <= hd_, fn, "rope.table->rotary_dim()",
          [&] { return "<= head_dim = " + std::to_string(hd_); }, rope_.table->rotary_dim());
  }

  index embed_dim() const { return E_; }        ///< model width E
  index num_heads() const { return Hq_; }       ///< query heads Hq
  index num_kv_heads() const { return Hkv_; }   ///< key/value heads Hkv
  index head_dim() const { return hd_; }        ///< features per head

  /// Cross- (or self-) attention: query [B, L, E], key [B, S, kdim],
  /// value [B, S, vdim] -> [B, L, E]. With opt.weights != none, `weights`
  /// receives [B, 1 or Hq, L, S] probabilities from attn::attention_weights
  /// (the ones the attention applied; a row that reads a NaN is NaN, one
  /// with no visible key 0), at about the cost of the attention once more.
  /// @throws attn::error on shape mismatches or bad options.
  tensor3 forward(const tensor3& query, const tensor3& key, const tensor3& value,
                  const mha_options& opt = {}, tensor4* weights = nullptr) const {
    constexpr const char* fn = "multi_head_attention::forward";
    const index B = query.dimension(0), L = query.dimension(1), S = key.dimension(1);
    detail::require(query.dimension(2) == E_, fn, "query.dimension(2)", E_, query.dimension(2));
    detail::require(
        key.dimension(0) == B && key.dimension(2) == kdim_, fn, "key",
        [&] {
          return "[batch = " + std::to_string(B) + ", S, kdim = " + std::to_string(kdim_) + "]";
        },
        key.dimensions());
    detail::require(
        value.dimension(0) == B && value.dimension(1) == S && value.dimension(2) == vdim_, fn,
        "value",
        [&] {
          return "[batch, S = " + std::to_string(S) + ", vdim = " + std::to_string(vdim_) + "]";
        },
        value.dimensions());
    check_weights_request(opt, weights, fn);
    check_work(fn, "query", "key", B, L, S, opt.weights != weights_mode::none);

    const int threads = opt.attention.num_threads;
    tensor4 q = project(query, q_, Hq_, threads), k = project(key, k_, Hkv_, threads),
            v = project(value, v_, Hkv_, threads);
    if (rope_.table) {
      apply_rope(*rope_.table, view(q), opt.position_offset, rope_.layout,
                 opt.attention.num_threads);
      apply_rope(*rope_.table, view(k), opt.position_offset, rope_.layout,
                 opt.attention.num_threads);
    }
    sdpa_options so = opt.attention;
    so.lse = {};
    tensor4 o(B, L, Hq_, hd_);
    scaled_dot_product_attention(view(q).as_const(), view(k).as_const(), view(v).as_const(),
                                 view(o), so);
    if (opt.weights != weights_mode::none) fill_weights(q, k, so, opt.weights, *weights);
    return output_projection(o, threads);
  }

  /// Self-attention: x [B, L, E] as query, key and value (needs kdim = vdim
  /// = embed_dim).
  tensor3 forward(const tensor3& x, const mha_options& opt = {}, tensor4* weights = nullptr) const {
    return forward(x, x, x, opt, weights);
  }

  /// Incremental self-attention over a KV cache: projects x [B, T, E],
  /// rotates Q and K at positions cache.lengths()[b] + t, appends K and V to
  /// the cache, attends over everything cached with bottom-right causal
  /// alignment on each sequence's own length, and returns [B, T, E].
  /// Prefill (T = prompt), decoding (T = 1) and chunks are the same call.
  /// opt.attention may set scale, window and threads only.
  /// @throws attn::error on shape mismatches, on a cache of another shape, or
  ///         when a sequence would pass the cache's capacity (the cache is
  ///         then unchanged).
  template <class Storage>
  tensor3 forward(const tensor3& x, kv_cache<Storage>& cache, const mha_options& opt = {}) const {
    constexpr const char* fn = "multi_head_attention::forward(cache)";
    const index B = x.dimension(0), T = x.dimension(1);
    detail::require(
        x.dimension(2) == E_ && kdim_ == E_ && vdim_ == E_, fn, "x.dimension(2)",
        [&] { return "embed_dim = kdim = vdim = " + std::to_string(E_); }, x.dimension(2));
    detail::require(cache.batch() == B && cache.kv_heads() == Hkv_ && cache.head_dim() == hd_ &&
                        cache.v_head_dim() == hd_,
                    fn, "cache", "batch, kv_heads and head dims matching the layer",
                    "a cache of another shape");
    detail::require(opt.weights == weights_mode::none, fn, "opt.weights", "none",
                    "a weights request");
    for (index b = 0; b < B; ++b)
      detail::require(
          cache.lengths()[b] + T <= cache.capacity(), fn, "cache",
          [&] { return "room for " + std::to_string(T) + " more tokens"; },
          [&] {
            return "sequence " + std::to_string(b) + " at " + std::to_string(cache.lengths()[b]) +
                   " of " + std::to_string(cache.capacity());
          });
    // Everything the attention would refuse, checked before anything is
    // computed (a failed call leaves the cache as it was).
    detail::check_cache_options(fn, "opt.attention", opt.attention);
    // (Masks and key lengths are refused above, so L = S = T only sizes messages.)
    detail::check_sdpa_options(fn, "opt.attention", opt.attention, B, Hq_, T, T, hd_);
    check_work(fn, "x", "x", B, T, T, false);
    const int threads = opt.attention.num_threads;
    tensor4 q = project(x, q_, Hq_, threads), k = project(x, k_, Hkv_, threads),
            v = project(x, v_, Hkv_, threads);
    if (rope_.table) {
      apply_rope(*rope_.table, view(q), cache.lengths(), rope_.layout, opt.attention.num_threads);
      apply_rope(*rope_.table, view(k), cache.lengths(), rope_.layout, opt.attention.num_threads);
    }
    cache.append(view(k).as_const(), view(v).as_const());
    tensor4 o(B, T, Hq_, hd_);
    sdpa_options so = opt.attention;
    so.lse = {};
    cache.attend(view(q).as_const(), view(o), so);
    return output_projection(o, threads);
  }

  /// One serving step over a paged cache: x [1, total, E] holds the new
  /// tokens of every listed sequence packed one after another (sequence
  /// seqs[i] owns rows [cu_seqlens[i], cu_seqlens[i + 1])). Projects them,
  /// rotates Q and K at each sequence's own positions (cache.length(s) + t),
  /// appends K and V to the sequences' blocks, attends with bottom-right
  /// causal alignment on each sequence's length, and returns [1, total, E].
  /// A batch may mix prefill chunks and single-token decodes; each
  /// sequence's rows are the bits it gets alone (batch invariance). The
  /// sequences are distinct. opt.attention may set scale, window, softcap,
  /// ALiBi, sinks and threads.
  /// @throws attn::error on shape mismatches, a cache of another shape, a
  ///         dead or repeated sequence, cumulative lengths that do not fit x,
  ///         a position past the RoPE table, or too few free blocks; the
  ///         cache is then unchanged.
  template <class Storage>
  tensor3 forward(const tensor3& x, paged_kv_cache<Storage>& cache,
                  const std::vector<index>& seqs, const std::vector<index>& cu_seqlens,
                  const mha_options& opt = {}) const {
    constexpr const char* fn = "multi_head_attention::forward(paged cache)";
    const index total = x.dimension(1);
    detail::require(x.dimension(0) == 1, fn, "x.dimension(0)",
                    "1 (the sequences' tokens packed along dimension 1)", x.dimension(0));
    detail::require(
        x.dimension(2) == E_ && kdim_ == E_ && vdim_ == E_, fn, "x.dimension(2)",
        [&] { return "embed_dim = kdim = vdim = " + std::to_string(E_); }, x.dimension(2));
    detail::require(cache.kv_heads() == Hkv_ && cache.head_dim() == hd_ &&
                        cache.v_head_dim() == hd_,
                    fn, "cache", "kv_heads and head dims matching the layer",
                    "a cache of another shape");
    detail::require(opt.weights == weights_mode::none, fn, "opt.weights", "none",
                    "a weights request");
    const index B = detail::varlen::check_cu_seqlens(fn, "cu_seqlens", cu_seqlens, total,
                                                     "x.dimension(1)");
    detail::require(static_cast<index>(seqs.size()) == B, fn, "seqs.size()",
                    [&] { return "cu_seqlens.size() - 1 = " + std::to_string(B); }, seqs.size());
    std::vector<index> start(static_cast<std::size_t>(B));
    for (index i = 0; i < B; ++i) {
      start[i] = cache.contains(seqs[i]) ? cache.length(seqs[i]) : 0;
      for (index j = 0; j < i; ++j)
        detail::require(seqs[j] != seqs[i], fn, "seqs", "distinct sequences",
                        [&] { return std::to_string(seqs[i]) + " twice"; });
    }
    // What append and attend would refuse, checked before anything is
    // computed (a failed call leaves the cache as it was): append checks the
    // sequences and the free blocks itself before it writes, and attend can
    // then only fail on its options.
    detail::check_cache_options(fn, "opt.attention", opt.attention);
    detail::check_sdpa_options(fn, "opt.attention", opt.attention, 1, Hq_, total, total, hd_);
    check_work(fn, "x", "x", 1, total, total, false);
    const int threads = opt.attention.num_threads;
    tensor4 q = project(x, q_, Hq_, threads), k = project(x, k_, Hkv_, threads),
            v = project(x, v_, Hkv_, threads);
    if (rope_.table)
      for (index i = 0; i < B; ++i) {
        const index first = cu_seqlens[i], n = cu_seqlens[i + 1] - first;
        if (n == 0) continue;
        apply_rope(*rope_.table, rows(q, first, n), start[i], rope_.layout, threads);
        apply_rope(*rope_.table, rows(k, first, n), start[i], rope_.layout, threads);
      }
    cache.append(seqs, packed(k), packed(v), cu_seqlens);
    tensor4 o(1, total, Hq_, hd_);
    sdpa_options so = opt.attention;
    so.lse = {};
    cache.attend(seqs, packed(q), cu_seqlens, packed(o), so);
    return output_projection(o, threads);
  }

 private:
  static void check_linear(const linear& l, const char* what, index out, index in) {
    detail::require(
        l.weight.rows() == out && l.weight.cols() == in, "multi_head_attention", what,
        [&] {
          return "weight [" + std::to_string(out) + ", " + std::to_string(in) +
                 "] ([out, in], as nn.Linear)";
        },
        [&] {
          return "[" + std::to_string(l.weight.rows()) + ", " + std::to_string(l.weight.cols()) +
                 "]";
        });
    detail::require(
        l.bias.size() == 0 || l.bias.size() == out, "multi_head_attention", what,
        [&] { return "bias of size 0 or " + std::to_string(out); }, l.bias.size());
  }

  void check_weights_request(const mha_options& opt, const tensor4* weights, const char* fn) const {
    detail::require(opt.weights == weights_mode::none || opt.weights == weights_mode::averaged ||
                        opt.weights == weights_mode::per_head,
                    fn, "opt.weights",
                    "weights_mode::none, weights_mode::averaged or weights_mode::per_head",
                    static_cast<int>(opt.weights));
    if (opt.weights == weights_mode::none) return;
    detail::require(weights != nullptr, fn, "weights", "an output tensor when opt.weights is set",
                    "nullptr");
  }

  // The working tensors a forward allocates: Q [B, L, Hq, head_dim], K and
  // V [B, S, Hkv, head_dim], and with weights [B, Hq, L, S]. The inputs fit,
  // but these products of their extents and the layer's need not.
  void check_work(const char* fn, const char* q_arg, const char* k_arg, index B, index L, index S,
                  bool weights) const {
    detail::check_size<float>(fn, q_arg, {B, L, Hq_, hd_}, "batch · L · num_heads · head_dim", L);
    detail::check_size<float>(fn, k_arg, {B, S, Hkv_, hd_},
                              "batch · S · num_kv_heads · head_dim", S);
    if (weights)
      detail::check_size<float>(fn, "opt.weights", {B, Hq_, L, S}, "batch · num_heads · L · S",
                                "a weights request");
  }

  // x [B, N, in] -> x Wᵀ + b viewed as [B, N, heads, head_dim].
  tensor4 project(const tensor3& x, const core::packed_linear& l, index heads, int threads) const {
    const index B = x.dimension(0), N = x.dimension(1);
    tensor4 y(B, N, heads, hd_);
    l.apply(x.data(), x.dimension(2), B * N, y.data(), heads * hd_, threads);
    return y;
  }

  // Rows [first, first + n) of a [1, total, heads, head_dim] tensor, and the
  // whole of one as the packed [total, heads, head_dim] the serving entries
  // take.
  static strided<float, 4> rows(tensor4& t, index first, index n) {
    strided<float, 4> r = view(t);
    r.data += first * r.strides[1];
    r.dims[1] = n;
    return r;
  }
  static strided<float, 3> packed(tensor4& t) {
    const strided<float, 4> a = view(t);
    return {a.data, {a.dims[1], a.dims[2], a.dims[3]}, {a.strides[1], a.strides[2], a.strides[3]}};
  }

  tensor3 output_projection(const tensor4& o, int threads) const {
    const index B = o.dimension(0), N = o.dimension(1);
    tensor3 y(B, N, E_);
    o_.apply(o.data(), Hq_ * hd_, B * N, y.data(), E_, threads);
    return y;
  }

  void fill_weights(const tensor4& q, const tensor4& k, const sdpa_options& so, weights_mode mode,
                    tensor4& weights) const {
    const index B = q.dimension(0), L = q.dimension(1), S = k.dimension(1);
    tensor4 per_head(B, Hq_, L, S);
    attention_weights(view(q).as_const(), view(k).as_const(), view(per_head), so);
    if (mode == weights_mode::per_head) {
      weights = std::move(per_head);
      return;
    }
    weights = tensor4(B, 1, L, S);
    weights.setZero();
    for (index b = 0; b < B; ++b)
      for (index h = 0; h < Hq_; ++h)
        for (index i = 0; i < L; ++i)
          for (index j = 0; j < S; ++j) weights(b, 0, i, j) += per_head(b, h, i, j) / Hq_;
  }

  core::packed_linear q_, k_, v_, o_;  // the projections, packed for the micro-kernel
  mha_rope rope_;
  index E_ = 0, Hq_ = 0, Hkv_ = 0, hd_ = 0, kdim_ = 0, vdim_ = 0;
};

}  // namespace ATTN_ABI
}  // namespace attn
