"""Shared by the GPU kernel tests (sm90 now, sm100 later): the seeded sweep and the accuracy rule.

Why a sweep built from *static* configurations: everything in ``FwdConfig`` (window, stride,
dilation, causal, dtype, head dim, tiles) is compiled into the kernel, while batch, heads and
spatial sizes are run-time values.  So the sweep draws a few dozen static configurations and
several problems for each: every problem is a distinct configuration for the kernel's scheduler
and masks, at one compile per static configuration (compiled up front, in parallel).

Accuracy rule (FlashAttention's): with ``truth`` an fp64 computation written here from the
semantics (masks from ``brute_force.keys_of_query_1d``), and ``low`` the same attention done the
way a same-precision PyTorch program does it (logits and P rounded to the input dtype),
``max|kernel - fp32 reference| <= K * max|low - truth| + ATOL`` for the output and the LSE.  The
fp32 reference is ``gna_cute.reference`` on the whole tensor; ``truth``/``low`` are computed on all
query rows of small problems and on a sample of rows (borders included) of the large ones.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import numpy as np
import torch

from brute_force import keys_of_query_1d
from gna_cute.backends import AttentionArgs
from gna_cute.params import GNAParams
from gna_cute.reference import reference_forward

K_OUT = 3.0
ATOL_OUT = 2e-3
K_LSE = 3.0
ATOL_LSE = 2e-3
MAX_SMALL_TOKENS = 4096  # up to this many tokens every row is checked against fp64
SAMPLED_ROWS = 1024


@dataclass(frozen=True)
class Static:
    """The compile-time part of a problem (one kernel compile)."""

    dtype: torch.dtype
    head_dim: int
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    is_causal: tuple[bool, ...]
    tiles: tuple[tuple[int, ...], tuple[int, ...]] | None = None  # None: the kernel's default

    @property
    def rank(self) -> int:
        return len(self.kernel_size)


@dataclass(frozen=True)
class Case:
    """One problem: a static configuration plus run-time sizes."""

    static: Static
    spatial: tuple[int, ...]
    batch: int
    heads: int
    kv_heads: int
    seed: int
    label: str = field(default="", compare=False)

    @property
    def id(self) -> str:
        s = self.static
        dt = "f16" if s.dtype == torch.float16 else "bf16"
        causal = "".join("c" if c else "n" for c in s.is_causal)
        tiles = "" if s.tiles is None else f"-t{s.tiles[0]}x{s.tiles[1]}"
        tag = f"{self.label}-" if self.label else ""
        return (
            f"{tag}{dt}-d{s.head_dim}-L{self.spatial}-w{s.kernel_size}-s{s.stride}-dil{s.dilation}-{causal}"
            f"-B{self.batch}H{self.heads}/{self.kv_heads}{tiles}"
        ).replace(" ", "")

    def params(self) -> GNAParams:
        s = self.static
        return GNAParams.make(self.spatial, s.kernel_size, s.stride, s.dilation, s.is_causal)

    def args(self, device: str = "cuda") -> AttentionArgs:
        """Seeded inputs (``device="meta"``: shapes only, for building the compile configs)."""
        s = self.static
        shape = (self.batch, *self.spatial)
        shapes = [(*shape, h, s.head_dim) for h in (self.heads, self.kv_heads, self.kv_heads)]
        if device == "meta":
            q, k, v = (torch.empty(sh, dtype=s.dtype, device="meta") for sh in shapes)
        else:
            gen = torch.Generator(device="cpu").manual_seed(self.seed)
            q, k, v = (torch.randn(sh, generator=gen).to(device=device, dtype=s.dtype) for sh in shapes)
        q_tile, kv_tile = s.tiles if s.tiles is not None else (None, None)
        return AttentionArgs(q, k, v, self.params(), s.head_dim**-0.5, q_tile_shape=q_tile, kv_tile_shape=kv_tile)


# ---------------------------------------------------------------------------------------------
# The sweep
# ---------------------------------------------------------------------------------------------

_WINDOW_RANGE = {1: (2, 160), 2: (2, 20), 3: (2, 7)}
_TOKEN_BUDGET = {1: 3000, 2: 3000, 3: 3000}
_BIG_GROUP = {1: 1500, 2: 64, 3: 16}  # several Q/KV tiles per dim


def _random_static(rng: random.Random, rank: int, tile_pairs) -> Static:
    lo, hi = _WINDOW_RANGE[rank]
    ks, st, dl, ca = [], [], [], []
    for _ in range(rank):
        w = rng.choice([rng.randint(lo, hi), rng.randint(lo, min(hi, 9))])
        s = rng.choice([1, 1, w, rng.randint(1, w)])
        ks.append(w)
        st.append(s)
        dl.append(rng.choice([1, 1, 1, 2, 3]))
        ca.append(rng.random() < 0.3)
    head_dim = rng.choice([32, 64, 128])
    pairs = tile_pairs(rank, head_dim)
    tiles = rng.choice(pairs) if pairs and rng.random() < 0.3 else None
    return Static(
        dtype=rng.choice([torch.float16, torch.bfloat16]),
        head_dim=head_dim,
        kernel_size=tuple(ks),
        stride=tuple(st),
        dilation=tuple(dl),
        is_causal=tuple(ca),
        tiles=None if tiles is None else (tuple(tiles[0]), tuple(tiles[1])),
    )


def _random_spatial(rng: random.Random, s: Static, whole_axis: bool) -> tuple[int, ...]:
    """Sizes divisible by the dilation (one launch; ``dilation_remainder_cases`` covers the rest), within budget."""
    for _ in range(50):
        spatial = []
        for w, d in zip(s.kernel_size, s.dilation):
            if whole_axis:
                group = w
            else:
                big = rng.randint(w, max(w, _BIG_GROUP[s.rank]))
                group = rng.choice([w, w + rng.randint(1, 7), w + rng.randint(1, 3 * w + 40), big, big])
            spatial.append(group * d)
        if math.prod(spatial) <= _TOKEN_BUDGET[s.rank] or whole_axis:
            return tuple(spatial)
    return tuple(w * d for w, d in zip(s.kernel_size, s.dilation))


def random_cases(seed: int, n_static: int, per_static: int, tile_pairs) -> list[Case]:
    """``n_static`` random static configurations (ranks in turn), ``per_static`` problems each.

    ``tile_pairs(rank, head_dim)`` lists the (q, kv) tile shapes the kernel supports; a third of
    the configurations use one of them instead of the default.  Each configuration gets one
    problem whose window covers every axis (dense when nothing is causal or dilated).
    """
    rng = random.Random(seed)
    cases = []
    for i in range(n_static):
        static = _random_static(rng, 1 + i % 3, tile_pairs)
        for j in range(per_static):
            kv_heads = rng.choice([1, 1, 2, 3])
            heads = kv_heads * rng.choice([1, 1, 2, 4])
            cases.append(
                Case(
                    static,
                    _random_spatial(rng, static, whole_axis=(j == 0)),
                    batch=rng.choice([1, 1, 2, 3]),
                    heads=heads,
                    kv_heads=kv_heads,
                    seed=rng.randrange(2**31),
                )
            )
    return cases


def _remainder_static(rng: random.Random, rank: int, tile_pairs) -> Static:
    """A random static configuration with dilation >= 2 in at least one dim."""
    lo, hi = _WINDOW_RANGE[rank]
    hi = min(hi, {1: 100, 2: 12, 3: 5}[rank])  # room for d * w tokens per dim within the budget
    static = _random_static(rng, rank, tile_pairs)
    dl = [rng.choice([1, 2, 3, 4]) for _ in range(rank)]
    dl[rng.randrange(rank)] = rng.choice([2, 3, 4])
    ks = [min(w, hi) for w in static.kernel_size]
    st = [min(s, w) for s, w in zip(static.stride, ks)]
    return Static(static.dtype, static.head_dim, tuple(ks), tuple(st), tuple(dl), static.is_causal, static.tiles)


def _remainder_spatial(rng: random.Random, s: Static) -> tuple[int, ...]:
    """Sizes with ``L % d != 0`` in at least one dilated dim (others dilated dims may divide)."""
    dilated = [i for i, d in enumerate(s.dilation) if d > 1]
    for _ in range(200):
        must = rng.choice(dilated)
        spatial = []
        for i, (w, d) in enumerate(zip(s.kernel_size, s.dilation)):
            group = rng.choice([w, w + rng.randint(1, 5), rng.randint(w, max(w, _BIG_GROUP[s.rank]))])
            rest = rng.randint(1, d - 1) if d > 1 and (i == must or rng.random() < 0.5) else 0
            spatial.append(group * d + rest)
        if math.prod(spatial) <= _TOKEN_BUDGET[s.rank]:
            return tuple(spatial)
    return tuple(w * d + (1 if i == dilated[0] else 0) for i, (w, d) in enumerate(zip(s.kernel_size, s.dilation)))


def dilation_remainder_cases(seed: int, n_static: int, per_static: int, tile_pairs) -> list[Case]:
    """Spatial sizes not divisible by their dilation (run group by group on strided views).

    Random static configurations (ranks in turn, GQA/MQA, causal, strides, a third with
    non-default tiles), ``per_static`` problems each, plus fixed ones: the semantics doc's
    dilation example (L = 10, d = 3) and a mix of a dividing and a non-dividing dilated dim.
    """
    rng = random.Random(seed)
    cases = []
    for i in range(n_static):
        static = _remainder_static(rng, 1 + i % 3, tile_pairs)
        for _ in range(per_static):
            kv_heads = rng.choice([1, 2, 3])
            heads = kv_heads * rng.choice([1, 2, 4])
            cases.append(Case(static, _remainder_spatial(rng, static), batch=rng.choice([1, 2]), heads=heads,
                              kv_heads=kv_heads, seed=rng.randrange(2**31), label="dilrem"))  # fmt: skip
    fixed = [
        ((10,), (3,), (1,), (3,), (False,), 2, 1),  # the semantics doc's worked dilation example
        ((1001,), (150,), (7,), (3,), (True,), 4, 2),
        ((37, 24), (7, 5), (2, 1), (2, 3), (False, True), 4, 2),  # dim 1: 24 % 3 == 0, in-kernel
        ((50, 23), (6, 9), (6, 3), (3, 2), (True, False), 3, 1),
        ((13, 10, 11), (3, 4, 2), (1, 2, 2), (2, 2, 3), (False, False, True), 2, 1),
        ((9, 14, 21), (2, 3, 6), (2, 3, 1), (4, 1, 3), (True, False, False), 6, 2),
    ]
    for j, (spatial, w, s, d, c, heads, kv_heads) in enumerate(fixed):
        static = Static(torch.float16 if j % 2 == 0 else torch.bfloat16, (64, 128, 32)[j % 3], w, s, d, c)
        cases.append(Case(static, spatial, 1 + j % 2, heads, kv_heads, seed=300 + j, label="dilrem"))
    return cases


def worked_example_cases() -> list[Case]:
    """The worked checks of docs/semantics.md, as kernel problems (1D, L = 10)."""
    examples = [
        ((10,), (3,), (1,), (1,), (False,)),
        ((10,), (4,), (1,), (1,), (False,)),
        ((10,), (4,), (4,), (1,), (False,)),
        ((10,), (4,), (2,), (1,), (True,)),
        ((9,), (3,), (1,), (3,), (False,)),  # dilation 3 (the doc's L = 10 is not divisible by 3)
    ]
    return [
        Case(Static(torch.float16, 64, w, s, d, c), spatial, 1, 2, 1, seed=100 + i, label="worked")
        for i, (spatial, w, s, d, c) in enumerate(examples)
    ]


def headline_cases() -> list[Case]:
    """The three headline shapes at reduced heads, neighborhood (s = 1) and blocked (s = w)."""
    shapes = [((32768,), (2048,)), ((256, 256), (80, 80)), ((30, 48, 80), (18, 24, 24))]
    cases = []
    for i, (spatial, w) in enumerate(shapes):
        rank = len(spatial)
        for stride in ((1,) * rank, w):
            static = Static(torch.float16, 128, w, stride, (1,) * rank, (False,) * rank)
            cases.append(Case(static, spatial, 1, 2, 1, seed=200 + i, label="headline"))
    return cases


def tail_cluster_cases() -> list[Case]:
    """Problems whose only Q-tile pairs leave a tail (an odd tile count along the paired dim; sm90
    ``FwdConfig.cluster_tail``): the 3D s=16 headline row at 2 heads, 3D stride groups of four and
    three tiles (uniform work: persistent CTAs), a dense dim of three 16-row tiles whose last is
    half outside the axis (GQA, bf16, D 64), and a dilated dim whose groups hold seven tiles."""
    f16, bf16 = torch.float16, torch.bfloat16
    t3, t2 = ((2, 8, 8), (2, 8, 8)), ((16, 8), (16, 8))
    return [
        Case(Static(f16, 128, (18, 24, 24), (16, 8, 8), (1, 1, 1), (False,) * 3, t3), (30, 48, 80), 1, 2, 1,
             seed=300, label="tail"),
        Case(Static(f16, 128, (10, 8, 8), (8, 8, 8), (1, 1, 1), (False,) * 3, t3), (14, 16, 16), 2, 3, 3,
             seed=301, label="tail"),
        Case(Static(bf16, 64, (40, 8), (1, 8), (1, 1), (False, False), t2), (40, 32), 1, 4, 2, seed=302, label="tail"),
        Case(Static(f16, 128, (5, 8, 8), (4, 8, 8), (2, 1, 1), (False,) * 3, t3), (28, 16, 16), 1, 2, 2,
             seed=303, label="tail"),
    ]


def exp2_emulation_cases() -> list[Case]:
    """Problems for the softmax's FMA-pipe exponentials (sm90 ``FwdConfig.exp2_emulation``, head
    dims <= 64): masked tiles (their -inf scores must give exactly 0) and block-sparse ones, fp16
    and bf16, D 32 and 64, 1D persistent and 2D/3D one CTA per item, GQA."""
    f16, bf16 = torch.float16, torch.bfloat16
    return [
        Case(Static(f16, 64, (13, 13), (1, 1), (1, 1), (False, False)), (40, 36), 2, 4, 2, seed=400, label="exp2"),
        Case(Static(bf16, 32, (96,), (1,), (2,), (True,)), (700,), 1, 2, 1, seed=401, label="exp2"),
        Case(Static(f16, 32, (32, 32), (16, 16), (1, 1), (False, False)), (64, 64), 1, 2, 2, seed=402, label="exp2"),
        Case(Static(bf16, 64, (5, 7, 9), (1, 1, 1), (1, 1, 1), (False, True, False)), (9, 14, 20), 1, 3, 1,
             seed=403, label="exp2"),
        Case(Static(f16, 64, (2048,), (1,), (1,), (False,)), (8192,), 1, 1, 1, seed=404, label="exp2"),
    ]


def kv_start_cases() -> list[tuple[Case, int]]:
    """Problems for full-first visiting (sm90 ``FwdConfig.kv_start_align``) with the A the product
    rule gives: 1D sliding windows from a shared aligned tile (A = 8 and 2; GQA, bf16 D 64, a last
    tile half outside the axis, a dilated stride-3 window), and uniform items full-first in order
    (A = 1: 2D s=16, 3D dense, 1D blocked)."""
    f16, bf16 = torch.float16, torch.bfloat16
    return [
        (Case(Static(f16, 128, (2048,), (1,), (1,), (False,)), (8192,), 1, 2, 1, seed=500, label="ff"), 8),
        (Case(Static(bf16, 64, (512,), (1,), (1,), (False,)), (3000,), 2, 2, 2, seed=501, label="ff"), 2),
        (Case(Static(f16, 128, (1000,), (3,), (2,), (False,)), (6000,), 1, 2, 2, seed=502, label="ff"), 2),
        (Case(Static(f16, 128, (32, 32), (16, 16), (1, 1), (False, False)), (64, 64), 1, 2, 2, seed=503, label="ff"), 1),
        (Case(Static(bf16, 128, (6, 8, 16), (1, 1, 1), (1, 1, 1), (False,) * 3), (6, 8, 16), 2, 2, 1, seed=504,
              label="ff"), 1),
        (Case(Static(f16, 128, (1024,), (1024,), (1,), (False,)), (4096,), 1, 2, 2, seed=505, label="ff"), 1),
    ]


# ---------------------------------------------------------------------------------------------
# Independent fp64 truth and the same-precision baseline, on selected query rows
# ---------------------------------------------------------------------------------------------


def is_small(spatial: tuple[int, ...]) -> bool:
    """Few enough tokens that every row is checked (and a whole fp32 reference is cheap)."""
    return math.prod(spatial) <= MAX_SMALL_TOKENS


def select_rows(spatial: tuple[int, ...], seed: int) -> np.ndarray:
    """All token indices of a small problem; else the corners of the grid plus a random sample."""
    n = math.prod(spatial)
    if is_small(spatial):
        return np.arange(n)
    rng = np.random.default_rng(seed)
    corners = [np.ravel_multi_index(tuple(x * (n_i - 1) for x, n_i in zip(c, spatial)), spatial)
               for c in np.ndindex(*(2,) * len(spatial))]  # fmt: skip
    sample = rng.choice(n, size=SAMPLED_ROWS, replace=False)
    return np.unique(np.concatenate([np.array(corners), sample]))


def row_masks(params: GNAParams, rows: np.ndarray) -> torch.Tensor:
    """Bool ``[R, N]``: which tokens each selected query row attends to (brute-force windows)."""
    coords = np.unravel_index(rows, params.spatial_shape)
    mask = np.ones((len(rows), 1), dtype=bool)
    for axis, n in enumerate(params.spatial_shape):
        args = (n, params.kernel_size[axis], params.stride[axis], params.dilation[axis], params.is_causal[axis])
        per_coord = {}
        for x in np.unique(coords[axis]):
            m = np.zeros(n, dtype=bool)
            m[sorted(keys_of_query_1d(int(x), *args))] = True
            per_coord[int(x)] = m
        dim_mask = np.stack([per_coord[int(x)] for x in coords[axis]])  # [R, n]
        mask = (mask[:, :, None] & dim_mask[:, None, :]).reshape(len(rows), -1)
    return torch.from_numpy(mask)


def attend_rows(args: AttentionArgs, rows: np.ndarray, mask: torch.Tensor, low: bool):
    """Attention of the selected rows: ``(out [B, R, H, Dv], lse [B, R, H])``.

    ``low=False``: float64 throughout (the truth).  ``low=True``: as a same-precision PyTorch
    program would do it: logits from an input-dtype matmul, fp32 softmax, P rounded to the input
    dtype, P @ V in the input dtype.
    """
    q, k, v = args.q, args.k, args.v
    batch, heads, kv_heads = q.shape[0], q.shape[-2], k.shape[-2]
    group = heads // kv_heads
    idx = torch.from_numpy(rows).to(q.device)
    qr = q.flatten(1, -3).index_select(1, idx).transpose(1, 2)  # [B, H, R, D]
    kk = k.flatten(1, -3).repeat_interleave(group, dim=2).transpose(1, 2)  # [B, H, N, D]
    vv = v.flatten(1, -3).repeat_interleave(group, dim=2).transpose(1, 2)
    m = mask.to(q.device)
    if low:
        logits = (qr @ kk.transpose(-1, -2)).float() * args.scale
    else:
        logits = (qr.double() @ kk.double().transpose(-1, -2)) * args.scale
    logits = logits.masked_fill(~m, float("-inf"))
    lse = torch.logsumexp(logits, dim=-1)
    p = torch.softmax(logits, dim=-1)
    out = (p.to(q.dtype) @ vv) if low else (p @ vv.double())
    return out.transpose(1, 2), lse.transpose(1, 2)


@dataclass
class Errors:
    out_kernel: float
    out_baseline: float
    lse_kernel: float
    lse_baseline: float
    reference_vs_truth: float

    def ok(self) -> bool:
        return (
            self.out_kernel <= K_OUT * self.out_baseline + ATOL_OUT
            and self.lse_kernel <= K_LSE * self.lse_baseline + ATOL_LSE
            and self.reference_vs_truth <= 1e-3
        )


def measure(case: Case, args: AttentionArgs, out: torch.Tensor, lse: torch.Tensor, full_reference: bool = True) -> Errors:
    """Kernel errors vs the fp32 reference (whole tensor) and the fp64 truth (selected rows)."""
    rows = select_rows(case.spatial, case.seed)
    mask = row_masks(args.params, rows)
    truth_out, truth_lse = attend_rows(args, rows, mask, low=False)
    low_out, low_lse = attend_rows(args, rows, mask, low=True)
    idx = torch.from_numpy(rows).to(out.device)
    k_out = out.flatten(1, -3).index_select(1, idx).double()
    k_lse = lse.flatten(1, -2).index_select(1, idx).double()
    out_err = (k_out - truth_out).abs().max().item()
    lse_err = (k_lse - truth_lse).abs().max().item()
    ref_vs_truth = 0.0
    if full_reference:
        ref_out, ref_lse = reference_forward(
            args.q.float(), args.k.float(), args.v.float(), args.params, args.scale
        )
        out_err = max(out_err, (out.float() - ref_out).abs().max().item())
        lse_err = max(lse_err, (lse - ref_lse).abs().max().item())
        r_out = ref_out.flatten(1, -3).index_select(1, idx).double()
        ref_vs_truth = (r_out - truth_out).abs().max().item()
    return Errors(
        out_kernel=out_err,
        out_baseline=(low_out.double() - truth_out).abs().max().item(),
        lse_kernel=lse_err,
        lse_baseline=(low_lse.double() - truth_lse).abs().max().item(),
        reference_vs_truth=ref_vs_truth,
    )
