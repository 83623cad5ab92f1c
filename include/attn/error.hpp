// attn/error.hpp: the one exception type the library throws, and the helpers
// that build its messages.
//
// Every public entry checks its arguments before doing any work and throws
// attn::error whose message names the function, the argument, what was
// expected and what came, e.g.
//   "attn::scaled_dot_product_attention: k: expected dims [2, 100, 4, 64]
//    ([batch, seq_k, heads_kv, d_qk]), got [2, 100, 3, 64]"
#pragma once

#include <array>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "attn/core/index.hpp"
#include "attn/core/units.hpp"

namespace attn {

/// Thrown for every invalid argument: shapes, strides, options, masks.
/// Derives from std::invalid_argument so generic handlers catch it too.
/// Under -fno-exceptions the library prints the same message to stderr and
/// calls std::abort() instead of throwing.
class error : public std::invalid_argument {
 public:
  /// An error with message `what`; the library's messages read
  /// "attn::FUNCTION: ARGUMENT: expected E, got G".
  explicit error(const std::string& what) : std::invalid_argument(what) {}
};

namespace detail {

// Writes a value into an error message; arrays of extents print as
// [a, b, c], and a callable is called first, so a message part that costs an
// allocation to build is only built when the check fails.
template <class T>
void write(std::ostream& os, const T& x) {
  if constexpr (std::is_invocable<const T&>::value)
    write(os, x());
  else
    os << x;
}
template <class T, std::size_t N>
void write(std::ostream& os, const std::array<T, N>& a) {
  os << '[';
  for (std::size_t i = 0; i < N; ++i) os << (i ? ", " : "") << a[i];
  os << ']';
}

// The expected-dims part of a message: "dims [a, b, c] (names)", where
// names says what each extent is ("[batch, L, d_v]").
template <std::size_t N>
std::string dims_note(const std::array<index, N>& d, const char* names) {
  std::ostringstream s;
  s << "dims ";
  write(s, d);
  s << " (" << names << ")";
  return s.str();
}

// An argument named as a field of a caller's argument: "opt.attention" and
// "scale" print "opt.attention.scale"; an empty part is left out. Lets one
// check serve entries that spell the same option differently, with nothing
// built unless the check fails.
struct field_name {
  const char* base;
  const char* field;
};
inline std::ostream& operator<<(std::ostream& os, const field_name& n) {
  const bool both = *n.base != '\0' && *n.field != '\0';
  return os << n.base << (both ? "." : "") << n.field;
}

// Formats "fn: arg: expected E, got G" and throws attn::error. `arg` is
// anything printable: a string, a field_name.
template <class Arg, class Expected, class Got>
[[noreturn]] inline void fail(const char* fn, const Arg& arg, const Expected& expected,
                              const Got& got) {
  std::ostringstream s;
  s << "attn::" << fn << ": " << arg << ": expected ";
  write(s, expected);
  s << ", got ";
  write(s, got);
#if defined(__cpp_exceptions) || defined(__EXCEPTIONS)
  throw error(s.str());
#else
  // Built with -fno-exceptions: say what went wrong, then stop.
  std::fprintf(stderr, "%s\n", s.str().c_str());
  std::abort();
#endif
}

// Checks a condition; on failure throws with the standard message format.
// Pass message parts that need building (dims_note, to_string) as lambdas:
// a passing check then costs a comparison, nothing more.
template <class Arg, class Expected, class Got>
inline void require(bool ok, const char* fn, const Arg& arg, const Expected& expected,
                    const Got& got) {
  if (!ok) fail(fn, arg, expected, got);
}

// log2(e): kernels keep scores in log2 units (Q pre-scaled by scale·log2 e,
// so the softmax can use exp2), hence the second half of check_scale.
using core::log2e;

// The rule for every softmax scale: scale·log2 e must be finite too, or the
// pre-scaled queries overflow.
template <class Arg>
void check_scale(const char* fn, const Arg& arg, float scale) {
  require(std::isfinite(scale) && std::isfinite(scale * log2e), fn, arg,
          "a finite number below FLT_MAX / log2(e)", scale);
}

// num_threads: 0 means OpenMP's default, negative means nothing.
template <class Arg>
void check_num_threads(const char* fn, const Arg& arg, int num_threads) {
  require(num_threads >= 0, fn, arg, ">= 0 (0 = default)", num_threads);
}

}  // namespace detail
}  // namespace attn
