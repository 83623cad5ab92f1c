// Links two translation units that both include <attn/attn.hpp>: a definition
// in a header that is not inline would make this fail to link.
#include <cmath>
#include <cstdio>

float first_tu();
float second_tu();

int main() {
  const float a = first_tu(), b = second_tu();
  std::printf("first %g, second %g\n", a, b);
  // Every value is 0.5, so every weighted average is 0.5.
  return std::fabs(a - 0.5f) < 1e-6f && std::fabs(b - 0.5f) < 1e-6f ? 0 : 1;
}
