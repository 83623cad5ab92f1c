// examples/smollm_chat.cpp: chat with SmolLM2-135M-Instruct, a real
// Llama-architecture model, read from its GGUF file and run on attn's
// multi-head attention and KV cache.
//
// The pieces (examples/smollm/): gguf.hpp reads the file and dequantises
// its Q4_1 / Q8_0 tensors to float; tokenizer.hpp is the byte-level BPE
// tokenizer and the chat template from the file's metadata; model.hpp is the
// decoder (RMSNorm, GQA attention with RoPE, SwiGLU MLP, tied head) over one
// attn::kv_cache per layer.
//
// Usage:
//   smollm_chat [options] PROMPT        streams the answer to PROMPT, then
//                                       prefill and decode tokens/s
//   smollm_chat [options] --check FILE  compares with the reference
//                                       (tests/data/smollm_reference.txt)
// Options:
//   --model DIR        the folder holding SmolLM2-135M-Instruct.Q4_1.gguf (default:
//                      $ATTN_SMOLLM_MODEL, else the build tree's models/smollm2, where
//                      `cmake --build BUILD --target smollm_model` puts it);
//                      a path ending in .gguf is taken as the file itself
//   --system TEXT      the system prompt (default: the chat template's)
//   --max-tokens N     tokens to generate at most (default 256)
//   --temperature T    0 = greedy (default); > 0 samples from softmax(logits / T)
//   --top-p P          nucleus sampling: the smallest set of tokens with probability
//                      >= P (default 0.95)
//   --seed S           the sampler's seed (default 1)
//   --kv bf16|float    the KV cache's storage (default bf16)
//   --chunk N          prefill in chunks of N tokens (default: the whole prompt)
//   --threads N        threads (default: all)
//   --prompts N        --check only the first N prompts of FILE
//   --max-diff D       --check: the largest |logit - reference| allowed (default 5e-4)
#include "smollm/model.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#ifndef ATTN_SMOLLM_DEFAULT_MODEL
#define ATTN_SMOLLM_DEFAULT_MODEL "models/smollm2"
#endif

namespace {

using smollm::index;
using clock_type = std::chrono::steady_clock;
constexpr const char* gguf_name = "SmolLM2-135M-Instruct.Q4_1.gguf";

double seconds_since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

// One generation: the prompt prefilled (in chunks of `chunk` tokens, 0 = at
// once), then `steps` tokens, greedy or sampled. Keeps every step's logits
// when asked (for --check).
struct generation {
  std::vector<int> tokens;
  std::vector<Eigen::VectorXf> logits;  // logits[s]: what token s was chosen from
  double prefill_s = 0, decode_s = 0;
};

struct settings {
  int threads = 0;
  index chunk = 0;
  float temperature = 0, top_p = 0.95f;
  unsigned long long seed = 1;
};

template <class Storage, class OnToken>
generation generate(const smollm::llama& m, const std::vector<int>& prompt, index steps,
                    const settings& s, bool keep_logits, OnToken on_token) {
  auto caches = m.make_caches<Storage>(static_cast<index>(prompt.size()) + steps);
  std::mt19937_64 rng(s.seed);
  generation g;
  const auto t0 = clock_type::now();
  Eigen::VectorXf logits;
  const index n = static_cast<index>(prompt.size()), chunk = s.chunk > 0 ? s.chunk : n;
  for (index at = 0; at < n; at += chunk) {
    const std::vector<int> part(prompt.begin() + at, prompt.begin() + std::min(n, at + chunk));
    logits = m.forward(part, caches, s.threads);
  }
  g.prefill_s = seconds_since(t0);
  const auto t1 = clock_type::now();
  for (index step = 0; step < steps; ++step) {
    const int next = smollm::sample(logits, s.temperature, s.top_p, rng);
    g.tokens.push_back(next);
    if (keep_logits) g.logits.push_back(logits);
    if (!on_token(next) || step + 1 == steps) break;
    logits = m.forward({next}, caches, s.threads);
  }
  g.decode_s = seconds_since(t1);
  return g;
}

// --- chat -------------------------------------------------------------------

template <class Storage>
int chat(const smollm::llama& m, const std::string& prompt, const std::string* system,
         index max_tokens, const settings& s) {
  const std::vector<int> ids = m.chat_ids(prompt, system);
  const auto& tok = m.tokenizer();
  index produced = 0;
  const generation g = generate<Storage>(m, ids, max_tokens, s, false, [&](int id) {
    ++produced;
    if (id == m.eos_id() || tok.is_control(id)) return false;  // <|im_end|> ends the answer
    const std::string bytes = tok.decode(id);
    std::fwrite(bytes.data(), 1, bytes.size(), stdout);
    std::fflush(stdout);
    return true;
  });
  // The decode steps are the forwards after the first token (which the
  // prefill gives).
  const index decoded = std::max<index>(static_cast<index>(g.tokens.size()) - 1, 0);
  std::printf("\n\n[prompt %zu tokens: prefill %.1f ms, %.0f tokens/s; generated %ld tokens: "
              "%.1f tokens/s over %ld decode steps; %s KV cache]\n",
              ids.size(), g.prefill_s * 1e3, ids.size() / g.prefill_s, long(produced),
              decoded > 0 ? decoded / g.decode_s : 0.0, long(decoded),
              sizeof(Storage) == 4 ? "float" : "bf16");
  return 0;
}

// --- check ------------------------------------------------------------------

struct reference_entry {
  std::string prompt;
  std::vector<int> tokens, greedy;
  std::vector<std::pair<int, float>> logits;
  std::vector<float> margins;
};

// The format written by tools/smollm.py reference (see the file's comments).
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
    if (key == "prompt") {
      out.push_back({rest, {}, {}, {}, {}});
      continue;
    }
    if (out.empty()) bad("data before the first prompt");
    std::istringstream ss(rest);
    std::size_t n = 0;
    if (!(ss >> n)) bad("missing count");
    reference_entry& e = out.back();
    if (key == "tokens" || key == "greedy") {
      std::vector<int>& v = key == "tokens" ? e.tokens : e.greedy;
      v.resize(n);
      for (int& t : v)
        if (!(ss >> t)) bad("short token list");
    } else if (key == "margins") {
      e.margins.resize(n);
      for (float& v : e.margins)
        if (!(ss >> v)) bad("short margin list");
    } else if (key == "logits") {
      for (std::size_t i = 0; i < n; ++i) {
        int id = 0;
        char colon = 0;
        float v = 0;
        if (!(ss >> id >> colon >> v) || colon != ':') bad("bad id:value pair");
        e.logits.emplace_back(id, v);
      }
    } else {
      bad("unknown line");
    }
  }
  if (out.empty()) throw std::runtime_error(path + ": no prompts");
  for (const auto& e : out)
    if (e.tokens.empty() || e.greedy.empty() || e.logits.empty() ||
        e.margins.size() != e.greedy.size())
      throw std::runtime_error(path + ": incomplete entry for \"" + e.prompt + "\"");
  return out;
}

std::string show(const std::vector<int>& v) {
  std::string r;
  for (int t : v) r += " " + std::to_string(t);
  return r;
}

index first_difference(const std::vector<int>& a, const std::vector<int>& b) {
  const std::size_t n = std::min(a.size(), b.size());
  for (std::size_t i = 0; i < n; ++i)
    if (a[i] != b[i]) return static_cast<index>(i);
  return a.size() == b.size() ? -1 : static_cast<index>(n);
}

int check(const smollm::llama& m, const std::string& path, index max_prompts, double max_diff,
          settings s) {
  std::vector<reference_entry> ref = read_reference(path);
  if (max_prompts > 0 && static_cast<index>(ref.size()) > max_prompts)
    ref.resize(static_cast<std::size_t>(max_prompts));
  constexpr double min_cosine = 0.9999;
  std::printf("checking %zu prompts against %s: prompt ids and greedy tokens identical, "
              "last-position logits cosine >= %.6g and max|diff| <= %.3g\n",
              ref.size(), path.c_str(), min_cosine, max_diff);
  int failures = 0;
  double worst_cos = 1, worst_diff = 0, worst_chunk = 0;
  s.temperature = 0;
  for (const reference_entry& r : ref) {
    std::printf("\n\"%s\"\n", r.prompt.c_str());
    const std::vector<int> ids = m.chat_ids(r.prompt);
    if (ids != r.tokens) {
      ++failures;
      std::printf("  PROMPT IDS DIFFER (%zu ours, %zu reference)\n  ours:%s\n  ref: %s\n",
                  ids.size(), r.tokens.size(), show(ids).c_str(), show(r.tokens).c_str());
      continue;
    }
    const index steps = static_cast<index>(r.greedy.size());
    auto all = [](int) { return true; };
    const generation f = generate<float>(m, ids, steps, s, true, all);
    const generation b = generate<Eigen::bfloat16>(m, ids, steps, s, true, all);
    settings chunked = s;
    chunked.chunk = 7;
    const generation c = generate<float>(m, ids, steps, s.chunk ? s : chunked, true, all);

    // Prefill logits against the reference's subset.
    double dot = 0, nf = 0, nr = 0, diff = 0;
    for (const auto& [id, want] : r.logits) {
      if (id < 0 || id >= m.config().vocab) throw std::runtime_error(path + ": logit id out of range");
      const double got = f.logits[0][id];
      dot += got * want;
      nf += got * got;
      nr += double(want) * want;
      diff = std::max(diff, std::abs(got - want));
    }
    const double cos = dot / std::sqrt(nf * nr);
    worst_cos = std::min(worst_cos, cos);
    worst_diff = std::max(worst_diff, diff);
    const bool logits_ok = cos >= min_cosine && diff <= max_diff;
    if (!logits_ok) ++failures;
    std::printf("  %zu prompt ids identical; prefill logits (%zu of %ld): cosine %.9f, 1-cos "
                "%.2g, max|diff| %.3g%s; reference margin %.3f\n",
                ids.size(), r.logits.size(), long(m.config().vocab), cos, 1 - cos, diff,
                logits_ok ? "" : "   <-- OUT OF BOUNDS", r.margins[0]);

    // Float cache: the greedy tokens must be the reference's.
    const index df = first_difference(f.tokens, r.greedy);
    if (df >= 0) ++failures;
    std::printf("  float KV: %ld greedy tokens %s\n", long(steps),
                df < 0 ? "identical" : ("DIFFER from step " + std::to_string(df)).c_str());
    if (df >= 0)
      std::printf("    ours:%s\n    ref: %s\n", show(f.tokens).c_str(), show(r.greedy).c_str());

    // bf16 cache: identical, or its first divergence explained by a
    // reference margin below the bf16 cache's own error, which is measured
    // at the prefill (the same input for both caches): the largest logit
    // change bf16 K/V caused there, doubled (a swap of two logits needs them
    // to move towards each other).
    const double bf16_err = (b.logits[0] - f.logits[0]).cwiseAbs().maxCoeff();
    const index db = first_difference(b.tokens, r.greedy);
    if (db < 0) {
      std::printf("  bf16 KV: %ld greedy tokens identical (prefill logits moved by <= %.3g)\n",
                  long(steps), bf16_err);
    } else {
      const double margin = r.margins[static_cast<std::size_t>(db)];
      const bool explained = margin < 2 * bf16_err;
      if (!explained) ++failures;
      std::printf("  bf16 KV: tokens identical up to step %ld, then %d instead of %d: reference "
                  "margin %.4f %s 2 x the bf16 error %.4f: %s\n",
                  long(db), b.tokens[static_cast<std::size_t>(db)],
                  r.greedy[static_cast<std::size_t>(db)], margin, explained ? "<" : ">=",
                  bf16_err, explained ? "explained" : "NOT EXPLAINED");
    }

    // Chunked prefill: the same tokens as one-shot.
    const index dc = first_difference(c.tokens, f.tokens);
    const double chunk_diff = (c.logits[0] - f.logits[0]).cwiseAbs().maxCoeff();
    worst_chunk = std::max(worst_chunk, chunk_diff);
    if (dc >= 0) ++failures;
    std::printf("  prefill in chunks of %ld: %s; prefill logits vs one-shot max|diff| %.3g\n",
                long(s.chunk ? s.chunk : 7),
                dc < 0 ? "tokens identical to one-shot"
                       : ("tokens DIFFER from step " + std::to_string(dc)).c_str(),
                chunk_diff);
    std::string text;
    for (int t : f.tokens) text += m.tokenizer().decode(t);
    for (char& ch : text)
      if (ch == '\n') ch = ' ';
    std::printf("  -> %.100s%s\n", text.c_str(), text.size() > 100 ? "..." : "");
  }
  std::printf("\nworst cosine %.9f, worst max|diff| %.3g, worst |chunked - one-shot| %.3g\n",
              worst_cos, worst_diff, worst_chunk);
  if (failures) {
    std::printf("FAILED: %d problem(s)\n", failures);
    return 1;
  }
  std::printf("OK: every prompt's ids and greedy tokens match the reference\n");
  return 0;
}

int usage() {
  std::fprintf(stderr,
               "usage: smollm_chat [--model DIR] [--system TEXT] [--max-tokens N] [--temperature T]\n"
               "                   [--top-p P] [--seed S] [--kv bf16|float] [--chunk N] [--threads N] "
               "PROMPT\n"
               "       smollm_chat [--model DIR] [--threads N] [--prompts N] [--max-diff D] --check "
               "FILE\n"
               "The model: cmake --build BUILD --target smollm_model (or python3 tools/smollm.py "
               "fetch DIR)\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  const char* env = std::getenv("ATTN_SMOLLM_MODEL");
  std::string model = env && *env ? env : ATTN_SMOLLM_DEFAULT_MODEL, check_file, prompt, system,
              kv = "bf16";
  bool has_system = false;
  smollm::index max_tokens = 256, prompts = 0;
  double max_diff = 5e-4;
  settings s;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const bool v = i + 1 < argc;
    if (a == "--model" && v) model = argv[++i];
    else if (a == "--check" && v) check_file = argv[++i];
    else if (a == "--system" && v) system = argv[++i], has_system = true;
    else if (a == "--max-tokens" && v) max_tokens = std::atol(argv[++i]);
    else if (a == "--temperature" && v) s.temperature = static_cast<float>(std::atof(argv[++i]));
    else if (a == "--top-p" && v) s.top_p = static_cast<float>(std::atof(argv[++i]));
    else if (a == "--seed" && v) s.seed = std::strtoull(argv[++i], nullptr, 10);
    else if (a == "--kv" && v) kv = argv[++i];
    else if (a == "--chunk" && v) s.chunk = std::atol(argv[++i]);
    else if (a == "--threads" && v) s.threads = std::atoi(argv[++i]);
    else if (a == "--prompts" && v) prompts = std::atol(argv[++i]);
    else if (a == "--max-diff" && v) max_diff = std::atof(argv[++i]);
    else if (a.size() > 1 && a[0] == '-' && a[1] == '-') return usage();
    else if (prompt.empty()) prompt = a;
    else prompt += " " + a;
  }
  if ((check_file.empty() && prompt.empty()) || (kv != "bf16" && kv != "float") ||
      max_tokens < 1 || s.chunk < 0 || s.threads < 0 || !(s.top_p > 0 && s.top_p <= 1))
    return usage();
  const std::string path =
      model.size() > 5 && model.compare(model.size() - 5, 5, ".gguf") == 0 ? model
                                                                           : model + "/" + gguf_name;
  try {
    const auto t0 = clock_type::now();
    const smollm::gguf_file file(path);
    const smollm::llama m(file);
    const auto& c = m.config();
    std::fprintf(stderr,
                 "SmolLM2 from %s: %ld layers, width %ld, %ld query / %ld KV heads of %ld, "
                 "vocabulary %ld, %s head; loaded in %.0f ms\n",
                 path.c_str(), long(c.layers), long(c.dim), long(c.heads), long(c.kv_heads),
                 long(c.head_dim), long(c.vocab), m.tied_head() ? "tied" : "untied",
                 seconds_since(t0) * 1e3);
    if (!check_file.empty()) return check(m, check_file, prompts, max_diff, s);
    const smollm::index room =
        c.context - static_cast<smollm::index>(m.chat_ids(prompt).size());
    max_tokens = std::min(max_tokens, std::max<smollm::index>(room, 1));
    return kv == "float" ? chat<float>(m, prompt, has_system ? &system : nullptr, max_tokens, s)
                         : chat<Eigen::bfloat16>(m, prompt, has_system ? &system : nullptr,
                                                 max_tokens, s);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "smollm_chat: %s\n", e.what());
    if (std::strstr(e.what(), "cannot open"))
      std::fprintf(stderr,
                   "  fetch the model first: cmake --build BUILD --target smollm_model\n"
                   "  (or python3 tools/smollm.py fetch DIR, then --model DIR)\n");
    return 1;
  }
}
