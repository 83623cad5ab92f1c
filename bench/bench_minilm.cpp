// bench/bench_minilm.cpp: all-MiniLM-L6-v2 sentence embeddings end to end
// (tokenized input -> normalised embeddings) on attn, the model of
// examples/minilm_embed.cpp.
//
//   minilm/attn/B<batch>/t<threads>   sentences/s over the 32 sentences of
//                                     tests/data/minilm_bench_sentences.txt
//                                     (32..128 tokens), sorted by length and
//                                     cut into batches of <batch>, each padded
//                                     to its longest
//
// `python3 tools/minilm.py bench --attn bench_minilm` runs this and times
// the reference stack (sentence-transformers on PyTorch) on the same batches
// in the same run. Needs the model: it looks in $ATTN_MINILM_MODEL, else in
// the build tree's models/all-MiniLM-L6-v2; without it the program says how
// to fetch it and exits 0 having run nothing.
#include "common.hpp"

#include "minilm/model.hpp"

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#ifndef ATTN_MINILM_DEFAULT_MODEL
#define ATTN_MINILM_DEFAULT_MODEL "models/all-MiniLM-L6-v2"
#endif
#ifndef ATTN_MINILM_SENTENCES
#define ATTN_MINILM_SENTENCES "tests/data/minilm_bench_sentences.txt"
#endif

namespace {

std::vector<std::string> read_sentences(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open");
  std::vector<std::string> out;
  std::string line;
  while (std::getline(in, line))
    if (!line.empty() && line[0] != '#') out.push_back(line);
  return out;
}

void bm_encode(benchmark::State& state, const minilm::encoder& model,
               const std::vector<std::vector<int>>& ids, minilm::index batch, int threads) {
  for (auto _ : state) benchmark::DoNotOptimize(model.encode_ids(ids, batch, threads).data());
  std::size_t tokens = 0;
  for (const auto& s : ids) tokens += s.size();
  state.counters["batch"] = double(batch);
  state.counters["nthreads"] = threads;
  state.counters["sentences_per_s"] =
      benchmark::Counter(double(ids.size()), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["tokens_per_s"] =
      benchmark::Counter(double(tokens), benchmark::Counter::kIsIterationInvariantRate);
}

}  // namespace

int main(int argc, char** argv) {
  if (!attn_bench::init(&argc, argv)) return 1;
  const char* env = std::getenv("ATTN_MINILM_MODEL");
  const std::string dir = env && *env ? env : ATTN_MINILM_DEFAULT_MODEL;
  if (!std::ifstream(dir + "/model.safetensors")) {
    std::printf(
        "bench_minilm: no model in %s, nothing run. Fetch it with\n"
        "  cmake --build BUILD --target minilm_model   (or python3 tools/minilm.py fetch "
        "DIR and ATTN_MINILM_MODEL=DIR)\n",
        dir.c_str());
    return 0;
  }
  std::unique_ptr<minilm::encoder> model;
  std::vector<std::vector<int>> ids;
  try {
    model = std::make_unique<minilm::encoder>(dir);
    for (const std::string& s : read_sentences(ATTN_MINILM_SENTENCES))
      ids.push_back(model->tokenize(s));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_minilm: %s\n", e.what());
    return 1;
  }
  for (const minilm::index batch : {1, 8, 32})
    for (const int threads : {1, 2})
      benchmark::RegisterBenchmark(
          ("minilm/attn/B" + std::to_string(batch) + attn_bench::thread_suffix(threads)).c_str(),
          [&, batch, threads](benchmark::State& s) { bm_encode(s, *model, ids, batch, threads); })
          ->UseRealTime()
          ->Unit(benchmark::kMillisecond);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
