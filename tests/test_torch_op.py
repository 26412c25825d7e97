"""torch.ops.gna_cute.attention: the fake implementation and torch.compile(fullgraph=True)."""

from __future__ import annotations

import shutil
import warnings

import pytest
import torch
from brute_force import attention_fp64, neighborhood_mask
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

import gna_cute


@pytest.fixture(autouse=True)
def _quiet_fallback():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize(
    "q_shape,kv_heads,dim_v,extra",
    [((2, 33, 4, 16), 1, 16, 0), ((1, 9, 10, 6, 32), 2, 8, 5), ((1, 4, 5, 6, 2, 8), 2, 24, 0)],
)
def test_fake_shapes_and_dtypes(dtype, q_shape, kv_heads, dim_v, extra):
    rank = len(q_shape) - 3
    b, *spatial, heads, d = q_shape
    with FakeTensorMode():
        q = torch.empty(q_shape, dtype=dtype)
        k = torch.empty(b, *spatial, kv_heads, d, dtype=dtype)
        v = torch.empty(b, *spatial, kv_heads, dim_v, dtype=dtype)
        ek = torch.empty(b, extra, kv_heads, d, dtype=dtype) if extra else None
        ev = torch.empty(b, extra, kv_heads, dim_v, dtype=dtype) if extra else None
        out, lse = torch.ops.gna_cute.attention(q, k, v, [2] * rank, [1] * rank, [1] * rank, [False] * rank, None, ek, ev)
    assert isinstance(out, FakeTensor) and isinstance(lse, FakeTensor)
    assert tuple(out.shape) == (b, *spatial, heads, dim_v) and out.dtype == dtype
    assert tuple(lse.shape) == (b, *spatial, heads) and lse.dtype == torch.float32


def test_fake_validates():
    with FakeTensorMode():
        q = torch.empty(1, 8, 2, 16)
        with pytest.raises(ValueError, match=r"kernel_size=\(9,\) x dilation=\(1,\) must be <= the spatial size"):
            torch.ops.gna_cute.attention(q, q, q, [9], [1], [1], [False])


def test_opcheck():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 7, 6, 2, 4, generator=gen) for _ in range(3))
    torch.library.opcheck(torch.ops.gna_cute.attention.default, (q, k, v, [3, 4], [2, 1], [2, 1], [False, True]))


def _expected(q, k, v, ks, st, dl, ca, scale):
    mask = neighborhood_mask(tuple(q.shape[1:-2]), ks, st, dl, ca)
    return attention_fp64(q, k, v, mask, scale)


NO_CXX = pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None, reason="inductor on CPU needs a C++ compiler")


@pytest.mark.parametrize("compile_backend", ["aot_eager", pytest.param("inductor", marks=NO_CXX)])
def test_compile_fullgraph_torch_op(compile_backend):
    """A function calling the op (plus surrounding ops) compiles as one graph and stays exact."""
    torch._dynamo.reset()

    def f(q, k, v):
        out, lse = torch.ops.gna_cute.attention(q * 2.0, k, v, [3, 4], [1, 2], [2, 1], [False, True], 0.5)
        return out + 1.0, lse

    gen = torch.Generator().manual_seed(1)
    q = torch.randn(2, 8, 6, 4, 8, generator=gen)
    k = torch.randn(2, 8, 6, 2, 8, generator=gen)
    v = torch.randn(2, 8, 6, 2, 4, generator=gen)
    out, lse = torch.compile(f, fullgraph=True, backend=compile_backend)(q, k, v)
    want_out, want_lse = _expected(q * 2.0, k, v, (3, 4), (1, 2), (2, 1), (False, True), 0.5)
    torch.testing.assert_close(out.double(), want_out + 1.0, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(lse.double(), want_lse, atol=2e-5, rtol=1e-5)


def test_compile_fullgraph_public_function():
    """gna_cute.attention itself (checks, then the op) traces without graph breaks."""
    torch._dynamo.reset()

    def f(q, k, v):
        return gna_cute.attention(q, k, v, (3, 4), stride=(1, 2), dilation=(2, 1), is_causal=(False, True), return_lse=True)

    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 8, 6, 2, 8, generator=gen) for _ in range(3))
    out, lse = torch.compile(f, fullgraph=True, backend="aot_eager")(q, k, v)
    want_out, want_lse = _expected(q, k, v, (3, 4), (1, 2), (2, 1), (False, True), 8**-0.5)
    torch.testing.assert_close(out.double(), want_out, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(lse.double(), want_lse, atol=2e-5, rtol=1e-5)


def test_compile_recompiles_for_new_neighborhood():
    """A second neighborhood through the same compiled code stays exact.

    Dynamo makes int-list arguments whose values changed symbolic on a recompile (automatic
    dynamic); the op must specialize them instead of rejecting them (seen on the H100 suite).
    """
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(3)

    def run(kernel_size, spatial):
        rank = len(kernel_size)
        q, k, v = (torch.randn(1, *spatial, 2, 8, generator=gen) for _ in range(3))

        @torch.compile(fullgraph=True, backend="aot_eager")
        def f(q, k, v):
            return torch.ops.gna_cute.attention(
                q, k, v, list(kernel_size), [1] * rank, [1] * rank, [False] * rank, None
            )

        out, lse = f(q, k, v)
        want_out, want_lse = _expected(q, k, v, kernel_size, (1,) * rank, (1,) * rank, (False,) * rank, 8**-0.5)
        torch.testing.assert_close(out.double(), want_out, atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(lse.double(), want_lse, atol=2e-5, rtol=1e-5)

    run((3, 3), (8, 9))
    run((5, 3), (9, 10))
    run((7, 2), (9, 10))
