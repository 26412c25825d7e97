"""CPU: eager calls that repeat a signature reuse its checks and backend choice (``gna_cute.call_cache``).

What must hold: a repeated call computes what a fresh one does, on its own tensors; anything the
checks or the choice read changes the signature (layout, dtype, alignment, the parameters and their
Python types, scale, tiles, backend); entries keep no tensors alive; calls that must not be cached
(autograd, extra KV tokens, launches a backend cannot rebind, a patched backend chain) are not.
The sm90 path is driven on the CPU with the device parts stubbed, to see the launch get the new
call's tensors.
"""

from __future__ import annotations

import contextlib
import gc
import weakref

import pytest
import torch

import gna_cute
from gna_cute import backends, call_cache
from gna_cute.backends import Backend
from gna_cute.kernels import interface


def _qkv(seed: int, shape=(1, 10, 9, 2, 16), dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(shape, generator=g, dtype=dtype) for _ in range(3))


def _counting(monkeypatch) -> dict:
    """Count the checks and backend choices ``gna_cute.attention`` runs."""
    counts = {"check_attention_args": 0, "choose": 0}
    for name in counts:
        real = getattr(gna_cute.api, name)

        def wrapper(*a, _real=real, _name=name, **kw):
            counts[_name] += 1
            return _real(*a, **kw)

        monkeypatch.setattr(gna_cute.api, name, wrapper)
    return counts


def test_a_repeated_signature_skips_checks_and_choice_and_computes_the_same(monkeypatch) -> None:
    counts = _counting(monkeypatch)
    kw = dict(kernel_size=(5, 3), stride=(2, 1), dilation=(1, 2), is_causal=(False, True), return_lse=True)
    gna_cute.attention(*_qkv(0), **kw)
    q, k, v = _qkv(1)
    out, lse = gna_cute.attention(q, k, v, **kw)
    assert counts == {"check_attention_args": 1, "choose": 1}
    call_cache.clear()
    fresh_out, fresh_lse = gna_cute.attention(q, k, v, **kw)
    assert counts == {"check_attention_args": 2, "choose": 2}
    torch.testing.assert_close(out, fresh_out, rtol=0, atol=0)
    torch.testing.assert_close(lse, fresh_lse, rtol=0, atol=0)
    assert gna_cute.attention(q, k, v, **kw)[0] is not out  # a new output every call


def _key(q, k, v, kernel_size=3, stride=1, dilation=1, is_causal=False, scale=None, backend="auto", tiles=(None, None)):
    return call_cache.signature(q, k, v, kernel_size, stride, dilation, is_causal, scale, backend, *tiles)


def test_what_the_checks_read_is_in_the_signature() -> None:
    q, k, v = _qkv(0)
    base = _key(q, k, v)
    assert base == _key(*_qkv(1))  # new values, same signature
    assert base is not None
    different = [
        _key(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)),  # shape and strides
        _key(q.permute(0, 2, 1, 3, 4).contiguous().permute(0, 2, 1, 3, 4), k, v),  # strides only
        _key(*_qkv(0, dtype=torch.float64)),
        _key(torch.empty(q.numel() + 1)[1:].view(q.shape), k, v),  # 4-byte, not 16-byte aligned
        _key(q, k, v, kernel_size=(3, 3)),
        _key(q, k, v, kernel_size=[3, 3]),
        _key(q, k, v, stride=True),  # refused by the checks, unlike stride=1
        _key(q, k, v, is_causal=1),
        _key(q, k, v, scale=0.25),
        _key(q, k, v, scale=1),
        _key(q, k, v, backend="reference"),
        _key(q, k, v, tiles=((2, 4), (2, 4))),
    ]
    assert None not in different and len({base, *different}) == len(different) + 1


def test_a_bad_argument_is_refused_after_a_good_call_with_equal_values() -> None:
    q, k, v = _qkv(0)
    gna_cute.attention(q, k, v, 3, stride=1)
    with pytest.raises(TypeError, match="stride"):
        gna_cute.attention(q, k, v, 3, stride=True)
    with pytest.raises(TypeError, match="return_lse"):
        gna_cute.attention(q, k, v, 3, stride=1, return_lse=1)


def test_entries_keep_no_tensors_alive() -> None:
    q, k, v = _qkv(0)
    gna_cute.attention(q, k, v, 3)
    refs = [weakref.ref(t) for t in (q, k, v)]
    del q, k, v
    gc.collect()
    assert all(r() is None for r in refs)
    assert len(call_cache._ENTRIES) == 1


def test_autograd_and_extra_tokens_are_not_cached(monkeypatch) -> None:
    counts = _counting(monkeypatch)
    q, k, v = _qkv(0)
    extra = torch.randn(1, 3, 2, 16)
    for _ in range(2):
        gna_cute.attention(q, k, v, 3, additional_keys=extra, additional_values=extra)
    assert counts["check_attention_args"] == 2 and not call_cache._ENTRIES
    qg = q.clone().requires_grad_()
    for _ in range(2):
        with pytest.raises(RuntimeError):  # the op's backward refuses; the forward runs through the op
            gna_cute.attention(qg, k, v, 3).sum().backward()
    assert not call_cache._ENTRIES


def test_patched_backend_chain_and_plain_launches_are_not_reused(monkeypatch) -> None:
    counts = _counting(monkeypatch)
    q, k, v = _qkv(0)
    gna_cute.attention(q, k, v, 3)
    ran = []

    def forward(args):
        ran.append(args.q)
        return backends.REFERENCE.forward(args)

    plain = Backend("plain", lambda a: None, forward, lambda: None, lambda args: (lambda: forward(args)))
    monkeypatch.setattr(backends, "BACKENDS", (plain, backends.REFERENCE))
    for seed in (1, 2):
        gna_cute.attention(*_qkv(seed), 3)  # the chain changed: checked and chosen again, every call
    assert counts["choose"] == 3 and len(ran) == 2


def test_the_bound_is_kept(monkeypatch) -> None:
    monkeypatch.setattr(call_cache, "MAX_ENTRIES", 3)
    q, k, v = _qkv(0)
    for w in (2, 3, 4, 5, 6):
        gna_cute.attention(q, k, v, w)
        assert 1 <= len(call_cache._ENTRIES) <= 3


def test_a_cached_kernel_call_launches_on_its_own_tensors(monkeypatch) -> None:
    """sm90 on CPU tensors (device parts stubbed): the second call's launch gets its own q, k, v."""
    launched = []
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    monkeypatch.setattr(interface, "_device_reason", lambda arch, device: None if arch == 90 else "no sm100")
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(interface.cute_tensors, "use_tvm_ffi", lambda: True)
    monkeypatch.setattr(interface, "compiled_kernel", lambda cfg: lambda *a: launched.append(a))
    counts = _counting(monkeypatch)
    calls = [_qkv(seed, dtype=torch.float16, shape=(1, 16, 12, 2, 64)) for seed in (0, 1, 2)]
    for q, k, v in calls:
        out = gna_cute.attention(q, k, v, (5, 3))
        assert out.shape == q.shape
    assert counts == {"check_attention_args": 1, "choose": 1}
    assert len(launched) == 3
    assert all(x is y for a, c in zip(launched, calls) for x, y in zip(a[:3], c))
