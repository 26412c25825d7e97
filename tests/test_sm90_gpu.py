"""SM 9.x: the Hopper kernel against the reference over a seeded sweep, its tile counts against the
simulator, and its use under CUDA graphs and torch.compile.

Every kernel configuration the module needs is compiled once, up front, in parallel processes
(``interface.warm``) into the disk cache; the tests then load them.  See ``kernel_sweep`` for the
sweep and the accuracy rule.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import kernel_sweep as ks
from conftest import requires_sm90
from gna_cute import backends, sim
from gna_cute.kernels import config, interface

pytestmark = requires_sm90

ARCH = 90


def _tile_pairs(rank: int, head_dim: int):
    return config.supported_tile_shapes(ARCH, rank, head_dim)


RANDOM = ks.random_cases(seed=2024, n_static=42, per_static=7, tile_pairs=_tile_pairs)
WORKED = ks.worked_example_cases()
HEADLINE = ks.headline_cases()
CASES = RANDOM + WORKED
# tile counts: the first problems of the first six random configurations, and the 2D headline
COUNT_CASES = [c for i, c in enumerate(RANDOM) if i % 7 < 2 and i < 42] + [
    dataclasses.replace(c, heads=1) for c in HEADLINE if c.static.rank == 2
]


def _config(case: ks.Case, count_tiles: bool = False):
    return interface.make_config(case.args("meta"), ARCH, count_tiles)


@pytest.fixture(scope="session")
def compile_errors() -> dict:
    """Compile every configuration of this module (parallel, into the disk cache): config -> error."""
    configs = [_config(c) for c in CASES + HEADLINE] + [_config(c, True) for c in COUNT_CASES]
    configs = list(dict.fromkeys(configs))
    errors = interface.warm(configs)
    return {cfg: err for cfg, err in zip(configs, errors) if err is not None}


def _run(case: ks.Case, compile_errors: dict, count_tiles: bool = False):
    args = case.args()
    cfg = interface.make_config(args, ARCH, count_tiles)
    if cfg in compile_errors:
        pytest.fail(f"compile failed for {cfg}: {compile_errors[cfg]!r}")
    assert interface.can_run_sm90(args) is None
    return args


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_matches_reference(case: ks.Case, compile_errors: dict) -> None:
    args = _run(case, compile_errors)
    out, lse = interface.forward_sm90(args)
    assert out.shape == args.q.shape and out.dtype == args.q.dtype
    assert lse.shape == args.q.shape[:-1] and lse.dtype == torch.float32
    errors = ks.measure(case, args, out, lse)
    assert errors.ok(), errors


@pytest.mark.parametrize("case", HEADLINE, ids=[c.id for c in HEADLINE])
def test_headline_shapes(case: ks.Case, compile_errors: dict) -> None:
    """Full-size problems (2 heads): sampled rows against fp64, no full fp32 reference (too slow)."""
    args = _run(case, compile_errors)
    out, lse = interface.forward_sm90(args)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    errors = ks.measure(case, args, out, lse, full_reference=False)
    assert errors.ok(), errors


@pytest.mark.parametrize("case", COUNT_CASES, ids=[c.id for c in COUNT_CASES])
def test_tile_counts_match_simulator(case: ks.Case, compile_errors: dict) -> None:
    args = _run(case, compile_errors, count_tiles=True)
    cfg = interface.make_config(args, ARCH, count_tiles=True)
    counts = interface.tile_counts_sm90(args)
    expected = sim.tile_counts(args.params, cfg.q_tile_shape, cfg.kv_tile_shape)
    assert counts.dtype == np.int64 and counts.shape == expected.shape
    np.testing.assert_array_equal(counts, expected)


def test_auto_picks_sm90(compile_errors: dict) -> None:
    args = _run(CASES[1], compile_errors)
    assert backends.choose(args).backend.name == "sm90"


def _op(args, backend: str = "sm90"):
    p = args.params
    return torch.ops.gna_cute.attention(
        args.q, args.k, args.v, list(p.kernel_size), list(p.stride), list(p.dilation), list(p.is_causal),
        args.scale, None, None, backend, None, None,
    )  # fmt: skip


def test_cuda_graph_capture_and_replay(compile_errors: dict) -> None:
    case = CASES[1]
    args = _run(case, compile_errors)
    _op(args)  # compile / load outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, lse = _op(args)
    for seed in (1, 2):
        fresh = dataclasses.replace(case, seed=seed).args()
        for static, new in ((args.q, fresh.q), (args.k, fresh.k), (args.v, fresh.v)):
            static.copy_(new)
        graph.replay()
        eager_out, eager_lse = _op(fresh)
        torch.cuda.synchronize()
        torch.testing.assert_close(out, eager_out, rtol=0, atol=0)
        torch.testing.assert_close(lse, eager_lse, rtol=0, atol=0)


def test_torch_compile_fullgraph(compile_errors: dict) -> None:
    case = CASES[1]
    args = _run(case, compile_errors)

    @torch.compile(fullgraph=True)
    def f(q, k, v):
        p = args.params
        out, lse = torch.ops.gna_cute.attention(
            q, k, v, list(p.kernel_size), list(p.stride), list(p.dilation), list(p.is_causal),
            args.scale, None, None, "sm90", None, None,
        )  # fmt: skip
        return out * 2, lse

    out, lse = f(args.q, args.k, args.v)
    eager_out, eager_lse = _op(args)
    torch.testing.assert_close(out, eager_out * 2, rtol=0, atol=0)
    torch.testing.assert_close(lse, eager_lse, rtol=0, atol=0)
