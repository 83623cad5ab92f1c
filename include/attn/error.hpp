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
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "attn/core/index.hpp"

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

// Formats "fn: arg: expected E, got G" and throws attn::error.
template <class Expected, class Got>
[[noreturn]] inline void fail(const char* fn, const char* arg, const Expected& expected,
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
template <class Expected, class Got>
inline void require(bool ok, const char* fn, const char* arg, const Expected& expected,
                    const Got& got) {
  if (!ok) fail(fn, arg, expected, got);
}

}  // namespace detail
}  // namespace attn
