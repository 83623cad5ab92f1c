#!/usr/bin/env bash
# tools/fuzz.sh: build the libFuzzer harnesses of tests/fuzz with Clang
# (-fsanitize=fuzzer,address,undefined) and run each for a bounded time.
#
#   tools/fuzz.sh                    # every harness, FUZZ_SECONDS each
#   tools/fuzz.sh fuzz_sdpa          # only the harnesses named
#   FUZZ_SECONDS=600 tools/fuzz.sh   # a longer hunt
#
# Each harness first replays its committed seed corpus
# (tests/fuzz/corpus/<name>/, never written to), then fuzzes a copy of it in
# the build directory for FUZZ_SECONDS. Any finding (a broken invariant, a
# sanitizer report, a crash, a leak, a timeout, an out-of-memory) fails the
# script; the input that caused it is left in <build>/findings/<name>/ with
# the log beside it. To keep a finding as a regression input, copy that file
# into tests/fuzz/corpus/<name>/ once it is fixed.
#
# Installs Clang and its sanitizer/libFuzzer runtime with apt-get when they are
# missing (Debian/Ubuntu: clang, libclang-rt-dev).
# Environment: FUZZ_SECONDS (default 30), BUILD_DIR (default build/fuzz),
# JOBS (default: all cores), FUZZ_NATIVE (default 1: -march=native, the
# widest SIMD path of this machine; 0: the compiler's default ISA).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${BUILD_DIR:-$root/build/fuzz}"
seconds="${FUZZ_SECONDS:-30}"
native="${FUZZ_NATIVE:-1}"
jobs="${JOBS:-$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2)}"

# --- dependencies -----------------------------------------------------------
# A C++ compiler that links -fsanitize=fuzzer: clang++ with libclang-rt.
fuzz_compiler_ok() {
  local cxx="$1" tmp
  command -v "$cxx" >/dev/null 2>&1 || return 1
  tmp="$(mktemp -d)"
  printf '%s\n' '#include <cstddef>' '#include <cstdint>' \
    'extern "C" int LLVMFuzzerTestOneInput(const uint8_t*, size_t) { return 0; }' >"$tmp/t.cpp"
  if "$cxx" -fsanitize=fuzzer,address,undefined "$tmp/t.cpp" -o "$tmp/t" >/dev/null 2>&1; then
    rm -rf "$tmp"
    return 0
  fi
  rm -rf "$tmp"
  return 1
}

find_compiler() {
  for c in clang++ clang++-19 clang++-18 clang++-17 clang++-16 clang++-15 clang++-14; do
    if fuzz_compiler_ok "$c"; then
      echo "$c"
      return 0
    fi
  done
  return 1
}

apt_install() {
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
      sudo=sudo
    else
      echo "fuzz.sh: need root or sudo to install: $*" >&2
      return 1
    fi
  fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -q
  $sudo apt-get install -y -q --no-install-recommends "$@"
}

if ! cxx="$(find_compiler)"; then
  command -v apt-get >/dev/null 2>&1 || {
    echo "fuzz.sh: no clang++ with the libFuzzer runtime, and no apt-get to install one" >&2
    exit 1
  }
  echo "fuzz.sh: installing clang and its libFuzzer/sanitizer runtime"
  apt_install clang libclang-rt-dev || apt_install clang-14 libclang-rt-14-dev
  cxx="$(find_compiler)" || {
    echo "fuzz.sh: clang++ still cannot link -fsanitize=fuzzer" >&2
    exit 1
  }
fi
missing=()
for p in cmake make libeigen3-dev libgtest-dev; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})) && command -v apt-get >/dev/null 2>&1; then
  apt_install "${missing[@]}"
fi

# A symbolizer makes sanitizer stack traces readable (optional).
if [ -z "${ASAN_SYMBOLIZER_PATH:-}" ]; then
  ver="$("$cxx" --version | sed -n 's/.*clang version \([0-9]*\).*/\1/p' | head -1)"
  for s in "llvm-symbolizer-$ver" llvm-symbolizer; do
    if command -v "$s" >/dev/null 2>&1; then
      export ASAN_SYMBOLIZER_PATH="$(command -v "$s")"
      break
    fi
  done
fi

# --- configure and build ------------------------------------------------------
# -O3 with OpenMP, as users build: the harnesses run calls on 1 and 2 threads
# (every call parallel: ATTN_MIN_PARALLEL_FLOPS=0, tests/fuzz/CMakeLists.txt)
# and fuzz_sdpa checks that the bits do not depend on it, where the compiler
# is freest to contract multiply-adds differently per copy of a loop.
native_flag=OFF
[ "$native" = 1 ] && native_flag=ON
cmake -S "$root" -B "$build" \
  -DCMAKE_CXX_COMPILER="$cxx" \
  -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CXX_FLAGS_RELEASE=-O3 \
  -DCMAKE_DISABLE_FIND_PACKAGE_OpenMP=OFF \
  -DATTN_BUILD_TESTS=ON \
  -DATTN_BUILD_FUZZERS=ON \
  -DATTN_BUILD_EXAMPLES=OFF \
  -DATTN_BUILD_BENCHMARKS=OFF \
  -DATTN_NATIVE="$native_flag" >/dev/null
cmake --build "$build" --target attn_fuzzers --parallel "$jobs"

# --- run ------------------------------------------------------------------------
list="$build/fuzzers.txt"
[ -s "$list" ] || { echo "fuzz.sh: no harness list at $list" >&2; exit 1; }
export ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"  # thousands of tiny parallel calls

# One harness: replay its committed corpus, then fuzz a copy of it. Prints
# its report when done and returns non-zero on a finding.
fuzz_one() {
  local name="$1" binary="$2" corpus="$3"
  local work="$build/corpus/$name" findings="$build/findings/$name"
  rm -rf "$work" "$findings"
  mkdir -p "$work" "$findings"
  shopt -s nullglob
  local seeds=("$corpus"/*)
  shopt -u nullglob
  if ((${#seeds[@]})); then
    cp "${seeds[@]}" "$work/"
    # The committed inputs are regression tests: every one must pass.
    if ! "$binary" "${seeds[@]}" >"$findings/replay.log" 2>&1; then
      {
        echo "fuzz.sh: $name: a committed corpus input fails (log: $findings/replay.log)"
        tail -n 30 "$findings/replay.log"
      } >&2
      return 1
    fi
  fi
  # -len_control=0: inputs may use all max_len bytes from the start (the
  # decoders read specials and layouts from bytes past the first few dozen).
  if "$binary" "$work" -max_total_time="$seconds" -timeout=20 -rss_limit_mb=4096 \
      -max_len=1024 -len_control=0 -print_final_stats=1 -artifact_prefix="$findings/" \
      >"$findings/fuzz.log" 2>&1; then
    echo "fuzz.sh: $name: fuzzed for ${seconds}s"
    grep -E '^stat::(number_of_executed_units|average_exec_per_sec|new_units_added)' \
      "$findings/fuzz.log" | sed "s/^/fuzz.sh: $name: /" || true
  else
    {
      echo "fuzz.sh: $name: FINDING (log: $findings/fuzz.log, input: $findings/)"
      grep -E 'attn fuzz invariant|ERROR: |runtime error|SUMMARY' "$findings/fuzz.log" | head -n 10 || true
    } >&2
    return 1
  fi
}

# The harnesses run JOBS at a time: a harness keeps about one core busy (its
# calls are small), so on 2 cores two side by side take the time of one.
names=()
running=0
while IFS=$'\t' read -r name binary corpus; do
  [ -n "$name" ] || continue
  if (($#)); then
    wanted=0
    for w in "$@"; do [ "$w" = "$name" ] && wanted=1; done
    ((wanted)) || continue
  fi
  if ((running >= jobs)); then
    wait -n || true
    running=$((running - 1))
  fi
  names+=("$name")
  echo "fuzz.sh: $name: replaying its corpus, then fuzzing for ${seconds}s"
  (
    rc=0
    fuzz_one "$name" "$binary" "$corpus" || rc=1
    echo "$rc" >"$build/findings.$name.rc"
  ) &
  running=$((running + 1))
done <"$list"
wait

failed=()
for name in "${names[@]}"; do
  rc="$(cat "$build/findings.$name.rc" 2>/dev/null || echo 1)"
  rm -f "$build/findings.$name.rc"
  [ "$rc" = 0 ] || failed+=("$name")
done

if ((${#names[@]} == 0)); then
  echo "fuzz.sh: no harness matched: $*" >&2
  exit 1
fi
if ((${#failed[@]})); then
  echo "fuzz.sh: findings in: ${failed[*]}" >&2
  exit 1
fi
echo "fuzz.sh: ${#names[@]} harnesses, no findings"
