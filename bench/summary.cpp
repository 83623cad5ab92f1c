// bench/summary.cpp: reads the JSON files written by bench_prefill and
// bench_decode (--benchmark_out=F --benchmark_out_format=json) and prints
// one readable summary:
//
//   * the machine limits the programs measured (JSON context: the best probe
//     of the run, with its median, worst and sample count);
//   * prefill: case | attn | naive Eigen | speed-up | % of peak | 2T/1T | max err
//   * decode:  case | GB/s | % of bandwidth | ms/call | 2T/1T | max err
//
// Figures are medians over repetitions (the "_median" aggregate when the run
// had repetitions, otherwise the median of the iteration records). Usage:
//
//   bench_summary results/prefill.json results/decode.json
//
// Self-contained (a small JSON reader below) so that it needs nothing beyond
// the C++ standard library.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace {

// ---------------------------------------------------------------------------
// JSON

struct json {
  enum kind_t { null, boolean, number, string, array, object } kind = null;
  double num = 0.0;
  std::string str;
  std::vector<json> items;                           // array
  std::vector<std::pair<std::string, json>> fields;  // object, in file order

  // Member by key (the last one when a key repeats), or nullptr.
  const json* get(const std::string& key) const {
    const json* found = nullptr;
    for (const auto& f : fields)
      if (f.first == key) found = &f.second;
    return found;
  }
  double number_or(const std::string& key, double dflt) const {
    const json* v = get(key);
    return v && v->kind == number ? v->num : dflt;
  }
  std::string string_or(const std::string& key, const std::string& dflt) const {
    const json* v = get(key);
    return v && v->kind == string ? v->str : dflt;
  }
};

class json_parser {
 public:
  explicit json_parser(std::string text) : s_(std::move(text)) {}

  json parse() {
    json v = value();
    skip_ws();
    if (i_ != s_.size()) fail("trailing characters");
    return v;
  }

 private:
  std::string s_;
  std::size_t i_ = 0;

  [[noreturn]] void fail(const std::string& what) const {
    throw std::runtime_error("JSON: " + what + " at offset " + std::to_string(i_));
  }
  void skip_ws() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\n' || s_[i_] == '\r' || s_[i_] == '\t'))
      ++i_;
  }
  bool match(const char* word) {
    const std::size_t n = std::char_traits<char>::length(word);
    if (s_.compare(i_, n, word) == 0) {
      i_ += n;
      return true;
    }
    return false;
  }
  json value() {
    skip_ws();
    if (i_ >= s_.size()) fail("unexpected end");
    json v;
    const char c = s_[i_];
    if (c == '{') {
      v.kind = json::object;
      ++i_;
      skip_ws();
      if (i_ < s_.size() && s_[i_] == '}') {
        ++i_;
        return v;
      }
      for (;;) {
        skip_ws();
        if (i_ >= s_.size() || s_[i_] != '"') fail("expected a key");
        std::string key = string_body();
        skip_ws();
        if (i_ >= s_.size() || s_[i_] != ':') fail("expected ':'");
        ++i_;
        v.fields.emplace_back(std::move(key), value());
        skip_ws();
        if (i_ < s_.size() && s_[i_] == ',') {
          ++i_;
          continue;
        }
        if (i_ < s_.size() && s_[i_] == '}') {
          ++i_;
          return v;
        }
        fail("expected ',' or '}'");
      }
    }
    if (c == '[') {
      v.kind = json::array;
      ++i_;
      skip_ws();
      if (i_ < s_.size() && s_[i_] == ']') {
        ++i_;
        return v;
      }
      for (;;) {
        v.items.push_back(value());
        skip_ws();
        if (i_ < s_.size() && s_[i_] == ',') {
          ++i_;
          continue;
        }
        if (i_ < s_.size() && s_[i_] == ']') {
          ++i_;
          return v;
        }
        fail("expected ',' or ']'");
      }
    }
    if (c == '"') {
      v.kind = json::string;
      v.str = string_body();
      return v;
    }
    if (match("true")) {
      v.kind = json::boolean;
      v.num = 1;
      return v;
    }
    if (match("false")) {
      v.kind = json::boolean;
      return v;
    }
    if (match("null")) return v;
    // Numbers, and the NaN / Infinity that Google Benchmark may write.
    v.kind = json::number;
    if (match("NaN") || match("-NaN")) {
      v.num = std::nan("");
      return v;
    }
    if (match("Infinity")) {
      v.num = HUGE_VAL;
      return v;
    }
    if (match("-Infinity")) {
      v.num = -HUGE_VAL;
      return v;
    }
    const char* begin = s_.c_str() + i_;
    char* end = nullptr;
    v.num = std::strtod(begin, &end);
    if (end == begin) fail("unexpected character");
    i_ += static_cast<std::size_t>(end - begin);
    return v;
  }
  std::string string_body() {
    ++i_;  // opening quote
    std::string out;
    while (i_ < s_.size() && s_[i_] != '"') {
      char c = s_[i_++];
      if (c == '\\') {
        if (i_ >= s_.size()) fail("bad escape");
        const char e = s_[i_++];
        switch (e) {
          case 'n': c = '\n'; break;
          case 't': c = '\t'; break;
          case 'r': c = '\r'; break;
          case 'b': c = '\b'; break;
          case 'f': c = '\f'; break;
          case 'u': {  // keep ASCII, replace the rest
            if (i_ + 4 > s_.size()) fail("bad \\u escape");
            const long cp = std::strtol(s_.substr(i_, 4).c_str(), nullptr, 16);
            i_ += 4;
            c = cp < 128 ? static_cast<char>(cp) : '?';
            break;
          }
          default: c = e;  // \" \\ \/
        }
      }
      out += c;
    }
    if (i_ >= s_.size()) fail("unterminated string");
    ++i_;
    return out;
  }
};

// ---------------------------------------------------------------------------
// Results

// One benchmark's median record: counters and real time by name.
struct record {
  std::map<std::string, double> values;   // medians
  std::map<std::string, double> maxima;   // best repetition (of the iteration records)
  std::string label;
  int repetitions = 0;
  double get(const std::string& key, double dflt = std::nan("")) const {
    const auto it = values.find(key);
    return it == values.end() ? dflt : it->second;
  }
};

struct results {
  std::map<std::string, std::string> context;
  std::vector<std::string> order;  // run names in file order
  std::map<std::string, record> by_name;
  std::vector<std::string> files;
};

double median(std::vector<double> v) {
  if (v.empty()) return std::nan("");
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Time of a record in milliseconds.
double real_time_ms(const json& b) {
  const double t = b.number_or("real_time", std::nan(""));
  const std::string unit = b.string_or("time_unit", "ns");
  const double to_ms = unit == "s" ? 1e3 : unit == "ms" ? 1.0 : unit == "us" ? 1e-3 : 1e-6;
  return t * to_ms;
}

// The benchmark's name without the "/real_time" that UseRealTime() appends.
std::string base_name(std::string name) {
  for (const std::string suffix : {"/real_time", "/manual_time"})
    if (name.size() > suffix.size() &&
        name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0)
      name.resize(name.size() - suffix.size());
  return name;
}

void load(const std::string& path, results& r) {
  std::ifstream in(path);
  if (!in) {
    std::fprintf(stderr, "bench_summary: cannot read %s (skipped)\n", path.c_str());
    return;
  }
  std::stringstream ss;
  ss << in.rdbuf();
  if (ss.str().find_first_not_of(" \t\r\n") == std::string::npos) {
    std::fprintf(stderr, "bench_summary: %s is empty (skipped)\n", path.c_str());
    return;
  }
  json doc;
  try {
    doc = json_parser(ss.str()).parse();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_summary: %s: %s (skipped)\n", path.c_str(), e.what());
    return;
  }
  r.files.push_back(path);
  if (const json* ctx = doc.get("context"))
    for (const auto& f : ctx->fields)
      if (f.second.kind == json::string) r.context[f.first] = f.second.str;
  const json* list = doc.get("benchmarks");
  if (!list) return;

  // Per run name: the median aggregate, or every iteration record.
  std::map<std::string, const json*> medians;
  std::map<std::string, std::vector<const json*>> iterations;
  for (const json& b : list->items) {
    const std::string run = base_name(b.string_or("run_name", b.string_or("name", "")));
    if (run.empty() || b.get("error_occurred")) continue;
    if (std::find(r.order.begin(), r.order.end(), run) == r.order.end()) r.order.push_back(run);
    const std::string type = b.string_or("run_type", "iteration");
    if (type == "aggregate") {
      if (b.string_or("aggregate_name", "") == "median") medians[run] = &b;
    } else {
      iterations[run].push_back(&b);
    }
  }
  for (const std::string& run : r.order) {
    record rec;
    std::vector<const json*> src;
    if (medians.count(run))
      src.push_back(medians[run]);
    else if (iterations.count(run))
      src = iterations[run];
    if (src.empty()) continue;
    rec.repetitions = static_cast<int>(iterations.count(run) ? iterations[run].size() : 0);
    if (!rec.repetitions) rec.repetitions = static_cast<int>(src[0]->number_or("repetitions", 1));
    std::map<std::string, std::vector<double>> vals;
    for (const json* b : src) {
      for (const auto& f : b->fields)
        if (f.second.kind == json::number) vals[f.first].push_back(f.second.num);
      vals["real_time_ms"].push_back(real_time_ms(*b));
      if (rec.label.empty()) rec.label = b->string_or("label", "");
    }
    for (auto& kv : vals) rec.values[kv.first] = median(kv.second);
    if (iterations.count(run))
      for (const json* b : iterations[run])
        for (const auto& f : b->fields)
          if (f.second.kind == json::number && !std::isnan(f.second.num)) {
            auto it = rec.maxima.find(f.first);
            if (it == rec.maxima.end() || f.second.num > it->second)
              rec.maxima[f.first] = f.second.num;
          }
    r.by_name[run] = rec;
  }
}

// ---------------------------------------------------------------------------
// Table printing

class table {
 public:
  explicit table(std::vector<std::string> header) { rows_.push_back(std::move(header)); }
  void add(std::vector<std::string> row) { rows_.push_back(std::move(row)); }
  void separator() { rows_.emplace_back(); }
  void print() const {
    std::vector<std::size_t> w;
    for (const auto& row : rows_)
      for (std::size_t c = 0; c < row.size(); ++c) {
        if (w.size() <= c) w.push_back(0);
        w[c] = std::max(w[c], row[c].size());
      }
    auto line = [&] {
      for (std::size_t c = 0; c < w.size(); ++c)
        std::printf("%s%s", c ? "-+-" : "", std::string(w[c], '-').c_str());
      std::printf("\n");
    };
    for (std::size_t r = 0; r < rows_.size(); ++r) {
      if (rows_[r].empty()) {
        line();
        continue;
      }
      for (std::size_t c = 0; c < w.size(); ++c) {
        const std::string& cell = c < rows_[r].size() ? rows_[r][c] : std::string();
        // First column left-aligned, figures right-aligned.
        if (c == 0)
          std::printf("%-*s", static_cast<int>(w[c]), cell.c_str());
        else
          std::printf(" | %*s", static_cast<int>(w[c]), cell.c_str());
      }
      std::printf("\n");
      if (r == 0) line();
    }
  }

 private:
  std::vector<std::vector<std::string>> rows_;
};

std::string fmt(const char* f, double x) {
  if (std::isnan(x)) return "-";
  char buf[64];
  std::snprintf(buf, sizeof buf, f, x);
  return buf;
}

std::string fmt_err(double e) {
  if (std::isnan(e) || e < 0) return "-";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1e", e);
  return buf;
}

// Replaces the first "from" in s with "to".
std::string replaced(std::string s, const std::string& from, const std::string& to) {
  const std::size_t p = s.find(from);
  if (p != std::string::npos) s.replace(p, from.size(), to);
  return s;
}

// Splits "a/b/c" into its parts.
std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : s) {
    if (c == sep) {
      out.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  out.push_back(cur);
  return out;
}

// Number in a name part such as "N2048" or "t2" (its digits), 0 if none.
long part_number(const std::string& part) {
  const std::size_t p = part.find_first_of("0123456789");
  return p == std::string::npos ? 0 : std::atol(part.c_str() + p);
}

// The attn cases whose names start with `prefix`, in a fixed order whatever
// order they ran in (random interleaving shuffles them): by the numbers in
// the name parts listed in `keys` (indices into the '/'-separated name).
std::vector<std::string> sorted_cases(const results& r, const std::string& prefix,
                                      const std::vector<int>& keys,
                                      const std::vector<std::string>& text_order = {},
                                      int text_key = -1) {
  std::vector<std::string> names;
  for (const std::string& name : r.order)
    if (name.rfind(prefix, 0) == 0 && r.by_name.count(name)) names.push_back(name);
  auto key = [&](const std::string& name) {
    const auto parts = split(name, '/');
    std::vector<long> k;
    if (text_key >= 0 && text_key < static_cast<int>(parts.size())) {
      const auto it = std::find(text_order.begin(), text_order.end(), parts[text_key]);
      k.push_back(static_cast<long>(it - text_order.begin()));
    }
    for (int i : keys) k.push_back(i < static_cast<int>(parts.size()) ? part_number(parts[i]) : 0);
    return k;
  };
  std::stable_sort(names.begin(), names.end(),
                   [&](const std::string& a, const std::string& b) { return key(a) < key(b); });
  return names;
}

double context_number(const results& r, const std::string& key) {
  const auto it = r.context.find(key);
  return it == r.context.end() ? std::nan("") : std::atof(it->second.c_str());
}

// 100 * value / limit[threads], NaN when unknown.
double pct(double value, const double* limit, double threads) {
  const int t = static_cast<int>(threads);
  if (t < 1 || t > 2 || !(limit[t] > 0)) return std::nan("");
  return 100.0 * value / limit[t];
}

constexpr double kErrLimit = 1e-3;  // flag outputs further than this from the reference

// The limits the tables compare with, per thread count (index 1, 2): the best
// of the start-up measurement and every repetition of the machine/...
// benchmarks, so that a start-up moment on a busy machine does not inflate
// the percentages.
struct limits {
  double fma[3] = {std::nan(""), std::nan(""), std::nan("")};
  double bw[3] = {std::nan(""), std::nan(""), std::nan("")};
};

limits print_machine(const results& r) {
  limits lim;
  std::printf("Machine limits, measured in this run\n");
  const auto simd = r.context.find("simd");
  const auto lanes = r.context.find("simd_lanes");
  if (simd != r.context.end())
    std::printf("  vector ISA of the build: %s, %s floats per packet\n", simd->second.c_str(),
                lanes != r.context.end() ? lanes->second.c_str() : "?");
  auto bench = [&](const std::string& name, const char* key, bool best) {
    const auto it = r.by_name.find(name);
    if (it == r.by_name.end()) return std::nan("");
    if (!best) return it->second.get(key);
    const auto m = it->second.maxima.find(key);
    return m == it->second.maxima.end() ? it->second.get(key) : m->second;
  };
  auto best_of = [](double a, double b) {
    return std::isnan(a) ? b : std::isnan(b) ? a : std::max(a, b);
  };
  table t({"limit", "1 thread", "2 threads"});
  bool any = false;
  struct row {
    const char* title;
    const char* context_key;
    const char* bench_name;
    const char* counter;
    double* out;
  } rows[] = {
      {"fp32 FMA peak, GFLOP/s", "fma_peak_gflops_t", "machine/fma_peak/t", "GFLOPS", lim.fma},
      {"read bandwidth, GB/s", "read_bw_gbps_t", "machine/read_bw/t", "GBps", lim.bw},
  };
  std::vector<std::string> notes;
  for (const row& rw : rows) {
    double median_[3], worst[3], samples[3];
    bool have = false;
    for (int th = 1; th <= 2; ++th) {
      const std::string n = std::to_string(th);
      const std::string key = rw.context_key;  // "fma_peak_gflops_t"
      const std::string stem = key.substr(0, key.size() - 2);
      median_[th] = context_number(r, stem + "_median_t" + n);
      worst[th] = context_number(r, stem + "_min_t" + n);
      samples[th] = context_number(r, stem + "_samples_t" + n);
      rw.out[th] = best_of(context_number(r, key + n), bench(rw.bench_name + n, rw.counter, true));
      have = have || !std::isnan(rw.out[th]);
      if (median_[th] > 0 && median_[th] < 0.8 * rw.out[th]) {
        char buf[200];
        std::snprintf(buf, sizeof buf, "%s, %d thread(s): the probe's median is %.0f%% of its best",
                      rw.title, th, 100.0 * median_[th] / rw.out[th]);
        notes.push_back(buf);
      }
    }
    if (!have) continue;
    if (any) t.separator();
    any = true;
    t.add({rw.title, fmt("%.1f", rw.out[1]), fmt("%.1f", rw.out[2])});
    t.add({"  probe median", fmt("%.1f", median_[1]), fmt("%.1f", median_[2])});
    t.add({"  probe worst", fmt("%.1f", worst[1]), fmt("%.1f", worst[2])});
    t.add({"  probe samples", fmt("%.0f", samples[1]), fmt("%.0f", samples[2])});
  }
  if (any) {
    t.print();
    std::printf("  The probe measures each limit at start, between the cases and at the end;\n"
                "  the limit is its best measurement (a limit can read low on a busy machine,\n"
                "  never high). %% of peak / bandwidth below are against that best.\n");
  } else {
    std::printf("  (no measurements found)\n");
  }
  for (const std::string& n : notes) std::printf("  note: %s\n", n.c_str());
  if (!notes.empty())
    std::printf("  => something else used the cores during this run (a shared machine?); its\n"
                "     figures, 2-thread ones most, are noisy. Compare ratios within the run.\n");
  std::printf("\n");
  return lim;
}

int print_prefill(const results& r, const limits& lim) {
  int flagged = 0;
  bool any = false;
  table t({"case (D, N, mask, threads)", "attn GFLOP/s", "naive Eigen", "speed-up", "% of peak",
           "2T/1T", "max err"});
  std::string last_group;
  int reps = 0;
  // prefill attn D128 N2048 causal0 t1: by N, D, causal, threads.
  for (const std::string& name : sorted_cases(r, "prefill/attn/", {3, 2, 4, 5})) {
    const record& a = r.by_name.at(name);
    const auto parts = split(name, '/');  // prefill attn D128 N2048 causal0 t1
    if (parts.size() < 6) continue;
    any = true;
    reps = std::max(reps, a.repetitions);
    const std::string group = parts[2] + parts[3];
    if (!last_group.empty() && group != last_group) t.separator();
    last_group = group;

    const auto naive_it = r.by_name.find(replaced(name, "/attn/", "/naive/"));
    const double ga = a.get("GFLOPS");
    const double gn = naive_it == r.by_name.end() ? std::nan("") : naive_it->second.get("GFLOPS");
    std::string scaling;
    if (parts[5] != "t1") {
      const auto one = r.by_name.find(replaced(name, "/" + parts[5], "/t1"));
      if (one != r.by_name.end()) scaling = fmt("%.2fx", ga / one->second.get("GFLOPS"));
    }
    const double err = a.get("max_err");
    std::string err_s = fmt_err(err);
    if (err > kErrLimit) {
      err_s += " !!";
      ++flagged;
    }
    const std::string mask = parts[4] == "causal1" ? "causal" : "full";
    t.add({parts[2].substr(0, 1) + "=" + parts[2].substr(1) + " " + parts[3].substr(0, 1) + "=" +
               parts[3].substr(1) + " " + mask + " " + parts[5],
           fmt("%.1f", ga), fmt("%.1f", gn), fmt("%.2fx", ga / gn),
           fmt("%.1f%%", pct(ga, lim.fma, a.get("nthreads"))), scaling, err_s});
  }
  if (!any) return 0;
  std::printf(
      "Prefill: fp32, batch 1, 8 heads, L = S = N. GFLOP/s of useful work (4*N*N*D per head;\n"
      "causal: the unmasked half), medians of %d repetition(s). %% of peak: attn against the\n"
      "FMA peak for its thread count. 2T/1T: attn's 2-thread over 1-thread figure.\n"
      "max err: max |attn - naive| over the output.\n",
      std::max(reps, 1));
  t.print();
  std::printf("\n");
  return flagged;
}

int print_decode(const results& r, const limits& lim) {
  int flagged = 0;
  bool any = false;
  table t({"case (K/V type, KV length, threads)", "GB/s", "% of bandwidth", "ms/call", "2T/1T",
           "max err"});
  std::string last_group;
  int reps = 0;
  // decode attn bf16 S32768 t1: by type, S, threads.
  for (const std::string& name :
       sorted_cases(r, "decode/attn/", {3, 4}, {"f32", "bf16", "f16"}, 2)) {
    const record& a = r.by_name.at(name);
    const auto parts = split(name, '/');  // decode attn bf16 S32768 t1
    if (parts.size() < 5) continue;
    any = true;
    reps = std::max(reps, a.repetitions);
    const std::string group = parts[2] + parts[3];
    if (!last_group.empty() && group != last_group) t.separator();
    last_group = group;
    const double g = a.get("GBps");
    std::string scaling;
    if (parts[4] != "t1") {
      const auto one = r.by_name.find(replaced(name, "/" + parts[4], "/t1"));
      if (one != r.by_name.end()) scaling = fmt("%.2fx", g / one->second.get("GBps"));
    }
    const double err = a.get("max_err");
    std::string err_s = fmt_err(err);
    if (err > kErrLimit) {
      err_s += " !!";
      ++flagged;
    }
    t.add({parts[2] + " S=" + parts[3].substr(1) + " " + parts[4], fmt("%.1f", g),
           fmt("%.1f%%", pct(g, lim.bw, a.get("nthreads"))), fmt("%.2f", a.get("real_time_ms")),
           scaling, err_s});
  }
  if (!any) return 0;
  std::printf(
      "Decode: 1 query row, 32 heads (Hq = Hkv), D = 128. GB/s of K+V bytes read, medians of\n"
      "%d repetition(s). %% of bandwidth: against the read bandwidth for the thread count.\n"
      "max err: max |attn - fp32 reference computed from the same K/V values|.\n",
      std::max(reps, 1));
  t.print();
  std::printf("\n");
  return flagged;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s RESULT.json...\n", argv[0]);
    return 2;
  }
  results r;
  for (int i = 1; i < argc; ++i) load(argv[i], r);
  if (r.files.empty()) {
    std::fprintf(stderr, "bench_summary: no results\n");
    return 1;
  }
  const auto date = r.context.find("date");
  std::printf("attn benchmarks%s%s\n\n", date != r.context.end() ? ", " : "",
              date != r.context.end() ? date->second.c_str() : "");
  const limits lim = print_machine(r);
  int flagged = print_prefill(r, lim);
  flagged += print_decode(r, lim);
  if (flagged)
    std::printf("!! %d case(s) differ from the reference by more than %.0e: check the kernel.\n",
                flagged, kErrLimit);
  return 0;
}
