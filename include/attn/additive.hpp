// attn/additive.hpp: additive (Bahdanau) attention, with Luong's `dot` and
// `general` scores behind the same interface.
//
//   additive (Bahdanau, Keras AdditiveAttention, TF-Addons BahdanauAttention):
//       e_ij = vᵀ tanh(W_q q_i + W_k k_j + b)
//   dot (Luong):      e_ij = q_iᵀ k_j
//   general (Luong):  e_ij = q_iᵀ W k_j
//   then a_ij = softmax_j(e_ij) over the visible keys, c_i = Σ_j a_ij v_j.
//
// Tensors are row-major [batch, seq, features]: queries [B, L, d_q], keys
// [B, S, d_k], values [B, S, d_v] (values default to the keys), output
// [B, L, d_v], attention weights [B, L, S]. Views (attn/view.hpp) may have
// any strides on batch and seq; the feature dim must be contiguous.
//
// The key side is projected once per source (additive_attention::
// project_keys, the "memory layer" of the NMT toolkits): W_k k_j for the
// additive score, W k_j for `general`. A decoder then runs any number of
// steps (L = 1 each) against that projection; a step costs O(d_a · d_q) for
// its own query projection plus O(S · d_a) for the scores, never
// O(S · d_a · d_k).
//
// The fused kernel (attn/detail/additive.hpp) never forms the [L, S, d_a]
// tensor of pre-activations: it takes tanh in registers, or an exact
// exponential form of it when the projected features are in range, and
// sums the values in key blocks with an online softmax.
//
// Conventions (as in the rest of attn, docs/design.md):
//  * bool masks: true = may attend. key_lengths[b] hides keys j >= len.
//  * A query row with no visible key gets output 0 and weights 0, never NaN.
//  * A query whose query_mask entry is false gets output 0 (as Keras does);
//    its attention weights, when requested, are still computed (Keras
//    returns them unmasked too).
//  * fp32 accumulation; the same output bits for any thread count.
#pragma once

#include <Eigen/Core>
#include <array>
#include <cmath>
#include <string>
#include <unsupported/Eigen/CXX11/Tensor>
#include <utility>
#include <vector>

#include "attn/core/abi.hpp"
#include "attn/core/aligned.hpp"
#include "attn/core/linear.hpp"
#include "attn/core/simd.hpp"
#include "attn/error.hpp"
#include "attn/mask.hpp"
#include "attn/overlap.hpp"
#include "attn/size_checks.hpp"
#include "attn/view.hpp"

#define ATTN_DETAIL_ALLOWED  // lets the kernel header in (attn/detail/additive.hpp)
#include "attn/detail/additive.hpp"

namespace attn {

/// The score function e_ij of additive_attention.
enum class score_function {
  additive,  ///< Bahdanau / "concat": vᵀ tanh(W_q q + W_k k + b)
  dot,       ///< Luong: qᵀ k (d_q = d_k, no weights)
  general,   ///< Luong: qᵀ W k with W [d_q, d_k]
};

/// The learned parameters of additive_attention. Which fields apply depends
/// on `score`; the others must stay empty (the constructor checks).
///
///  * additive: v [d_a] (required); w_q [d_a, d_q] and w_k [d_a, d_k], each
///    optional: an empty projection is the identity (then d_q or d_k equals
///    d_a). Leaving both out and no bias is Keras' AdditiveAttention, with v
///    as its learned `scale`. bias [d_a] optional. With `normalize`, v is
///    replaced by g · v / ‖v‖ (TF-Addons' weight normalisation; ‖v‖ must
///    not be 0).
///  * dot: nothing.
///  * general: w_k = Luong's W_a, [d_q, d_k].
///
/// Matrices use nn.Linear's orientation [out_features, in_features].
struct additive_weights {
  /// Row-major float matrix, [out_features, in_features].
  using matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  score_function score = score_function::additive;  ///< which e_ij (see score_function)
  matrix w_q;              ///< additive: W_q [d_a, d_q], or empty (identity)
  matrix w_k;              ///< additive: W_k [d_a, d_k] or empty; general: W [d_q, d_k]
  Eigen::VectorXf bias;    ///< additive: b [d_a], or empty (no bias)
  Eigen::VectorXf v;       ///< additive: v [d_a] (required)
  bool normalize = false;  ///< additive: use g · v / ‖v‖ instead of v
  float g = 1.0f;          ///< the scalar of weight normalisation (used when normalize)
};

/// Per-call options of additive_attention::forward.
struct additive_options {
  /// Per-batch number of valid keys: key j of batch b is visible only when
  /// j < key_lengths[b]. Empty = all S keys. Size B, values in [0, S].
  std::vector<index> key_lengths;
  /// [B, S] bool, true = may attend (stride 0 broadcasts). Empty = none.
  strided<const bool, 2> key_mask;
  /// [B, L] bool; false makes that query's output 0 (Keras' query mask).
  strided<const bool, 2> query_mask;
  /// [B, L, S] float, written with the attention weights when non-empty.
  strided<float, 3> weights;
  /// Threads (0 = OpenMP's default). Results do not depend on it.
  int num_threads = 0;
};

inline namespace ATTN_ABI {

class additive_attention;

/// The key-side projection of one source (a batch of key sequences):
/// W_k K (+ nothing else) for the additive score, W K for `general`, the keys
/// themselves for `dot`, stored [B, S, dim] with each row zero-padded to a
/// whole number of SIMD packets. Made by additive_attention::project_keys;
/// reusable for any number of forward calls (decoder steps) of the layer
/// that made it, from any number of threads at once.
class additive_keys {
 public:
  /// An empty projection (B = S = 0); made for real by project_keys.
  additive_keys() = default;
  index batch() const { return p_.B; }   ///< batch size B of the projected keys
  index length() const { return p_.S; }  ///< keys per batch entry, S
  /// Features per projected key: d_a (additive), d_q (general), d_k (dot).
  index dim() const { return p_.dim; }
  /// Projected key j of batch b: dim() floats (padded with zeros to stride).
  const float* row(index b, index j) const { return p_.row(b, j); }

 private:
  friend class additive_attention;
  score_function score_ = score_function::additive;  // of the layer that made it
  detail::additive::key_projection p_;               // rows and exponential-form factors
};

/// Additive (Bahdanau) attention and Luong's dot / general scores; see the
/// file comment. Immutable after construction: one object may serve many
/// threads at once.
class additive_attention {
 public:
  using matrix = additive_weights::matrix;  ///< row-major float matrix
  /// Row-major float tensor [batch, seq, features].
  using tensor3 = Eigen::Tensor<float, 3, Eigen::RowMajor>;

  /// Checks the weights and keeps them (with v normalised when asked).
  /// @throws attn::error naming the field when a weight has the wrong shape,
  ///         a field is set that the score function does not use, v is
  ///         missing (additive), or normalize is asked with ‖v‖ = 0 or a
  ///         non-finite g.
  explicit additive_attention(additive_weights w) : w_(std::move(w)) {
    constexpr const char* fn = "additive_attention";
    using detail::require;
    const score_function sf = w_.score;
    require(sf == score_function::additive || sf == score_function::dot ||
                sf == score_function::general,
            fn, "weights.score", "additive, dot or general", static_cast<int>(sf));
    if (sf == score_function::additive) {
      Da_ = w_.v.size();
      require(Da_ >= 1, fn, "weights.v", "a vector of d_a >= 1 entries", "an empty vector");
      if (w_.w_q.size() != 0)
        require(
            w_.w_q.rows() == Da_ && w_.w_q.cols() >= 1, fn, "weights.w_q",
            [&] { return "[d_a = " + std::to_string(Da_) + ", d_q >= 1] or empty (identity)"; },
            [&] { return shape(w_.w_q); });
      if (w_.w_k.size() != 0)
        require(
            w_.w_k.rows() == Da_ && w_.w_k.cols() >= 1, fn, "weights.w_k",
            [&] { return "[d_a = " + std::to_string(Da_) + ", d_k >= 1] or empty (identity)"; },
            [&] { return shape(w_.w_k); });
      if (w_.bias.size() != 0)
        require(
            w_.bias.size() == Da_, fn, "weights.bias",
            [&] { return "[d_a = " + std::to_string(Da_) + "] or empty"; },
            [&] { return "[" + std::to_string(w_.bias.size()) + "]"; });
      Dq_ = w_.w_q.size() ? w_.w_q.cols() : Da_;
      Dk_ = w_.w_k.size() ? w_.w_k.cols() : Da_;
      D_ = Da_;
    } else {
      const char* kind = sf == score_function::dot ? "empty for score_function::dot"
                                                   : "empty for score_function::general";
      require(w_.w_q.size() == 0, fn, "weights.w_q", kind, [&] { return shape(w_.w_q); });
      require(w_.bias.size() == 0, fn, "weights.bias", kind, "a non-empty vector");
      require(w_.v.size() == 0, fn, "weights.v", kind, "a non-empty vector");
      require(!w_.normalize, fn, "weights.normalize", kind, "true");
      if (sf == score_function::dot) {
        require(w_.w_k.size() == 0, fn, "weights.w_k", kind, [&] { return shape(w_.w_k); });
        Dq_ = Dk_ = 0;  // any, equal; checked per call
      } else {
        require(w_.w_k.rows() >= 1 && w_.w_k.cols() >= 1, fn, "weights.w_k",
                "Luong's W, [d_q, d_k] with both >= 1", [&] { return shape(w_.w_k); });
        Dq_ = w_.w_k.rows();
        Dk_ = w_.w_k.cols();
        D_ = Dq_;
      }
    }
    if (sf == score_function::additive) {
      const index stride = detail::round_up(Da_, core::simd::width);
      v_.assign(static_cast<std::size_t>(stride), 0.0f);
      double norm2 = 0.0;
      for (index a = 0; a < Da_; ++a) norm2 += double(w_.v[a]) * double(w_.v[a]);
      // In double: g / ‖v‖ alone may pass FLT_MAX (tiny v) while every
      // g · v_a / ‖v‖ is at most |g|.
      double factor = 1.0;
      if (w_.normalize) {
        require(std::isfinite(w_.g), fn, "weights.g", "a finite number", w_.g);
        require(norm2 > 0.0 && std::isfinite(norm2), fn, "weights.v",
                "a finite vector of nonzero norm (normalize is on)", "norm 0 or non-finite");
        factor = double(w_.g) / std::sqrt(norm2);
      }
      for (index a = 0; a < Da_; ++a)
        v_[static_cast<std::size_t>(a)] = static_cast<float>(factor * double(w_.v[a]));
      double sum = 0.0, sum_abs = 0.0;
      for (const float x : v_) sum += x, sum_abs += std::fabs(double(x));
      sum_v_ = static_cast<float>(sum);
      sum_abs_v_ = sum_abs;
    }
    // The projections on the core's packed layer: threaded over output
    // features, with bits that do not depend on the thread count.
    if (w_.w_q.size() != 0) wq_ = core::packed_linear(w_.w_q, w_.bias);
    if (w_.w_k.size() != 0) wk_ = core::packed_linear(w_.w_k, Eigen::VectorXf());
  }

  /// The score function the layer was built with.
  score_function score() const { return w_.score; }
  /// Query features d_q (0 for `dot`: any, equal to the key features).
  index query_dim() const { return Dq_; }
  /// Key features d_k (0 for `dot`: any, equal to the query features).
  index key_dim() const { return Dk_; }
  /// d_a for the additive score, 0 for dot / general.
  index attention_dim() const { return Da_; }
  /// The v in use (g · v / ‖v‖ with normalize), [d_a]; empty unless additive.
  Eigen::Map<const Eigen::VectorXf> effective_v() const {
    return {v_.data(), w_.score == score_function::additive ? Da_ : 0};
  }

  /// Projects the keys [B, S, d_k] once (see additive_keys). Cost
  /// O(B · S · d_a · d_k) for the additive score with W_k (on all threads),
  /// a copy otherwise.
  /// @throws attn::error if keys has the wrong feature count or layout.
  additive_keys project_keys(strided<const float, 3> keys) const {
    check_keys("additive_attention::project_keys", keys);
    return project_keys_on(keys, 0);
  }

  /// Attention of queries [B, L, d_q] over projected keys (project_keys) and
  /// values [B, S, d_v], into out [B, L, d_v] (written; out and opt.weights
  /// share no memory with the inputs, the masks or each other,
  /// attn/overlap.hpp). One decoder step is L = 1. See additive_options for masks,
  /// attention weights and threads.
  /// @throws attn::error on any shape, stride or option mismatch.
  void forward(strided<const float, 3> query, const additive_keys& keys,
               strided<const float, 3> values, strided<float, 3> out,
               const additive_options& opt = {}) const {
    constexpr const char* fn = "additive_attention::forward";
    using detail::require;
    require(keys.score_ == w_.score && (w_.score == score_function::dot || keys.p_.dim == D_), fn,
            "keys", "a projection made by this layer's project_keys",
            "one of another score function or dimension");
    const index B = keys.p_.B, S = keys.p_.S;
    check_query(fn, query, B, w_.score == score_function::dot ? keys.p_.dim : Dq_);
    detail::check_non_null(fn, "values", values);
    const index Dv = values.dims[2];
    require(
        values.dims[0] == B && values.dims[1] == S && Dv >= 1, fn, "values",
        [&] {
          return detail::dims_note(std::array<index, 3>{B, S, Dv}, "[batch, S, d_v >= 1]");
        },
        values.dims);
    detail::check_span(fn, "values", values);
    detail::check_unit_last_stride(fn, "values.strides[2]", values, detail::short_rows::any_stride);
    const index L = query.dims[1];
    const std::array<index, 3> out_dims{B, L, Dv};
    detail::check_non_null(fn, "out", out);
    require(
        out.dims == out_dims, fn, "out",
        [&] { return detail::dims_note(out_dims, "[batch, L, d_v]"); }, out.dims);
    detail::check_span(fn, "out", out);
    detail::check_unit_last_stride(fn, "out.strides[2]", out, detail::short_rows::any_stride);
    detail::check_non_overlapping(fn, "out.strides", out);
    check_options(fn, opt, B, L, S);
    // The projected queries, [B, L] rows as wide as the projected keys'
    // (queries that broadcast may claim more rows than fit).
    detail::check_size<float>(fn, "query", {B, L, keys.p_.stride},
                              "batch · L · d (the projected queries)", query.dims);
    check_disjoint(fn, out, opt, detail::region("query", query), detail::region("values", values));
    if (B == 0 || L == 0) return;
    const detail::additive::call c{opt.key_lengths, opt.key_mask, opt.query_mask, opt.weights,
                                   opt.num_threads};
    detail::additive::run(kernel_layer(), query, keys.p_, values, out, c);
  }

  /// The same without a cached projection: projects `keys` [B, S, d_k]
  /// first. `values` [B, S, d_v] may be an empty view ({}): the keys are then
  /// the values (d_v = d_k).
  void forward(strided<const float, 3> query, strided<const float, 3> keys,
               strided<const float, 3> values, strided<float, 3> out,
               const additive_options& opt = {}) const {
    constexpr const char* fn = "additive_attention::forward";
    check_keys(fn, keys);
    check_query(fn, query, keys.dims[0], w_.score == score_function::dot ? keys.dims[2] : Dq_);
    // A default-constructed values view ({}) means "the keys".
    const bool absent = values.empty() && values.dims == std::array<index, 3>{0, 0, 0};
    check_options(fn, opt, keys.dims[0], query.dims[1], keys.dims[1]);
    // The overload below sees only the projection; the keys themselves are
    // an input too.
    check_disjoint(fn, out, opt, detail::region("keys", keys));
    const additive_keys c = project_keys_on(keys, opt.num_threads);
    forward(query, c, absent ? keys : values, out, opt);
  }

  /// Tensor convenience: queries [B, L, d_q], keys [B, S, d_k], values
  /// [B, S, d_v]; returns a new [B, L, d_v] tensor.
  tensor3 forward(const tensor3& query, const tensor3& keys, const tensor3& values,
                  const additive_options& opt = {}) const {
    detail::check_result_size(
        "additive_attention::forward", "out",
        std::array<index, 3>{query.dimension(0), query.dimension(1), values.dimension(2)});
    tensor3 out(query.dimension(0), query.dimension(1), values.dimension(2));
    forward(view(query), view(keys), view(values), view(out), opt);
    return out;
  }

  /// Tensor convenience with the keys as values: returns [B, L, d_k].
  tensor3 forward(const tensor3& query, const tensor3& keys,
                  const additive_options& opt = {}) const {
    return forward(query, keys, keys, opt);
  }

  /// Tensor convenience over a cached projection: returns [B, L, d_v].
  tensor3 forward(const tensor3& query, const additive_keys& keys, const tensor3& values,
                  const additive_options& opt = {}) const {
    detail::check_result_size(
        "additive_attention::forward", "out",
        std::array<index, 3>{query.dimension(0), query.dimension(1), values.dimension(2)});
    tensor3 out(query.dimension(0), query.dimension(1), values.dimension(2));
    forward(view(query), keys, view(values), view(out), opt);
    return out;
  }

 private:
  static std::string shape(const matrix& m) {
    return "[" + std::to_string(m.rows()) + ", " + std::to_string(m.cols()) + "]";
  }

  void check_keys(const char* fn, const strided<const float, 3>& keys) const {
    using detail::require;
    detail::check_non_null(fn, "keys", keys);
    detail::check_non_negative_dims(fn, "keys", keys);
    if (Dk_ > 0)
      require(
          keys.dims[2] == Dk_, fn, "keys",
          [&] { return "dims [batch, S, d_k = " + std::to_string(Dk_) + "]"; }, keys.dims);
    else
      require(keys.dims[2] >= 1, fn, "keys", "dims [batch, S, d >= 1]", keys.dims);
    detail::check_span(fn, "keys", keys);
    // The projection is [batch, S, d] padded to the packet width (64 floats
    // bounds every width); keys that broadcast may claim more rows than fit.
    const index padded = detail::round_up(D_ > 0 ? D_ : keys.dims[2], 64);
    detail::check_size<float>(fn, "keys", {keys.dims[0], keys.dims[1], padded},
                              "batch · S · d (the projected keys)", keys.dims);
    detail::check_unit_last_stride(fn, "keys.strides[2]", keys, detail::short_rows::any_stride);
  }

  static void check_query(const char* fn, const strided<const float, 3>& q, index B, index Dq) {
    using detail::require;
    detail::check_non_null(fn, "query", q);
    require(
        q.dims[0] == B && q.dims[1] >= 0 && q.dims[2] == Dq, fn, "query",
        [&] {
          return "dims [batch = " + std::to_string(B) + ", L, d_q = " + std::to_string(Dq) + "]";
        },
        q.dims);
    detail::check_span(fn, "query", q);
    detail::check_unit_last_stride(fn, "query.strides[2]", q, detail::short_rows::any_stride);
  }

  static void check_options(const char* fn, const additive_options& opt, index B, index L,
                            index S) {
    using detail::require;
    detail::check_key_lengths(fn, opt.key_lengths, B, S);
    if (!opt.key_mask.empty()) {
      const std::array<index, 2> want{B, S};
      require(
          opt.key_mask.dims == want, fn, "key_mask",
          [&] { return detail::dims_note(want, "[batch, S]"); }, opt.key_mask.dims);
      detail::check_non_negative_strides(fn, "key_mask.strides", opt.key_mask);
      detail::check_span(fn, "key_mask", opt.key_mask);
    }
    if (!opt.query_mask.empty()) {
      const std::array<index, 2> want{B, L};
      require(
          opt.query_mask.dims == want, fn, "query_mask",
          [&] { return detail::dims_note(want, "[batch, L]"); }, opt.query_mask.dims);
      detail::check_non_negative_strides(fn, "query_mask.strides", opt.query_mask);
      detail::check_span(fn, "query_mask", opt.query_mask);
    }
    if (!opt.weights.empty()) {
      const std::array<index, 3> want{B, L, S};
      require(
          opt.weights.dims == want, fn, "weights",
          [&] { return detail::dims_note(want, "[batch, L, S]"); }, opt.weights.dims);
      detail::check_span(fn, "weights", opt.weights);
      detail::check_non_overlapping(fn, "weights.strides", opt.weights);
    }
    detail::check_num_threads(fn, "num_threads", opt.num_threads);
  }

  // The aliasing rule (attn/overlap.hpp): out and opt.weights apart from
  // each other, from the given inputs and from the masks and lengths in opt.
  static void check_disjoint(const char* fn, const strided<float, 3>& out,
                             const additive_options& opt, const detail::memory_region& input,
                             const detail::memory_region& other_input = {}) {
    detail::check_disjoint(fn, {detail::region("out", out), detail::region("weights", opt.weights)},
                           {input, other_input, detail::region("key_mask", opt.key_mask),
                            detail::region("query_mask", opt.query_mask),
                            detail::region("key_lengths", opt.key_lengths)});
  }

  // The layer as the kernel reads it (detail::additive::layer).
  detail::additive::layer kernel_layer() const {
    detail::additive::layer l;
    l.additive = w_.score == score_function::additive;
    l.dim = D_;
    l.wq = w_.w_q.size() != 0 ? &wq_ : nullptr;
    l.wk = w_.w_k.size() != 0 ? &wk_ : nullptr;
    l.bias = &w_.bias;
    l.wq_raw = w_.w_q.data();
    l.wq_in = w_.w_q.cols();
    l.wk_raw = w_.w_k.data();
    l.wk_in = w_.w_k.cols();
    l.v = v_.data();
    l.sum_v = sum_v_;
    l.exp_form = l.additive && sum_abs_v_ <= detail::additive::sum_abs_v_limit;
    return l;
  }

  // project_keys on `threads` threads (0: all); the bits do not depend on it.
  additive_keys project_keys_on(const strided<const float, 3>& keys, int threads) const {
    additive_keys c;
    c.score_ = w_.score;
    c.p_ = detail::additive::project_keys(kernel_layer(), keys, threads);
    return c;
  }

  additive_weights w_;
  core::packed_linear wq_, wk_;    // W_q (with the bias) and W_k, packed when given
  core::aligned_vector<float> v_;  // effective v, zero-padded to the packet stride
  // Σ_a v_a and Σ_a |v_a| (additive): the exponential form's score is
  // Σ v - 2 Σ v / (E F + 1), used only while Σ|v| is far from overflow
  // (detail::additive::sum_abs_v_limit).
  float sum_v_ = 0.0f;
  double sum_abs_v_ = 0.0;
  index Da_ = 0, Dq_ = 0, Dk_ = 0, D_ = 0;
};

}  // namespace ATTN_ABI
}  // namespace attn
