// attn/size_checks.hpp: the checks that user-given sizes are possible at
// all, each phrased once.
//
// A size is impossible when a product the library would form from it does
// not fit: a view whose elements lie further apart than the address space
// reaches, or an allocation (a cache, a table, a layer's working tensors)
// of more bytes than ptrdiff_t counts. Such a size is refused here, by
// arithmetic, with attn::error, before any product overflows or any
// allocation is tried. A size that fits the address space but not the
// machine's memory still ends in std::bad_alloc when it is allocated.
#pragma once

#include <array>
#include <cstddef>
#include <initializer_list>
#include <sstream>
#include <string>

#include "attn/core/checked_arith.hpp"
#include "attn/error.hpp"
#include "attn/view.hpp"

namespace attn::detail {

// "strides [..] for dims [..]": the got-part of a message about a view's
// layout.
template <class T, int R>
std::string layout_text(const strided<T, R>& v) {
  std::ostringstream s;
  s << "strides ";
  write(s, v.strides);
  s << " for dims ";
  write(s, v.dims);
  return s.str();
}

// A view's span must fit the address space (detail::span_fits): otherwise
// its element offsets overflow and its addresses wrap, so two elements may
// share one. Dims must have been checked non-negative.
template <class T, int R, class Arg>
void check_span(const char* fn, const Arg& arg, const strided<T, R>& v) {
  require(
      span_fits(v), fn, arg,
      [&] {
        return "strides and dims whose span 1 + sum((dims[r] - 1) * |strides[r]|) is at most " +
               std::to_string(core::max_elements<T>()) + " elements (the address space)";
      },
      [&] { return layout_text(v); });
}

// An allocation of the product of `sizes` elements of T (non-negative
// sizes) must fit the address space. `arg` names the argument the message
// blames, `product` spells the product as the caller's names do
// ("batch · capacity · kv_heads · head_dim"), `got` is the argument's value.
template <class T, class Arg, class Got>
void check_size(const char* fn, const Arg& arg, std::initializer_list<index> sizes,
                const char* product, const Got& got) {
  require(
      core::fits_elements<T>(sizes.begin(), sizes.size()), fn, arg,
      [&] { return std::string(product) + " within the address space"; }, got);
}

// The tensor a convenience overload returns, of the given dims, must fit
// before it is allocated (its extents come from several inputs, and an
// input of no elements may have any others).
template <std::size_t N>
void check_result_size(const char* fn, const char* arg, const std::array<index, N>& dims) {
  require(core::fits_elements<float>(dims.data(), N), fn, arg,
          "a result tensor within the address space", dims);
}

}  // namespace attn::detail
