// bench/shares.hpp: the shares of the machine limits (peak_pct), computed
// once the run is over, against the best probe of the whole run.
//
// A share computed while a case runs can only use the probe measured so far:
// a start-up probe taken during a slow spell (a neighbour on the shared core,
// a clock still ramping up) makes every later share read high. So the cases
// only record their rate (set_rate in machine.hpp) and shares_reporter, the
// JSON file reporter, holds every run back until the end: it probes once more,
// then writes the context (with the probe's best, median, worst and sample
// count per limit and thread count) and every run with its peak_pct against
// the best. The console shows rates only; bench_summary and the charts read
// the shares and limits from the JSON.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>

#include "machine.hpp"

namespace attn_bench {

/// True when the command line asks for a JSON file (--benchmark_out=F with
/// the default or json format). Read before benchmark::Initialize, which
/// removes the flags it knows from argv.
inline bool& json_file_requested() {
  static bool requested = false;
  return requested;
}

inline void note_output_flags(int argc, char** argv) {
  bool out = false, json = true;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--benchmark_out=", 0) == 0 && a.size() > 16) out = true;
    if (a.rfind("--benchmark_out_format=", 0) == 0) json = a == "--benchmark_out_format=json";
  }
  json_file_requested() = out && json;
}

class shares_reporter : public benchmark::JSONReporter {
 public:
  bool ReportContext(const Context& context) override {
    context_ = std::make_unique<Context>(context);
    return true;
  }

  void ReportRuns(const std::vector<Run>& runs) override { held_.push_back(runs); }

  void Finalize() override {
    probe_rounds(1);
    add_probe_context();
    if (context_) JSONReporter::ReportContext(*context_);
    for (std::vector<Run>& runs : held_) {
      for (Run& run : runs) add_share(run);
      JSONReporter::ReportRuns(runs);
    }
    JSONReporter::Finalize();
  }

 private:
  std::unique_ptr<Context> context_;
  std::vector<std::vector<Run>> held_;

  // peak_pct of a run that carries a rate (GFLOPS: FMA peak, GBps: read
  // bandwidth) and its thread count. Shares are linear in the rate, so the
  // median, mean and stddev aggregates scale like the iterations; a cv
  // aggregate is a ratio already and stays as it is.
  static void add_share(Run& run) {
    const auto threads = run.counters.find("nthreads");
    if (threads == run.counters.end()) return;
    for (limit_kind kind : {limit_kind::fma, limit_kind::read_bw}) {
      const auto rate = run.counters.find(kind == limit_kind::fma ? "GFLOPS" : "GBps");
      if (rate == run.counters.end()) continue;
      if (run.aggregate_name == "cv") {
        run.counters["peak_pct"] = rate->second;
        return;
      }
      // A stddev aggregate's nthreads is 0: the name's t<T> part is the
      // thread count of every record.
      int t = thread_count_of(run);
      if (t == 0) t = static_cast<int>(threads->second.value + 0.5);
      const double limit = best_limit(kind, t);
      if (limit > 0) run.counters["peak_pct"] = 100.0 * rate->second.value / limit;
      return;
    }
  }

  // The t<T> part of a case's name ("prefill/attn/D128/N2048/causal0/t1",
  // "/real_time" appended), 0 if none.
  static int thread_count_of(const Run& run) {
    const std::string name = run.run_name.str();
    const std::size_t p = name.rfind("/t");
    return p == std::string::npos ? 0 : std::atoi(name.c_str() + p + 2);
  }

  static void add_probe_context() {
    for (limit_kind kind : {limit_kind::fma, limit_kind::read_bw}) {
      if (!machine().wants[static_cast<int>(kind)]) continue;
      const std::string key = kind == limit_kind::fma ? "fma_peak_gflops" : "read_bw_gbps";
      for (int t = 1; t <= max_threads(); ++t) {
        const probe_samples& s = machine().of(kind)[t];
        const std::string suffix = "_t" + std::to_string(t);
        benchmark::AddCustomContext(key + suffix, fmt(s.best()));
        benchmark::AddCustomContext(key + "_median" + suffix, fmt(s.median()));
        benchmark::AddCustomContext(key + "_min" + suffix, fmt(s.worst()));
        benchmark::AddCustomContext(key + "_samples" + suffix, std::to_string(s.values.size()));
      }
    }
  }
};

/// Prints the probe's spread to stderr (what the shares are against).
inline void print_probe_spread() {
  for (limit_kind kind : {limit_kind::fma, limit_kind::read_bw}) {
    if (!machine().wants[static_cast<int>(kind)]) continue;
    for (int t = 1; t <= max_threads(); ++t) {
      const probe_samples& s = machine().of(kind)[t];
      std::fprintf(stderr, "machine: %s, %d thread(s): best %.1f, median %.1f, worst %.1f %s (%zu samples)\n",
                   kind == limit_kind::fma ? "fp32 FMA peak" : "read bandwidth", t, s.best(),
                   s.median(), s.worst(), kind == limit_kind::fma ? "GFLOP/s" : "GB/s",
                   s.values.size());
    }
  }
}

/// Runs the registered benchmarks; with a JSON file requested, through
/// shares_reporter so that the file carries the shares.
inline void run_benchmarks() {
  if (json_file_requested()) {
    shares_reporter file;
    benchmark::RunSpecifiedBenchmarks(nullptr, &file);
  } else {
    benchmark::RunSpecifiedBenchmarks();
    probe_rounds(1);
  }
  print_probe_spread();
}

}  // namespace attn_bench
