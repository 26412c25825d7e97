"""Multi-dim tile numbers of one problem and tiling, from the per-dim arrays of ``dims``.

Why outer products are exact: a query sees key ``k`` iff it does so in every dim, and the
scheduler visits the product of per-dim KV tile ranges.  So a (Q tile, KV tile) pair is visited,
full, or holds an attended pair iff it is so in every dim, and per-(group, Q tile) counts are
products of per-dim counts.  Totals are sums of those products = products of per-dim sums.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from math import prod
from typing import Sequence

import numpy as np

from gna_cute.params import GNAParams

from . import dims
from .problem import GROUP_MAJOR, Problem, Tiling


def _dim_tiles(params: GNAParams, tiling: Tiling) -> list[dims.DimTiles]:
    tiling.check_rank(params)
    fn = dims.group_major if tiling.layout == GROUP_MAJOR else dims.interleaved
    return [
        fn(n, w, s, d, bool(c), tq, tkv)
        for n, w, s, d, c, tq, tkv in zip(params.spatial_shape, params.kernel_size, params.stride,
                                          params.dilation, params.is_causal, tiling.q_tile_shape,
                                          tiling.kv_tile_shape)
    ]


def _outer(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """``(G_i, T_i)`` per dim -> ``(G_0, .., G_{n-1}, T_0, .., T_{n-1})`` of products."""
    out = arrays[0]
    for a in arrays[1:]:
        out = np.multiply.outer(out, a)
    n = len(arrays)
    return out.transpose([2 * i for i in range(n)] + [2 * i + 1 for i in range(n)])


def tile_counts(params: GNAParams, q_tile_shape: Sequence[int], kv_tile_shape: Sequence[int],
                layout: str = GROUP_MAJOR) -> np.ndarray:
    """Visited and full KV tiles per (dilation group, Q tile), int64 ``(2, *dilation, *tiles)``.

    ``[0]`` counts the KV tiles the scheduler visits, ``[1]`` the ones among them needing no
    element mask; empty Q tiles count 0.  This is the layout of the kernels' debug counters
    (team contract 4); ``tiles`` per dim is ``num_tiles(ceil(L / d), q_tile)``.
    """
    if not isinstance(params, GNAParams):
        raise TypeError(f"params must be a GNAParams, got {type(params).__name__}")
    tiling = Tiling(tuple(q_tile_shape), tuple(kv_tile_shape), layout)
    per_dim = _dim_tiles(params, tiling)
    return np.stack([_outer([t.visited for t in per_dim]), _outer([t.full for t in per_dim])])


@dataclass(frozen=True)
class TileStats:
    """Everything the simulator reports for one problem and tiling (per batch and head)."""

    layout: str
    q_tile_shape: tuple[int, ...]
    kv_tile_shape: tuple[int, ...]
    tokens: int
    attended_pairs: int  # (query, key) pairs inside the neighborhood
    dense_pairs: int  # tokens ** 2
    flop_bound: float  # dense_pairs / attended_pairs
    q_tiles: int  # non-empty Q tiles over all dilation groups
    visited: int  # (Q tile, KV tile) pairs the scheduler computes
    full: int  # of those, pairs needing no element mask
    partial: int  # of those, pairs needing an element mask
    ideal: int  # pairs holding at least one attended (query, key) pair
    dense_q_tiles: int  # Q tiles of the same tile shapes for plain attention
    dense_tile_pairs: int  # Q tiles x KV tiles of the same tile shapes for plain attention
    dense_partial: int  # masked ones among those (only when tiles do not divide the axis)
    tile_bound: float  # dense_tile_pairs / visited
    ideal_bound: float  # dense_tile_pairs / ideal
    visited_min: int  # KV tiles visited per non-empty Q tile
    visited_mean: float
    visited_max: int

    @property
    def partial_fraction(self) -> float:
        return self.partial / self.visited

    @property
    def block_sparse(self) -> bool:
        """No visited pair needs a mask and none is empty (every full pair holds attended pairs)."""
        return self.partial == 0 and self.visited == self.ideal

    def as_dict(self) -> dict:
        out = asdict(self)
        out["partial_fraction"] = self.partial_fraction
        out["block_sparse"] = self.block_sparse
        return out


def _totals(per_dim: list[dims.DimTiles]) -> tuple[int, int, int, int, int, int, int]:
    """(q_tiles, visited, full, ideal, min, max visited, attended) without materializing."""
    q_tiles = prod(int(t.nonempty.sum()) for t in per_dim)
    visited = prod(int(t.visited.sum()) for t in per_dim)
    full = prod(int(t.full.sum()) for t in per_dim)
    ideal = prod(int(t.ideal.sum()) for t in per_dim)
    # Non-empty Q tiles visit >= 1 KV tile in every dim, so extremes of products are products
    # of per-dim extremes.
    vmin = prod(int(t.visited[t.nonempty].min()) for t in per_dim)
    vmax = prod(int(t.visited[t.nonempty].max()) for t in per_dim)
    attended = prod(t.attended for t in per_dim)
    return q_tiles, visited, full, ideal, vmin, vmax, attended


def simulate(problem: Problem | GNAParams, tiling: Tiling) -> TileStats:
    """Tile numbers of ``problem`` under ``tiling``; milliseconds even for large 3D problems."""
    params = problem.params if isinstance(problem, Problem) else problem
    if not isinstance(params, GNAParams):
        raise TypeError(f"problem must be a Problem or GNAParams, got {type(problem).__name__}")
    if not isinstance(tiling, Tiling):
        raise TypeError(f"tiling must be a Tiling, got {type(tiling).__name__}")
    q_tiles, visited, full, ideal, vmin, vmax, attended = _totals(_dim_tiles(params, tiling))

    shape = params.spatial_shape
    dense_q_tiles = prod(-(-n // t) for n, t in zip(shape, tiling.q_tile_shape))
    dense_pairs = dense_q_tiles * prod(-(-n // t) for n, t in zip(shape, tiling.kv_tile_shape))
    dense = _dim_tiles(GNAParams.make(shape, shape), Tiling(tiling.q_tile_shape, tiling.kv_tile_shape))
    dense_full = prod(int(t.full.sum()) for t in dense)
    tokens = prod(shape)
    return TileStats(
        layout=tiling.layout,
        q_tile_shape=tiling.q_tile_shape,
        kv_tile_shape=tiling.kv_tile_shape,
        tokens=tokens,
        attended_pairs=attended,
        dense_pairs=tokens * tokens,
        flop_bound=tokens * tokens / attended,
        q_tiles=q_tiles,
        visited=visited,
        full=full,
        partial=visited - full,
        ideal=ideal,
        dense_q_tiles=dense_q_tiles,
        dense_tile_pairs=dense_pairs,
        dense_partial=dense_pairs - dense_full,
        tile_bound=dense_pairs / visited,
        ideal_bound=dense_pairs / ideal,
        visited_min=vmin,
        visited_mean=visited / q_tiles,
        visited_max=vmax,
    )
