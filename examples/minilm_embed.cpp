// examples/minilm_embed.cpp: sentence embeddings with all-MiniLM-L6-v2, a
// real BERT checkpoint, on attn's multi-head attention.
//
// The model (examples/minilm/model.hpp): a WordPiece tokenizer, 6 encoder
// layers of attn::multi_head_attention (12 heads of 32, with biases, padding
// masked by key lengths), exact GELU MLPs, LayerNorm, mean pooling and L2
// normalisation, read straight from the model's safetensors file.
//
// Usage:
//   minilm_embed [options] SENTENCE...     prints each sentence's tokens and
//                                          embedding, then their cosine
//                                          similarities
//   minilm_embed [options] --check FILE    compares with reference embeddings
//                                          (tests/data/minilm_reference.txt)
// Options:
//   --model DIR    the model folder (default: $ATTN_MINILM_MODEL, else the
//                  build tree's models/all-MiniLM-L6-v2, where
//                  `cmake --build BUILD --target minilm_model` puts it)
//   --threads N    threads (default: all)
//   --full         print all 384 numbers of each embedding, not the first 8
//   --min-cosine C --check fails below this cosine (default 0.9999)
#include "minilm/model.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#ifndef ATTN_MINILM_DEFAULT_MODEL
#define ATTN_MINILM_DEFAULT_MODEL "models/all-MiniLM-L6-v2"
#endif

namespace {

using minilm::index;
using minilm::matrix;

struct reference_entry {
  std::string sentence;
  std::vector<int> tokens;
  std::vector<float> embedding;
};

// The format written by tools/minilm.py reference: '#' comments, then per
// sentence "sentence <text>", "tokens <n> <ids>", "embedding <d> <floats>".
std::vector<reference_entry> read_reference(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open");
  std::vector<reference_entry> out;
  std::string line;
  int line_no = 0;
  auto bad = [&](const char* what) {
    throw std::runtime_error(path + ":" + std::to_string(line_no) + ": " + what);
  };
  while (std::getline(in, line)) {
    ++line_no;
    if (line.empty() || line[0] == '#') continue;
    const std::size_t sp = line.find(' ');
    const std::string key = line.substr(0, sp),
                      rest = sp == std::string::npos ? "" : line.substr(sp + 1);
    if (key == "sentence") {
      out.push_back({rest, {}, {}});
      continue;
    }
    if (out.empty()) bad("data before the first sentence");
    std::istringstream ss(rest);
    std::size_t n = 0;
    if (!(ss >> n)) bad("missing count");
    if (key == "tokens") {
      out.back().tokens.resize(n);
      for (int& t : out.back().tokens)
        if (!(ss >> t)) bad("short token list");
    } else if (key == "embedding") {
      out.back().embedding.resize(n);
      for (float& v : out.back().embedding)
        if (!(ss >> v)) bad("short embedding");
    } else {
      bad("unknown line");
    }
  }
  if (out.empty()) throw std::runtime_error(path + ": no sentences");
  for (const auto& e : out)
    if (e.tokens.empty() || e.embedding.empty())
      throw std::runtime_error(path + ": incomplete entry");
  return out;
}

int check(const minilm::encoder& model, const std::string& path, double min_cosine, int threads) {
  const std::vector<reference_entry> ref = read_reference(path);
  const index n = static_cast<index>(ref.size());
  std::printf("checking %ld sentences against %s (cosine >= %.6g)\n", long(n), path.c_str(),
              min_cosine);

  // Tokens first: the reference stack's ids must be ours exactly.
  std::vector<std::vector<int>> ids;
  int failures = 0;
  for (const auto& r : ref) {
    ids.push_back(model.tokenize(r.sentence));
    if (ids.back() != r.tokens) {
      ++failures;
      std::printf("TOKENS DIFFER for \"%.60s\": %zu ours vs %zu reference\n  ours:",
                  r.sentence.c_str(), ids.back().size(), r.tokens.size());
      for (int t : ids.back()) std::printf(" %d", t);
      std::printf("\n  ref: ");
      for (int t : r.tokens) std::printf(" %d", t);
      std::printf("\n");
    }
    if (static_cast<index>(r.embedding.size()) != model.dim())
      throw std::runtime_error(path + ": an embedding of " + std::to_string(r.embedding.size()) +
                               " numbers, the model gives " + std::to_string(model.dim()));
  }

  // All sentences in one padded batch (the test of key padding), each
  // sentence alone, and the batch again on one thread.
  const auto t0 = std::chrono::steady_clock::now();
  const matrix batched = model.encode_ids(ids, n, threads);
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  const matrix alone = model.encode_ids(ids, 1, threads);
  const matrix one_thread = model.encode_ids(ids, n, 1);

  std::printf("%3s %6s %12s %9s %10s %14s  %s\n", "#", "tokens", "cosine", "1-cosine", "max|diff|",
              "|batch-alone|", "sentence");
  double worst_cos = 1, worst_diff = 0, worst_alone = 0;
  for (index i = 0; i < n; ++i) {
    const auto& r = ref[static_cast<std::size_t>(i)];
    const Eigen::VectorXd want =
        Eigen::Map<const Eigen::VectorXf>(r.embedding.data(), model.dim()).cast<double>();
    const Eigen::VectorXd got = batched.row(i).transpose().cast<double>();
    const double cos = got.dot(want) / (got.norm() * want.norm());
    const double diff = (got - want).cwiseAbs().maxCoeff();
    const double vs_alone = (batched.row(i) - alone.row(i)).cwiseAbs().maxCoeff();
    worst_cos = std::min(worst_cos, cos);
    worst_diff = std::max(worst_diff, diff);
    worst_alone = std::max(worst_alone, vs_alone);
    const bool ok = cos >= min_cosine;
    if (!ok) ++failures;
    std::printf("%3ld %6zu %12.9f %9.2g %10.3g %14.3g  %.50s%s%s\n", long(i),
                ids[static_cast<std::size_t>(i)].size(), cos, 1 - cos, diff, vs_alone,
                r.sentence.c_str(), r.sentence.size() > 50 ? "..." : "",
                ok ? "" : "   <-- BELOW THE MINIMUM");
  }
  const bool same_bits = std::memcmp(batched.data(), one_thread.data(),
                                     sizeof(float) * static_cast<std::size_t>(batched.size())) == 0;
  if (!same_bits) ++failures;
  std::printf("worst cosine %.9f, worst max|diff| %.3g, worst |batched - alone| %.3g\n", worst_cos,
              worst_diff, worst_alone);
  std::size_t longest = 0;
  for (const auto& s : ids) longest = std::max(longest, s.size());
  std::printf("batch of %ld padded to %zu tokens: %.1f ms; %s\n", long(n), longest, ms,
              same_bits ? "1 thread and default threads give the same bits"
                        : "1 thread and default threads DIFFER (determinism broken)");
  if (failures) {
    std::printf("FAILED: %d problem(s)\n", failures);
    return 1;
  }
  std::printf("OK: every sentence's tokens match and its cosine is >= %.6g\n", min_cosine);
  return 0;
}

int embed(const minilm::encoder& model, const std::vector<std::string>& sentences, bool full,
          int threads) {
  const index n = static_cast<index>(sentences.size());
  const auto t0 = std::chrono::steady_clock::now();
  const matrix e = model.encode(sentences, 32, threads);
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  for (index i = 0; i < n; ++i) {
    const std::vector<int> ids = model.tokenize(sentences[static_cast<std::size_t>(i)]);
    std::printf("[%ld] \"%s\"\n    %zu tokens:", long(i),
                sentences[static_cast<std::size_t>(i)].c_str(), ids.size());
    for (std::size_t t = 0; t < ids.size() && t < 24; ++t) std::printf(" %d", ids[t]);
    std::printf("%s\n    embedding (%ld):", ids.size() > 24 ? " ..." : "", long(model.dim()));
    const index shown = full ? model.dim() : 8;
    for (index j = 0; j < shown; ++j) std::printf(" %.6f", e(i, j));
    std::printf("%s\n", full ? "" : " ...");
  }
  if (n > 1) {
    std::printf("cosine similarity:\n     ");
    for (index j = 0; j < n; ++j) std::printf(" [%ld]   ", long(j));
    std::printf("\n");
    const matrix cos = e * e.transpose();  // unit vectors
    for (index i = 0; i < n; ++i) {
      std::printf("[%ld] ", long(i));
      for (index j = 0; j < n; ++j) std::printf(" %7.4f", cos(i, j));
      std::printf("\n");
    }
  }
  std::printf("%ld sentence(s) in %.1f ms\n", long(n), ms);
  return 0;
}

int usage() {
  std::fprintf(stderr,
               "usage: minilm_embed [--model DIR] [--threads N] [--full] SENTENCE...\n"
               "       minilm_embed [--model DIR] [--threads N] [--min-cosine C] --check FILE\n"
               "The model: cmake --build BUILD --target minilm_model (or python3 tools/minilm.py "
               "fetch DIR)\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_dir, check_file;
  const char* env = std::getenv("ATTN_MINILM_MODEL");
  model_dir = env && *env ? env : ATTN_MINILM_DEFAULT_MODEL;
  int threads = 0;
  bool full = false;
  double min_cosine = 0.9999;
  std::vector<std::string> sentences;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const bool has_value = i + 1 < argc;
    if (a == "--model" && has_value)
      model_dir = argv[++i];
    else if (a == "--check" && has_value)
      check_file = argv[++i];
    else if (a == "--threads" && has_value)
      threads = std::atoi(argv[++i]);
    else if (a == "--min-cosine" && has_value)
      min_cosine = std::atof(argv[++i]);
    else if (a == "--full")
      full = true;
    else if (a == "-h" || a == "--help")
      return usage();
    else if (a.size() > 1 && a[0] == '-' && a[1] == '-')
      return usage();
    else
      sentences.push_back(a);
  }
  if (check_file.empty() && sentences.empty()) return usage();
  try {
    const auto t0 = std::chrono::steady_clock::now();
    const minilm::encoder model(model_dir);
    std::printf(
        "all-MiniLM-L6-v2 from %s: %ld layers, %ld heads of %ld, loaded in %.0f ms\n",
        model_dir.c_str(), long(model.config().layers), long(model.config().heads),
        long(model.dim() / model.config().heads),
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    return check_file.empty() ? embed(model, sentences, full, threads)
                              : check(model, check_file, min_cosine, threads);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "minilm_embed: %s\n", e.what());
    if (std::strstr(e.what(), "cannot open"))
      std::fprintf(stderr,
                   "  fetch the model first: cmake --build BUILD --target minilm_model\n"
                   "  (or python3 tools/minilm.py fetch DIR, then --model DIR)\n");
    return 1;
  }
}
