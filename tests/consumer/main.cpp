// Consumer check: compiled against an installed attn found with
// find_package(attn CONFIG REQUIRED). Runs one small causal attention and
// checks it against a direct softmax computation. Exit code 0 = pass.
#include <algorithm>
#include <attn/attn.hpp>
#include <cmath>
#include <cstdio>
#include <vector>

int main() {
  using tensor = Eigen::Tensor<float, 4, Eigen::RowMajor>;
  const Eigen::Index B = 1, L = 3, S = 5, H = 2, D = 4;
  tensor q(B, L, H, D), k(B, S, H, D), v(B, S, H, D);
  for (Eigen::Index i = 0; i < q.size(); ++i) q.data()[i] = std::sin(0.7f * i);
  for (Eigen::Index i = 0; i < k.size(); ++i) k.data()[i] = std::cos(0.3f * i);
  for (Eigen::Index i = 0; i < v.size(); ++i) v.data()[i] = 0.1f * (i % 7) - 0.3f;

  attn::sdpa_options opt;
  opt.causal = attn::causal::bottom_right;  // query i sees keys j <= i + S - L
  const tensor out = attn::scaled_dot_product_attention(q, k, v, opt);

  // Direct computation of the same thing.
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  float max_err = 0.0f;
  for (Eigen::Index h = 0; h < H; ++h) {
    for (Eigen::Index i = 0; i < L; ++i) {
      const Eigen::Index last = i + S - L;
      std::vector<double> p(static_cast<std::size_t>(last + 1));
      double m = -1e300, sum = 0.0;
      for (Eigen::Index j = 0; j <= last; ++j) {
        double s = 0.0;
        for (Eigen::Index d = 0; d < D; ++d) s += double(q(0, i, h, d)) * k(0, j, h, d);
        p[j] = s * scale;
        m = std::max(m, p[j]);
      }
      for (double& x : p) sum += (x = std::exp(x - m));
      for (Eigen::Index d = 0; d < D; ++d) {
        double o = 0.0;
        for (Eigen::Index j = 0; j <= last; ++j) o += p[j] / sum * v(0, j, h, d);
        max_err = std::max(max_err, static_cast<float>(std::abs(o - out(0, i, h, d))));
      }
    }
  }

  // The library's own error type for a bad argument.
  bool threw = false;
  try {
    tensor bad_k(B, S, H, D + 1);
    (void)attn::scaled_dot_product_attention(q, bad_k, v);
  } catch (const attn::error&) {
    threw = true;
  }

  std::printf("attn consumer: out(0,2,1,:) = %.5f %.5f %.5f %.5f, max |err| = %.2e, %s\n",
              out(0, 2, 1, 0), out(0, 2, 1, 1), out(0, 2, 1, 2), out(0, 2, 1, 3), max_err,
              threw ? "bad shape threw attn::error" : "bad shape did NOT throw");
  const bool ok = max_err < 1e-5f && threw;
  std::puts(ok ? "PASS" : "FAIL");
  return ok ? 0 : 1;
}
