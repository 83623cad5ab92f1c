// structured_attention: segmentation attention (Kim, Denton, Hoang and
// Rush, 2017) next to softmax attention on the same scores.
//
// A query ("where?") attends over the 16 words of a sentence. Each word's
// key is its relevance to the query along one direction u plus noise in
// every direction; the query is a multiple of u, so the dot-product score
// of word j is its relevance plus a little noise. Two phrases answer the
// question, "on the warm mat" and "near the old red door"; inside each,
// the word "the" scores low on its own.
//
//  * Softmax attention (one categorical choice) spreads its one unit of
//    weight over the best-scoring words (none gets more than about a
//    quarter) and gives the phrases' low-scoring "the" almost nothing.
//  * Segmentation attention (a linear-chain CRF over binary "selected"
//    variables, attn::segmentation_attention) adds pairwise potentials that
//    favour staying in the same state (+1 to stay, -1 to switch). Its
//    weights are the marginals p(z_j = 1): whole phrases, "the" included,
//    are selected and everything else is not. The weights do not sum to 1:
//    they select a set.
//
// Prints both weight vectors side by side and the selected spans. Exits 1
// if the selection (marginal > 0.5) is not exactly the two phrases.
//
//   build/test/examples/structured_attention
#include <attn/attention_weights.hpp>
#include <attn/structured.hpp>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

namespace {

using tensor2 = Eigen::Tensor<float, 2, Eigen::RowMajor>;
using tensor3 = Eigen::Tensor<float, 3, Eigen::RowMajor>;
using tensor4 = Eigen::Tensor<float, 4, Eigen::RowMajor>;

// A bar of up to `width` characters for a weight in [0, 1].
std::string bar(float w, int width) {
  const int n = static_cast<int>(std::lround(w * static_cast<float>(width)));
  std::string s;
  for (int i = 0; i < width; ++i) s += i < n ? "\u2588" : "\u00b7";
  return s;
}

}  // namespace

int main() {
  const std::vector<std::string> words = {"the",  "cat", "slept", "on",  "the",    "warm",
                                          "mat",  "while", "the", "dog", "barked", "near",
                                          "the",  "old", "red",   "door"};
  // Relevance of each word to "where?" (the two phrases, with a dip at
  // their "the"), and the answer's spans [first, last].
  const std::vector<float> relevance = {-2.5f, -3.0f, -2.5f, 2.0f, -0.5f, 1.5f, 3.0f, -2.5f,
                                        -3.0f, -2.5f, -2.5f, 2.0f, -0.5f, 1.0f, 1.0f, 3.0f};
  const std::vector<std::pair<long, long>> spans = {{3, 6}, {11, 15}};

  const long S = static_cast<long>(words.size()), d = 8;
  std::mt19937 gen(2017);
  std::normal_distribution<float> noise(0.0f, 0.3f);

  // Keys k_j = relevance_j · u + noise (u = the first axis), values = keys,
  // query q = sqrt(d) · u: with the default scale 1/sqrt(d), the score of
  // word j is relevance_j plus the noise along u.
  tensor2 query(1, d);
  tensor3 keys(1, S, d);
  query.setZero();
  query(0, 0) = std::sqrt(static_cast<float>(d));
  for (long j = 0; j < S; ++j)
    for (long f = 0; f < d; ++f)
      keys(0, j, f) = (f == 0 ? relevance[static_cast<std::size_t>(j)] : 0.0f) + noise(gen);

  // Pairwise log-potentials ψ(z_j, z_{j+1}), one [2, 2] for the whole chain.
  tensor4 pairwise(1, 1, 2, 2);
  pairwise(0, 0, 0, 0) = pairwise(0, 0, 1, 1) = 1.0f;   // stay
  pairwise(0, 0, 0, 1) = pairwise(0, 0, 1, 0) = -1.0f;  // switch
  attn::segmentation_options opt;
  opt.pairwise = attn::view(pairwise);
  const attn::segmentation_result seg = attn::segmentation_attention(query, keys, keys, opt);

  // Softmax attention over the same scores s_j = q · k_j / sqrt(d): its
  // weights softmax_j(s) from attn::attention_weights, with the query and
  // keys as one batch, one head ([1, 1, 1, d] and [1, S, 1, d]).
  std::vector<float> scores(static_cast<std::size_t>(S));
  for (long j = 0; j < S; ++j) {
    float s = 0;
    for (long f = 0; f < d; ++f) s += query(0, f) * keys(0, j, f);
    scores[static_cast<std::size_t>(j)] = s / std::sqrt(static_cast<float>(d));
  }
  const tensor4 q4 = query.reshape(Eigen::array<Eigen::Index, 4>{1, 1, 1, d});
  const tensor4 k4 = keys.reshape(Eigen::array<Eigen::Index, 4>{1, S, 1, d});
  tensor4 soft(1, 1, 1, S);  // [batch, heads, L, S]
  attn::attention_weights(attn::bshd(q4), attn::bshd(k4), attn::view(soft));

  std::printf("Query \"where?\" over a 16-word sentence: softmax vs segmentation attention\n\n");
  std::printf("  %-8s %6s   %-22s %-22s\n", "word", "score", "softmax", "segmentation (CRF)");
  float soft_sum = 0, seg_sum = 0;
  for (long j = 0; j < S; ++j) {
    const float a = soft(0, 0, 0, j), p = seg.marginals(0, j);
    soft_sum += a;
    seg_sum += p;
    std::printf("  %-8s %6.2f   %s %.2f   %s %.2f\n", words[static_cast<std::size_t>(j)].c_str(),
                static_cast<double>(scores[static_cast<std::size_t>(j)]), bar(a, 16).c_str(),
                static_cast<double>(a), bar(p, 16).c_str(), static_cast<double>(p));
  }
  std::printf("\n  sum of weights: softmax %.2f, segmentation %.2f (a selection, not a "
              "distribution)\n",
              static_cast<double>(soft_sum), static_cast<double>(seg_sum));
  std::printf("  log Z of the CRF: %.3f\n", static_cast<double>(seg.log_partition(0)));

  // The selected spans: maximal runs with marginal > 0.5.
  std::vector<std::pair<long, long>> found;
  for (long j = 0; j < S; ++j) {
    if (seg.marginals(0, j) <= 0.5f) continue;
    if (!found.empty() && found.back().second == j - 1)
      found.back().second = j;
    else
      found.push_back({j, j});
  }
  std::printf("  selected spans:");
  for (const auto& sp : found) {
    std::printf(" \"");
    for (long j = sp.first; j <= sp.second; ++j)
      std::printf("%s%s", j > sp.first ? " " : "", words[static_cast<std::size_t>(j)].c_str());
    std::printf("\"");
  }
  std::printf("\n");
  if (found != spans) {
    std::printf("unexpected selection: expected \"on the warm mat\" and \"near the old red door\"\n");
    return 1;
  }
  return 0;
}
