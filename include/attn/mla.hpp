// attn/mla.hpp: DeepSeek-V2/V3 multi-head latent attention (MLA), as
// DeepSeek's reference inference code defines the layer.
//
// For x [B, T, dim] at positions p = cache length + t:
//
//   q        = wq x                        (q_lora_rank = 0, V2-Lite)
//            = wq_b RMSNorm_q(wq_a x)      (q_lora_rank > 0, V2 and V3)
//   q        → per head [q_nope (nope) │ q_pe (rope)], q_pe rotated at p
//   [c │ k_pe] = wkv_a x;  c ← RMSNorm_kv(c);  k_pe rotated at p (one per
//              token, shared by every head)
//   cache   ← [c │ k_pe]                   (kv_lora_rank + rope values a token)
//   per head h, with wkv_b's rows for h split into W_UK [nope, rank] and
//   W_UV [v, rank]:
//     k_j   = [W_UK c_j │ k_pe_j],  v_j = W_UV c_j
//     o     = softmax(q · k_j · scale, bottom-right causal) · v_j
//   y       = wo [o_1 … o_H]
//
// RoPE pairs are interleaved (2i, 2i+1), with YaRN frequencies
// (attn/yarn.hpp) when max_seq_len > original_seq_len; then the softmax
// scale is qk_head_dim^-0.5 · mscale², mscale = 0.1 · mscale_cfg ·
// ln(factor) + 1 (for V3: 192^-0.5 · 1.3689² = 0.135234).
//
// Two ways to compute the same attention:
//  * naive: expand k_j and v_j for every cached token, per head (O(S ·
//    heads · rank · (nope + v)) per call), and run the flash kernel with
//    d_qk = nope + rope, d_v = v. Best for long prompts, where the expansion
//    is shared by many queries.
//  * absorbed: fold W_UK into the query (q_lat = [q_nope W_UK │ q_pe], rank
//    + rope wide) and W_UV into the output, so every head attends over the
//    cached rows themselves: MQA with d_qk = rank + rope and d_v = rank (V =
//    the first rank values of each row). All heads share each cache tile;
//    long caches are split across threads and merged by LSE
//    (attn/detail/latent_attention.hpp). Best for decoding.
// mla_path::automatic picks absorbed for calls of at most
// mla_options::absorbed_max_tokens new tokens, naive above.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <unsupported/Eigen/CXX11/Tensor>
#include <vector>

#include "attn/core/linear.hpp"
#include "attn/core/parallel.hpp"
#define ATTN_DETAIL_ALLOWED  // lets the detail headers in (docs/design.md)
#include "attn/detail/latent_attention.hpp"
#include "attn/error.hpp"
#include "attn/mla_cache.hpp"
#include "attn/size_checks.hpp"
#include "attn/paged_kv_cache.hpp"
#include "attn/rope.hpp"
#include "attn/sdpa.hpp"
#include "attn/yarn.hpp"

namespace attn {

/// Shape and RoPE settings of a multi_head_latent_attention layer, named as
/// in DeepSeek's reference ModelArgs.
struct mla_config {
  index dim = 0;                ///< model width (input and output features)
  index n_heads = 0;            ///< attention heads
  index q_lora_rank = 0;        ///< 0: one wq; > 0: wq_a, q_norm, wq_b
  index kv_lora_rank = 512;     ///< latent width c_kv
  index qk_nope_head_dim = 128; ///< per-head query/key features without RoPE
  index qk_rope_head_dim = 64;  ///< per-head query features with RoPE (and the shared k_pe), even
  index v_head_dim = 128;       ///< per-head value features
  index max_seq_len = 163840;   ///< positions the model serves; > original_seq_len turns YaRN on
  index original_seq_len = 4096;  ///< YaRN: the trained context
  double rope_theta = 10000.0;    ///< RoPE base
  double rope_factor = 40.0;      ///< YaRN: context extension factor
  double beta_fast = 32.0;        ///< YaRN ramp start (turns over the original context)
  double beta_slow = 1.0;         ///< YaRN ramp end
  double mscale = 1.0;            ///< YaRN attention-temperature coefficient
  float norm_eps = 1e-6f;         ///< RMSNorm epsilon

  /// Query/key head width: nope + rope (192).
  index qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  /// Whether YaRN is in force (max_seq_len > original_seq_len).
  bool yarn() const { return max_seq_len > original_seq_len; }
  /// qk_head_dim^-0.5, times mscale² = (0.1 · mscale · ln(rope_factor) + 1)²
  /// when YaRN is in force. Never (rank + rope)^-0.5: the absorbed path
  /// computes the same scores as the naive one.
  double softmax_scale() const {
    double s = 1.0 / std::sqrt(static_cast<double>(qk_head_dim()));
    if (yarn()) {
      const double m = 0.1 * mscale * std::log(rope_factor) + 1.0;
      s *= m * m;
    }
    return s;
  }
  /// Radians per position of the qk_rope_head_dim / 2 rotary pairs: YaRN's
  /// when in force, else rope_theta^(-2i / rope_dim).
  std::vector<double> rope_inv_freq() const {
    if (yarn())
      return yarn_inv_freq(qk_rope_head_dim,
                           {rope_theta, rope_factor, original_seq_len, beta_fast, beta_slow});
    return rope_table::default_inv_freq(qk_rope_head_dim, rope_theta);
  }

  /// DeepSeek-V2-Lite: dim 2048, 16 heads, no query LoRA, mscale 0.707.
  static mla_config deepseek_v2_lite() {
    mla_config c;
    c.dim = 2048;
    c.n_heads = 16;
    c.q_lora_rank = 0;
    c.mscale = 0.707;
    return c;
  }
  /// DeepSeek-V2: dim 5120, 128 heads, q_lora_rank 1536. mscale 0.707, as
  /// the released config's mscale_all_dim (the value that reaches the
  /// softmax scale there).
  static mla_config deepseek_v2() {
    mla_config c;
    c.dim = 5120;
    c.n_heads = 128;
    c.q_lora_rank = 1536;
    c.mscale = 0.707;
    return c;
  }
  /// DeepSeek-V3: dim 7168, 128 heads, q_lora_rank 1536, mscale 1.0.
  static mla_config deepseek_v3() {
    mla_config c;
    c.dim = 7168;
    c.n_heads = 128;
    c.q_lora_rank = 1536;
    c.mscale = 1.0;
    return c;
  }
};

/// The layer's parameters, named after the checkpoint tensors, in
/// nn.Linear's orientation [out_features, in_features]. H = n_heads,
/// qk = qk_head_dim().
struct mla_weights {
  /// Row-major float matrix, [out_features, in_features].
  using matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  matrix wq;               ///< [H·qk, dim]; only when q_lora_rank = 0
  matrix wq_a;             ///< [q_lora_rank, dim]; only when q_lora_rank > 0
  Eigen::VectorXf q_norm;  ///< [q_lora_rank] RMSNorm weight; only when q_lora_rank > 0
  matrix wq_b;             ///< [H·qk, q_lora_rank]; only when q_lora_rank > 0
  matrix wkv_a;            ///< [kv_lora_rank + rope, dim]
  Eigen::VectorXf kv_norm; ///< [kv_lora_rank] RMSNorm weight
  matrix wkv_b;            ///< [H·(nope + v), kv_lora_rank]: per head W_UK rows, then W_UV rows
  matrix wo;               ///< [dim, H·v]
};

/// Which computation forward() uses.
enum class mla_path {
  automatic,  ///< absorbed for at most mla_options::absorbed_max_tokens new tokens, else naive
  naive,      ///< expand per-head K and V from the cache; flash attention
  absorbed,   ///< attend over the latent rows with W_UK / W_UV folded in
};

/// Per-call options of multi_head_latent_attention::forward.
struct mla_options {
  /// The computation to use (see mla_path).
  mla_path path = mla_path::automatic;
  /// The automatic choice's threshold on new tokens per call. The absorbed
  /// path costs about 2·(rank + rope + rank) FLOPs per head, query and key;
  /// the naive one 2·(qk + v) plus the expansion, 2·rank·(nope + v) per head
  /// and cached key, shared by the call's queries: with V2/V3 shapes they
  /// cross near a few hundred queries.
  index absorbed_max_tokens = 256;
  /// Threads; 0 = OpenMP's default. Results are bit-identical for any value.
  int num_threads = 0;
};

using tensor3 = Eigen::Tensor<float, 3, Eigen::RowMajor>;

// The layer holds weights packed for this instruction set (attn/core/abi.hpp).
inline namespace ATTN_ABI {

/// DeepSeek multi-head latent attention (see the file comment). Immutable
/// after construction: one layer may serve many threads at once, each with
/// its own cache.
class multi_head_latent_attention {
 public:
  /// Row-major float matrix, as in mla_weights.
  using matrix = mla_weights::matrix;

  /// @throws attn::error naming the field when the config is inconsistent
  ///         (a size < 1, odd rope dim, non-finite RoPE settings) or a weight
  ///         has the wrong shape or is given where it does not apply.
  multi_head_latent_attention(const mla_config& config, const mla_weights& w) : cfg_(config) {
    constexpr const char* fn = "multi_head_latent_attention";
    using detail::require;
    require(cfg_.dim >= 1, fn, "config.dim", ">= 1", cfg_.dim);
    require(cfg_.n_heads >= 1, fn, "config.n_heads", ">= 1", cfg_.n_heads);
    require(cfg_.q_lora_rank >= 0, fn, "config.q_lora_rank", ">= 0", cfg_.q_lora_rank);
    require(cfg_.kv_lora_rank >= 1, fn, "config.kv_lora_rank", ">= 1", cfg_.kv_lora_rank);
    require(cfg_.qk_nope_head_dim >= 0, fn, "config.qk_nope_head_dim", ">= 0",
            cfg_.qk_nope_head_dim);
    require(cfg_.qk_rope_head_dim >= 0 && cfg_.qk_rope_head_dim % 2 == 0, fn,
            "config.qk_rope_head_dim", "an even value >= 0", cfg_.qk_rope_head_dim);
    check_widths(fn);
    require(cfg_.qk_head_dim() >= 1, fn, "config.qk_nope_head_dim + qk_rope_head_dim", ">= 1",
            cfg_.qk_head_dim());
    require(cfg_.v_head_dim >= 1, fn, "config.v_head_dim", ">= 1", cfg_.v_head_dim);
    detail::check_size<float>(fn, "config.n_heads", {cfg_.n_heads, widest()},
                              "n_heads · head widths", cfg_.n_heads);
    require(std::isfinite(cfg_.norm_eps) && cfg_.norm_eps >= 0, fn, "config.norm_eps",
            "a finite value >= 0", cfg_.norm_eps);
    require(std::isfinite(cfg_.mscale), fn, "config.mscale", "a finite value", cfg_.mscale);
    if (cfg_.qk_rope_head_dim > 0) inv_freq_ = cfg_.rope_inv_freq();  // checks theta, factor, ...
    const double scale = cfg_.softmax_scale();
    require(std::isfinite(scale) && scale > 0, fn, "config", "a finite softmax scale > 0", scale);
    scale_ = static_cast<float>(scale);
    // Both paths pre-scale queries by scale·log2 e; checked here, not after
    // the cache has grown.
    detail::check_scale(fn, "config (softmax scale)", scale_);

    const index H = cfg_.n_heads, qk = cfg_.qk_head_dim(), rank = cfg_.kv_lora_rank;
    const index nope = cfg_.qk_nope_head_dim, vd = cfg_.v_head_dim;
    if (cfg_.q_lora_rank == 0) {
      check_shape(w.wq, "weights.wq", H * qk, cfg_.dim);
      check_empty(w.wq_a.size() + w.wq_b.size() + w.q_norm.size(),
                  "weights.wq_a / wq_b / q_norm", "q_lora_rank = 0");
      wq_ = core::packed_linear(w.wq, Eigen::VectorXf());
    } else {
      check_shape(w.wq_a, "weights.wq_a", cfg_.q_lora_rank, cfg_.dim);
      check_vector(w.q_norm, "weights.q_norm", cfg_.q_lora_rank);
      check_shape(w.wq_b, "weights.wq_b", H * qk, cfg_.q_lora_rank);
      check_empty(w.wq.size(), "weights.wq", "q_lora_rank > 0");
      wq_a_ = core::packed_linear(w.wq_a, Eigen::VectorXf());
      wq_b_ = core::packed_linear(w.wq_b, Eigen::VectorXf());
      q_norm_ = w.q_norm;
    }
    check_shape(w.wkv_a, "weights.wkv_a", rank + cfg_.qk_rope_head_dim, cfg_.dim);
    check_vector(w.kv_norm, "weights.kv_norm", rank);
    check_shape(w.wkv_b, "weights.wkv_b", H * (nope + vd), rank);
    check_shape(w.wo, "weights.wo", cfg_.dim, H * vd);
    wkv_a_ = core::packed_linear(w.wkv_a, Eigen::VectorXf());
    kv_norm_ = w.kv_norm;
    wo_ = core::packed_linear(w.wo, Eigen::VectorXf());

    // Per head: W_UK [nope, rank] expands keys (naive), its transpose
    // absorbs queries; W_UV [v, rank] expands values (naive) and un-absorbs
    // outputs (absorbed): both are y = x Wᵀ on rank-wide rows.
    for (index h = 0; h < H; ++h) {
      const auto uk = w.wkv_b.middleRows(h * (nope + vd), nope);
      const auto uv = w.wkv_b.middleRows(h * (nope + vd) + nope, vd);
      uk_.emplace_back(uk, Eigen::VectorXf());
      uk_t_.emplace_back(matrix(uk.transpose()), Eigen::VectorXf());
      uv_.emplace_back(uv, Eigen::VectorXf());
    }
  }

  /// The configuration the layer was built with.
  const mla_config& config() const { return cfg_; }
  /// The softmax scale in use (mla_config::softmax_scale, as float).
  float softmax_scale() const { return scale_; }

  /// A cache for this layer: `batch` sequences of up to `capacity` tokens.
  template <class Storage = float>
  mla_cache<Storage> make_cache(index batch, index capacity) const {
    return mla_cache<Storage>(batch, capacity, cfg_.kv_lora_rank, cfg_.qk_rope_head_dim);
  }

  /// The path forward() takes for `tokens` new tokens under `opt`.
  static mla_path path_for(index tokens, const mla_options& opt) {
    if (opt.path != mla_path::automatic) return opt.path;
    return tokens <= opt.absorbed_max_tokens ? mla_path::absorbed : mla_path::naive;
  }

  /// Runs the layer on x [B, T, dim], the next T tokens of each of the B
  /// sequences in `cache` (token t of sequence b sits at position
  /// cache.lengths()[b] + t), appends their latent rows to the cache and
  /// returns [B, T, dim]. Prefill (T = prompt), decoding (T = 1) and chunks
  /// are the same call; every query sees the cached tokens up to its own
  /// position (bottom-right causal on each sequence's length).
  /// @throws attn::error on a shape mismatch, a cache of another shape, bad
  ///         options, or a sequence that would pass the cache's capacity;
  ///         the cache is then unchanged.
  template <class Storage>
  tensor3 forward(const tensor3& x, mla_cache<Storage>& cache, const mla_options& opt = {}) const {
    constexpr const char* fn = "multi_head_latent_attention::forward";
    const index B = x.dimension(0), T = x.dimension(1);
    detail::require(x.dimension(2) == cfg_.dim, fn, "x.dimension(2) (dim)", cfg_.dim,
                    x.dimension(2));
    detail::require(cache.batch() == B, fn, "cache.batch()", B, cache.batch());
    detail::require(
        cache.kv_lora_rank() == cfg_.kv_lora_rank && cache.rope_dim() == cfg_.qk_rope_head_dim, fn,
        "cache", "kv_lora_rank and rope_dim matching the layer", "a cache of another shape");
    check_options(fn, opt);
    cache.require_room(T, fn);
    // The working rows: B · T of them, each at most H · widest() (or
    // q_lora_rank) wide; the naive path expands up to capacity cached rows
    // per head.
    check_work(fn, B * T, cache.capacity());
    tensor3 y(B, T, cfg_.dim);
    if (B == 0 || T == 0) return y;

    const int threads = opt.num_threads;
    const index lat = cfg_.kv_lora_rank + cfg_.qk_rope_head_dim, rows = B * T;
    std::vector<float> q, kv;
    project_new_tokens(
        x.data(), rows,
        [&](index r) { return cache.lengths()[static_cast<std::size_t>(r / T)] + r % T; }, threads,
        q, kv);
    cache.append_rows(
        T, [&](index b, index t) { return kv.data() + (b * T + t) * lat; },
        [&](index b, index t) { return kv.data() + (b * T + t) * lat + cfg_.kv_lora_rank; });

    std::vector<index> lengths(static_cast<std::size_t>(B)), first(lengths.size()),
        tokens(lengths.size(), T);
    for (index b = 0; b < B; ++b) {
      lengths[static_cast<std::size_t>(b)] = cache.lengths()[static_cast<std::size_t>(b)];
      first[static_cast<std::size_t>(b)] = b * T;
    }
    const detail::mla::dense_latent_rows<Storage> cached{cache.rows().data, cache.capacity(), lat};
    std::vector<float> o(static_cast<std::size_t>(rows * cfg_.n_heads * cfg_.v_head_dim));
    attend(q, cached, lengths, first, tokens, opt, o);
    wo_.apply(o.data(), cfg_.n_heads * cfg_.v_head_dim, rows, y.data(), cfg_.dim, threads);
    return y;
  }

  /// A paged cache for this layer: num_blocks blocks of block_size latent
  /// rows, each row one "key head" of kv_lora_rank + qk_rope_head_dim values
  /// [c │ k_pe] and no value rows (the values are the rows' first
  /// kv_lora_rank). Forks share blocks as for any paged_kv_cache.
  template <class Storage = float>
  paged_kv_cache<Storage> make_paged_cache(index num_blocks, index block_size) const {
    return paged_kv_cache<Storage>(num_blocks, block_size, 1,
                                   cfg_.kv_lora_rank + cfg_.qk_rope_head_dim, 0);
  }

  /// One serving step over a paged latent cache (make_paged_cache): x [1,
  /// total, dim] holds the new tokens of every listed sequence packed one
  /// after another (sequence seqs[i] owns rows [cu_seqlens[i],
  /// cu_seqlens[i + 1])), at positions cache.length(seqs[i]) + t. Appends
  /// their latent rows to the sequences' blocks, attends bottom-right causal
  /// on each sequence's length, and returns [1, total, dim]. Each sequence
  /// takes the absorbed or the naive path by its own number of new tokens
  /// (mla_options), so a batch may mix prefill chunks and decodes, and each
  /// sequence's rows are the bits it gets alone, or from forward() over an
  /// mla_cache holding the same tokens (batch invariance). The sequences
  /// are distinct.
  /// @throws attn::error on shape mismatches, a cache of another shape, a
  ///         dead or repeated sequence, cumulative lengths that do not fit x,
  ///         bad options or too few free blocks; the cache is then unchanged.
  template <class Storage>
  tensor3 forward(const tensor3& x, paged_kv_cache<Storage>& cache, const std::vector<index>& seqs,
                  const std::vector<index>& cu_seqlens, const mla_options& opt = {}) const {
    constexpr const char* fn = "multi_head_latent_attention::forward(paged cache)";
    const index total = x.dimension(1);
    const index lat = cfg_.kv_lora_rank + cfg_.qk_rope_head_dim;
    detail::require(x.dimension(0) == 1, fn, "x.dimension(0)",
                    "1 (the sequences' tokens packed along dimension 1)", x.dimension(0));
    detail::require(x.dimension(2) == cfg_.dim, fn, "x.dimension(2) (dim)", cfg_.dim,
                    x.dimension(2));
    detail::require(cache.kv_heads() == 1 && cache.head_dim() == lat && cache.v_head_dim() == 0, fn,
                    "cache",
                    "1 head of kv_lora_rank + qk_rope_head_dim values and no value rows "
                    "(make_paged_cache)",
                    "a cache of another shape");
    check_options(fn, opt);
    const index B =
        detail::varlen::check_cu_seqlens(fn, "cu_seqlens", cu_seqlens, total, "x.dimension(1)");
    detail::require(
        static_cast<index>(seqs.size()) == B, fn, "seqs.size()",
        [&] { return "cu_seqlens.size() - 1 = " + std::to_string(B); }, seqs.size());
    std::vector<index> start(static_cast<std::size_t>(B));
    for (index i = 0; i < B; ++i) {
      detail::require(cache.contains(seqs[i]), fn, "seqs",
                      "live sequences (added or forked, not freed)",
                      [&] { return std::to_string(seqs[i]) + " is not"; });
      for (index j = 0; j < i; ++j)
        detail::require(seqs[j] != seqs[i], fn, "seqs", "distinct sequences",
                        [&] { return std::to_string(seqs[i]) + " twice"; });
      start[static_cast<std::size_t>(i)] = cache.length(seqs[i]);
    }
    index longest = 0;  // after the append
    for (index i = 0; i < B; ++i)
      longest =
          std::max(longest, start[static_cast<std::size_t>(i)] + cu_seqlens[i + 1] - cu_seqlens[i]);
    check_work(fn, total, longest);
    tensor3 y(1, total, cfg_.dim);
    if (total == 0) return y;

    const int threads = opt.num_threads;
    std::vector<index> position(static_cast<std::size_t>(total));
    for (index i = 0; i < B; ++i)
      for (index t = cu_seqlens[i]; t < cu_seqlens[i + 1]; ++t)
        position[static_cast<std::size_t>(t)] =
            start[static_cast<std::size_t>(i)] + t - cu_seqlens[i];
    std::vector<float> q, kv;
    project_new_tokens(
        x.data(), total, [&](index r) { return position[static_cast<std::size_t>(r)]; }, threads, q,
        kv);
    // v_new: no values, but a pointer into kv (a view of no elements).
    const strided<const float, 3> k_new{kv.data(), {total, 1, lat}, {lat, lat, 1}};
    const strided<const float, 3> v_new{kv.data(), {total, 1, 0}, {lat, lat, 1}};
    cache.append(seqs, k_new, v_new,
                 cu_seqlens);  // the only step that may refuse: nothing written then

    std::vector<index> lengths(static_cast<std::size_t>(B)), first(lengths.size()),
        tokens(lengths.size());
    std::vector<const std::int32_t*> tables(lengths.size());
    for (index i = 0; i < B; ++i) {
      const std::size_t u = static_cast<std::size_t>(i);
      lengths[u] = cache.length(seqs[i]);
      first[u] = cu_seqlens[i];
      tokens[u] = cu_seqlens[i + 1] - cu_seqlens[i];
      tables[u] = cache.block_table(seqs[i]).data();
    }
    int shift = 0;
    while ((index{1} << shift) < cache.block_size()) ++shift;
    const detail::mla::paged_latent_rows<Storage> cached{cache.key_pool().data, tables.data(),
                                                         shift, lat};
    std::vector<float> o(static_cast<std::size_t>(total * cfg_.n_heads * cfg_.v_head_dim));
    attend(q, cached, lengths, first, tokens, opt, o);
    wo_.apply(o.data(), cfg_.n_heads * cfg_.v_head_dim, total, y.data(), cfg_.dim, threads);
    return y;
  }

 private:
  // The per-head widths must be small enough that their sums (qk_head_dim,
  // the latent row, a head of wkv_b) cannot overflow, checked before any is
  // formed; n_heads times the widest is checked once all are known >= 0.
  void check_widths(const char* fn) const {
    // Each width at most half the limit: then every sum of two fits too.
    const index half = core::max_elements<float>() / 2;
    detail::require(std::max({cfg_.qk_nope_head_dim, cfg_.qk_rope_head_dim, cfg_.kv_lora_rank,
                              cfg_.v_head_dim}) <= half,
                    fn, "config", "head widths whose sums fit the address space",
                    "qk_nope_head_dim, qk_rope_head_dim, kv_lora_rank or v_head_dim too large");
  }
  // The widest per-head row: qk_head_dim, kv_lora_rank + qk_rope_head_dim,
  // qk_nope_head_dim + v_head_dim (after check_widths: none overflows).
  index widest() const {
    return std::max({cfg_.qk_head_dim(), cfg_.kv_lora_rank + cfg_.qk_rope_head_dim,
                     cfg_.qk_nope_head_dim + cfg_.v_head_dim});
  }

  static void check_shape(const matrix& m, const char* what, index rows, index cols) {
    detail::require(
        m.rows() == rows && m.cols() == cols, "multi_head_latent_attention", what,
        [&] { return "[" + std::to_string(rows) + ", " + std::to_string(cols) + "]"; },
        [&] { return "[" + std::to_string(m.rows()) + ", " + std::to_string(m.cols()) + "]"; });
  }
  static void check_vector(const Eigen::VectorXf& v, const char* what, index size) {
    detail::require(v.size() == size, "multi_head_latent_attention", what,
                    [&] { return "size " + std::to_string(size); }, v.size());
  }
  static void check_empty(index size, const char* what, const char* because) {
    detail::require(size == 0, "multi_head_latent_attention", what,
                    [&] { return std::string("empty with ") + because; }, "given");
  }

  // x <- x / sqrt(mean(x²) + eps) · w over n values.
  void rms_norm(float* x, index n, const Eigen::VectorXf& w) const {
    double ss = 0.0;
    for (index i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
    // 1/rms stays in double until it has multiplied x: with norm_eps = 0 and
    // a tiny latent (rms < 2^-126) it passes FLT_MAX although every x / rms
    // is at most sqrt(n) (fuzz_mla_cache found the float inverse giving inf).
    // An all-zero latent with norm_eps = 0 (e.g. a projection that underflowed)
    // gives 0, the value for every eps > 0, rather than 0 / 0 = NaN.
    const double ms = ss / static_cast<double>(n) + cfg_.norm_eps;
    const double inv = ms > 0 ? 1.0 / std::sqrt(ms) : 0.0;
    for (index i = 0; i < n; ++i) x[i] = static_cast<float>(x[i] * inv) * w[i];
  }

  void check_options(const char* fn, const mla_options& opt) const {
    detail::require(opt.path == mla_path::automatic || opt.path == mla_path::naive ||
                        opt.path == mla_path::absorbed,
                    fn, "opt.path", "an mla_path enumerator", static_cast<int>(opt.path));
    detail::require(opt.absorbed_max_tokens >= 0, fn, "opt.absorbed_max_tokens", ">= 0",
                    opt.absorbed_max_tokens);
    detail::check_num_threads(fn, "opt.num_threads", opt.num_threads);
  }

  // The working rows of `rows` new tokens, each at most H · widest() (or
  // q_lora_rank) wide; the naive path expands up to `cached` rows per head.
  void check_work(const char* fn, index rows, index cached) const {
    detail::check_size<float>(fn, "x", {rows, cfg_.n_heads, widest()},
                              "new tokens · n_heads · head widths", rows);
    detail::check_size<float>(fn, "x", {rows, cfg_.q_lora_rank}, "new tokens · q_lora_rank", rows);
    detail::check_size<float>(fn, "cache", {cached, widest()}, "cached tokens · head widths",
                              cached);
  }

  // The new tokens x [rows, dim], token r at position pos(r): q [rows, H·qk]
  // with q_pe rotated, and the latent rows kv [rows, rank + rope] = [RMSNorm(c)
  // │ k_pe rotated]. Row by row the same bits for any number of rows.
  template <class Position>
  void project_new_tokens(const float* x, index rows, Position pos, int threads,
                          std::vector<float>& q, std::vector<float>& kv) const {
    const index H = cfg_.n_heads, qk = cfg_.qk_head_dim(), rank = cfg_.kv_lora_rank;
    const index rope = cfg_.qk_rope_head_dim, nope = cfg_.qk_nope_head_dim;
    q.assign(static_cast<std::size_t>(rows * H * qk), 0.0f);
    kv.assign(static_cast<std::size_t>(rows * (rank + rope)), 0.0f);
    if (rows == 0) return;
    if (cfg_.q_lora_rank == 0) {
      wq_.apply(x, cfg_.dim, rows, q.data(), H * qk, threads);
    } else {
      const index r = cfg_.q_lora_rank;
      std::vector<float> qa(static_cast<std::size_t>(rows * r));
      wq_a_.apply(x, cfg_.dim, rows, qa.data(), r, threads);
      for (index i = 0; i < rows; ++i) rms_norm(qa.data() + i * r, r, q_norm_);
      wq_b_.apply(qa.data(), r, rows, q.data(), H * qk, threads);
    }
    wkv_a_.apply(x, cfg_.dim, rows, kv.data(), rank + rope, threads);

    // RoPE at each token's position: q_pe of every head and the shared k_pe.
    if (rope > 0) {
      const index pairs = rope / 2;
      std::vector<float> cs(static_cast<std::size_t>(2 * pairs));
      for (index row = 0; row < rows; ++row) {
        const double p = static_cast<double>(pos(row));
        for (index i = 0; i < pairs; ++i) {
          const double angle = p * inv_freq_[static_cast<std::size_t>(i)];
          cs[static_cast<std::size_t>(i)] = static_cast<float>(std::cos(angle));
          cs[static_cast<std::size_t>(pairs + i)] = static_cast<float>(std::sin(angle));
        }
        for (index h = 0; h < H; ++h)
          detail::rope_rotate_head(q.data() + (row * H + h) * qk + nope, cs.data(),
                                   cs.data() + pairs, pairs, rope_layout::interleaved);
        detail::rope_rotate_head(kv.data() + row * (rank + rope) + rank, cs.data(),
                                 cs.data() + pairs, pairs, rope_layout::interleaved);
      }
    }
    for (index i = 0; i < rows; ++i) rms_norm(kv.data() + i * (rank + rope), rank, kv_norm_);
  }

  // Attention of the new tokens' queries q [total, H, qk] over the cached
  // rows: sequence b's tokens[b] tokens from first[b] on, lengths[b] tokens
  // in all (its new ones included), its rows at rows.of(b); o [total, H, v].
  // Each sequence takes the absorbed or the naive path by its own number of
  // new tokens, so its bits do not depend on the others.
  template <class Rows>
  void attend(const std::vector<float>& q, const Rows& rows, const std::vector<index>& lengths,
              const std::vector<index>& first, const std::vector<index>& tokens,
              const mla_options& opt, std::vector<float>& o) const {
    std::vector<index> absorbed;
    for (std::size_t b = 0; b < lengths.size(); ++b) {
      if (tokens[b] == 0) continue;
      if (path_for(tokens[b], opt) == mla_path::absorbed)
        absorbed.push_back(static_cast<index>(b));
      else
        attend_naive(q, rows.of(static_cast<index>(b)), lengths[b], first[b], tokens[b], o,
                     opt.num_threads);
    }
    if (!absorbed.empty())
      attend_absorbed(q, rows, lengths, first, tokens, absorbed, o, opt.num_threads);
  }

  // Absorbed, for the listed sequences: their query rows gathered, q_lat =
  // [q_nope W_UK │ q_pe] per head, latent attention over the cached rows,
  // W_UV per head, scattered back to o.
  template <class Rows>
  void attend_absorbed(const std::vector<float>& q, const Rows& rows,
                       const std::vector<index>& lengths, const std::vector<index>& first,
                       const std::vector<index>& tokens, const std::vector<index>& seqs,
                       std::vector<float>& o, int threads) const {
    const index H = cfg_.n_heads, qk = cfg_.qk_head_dim(), rank = cfg_.kv_lora_rank;
    const index rope = cfg_.qk_rope_head_dim, nope = cfg_.qk_nope_head_dim, vd = cfg_.v_head_dim;
    const index lat = rank + rope, B = static_cast<index>(seqs.size());
    // The listed sequences' tokens, one after another (none copied when
    // they are all of the call's, in order: the mla_cache forward).
    std::vector<index> at(seqs.size()), n(seqs.size()), lens(seqs.size());
    index total = 0;
    bool in_place = true;
    for (index i = 0; i < B; ++i) {
      const std::size_t b = static_cast<std::size_t>(seqs[static_cast<std::size_t>(i)]);
      at[static_cast<std::size_t>(i)] = total;
      n[static_cast<std::size_t>(i)] = tokens[b];
      lens[static_cast<std::size_t>(i)] = lengths[b];
      in_place = in_place && first[b] == total;
      total += tokens[b];
    }
    std::vector<float> gathered;
    const float* qs = q.data();
    if (!in_place) {
      gathered.resize(static_cast<std::size_t>(total * H * qk));
      for (index i = 0; i < B; ++i)
        std::copy_n(
            q.data() + first[static_cast<std::size_t>(seqs[static_cast<std::size_t>(i)])] * H * qk,
            n[static_cast<std::size_t>(i)] * H * qk,
            gathered.data() + at[static_cast<std::size_t>(i)] * H * qk);
      qs = gathered.data();
    }
    std::vector<float> q_lat(static_cast<std::size_t>(total * H * lat));
    std::vector<float> o_lat(static_cast<std::size_t>(total * H * rank));
    const int head_threads = core::threads_for_work(threads, 2.0 * total * H * nope * rank);
    core::parallel_for(H, head_threads, [&](index h) {
      float* dst = q_lat.data() + h * lat;
      if (nope > 0)
        uk_t_[static_cast<std::size_t>(h)].apply(qs + h * qk, H * qk, total, dst, H * lat, 1);
      else
        for (index r = 0; r < total; ++r) std::fill_n(dst + r * H * lat, rank, 0.0f);
      for (index r = 0; r < total; ++r)
        std::copy_n(qs + (r * H + h) * qk + nope, rope, dst + r * H * lat + rank);
    });

    // The listed sequences' rows, renumbered 0 .. B - 1.
    struct listed_rows {
      using sequence = typename Rows::sequence;
      const Rows* all;
      const std::vector<index>* seqs;
      sequence of(index i) const { return all->of((*seqs)[static_cast<std::size_t>(i)]); }
    };
    detail::mla::latent_batch<listed_rows> p{q_lat.data(), {&rows, &seqs}, lens.data(), at.data(),
                                             n.data(),     o_lat.data(),   B,           H,
                                             rank,         rope,           scale_};
    detail::mla::latent_attention(p, threads);

    std::vector<float> o_gathered;
    float* dst_all = o.data();
    if (!in_place) {
      o_gathered.resize(static_cast<std::size_t>(total * H * vd));
      dst_all = o_gathered.data();
    }
    core::parallel_for(H, head_threads, [&](index h) {
      uv_[static_cast<std::size_t>(h)].apply(o_lat.data() + h * rank, H * rank, total,
                                             dst_all + h * vd, H * vd, 1);
    });
    if (!in_place)
      for (index i = 0; i < B; ++i)
        std::copy_n(
            o_gathered.data() + at[static_cast<std::size_t>(i)] * H * vd,
            n[static_cast<std::size_t>(i)] * H * vd,
            o.data() + first[static_cast<std::size_t>(seqs[static_cast<std::size_t>(i)])] * H * vd);
  }

  // Naive, for one sequence: per group of heads, expand K = [W_UK c │ k_pe]
  // and V = W_UV c for each of its n cached tokens and run the flash kernel
  // on its T queries from token `first` on.
  template <class Sequence>
  void attend_naive(const std::vector<float>& q, const Sequence& cached, index n, index first,
                    index T, std::vector<float>& o, int threads) const {
    const index H = cfg_.n_heads, qk = cfg_.qk_head_dim(), rank = cfg_.kv_lora_rank;
    const index rope = cfg_.qk_rope_head_dim, nope = cfg_.qk_nope_head_dim, vd = cfg_.v_head_dim;
    const index lat = rank + rope;
    std::vector<float> c(static_cast<std::size_t>(n * lat));  // the rows as float
    for (index j = 0; j < n; ++j) {
      const auto* row = cached.row(j);
      for (index i = 0; i < lat; ++i)
        c[static_cast<std::size_t>(j * lat + i)] = static_cast<float>(row[i]);
    }
    // Heads per group: expanded K and V of a group stay under ~64 MiB.
    const index per_head = n * (qk + vd) * static_cast<index>(sizeof(float));
    const index G = std::clamp<index>((index{64} << 20) / std::max<index>(per_head, 1), 1, H);
    std::vector<float> k(static_cast<std::size_t>(n * G * qk)),
        v(static_cast<std::size_t>(n * G * vd));
    for (index h0 = 0; h0 < H; h0 += G) {
      const index g = std::min(G, H - h0);
      for (index h = h0; h < h0 + g; ++h) {
        float* kh = k.data() + (h - h0) * qk;
        if (nope > 0) uk_[static_cast<std::size_t>(h)].apply(c.data(), lat, n, kh, g * qk, threads);
        for (index j = 0; j < n; ++j)
          std::copy_n(c.data() + j * lat + rank, rope, kh + j * g * qk + nope);
        uv_[static_cast<std::size_t>(h)].apply(c.data(), lat, n, v.data() + (h - h0) * vd, g * vd,
                                               threads);
      }
      strided<const float, 4> qv{
          q.data() + (first * H + h0) * qk, {1, T, g, qk}, {T * H * qk, H * qk, qk, 1}};
      strided<const float, 4> kv{k.data(), {1, n, g, qk}, {n * g * qk, g * qk, qk, 1}};
      strided<const float, 4> vv{v.data(), {1, n, g, vd}, {n * g * vd, g * vd, vd, 1}};
      strided<float, 4> ov{
          o.data() + (first * H + h0) * vd, {1, T, g, vd}, {T * H * vd, H * vd, vd, 1}};
      sdpa_options so;
      so.scale = scale_;
      so.causal = causal::bottom_right;
      so.num_threads = threads;
      scaled_dot_product_attention(qv, kv, vv, ov, so);
    }
  }

  mla_config cfg_;
  float scale_ = 1.0f;
  std::vector<double> inv_freq_;
  core::packed_linear wq_, wq_a_, wq_b_, wkv_a_, wo_;
  Eigen::VectorXf q_norm_, kv_norm_;
  std::vector<core::packed_linear> uk_, uk_t_, uv_;  // per head
};

}  // namespace ATTN_ABI
}  // namespace attn
