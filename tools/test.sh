#!/usr/bin/env bash
# tools/test.sh: install what is missing, build attn's tests and run them.
#
#   tools/test.sh                      # build/test, Release with assertions on
#   tools/test.sh -DATTN_SANITIZE=ON   # extra arguments go to the cmake configure
#
# On a fresh Debian/Ubuntu machine it apt-installs the toolchain, Eigen,
# GoogleTest and Google Benchmark first (skipped when they are already there).
# Environment: BUILD_DIR (default build/test), JOBS (default: all cores),
# TEST_LABELS (a ctest -L regex, e.g. 'unit|model'; default: every test).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${BUILD_DIR:-$root/build/test}"
jobs="${JOBS:-$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2)}"

# --- dependencies -----------------------------------------------------------
# (libomp-dev: OpenMP for clang++, which CI's sanitizer run uses: CXX=clang++)
packages=(cmake g++ make libeigen3-dev libgtest-dev libbenchmark-dev python3 python3-pip
          clang libomp-dev pkg-config doxygen)
if command -v dpkg >/dev/null 2>&1; then
  missing=()
  for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if ((${#missing[@]})); then
    echo "test.sh: installing ${missing[*]}"
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
      if command -v sudo >/dev/null 2>&1; then
        sudo=sudo
      else
        echo "test.sh: need root or sudo to install: ${missing[*]}" >&2
        exit 1
      fi
    fi
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -q
    $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
else
  echo "test.sh: no dpkg; assuming cmake, a C++17 compiler, Eigen 3.4, GoogleTest are installed"
fi

# --- configure, build, test -------------------------------------------------
# Release optimisation with assertions left on (no -DNDEBUG): tests are fast
# enough and catch more. Benchmarks are built by tools/bench.sh, not here.
cmake -S "$root" -B "$build" \
  -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CXX_FLAGS_RELEASE=-O2 \
  -DATTN_BUILD_TESTS=ON \
  -DATTN_BUILD_EXAMPLES=ON \
  -DATTN_BUILD_BENCHMARKS=OFF \
  "$@"
cmake --build "$build" --parallel "$jobs"
cd "$build"
if [ -n "${TEST_LABELS:-}" ]; then
  ctest --output-on-failure --parallel "$jobs" -L "$TEST_LABELS"
else
  ctest --output-on-failure --parallel "$jobs"
fi
