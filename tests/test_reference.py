"""The reference backend against the brute force (dense mask + fp64 loops) in brute_force.py."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from brute_force import attention_fp64, neighborhood_mask
from conftest import LONG, requires_gpu

from gna_cute.params import GNAParams
from gna_cute import reference
from gna_cute.reference import reference_forward

RANDOM_CASES = 600 if not LONG else 3000
CHUNKS = 12


@dataclass(frozen=True)
class Case:
    shape: tuple[int, ...]
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    causal: tuple[bool, ...]
    batch: int
    heads: int
    kv_heads: int
    dim: int
    dim_v: int
    n_extra: int
    block_shape: tuple[int, ...] | None


def random_case(rng: np.random.Generator) -> Case:
    """A valid random problem: 1-3 dims, any window/stride/dilation, L often not divisible by d."""
    rank = int(rng.integers(1, 4))
    max_len = {1: 40, 2: 10, 3: 5}[rank]
    shape, ks, st, dl, ca = [], [], [], [], []
    for _ in range(rank):
        n = int(rng.integers(2, max_len + 1))
        d = int(rng.integers(1, n // 2 + 1)) if rng.random() < 0.4 else 1
        w = int(rng.integers(2, n // d + 1))
        s = int(rng.integers(1, w + 1))
        shape.append(n), ks.append(w), st.append(s), dl.append(d), ca.append(bool(rng.random() < 0.35))
    kv_heads = int(rng.integers(1, 3))
    block = tuple(int(rng.integers(1, n + 1)) for n in shape) if rng.random() < 0.6 else None
    return Case(
        tuple(shape), tuple(ks), tuple(st), tuple(dl), tuple(ca),
        batch=int(rng.integers(1, 3)), heads=kv_heads * int(rng.integers(1, 4)), kv_heads=kv_heads,
        dim=int(rng.integers(1, 9)), dim_v=int(rng.integers(1, 9)),
        n_extra=int(rng.integers(1, 4)) if rng.random() < 0.3 else 0, block_shape=block,
    )  # fmt: skip


def make_inputs(case: Case, gen: torch.Generator, dtype=torch.float32):
    def rand(*s):
        return torch.randn(*s, generator=gen).to(dtype)

    q = rand(case.batch, *case.shape, case.heads, case.dim)
    k = rand(case.batch, *case.shape, case.kv_heads, case.dim)
    v = rand(case.batch, *case.shape, case.kv_heads, case.dim_v)
    ek = rand(case.batch, case.n_extra, case.kv_heads, case.dim) if case.n_extra else None
    ev = rand(case.batch, case.n_extra, case.kv_heads, case.dim_v) if case.n_extra else None
    return q, k, v, ek, ev


def run_both(case: Case, q, k, v, ek, ev, scale: float):
    params = GNAParams.make(case.shape, case.kernel_size, case.stride, case.dilation, case.causal)
    out, lse = reference_forward(q, k, v, params, scale, ek, ev, block_shape=case.block_shape)
    mask = neighborhood_mask(case.shape, case.kernel_size, case.stride, case.dilation, case.causal)
    want_out, want_lse = attention_fp64(q, k, v, mask, scale, ek, ev)
    return out, lse, want_out, want_lse


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_random_configs_fp32(chunk):
    """>= 500 seeded random problems (1D/2D/3D, strides 1..w, dilation, causal, GQA, extra KV)."""
    rng = np.random.default_rng(1000 + chunk)
    gen = torch.Generator().manual_seed(chunk)
    for _ in range(RANDOM_CASES // CHUNKS):
        case = random_case(rng)
        scale = float(rng.uniform(0.1, 1.5))
        out, lse, want_out, want_lse = run_both(case, *make_inputs(case, gen), scale)
        assert out.dtype == torch.float32 and lse.dtype == torch.float32
        torch.testing.assert_close(out.double(), want_out, atol=2e-5, rtol=1e-5, msg=lambda m: f"{case}: {m}")
        torch.testing.assert_close(lse.double(), want_lse, atol=2e-5, rtol=1e-5, msg=lambda m: f"{case}: {m}")


# Half-precision inputs: out is rounded once to the input dtype (fp32 math inside), so its error
# against fp64 on the same rounded inputs is about one ulp of the output; the LSE stays fp32.
HALF_TOL = {torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_random_configs_half(dtype):
    rng = np.random.default_rng(7)
    gen = torch.Generator().manual_seed(7)
    for _ in range(40):
        case = random_case(rng)
        out, lse, want_out, want_lse = run_both(case, *make_inputs(case, gen, dtype), 0.5)
        assert out.dtype == dtype and lse.dtype == torch.float32
        torch.testing.assert_close(out.double(), want_out, atol=1e-4, rtol=HALF_TOL[dtype])
        torch.testing.assert_close(lse.double(), want_lse, atol=1e-4, rtol=1e-5)


# (L, w, s, d, causal, query, expected keys): the worked examples of docs/semantics.md
WORKED = [
    (10, 3, 1, 1, False, 0, {0, 1, 2}),
    (10, 3, 1, 1, False, 5, {4, 5, 6}),
    (10, 3, 1, 1, False, 9, {7, 8, 9}),
    (10, 4, 1, 1, False, 5, {3, 4, 5, 6}),
    (10, 4, 4, 1, False, 1, {0, 1, 2, 3}),
    (10, 4, 4, 1, False, 5, {4, 5, 6, 7}),
    (10, 4, 4, 1, False, 8, {6, 7, 8, 9}),
    (10, 4, 2, 1, True, 4, {2, 3, 4}),
    (10, 4, 2, 1, True, 5, {2, 3, 4, 5}),
    (10, 3, 1, 3, False, 9, {3, 6, 9}),
]


@pytest.mark.parametrize("length,window,stride,dilation,causal,query,expected", WORKED)
def test_worked_examples_through_attention(length, window, stride, dilation, causal, query, expected):
    """Zero queries give uniform weights; one-hot values then read the key set off the output."""
    q = torch.zeros(1, length, 1, 4)
    k = torch.randn(1, length, 1, 4)
    v = torch.eye(length).reshape(1, length, 1, length)
    params = GNAParams.make((length,), window, stride, dilation, causal)
    out, lse = reference_forward(q, k, v, params, 1.0)
    weights = out[0, query, 0]
    want = torch.zeros(length)
    want[sorted(expected)] = 1.0 / len(expected)
    torch.testing.assert_close(weights, want)
    torch.testing.assert_close(lse[0, query, 0], torch.tensor(float(np.log(len(expected)))))


def test_dense_special_case_matches_sdpa():
    """w = L in every dim, no causal dim: plain attention (independent check via SDPA)."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 6, 5, 3, 8, generator=gen) for _ in range(3))
    out, _ = reference_forward(q, k, v, GNAParams.make((6, 5), (6, 5)), 8**-0.5)
    flat = [t.reshape(2, 30, 3, 8).transpose(1, 2) for t in (q, k, v)]
    want = torch.nn.functional.scaled_dot_product_attention(*flat).transpose(1, 2).reshape(out.shape)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)


def test_non_contiguous_inputs():
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(1, 4, 9, 7, 2, generator=gen)  # [B, D, X, Y, H] -> permute to heads-last
    q = base.permute(0, 2, 3, 4, 1)
    k = (base * 0.5).permute(0, 2, 3, 4, 1)
    v = torch.randn(1, 9, 7, 2, 3, generator=gen)[..., ::1]
    case = Case((9, 7), (3, 4), (2, 3), (2, 1), (False, True), 1, 2, 2, 4, 3, 0, (2, 3))
    out, lse, want_out, want_lse = run_both(case, q, k, v, None, None, 0.7)
    torch.testing.assert_close(out.double(), want_out, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(lse.double(), want_lse, atol=2e-5, rtol=1e-5)


def test_longer_1d_many_blocks():
    """A longer axis with the automatic block choice (several blocks) still matches."""
    gen = torch.Generator().manual_seed(2)
    case = Case((300,), (37,), (5,), (2,), (False,), 1, 2, 1, 8, 8, 0, None)
    out, lse, want_out, want_lse = run_both(case, *make_inputs(case, gen), 0.3)
    torch.testing.assert_close(out.double(), want_out, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(lse.double(), want_lse, atol=2e-5, rtol=1e-5)


def test_never_builds_an_n_by_n_matrix(monkeypatch):
    """On a long axis every block's mask is tiny compared with N x N (memory stays bounded)."""
    sizes = []
    box_mask = reference._box_mask

    def recording(*args):
        mask = box_mask(*args)
        sizes.append(mask.numel())
        return mask

    monkeypatch.setattr(reference, "_box_mask", recording)
    n = 8192
    q = torch.randn(1, n, 1, 4)
    out, lse = reference_forward(q, q, q, GNAParams.make((n,), 9, 1, 3, False), 0.5)
    assert len(sizes) > 1 and max(sizes) * 1000 < n * n
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()


@requires_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_random_configs_cuda(dtype):
    """The same reference on a GPU agrees with the brute force (run on the device machine)."""
    rng = np.random.default_rng(11)
    gen = torch.Generator().manual_seed(11)
    tol = {torch.float32: (2e-5, 1e-5), torch.bfloat16: (1e-4, 2.0**-7)}[dtype]
    for _ in range(60):
        case = random_case(rng)
        q, k, v, ek, ev = make_inputs(case, gen, dtype)
        params = GNAParams.make(case.shape, case.kernel_size, case.stride, case.dilation, case.causal)
        cuda = [None if t is None else t.cuda() for t in (q, k, v, ek, ev)]
        out, lse = reference_forward(*cuda[:3], params, 0.6, *cuda[3:], block_shape=case.block_shape)
        mask = neighborhood_mask(case.shape, case.kernel_size, case.stride, case.dilation, case.causal)
        want_out, want_lse = attention_fp64(q, k, v, mask, 0.6, ek, ev)
        assert out.is_cuda and out.dtype == dtype and lse.dtype == torch.float32
        torch.testing.assert_close(out.cpu().double(), want_out, atol=tol[0], rtol=tol[1])
        torch.testing.assert_close(lse.cpu().double(), want_lse, atol=2e-5, rtol=1e-5)
