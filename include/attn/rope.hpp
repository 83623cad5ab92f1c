// attn/rope.hpp: rotary position embeddings (RoPE, Su et al. 2021), applied
// in place to Q or K.
//
// The first `rotary_dim` features of every head are split into rotary_dim/2
// pairs (a, b); pair i of the token at position p is rotated by the angle
// θ = p · inv_freq[i] (radians):
//
//   a' = a cos θ − b sin θ,    b' = a sin θ + b cos θ.
//
// Features rotary_dim .. head_dim−1 are left untouched (partial rotary, as in
// GPT-NeoX and GPT-J). Two pair layouts are in use:
//
//   rope_layout::interleaved  pairs (2i, 2i+1)                GPT-J, DeepSeek
//   rope_layout::half_split   pairs (i, i + rotary_dim/2)     GPT-NeoX, Llama
//
// By default inv_freq[i] = theta^(−2i / rotary_dim) with theta = 10000.
// A rope_table precomputes cos θ and sin θ for every position once (angles
// in double, stored as float); scaled variants (NTK, YaRN) pass their own
// inv_freq and an attention factor mscale that multiplies cos and sin
// through rope_options.
//
// Because R_m q · R_n k = q · R_{n−m} k for each pair, the attention score of
// a rotated query and key depends on their positions only through m − n.
//
// Usage:
//
//   attn::rope_table rope(/*max_positions=*/4096, /*rotary_dim=*/128);
//   attn::apply_rope(rope, attn::bshd(q), /*position_offset=*/past_len,
//                    attn::rope_layout::half_split);
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "attn/core/abi.hpp"
#include "attn/core/parallel.hpp"
#include "attn/error.hpp"
#include "attn/size_checks.hpp"
#include "attn/view.hpp"

namespace attn {

/// How the rotated features of a head are paired.
enum class rope_layout {
  interleaved,  ///< pairs (2i, 2i+1): GPT-J, DeepSeek (V2/V3 k_pe / q_pe)
  half_split,   ///< pairs (i, i + rotary_dim/2): GPT-NeoX, Llama ("rotate_half")
};

/// Frequencies and scaling of a rope_table.
struct rope_options {
  /// Frequency base: inv_freq[i] = theta^(−2i / rotary_dim). Finite, > 0.
  /// 10000 in most models, 500000 in Llama 3.
  double theta = 10000.0;

  /// Own frequencies instead of theta's (NTK-aware, YaRN, Llama 3 scaling,
  /// DeepSeek): inv_freq[i] is the angle in radians per position of pair i.
  /// Empty = use theta; otherwise rotary_dim/2 finite values.
  std::vector<double> inv_freq;

  /// Factor multiplying cos and sin, finite and > 0: YaRN's attention
  /// scaling (0.1 · ln(factor) + 1); 1 = plain RoPE.
  double mscale = 1.0;
};

/// Precomputed cos / sin of the rotary angles for positions
/// [0, max_positions) and pairs [0, rotary_dim/2).
///
/// Entry (p, i) holds mscale · cos(p · inv_freq[i]) and
/// mscale · sin(p · inv_freq[i]), the angle computed in double and the
/// result rounded once to float. Memory: 2 · max_positions · rotary_dim/2
/// floats. The table is immutable after construction, so one table may be
/// used by any number of threads and calls at once.
class rope_table {
 public:
  /// Standard frequencies inv_freq[i] = theta^(−2i / rotary_dim),
  /// i in [0, rotary_dim/2), in radians per position.
  ///
  /// @throws attn::error if rotary_dim is negative or odd, or theta is not a
  ///         finite value > 0.
  static std::vector<double> default_inv_freq(index rotary_dim, double theta = 10000.0) {
    return make_inv_freq("rope_table::default_inv_freq", rotary_dim, theta);
  }

  /// Builds the table.
  ///
  /// @param max_positions  number of positions the table covers (>= 0);
  ///                       apply_rope throws for positions beyond it.
  /// @param rotary_dim     rotated features per head: even, >= 0 (0 = RoPE off).
  /// @param opt            theta, optional inv_freq, mscale (see rope_options).
  /// @throws attn::error naming the argument if max_positions < 0,
  ///         rotary_dim is negative or odd, opt.theta is not finite and > 0,
  ///         opt.inv_freq is non-empty with size != rotary_dim/2 or holds a
  ///         non-finite value, or opt.mscale is not finite and > 0, or
  ///         max_positions · rotary_dim/2 floats do not fit the address space.
  explicit rope_table(index max_positions, index rotary_dim, const rope_options& opt = {})
      : max_positions_(max_positions), rotary_dim_(rotary_dim), mscale_(opt.mscale) {
    constexpr const char* fn = "rope_table";
    using detail::require;
    require(max_positions >= 0, fn, "max_positions", ">= 0", max_positions);
    inv_freq_ = make_inv_freq(fn, rotary_dim, opt.theta);  // checks rotary_dim, theta
    if (!opt.inv_freq.empty()) {
      require(
          opt.inv_freq.size() == inv_freq_.size(), fn, "opt.inv_freq",
          [&] { return "size rotary_dim/2 = " + std::to_string(inv_freq_.size()); },
          [&] { return "size " + std::to_string(opt.inv_freq.size()); });
      for (std::size_t i = 0; i < opt.inv_freq.size(); ++i)
        require(std::isfinite(opt.inv_freq[i]), fn, "opt.inv_freq", "finite values", [&] {
          return "opt.inv_freq[" + std::to_string(i) + "] = " + std::to_string(opt.inv_freq[i]);
        });
      inv_freq_ = opt.inv_freq;
    }
    require(std::isfinite(opt.mscale) && opt.mscale > 0, fn, "opt.mscale", "a finite value > 0",
            opt.mscale);

    // The tables' size, checked before it is formed (2^62 positions of 4
    // pairs would wrap to 0 and the loop below write past the end).
    detail::check_size<float>(fn, "max_positions", {max_positions, pairs()},
                              "max_positions · rotary_dim/2", max_positions);
    const index n = pairs();
    cos_.resize(static_cast<std::size_t>(max_positions * n));
    sin_.resize(cos_.size());
    for (index p = 0; p < max_positions; ++p)
      for (index i = 0; i < n; ++i) {
        const double angle = static_cast<double>(p) * inv_freq_[static_cast<std::size_t>(i)];
        const auto k = static_cast<std::size_t>(p * n + i);
        cos_[k] = static_cast<float>(mscale_ * std::cos(angle));
        sin_[k] = static_cast<float>(mscale_ * std::sin(angle));
      }
  }

  /// Positions covered: [0, max_positions()).
  index max_positions() const { return max_positions_; }
  /// Rotated features per head (even).
  index rotary_dim() const { return rotary_dim_; }
  /// Number of rotated pairs, rotary_dim() / 2.
  index pairs() const { return rotary_dim_ / 2; }
  /// The factor multiplying every cos and sin.
  double mscale() const { return mscale_; }
  /// Radians per position of each pair (rotary_dim()/2 values).
  const std::vector<double>& inv_freq() const { return inv_freq_; }

  /// mscale · cos(pos · inv_freq[i]) for i in [0, pairs()); pos must be in
  /// [0, max_positions()) (not checked).
  const float* cos(index pos) const { return cos_.data() + pos * pairs(); }
  /// mscale · sin(pos · inv_freq[i]) for i in [0, pairs()); pos unchecked.
  const float* sin(index pos) const { return sin_.data() + pos * pairs(); }

 private:
  static std::vector<double> make_inv_freq(const char* fn, index rotary_dim, double theta) {
    check_rotary_dim(fn, rotary_dim);
    detail::require(std::isfinite(theta) && theta > 0, fn, "theta", "a finite value > 0", theta);
    std::vector<double> f(static_cast<std::size_t>(rotary_dim / 2));
    for (std::size_t i = 0; i < f.size(); ++i)
      f[i] = std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(rotary_dim));
    return f;
  }
  static void check_rotary_dim(const char* fn, index rotary_dim) {
    detail::require(rotary_dim >= 0 && rotary_dim % 2 == 0, fn, "rotary_dim", "an even value >= 0",
                    rotary_dim);
    detail::check_size<double>(fn, "rotary_dim", {rotary_dim / 2}, "rotary_dim/2 frequencies",
                               rotary_dim);
  }
  index max_positions_;
  index rotary_dim_;
  double mscale_;
  std::vector<double> inv_freq_;
  std::vector<float> cos_;  // [max_positions, rotary_dim/2]
  std::vector<float> sin_;  // [max_positions, rotary_dim/2]
};

namespace detail {

// Checks everything but the positions; returns false when there is nothing
// to do (no elements, or rotary_dim == 0).
inline bool rope_check_view(const rope_table& table, const strided<float, 4>& x, rope_layout layout,
                            int num_threads) {
  constexpr const char* fn = "apply_rope";
  check_non_negative_dims(fn, "x", x);
  check_non_null(fn, "x", x);
  check_span(fn, "x", x);
  check_unit_last_stride(fn, "x.strides[3]", x);
  require(
      x.dims[3] >= table.rotary_dim(), fn, "x.dims[3] (head_dim)",
      [&] { return ">= table.rotary_dim() = " + std::to_string(table.rotary_dim()); }, x.dims[3]);
  require(layout == rope_layout::interleaved || layout == rope_layout::half_split, fn, "layout",
          "rope_layout::interleaved or rope_layout::half_split", static_cast<int>(layout));
  check_num_threads(fn, "num_threads", num_threads);
  require(non_overlapping(x), fn, "x",
          "a view whose elements do not overlap (it is written in place)",
          [&] { return layout_text(x); });
  return !has_zero_extent(x) && table.rotary_dim() > 0;
}

// Checks that positions [offset, offset + seq) lie in the table. `arg` names
// the offset; with batch >= 0 it is printed as arg[batch].
inline void rope_check_positions(const rope_table& table, index offset, index seq, const char* arg,
                                 index batch = -1) {
  const index maxp = table.max_positions();
  const bool ok = offset >= 0 && (seq == 0 || (seq <= maxp && offset <= maxp - seq));
  if (ok) return;
  std::ostringstream exp;
  exp << "an offset in [0, max_positions - seq] = [0, " << maxp - seq
      << "] (max_positions = " << maxp << ", seq = " << seq << ")";
  const std::string name =
      batch >= 0 ? std::string(arg) + "[" + std::to_string(batch) + "]" : std::string(arg);
  fail("apply_rope", name.c_str(), exp.str(), offset);
}

}  // namespace detail

// `omp simd` on the rotation loops: with OpenMP the compiler vectorizes them
// at -O2 as well (GCC's -O2 cost model otherwise skips loops that need an
// aliasing check). The table and x never overlap, which is what it asserts.
// Not under Clang's UndefinedBehaviorSanitizer: its checks inside the loop
// stop the vectorizer, and Clang then warns that the pragma failed
// (-Wpass-failed, an error under -Werror).
#if defined(__has_feature)
#if __has_feature(undefined_behavior_sanitizer)
#define ATTN_DETAIL_ROPE_NO_SIMD
#endif
#endif
#if defined(_OPENMP) && !defined(ATTN_DETAIL_ROPE_NO_SIMD)
#define ATTN_DETAIL_ROPE_SIMD _Pragma("omp simd")
#else
#define ATTN_DETAIL_ROPE_SIMD
#endif

// The rotation's code depends on the compiler flags (vector width, OpenMP),
// so it lives in the ISA namespace, opened innermost under detail
// (docs/design.md, section 3).
namespace detail {
inline namespace ATTN_ABI {

// Rotates one head vector's pairs with the given cos / sin rows.
inline void rope_rotate_head(float* v, const float* c, const float* s, index pairs,
                             rope_layout layout) {
  if (layout == rope_layout::half_split) {
    float* lo = v;
    float* hi = v + pairs;
    ATTN_DETAIL_ROPE_SIMD
    for (index i = 0; i < pairs; ++i) {
      const float a = lo[i], b = hi[i];
      lo[i] = a * c[i] - b * s[i];
      hi[i] = a * s[i] + b * c[i];
    }
  } else {
    ATTN_DETAIL_ROPE_SIMD
    for (index i = 0; i < pairs; ++i) {
      const float a = v[2 * i], b = v[2 * i + 1];
      v[2 * i] = a * c[i] - b * s[i];
      v[2 * i + 1] = a * s[i] + b * c[i];
    }
  }
}

// The rotation of a checked view: batch b uses offsets[b * offset_stride].
inline void rope_apply(const rope_table& table, const strided<float, 4>& x, const index* offsets,
                       index offset_stride, rope_layout layout, int num_threads) {
  const index B = x.dims[0], S = x.dims[1], H = x.dims[2];
  const index pairs = table.pairs();
  // Group (batch, seq) rows into tasks of at least ~16k rotated floats, so a
  // task outweighs the cost of handing it out.
  const index per_row = H * 2 * pairs;
  const index rows = B * S;
  const index rows_per_task = std::max<index>(1, (index{1} << 14) / std::max<index>(1, per_row));
  const index tasks = ceil_div(rows, rows_per_task);
  const double flops = 3.0 * static_cast<double>(rows) * static_cast<double>(per_row);
  core::parallel_for(tasks, core::threads_for_work(num_threads, flops), [&](index t) {
    const index end = std::min(rows, (t + 1) * rows_per_task);
    for (index r = t * rows_per_task; r < end; ++r) {
      const index b = r / S, s = r % S;
      const index pos = offsets[b * offset_stride] + s;
      const float* c = table.cos(pos);
      const float* sn = table.sin(pos);
      float* row = x.data + b * x.strides[0] + s * x.strides[1];
      for (index h = 0; h < H; ++h) rope_rotate_head(row + h * x.strides[2], c, sn, pairs, layout);
    }
  });
}

}  // namespace ATTN_ABI
}  // namespace detail

inline namespace ATTN_ABI {

/// Applies rotary position embeddings in place: token s of every batch is
/// rotated as position position_offset + s.
///
/// @param table            cos / sin table (rotary_dim, frequencies, mscale).
/// @param x                [batch, seq, heads, head_dim] float, Q or K; any
///                         strides (e.g. attn::bhsd, attn::packed_qkv) except
///                         that the head dim must have stride 1 and no two
///                         elements may share an address. Features
///                         [0, rotary_dim) of each head are rotated, the rest
///                         left as they are.
/// @param position_offset  position of token 0 (e.g. the KV-cache length
///                         when decoding), >= 0.
/// @param layout           how features are paired (see rope_layout).
/// @param num_threads      threads to use, 0 = OpenMP's default; small calls
///                         run on one. Results are bit-identical for any value.
///
/// @throws attn::error (naming the argument, the expected and the actual
///         value) if x has negative dims or null data, x.strides[3] != 1,
///         head_dim < table.rotary_dim(), x overlaps itself, num_threads < 0,
///         layout is not a rope_layout enumerator,
///         or a position in [position_offset, position_offset + seq) lies
///         outside [0, table.max_positions()). Nothing is written on error.
inline void apply_rope(const rope_table& table, strided<float, 4> x, index position_offset,
                       rope_layout layout, int num_threads = 0) {
  const bool work = detail::rope_check_view(table, x, layout, num_threads);
  detail::rope_check_positions(table, position_offset, x.dims[1], "position_offset");
  if (work) detail::rope_apply(table, x, &position_offset, 0, layout, num_threads);
}

/// Applies rotary position embeddings in place with one position offset per
/// batch entry: token s of batch b is rotated as position
/// position_offsets[b] + s (KV-cache decoding of sequences of different
/// lengths).
///
/// @param table             cos / sin table, as in the single-offset overload.
/// @param x                 [batch, seq, heads, head_dim] float, rotated in
///                          place, as in the single-offset overload.
/// @param position_offsets  batch values, each >= 0.
/// @param layout            how features are paired (see rope_layout).
/// @param num_threads       threads to use, 0 = OpenMP's default.
///
/// @throws attn::error as the single-offset overload (an offset out of
///         range is named position_offsets[b]), and if
///         position_offsets.size() != batch.
inline void apply_rope(const rope_table& table, strided<float, 4> x,
                       const std::vector<index>& position_offsets, rope_layout layout,
                       int num_threads = 0) {
  const bool work = detail::rope_check_view(table, x, layout, num_threads);
  const index B = x.dims[0];
  attn::detail::require(
      static_cast<index>(position_offsets.size()) == B, "apply_rope", "position_offsets",
      [&] { return "size batch = x.dims[0] = " + std::to_string(B); },
      [&] { return "size " + std::to_string(position_offsets.size()); });
  for (index b = 0; b < B; ++b)
    detail::rope_check_positions(table, position_offsets[static_cast<std::size_t>(b)], x.dims[1],
                                 "position_offsets", b);
  if (work) detail::rope_apply(table, x, position_offsets.data(), 1, layout, num_threads);
}

}  // namespace ATTN_ABI
}  // namespace attn
