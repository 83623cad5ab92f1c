#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz harnesses: tests/fuzz/corpus/<name>/.

The harnesses read their input front to back and treat an exhausted input as
zeros (tests/fuzz/fuzz_input.hpp), so a short input is a plain case and every
byte added steers one more choice. The seeds are a handful of such inputs:
the all-zero plain case, a few whose first bytes pick each element type,
path and operation mix, and pseudo-random tails (a fixed PRNG, so the files
are the same on every run). libFuzzer grows its own corpus from these in the
build directory; the committed files are also replayed as regression tests
(ctest -L fuzz, and first thing in tools/fuzz.sh).

Usage: tests/fuzz/make_corpus.py   (rewrites the seed files; commit them)
"""
import os
import random

HERE = os.path.dirname(os.path.abspath(__file__))


def rand_bytes(seed, n):
    r = random.Random(seed)
    return bytes(r.randrange(256) for _ in range(n))


def seeds(name):
    """(file name, bytes) pairs for one harness."""
    out = [("plain", bytes(16))]
    # First byte: the element type (sdpa, mha cache) or the score function
    # (additive: byte % 4 -> additive, additive, dot, general).
    for first in range(3 if name != "fuzz_additive" else 4):
        for k, n in enumerate((48, 300)):
            out.append((f"type{first}_{k}", bytes([first]) + rand_bytes(1000 * first + k, n)))
    if name == "fuzz_sdpa":
        # "big" (byte >= 216 at position 1): the tiled path over several
        # tiles, or split-KV over several chunks.
        out.append(("big_tiled", bytes([0, 250]) + rand_bytes(77, 200)))
        out.append(("big_split", bytes([1, 250, 0, 0, 0, 0, 0, 0, 0, 0]) + rand_bytes(78, 200)))
    if name == "fuzz_mha_cache":
        # Long operation sequences.
        out.append(("many_ops", bytes([2]) + rand_bytes(99, 900)))
    return out


def main():
    # The harnesses whose corpora this script makes (others, such as
    # fuzz_mla_cache, commit hand-made inputs of their own).
    for name in ("fuzz_sdpa", "fuzz_additive", "fuzz_mha_cache"):
        d = os.path.join(HERE, "corpus", name)
        os.makedirs(d, exist_ok=True)
        for f in os.listdir(d):
            if f.startswith("seed_"):
                os.remove(os.path.join(d, f))
        for fname, data in seeds(name):
            with open(os.path.join(d, "seed_" + fname), "wb") as fh:
                fh.write(data)


if __name__ == "__main__":
    main()
