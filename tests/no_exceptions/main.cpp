// attn built with -fno-exceptions: valid calls work; an invalid argument
// prints the error message and aborts (attn/error.hpp) instead of throwing.
//   no_exceptions        -> runs a valid call, exits 0
//   no_exceptions bad    -> K/V with 3 heads for 2 query heads: message on
//                           stderr, then abort
#include <attn/attn.hpp>

#include <cstdio>
#include <cstring>

int main(int argc, char** argv) {
  Eigen::Tensor<float, 4, Eigen::RowMajor> q(1, 3, 2, 8), k(1, 4, 2, 8), bad(1, 4, 3, 8);
  q.setConstant(1.0f);
  k.setConstant(1.0f);
  bad.setConstant(1.0f);
  const bool invalid = argc > 1 && std::strcmp(argv[1], "bad") == 0;
  const auto out = attn::scaled_dot_product_attention(q, invalid ? bad : k, invalid ? bad : k);
  std::printf("out(0,0,0,0) = %g\n", out(0, 0, 0, 0));
  return out(0, 0, 0, 0) == 1.0f ? 0 : 1;
}
