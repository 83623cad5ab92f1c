#!/usr/bin/env python3
"""tools/make_golden.py: golden files written by PyTorch for attn's C++ tests.

The C++ tests (tests/test_sdpa_golden.cpp, read through tests/golden.hpp)
check attn against PyTorch's semantics without needing Python at test time:
this script is run by hand when a case is added or changed, and its output in
tests/data/*.golden is kept in the repository (about 410 KiB in all). The
score-modifier cases (tests/data/mod_*.golden, tests/test_modifier_golden.cpp)
take FlexAttention on CPU and GPT-OSS's sink formula as references: see (c)
below.

Install (PyPI only; no CPU-only torch wheel is published on PyPI for Linux
x86_64, so the default wheel brings the CUDA libraries along although only the
CPU is used: about 5.4 GiB installed, ~1 minute to install on the project
machine):

    python3 -m venv /tmp/golden-venv
    /tmp/golden-venv/bin/pip install torch numpy
    /tmp/golden-venv/bin/python tools/make_golden.py          # writes tests/data/
    /tmp/golden-venv/bin/python tools/make_golden.py --check  # compare, write nothing
    /tmp/golden-venv/bin/python tools/make_golden.py --only mod_   # only the mod_* cases

Torch's fp32 output is bit-reproducible on one machine, not necessarily on
another (presumably because its CPU kernels follow the instruction set found
at run time): on the machine where the mod_* cases were added (torch
2.15.0+cu132, AVX-512), --check reports DIFFERS for 17 of the 26 sdpa_* and
mha_* files written before, with identical inputs and outputs at most 4.8e-7
(an ulp or two) away. Regenerate only the cases you add or change (--only),
so that the others keep their bytes.

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
"op" (sdpa, mha or sdpa_mod), "torch" (version) and "layout"; mask conventions are spelled
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
# (c) score modifiers: softcap, ALiBi, attention sinks, document masks
#
# Semantics (attn::sdpa_options, include/attn/sdpa_options.hpp): the scaled
# score s = scale · q·k of query i, key j, query head h becomes
#   s <- softcap · tanh(s / softcap)                     (softcap > 0)
#   s <- s - slopes[h] · |i + S - L - j|                 (ALiBi; |i - j| when causal is top-left)
# then the masks hide keys; a sink is one more logit per head in the softmax
# denominator, with no value. The reference for each case is recorded in meta
# "reference":
#   flex_attention_eager  torch.nn.attention.flex_attention with a score_mod
#       and a mask_mod (create_block_mask on CPU), not compiled: its eager CPU
#       path (float32 math over the materialised scores). torch.compile'd
#       flex_attention also runs on CPU in torch 2.15, but it cannot return the
#       LSE there ("torch.compile on CPU only supports inference and
#       `return_lse` is not supported yet"), so the golden files take the eager
#       path, which returns both; --flex-compiled compares the compiled
#       outputs with it.
#   explicit_fp64  the fp64 math below rounded to float32: only used when
#       flex_attention fails on this machine (then --check reports it).
#   gpt_oss_formula  sinks: GPT-OSS's reference sdpa (gpt_oss/torch/model.py)
#       in float32: the masked scores get the sink as one more logit column,
#       softmax over the row, that column dropped, times V; LSE is the
#       logsumexp of the same extended row. FlexAttention has no sink
#       option; make_golden.py checks the formula against FlexAttention
#       with the usual emulation (one extra key whose score_mod score is the
#       sink and whose value is 0) and asserts they agree to 1e-6.

REF_FLEX = "flex_attention_eager"
REF_EXPLICIT = "explicit_fp64"
REF_GPT_OSS = "gpt_oss_formula"
FLEX_COMPILED = False  # set by --flex-compiled


def alibi_slopes(n):
    """ALiBi slopes as in the paper's code (ofirpress/attention_with_linear_biases,
    also BLOOM's): a geometric sequence for a power of two, else the closest
    power of two's slopes followed by every other slope of twice that."""
    def power_of_2(n):
        start = 2 ** (-2 ** -(math.log2(n) - 3))
        return [start * start ** i for i in range(n)]
    if math.log2(n).is_integer():
        return power_of_2(n)
    closest = 2 ** math.floor(math.log2(n))
    return power_of_2(closest) + alibi_slopes(2 * closest)[0::2][:n - closest]


def doc_ids(lengths):
    """Segment ids 0, 0, ..., 1, ... for documents of the given lengths."""
    return torch.tensor([d for d, n in enumerate(lengths) for _ in range(n)], dtype=torch.long)


def diag_offset(align, L, S):
    return 0 if align == "top_left" else S - L


def visible(B, Hq, L, S, causal, window, q_ids, k_ids, mask):
    """bool [B, Hq, L, S]: which (query, key) pairs every mask allows."""
    i = torch.arange(L).view(L, 1)
    j = torch.arange(S).view(1, S)
    vis = torch.ones(L, S, dtype=torch.bool)
    if causal != "none":
        vis &= j <= i + diag_offset(causal, L, S)
    if window is not None:
        left, right, align = window
        d = i + diag_offset(align, L, S)
        vis &= (d - left <= j) & (j <= d + right)
    if q_ids is not None:
        vis &= q_ids.view(L, 1) == k_ids.view(1, S)
    vis = vis.expand(B, Hq, L, S)
    if mask is not None:
        vis = vis & mask.expand(B, Hq, L, S)
    return vis.contiguous()


def alibi_distance(causal, L, S):
    """[L, S] |i + S - L - j| (bottom-right), or |i - j| when causal is top-left."""
    i = torch.arange(L, dtype=torch.float64).view(L, 1)
    j = torch.arange(S, dtype=torch.float64).view(1, S)
    return (i + (0 if causal == "top_left" else S - L) - j).abs()


def mod_ref64(q, k, v, scale, softcap, slopes, sinks, vis, causal):
    """fp64 attention with the modifiers: (out, lse). A row that sees no key
    gives out 0 and lse = its sink (-inf without sinks)."""
    q, k, v = q.double(), k.double(), v.double()
    Hq, Hkv, L, S = q.shape[1], k.shape[1], q.shape[2], k.shape[2]
    k = k.repeat_interleave(Hq // Hkv, dim=1)
    v = v.repeat_interleave(Hq // Hkv, dim=1)
    s = (q @ k.transpose(-1, -2)) * scale
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    if slopes is not None:
        s = s - slopes.double().view(1, Hq, 1, 1) * alibi_distance(causal, L, S)
    s = s.masked_fill(~vis, -math.inf)
    if sinks is not None:
        col = sinks.double().view(1, Hq, 1, 1).expand(s.shape[0], Hq, L, 1)
        s = torch.cat([s, col], dim=-1)
    m = s.amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    p = torch.exp(s - m)
    den = p.sum(-1, keepdim=True)
    lse = torch.where(den > 0, m + torch.log(den), torch.full_like(den, -math.inf)).squeeze(-1)
    p = torch.where(den > 0, p / den.clamp_min(1e-300), torch.zeros_like(p))
    return p[..., :S] @ v, lse


def flex_reference(q, k, v, scale, softcap, slopes, causal, window, q_ids, k_ids, mask, gqa):
    """FlexAttention (eager, CPU): (out, lse) in float32."""
    from torch.nn.attention.flex_attention import (AuxRequest, and_masks, create_block_mask,
                                                   flex_attention)
    B, Hq, L, S = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    # Eager flex_attention still traces the mods with dynamo (backend
    # "eager"); a float the closure captures then turns symbolic on the
    # second case with another value, which flex_attention rejects. A fresh
    # dynamo state per case keeps every case's constants constant.
    torch._dynamo.reset()

    off = 0 if causal == "top_left" else S - L  # ALiBi's diagonal

    def modify(score, b, h, q_idx, kv_idx):
        if softcap:
            score = softcap * torch.tanh(score / softcap)
        if slopes is not None:
            score = score - slopes[h] * (q_idx + off - kv_idx).abs()
        return score

    score_mod = modify if softcap or slopes is not None else None

    mods = []
    if causal != "none":
        c_off = diag_offset(causal, L, S)
        mods.append(lambda b, h, q_idx, kv_idx: kv_idx <= q_idx + c_off)
    if window is not None:
        left, right, align = window
        w_off = diag_offset(align, L, S)
        mods.append(lambda b, h, q_idx, kv_idx: (q_idx + w_off - left <= kv_idx) &
                    (kv_idx <= q_idx + w_off + right))
    if q_ids is not None:
        mods.append(lambda b, h, q_idx, kv_idx: q_ids[q_idx] == k_ids[kv_idx])
    if mask is not None:
        mb = mask.expand(B, Hq, L, S).contiguous()
        mods.append(lambda b, h, q_idx, kv_idx: mb[b, h, q_idx, kv_idx])
    block_mask = None
    if mods:
        block_mask = create_block_mask(and_masks(*mods) if len(mods) > 1 else mods[0],
                                       B=B if mask is not None else None,
                                       H=Hq if mask is not None else None,
                                       Q_LEN=L, KV_LEN=S, device="cpu")
    import warnings
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        out, aux = flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale,
                                  enable_gqa=gqa, return_aux=AuxRequest(lse=True))
        compiled_diff = None
        if FLEX_COMPILED:
            compiled = torch.compile(flex_attention)(q, k, v, score_mod=score_mod,
                                                     block_mask=block_mask, scale=scale,
                                                     enable_gqa=gqa)
            compiled_diff = float((compiled - out).abs().max())
    return out, aux.lse, compiled_diff


def gpt_oss_reference(q, k, v, scale, sinks, vis):
    """GPT-OSS's reference attention with sinks (gpt_oss/torch/model.py, sdpa),
    batched and in float32: QK·scale, -inf where masked, the sink appended as
    a logit column, softmax, the column dropped, times V. The model builds
    its mask as triu(-inf, 1) + tril(-inf, -sliding_window) (top-left causal,
    square, window of sliding_window keys including the query's own); here
    `vis` is any mask."""
    Hq, Hkv, S = q.shape[1], k.shape[1], k.shape[2]
    k = k.repeat_interleave(Hq // Hkv, dim=1)  # GPT-OSS: K[:, :, None, :].expand(.., q_mult, ..)
    v = v.repeat_interleave(Hq // Hkv, dim=1)
    qk = torch.einsum("bhqd,bhkd->bhqk", q, k) * scale
    qk = qk + torch.zeros_like(qk).masked_fill(~vis, -math.inf)
    col = sinks.view(1, Hq, 1, 1).expand(qk.shape[0], Hq, qk.shape[2], 1)
    qk = torch.cat([qk, col], dim=-1)
    w = torch.softmax(qk, dim=-1)[..., :S]
    return torch.einsum("bhqk,bhkd->bhqd", w, v), torch.logsumexp(qk, dim=-1)


def flex_sink_emulation(q, k, v, scale, sinks, vis, gqa):
    """Sinks through FlexAttention (eager, CPU): key S appended with value 0,
    visible to every query, its score replaced by the query head's sink.
    (out, lse) in float32; a cross-check of gpt_oss_reference."""
    from torch.nn.attention.flex_attention import AuxRequest, create_block_mask, flex_attention
    torch._dynamo.reset()  # as in flex_reference
    B, Hq, L, S = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    kp = torch.cat([k, torch.zeros_like(k[:, :, :1])], dim=2)
    vp = torch.cat([v, torch.zeros_like(v[:, :, :1])], dim=2)
    visp = torch.cat([vis, torch.ones(B, Hq, L, 1, dtype=torch.bool)], dim=-1).contiguous()

    def score_mod(score, b, h, q_idx, kv_idx):
        return torch.where(kv_idx == S, sinks[h], score)

    block_mask = create_block_mask(lambda b, h, q_idx, kv_idx: visp[b, h, q_idx, kv_idx],
                                   B=B, H=Hq, Q_LEN=L, KV_LEN=S + 1, device="cpu")
    import warnings
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        out, aux = flex_attention(q, kp, vp, score_mod=score_mod, block_mask=block_mask,
                                  scale=scale, enable_gqa=gqa, return_aux=AuxRequest(lse=True))
    return out, aux.lse


def gpt_oss_model_sdpa(Q, K, V, S, sm_scale, sliding_window=0):
    """GPT-OSS's own sdpa as its model calls it (gpt_oss/torch/model.py):
    Q [n_tokens, n_heads, q_mult, d_head] (query head = kv head · q_mult + m),
    K, V [n_tokens, n_heads, d_head], S [n_heads · q_mult] the sinks; causal,
    square, with an optional window of sliding_window keys. Used to confirm
    that gpt_oss_reference, batched and generalised to any mask, is the same
    formula on the cases where the model's own applies."""
    n_tokens, n_heads, q_mult, d_head = Q.shape
    K = K[:, :, None, :].expand(-1, -1, q_mult, -1)
    V = V[:, :, None, :].expand(-1, -1, q_mult, -1)
    S = S.reshape(n_heads, q_mult, 1, 1).expand(-1, -1, n_tokens, -1)
    mask = torch.triu(Q.new_full((n_tokens, n_tokens), -float("inf")), diagonal=1)
    if sliding_window > 0:
        mask += torch.tril(mask.new_full((n_tokens, n_tokens), -float("inf")), diagonal=-sliding_window)
    QK = torch.einsum("qhmd,khmd->hmqk", Q, K)
    QK *= sm_scale
    QK += mask[None, None, :, :]
    QK = torch.cat([QK, S], dim=-1)
    W = torch.softmax(QK, dim=-1)[..., :-1]
    return torch.einsum("hmqk,khmd->qhmd", W, V).reshape(n_tokens, n_heads * q_mult, d_head)


def gpt_oss_model_check(q, k, v, sc, sk, causal, window, mask, out):
    """max |gpt_oss_reference - GPT-OSS's own sdpa| where the latter applies
    (B = 1, L = S, top-left causal, no window or a top-left one of the form
    {sw - 1, 0}, no bool mask), else None."""
    B, Hq, L, E = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    if B != 1 or L != S or causal != "top_left" or mask is not None or v.shape[-1] != E:
        return None
    sw = 0
    if window is not None:
        if window[1] != 0 or window[2] != "top_left":
            return None
        sw = window[0] + 1
    Q = q[0].permute(1, 0, 2).reshape(L, Hkv, Hq // Hkv, E)
    model = gpt_oss_model_sdpa(Q, k[0].permute(1, 0, 2), v[0].permute(1, 0, 2), sk, sc, sw)
    return float((model.permute(1, 0, 2) - out[0]).abs().max())


def mod_case(name, seed, B, Hq, Hkv, L, S, E, Ev=None, q_gain=1.0, scale=None, causal="none",
             window=None, softcap=0.0, alibi=False, sinks=None, docs=None, mask=None, note=None):
    """One score-modifier case.
    causal: "none" | "top_left" | "bottom_right" (mask_mod kv_idx <= q_idx + offset).
    window: None or (left, right, "top_left" | "bottom_right"), attn::sliding_window's sides.
    alibi: True for the standard slopes of Hq heads.
    sinks: None, or (lo, hi): one sink per head, uniform in [lo, hi); GPT-OSS reference.
    docs: None, or (query doc lengths, key doc lengths): document mask over segment ids.
    mask: None, or a function (g, B, Hq, L, S) -> bool tensor (True = may attend)."""
    Ev = Ev or E
    g = gen(seed)
    q = q_gain * randn(g, B, Hq, L, E)
    k = randn(g, B, Hkv, S, E)
    v = randn(g, B, Hkv, S, Ev)
    m = mask(g, B, Hq, L, S) if mask is not None else None
    sk = None
    if sinks is not None:
        lo, hi = sinks
        sk = lo + (hi - lo) * torch.rand(Hq, generator=g, dtype=torch.float32)
    slopes = torch.tensor(alibi_slopes(Hq), dtype=torch.float32) if alibi else None
    q_ids = k_ids = None
    if docs is not None:
        q_ids, k_ids = doc_ids(docs[0]), doc_ids(docs[1])
        assert len(q_ids) == L and len(k_ids) == S, (name, len(q_ids), len(k_ids))
    sc = scale if scale is not None else 1.0 / math.sqrt(E)
    vis = visible(B, Hq, L, S, causal, window, q_ids, k_ids, m)
    gqa = Hq != Hkv

    compiled_diff = model_diff = flex_diff = None
    with torch.no_grad():
        ref_out, ref_lse = mod_ref64(q, k, v, sc, softcap, slopes, sk, vis, causal)
        if sk is not None:
            assert not softcap and slopes is None, "the GPT-OSS formula has no softcap or ALiBi"
            reference = REF_GPT_OSS
            out, lse = gpt_oss_reference(q, k, v, sc, sk, vis)
            model_diff = gpt_oss_model_check(q, k, v, sc, sk, causal, window, m, out)
            assert model_diff is None or model_diff <= 1e-6, (name, model_diff)
            f_out, f_lse = flex_sink_emulation(q, k, v, sc, sk, vis, gqa)
            flex_diff = max(float((f_out - out).abs().max()), float((f_lse - lse).abs().max()))
            assert flex_diff <= 1e-6, (name, flex_diff)
        else:
            try:
                reference = REF_FLEX
                out, lse, compiled_diff = flex_reference(q, k, v, scale, softcap, slopes, causal,
                                                         window, q_ids, k_ids, m, gqa)
            except Exception as e:  # noqa: BLE001 (any failure of the flex path)
                print(f"{name}: flex_attention failed ({type(e).__name__}: {e}); explicit math",
                      file=sys.stderr)
                reference = REF_EXPLICIT
                out, lse = ref_out.float(), ref_lse.float()

    meta = [("op", "sdpa_mod"), ("torch", torch.__version__),
            ("layout", "q [B, Hq, L, E], k [B, Hkv, S, E], v [B, Hkv, S, Ev], out [B, Hq, L, Ev], "
                       "lse [B, Hq, L] (torch SDPA layout)"),
            ("reference", reference),
            ("scale", repr(float(scale)) if scale is not None else "default"),
            ("causal", causal),
            ("window", "none" if window is None else f"{window[0]} {window[1]} {window[2]}"),
            ("window_convention", "left right alignment: query i sees keys d - left <= j <= d + right, "
                                  "d = i (top_left) or i + S - L (bottom_right); attn::sliding_window"),
            ("softcap", repr(float(softcap))),
            ("alibi", "standard" if alibi else "none"),
            ("enable_gqa", int(gqa)),
            ("lse_convention", "natural log of the row's sum of exp(score), sink included; "
                               "-inf for a row that sees no key and has no sink")]
    if alibi:
        meta.append(("alibi_convention", "score -= alibi_slopes[h] * |i + S - L - j|, or |i - j| when "
                                         "causal is top_left; after softcap"))
    if sk is not None:
        meta.append(("sinks_convention", "sinks[h]: one more logit in every row's softmax of query head h, "
                                         "no value (GPT-OSS)"))
    if docs is not None:
        meta.append(("doc_convention", "query i sees key j only when query_doc_ids[i] == key_doc_ids[j] "
                                       "(FlexAttention mask_mod / attn::document_mask)"))
    arrays = [("q", np32(q)), ("k", np32(k)), ("v", np32(v))]
    if slopes is not None:
        arrays.append(("alibi_slopes", np32(slopes)))
    if sk is not None:
        arrays.append(("sinks", np32(sk)))
    if docs is not None:
        arrays += [("query_doc_ids", np32(q_ids.float())), ("key_doc_ids", np32(k_ids.float()))]
    if m is not None:
        meta.append(("attn_mask_dtype", "bool"))
        meta.append(("attn_mask_convention", SDPA_MASK_CONVENTION))
        arrays.append(("attn_mask", m.numpy()))
    if note:
        meta.append(("note", note))
    arrays += [("out", np32(out)), ("lse", np32(lse))]
    empty = ~vis.any(-1)
    stats = {"ref": reference,
             "out_vs_fp64": float((out.double() - ref_out).abs().max()),
             "lse_vs_fp64": float((lse.double() - ref_lse).abs().nan_to_num(0.0).max()),
             "max_abs_v": float(v.abs().max()),
             "empty_rows": int(empty.sum()),
             "nan": bool(torch.isnan(out).any() or torch.isnan(lse).any())}
    if compiled_diff is not None:
        stats["compiled_vs_eager"] = compiled_diff
    if model_diff is not None:
        stats["vs_gpt_oss_model_sdpa"] = model_diff
    if flex_diff is not None:
        stats["vs_flex_sink_emulation"] = flex_diff
    return name, meta, arrays, stats


def mod_cases():
    B1LS = lambda B, H, L, S: (B, 1, L, S)  # noqa: E731
    # Sizes as in sdpa_cases: attn's split-KV kernel for L * (Hq / Hkv) <= 32,
    # its tiled kernel otherwise (the *_long cases, or GQA groups).
    return [
        # softcap: q drawn with gain 2, so scaled scores have sd ~2 and tanh bends them.
        mod_case("mod_softcap", 301, B=1, Hq=3, Hkv=3, L=7, S=13, E=8, q_gain=2.0, softcap=1.5),
        mod_case("mod_softcap_long", 302, B=1, Hq=1, Hkv=1, L=33, S=41, E=8, q_gain=2.0, softcap=3.0,
                 causal="bottom_right", note="L < S, bottom-right causal mask_mod kv_idx <= q_idx + S - L"),
        mod_case("mod_softcap_gqa", 303, B=2, Hq=6, Hkv=2, L=5, S=19, E=8, q_gain=2.0, softcap=2.0,
                 note="enable_gqa: query head h reads kv head h // (Hq // Hkv)"),
        mod_case("mod_softcap_gqa_long", 304, B=1, Hq=4, Hkv=1, L=11, S=29, E=8, q_gain=2.0, softcap=1.0,
                 scale=0.5, causal="top_left", note="MQA group of 4, explicit scale, top-left causal"),
        # ALiBi with the standard slopes of 6 heads (not a power of two).
        mod_case("mod_alibi_causal_br", 311, B=1, Hq=6, Hkv=3, L=5, S=17, E=8, alibi=True,
                 causal="bottom_right", note="bottom-right causal, distance |i + S - L - j|"),
        mod_case("mod_alibi_causal_br_long", 312, B=1, Hq=6, Hkv=1, L=7, S=27, E=8, alibi=True,
                 causal="bottom_right", note="MQA (group 6), bottom-right causal"),
        mod_case("mod_alibi_top_left", 313, B=1, Hq=6, Hkv=6, L=8, S=5, E=8, alibi=True,
                 causal="top_left", note="L > S, top-left causal: distance |i - j|"),
        mod_case("mod_alibi_bidirectional", 314, B=1, Hq=12, Hkv=4, L=5, S=9, E=8, alibi=True,
                 note="no causal mask: distance from the bottom-right diagonal |i + S - L - j|; "
                      "12 heads: slopes that are not powers of two"),
        mod_case("mod_softcap_alibi", 315, B=1, Hq=6, Hkv=3, L=7, S=15, E=8, q_gain=2.0, softcap=1.0,
                 alibi=True, causal="bottom_right", note="softcap first, then ALiBi"),
        # Sinks, against GPT-OSS's formula.
        mod_case("mod_sinks", 321, B=1, Hq=4, Hkv=2, L=11, S=11, E=8, sinks=(-2.0, 3.0),
                 causal="top_left", note="GPT-OSS's setting: square, causal"),
        mod_case("mod_sinks_window", 322, B=1, Hq=4, Hkv=1, L=19, S=19, E=8, sinks=(-2.0, 3.0),
                 causal="top_left", window=(7, 0, "top_left"),
                 note="GPT-OSS sliding_window = 8 (its mask tril(-inf, -8): keys i-7..i) = "
                      "attn sliding_window{7, 0}"),
        mod_case("mod_sinks_window_masked", 323, B=2, Hq=2, Hkv=1, L=9, S=17, E=8, sinks=(-1.0, 2.0),
                 causal="bottom_right", window=(5, 0, "bottom_right"),
                 mask=bool_mask(B1LS, p=0.8, fully_masked=[(1, 0, 4), (0, 0, 8)]),
                 note="L < S, bottom-right window of 6 keys, and a bool mask [B, 1, L, S] with rows "
                      "(b=1, l=4) and (b=0, l=8) all False: out 0, lse = the sink"),
        # Document masks (packed sequences).
        mod_case("mod_document", 331, B=1, Hq=1, Hkv=1, L=37, S=37, E=8, docs=([7, 9, 1, 15, 5],) * 2,
                 note="bidirectional within each document; a document of length 1"),
        mod_case("mod_document_short", 332, B=1, Hq=2, Hkv=2, L=14, S=14, E=8, docs=([3, 6, 5],) * 2),
        mod_case("mod_document_causal", 333, B=2, Hq=2, Hkv=1, L=19, S=19, E=8,
                 docs=([5, 1, 7, 6],) * 2, causal="top_left",
                 note="packed causal LM: document mask and causal"),
        mod_case("mod_document_cross", 334, B=1, Hq=2, Hkv=2, L=12, S=30, E=8,
                 docs=([3, 4, 0, 5], [6, 9, 8, 0, 7]),
                 note="query and key ids differ (key documents 0..4 of lengths 6, 9, 8, 0, 7; query "
                      "documents 0..3 of lengths 3, 4, 0, 5): document 3's queries see no key "
                      "(FlexAttention: out 0, lse -inf)"),
    ]


# ---------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=OUT_DIR, help="output directory (default tests/data)")
    ap.add_argument("--check", action="store_true",
                    help="regenerate in memory and compare with the files; write nothing")
    ap.add_argument("--flex-compiled", action="store_true",
                    help="also run torch.compile(flex_attention) on the FlexAttention cases and report "
                         "its largest difference from the eager output (which the files keep); "
                         "compiles a C++ kernel per case: minutes")
    ap.add_argument("--only", metavar="PREFIX", default="",
                    help="write or check only the cases whose name starts with PREFIX (e.g. mod_)")
    args = ap.parse_args()
    global FLEX_COMPILED
    FLEX_COMPILED = args.flex_compiled

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(0)

    cases = [c for c in sdpa_cases() + mha_cases() + mod_cases() if c[0].startswith(args.only)]
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
