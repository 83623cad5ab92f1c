// sdpa_basic: scaled dot-product attention on Eigen tensors.
//
// Builds random Q, K, V in attn's default layout [batch, seq, heads, dim],
// runs causal attention with bottom-right alignment (as in a KV-cache decode
// step, where the L new queries are the last L of the S keys) and also asks
// for the log-sum-exp of every row. Prints a few numbers; exits 0 when all
// of them are finite.
//
//   build/test/examples/sdpa_basic
#include <attn/attn.hpp>
#include <cstdio>

int main() {
  using tensor4 = Eigen::Tensor<float, 4, Eigen::RowMajor>;
  using tensor3 = Eigen::Tensor<float, 3, Eigen::RowMajor>;

  const Eigen::Index batch = 2, L = 4, S = 16, heads = 8, dim = 64;

  // Q [batch, L, heads, dim]; K and V [batch, S, heads, dim].
  tensor4 q(batch, L, heads, dim), k(batch, S, heads, dim), v(batch, S, heads, dim);
  q.setRandom();
  k.setRandom();
  v.setRandom();

  // Optional outputs are views; the LSE is [batch, heads, L].
  tensor3 lse(batch, heads, L);

  attn::sdpa_options opt;
  opt.causal = attn::causal::bottom_right;  // query i sees keys j <= i + S - L
  opt.lse = attn::view(lse);
  // opt.scale defaults to 1 / sqrt(dim).

  // Allocates and returns out [batch, L, heads, dim]. The view overload,
  // scaled_dot_product_attention(attn::bshd(q), ..., attn::bshd(out), opt),
  // writes into a tensor you own instead.
  const tensor4 out = attn::scaled_dot_product_attention(q, k, v, opt);

  std::printf("out: [%ld, %ld, %ld, %ld]\n", static_cast<long>(out.dimension(0)),
              static_cast<long>(out.dimension(1)), static_cast<long>(out.dimension(2)),
              static_cast<long>(out.dimension(3)));
  std::printf("out(0, 0, 0, 0..3) = %+.4f %+.4f %+.4f %+.4f\n", out(0, 0, 0, 0), out(0, 0, 0, 1),
              out(0, 0, 0, 2), out(0, 0, 0, 3));
  for (Eigen::Index i = 0; i < L; ++i)
    std::printf("lse(0, 0, %ld) = %.4f   (query %ld sees keys 0..%ld)\n", static_cast<long>(i),
                lse(0, 0, i), static_cast<long>(i), static_cast<long>(i + S - L));

  // Every row here sees at least one key, so everything must be finite.
  const Eigen::Tensor<bool, 0, Eigen::RowMajor> finite =
      out.isfinite().all() && lse.isfinite().all();
  std::printf("all finite: %s\n", finite() ? "yes" : "NO");
  return finite() ? 0 : 1;
}
