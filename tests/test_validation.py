"""Every bad argument raises ValueError/TypeError naming the argument and value, before compute."""

from __future__ import annotations

import re

import pytest
import torch

import gna_cute


def t(*shape, dtype=torch.float32):
    return torch.zeros(*shape, dtype=dtype)


Q2 = t(1, 8, 6, 4, 16)  # 2D: [B, X, Y, H, D]
K2 = t(1, 8, 6, 2, 16)
V2 = t(1, 8, 6, 2, 8)


def call(q=Q2, k=K2, v=V2, kernel_size=3, **kw):
    return gna_cute.attention(q, k, v, kernel_size, **kw)


# (keyword overrides, exception type, regex the message must match)
CASES = [
    # tensors
    (dict(q=[[1.0]]), TypeError, r"q must be a torch\.Tensor, got list"),
    (dict(k=None), TypeError, r"k must be a torch\.Tensor, got NoneType"),
    (dict(q=t(8, 4, 16)), ValueError, r"q has rank 3 \(shape \(8, 4, 16\)\); expected 4, 5 or 6"),
    (dict(q=t(1, 2, 2, 2, 2, 4, 16)), ValueError, r"q has rank 7"),
    (dict(k=t(1, 8, 2, 16)), ValueError, r"k has rank 4 \(shape \(1, 8, 2, 16\)\), but q has rank 5"),
    (dict(v=t(1, 8, 2, 8)), ValueError, r"v has rank 4"),
    (dict(q=t(0, 8, 6, 4, 16)), ValueError, r"q is empty \(shape \(0, 8, 6, 4, 16\)\)"),
    (dict(q=t(1, 8, 6, 4, 16, dtype=torch.float64)), TypeError, r"q\.dtype=torch\.float64 is not supported"),
    (dict(q=t(1, 8, 6, 4, 16, dtype=torch.int32)), TypeError, r"q\.dtype=torch\.int32 is not supported"),
    (dict(k=t(1, 8, 6, 2, 16, dtype=torch.float16)), TypeError, r"k\.dtype=torch\.float16 differs from q\.dtype=torch\.float32"),
    (dict(v=t(1, 8, 6, 2, 8, dtype=torch.bfloat16)), TypeError, r"v\.dtype=torch\.bfloat16 differs"),
    (dict(k=t(2, 8, 6, 2, 16)), ValueError, r"k batch/spatial dims \(2, 8, 6\) .* differ from q's \(1, 8, 6\)"),
    (dict(v=t(1, 8, 7, 2, 8)), ValueError, r"v batch/spatial dims \(1, 8, 7\)"),
    (dict(k=t(1, 8, 6, 2, 32)), ValueError, r"k head dim 32 differs from q head dim 16"),
    (dict(v=t(1, 8, 6, 1, 8)), ValueError, r"v has 1 heads but k has 2"),
    (dict(k=t(1, 8, 6, 3, 16), v=t(1, 8, 6, 3, 8)), ValueError, r"q heads \(4\) must be a multiple of k/v heads \(3\)"),
    # neighborhood parameters
    (dict(kernel_size=1), ValueError, r"kernel_size=\(1, 1\) must be >= 2"),
    (dict(kernel_size=(3, 1)), ValueError, r"kernel_size=\(3, 1\) must be >= 2 in every dim \(dim 1 has 1\)"),
    (dict(kernel_size=(3, 3, 3)), ValueError, r"kernel_size=\(3, 3, 3\) has 3 entries, expected 2"),
    (dict(kernel_size=3.0), TypeError, r"kernel_size must be int or a tuple of int, got 3\.0"),
    (dict(kernel_size=(3, "3")), TypeError, r"kernel_size=\(3, '3'\): every entry must be int"),
    (dict(kernel_size=None), TypeError, r"kernel_size must be int"),
    (dict(kernel_size=7), ValueError, r"kernel_size=\(7, 7\) x dilation=\(1, 1\) must be <= the spatial size \(8, 6\)"),
    (dict(kernel_size=3, dilation=3), ValueError, r"kernel_size=\(3, 3\) x dilation=\(3, 3\) must be <= .* \(dim 0: 3 x 3 > 8\)"),
    (dict(stride=4), ValueError, r"stride=\(4, 4\) must be <= kernel_size=\(3, 3\)"),
    (dict(stride=0), ValueError, r"stride=\(0, 0\) must be >= 1"),
    (dict(stride=(1,)), ValueError, r"stride=\(1,\) has 1 entries, expected 2"),
    (dict(dilation=0), ValueError, r"dilation=\(0, 0\) must be >= 1"),
    (dict(dilation=(1, True)), TypeError, r"dilation=\(1, True\): every entry must be int"),
    (dict(is_causal=1), TypeError, r"is_causal must be bool or a tuple of bool, got 1"),
    (dict(is_causal=(True, 0)), TypeError, r"is_causal=\(True, 0\): every entry must be bool"),
    (dict(is_causal=(True,)), ValueError, r"is_causal=\(True,\) has 1 entries, expected 2"),
    # scale
    (dict(scale="0.5"), TypeError, r"scale must be a float or None, got '0\.5'"),
    (dict(scale=True), TypeError, r"scale must be a float or None, got True"),
    (dict(scale=float("nan")), ValueError, r"scale=nan must be finite"),
    # tiles
    (dict(q_tile_shape=(8, 8)), ValueError, r"q_tile_shape=\(8, 8\) given without kv_tile_shape"),
    (dict(kv_tile_shape=(8, 8)), ValueError, r"kv_tile_shape=\(8, 8\) given without q_tile_shape"),
    (dict(q_tile_shape=(8,), kv_tile_shape=(8, 8)), ValueError, r"q_tile_shape=\(8,\) has 1 entries, expected 2"),
    (dict(q_tile_shape=(8, 8), kv_tile_shape=(8, 0)), ValueError, r"kv_tile_shape=\(8, 0\): every entry must be >= 1"),
    (dict(q_tile_shape=64, kv_tile_shape=(8, 8)), TypeError, r"q_tile_shape=64 must be a tuple of 2 ints"),
    (dict(q_tile_shape=(8, 8.0), kv_tile_shape=(8, 8)), TypeError, r"q_tile_shape=\(8, 8\.0\): every entry must be int"),
    # extra KV tokens
    (dict(additional_keys=t(1, 3, 2, 16)), ValueError, r"additional_keys given without additional_values"),
    (dict(additional_values=t(1, 3, 2, 8)), ValueError, r"additional_values given without additional_keys"),
    (dict(additional_keys="k", additional_values=t(1, 3, 2, 8)), TypeError, r"additional_keys must be a torch\.Tensor, got str"),
    (dict(additional_keys=t(3, 2, 16), additional_values=t(1, 3, 2, 8)), ValueError, r"additional_keys has rank 3"),
    (dict(additional_keys=t(1, 3, 2, 16, dtype=torch.float16), additional_values=t(1, 3, 2, 8)), TypeError, r"additional_keys\.dtype=torch\.float16 differs"),
    (dict(additional_keys=t(1, 0, 2, 16), additional_values=t(1, 0, 2, 8)), ValueError, r"additional_keys is empty"),
    (dict(additional_keys=t(1, 3, 4, 16), additional_values=t(1, 3, 2, 8)), ValueError, r"additional_keys shape \(1, 3, 4, 16\) must be \[B, N_extra, H_kv, D\] = \(1, 3, 2, 16\)"),
    (dict(additional_keys=t(1, 3, 2, 16), additional_values=t(1, 4, 2, 8)), ValueError, r"additional_values shape \(1, 4, 2, 8\) must be .* = \(1, 3, 2, 8\)"),
    (dict(additional_keys=t(2, 3, 2, 16), additional_values=t(2, 3, 2, 8)), ValueError, r"additional_keys shape \(2, 3, 2, 16\) must be"),
    (dict(additional_keys=t(1, 3, 2, 16), additional_values=t(1, 3, 2, 16)), ValueError, r"additional_values shape \(1, 3, 2, 16\)"),
    # dispatch
    (dict(backend="cutlass-fna"), ValueError, r"backend='cutlass-fna' is not one of \['auto', 'sm100', 'sm90', 'reference'\]"),
    (dict(backend=None), TypeError, r"backend must be a str, got None"),
    (dict(return_lse=1), TypeError, r"return_lse must be a bool, got 1"),
]


@pytest.mark.parametrize("overrides,exc,pattern", CASES, ids=[c[2][:40] for c in CASES])
def test_bad_argument(overrides, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call(**overrides)


@pytest.mark.parametrize("overrides,exc,pattern", CASES[2:16], ids=[c[2][:40] for c in CASES[2:16]])
def test_torch_op_validates_too(overrides, exc, pattern):
    """Direct callers of torch.ops.gna_cute.attention get the same errors (the schema itself
    rejects non-tensors)."""
    args = dict(q=Q2, k=K2, v=V2) | overrides
    with pytest.raises(exc, match=pattern):
        torch.ops.gna_cute.attention(args["q"], args["k"], args["v"], [3, 3], [1, 1], [1, 1], [False, False])


def test_device_mismatch_is_named():
    meta = torch.empty(1, 8, 6, 2, 16, device="meta")
    with pytest.raises(ValueError, match=re.escape("k.device=meta differs from q.device=cpu")):
        call(k=meta)


def test_explicit_kernel_backend_on_cpu_says_why():
    with pytest.raises(ValueError, match=r"backend='sm90' cannot run this problem: .+"):
        call(backend="sm90")


def test_na2d_rejects_wrong_rank():
    with pytest.raises(ValueError, match=r"na2d expects query of rank 5 .* got rank 4"):
        gna_cute.na2d(t(1, 8, 2, 16), t(1, 8, 2, 16), t(1, 8, 2, 16), 3)


# Several faults at once: the first in the documented check order is the one reported.
ORDER_CASES = [
    (dict(q=t(0, 8, 6, 4, 16, dtype=torch.int32)), ValueError, r"q is empty"),  # before q's dtype
    (dict(k=t(2, 8, 6, 2, 16, dtype=torch.float16)), TypeError, r"k\.dtype=torch\.float16"),  # before k's batch
    (dict(k=t(2, 8, 6, 2, 32), v=t(1, 8, 6, 3, 8)), ValueError, r"k batch/spatial dims \(2, 8, 6\)"),
    (dict(k=t(1, 8, 6, 2, 32), v=t(1, 8, 6, 3, 8)), ValueError, r"k head dim 32"),  # before v's heads
    (dict(v=t(1, 8, 0, 2, 8), kernel_size=0), ValueError, r"v is empty"),  # tensors before kernel_size
    (dict(kernel_size=0, scale="x", backend=None), ValueError, r"kernel_size=\(0, 0\) must be >= 2"),
    (dict(scale="x", backend=None), TypeError, r"scale must be a float or None, got 'x'"),
]


@pytest.mark.parametrize("overrides,exc,pattern", ORDER_CASES, ids=[c[2][:40] for c in ORDER_CASES])
def test_first_fault_in_check_order_is_reported_before_dispatch(overrides, exc, pattern, monkeypatch):
    def no_dispatch(*args, **kwargs):
        raise AssertionError("bad input reached the backend chain")

    monkeypatch.setattr(gna_cute.api, "choose", no_dispatch)
    with pytest.raises(exc, match=pattern):
        call(**overrides)
