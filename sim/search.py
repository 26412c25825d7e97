"""Which strides and tile shapes are worth using for a problem's window.

Enumerates strides per dim x allowed tilings, keeps for each stride its best tiling (highest
tile-wise bound), prunes strides that do not beat every component-wise smaller stride, and
reduces the rest to a Pareto front of (stride size, bound).  Each dim's numbers are cached in
``sim.dims``, so a 3D search costs little more than the outer products.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from math import prod
from typing import Sequence

from gna_cute.params import GNAParams

from .problem import GROUP_MAJOR, Problem, Tiling
from .tiles import TileStats, simulate
from .timemodel import predicted_speedup

#: Windows up to this size get every stride 1..w; larger ones a subset (see stride_candidates).
EXHAUSTIVE_UP_TO = 16

#: Used when ``gna_cute.kernels.config.supported_tile_shapes`` is not there: shapes of 64-256
#: tokens a Hopper/Blackwell forward kernel can plausibly use.
FALLBACK_TILE_SHAPES: dict[int, list[tuple[tuple[int, ...], tuple[int, ...]]]] = {
    1: [((128,), (128,)), ((64,), (128,)), ((128,), (64,)), ((64,), (64,))],
    2: [((16, 8), (16, 8)), ((8, 16), (8, 16)), ((16, 16), (16, 8)), ((16, 16), (8, 16)),
        ((8, 8), (8, 8))],
    3: [((2, 8, 8), (2, 8, 8)), ((4, 4, 8), (4, 4, 8)), ((1, 8, 16), (1, 8, 16)),
        ((4, 8, 4), (4, 8, 4)), ((2, 8, 8), (4, 4, 8))],
}


def stride_candidates(window: int, exhaustive_up_to: int = EXHAUSTIVE_UP_TO) -> list[int]:
    """Strides tried for one dim: all of ``1..window`` for small windows, else 1, ``window``,
    the divisors of ``window`` and the powers of two below it (the strides that can tile the
    window evenly, which are the ones that can make a problem block-sparse)."""
    if not isinstance(window, int) or window < 1:
        raise ValueError(f"window={window!r} must be a positive int")
    if window <= exhaustive_up_to:
        return list(range(1, window + 1))
    out = {1, window} | {s for s in range(1, window + 1) if window % s == 0}
    out |= {1 << k for k in range(window.bit_length()) if 1 << k <= window}
    return sorted(out)


def allowed_tilings(rank: int, arch: int = 90, head_dim: int = 128) -> list[Tiling]:
    """The kernel's published tile shapes for ``arch``, else (none published for this arch, rank
    and head dim) ``FALLBACK_TILE_SHAPES``."""
    try:
        from gna_cute.kernels.config import supported_tile_shapes
    except ImportError:
        shapes = []
    else:
        shapes = supported_tile_shapes(arch, rank, head_dim)
    shapes = shapes or FALLBACK_TILE_SHAPES.get(rank, [])
    return [Tiling(tuple(q), tuple(kv)) for q, kv in shapes]


def default_tiling(rank: int, arch: int = 90, head_dim: int = 128) -> Tiling:
    """The kernel's default tiling if it publishes one, else the first fallback shape."""
    try:
        from gna_cute.kernels.config import default_tile_shapes
    except ImportError:
        shapes = None
    else:
        shapes = default_tile_shapes(arch, rank, head_dim)
    if shapes is None:
        if rank not in FALLBACK_TILE_SHAPES:
            raise ValueError(f"no default tiling for rank {rank}: give --q-tile and --kv-tile")
        shapes = FALLBACK_TILE_SHAPES[rank][0]
    q, kv = shapes
    return Tiling(tuple(q), tuple(kv))


@dataclass(frozen=True)
class SearchRow:
    """One stride with its best tiling."""

    stride: tuple[int, ...]
    tiling: Tiling
    stats: TileStats
    predicted_speedup: float  # uncalibrated time model, dense / GNA on the same tiling
    block_sparse_tiling: Tiling | None  # a tiling making this stride perfectly block-sparse

    @property
    def bound(self) -> float:
        return self.stats.tile_bound


@dataclass(frozen=True)
class SearchResult:
    rows: tuple[SearchRow, ...]  # every stride tried, in (product, stride) order
    kept: tuple[SearchRow, ...]  # not beaten by a component-wise smaller stride
    pareto: tuple[SearchRow, ...]  # strictly better bound than every stride earlier in order
    block_sparse: SearchRow | None  # smallest stride that is perfectly block-sparse


def _order(stride: tuple[int, ...]) -> tuple:
    return (prod(stride), stride)


def _smaller(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """``a`` is component-wise <= ``b`` and differs."""
    return a != b and all(x <= y for x, y in zip(a, b))


def prune(rows: Sequence[SearchRow]) -> list[SearchRow]:
    """Rows whose bound is strictly above that of every component-wise smaller stride."""
    return [r for r in rows
            if all(r.bound > o.bound for o in rows if _smaller(o.stride, r.stride))]


def pareto(rows: Sequence[SearchRow]) -> list[SearchRow]:
    """Rows, in (stride product, stride) order, whose bound beats every earlier row's."""
    out, best = [], float("-inf")
    for r in sorted(rows, key=lambda r: _order(r.stride)):
        if r.bound > best:
            out.append(r)
            best = r.bound
    return out


def _best(stats: Sequence[tuple[Tiling, TileStats]]) -> tuple[Tiling, TileStats]:
    """Highest tile bound; ties go to fewer masked pairs, then to the earlier tiling."""
    return max(stats, key=lambda ts: (ts[1].tile_bound, -ts[1].partial_fraction))


def search(problem: Problem | GNAParams, tilings: Sequence[Tiling],
           strides: Sequence[Sequence[int]] | None = None,
           exhaustive_up_to: int = EXHAUSTIVE_UP_TO) -> SearchResult:
    """Try every stride in ``strides`` (default: :func:`stride_candidates` per dim) with every
    tiling; the problem's own stride is ignored, its window, dilation and causality kept."""
    params = problem.params if isinstance(problem, Problem) else problem
    if not isinstance(params, GNAParams):
        raise TypeError(f"problem must be a Problem or GNAParams, got {type(problem).__name__}")
    tilings = list(tilings)
    if not tilings:
        raise ValueError("tilings is empty: give at least one Tiling")
    for t in tilings:
        if not isinstance(t, Tiling):
            raise TypeError(f"tilings must hold Tiling objects, got {t!r}")
        t.check_rank(params)
        if t.layout != GROUP_MAJOR:
            raise ValueError(f"tilings: search uses the kernels' group-major layout, got {t.layout!r}")
    if strides is None:
        per_dim = [stride_candidates(w, exhaustive_up_to) for w in params.kernel_size]
    else:
        per_dim = [sorted(set(s)) for s in strides]
        if len(per_dim) != params.rank:
            raise ValueError(f"strides has {len(per_dim)} lists, expected {params.rank} (one per dim)")

    rows = []
    for stride in sorted(itertools.product(*per_dim), key=_order):
        p = GNAParams.make(params.spatial_shape, params.kernel_size, tuple(stride), params.dilation,
                           params.is_causal)
        all_stats = [(t, simulate(p, t)) for t in tilings]
        tiling, stats = _best(all_stats)
        sparse = next((t for t, s in all_stats if s.block_sparse), None)
        rows.append(SearchRow(tuple(stride), tiling, stats, predicted_speedup(stats), sparse))
    block_sparse = next((r for r in rows if r.block_sparse_tiling is not None), None)
    return SearchResult(tuple(rows), tuple(prune(rows)), tuple(pareto(rows)), block_sparse)
