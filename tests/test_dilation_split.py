"""CPU: running dims whose dilation does not divide their size group by group (kernels/dilation_split).

The split is executed here with the reference backend standing in for the kernel, and the result
is compared with the brute force written from the semantics; the views are checked to be zero-copy
and TMA-aligned, the sub-problems' sizes against a count done here, and the assembled tile counts
against the simulator's counts of the whole problem.
"""

from __future__ import annotations

import contextlib
import math
import random

import numpy as np
import pytest
import torch

from brute_force import attention_fp64, neighborhood_mask
from gna_cute import sim
from gna_cute.backends import AttentionArgs
from gna_cute.kernels import config, cute_tensors, dilation_split, interface
from gna_cute.params import GNAParams
from gna_cute.reference import reference_forward


def _random_problem(rng: random.Random, rank: int) -> dict:
    """Per dim: window, stride, dilation (>= 2 in at least one dim with L % d != 0), causal, size."""
    max_tokens = {1: 60, 2: 160, 3: 200}[rank]
    for _ in range(1000):
        ks, st, dl, ca, sp = [], [], [], [], []
        for _ in range(rank):
            w = rng.randint(2, 4)
            d = rng.choice([1, 2, 3])
            n = w * d + rng.randint(0, 2 * d + 3)
            ks.append(w)
            st.append(rng.randint(1, w))
            dl.append(d)
            ca.append(rng.random() < 0.4)
            sp.append(n)
        if any(n % d for n, d in zip(sp, dl)) and math.prod(sp) <= max_tokens:
            return dict(spatial=tuple(sp), kernel_size=tuple(ks), stride=tuple(st), dilation=tuple(dl),
                        is_causal=tuple(ca))  # fmt: skip
    raise AssertionError("no problem drawn")


def _problems() -> list[dict]:
    rng = random.Random(5)
    return [_random_problem(rng, 1 + i % 3) for i in range(12)]


PROBLEMS = _problems()


def _args(p: dict, heads: int = 4, kv_heads: int = 2, dim: int = 8, dtype=torch.float32, seed: int = 0,
          extra: int = 0) -> AttentionArgs:  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    shape = (2, *p["spatial"])
    q = torch.randn(*shape, heads, dim, generator=gen).to(dtype)
    k = torch.randn(*shape, kv_heads, dim, generator=gen).to(dtype)
    v = torch.randn(*shape, kv_heads, dim, generator=gen).to(dtype)
    ek = ev = None
    if extra:
        ek = torch.randn(2, extra, kv_heads, dim, generator=gen).to(dtype)
        ev = torch.randn(2, extra, kv_heads, dim, generator=gen).to(dtype)
    params = GNAParams.make(p["spatial"], p["kernel_size"], p["stride"], p["dilation"], p["is_causal"])
    return AttentionArgs(q, k, v, params, dim**-0.5, ek, ev)


def _run_split_with_reference(args: AttentionArgs) -> tuple[torch.Tensor, torch.Tensor]:
    """What the host layer does with the kernel, with the reference backend as the per-launch executor."""
    out = torch.full((*args.q.shape[:-1], args.v.shape[-1]), float("nan"), dtype=args.q.dtype)
    lse = torch.full(args.q.shape[:-1], float("nan"), dtype=torch.float32)
    for part in dilation_split.split(args, out, lse):
        a = part.args
        o, l = reference_forward(a.q, a.k, a.v, a.params, a.scale, a.additional_keys, a.additional_values)
        part.out.copy_(o)
        part.lse.copy_(l)
    return out, lse


@pytest.mark.parametrize("p", PROBLEMS, ids=[str(i) for i in range(len(PROBLEMS))])
def test_split_with_reference_matches_brute_force(p: dict) -> None:
    args = _args(p, extra=2 if p is PROBLEMS[0] else 0)
    out, lse = _run_split_with_reference(args)
    mask = neighborhood_mask(p["spatial"], p["kernel_size"], p["stride"], p["dilation"], p["is_causal"])
    truth_out, truth_lse = attention_fp64(args.q, args.k, args.v, mask, args.scale,
                                          args.additional_keys, args.additional_values)  # fmt: skip
    torch.testing.assert_close(out.double(), truth_out, rtol=0, atol=1e-5)
    torch.testing.assert_close(lse.double(), truth_lse, rtol=0, atol=1e-5)


def test_split_dims_and_launch_count() -> None:
    params = GNAParams.make((10, 12, 9), (2, 3, 3), dilation=(3, 2, 2))
    assert dilation_split.split_dims(params) == (0, 2)
    assert dilation_split.kernel_dilation(params) == (1, 2, 1)
    assert dilation_split.num_launches(params) == 6
    divisible = GNAParams.make((12, 8), 3, dilation=(3, 2))
    assert dilation_split.split_dims(divisible) == ()
    assert dilation_split.num_launches(divisible) == 1


def test_nothing_to_split_is_one_part_on_the_tensors_themselves() -> None:
    args = _args(dict(spatial=(12, 8), kernel_size=(3, 3), stride=(1, 2), dilation=(3, 2), is_causal=(False, True)))
    out = torch.empty(args.q.shape)
    lse = torch.empty(args.q.shape[:-1])
    (part,) = dilation_split.split(args, out, lse)
    assert part.args is args and part.out is out and part.lse is lse
    assert part.groups == (None, None)


@pytest.mark.parametrize("p", PROBLEMS[:6], ids=[str(i) for i in range(6)])
def test_views_are_zero_copy_and_sub_params_right(p: dict) -> None:
    args = _args(p, heads=3, kv_heads=1, dim=32, dtype=torch.float16)
    out = torch.zeros((*args.q.shape[:-1], args.v.shape[-1]), dtype=args.q.dtype)
    lse = torch.zeros(args.q.shape[:-1])
    parts = dilation_split.split(args, out, lse)
    spatial, dilation = p["spatial"], p["dilation"]
    split = [i for i, (n, d) in enumerate(zip(spatial, dilation)) if n % d]
    assert len(parts) == math.prod(dilation[i] for i in split)
    for part in parts:
        for i, g in enumerate(part.groups):
            assert (g is None) == (i not in split)
        for name, view, whole in (("q", part.args.q, args.q), ("k", part.args.k, args.k), ("v", part.args.v, args.v),
                                  ("out", part.out, out), ("lse", part.lse, lse)):  # fmt: skip
            offset = sum(g * whole.stride(1 + i) for i, g in enumerate(part.groups) if g is not None)
            assert view.untyped_storage().data_ptr() == whole.untyped_storage().data_ptr(), name
            assert view.data_ptr() == whole.data_ptr() + offset * whole.element_size(), name
            for i in range(len(spatial)):
                g = part.groups[i]
                assert view.stride(1 + i) == whole.stride(1 + i) * (1 if g is None else dilation[i]), name
                assert view.shape[1 + i] == (spatial[i] if g is None else len(range(g, spatial[i], dilation[i])))
            if name != "lse":  # what the kernels' TMA needs of every q/k/v/out view
                assert cute_tensors.layout_problem(name, view) is None
        sub = part.args.params
        assert sub.spatial_shape == tuple(part.out.shape[1:-2])
        assert sub.dilation == tuple(1 if g is not None else d for g, d in zip(part.groups, dilation))
        assert (sub.kernel_size, sub.stride, sub.is_causal) == (p["kernel_size"], p["stride"], p["is_causal"])
        assert config.dilation_problem(sub.spatial_shape, sub.dilation) is None
        part.lse.add_(1.0)  # every output position belongs to exactly one launch
    assert torch.equal(lse, torch.ones_like(lse))


@pytest.mark.parametrize("p", PROBLEMS, ids=[str(i) for i in range(len(PROBLEMS))])
def test_assembled_counts_equal_the_whole_problems(p: dict) -> None:
    """Per-launch counts (the simulator standing in for the kernel) placed into the contract layout."""
    args = _args(p)
    rank = args.params.rank
    q_tile, kv_tile = (2,) * rank, (3,) * rank  # small tiles: several per group, partial ones too
    expected = sim.tile_counts(args.params, q_tile, kv_tile)
    total = np.full(interface.counts_shape(args.params, q_tile), 0, dtype=np.int64)
    assert total.shape == expected.shape
    out = torch.empty((*args.q.shape[:-1], args.v.shape[-1]))
    for part in dilation_split.split(args, out, torch.empty(args.q.shape[:-1])):
        part_counts = sim.tile_counts(part.args.params, q_tile, kv_tile)
        assert part_counts.shape == interface.counts_shape(part.args.params, q_tile)
        dilation_split.place_counts(total, part, part_counts)
    np.testing.assert_array_equal(total, expected)


def test_host_layer_runs_undivided_dilation_with_dilation_one_there() -> None:
    p = dict(spatial=(17, 12), kernel_size=(3, 3), stride=(2, 1), dilation=(2, 3), is_causal=(True, False))
    args = _args(p, dim=64, dtype=torch.float16)
    assert interface.problem_reason(args, 90) is None
    assert interface.problem_reason(args, 100) is None
    assert interface.make_config(args, 90).dilation == (1, 3)


def test_bad_groups_name_the_argument() -> None:
    params = GNAParams.make((10,), 3, dilation=3)
    with pytest.raises(ValueError, match="groups"):
        dilation_split.group_params(params, (3,))
    with pytest.raises(ValueError, match="groups"):
        dilation_split.group_params(params, (0, 0))


class _KernelStandIn:
    """Behaves like a compiled kernel for ``cfg`` on CPU: reads the tensors it is handed (views),
    computes with the reference backend, writes out/lse in place and, if asked, the simulator's counts."""

    def __init__(self, cfg) -> None:
        self.cfg = cfg
        self.calls = 0

    def __call__(self, q, k, v, out, lse, counts, scale_log2) -> None:
        cfg = self.cfg
        self.calls += 1
        for name, t in (("q", q), ("k", k), ("v", v), ("out", out)):
            assert cute_tensors.layout_problem(name, t) is None
        params = GNAParams.make(tuple(q.shape[1:-2]), cfg.kernel_size, cfg.stride, cfg.dilation, cfg.is_causal)
        assert config.dilation_problem(params.spatial_shape, params.dilation) is None
        o, l = reference_forward(q, k, v, params, scale_log2 / math.log2(math.e))
        out.copy_(o)
        lse.copy_(l)
        if cfg.count_tiles:
            counts.copy_(torch.from_numpy(sim.tile_counts(params, cfg.q_tile_shape, cfg.kv_tile_shape)))


@pytest.mark.parametrize("p", PROBLEMS[1:5], ids=[str(i) for i in range(1, 5)])
def test_host_layer_launches_every_group(p: dict, monkeypatch) -> None:
    """interface.forward / tile_counts end to end on CPU, a stand-in kernel per compiled config."""
    kernels = {}

    def compiled(cfg):
        return kernels.setdefault(cfg, _KernelStandIn(cfg))

    monkeypatch.setattr(interface, "plan", interface.problem_plan)  # CPU tensors: skip the device check
    monkeypatch.setattr(interface, "compiled_kernel", compiled)
    monkeypatch.setattr(interface.cute_tensors, "use_tvm_ffi", lambda: True)  # kernels take torch tensors
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    args = _args(p, heads=4, kv_heads=2, dim=32, dtype=torch.float16)
    out, lse = interface.forward(args, 90)
    (kernel,) = kernels.values()  # one compiled config serves every launch
    assert kernel.calls == dilation_split.num_launches(args.params) > 1
    mask = neighborhood_mask(p["spatial"], p["kernel_size"], p["stride"], p["dilation"], p["is_causal"])
    truth_out, truth_lse = attention_fp64(args.q, args.k, args.v, mask, args.scale)
    torch.testing.assert_close(out.double(), truth_out, rtol=0, atol=2e-3)
    torch.testing.assert_close(lse.double(), truth_lse, rtol=0, atol=1e-4)
    counts = interface.tile_counts(args, 90)
    cfg = interface.make_config(args, 90, count_tiles=True)
    assert counts.dtype == np.int64
    np.testing.assert_array_equal(counts, sim.tile_counts(args.params, cfg.q_tile_shape, cfg.kv_tile_shape))
