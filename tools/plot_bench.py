#!/usr/bin/env python3
"""Charts from attn's benchmark results (Google Benchmark JSON) as PNG files.

    python3 tools/plot_bench.py [--out DIR] [--machine TEXT] [--stat median|best] RESULTS...

RESULTS are JSON files written with --benchmark_out_format=json, or
directories holding them (tools/bench.sh writes build/bench/results/
{prefill,decode,mla,...}.json). Every chart is drawn only when its data is
there. tools/bench.sh runs this script after the summary when matplotlib is
installed (apt-get install python3-matplotlib, or pip install matplotlib).

What each chart reads. A benchmark's value is its "median" aggregate when
the run had repetitions, else the median of its iteration records; with
--stat best it is its best repetition instead (the largest rate, the
smallest time: on a machine shared with other work, what the code does when
it has the cores). The trailing "/real_time" of names is ignored. <t> is the
thread count.

  prefill.png   bench/bench_prefill.cpp
      names     prefill/{attn,naive}/D<d>/N<n>/causal{0,1}/t<t>
      counter   GFLOPS (useful FLOPs: only the unmasked half when causal)
      drawn     GFLOP/s against N for attn and the naive Eigen baseline, one
                panel per mask, at the head dim with the most N values
                (128), with the measured fp32 FMA peak per thread count as
                horizontal lines.

  decode.png    bench/bench_decode.cpp
      names     decode/attn/{f32,bf16,f16}/S<s>/t<t>
      counter   GBps (K and V bytes read per second)
      drawn     GB/s against the cache length S, one line per K/V type and
                thread count, with the measured read bandwidth per thread
                count as horizontal lines.

  mla.png       bench/bench_mla.cpp (DeepSeek multi-head latent attention)
      names     mla/attention/<model>/absorbed/S<s>/t<t>
                    one decode step's attention over the latent cache
                mla/attention/<model>/mha/S<s>/t<t>
                    the same step as MHA over the expanded per-head K/V cache
                mla/decode/<model>/{absorbed,naive}/S<s>/t<t>   (optional)
                    the whole layer for one new token
      counters  S (cache length; else the S<s> part of the name),
                cache_bytes (the latent cache of S tokens),
                mha_cache_bytes (the expanded K/V cache of S tokens),
                ms_per_token (mla/decode only; else the record's real time)
      drawn     one row per <model>: cache MiB against S (latent vs
                expanded), and step time in ms against S (attention absorbed
                vs MHA, plus the whole layer when present).

The machine limits come from the JSON context (fma_peak_gflops_t<t>,
read_bw_gbps_t<t>, measured at each program's start) and the machine/...
benchmarks (machine/fma_peak/t<t> GFLOPS, machine/read_bw/t<t> GBps): the
best of all of them, as bench_summary reports them.
"""

import argparse
import json
import math
import os
import re
import statistics
import sys

SUFFIXES = ("/real_time", "/manual_time")


def base_name(name):
    for s in SUFFIXES:
        if name.endswith(s):
            return name[: -len(s)]
    return name


def time_ms(record):
    t = record.get("real_time", float("nan"))
    unit = record.get("time_unit", "ns")
    return t * {"s": 1e3, "ms": 1.0, "us": 1e-3, "ns": 1e-6}.get(unit, 1e-6)


# Lower is better for these values; higher for every other counter.
TIMES = ("ms", "ms_per_token", "real_time", "cpu_time")


def numbers(record):
    """The numeric fields of a record, with its real time in ms as "ms"."""
    out = {"ms": time_ms(record)}
    for key, x in record.items():
        if isinstance(x, (int, float)) and not isinstance(x, bool) and not math.isnan(x):
            out[key] = x
    return out


class Results:
    """Benchmarks of one or more JSON files (several runs of the same suite
    pool their repetitions): by run name, the median of each counter over the
    repetitions, or with stat="best" its best repetition (the largest rate,
    the smallest time); the largest value of each counter (for the machine
    limits); and the files' contexts."""

    def __init__(self, stat="median"):
        self.stat = stat
        self.values = {}  # run name -> {counter: median or best, "ms": real time in ms}
        self.best = {}  # run name -> {counter: max over repetitions}
        self.context = {}  # of the first file
        self.contexts = []  # of every file
        self.files = []
        self._reps = {}  # run name -> [numbers of each repetition]

    def load(self, path):
        with open(path) as f:
            text = f.read()
        if not text.strip():
            return
        doc = json.loads(text)  # Google Benchmark writes NaN / Infinity, which json accepts
        self.files.append(path)
        self.contexts.append(doc.get("context", {}))
        for k, v in self.contexts[-1].items():
            self.context.setdefault(k, v)
        medians, iterations = {}, {}
        for b in doc.get("benchmarks", []):
            if b.get("error_occurred"):
                continue
            run = base_name(b.get("run_name", b.get("name", "")))
            if b.get("run_type") == "aggregate":
                if b.get("aggregate_name") == "median":
                    medians[run] = b
            else:
                iterations.setdefault(run, []).append(b)
        # The repetitions themselves; a file written with aggregates only
        # contributes its medians.
        for run in set(medians) | set(iterations):
            src = iterations.get(run) or [medians[run]]
            self._reps.setdefault(run, []).extend(numbers(r) for r in src)
        self._summarise()

    def _summarise(self):
        for run, reps in self._reps.items():
            keys = set().union(*reps)
            vals, best = {}, {}
            for key in keys:
                xs = [r[key] for r in reps if key in r]
                if self.stat == "best":
                    vals[key] = min(xs) if key in TIMES else max(xs)
                else:
                    vals[key] = statistics.median(xs)
                best[key] = max(xs)
            self.values[run] = vals
            self.best[run] = best

    def matching(self, pattern):
        """(match, values) for every run whose name fully matches the regex."""
        rx = re.compile(pattern)
        out = []
        for name, vals in self.values.items():
            m = rx.fullmatch(name)
            if m:
                out.append((m, vals))
        return out

    def limit(self, context_key, bench_prefix, counter, threads):
        """Best of the start-up measurement and the machine/... benchmark."""
        candidates = []
        for context in self.contexts:
            try:
                candidates.append(float(context[f"{context_key}{threads}"]))
            except (KeyError, ValueError):
                pass
        best = self.best.get(f"{bench_prefix}{threads}", {})
        if counter in best:
            candidates.append(best[counter])
        candidates = [c for c in candidates if c > 0 and math.isfinite(c)]
        return max(candidates) if candidates else None


def machine_text(results, override):
    if override:
        return override
    c = results.context
    parts = []
    if c.get("num_cpus"):
        parts.append(f"{c['num_cpus']} CPUs")
    if c.get("simd"):
        parts.append(str(c["simd"]))
    date = str(c.get("date", ""))[:16].replace("T", " ")
    if date:
        parts.append(f"run {date}")
    return ", ".join(parts)


def log2_axis(ax, xs):
    xs = sorted(set(xs))
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs)
    ax.set_xticklabels([f"{x // 1024}k" if x >= 1024 and x % 1024 == 0 else str(x) for x in xs])
    ax.minorticks_off()


THREAD_STYLE = {1: "-", 2: "--", 4: ":", 8: "-."}
THREAD_MARKER = {1: "o", 2: "s", 4: "^", 8: "D"}


def thread_label(t):
    return f"{t} thread" + ("s" if t != 1 else "")


def plot_prefill(plt, results, out, machine):
    rows = results.matching(r"prefill/(attn|naive)/D(\d+)/N(\d+)/causal([01])/t(\d+)")
    if not rows:
        return None
    # The head dim with the most N values.
    by_dim = {}
    for m, _ in rows:
        by_dim.setdefault(int(m.group(2)), set()).add(int(m.group(3)))
    dim = max(by_dim, key=lambda d: (len(by_dim[d]), d))
    series = {}  # (impl, causal, threads) -> [(N, GFLOPS)]
    for m, vals in rows:
        if int(m.group(2)) != dim or "GFLOPS" not in vals:
            continue
        key = (m.group(1), int(m.group(4)), int(m.group(5)))
        series.setdefault(key, []).append((int(m.group(3)), vals["GFLOPS"]))
    threads = sorted({k[2] for k in series})
    masks = sorted({k[1] for k in series})
    peaks = {t: results.limit("fma_peak_gflops_t", "machine/fma_peak/t", "GFLOPS", t)
             for t in threads}

    fig, axes = plt.subplots(1, len(masks), figsize=(6.2 * len(masks), 4.9), sharey=True,
                             squeeze=False)
    colors = {"attn": "tab:blue", "naive": "tab:gray"}
    names = {"attn": "attn", "naive": "naive Eigen (GEMM + row softmax)"}
    top = 0.0
    for ax, causal in zip(axes[0], masks):
        for impl in ("attn", "naive"):
            for t in threads:
                pts = sorted(series.get((impl, causal, t), []))
                if not pts:
                    continue
                xs, ys = zip(*pts)
                top = max(top, max(ys))
                ax.plot(xs, ys, THREAD_STYLE.get(t, "-"), color=colors[impl],
                        marker=THREAD_MARKER.get(t, "o"), markersize=4,
                        label=f"{names[impl]}, {thread_label(t)}")
        for t in threads:
            if peaks[t]:
                top = max(top, peaks[t])
                ax.axhline(peaks[t], color="tab:red", linestyle=THREAD_STYLE.get(t, "-"),
                           linewidth=1, alpha=0.7)
                ax.annotate(f"FMA peak, {thread_label(t)}: {peaks[t]:.0f}",
                            xy=(0.99, peaks[t]), xycoords=("axes fraction", "data"),
                            xytext=(-2, 3), textcoords="offset points", fontsize=8,
                            color="tab:red", ha="right")
        log2_axis(ax, [n for k, pts in series.items() if k[1] == causal for n, _ in pts])
        ax.set_xlabel("N (L = S = N)")
        ax.set_title("causal (bottom-right), useful FLOPs" if causal else "full (no mask)")
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("GFLOP/s")
    axes[0][0].set_ylim(0, top * 1.12)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8,
               frameon=False)
    fig.suptitle(f"Prefill: fp32, batch 1, 8 heads, D = {dim}    ({machine})", fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    path = os.path.join(out, "prefill.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_decode(plt, results, out, machine):
    rows = results.matching(r"decode/attn/(\w+)/S(\d+)/t(\d+)")
    if not rows:
        return None
    series = {}
    for m, vals in rows:
        if "GBps" in vals:
            series.setdefault((m.group(1), int(m.group(3))), []).append(
                (int(m.group(2)), vals["GBps"]))
    threads = sorted({k[1] for k in series})
    bws = {t: results.limit("read_bw_gbps_t", "machine/read_bw/t", "GBps", t) for t in threads}
    fig, ax = plt.subplots(figsize=(7.5, 5.0))
    colors = {"f32": "tab:blue", "bf16": "tab:orange", "f16": "tab:green"}
    order = ["f32", "bf16", "f16"]
    dtypes = sorted({k[0] for k in series}, key=lambda d: order.index(d) if d in order else 9)
    top = 0.0
    for d in dtypes:
        for t in threads:
            pts = sorted(series.get((d, t), []))
            if not pts:
                continue
            xs, ys = zip(*pts)
            top = max(top, max(ys))
            ax.plot(xs, ys, THREAD_STYLE.get(t, "-"), color=colors.get(d),
                    marker=THREAD_MARKER.get(t, "o"), markersize=4,
                    label=f"{d} K/V, {thread_label(t)}")
    for t in threads:
        if bws[t]:
            top = max(top, bws[t])
            ax.axhline(bws[t], color="tab:red", linestyle=THREAD_STYLE.get(t, "-"), linewidth=1,
                       alpha=0.7)
            ax.annotate(f"read bandwidth, {thread_label(t)}: {bws[t]:.0f} GB/s",
                        xy=(0.99, bws[t]), xycoords=("axes fraction", "data"), xytext=(-2, 3),
                        textcoords="offset points", fontsize=8, color="tab:red", ha="right")
    log2_axis(ax, [s for pts in series.values() for s, _ in pts])
    ax.set_ylim(0, top * 1.12)
    ax.set_xlabel("cache length S (tokens)")
    ax.set_ylabel("GB/s of K and V read")
    ax.grid(True, alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    ax.set_title(f"Decode: 1 query, 32 heads, D = 128, fp32 accumulation\n({machine})",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.13, 1, 1))
    path = os.path.join(out, "decode.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_mla(plt, results, out, machine):
    rows = results.matching(r"mla/(attention|decode)/([^/]+)/([^/]+)/S(\d+)/t(\d+)")
    if not rows:
        return None
    models = []
    caches = {}  # model -> {S: (latent bytes, mha bytes)}
    times = {}  # model -> {(kind, impl, threads): [(S, ms)]}
    for m, vals in rows:
        kind, model, impl = m.group(1), m.group(2), m.group(3)
        S = int(vals.get("S", m.group(4)))
        t = int(m.group(5))
        if model not in models:
            models.append(model)
        if "cache_bytes" in vals or "mha_cache_bytes" in vals:
            caches.setdefault(model, {})[S] = (vals.get("cache_bytes"), vals.get("mha_cache_bytes"))
        ms = vals.get("ms_per_token", vals["ms"]) if kind == "decode" else vals["ms"]
        times.setdefault(model, {}).setdefault((kind, impl, t), []).append((S, ms))
    fig, axes = plt.subplots(len(models), 2, figsize=(12, 4.2 * len(models)), squeeze=False)
    labels = {
        ("attention", "absorbed"): ("MLA attention, absorbed (latent cache)", "tab:blue"),
        ("attention", "mha"): ("MHA attention over the expanded cache", "tab:gray"),
        ("decode", "absorbed"): ("whole MLA layer, absorbed", "tab:purple"),
        ("decode", "naive"): ("whole MLA layer, naive (expands K/V)", "tab:brown"),
    }
    for row, model in enumerate(models):
        ax = axes[row][0]
        pts = sorted(caches.get(model, {}).items())
        if pts:
            xs = [s for s, _ in pts]
            for idx, (label, color) in enumerate(
                    [("MLA latent cache [c_kv | k_pe]", "tab:blue"),
                     ("MHA cache of per-head K and V", "tab:gray")]):
                ys = [b[idx] / 2**20 for _, b in pts if b[idx]]
                if len(ys) == len(xs):
                    ax.plot(xs, ys, "-o", color=color, markersize=4, label=label)
            log2_axis(ax, xs)
            ax.set_yscale("log")
            ax.legend(fontsize=8)
        ax.set_xlabel("cache length S (tokens)")
        ax.set_ylabel("KV cache, MiB (one layer)")
        ratio = ""
        if pts and pts[-1][1][0] and pts[-1][1][1]:
            ratio = f" (the latent one is {pts[-1][1][1] / pts[-1][1][0]:.1f}x smaller)"
        ax.set_title(f"{model}: cache size{ratio}", fontsize=10)
        ax.grid(True, alpha=0.3, which="both")

        ax = axes[row][1]
        allx = []
        for (kind, impl, t), pts in sorted(times.get(model, {}).items()):
            pts = sorted(pts)
            xs, ys = zip(*pts)
            allx += xs
            label, color = labels.get((kind, impl), (f"{kind} {impl}", None))
            ax.plot(xs, ys, THREAD_STYLE.get(t, "-"), color=color, marker=THREAD_MARKER.get(t, "o"),
                    markersize=4,
                    label=f"{label}, {thread_label(t)}")
        if allx:
            log2_axis(ax, allx)
            ax.set_yscale("log")
            ax.legend(fontsize=7)
        ax.set_xlabel("cache length S (tokens)")
        ax.set_ylabel("ms per decode step")
        ax.set_title(f"{model}: one decode step", fontsize=10)
        ax.grid(True, alpha=0.3, which="both")
    fig.suptitle(f"DeepSeek MLA vs MHA, bf16 caches    ({machine})", fontsize=10)
    fig.tight_layout()
    path = os.path.join(out, "mla.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", help="JSON files or directories holding them")
    p.add_argument("--out", default=None,
                   help="directory for the PNGs (default: <first results dir>/plots)")
    p.add_argument("--machine", default=None,
                   help="machine description in the titles (default: from the JSON context)")
    p.add_argument("--stat", choices=("median", "best"), default="median",
                   help="per benchmark: the median over repetitions (default, as bench_summary) "
                        "or the best repetition (on a shared machine, what the code can do)")
    args = p.parse_args(argv)

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot_bench.py: matplotlib is not installed: apt-get install python3-matplotlib "
              "(Debian/Ubuntu) or python3 -m pip install matplotlib", file=sys.stderr)
        return 2

    files = []
    for r in args.results:
        if os.path.isdir(r):
            files += sorted(os.path.join(r, f) for f in os.listdir(r) if f.endswith(".json"))
        else:
            files.append(r)
    results = Results(args.stat)
    for f in files:
        try:
            results.load(f)
        except (OSError, ValueError) as e:
            print(f"plot_bench.py: {f}: {e} (skipped)", file=sys.stderr)
    if not results.values:
        print("plot_bench.py: no benchmark results found", file=sys.stderr)
        return 1
    out = args.out or os.path.join(
        args.results[0] if os.path.isdir(args.results[0]) else os.path.dirname(args.results[0]),
        "plots")
    os.makedirs(out, exist_ok=True)
    machine = machine_text(results, args.machine)
    made = [path for path in (plot_prefill(plt, results, out, machine),
                              plot_decode(plt, results, out, machine),
                              plot_mla(plt, results, out, machine)) if path]
    if not made:
        print("plot_bench.py: none of the results has a chart (prefill, decode, mla)",
              file=sys.stderr)
        return 1
    for path in made:
        print(f"plot_bench.py: wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
