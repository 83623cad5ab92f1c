// attn/yarn.hpp: YaRN rotary frequencies (Peng et al. 2023, "YaRN: Efficient
// Context Window Extension of Large Language Models"), in the form DeepSeek-V2
// and V3 use.
//
// A model trained on original_seq_len positions is stretched by `factor`:
// pairs that turn many times over the original context (high frequencies,
// local order) keep their frequency; pairs that turn less than once
// (low frequencies) are interpolated, their frequency divided by `factor`;
// in between, a linear ramp over pair index blends the two. The ramp runs
// between the pair indices whose wavelength completes beta_fast and
// beta_slow turns over the original context:
//
//   corr(n)  = dim · ln(original_seq_len / (2π n)) / (2 ln theta)
//   low      = max(floor(corr(beta_fast)), 0)
//   high     = min(ceil(corr(beta_slow)), dim − 1)     (+0.001 if equal)
//   ramp(i)  = clamp((i − low) / (high − low), 0, 1)   for pair i
//   f(i)     = theta^(−2i/dim)
//   yarn(i)  = f(i) / factor · ramp(i) + f(i) · (1 − ramp(i))
//
// The result goes to rope_options::inv_freq (attn/rope.hpp) or to any code
// that rotates by pos · inv_freq[i]. YaRN's attention temperature is not
// part of the frequencies: DeepSeek folds it into the softmax scale (see
// mla_config::softmax_scale in attn/mla.hpp).
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

#include "attn/core/index.hpp"
#include "attn/error.hpp"
#include "attn/size_checks.hpp"

namespace attn {

/// YaRN's frequency parameters.
struct yarn_options {
  double theta = 10000.0;        ///< RoPE base, finite and > 1
  double factor = 40.0;          ///< context extension factor, finite and >= 1
  index original_seq_len = 4096; ///< context length the model was trained on, >= 1
  double beta_fast = 32.0;       ///< turns over the original context where the ramp starts (> 0)
  double beta_slow = 1.0;        ///< turns where it ends (> 0, <= beta_fast)
};

/// YaRN inverse frequencies (radians per position) of the rotary_dim / 2
/// pairs of a rotary_dim-wide rotation, computed in double as the file
/// comment states.
/// @throws attn::error if rotary_dim is odd or < 2, or an option is out of
///         the range its comment gives.
inline std::vector<double> yarn_inv_freq(index rotary_dim, const yarn_options& opt = {}) {
  constexpr const char* fn = "yarn_inv_freq";
  using detail::require;
  require(rotary_dim >= 2 && rotary_dim % 2 == 0, fn, "rotary_dim", "an even value >= 2",
          rotary_dim);
  detail::check_size<double>(fn, "rotary_dim", {rotary_dim / 2}, "rotary_dim/2 frequencies",
                             rotary_dim);
  require(std::isfinite(opt.theta) && opt.theta > 1.0, fn, "opt.theta", "a finite value > 1",
          opt.theta);
  require(std::isfinite(opt.factor) && opt.factor >= 1.0, fn, "opt.factor",
          "a finite value >= 1", opt.factor);
  require(opt.original_seq_len >= 1, fn, "opt.original_seq_len", ">= 1", opt.original_seq_len);
  require(std::isfinite(opt.beta_fast) && opt.beta_fast > 0, fn, "opt.beta_fast",
          "a finite value > 0", opt.beta_fast);
  require(std::isfinite(opt.beta_slow) && opt.beta_slow > 0 && opt.beta_slow <= opt.beta_fast,
          fn, "opt.beta_slow", "a finite value in (0, beta_fast]", opt.beta_slow);

  const double pi = 3.14159265358979323846;
  const double dim = static_cast<double>(rotary_dim);
  auto correction_dim = [&](double turns) {
    return dim * std::log(static_cast<double>(opt.original_seq_len) / (turns * 2.0 * pi)) /
           (2.0 * std::log(opt.theta));
  };
  const double low = std::max(std::floor(correction_dim(opt.beta_fast)), 0.0);
  double high = std::min(std::ceil(correction_dim(opt.beta_slow)), dim - 1.0);
  if (high == low) high += 0.001;  // a step instead of a division by zero

  std::vector<double> f(static_cast<std::size_t>(rotary_dim / 2));
  for (std::size_t i = 0; i < f.size(); ++i) {
    const double base = std::pow(opt.theta, -2.0 * static_cast<double>(i) / dim);
    const double ramp = std::clamp((static_cast<double>(i) - low) / (high - low), 0.0, 1.0);
    f[i] = base / opt.factor * ramp + base * (1.0 - ramp);
  }
  return f;
}

}  // namespace attn
