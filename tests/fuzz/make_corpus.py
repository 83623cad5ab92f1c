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
    # First byte: the element type (sdpa, mha cache, paged cache) or the score function
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
    if name == "fuzz_paged_cache":
        # Pool headers, then 32 operations from a random tail. The header
        # bytes, in decoding order: type, block size (an index into
        # kBlockSizes: 0 -> 16, 1 -> 1, 6 -> 64, 9 -> 3, refused then 2),
        # num_blocks, kv_heads - 1, group - 1, head dim (an index into
        # kDims: 0 -> 4, 3 -> 3, 6 -> 16), whether d_v differs (>= 208) and
        # its index into kVDims (5 -> 0), a bad constructor call (0: none),
        # the operation count - 1.
        headers = {
            "bs1_small_pool": [0, 1, 4, 1, 1, 0, 0, 0, 31],
            "bs16_gqa": [1, 0, 6, 1, 2, 3, 0, 0, 31],
            "bs64_long": [0, 6, 12, 0, 1, 6, 0, 0, 31],
            "odd_block_size": [2, 9, 5, 2, 0, 0, 0, 0, 31],
            "dv0": [0, 0, 3, 0, 0, 0, 255, 5, 0, 31],
        }
        for k, (fname, head) in enumerate(sorted(headers.items())):
            out.append((fname, bytes(head) + rand_bytes(500 + k, 600)))
        out.append(("many_ops", bytes([1]) + rand_bytes(98, 1000)))
    return out


def main():
    # The harnesses whose corpora this script makes (others, such as
    # fuzz_mla_cache, commit hand-made inputs of their own).
    for name in ("fuzz_sdpa", "fuzz_additive", "fuzz_mha_cache", "fuzz_paged_cache"):
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
