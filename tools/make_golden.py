#!/usr/bin/env python3
"""tools/make_golden.py: golden files written by PyTorch for attn's C++ tests.

The C++ tests (tests/test_sdpa_golden.cpp, read through tests/golden.hpp)
check attn against PyTorch's semantics without needing Python at test time:
this script is run by hand when a case is added or changed, and its output in
tests/data/*.golden is kept in the repository (about 310 KiB in all).

Install (PyPI only; no CPU-only torch wheel is published on PyPI for Linux
x86_64, so the default wheel brings the CUDA libraries along although only the
CPU is used: about 5.4 GiB installed, ~1 minute to install on the project
machine):

    python3 -m venv /tmp/golden-venv
    /tmp/golden-venv/bin/pip install torch numpy
    /tmp/golden-venv/bin/python tools/make_golden.py          # writes tests/data/
    /tmp/golden-venv/bin/python tools/make_golden.py --check  # compare, write nothing

Generated with torch 2.15.0 (needs >= 2.5 for enable_gqa). Determinism: every
case draws its inputs from its own torch.Generator seeded with a fixed number,
torch runs on one thread with deterministic algorithms, everything is float32,
and the files hold no time stamps, so a second run writes identical bytes
(--check verifies exactly that).

File format (one case per file, "attn-golden 1")
------------------------------------------------
A text header of '\n'-terminated ASCII lines, then raw data:

    attn-golden 1
    meta <key> <value...>                 zero or more; value = rest of line
    array <name> <dtype> <rank> <d0> ... <d(rank-1)>   one per array
    end
    <data of every array, in header order, row-major (C order),
     little-endian, no padding or alignment between arrays>

dtype is f32 (IEEE float32, 4 bytes) or u8 (one byte; bool masks as 0/1).
A rank-0 array has no dims and holds one element. The file size must equal
header + sum of the array sizes exactly. Every file has meta "case" (its name),
"op" (sdpa or mha), "torch" (version) and "layout"; mask conventions are spelled
out in meta "*_convention" lines, because SDPA's bool attn_mask (True = may
attend) and nn.MultiheadAttention's bool masks (True = NOT allowed / padding)
have opposite polarity.
"""

import argparse
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

MAGIC = "attn-golden 1"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(ROOT, "tests", "data")

SDPA_MASK_CONVENTION = "bool: true = may attend (F.scaled_dot_product_attention); float: added to the scaled scores"
MHA_KPM_CONVENTION = "bool [B, S]: true = padding = key ignored (nn.MultiheadAttention; opposite of SDPA's bool attn_mask)"
MHA_ATTN_MASK_CONVENTION = "bool [L, S]: true = NOT allowed to attend (nn.MultiheadAttention; opposite of SDPA's bool attn_mask)"


def encode(case, meta, arrays):
    """The bytes of one golden file. meta: list of (key, value); arrays: list
    of (name, np.ndarray float32 or bool)."""
    lines = [MAGIC, f"meta case {case}"]
    for k, v in meta:
        v = str(v)
        assert " " not in k and "\n" not in v, (k, v)
        lines.append(f"meta {k} {v}")
    blobs = []
    for name, a in arrays:
        a = np.ascontiguousarray(a)
        if a.dtype == np.bool_:
            dt, blob = "u8", a.astype(np.uint8).tobytes()
        elif a.dtype == np.float32:
            dt, blob = "f32", a.astype("<f4").tobytes()
        else:
            raise TypeError(f"{case}/{name}: unsupported dtype {a.dtype}")
        lines.append(" ".join(["array", name, dt, str(a.ndim)] + [str(d) for d in a.shape]))
        blobs.append(blob)
    lines.append("end")
    return ("\n".join(lines) + "\n").encode("ascii") + b"".join(blobs)


def np32(t):
    return t.detach().contiguous().numpy().astype(np.float32, copy=False)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def randn(g, *shape):
    return torch.randn(*shape, generator=g, dtype=torch.float32)


def ensure_rows_nonempty(mask, g):
    """Every query row of a bool mask (True = attend) keeps at least one key."""
    S = mask.shape[-1]
    flat = mask.reshape(-1, S)
    for r in range(flat.shape[0]):
        if not flat[r].any():
            flat[r, int(torch.randint(S, (1,), generator=g))] = True
    return flat.reshape(mask.shape)


# ---------------------------------------------------------------------------
# fp64 reference (only for the report printed by this script: how far is
# torch's own fp32 output from the exact answer on the same inputs)


def sdpa_ref64(q, k, v, mask, is_causal, scale, gqa):
    q, k, v = q.double(), k.double(), v.double()
    Hq, Hkv = q.shape[1], k.shape[1]
    if gqa and Hq != Hkv:
        k = k.repeat_interleave(Hq // Hkv, dim=1)
        v = v.repeat_interleave(Hq // Hkv, dim=1)
    L, S = q.shape[2], k.shape[2]
    s = (q @ k.transpose(-1, -2)) * (scale if scale is not None else 1 / math.sqrt(q.shape[-1]))
    if is_causal:
        s = s.masked_fill(~torch.ones(L, S, dtype=torch.bool).tril(), -math.inf)
    if mask is not None:
        s = s.masked_fill(~mask, -math.inf) if mask.dtype == torch.bool else s + mask.double()
    m = s.amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    p = torch.exp(s - m)
    den = p.sum(-1, keepdim=True)
    p = torch.where(den > 0, p / den.clamp_min(1e-300), torch.zeros_like(p))
    return p @ v  # fully masked rows: 0


# ---------------------------------------------------------------------------
# (a) F.scaled_dot_product_attention, torch layout [B, H, L, E]


def sdpa_case(name, seed, B, Hq, Hkv, L, S, E, Ev=None, scale=None, is_causal=False,
              mask=None, gqa=False, note=None):
    """mask: None, or a function (g, B, Hq, L, S) -> tensor (bool or float)."""
    Ev = Ev or E
    g = gen(seed)
    q = randn(g, B, Hq, L, E)
    k = randn(g, B, Hkv, S, E)
    v = randn(g, B, Hkv, S, Ev)
    m = mask(g, B, Hq, L, S) if mask is not None else None
    kw = {}
    if scale is not None:
        kw["scale"] = scale
    if gqa:
        kw["enable_gqa"] = True
    with torch.no_grad():
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=is_causal, **kw)
        ref = sdpa_ref64(q, k, v, m, is_causal, scale, gqa)
    meta = [("op", "sdpa"), ("torch", torch.__version__),
            ("layout", "q [B, Hq, L, E], k [B, Hkv, S, E], v [B, Hkv, S, Ev], out [B, Hq, L, Ev] (torch SDPA layout)"),
            ("is_causal", int(is_causal)),
            ("causal_alignment", "top_left (torch is_causal: query i sees keys j <= i)" if is_causal else "none"),
            ("scale", repr(float(scale)) if scale is not None else "default"),
            ("enable_gqa", int(gqa))]
    arrays = [("q", np32(q)), ("k", np32(k)), ("v", np32(v))]
    if m is not None:
        meta.append(("attn_mask_dtype", "bool" if m.dtype == torch.bool else "float"))
        meta.append(("attn_mask_convention", SDPA_MASK_CONVENTION))
        arrays.append(("attn_mask", m.numpy() if m.dtype == torch.bool else np32(m)))
    if note:
        meta.append(("note", note))
    arrays.append(("out", np32(out)))
    stats = {"torch_vs_fp64": float((out.double() - ref).abs().nan_to_num(math.inf).max()),
             "max_abs_v": float(v.abs().max()),
             "nan_in_out": bool(torch.isnan(out).any())}
    return name, meta, arrays, stats


def bool_mask(shape_fn, p=0.7, fully_masked=()):
    """Random bool mask (True = attend, probability p) of shape
    shape_fn(B, Hq, L, S); each row keeps one key except the (index tuples)
    rows listed in fully_masked, which are set all False."""
    def make(g, B, Hq, L, S):
        m = torch.rand(*shape_fn(B, Hq, L, S), generator=g) < p
        m = ensure_rows_nonempty(m, g)
        for idx in fully_masked:
            m[idx] = False
        return m
    return make


def float_mask(shape_fn, p_inf=0.2):
    """Additive mask N(0, 2^2) with entries -inf with probability p_inf; every
    row keeps at least one finite entry."""
    def make(g, B, Hq, L, S):
        shape = shape_fn(B, Hq, L, S)
        vals = 2.0 * torch.randn(*shape, generator=g)
        keep = ensure_rows_nonempty(torch.rand(*shape, generator=g) >= p_inf, g)
        return torch.where(keep, vals, torch.full_like(vals, -math.inf))
    return make


def sdpa_cases():
    LS = lambda B, H, L, S: (L, S)           # noqa: E731
    B1LS = lambda B, H, L, S: (B, 1, L, S)   # noqa: E731
    HLS = lambda B, H, L, S: (H, L, S)       # noqa: E731
    # Notes on sizes: attn runs its split-KV kernel when L * (Hq / Hkv) <= 32
    # and its tiled (flash) kernel otherwise; the *_long cases cover the
    # second, the short ones the first.
    return [
        sdpa_case("sdpa_plain", 101, B=2, Hq=3, Hkv=3, L=5, S=7, E=8),
        sdpa_case("sdpa_plain_long", 102, B=1, Hq=2, Hkv=2, L=48, S=80, E=16),
        sdpa_case("sdpa_scale", 103, B=2, Hq=2, Hkv=2, L=6, S=9, E=8, scale=0.3),
        sdpa_case("sdpa_causal_square", 104, B=1, Hq=2, Hkv=2, L=40, S=40, E=16, is_causal=True),
        sdpa_case("sdpa_causal_l_lt_s", 105, B=2, Hq=2, Hkv=2, L=6, S=11, E=8, is_causal=True,
                  note="L < S: torch's is_causal is top-left (query i sees keys j <= i), not bottom-right"),
        sdpa_case("sdpa_causal_l_lt_s_long", 106, B=1, Hq=2, Hkv=2, L=36, S=70, E=8, is_causal=True,
                  note="L < S: top-left"),
        sdpa_case("sdpa_causal_l_gt_s", 107, B=1, Hq=2, Hkv=2, L=9, S=5, E=8, is_causal=True,
                  note="L > S: top-left; rows i >= S - 1 see every key"),
        sdpa_case("sdpa_bool_mask_ls", 108, B=2, Hq=2, Hkv=2, L=6, S=10, E=8, mask=bool_mask(LS),
                  note="attn_mask [L, S] broadcast over batch and heads"),
        sdpa_case("sdpa_bool_mask_b1ls", 109, B=2, Hq=3, Hkv=3, L=40, S=48, E=8, mask=bool_mask(B1LS),
                  note="attn_mask [B, 1, L, S] broadcast over heads"),
        sdpa_case("sdpa_float_mask", 110, B=2, Hq=2, Hkv=2, L=36, S=20, E=8, mask=float_mask(HLS),
                  note="additive attn_mask [H, L, S] (broadcast as [1, H, L, S]) with some -inf"),
        sdpa_case("sdpa_float_mask_short", 111, B=2, Hq=2, Hkv=2, L=5, S=9, E=8, mask=float_mask(LS),
                  note="additive attn_mask [L, S] with some -inf"),
        sdpa_case("sdpa_gqa", 112, B=2, Hq=8, Hkv=2, L=5, S=9, E=8, gqa=True,
                  note="enable_gqa: query head h reads kv head h // (Hq // Hkv)"),
        sdpa_case("sdpa_gqa_long", 113, B=1, Hq=8, Hkv=2, L=12, S=40, E=16, gqa=True),
        sdpa_case("sdpa_decode_mqa", 114, B=1, Hq=4, Hkv=1, L=1, S=600, E=8, gqa=True,
                  note="one query against 600 keys, Hkv = 1 (MQA)"),
        sdpa_case("sdpa_fully_masked_row", 115, B=2, Hq=2, Hkv=2, L=6, S=8, E=8,
                  mask=bool_mask(B1LS, fully_masked=[(1, 0, 3)]),
                  note="bool attn_mask [B, 1, L, S] with row (b=1, l=3) all False; torch's output for it is recorded as is"),
        sdpa_case("sdpa_fully_masked_row_long", 116, B=1, Hq=2, Hkv=2, L=34, S=16, E=8,
                  mask=bool_mask(LS, fully_masked=[(0,), (17,), (33,)]),
                  note="bool attn_mask [L, S] with rows 0, 17, 33 all False"),
        sdpa_case("sdpa_dqk_ne_dv", 117, B=2, Hq=2, Hkv=2, L=5, S=7, E=12, Ev=20),
        sdpa_case("sdpa_dqk_ne_dv_long", 118, B=1, Hq=2, Hkv=2, L=40, S=24, E=12, Ev=20,
                  is_causal=True),
    ]


# ---------------------------------------------------------------------------
# (b) nn.MultiheadAttention(batch_first=True)


def mha_case(name, seed, E, H, B, L, S, bias=True, kdim=None, vdim=None, self_attn=True,
             kpm=None, causal=False, need_weights=False, average=True, note=None, extra=None):
    g = gen(seed)
    torch.manual_seed(seed)  # the module's own initialisation uses the global generator
    mha = torch.nn.MultiheadAttention(E, H, bias=bias, kdim=kdim, vdim=vdim, batch_first=True)
    # Re-draw every parameter from g (the default init zeroes the biases,
    # which would hide a missing bias).
    with torch.no_grad():
        for _, p in sorted(mha.named_parameters()):
            p.copy_(0.3 * randn(g, *p.shape))
    mha.eval()
    if self_attn:
        S = L
        x = randn(g, B, L, E)
        query = key = value = x
    else:
        query = randn(g, B, L, E)
        key = randn(g, B, S, kdim or E)
        value = randn(g, B, S, vdim or E)
    kp = kpm(g, B, S) if kpm is not None else None
    am = torch.ones(L, S, dtype=torch.bool).triu(1) if causal else None
    with torch.no_grad():
        out, w = mha(query, key, value, key_padding_mask=kp, attn_mask=am,
                     need_weights=need_weights, average_attn_weights=average)
    meta = [("op", "mha"), ("torch", torch.__version__),
            ("layout", "batch_first: query [B, L, E], key [B, S, kdim], value [B, S, vdim], out [B, L, E]"),
            ("embed_dim", E), ("num_heads", H), ("head_dim", E // H), ("bias", int(bias)),
            ("kdim", kdim or E), ("vdim", vdim or E), ("self_attention", int(self_attn)),
            ("need_weights", int(need_weights)), ("average_attn_weights", int(average)),
            ("weights_shape", ("[B, L, S] averaged over heads" if average else "[B, H, L, S] per head")
             if need_weights else "none"),
            ("projections", "q = query W_q^T + b_q etc.; W_q, W_k, W_v = in_proj_weight rows [0,E), [E,2E), [2E,3E) "
             "(or q/k/v_proj_weight when kdim/vdim != embed_dim); b_q, b_k, b_v likewise from in_proj_bias; "
             "out = attn out_proj_weight^T + out_proj_bias; scale 1/sqrt(head_dim)")]
    arrays = []
    params = dict(mha.named_parameters())
    if mha._qkv_same_embed_dim:
        arrays.append(("in_proj_weight", np32(params["in_proj_weight"])))
    else:
        for n in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
            arrays.append((n, np32(params[n])))
    if bias:
        arrays.append(("in_proj_bias", np32(params["in_proj_bias"])))
    arrays.append(("out_proj_weight", np32(params["out_proj.weight"])))
    if bias:
        arrays.append(("out_proj_bias", np32(params["out_proj.bias"])))
    if self_attn:
        arrays.append(("x", np32(query)))
        meta.append(("inputs", "x is query, key and value"))
    else:
        arrays += [("query", np32(query)), ("key", np32(key)), ("value", np32(value))]
    if kp is not None:
        meta.append(("key_padding_mask_convention", MHA_KPM_CONVENTION))
        arrays.append(("key_padding_mask", kp.numpy()))
    if am is not None:
        meta.append(("attn_mask_convention", MHA_ATTN_MASK_CONVENTION))
        arrays.append(("attn_mask", am.numpy()))
    arrays.append(("out", np32(out)))
    if need_weights:
        arrays.append(("weights", np32(w)))
    stats = {"nan_in_out": bool(torch.isnan(out).any())}
    if extra is not None:
        extra(mha, query, key, value, kp, am, meta, arrays, stats)
    if note:
        meta.append(("note", note))
    return name, meta, arrays, stats


def padding(lengths):
    def make(g, B, S):
        m = torch.zeros(B, S, dtype=torch.bool)
        for b, n in enumerate(lengths):
            m[b, n:] = True  # True = padding
        return m
    return make


def fully_padded_extra(mha, query, key, value, kp, am, meta, arrays, stats):
    # The same call with need_weights=False, in eval mode (torch's fused
    # "fast path") and in training mode (the SDPA path): torch disagrees with
    # itself on a batch entry whose every key is padding.
    with torch.no_grad():
        fast, _ = mha(query, key, value, key_padding_mask=kp, need_weights=False)
        mha.train()
        sdpa, _ = mha(query, key, value, key_padding_mask=kp, need_weights=False)
        mha.eval()
    arrays.append(("out_no_weights_eval", np32(fast)))
    arrays.append(("out_no_weights_train", np32(sdpa)))
    meta.append(("outputs", "out: need_weights=True (eval); out_no_weights_eval: need_weights=False in eval "
                 "(self-attention: torch's fused fast path); out_no_weights_train: need_weights=False in training mode (SDPA path, dropout 0)"))
    stats["nan"] = {n: bool(np.isnan(a).any()) for n, a in arrays if n.startswith("out") and not n.startswith("out_proj")}


def mha_cases():
    return [
        mha_case("mha_self_bias", 201, E=16, H=4, B=2, L=5, S=5, bias=True),
        mha_case("mha_self_nobias", 202, E=16, H=4, B=2, L=5, S=5, bias=False),
        mha_case("mha_cross_kdim_vdim", 203, E=16, H=4, B=2, L=5, S=7, kdim=12, vdim=10,
                 self_attn=False, note="kdim, vdim != embed_dim: separate q/k/v_proj_weight"),
        mha_case("mha_key_padding_mask", 204, E=16, H=4, B=2, L=5, S=7, self_attn=False,
                 kpm=padding([7, 4]), need_weights=True,
                 note="batch 1 has 4 valid keys, keys 4..6 are padding (True)"),
        mha_case("mha_causal", 205, E=16, H=4, B=2, L=6, S=6, causal=True, need_weights=True,
                 note="attn_mask = triu(ones(L, L), 1): True above the diagonal = not allowed"),
        mha_case("mha_weights_avg", 206, E=16, H=4, B=2, L=5, S=7, self_attn=False,
                 need_weights=True, average=True),
        mha_case("mha_weights_per_head", 207, E=16, H=4, B=2, L=5, S=7, self_attn=False,
                 need_weights=True, average=False),
        mha_case("mha_fully_padded", 208, E=16, H=4, B=2, L=4, S=4,
                 kpm=padding([4, 0]), need_weights=True, extra=fully_padded_extra,
                 note="batch 1 has no valid key; attn's convention (0 attention, so out = out_proj_bias) "
                      "differs from torch's NaN here"),
    ]


# ---------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=OUT_DIR, help="output directory (default tests/data)")
    ap.add_argument("--check", action="store_true",
                    help="regenerate in memory and compare with the files; write nothing")
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(0)

    cases = sdpa_cases() + mha_cases()
    os.makedirs(args.out, exist_ok=True)
    total, bad = 0, 0
    for name, meta, arrays, stats in cases:
        data = encode(name, meta, arrays)
        path = os.path.join(args.out, name + ".golden")
        total += len(data)
        if args.check:
            same = os.path.exists(path) and open(path, "rb").read() == data
            bad += not same
            status = "same" if same else "DIFFERS"
        else:
            with open(path, "wb") as f:
                f.write(data)
            status = "written"
        print(f"{name:30s} {len(data):7d} B  {status}  {stats}")
    print(f"total {total} bytes ({total / 1024:.1f} KiB) in {len(cases)} files")
    if bad:
        print(f"{bad} file(s) differ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
