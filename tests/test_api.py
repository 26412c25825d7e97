"""Public API: gna_cute.attention, na1d/2d/3d, and the backend chain (checked against brute force)."""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch
from brute_force import attention_fp64, neighborhood_mask

import gna_cute
from gna_cute import backends, merge
from gna_cute.backends import AttentionArgs, Backend
from gna_cute.reference import reference_forward


def rand(gen, *shape, dtype=torch.float32):
    return torch.randn(*shape, generator=gen).to(dtype)


def brute(q, k, v, ks, st, dl, ca, scale, ek=None, ev=None):
    mask = neighborhood_mask(tuple(q.shape[1:-2]), ks, st, dl, ca)
    return attention_fp64(q, k, v, mask, scale, ek, ev)


@pytest.fixture(autouse=True)
def _quiet_fallback():
    """The CPU fallback warning is tested explicitly below; silence it elsewhere."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


PROBLEMS = [
    # (q shape, kv heads, D_v, kernel_size, stride, dilation, is_causal, extra tokens)
    ((2, 23, 4, 8), 2, 8, 5, 2, 2, True, 0),
    ((1, 9, 7, 4, 16), 1, 4, (3, 4), (3, 2), (2, 1), (False, True), 3),
    ((1, 5, 6, 4, 2, 8), 2, 8, (2, 3, 4), (1, 3, 2), 1, (True, False, False), 0),
]


@pytest.mark.parametrize("q_shape,kv_heads,dim_v,ks,st,dl,ca,n_extra", PROBLEMS)
def test_attention_matches_brute_force(q_shape, kv_heads, dim_v, ks, st, dl, ca, n_extra):
    gen = torch.Generator().manual_seed(0)
    b, *spatial, _, d = q_shape
    q = rand(gen, *q_shape)
    k = rand(gen, b, *spatial, kv_heads, d)
    v = rand(gen, b, *spatial, kv_heads, dim_v)
    ek = rand(gen, b, n_extra, kv_heads, d) if n_extra else None
    ev = rand(gen, b, n_extra, kv_heads, dim_v) if n_extra else None
    out, lse = gna_cute.attention(
        q, k, v, ks, st, dl, ca, return_lse=True, additional_keys=ek, additional_values=ev
    )
    want_out, want_lse = brute(q, k, v, ks, st, dl, ca, d**-0.5, ek, ev)  # default scale
    torch.testing.assert_close(out.double(), want_out, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(lse.double(), want_lse, atol=2e-5, rtol=1e-5)
    only_out = gna_cute.attention(q, k, v, ks, st, dl, ca, additional_keys=ek, additional_values=ev)
    assert isinstance(only_out, torch.Tensor)
    torch.testing.assert_close(only_out, out)


def test_explicit_scale_and_half_dtype():
    gen = torch.Generator().manual_seed(1)
    q, k, v = (rand(gen, 1, 12, 10, 2, 8, dtype=torch.bfloat16) for _ in range(3))
    out, lse = gna_cute.attention(q, k, v, (5, 3), stride=(2, 3), scale=0.25, return_lse=True)
    assert out.dtype == torch.bfloat16 and lse.dtype == torch.float32
    want_out, want_lse = brute(q, k, v, (5, 3), (2, 3), 1, False, 0.25)
    torch.testing.assert_close(out.double(), want_out, atol=1e-4, rtol=2.0**-7)
    torch.testing.assert_close(lse.double(), want_lse, atol=1e-4, rtol=1e-5)


# NATTEN 0.21 ``natten.na{1,2,3}d`` parameter names, in order.
NATTEN_PARAMS = [
    "query", "key", "value", "kernel_size", "stride", "dilation", "is_causal", "scale",
    "additional_keys", "additional_values", "attention_kwargs", "backend", "q_tile_shape",
    "kv_tile_shape", "backward_q_tile_shape", "backward_kv_tile_shape", "backward_kv_splits",
    "backward_use_pt_reduction", "run_persistent_kernel", "kernel_schedule", "torch_compile",
    "return_lse",
]  # fmt: skip


@pytest.mark.parametrize("fn", [gna_cute.na1d, gna_cute.na2d, gna_cute.na3d])
def test_natten_signature(fn):
    assert list(inspect.signature(fn).parameters) == NATTEN_PARAMS


@pytest.mark.parametrize(
    "fn,shape",
    [(gna_cute.na1d, (1, 20, 2, 8)), (gna_cute.na2d, (1, 7, 9, 2, 8)), (gna_cute.na3d, (1, 4, 5, 6, 2, 8))],
)
def test_natten_entry_points(fn, shape):
    gen = torch.Generator().manual_seed(2)
    q, k, v = (rand(gen, *shape) for _ in range(3))
    rank = len(shape) - 3
    out, lse = fn(
        query=q, key=k, value=v, kernel_size=3, stride=2, dilation=1, is_causal=(True,) + (False,) * (rank - 1),
        scale=0.5, backend=None, torch_compile=False, return_lse=True,
    )  # fmt: skip
    want_out, want_lse = brute(q, k, v, 3, 2, 1, (True,) + (False,) * (rank - 1), 0.5)
    torch.testing.assert_close(out.double(), want_out, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(lse.double(), want_lse, atol=2e-5, rtol=1e-5)


def _args(gen, extra: int = 0) -> AttentionArgs:
    q, k, v = (rand(gen, 1, 11, 9, 2, 4) for _ in range(3))
    ek = rand(gen, 1, extra, 2, 4) if extra else None
    ev = rand(gen, 1, extra, 2, 4) if extra else None
    params = gna_cute.GNAParams.make((11, 9), (4, 3), (2, 1), (1, 2), (False, True))
    return AttentionArgs(q, k, v, params, 0.5, ek, ev)


def test_backend_chain_order_and_reasons():
    assert backends.BACKEND_NAMES == ("sm100", "sm90", "reference")
    reasons = backends.why_not(_args(torch.Generator().manual_seed(3)))
    assert reasons["reference"] is None
    if not torch.cuda.is_available():
        assert reasons["sm90"] and reasons["sm100"]  # a human-readable reason, not None


def test_auto_fallback_warns_once(monkeypatch):
    refuser = Backend("fake", lambda a: "fake refuses: testing", lambda a: None, lambda: None)
    monkeypatch.setattr(backends, "BACKENDS", (refuser, backends.REFERENCE))
    monkeypatch.setattr(backends, "_warned_fallback", False)
    args = _args(torch.Generator().manual_seed(4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert backends.choose(args).backend is backends.REFERENCE
        assert backends.choose(args).backend is backends.REFERENCE
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "fake refuses: testing" in messages[0]
    with pytest.raises(ValueError, match="backend='fake' cannot run this problem: fake refuses: testing"):
        backends.choose(args, "fake")


def test_auto_picks_first_that_runs(monkeypatch):
    def fail(args):
        raise AssertionError("a refusing backend must not run")

    runner = Backend("runner", lambda a: None, lambda a: ("ran", None), lambda: None)
    refuser = Backend("refuser", lambda a: "no", fail, lambda: None)
    monkeypatch.setattr(backends, "BACKENDS", (refuser, runner, backends.REFERENCE))
    assert backends.run(_args(torch.Generator().manual_seed(5))) == ("ran", None)


@pytest.mark.parametrize("chunk_rows", [7, 1 << 14])
def test_extra_kv_merged_outside_a_kernel_that_refuses_them(monkeypatch, chunk_rows):
    """A backend refusing only extra KV runs the neighborhood; the dispatcher merges the rest by LSE."""
    monkeypatch.setattr(merge, "_CHUNK_ROWS", chunk_rows)  # several chunks of the dense part too
    calls = []

    def forward(args: AttentionArgs):
        assert not args.has_extra_kv
        calls.append(1)
        return reference_forward(args.q, args.k, args.v, args.params, args.scale)

    def can_run(args: AttentionArgs):
        return "no extra KV tokens" if args.has_extra_kv else None

    kernel = Backend("kern", can_run, forward, lambda: None)
    monkeypatch.setattr(backends, "BACKENDS", (kernel, backends.REFERENCE))
    args = _args(torch.Generator().manual_seed(6), extra=3)
    choice = backends.choose(args)
    assert choice.backend is kernel and choice.merge_extra
    out, lse = backends.run(args)
    assert calls
    p = args.params
    want_out, want_lse = brute(
        args.q, args.k, args.v, p.kernel_size, p.stride, p.dilation, p.is_causal, 0.5,
        args.additional_keys, args.additional_values,
    )  # fmt: skip
    torch.testing.assert_close(out.double(), want_out, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(lse.double(), want_lse, atol=2e-5, rtol=1e-5)


def test_kernel_backends_import_lazily():
    """A kernel backend never breaks the chain: it answers with a reason (or None) on any machine."""
    for b in backends.BACKENDS:
        reason = b.available()
        assert reason is None or (isinstance(reason, str) and reason)


def test_reference_backend_explicit_does_not_warn(monkeypatch):
    monkeypatch.setattr(backends, "_warned_fallback", False)
    gen = torch.Generator().manual_seed(7)
    q = rand(gen, 1, 16, 2, 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gna_cute.attention(q, q, q, 4, backend="reference")
    assert not caught


def test_gradient_request_is_refused_not_silently_dropped():
    """Forward only: an input that needs a gradient goes through the op, whose backward raises."""
    q, k, v = (torch.randn(1, 8, 2, 4, requires_grad=True) for _ in range(3))
    out = gna_cute.attention(q, k, v, 3)
    assert out.requires_grad
    with pytest.raises(RuntimeError, match="autograd"):
        out.sum().backward()
    with torch.no_grad():  # no gradient asked for: the eager path, same numbers
        plain = gna_cute.attention(q, k, v, 3)
    torch.testing.assert_close(plain, out.detach())


def test_choice_runs_its_prepared_launch_only_for_its_own_args(monkeypatch):
    """The launch a check prepared serves the call it checked; other args go through forward."""
    ran = []

    def prepare(args: AttentionArgs):
        return lambda: ran.append(("prepared", args)) or ("prepared", None)

    def forward(args: AttentionArgs):
        ran.append(("forward", args))
        return "forward", None

    kernel = Backend("kern", lambda a: None, forward, lambda: None, prepare)
    monkeypatch.setattr(backends, "BACKENDS", (kernel, backends.REFERENCE))
    args, other = _args(torch.Generator().manual_seed(8)), _args(torch.Generator().manual_seed(9))
    choice = backends.choose(args)
    assert backends.execute(choice, args) == ("prepared", None)
    assert backends.execute(choice, other) == ("forward", None)
    assert ran == [("prepared", args), ("forward", other)]
