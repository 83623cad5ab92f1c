#!/usr/bin/env python3
"""tools/compare.py: attn beside PyTorch and ONNX Runtime on the same shapes.

    python3 tools/compare.py [--build-dir DIR] [--rounds N] [--quick]
                             [--cases REGEX] [--min-time SEC] [--seed N]
    python3 tools/compare.py --setup        only make / update the venv

attn is timed through the Google Benchmark programs that tools/bench.sh
builds (DIR/bench/bench_prefill and bench_decode, DIR = build/bench unless
--build-dir says otherwise); the peers are timed here, in Python:

  prefill  batch 1, 8 heads, L = S = N, head dim D, fp32.
      attn     the case prefill/attn/D<D>/N<N>/causal<0|1>/t<T>.
      PyTorch  torch.nn.functional.scaled_dot_product_attention on
               contiguous [1, H, N, D] tensors, is_causal for causal
               (attn's causal is bottom-right, the same as PyTorch's
               top-left when L = S); each call allocates its output.
      ORT      a one-node graph com.microsoft.MultiHeadAttention with q, k
               and v as [1, N, H*D] inputs and num_heads = H; causal sets
               unidirectional = 1. For causal cases the causal prompt path of
               com.microsoft.GroupQueryAttention (empty past) is timed as
               well ("ORT-GQA"); it computes the same output and counts as a
               peer.
      work     4*N*N*D*H FLOPs per call; causal: only the unmasked part,
               4*D*H*N(N+1)/2 (what attn's benchmark counts too).

  decode  one query row against a KV cache of S tokens, 32 heads
      (Hq = Hkv), D = 128, fp32 query and output, K/V in f32, bf16 or f16.
      attn     the case decode/attn/<type>/S<S>/t<T>.
      PyTorch  scaled_dot_product_attention of q [1, H, 1, D] over K/V
               [1, H, S, D]. With bf16/f16 K/V the timed call is
               sdpa(q, K.float(), V.float()): the K/V upcast to fp32 is
               inside the timing, as a PyTorch user with a low-precision
               cache and fp32 math would write it (SDPA takes no mixed
               types). The native low-precision call,
               sdpa(q.to(type), K, V).float(), is timed too and shown in
               the notes; it rounds q and the output to bf16/f16, so it is
               not counted as a peer.
      ORT      com.microsoft.GroupQueryAttention with a BNSH past cache of
               S - 1 tokens plus 1 new token, i.e. S keys as for the others,
               past and present bound to the same buffer (IOBinding), so a
               call reads the cache and writes one token but copies nothing;
               the new token is K/V's last row, so the buffer keeps its
               values. f16 runs with an fp32 query and a float16 cache; ORT
               has no CPU kernel for a bfloat16 cache (checked at start), so
               bf16 shows "-".
      work     2*S*H*D*sizeof(K/V type) bytes of K and V read per call.

  Every ORT session runs with intra_op_num_threads = T, inter_op_num_threads
  = 1 and sequential execution, on preallocated outputs (IOBinding);
  PyTorch runs with torch.set_num_threads(T), under inference_mode. Inputs
  are uniform in [-1, 1) like attn's benchmark inputs (other values, same
  distribution).

Layouts: attn's benchmarks keep Q/K/V as [batch, seq, heads, dim]; PyTorch
gets contiguous [1, H, N, D] tensors, ORT's MultiHeadAttention its [1, N,
H*D] inputs (attn's layout) and GroupQueryAttention its BNSH cache, i.e. each
peer its natural layout. In decode that means attn reads each head's K/V rows
at a stride of H*D floats, the peers contiguously.

Timing. For round 1..--rounds (3), the cases in a fresh random order; per
case, first attn: the bench program runs its case and the machine probe of
the same thread count (machine/fma_peak/t<T> for prefill, machine/read_bw/t<T>
for decode) with --benchmark_min_time=--min-time (0.3 s), a 0.1 s
--benchmark_min_warmup_time (else a call longer than min_time would be timed
cold) and JSON output; its time is Google Benchmark's real time per
iteration. Then PyTorch, then ORT, in this process: warm-up calls until two
in a row agree within 20 % (at most 6), then calls until they add up to at
least --min-time, the median call. A case's figure is the median over
rounds. The probe's limit per thread count is its best value over all runs
(a limit can read low on a busy machine, never high; the programs' start-up
figures from the JSON context count too); its minimum is printed beside it
as the spread. "attn % of peak" is attn's figure against that best.

Before timing, each peer graph is checked on a small shape against a float64
NumPy reference (tolerance 1e-4), and during the run PyTorch's and ORT's
outputs are compared on the real shape (recorded as peer_max_diff); a peer
whose check fails is not timed.

Output: one table on stdout, also written to DIR/results/compare.txt, and
the raw numbers (every round, every probe sample) in DIR/results/compare.json.

Setup. The peers live in a virtual environment, build/compare-venv, made with
`python3 -m venv` (Debian: apt-get install python3-venv) and filled from PyPI
with the pinned tools/compare-requirements.txt (pip --no-deps; the file says
why: about 4 GB, since PyPI's Linux torch wheel needs the CUDA runtime
libraries even on CPU). This happens on the first run, or when that file
changes; the script then runs itself with the venv's Python.

Environment: ATTN_COMPARE_TORCH_CAPABILITY=avx2 (or default, avx512, ...)
sets ATEN_CPU_CAPABILITY for PyTorch, i.e. which of its CPU kernel builds it
dispatches to, e.g. to see PyTorch's AVX2 kernels on an AVX-512 machine. The
header shows the capability in use. attn's ISA is the one its build was
compiled for (-march=native in tools/bench.sh).

Timings share the machine: run it under the same lock as the benchmarks,
e.g. `flock /tmp/attn-cpu.lock python3 tools/compare.py` (this script takes
no lock itself), or through `tools/bench.sh --compare`.
"""

import argparse
import datetime
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / "build" / "compare-venv"
REQUIREMENTS = ROOT / "tools" / "compare-requirements.txt"
VENV_STAMP = VENV / "installed-requirements.txt"
CAPABILITY_ENV = "ATTN_COMPARE_TORCH_CAPABILITY"

PREFILL_HEADS = 8
DECODE_HEADS = 32
DECODE_DIM = 128
DTYPE_BYTES = {"f32": 4, "bf16": 2, "f16": 2}
TOLERANCE = 1e-4       # small-shape check against the float64 reference
PEER_DIFF_WARN = 1e-3  # PyTorch vs ORT on the real shape


def log(msg):
    print(f"compare.py: {msg}", file=sys.stderr, flush=True)


def die(msg):
    log(msg)
    sys.exit(1)


# ---------------------------------------------------------------------------
# Cases

@dataclass(frozen=True)
class Case:
    kind: str            # "prefill" or "decode"
    threads: int
    d: int = DECODE_DIM  # head dim
    n: int = 0           # prefill: L = S = n
    causal: bool = False
    dtype: str = "f32"   # decode: K/V type
    s: int = 0           # decode: cache length

    @property
    def prefill(self):
        return self.kind == "prefill"

    @property
    def heads(self):
        return PREFILL_HEADS if self.prefill else DECODE_HEADS

    @property
    def attn_name(self):
        """attn's benchmark name, without Google Benchmark's /real_time."""
        if self.prefill:
            return f"prefill/attn/D{self.d}/N{self.n}/causal{int(self.causal)}/t{self.threads}"
        return f"decode/attn/{self.dtype}/S{self.s}/t{self.threads}"

    @property
    def label(self):
        if self.prefill:
            mask = " causal" if self.causal else ""
            return f"prefill D={self.d} N={self.n}{mask} t{self.threads}"
        return f"decode {self.dtype} S={self.s} t{self.threads}"

    @property
    def program(self):
        return "bench_prefill" if self.prefill else "bench_decode"

    @property
    def probe(self):
        """The machine limit the case is compared with (a benchmark name)."""
        what = "fma_peak" if self.prefill else "read_bw"
        return f"machine/{what}/t{self.threads}"

    @property
    def unit(self):
        return "GFLOP/s" if self.prefill else "GB/s"

    @property
    def work(self):
        """FLOPs (prefill) or bytes of K and V (decode) per call."""
        if self.prefill:
            pairs = self.n * (self.n + 1) / 2 if self.causal else self.n * self.n
            return 4.0 * pairs * self.d * self.heads
        return 2.0 * self.s * self.heads * self.d * DTYPE_BYTES[self.dtype]

    def rate(self, seconds):
        """GFLOP/s or GB/s of a call that took `seconds`."""
        return self.work / seconds * 1e-9 if seconds else None


def default_cases():
    p, d = "prefill", "decode"
    return [
        Case(p, 1, d=128, n=2048), Case(p, 2, d=128, n=2048),
        Case(p, 1, d=64, n=2048),
        Case(p, 1, d=128, n=8192), Case(p, 2, d=128, n=8192),
        Case(p, 1, d=128, n=8192, causal=True),
        Case(p, 1, d=128, n=512),
        Case(d, 1, dtype="f32", s=4096), Case(d, 2, dtype="f32", s=4096),
        Case(d, 1, dtype="f32", s=32768), Case(d, 2, dtype="f32", s=32768),
        Case(d, 1, dtype="bf16", s=32768),
        Case(d, 1, dtype="f16", s=32768),
    ]


def select_cases(args):
    cases = default_cases()
    if args.quick:
        cases = [c for c in cases if (c.n == 2048 if c.prefill else c.s == 4096)]
    if args.cases:
        pattern = re.compile(args.cases)
        cases = [c for c in cases if pattern.search(c.label) or pattern.search(c.attn_name)]
    return cases


# ---------------------------------------------------------------------------
# The virtual environment

def venv_python():
    return VENV / "bin" / "python"


def peers_import(python):
    probe = "import torch, onnxruntime, onnx, numpy; torch.zeros(1) + 1"
    return subprocess.run([str(python), "-c", probe], capture_output=True).returncode == 0


def pip(python, *args):
    subprocess.run([str(python), "-m", "pip", "install", "--disable-pip-version-check",
                    "--no-input", *args], check=True)


def ensure_venv():
    """Makes build/compare-venv with the pinned peers; returns its Python."""
    python = venv_python()
    wanted = REQUIREMENTS.read_text()
    if (python.exists() and VENV_STAMP.exists() and VENV_STAMP.read_text() == wanted
            and peers_import(python)):
        return python
    if not python.exists():
        log(f"making the virtual environment {VENV}")
        made = subprocess.run([sys.executable, "-m", "venv", str(VENV)])
        if made.returncode != 0 or not python.exists():
            die("python3 -m venv failed; on Debian/Ubuntu: apt-get install python3-venv")
    log(f"installing {REQUIREMENTS.name} into {VENV} (PyPI; about 4 GB the first time)")
    pip(python, "--no-deps", "--only-binary=:all:", "-r", str(REQUIREMENTS))
    if not peers_import(python):
        pin = next((line.strip() for line in wanted.splitlines()
                    if line.strip().startswith("torch==")), "torch")
        log(f"torch does not import from the trimmed install; installing {pin} "
            "with all its dependencies")
        pip(python, "--only-binary=:all:", pin)
        if not peers_import(python):
            die(f"torch/onnxruntime still do not import in {VENV}")
    VENV_STAMP.write_text(wanted)
    return python


def in_venv():
    return Path(sys.prefix).resolve() == VENV.resolve()


# ---------------------------------------------------------------------------
# attn: the Google Benchmark programs

TIME_UNITS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}


class AttnBench:
    def __init__(self, build_dir, min_time):
        self.bindir = build_dir / "bench"
        self.min_time = min_time
        # Without a warm-up, Google Benchmark times a case whose single call
        # takes longer than min_time (N = 8192) on its very first call.
        self.warmup = min(0.1, min_time)
        self.names = {}
        for program in ("bench_prefill", "bench_decode"):
            path = self.bindir / program
            if not os.access(path, os.X_OK):
                die(f"{path} is missing: build the benchmarks first "
                    "(tools/bench.sh --quick --no-plots builds build/bench)")
            listed = subprocess.run([str(path), "--benchmark_list_tests"], capture_output=True,
                                    text=True, check=True).stdout.split()
            self.names[program] = set(listed)
        # The programs' environment: no PyTorch settings.
        self.env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}

    def exact_name(self, program, base):
        """The registered name for `base` (Google Benchmark appends /real_time)."""
        for name in (base, base + "/real_time"):
            if name in self.names[program]:
                return name
        return None

    def run(self, case, tmpdir):
        """Runs the case and its probe once. Returns a dict of results."""
        name = self.exact_name(case.program, case.attn_name)
        probe = self.exact_name(case.program, case.probe)
        if name is None:
            return {"error": f"{case.program} has no benchmark {case.attn_name}"}
        wanted = [n for n in (probe, name) if n]
        out = Path(tmpdir) / "attn.json"
        cmd = [str(self.bindir / case.program),
               "--benchmark_filter=^(" + "|".join(re.escape(n) for n in wanted) + ")$",
               f"--benchmark_min_time={self.min_time}",
               f"--benchmark_min_warmup_time={self.warmup}",
               f"--benchmark_out={out}", "--benchmark_out_format=json"]
        done = subprocess.run(cmd, capture_output=True, text=True, env=self.env)
        if done.returncode != 0 or not out.exists():
            tail = (done.stdout + done.stderr).strip().splitlines()[-5:]
            return {"error": f"{case.program} failed ({done.returncode}): " + " | ".join(tail)}
        doc = json.loads(out.read_text())
        out.unlink()
        records = {b.get("run_name", b["name"]): b for b in doc.get("benchmarks", [])
                   if b.get("run_type", "iteration") == "iteration"}
        result = {"context": doc.get("context", {})}
        rec = records.get(name)
        if rec is None or rec.get("error_occurred"):
            result["error"] = f"no result for {name}"
            return result
        result["seconds"] = rec["real_time"] * TIME_UNITS[rec.get("time_unit", "ns")]
        result["iterations"] = rec.get("iterations")
        for counter in ("GFLOPS", "GBps", "max_err", "peak_pct"):
            if counter in rec:
                result[counter] = rec[counter]
        counter = "GFLOPS" if case.prefill else "GBps"
        if probe and probe in records and counter in records[probe]:
            result["probe"] = records[probe][counter]
        key = ("fma_peak_gflops_t" if case.prefill else "read_bw_gbps_t") + str(case.threads)
        try:
            result["probe_startup"] = float(result["context"][key])
        except (KeyError, ValueError):
            pass
        return result


# ---------------------------------------------------------------------------
# The peers (imported in the venv only)

def import_peers():
    global np, torch, ort, onnx, helper, TensorProto
    capability = os.environ.get(CAPABILITY_ENV)
    if capability:
        os.environ["ATEN_CPU_CAPABILITY"] = capability  # read when torch starts
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch
    from onnx import TensorProto, helper
    ort.set_default_logger_severity(3)


def call_seconds(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def time_calls(fn, min_time, settle=0.2, max_warmup=5):
    """Warm-up, then calls until the timed ones add up to min_time.

    Warm-up lasts until two calls in a row take the same time within
    `settle` (20 %), at most max_warmup calls; the second of those is the
    first timed call. (ORT's memory arena, for one, grows over the first two
    calls: its f16 cache path page-faults through 2 GB of fresh buffers in
    each, then runs 5-10x faster.) Returns (median seconds per call, number
    of timed calls)."""
    previous = call_seconds(fn)
    for _ in range(max_warmup):
        t = call_seconds(fn)
        settled = abs(t - previous) <= settle * max(t, previous)
        previous = t
        if settled:
            break
    times = [previous]
    while sum(times) < min_time:
        times.append(call_seconds(fn))
    return statistics.median(times), len(times)


# --- ONNX graphs ------------------------------------------------------------

def onnx_model(node, inputs, outputs):
    graph = helper.make_graph([node], "attention", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                    helper.make_opsetid("com.microsoft", 1)])
    return model.SerializeToString()


def tensor_info(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def mha_model(n, heads, d, causal):
    """MultiHeadAttention: q, k, v [1, n, heads*d] -> o [1, n, heads*d]."""
    hd = heads * d
    node = helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["o"],
                            domain="com.microsoft", num_heads=heads,
                            unidirectional=int(causal))
    ins = [tensor_info(x, TensorProto.FLOAT, [1, n, hd]) for x in "qkv"]
    return onnx_model(node, ins, [tensor_info("o", TensorProto.FLOAT, [1, n, hd])])


def gqa_model(n_new, past, heads, d, cache_elem, present=None):
    """GroupQueryAttention (causal) with fp32 q/k/v [1, n_new, heads*d], a
    BNSH past cache [1, heads, past, d] of cache_elem and the present cache
    [1, heads, present, d] (present = past when the buffer is shared)."""
    hd = heads * d
    present = past if present is None else present
    node = helper.make_node("GroupQueryAttention",
                            ["q", "k", "v", "past_k", "past_v", "seqlens_k", "total"],
                            ["o", "present_k", "present_v"], domain="com.microsoft",
                            num_heads=heads, kv_num_heads=heads)
    ins = ([tensor_info(x, TensorProto.FLOAT, [1, n_new, hd]) for x in "qkv"]
           + [tensor_info(x, cache_elem, [1, heads, past, d]) for x in ("past_k", "past_v")]
           + [tensor_info("seqlens_k", TensorProto.INT32, [1]),
              tensor_info("total", TensorProto.INT32, [])])
    outs = ([tensor_info("o", TensorProto.FLOAT, [1, n_new, hd])]
            + [tensor_info(x, cache_elem, [1, heads, present, d])
               for x in ("present_k", "present_v")])
    return onnx_model(node, ins, outs)


def ort_session(model, threads):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def ort_value(array):
    return ort.OrtValue.ortvalue_from_numpy(array)  # shares the array's memory on CPU


class OrtCall:
    """A session with every input and output bound; call() runs it once.
    `outputs` maps output names to preallocated arrays (or shared OrtValues)."""

    def __init__(self, model, threads, inputs, outputs):
        self.session = ort_session(model, threads)
        self.binding = self.session.io_binding()
        self.keep = []  # arrays whose memory the OrtValues use
        for name, value in inputs.items():
            self.binding.bind_ortvalue_input(name, self._value(value))
        for name, value in outputs.items():
            self.binding.bind_ortvalue_output(name, self._value(value))

    def _value(self, value):
        if isinstance(value, ort.OrtValue):
            return value
        self.keep.append(value)
        return ort_value(value)

    def __call__(self):
        self.session.run_with_iobinding(self.binding)


# --- inputs -----------------------------------------------------------------

def uniform(shape, seed, dtype=None):
    """Uniform in [-1, 1), fp32 (then cast to dtype), as a torch tensor."""
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(shape, generator=g, dtype=torch.float32).mul_(2).sub_(1)
    return t if dtype is None else t.to(dtype)


TORCH_DTYPES = {}


def torch_dtype(name):
    if not TORCH_DTYPES:
        TORCH_DTYPES.update(f32=torch.float32, bf16=torch.bfloat16, f16=torch.float16)
    return TORCH_DTYPES[name]


class Inputs:
    """The inputs of every shape used so far, kept for the later rounds."""

    def __init__(self):
        self.cache = {}

    def prefill(self, n, d, heads=PREFILL_HEADS):
        key = ("prefill", n, d, heads)
        if key not in self.cache:
            # [1, heads, n, d] for PyTorch; the same values as [1, n, heads*d]
            # (attn's [batch, seq, heads, dim]) for ORT.
            bhsd = [uniform((1, heads, n, d), 100 * n + 10 * d + i) for i in range(3)]
            bsh = [t.transpose(1, 2).reshape(1, n, heads * d).contiguous().numpy() for t in bhsd]
            self.cache[key] = {"torch": bhsd, "ort": bsh}
        return self.cache[key]

    def decode(self, s, dtype, heads=DECODE_HEADS, d=DECODE_DIM):
        key = ("decode", s, dtype, heads, d)
        if key not in self.cache:
            q = uniform((1, heads, 1, d), 7 + s)
            k = uniform((1, heads, s, d), 8 + s, torch_dtype(dtype))
            v = uniform((1, heads, s, d), 9 + s, torch_dtype(dtype))
            entry = {"q": q, "k": k, "v": v}
            if dtype != "bf16":  # NumPy has no bfloat16; ORT is not run on it
                entry["ort_k"], entry["ort_v"] = k.numpy(), v.numpy()  # shared memory
                entry["q_bsh"] = q.reshape(1, 1, heads * d).numpy()
                # The new token: K/V's last row, as [1, 1, heads*d] fp32.
                entry["k_new"] = k[:, :, -1].float().reshape(1, 1, heads * d).contiguous().numpy()
                entry["v_new"] = v[:, :, -1].float().reshape(1, 1, heads * d).contiguous().numpy()
            self.cache[key] = entry
        return self.cache[key]


# --- the callables timed per case ------------------------------------------
# Each returns (fn, output): fn() runs one call; output() gives its last
# result as a [1, heads, L, d] fp32 NumPy array, for the cross-check.

def torch_prefill(x, causal):
    q, k, v = x["torch"]
    last = {}

    def fn():
        last["o"] = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return fn, lambda: last["o"].numpy()


def torch_decode(x, native=False):
    q, k, v = x["q"], x["k"], x["v"]
    last = {}
    if k.dtype == torch.float32:
        def fn():
            last["o"] = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    elif native:
        def fn():
            last["o"] = torch.nn.functional.scaled_dot_product_attention(
                q.to(k.dtype), k, v).float()
    else:
        def fn():
            last["o"] = torch.nn.functional.scaled_dot_product_attention(q, k.float(), v.float())
    return fn, lambda: last["o"].numpy()


def bsh_to_bhsd(a, heads, d):
    n = a.shape[1]
    return a.reshape(1, n, heads, d).transpose(0, 2, 1, 3)


def ort_prefill_mha(x, n, d, causal, threads, heads=PREFILL_HEADS):
    q, k, v = x["ort"]
    o = np.empty_like(q)
    call = OrtCall(mha_model(n, heads, d, causal), threads, {"q": q, "k": k, "v": v}, {"o": o})
    return call, lambda: bsh_to_bhsd(o, heads, d)


def ort_prefill_gqa(x, n, d, threads, heads=PREFILL_HEADS):
    """Causal prompt through GroupQueryAttention: no past, n new tokens."""
    q, k, v = x["ort"]
    empty = np.zeros((1, heads, 0, d), np.float32)
    o = np.empty_like(q)
    present = [np.empty((1, heads, n, d), np.float32) for _ in range(2)]
    inputs = {"q": q, "k": k, "v": v, "past_k": empty, "past_v": np.zeros_like(empty),
              "seqlens_k": np.array([n - 1], np.int32), "total": np.array(n, np.int32)}
    call = OrtCall(gqa_model(n, 0, heads, d, TensorProto.FLOAT, present=n), threads, inputs,
                   {"o": o, "present_k": present[0], "present_v": present[1]})
    return call, lambda: bsh_to_bhsd(o, heads, d)


ORT_CACHE_TYPES = {"f32": "FLOAT", "f16": "FLOAT16", "bf16": "BFLOAT16"}


def ort_decode(x, s, dtype, threads, heads=DECODE_HEADS, d=DECODE_DIM):
    """GroupQueryAttention: S - 1 cached tokens + 1 new one, the cache buffer
    shared between past and present (bound to the same OrtValue)."""
    cache_k, cache_v = ort_value(x["ort_k"]), ort_value(x["ort_v"])
    o = np.empty((1, 1, heads * d), np.float32)
    inputs = {"q": x["q_bsh"], "k": x["k_new"], "v": x["v_new"],
              "past_k": cache_k, "past_v": cache_v,
              "seqlens_k": np.array([s - 1], np.int32), "total": np.array(s, np.int32)}
    elem = getattr(TensorProto, ORT_CACHE_TYPES[dtype])
    call = OrtCall(gqa_model(1, s, heads, d, elem), threads, inputs,
                   {"o": o, "present_k": cache_k, "present_v": cache_v})
    call.keep += [x["ort_k"], x["ort_v"]]
    return call, lambda: bsh_to_bhsd(o, heads, d)


# --- small-shape checks -----------------------------------------------------

def reference(q, k, v, causal):
    """float64 softmax(q k^T / sqrt(d)) v over [1, H, L, D] arrays; causal:
    query i sees keys j <= i + S - L (bottom-right, = top-left for L = S)."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1])
    if causal:
        L, S = scores.shape[-2:]
        scores = np.where(np.arange(S)[None, :] <= np.arange(L)[:, None] + S - L, scores, -np.inf)
    scores -= scores.max(-1, keepdims=True)
    p = np.exp(scores)
    return (p / p.sum(-1, keepdims=True)) @ v


def check_peers():
    """Runs every peer once on small shapes against the float64 reference.
    Returns {peer variant: None if it agrees, else the reason}."""
    verdict = {}

    def check(name, fn_output, ref):
        try:
            fn, output = fn_output()
            fn()
            err = float(np.abs(output() - ref).max())
            verdict[name] = None if err <= TOLERANCE else f"differs from the reference by {err:.2g}"
        except Exception as e:  # an op or type this ORT build lacks
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            verdict[name] = first[:160]

    n, d, heads = 64, 32, 4
    inputs = Inputs()
    x = inputs.prefill(n, d, heads)
    for causal in (False, True):
        ref = reference(*(t.numpy() for t in x["torch"]), causal)
        tag = "causal" if causal else "full"
        check(f"torch/prefill/{tag}", lambda: torch_prefill(x, causal), ref)
        check(f"ort/prefill/{tag}", lambda: ort_prefill_mha(x, n, d, causal, 1, heads), ref)
    check("ort-gqa/prefill/causal", lambda: ort_prefill_gqa(x, n, d, 1, heads),
          reference(*(t.numpy() for t in x["torch"]), True))

    s = 48
    for dtype in ("f32", "bf16", "f16"):
        y = inputs.decode(s, dtype, heads, d)
        ref = reference(y["q"].numpy(), y["k"].float().numpy(), y["v"].float().numpy(), False)
        check(f"torch/decode/{dtype}", lambda: torch_decode(y), ref)
        if dtype != "f32":
            # rounds q and the output to bf16/f16: a looser tolerance
            fn, output = torch_decode(y, native=True)
            fn()
            err = float(np.abs(output() - ref).max())
            verdict[f"torch-native/decode/{dtype}"] = (
                None if err <= 2e-2 else f"differs from the reference by {err:.2g}")
        if dtype == "bf16":
            verdict["ort/decode/bf16"] = ort_bf16_support(heads, d)
        else:
            check(f"ort/decode/{dtype}", lambda: ort_decode(y, s, dtype, 1, heads, d), ref)
    return verdict


def ort_bf16_support(heads, d):
    """None if ORT's CPU GroupQueryAttention takes a bfloat16 cache (then this
    script would need a bf16 path), else why not."""
    for q_elem in (TensorProto.FLOAT, TensorProto.BFLOAT16):
        node = helper.make_node("GroupQueryAttention",
                                ["q", "k", "v", "past_k", "past_v", "seqlens_k", "total"],
                                ["o", "present_k", "present_v"], domain="com.microsoft",
                                num_heads=heads, kv_num_heads=heads)
        hd = heads * d
        ins = ([tensor_info(x, q_elem, [1, 1, hd]) for x in "qkv"]
               + [tensor_info(x, TensorProto.BFLOAT16, [1, heads, 8, d])
                  for x in ("past_k", "past_v")]
               + [tensor_info("seqlens_k", TensorProto.INT32, [1]),
                  tensor_info("total", TensorProto.INT32, [])])
        outs = ([tensor_info("o", q_elem, [1, 1, hd])]
                + [tensor_info(x, TensorProto.BFLOAT16, None) for x in ("present_k", "present_v")])
        try:
            ort_session(onnx_model(node, ins, outs), 1)
        except Exception:
            continue
        return "ORT has a bfloat16 GroupQueryAttention kernel, not wired up here"
    return "no CPU kernel of GroupQueryAttention for a bfloat16 cache (NOT_IMPLEMENTED)"


# --- one case, one round ----------------------------------------------------

def time_peers(case, inputs, verdict, min_time):
    """Times PyTorch and ORT (and the variants) on the case. Returns a dict
    variant -> {"seconds", "calls"} or {"error"}, plus peer_max_diff."""
    torch.set_num_threads(case.threads)
    out = {}
    outputs = {}

    def run(variant, make):
        if verdict.get(check_key(case, variant)):
            out[variant] = {"error": verdict[check_key(case, variant)]}
            return
        try:
            fn, output = make()
            seconds, calls = time_calls(fn, min_time)
            out[variant] = {"seconds": seconds, "calls": calls}
            outputs[variant] = output()
        except Exception as e:
            out[variant] = {"error": str(e).strip().splitlines()[0][:160]}
        finally:
            fn = output = None  # drop the session (joins ORT's threads)

    with torch.inference_mode():
        if case.prefill:
            x = inputs.prefill(case.n, case.d)
            run("torch", lambda: torch_prefill(x, case.causal))
            run("ort", lambda: ort_prefill_mha(x, case.n, case.d, case.causal, case.threads))
            if case.causal:
                run("ort-gqa", lambda: ort_prefill_gqa(x, case.n, case.d, case.threads))
        else:
            x = inputs.decode(case.s, case.dtype)
            run("torch", lambda: torch_decode(x))
            if case.dtype != "f32":
                run("torch-native", lambda: torch_decode(x, native=True))
            if case.dtype == "bf16":
                out["ort"] = {"error": verdict.get("ort/decode/bf16") or "not wired up"}
            else:
                run("ort", lambda: ort_decode(x, case.s, case.dtype, case.threads))
    if "torch" in outputs:
        diffs = [float(np.abs(outputs[v] - outputs["torch"]).max())
                 for v in ("ort", "ort-gqa") if v in outputs]
        if diffs:
            out["peer_max_diff"] = max(diffs)
    return out


def check_key(case, variant):
    if case.prefill:
        return f"{variant}/prefill/{'causal' if case.causal else 'full'}"
    return f"{variant}/decode/{case.dtype}"


# ---------------------------------------------------------------------------
# Summary

PEERS = ("torch", "ort", "ort-gqa")  # variants that compute attn's result
VARIANT_NAMES = {"torch": "PyTorch", "ort": "ORT", "ort-gqa": "ORT-GQA",
                 "torch-native": "PyTorch native"}


def median_or_none(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarise(cases, records, probes):
    """Per case: medians over rounds, rates, ratio and share of the limit."""
    rows = []
    for case in cases:
        recs = records[case.label]
        row = {"case": case.label, "attn_name": case.attn_name, "unit": case.unit,
               "work_per_call": case.work, "threads": case.threads}
        attn_s = median_or_none([r["attn"].get("seconds") for r in recs])
        row["attn"] = {"seconds": attn_s, "rate": case.rate(attn_s),
                       "rounds": [r["attn"].get("seconds") for r in recs],
                       "max_err": max((r["attn"].get("max_err", 0) for r in recs), default=None)}
        errors = [r["attn"]["error"] for r in recs if "error" in r["attn"]]
        if errors:
            row["attn"]["error"] = errors[0]
        variants = sorted({v for r in recs for v in r["peers"]
                           if v != "peer_max_diff"})
        for v in variants:
            secs = [r["peers"].get(v, {}).get("seconds") for r in recs]
            s = median_or_none(secs)
            row[v] = {"seconds": s, "rate": case.rate(s), "rounds": secs}
            errs = [r["peers"][v]["error"] for r in recs if "error" in r["peers"].get(v, {})]
            if errs:
                row[v]["error"] = errs[0]
        diffs = [r["peers"].get("peer_max_diff") for r in recs]
        diffs = [d for d in diffs if d is not None]
        row["peer_max_diff"] = max(diffs) if diffs else None
        best = None
        for v in PEERS:
            rate = row.get(v, {}).get("rate")
            if rate and (best is None or rate > best[1]):
                best = (v, rate)
        row["best_peer"] = best[0] if best else None
        attn_rate = row["attn"]["rate"]
        row["attn_over_best_peer"] = attn_rate / best[1] if best and attn_rate else None
        limit = probes[probe_kind(case)].get(case.threads, {}).get("best")
        row["limit"] = limit
        row["attn_pct_of_limit"] = 100 * attn_rate / limit if limit and attn_rate else None
        rows.append(row)
    return rows


def probe_kind(case):
    return "fma_peak_gflops" if case.prefill else "read_bw_gbps"


def collect_probes(cases, records):
    """Best and minimum of each limit per thread count over every attn run."""
    probes = {"fma_peak_gflops": {}, "read_bw_gbps": {}}
    for case in cases:
        for r in records[case.label]:
            a = r["attn"]
            entry = probes[probe_kind(case)].setdefault(case.threads,
                                                        {"samples": [], "startup": []})
            if a.get("probe") is not None:
                entry["samples"].append(a["probe"])
            if a.get("probe_startup") is not None:
                entry["startup"].append(a["probe_startup"])
    for kind in probes.values():
        for entry in kind.values():
            every = entry["samples"] + entry["startup"]
            entry["best"] = max(every) if every else None
            entry["min"] = min(entry["samples"]) if entry["samples"] else None
    return probes


def fmt(x, digits=1):
    return "-" if x is None else f"{x:.{digits}f}"


def cpu_model():
    """/proc/cpuinfo's model name, with the vector ISA flags that matter here."""
    model, flags = "unknown CPU", []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown CPU":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                have = set(value.split())
                flags = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16")
                         if f in have]
    except OSError:
        pass
    return model + (f" [{' '.join(flags)}]" if flags else "")


def render(meta, rows, probes):
    lines = [f"attn vs PyTorch and ONNX Runtime, {meta['date']}",
             f"CPU: {meta['cpu']} ({os.cpu_count()} logical CPUs)",
             f"attn build: {meta['simd']}, {meta['build_dir']}",
             f"PyTorch {meta['torch']} (ATen CPU capability {meta['torch_capability']}"
             + (f", set by {CAPABILITY_ENV}" if meta["capability_env"] else "") + "), "
             f"ONNX Runtime {meta['onnxruntime']} (CPU), onnx {meta['onnx']}, "
             f"NumPy {meta['numpy']}",
             f"{meta['rounds']} round(s), cases shuffled in each; medians over rounds of the "
             f"median call (>= {meta['min_time']} s of calls per figure)"]
    for kind, title in (("fma_peak_gflops", "fp32 FMA peak, GFLOP/s"),
                        ("read_bw_gbps", "read bandwidth, GB/s")):
        parts = [f"t{t} best {fmt(e['best'])} / min {fmt(e['min'])} ({len(e['samples'])} runs)"
                 for t, e in sorted(probes[kind].items())]
        if parts:
            lines.append(f"probe {title}: " + "; ".join(parts))
    lines.append("")

    header = ["case", "unit", "attn", "PyTorch", "ORT", "attn / best peer", "attn % of peak"]
    table = []
    for row in rows:
        ratio = row["attn_over_best_peer"]
        best = VARIANT_NAMES.get(row["best_peer"], "")
        limit_name = "FMA peak" if row["unit"] == "GFLOP/s" else "read bw"
        pct = row["attn_pct_of_limit"]
        ort_cell = fmt(row.get("ort", {}).get("rate"))
        if ort_cell == "-" and row.get("ort-gqa", {}).get("rate"):
            ort_cell = fmt(row["ort-gqa"]["rate"]) + " (GQA)"  # MHA unidirectional failed
        table.append([row["case"], row["unit"], fmt(row["attn"]["rate"]),
                      fmt(row.get("torch", {}).get("rate")), ort_cell,
                      f"{ratio:.2f}x vs {best}" if ratio else "-",
                      f"{pct:.0f}% of {limit_name}" if pct else "-"])
    widths = [max(len(r[i]) for r in table + [header]) for i in range(len(header))]
    left = {0, 1}

    def line(cells):
        return " | ".join(c.ljust(w) if i in left else c.rjust(w)
                          for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    lines.append(line(header))
    lines.append("-+-".join("-" * w for w in widths))
    previous = None
    for row, cells in zip(rows, table):
        kind = row["unit"]
        if previous and kind != previous:
            lines.append("-+-".join("-" * w for w in widths))
        previous = kind
        lines.append(line(cells))

    lines += ["",
              "prefill: batch 1, 8 heads, L = S = N, fp32; GFLOP/s of useful work, 4*N*N*D per "
              "head (causal: 4*D*N(N+1)/2).",
              "decode: 1 query row, 32 heads, D = 128; GB/s of K+V read, 2*S*heads*D*sizeof(K/V).",
              "attn / best peer: attn's figure over the fastest peer computing the same result "
              "(> 1: attn is faster). % of peak: against the probe's best for the thread count.",
              "PyTorch: scaled_dot_product_attention; bf16/f16 decode upcasts K/V to fp32 "
              "inside each call. ORT: MultiHeadAttention (prefill; causal: unidirectional=1), "
              "GroupQueryAttention (decode; f16: fp32 query, float16 cache)."]
    notes = []
    for row in rows:
        if "ort-gqa" in row:
            g = row["ort-gqa"]
            notes.append(f"{row['case']}: ORT GroupQueryAttention causal prompt "
                         f"{fmt(g.get('rate'))} {row['unit']}"
                         + (f" ({g['error']})" if g.get("error") else ""))
        if "torch-native" in row:
            t = row["torch-native"]
            notes.append(f"{row['case']}: PyTorch native low-precision SDPA (q cast to the K/V "
                         f"type, not counted as a peer) {fmt(t.get('rate'))} {row['unit']}"
                         + (f" ({t['error']})" if t.get("error") else ""))
        for v in ("attn", "torch", "ort"):
            if row.get(v, {}).get("error"):
                notes.append(f"{row['case']}: {VARIANT_NAMES.get(v, v)}: {row[v]['error']}")
        diff = row.get("peer_max_diff")
        if diff is not None and diff > PEER_DIFF_WARN:
            notes.append(f"{row['case']}: PyTorch and ORT outputs differ by {diff:.2g}")
    if notes:
        lines.append("")
        lines += notes
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(description="attn beside PyTorch and ONNX Runtime "
                                "(see the module docstring)")
    p.add_argument("--build-dir", type=Path, default=ROOT / "build" / "bench",
                   help="the tools/bench.sh build to time attn from (default build/bench)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--quick", action="store_true", help="only the N=2048 and S=4096 cases")
    p.add_argument("--cases", metavar="REGEX",
                   help="only cases whose label (e.g. 'decode f32 S=4096 t1') or attn "
                        "benchmark name matches")
    p.add_argument("--min-time", type=float, default=0.3,
                   help="seconds of calls per figure and --benchmark_min_time (default 0.3)")
    p.add_argument("--seed", type=int, help="seed of the case order (default: random)")
    p.add_argument("--setup", action="store_true", help="only make / update the venv")
    return p.parse_args(argv)


def main(argv):
    args = parse_args(argv)
    if not in_venv():
        python = ensure_venv()
        if args.setup:
            log(f"ready: {python}")
            return 0
        os.execv(str(python), [str(python), str(Path(__file__).resolve()), *argv])
    if args.setup:
        return 0

    build_dir = args.build_dir.resolve()
    cases = select_cases(args)
    if not cases:
        die("no case matches")
    bench = AttnBench(build_dir, args.min_time)
    import_peers()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)

    log("checking the peers on small shapes")
    verdict = check_peers()
    for name, problem in sorted(verdict.items()):
        if problem:
            log(f"  {name}: {problem}")

    inputs = Inputs()
    records = {c.label: [] for c in cases}
    order_rng = random.Random(seed)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="attn-compare-") as tmpdir:
        for rnd in range(1, args.rounds + 1):
            order = list(cases)
            order_rng.shuffle(order)
            for i, case in enumerate(order, 1):
                a = bench.run(case, tmpdir)
                peers = time_peers(case, inputs, verdict, args.min_time)
                records[case.label].append({"round": rnd, "attn": a, "peers": peers})
                figures = [f"attn {fmt(case.rate(a.get('seconds')))}"] + [
                    f"{VARIANT_NAMES[v]} {fmt(case.rate(peers[v].get('seconds')))}"
                    for v in ("torch", "torch-native", "ort", "ort-gqa") if v in peers]
                log(f"round {rnd}/{args.rounds} [{i}/{len(order)}] {case.label}: "
                    + ", ".join(figures) + f" {case.unit}")
    elapsed = time.time() - started

    probes = collect_probes(cases, records)
    rows = summarise(cases, records, probes)
    context = next((r["attn"]["context"] for c in cases for r in records[c.label]
                    if r["attn"].get("context")), {})
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "simd": context.get("simd", "?") + (f" ({context['simd_lanes']} floats per packet)"
                                            if "simd_lanes" in context else ""),
        "build_dir": str(build_dir),
        "torch": torch.__version__,
        "torch_capability": torch.backends.cpu.get_cpu_capability(),
        "capability_env": os.environ.get(CAPABILITY_ENV),
        "onnxruntime": ort.__version__, "onnx": onnx.__version__, "numpy": np.__version__,
        "rounds": args.rounds, "min_time": args.min_time, "seed": seed,
        "quick": args.quick, "cases_regex": args.cases, "seconds": round(elapsed, 1),
    }
    text = render(meta, rows, probes)
    print(text, end="")

    results = build_dir / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "compare.txt").write_text(text)
    raw = {"meta": meta, "checks": verdict,
           "probes": {k: {str(t): e for t, e in v.items()} for k, v in probes.items()},
           "cases": rows,
           "rounds": {label: [{k: v for k, v in r.items() if k != "attn"}
                              | {"attn": {k: v for k, v in r["attn"].items() if k != "context"}}
                              for r in recs]
                      for label, recs in records.items()},
           "attn_context": context}
    (results / "compare.json").write_text(json.dumps(raw, indent=1) + "\n")
    log(f"done in {elapsed:.0f} s; {results / 'compare.txt'}, {results / 'compare.json'}")
    failed = any(r["attn"].get("error") for r in rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
