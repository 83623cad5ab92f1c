// bahdanau_alignment: the alignment matrix of Bahdanau, Cho and Bengio
// (2014), Figure 3(a), reproduced with hand-built embeddings and weights.
//
// The source sentence is English, the target French; the French noun phrase
// "zone économique européenne" reverses the English "European Economic
// Area", so the alignment leaves the diagonal there, as in the paper.
//
// How the "model" is built (no training; every number is chosen so that a
// word aligns to its counterpart):
//  * every English word has a random concept vector c_w in R^d;
//  * the encoder annotation h_j of source word j is c_{w_j} plus a little of
//    its neighbours (a bidirectional RNN mixes in context) and noise;
//  * the decoder state s_i of target word i is the concept of the English
//    word it translates, plus noise ("a" and "été" both translate "was");
//  * the additive score e_ij = vᵀ tanh(W_q s_i + W_k h_j + b) with
//    d_a = 2d, W_q = κ[-I; I], W_k = κ[I; -I], b = β·1, v = γ·1 sums γ·
//    f(x) = tanh(β + x) + tanh(β - x) over x = κ(h_j - s_i) per feature: a
//    bump with its maximum at x = 0, so the score is highest where the
//    annotation matches the state.
// The keys are projected once (attn::additive_attention::project_keys) and
// the decoder runs one step per target word, as a real decoder would.
//
// Prints the alignment as a shaded grid (rows: French, columns: English)
// and writes bahdanau_alignment.svg (words on both axes) to the current
// directory. Exits 1 if any French word's strongest weight is not on the
// English word it translates.
//
//   build/test/examples/bahdanau_alignment
#include <attn/additive.hpp>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <random>
#include <string>
#include <vector>

namespace {

using tensor3 = Eigen::Tensor<float, 3, Eigen::RowMajor>;

// Shade for a weight in [0, 1]: blank below 0.05, then four levels.
const char* shade(float a) {
  if (a < 0.05f) return "  ";
  if (a < 0.25f) return "\u2591\u2591";
  if (a < 0.5f) return "\u2592\u2592";
  if (a < 0.75f) return "\u2593\u2593";
  return "\u2588\u2588";
}

// Number of characters (not bytes) of a UTF-8 string.
std::size_t width(const std::string& s) {
  std::size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

std::string xml_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '&')
      out += "&amp;";
    else if (c == '<')
      out += "&lt;";
    else if (c == '>')
      out += "&gt;";
    else if (c == '\'')
      out += "&apos;";
    else
      out += c;
  }
  return out;
}

void write_svg(const char* path, const std::vector<std::string>& src,
               const std::vector<std::string>& tgt, const tensor3& w) {
  const int cell = 36, left = 130, top = 130;
  const int W = left + cell * static_cast<int>(src.size()) + 20;
  const int H = top + cell * static_cast<int>(tgt.size()) + 20;
  std::ofstream f(path);
  f << "<svg xmlns='http://www.w3.org/2000/svg' width='" << W << "' height='" << H
    << "' font-family='sans-serif' font-size='14'>\n"
    << "<rect width='100%' height='100%' fill='white'/>\n";
  for (std::size_t j = 0; j < src.size(); ++j) {
    const int x = left + cell * static_cast<int>(j) + cell / 2 + 5;
    f << "<text transform='translate(" << x << "," << top - 8
      << ") rotate(-60)' text-anchor='start'>" << xml_escape(src[j]) << "</text>\n";
  }
  for (std::size_t i = 0; i < tgt.size(); ++i) {
    const int y = top + cell * static_cast<int>(i) + cell / 2 + 5;
    f << "<text x='" << left - 8 << "' y='" << y << "' text-anchor='end'>" << xml_escape(tgt[i])
      << "</text>\n";
    for (std::size_t j = 0; j < src.size(); ++j) {
      // As in the paper: white is weight 1, black weight 0.
      const int g = static_cast<int>(std::lround(255.0f * w(0, static_cast<long>(i),
                                                            static_cast<long>(j))));
      f << "<rect x='" << left + cell * static_cast<int>(j) << "' y='"
        << top + cell * static_cast<int>(i) << "' width='" << cell << "' height='" << cell
        << "' fill='rgb(" << g << "," << g << "," << g << ")' stroke='#444' stroke-width='0.5'/>\n";
    }
  }
  f << "</svg>\n";
}

}  // namespace

int main() {
  const std::vector<std::string> src = {"The",  "agreement", "on",   "the",    "European",
                                        "Economic", "Area",  "was",  "signed", "in",
                                        "August", "1992",    "."};
  const std::vector<std::string> tgt = {"L'",         "accord", "sur",  "la",    "zone",
                                        "économique", "européenne", "a", "été", "signé",
                                        "en",         "août",   "1992", "."};
  // The English word (index into src) each French word translates.
  const std::vector<int> counterpart = {0, 1, 2, 3, 6, 5, 4, 7, 7, 8, 9, 10, 11, 12};

  const long S = static_cast<long>(src.size()), L = static_cast<long>(tgt.size());
  const long d = 32;           // embedding / annotation size
  const float kappa = 1.0f;    // slope of the bump
  const float beta = 1.0f;     // its width (the bias)
  std::mt19937 gen(2014);
  std::normal_distribution<float> normal(0.0f, 1.0f);

  // Concepts, annotations h [1, S, d] and decoder states s [1, L, d].
  std::vector<std::vector<float>> concept(static_cast<std::size_t>(S), std::vector<float>(d));
  for (auto& c : concept)
    for (float& x : c) x = normal(gen);
  tensor3 h(1, S, d), s(1, L, d);
  for (long j = 0; j < S; ++j)
    for (long f = 0; f < d; ++f) {
      float x = concept[static_cast<std::size_t>(j)][static_cast<std::size_t>(f)];
      if (j > 0) x += 0.15f * concept[static_cast<std::size_t>(j - 1)][static_cast<std::size_t>(f)];
      if (j + 1 < S)
        x += 0.15f * concept[static_cast<std::size_t>(j + 1)][static_cast<std::size_t>(f)];
      h(0, j, f) = x + 0.2f * normal(gen);
    }
  for (long i = 0; i < L; ++i)
    for (long f = 0; f < d; ++f)
      s(0, i, f) = concept[static_cast<std::size_t>(counterpart[static_cast<std::size_t>(i)])]
                          [static_cast<std::size_t>(f)] +
                   0.3f * normal(gen);

  // The additive attention model.
  attn::additive_weights w;
  w.w_q.setZero(2 * d, d);
  w.w_k.setZero(2 * d, d);
  for (long f = 0; f < d; ++f) {
    w.w_q(f, f) = -kappa;
    w.w_q(d + f, f) = kappa;
    w.w_k(f, f) = kappa;
    w.w_k(d + f, f) = -kappa;
  }
  w.bias = Eigen::VectorXf::Constant(2 * d, beta);
  w.v = Eigen::VectorXf::Constant(2 * d, 0.25f);  // sharpness of the softmax
  const attn::additive_attention layer(w);

  // Encoder side once, then one decoder step per French word.
  const attn::additive_keys memory = layer.project_keys(attn::view(h));
  tensor3 align(1, L, S);
  for (long i = 0; i < L; ++i) {
    tensor3 state = s.slice(Eigen::array<long, 3>{0, i, 0}, Eigen::array<long, 3>{1, 1, d});
    tensor3 weights(1, 1, S), context(1, 1, d);
    attn::additive_options opt;
    opt.weights = attn::view(weights);
    layer.forward(attn::view(state), memory, attn::view(h), attn::view(context), opt);
    for (long j = 0; j < S; ++j) align(0, i, j) = weights(0, 0, j);
  }

  // The grid: English words written downwards above their columns.
  std::size_t label = 0, tall = 0;
  for (const auto& t : tgt) label = std::max(label, width(t));
  for (const auto& w2 : src) tall = std::max(tall, w2.size());
  std::printf("Alignment of English (columns) and French (rows), as in Bahdanau et al. "
              "2014, Fig. 3(a)\n\n");
  for (std::size_t r = 0; r < tall; ++r) {
    std::printf("%*s ", static_cast<int>(label), "");
    for (const auto& w2 : src) std::printf(" %c ", r < w2.size() ? w2[r] : ' ');
    std::printf("\n");
  }
  int wrong = 0;
  for (long i = 0; i < L; ++i) {
    const std::string& t = tgt[static_cast<std::size_t>(i)];
    std::printf("%*s%s ", static_cast<int>(label - width(t)), "", t.c_str());
    long best = 0;
    for (long j = 0; j < S; ++j) {
      std::printf("%s ", shade(align(0, i, j)));
      if (align(0, i, j) > align(0, i, best)) best = j;
    }
    const bool ok = best == counterpart[static_cast<std::size_t>(i)];
    wrong += !ok;
    std::printf(" -> %s (%.2f)%s\n", src[static_cast<std::size_t>(best)].c_str(),
                static_cast<double>(align(0, i, best)), ok ? "" : "  UNEXPECTED");
  }
  std::printf("\nshades: '  ' < 0.05 <= '\u2591\u2591' < 0.25 <= '\u2592\u2592' < 0.5 <= "
              "'\u2593\u2593' < 0.75 <= '\u2588\u2588'\n");

  const char* path = "bahdanau_alignment.svg";
  write_svg(path, src, tgt, align);
  std::printf("wrote %s (open it in a browser)\n", path);
  if (wrong) {
    std::printf("%d French word(s) aligned to an unexpected English word\n", wrong);
    return 1;
  }
  return 0;
}
