"""Per-dimension tile numbers: the 1D building blocks the multi-dim simulator multiplies.

The GNA neighborhood is a Cartesian product over dims, and our scheduler visits a product box of
KV tiles, so every multi-dim count is an outer product of these per-dim arrays (see
``docs/simulator.md``).  Each array is indexed ``[group, q_tile]``.

Two different methods on purpose:

* ``visited`` / ``full`` use the scheduler's own rule (``neighborhood.kv_tile_range`` and
  ``kv_tile_is_full``), exactly what the kernels do and count.
* ``ideal`` (KV tiles holding at least one attended key) is built from every query's own window,
  without the monotonicity argument the scheduler relies on, so comparing the two is meaningful.

Results are cached: a search re-uses each dim's numbers across all combinations of the other dims.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from gna_cute import neighborhood as nb

_MN, _MX = np.minimum, np.maximum
_CHUNK_ELEMS = 1 << 22  # bound on the (query, kv tile) matrix of the interleaved layout


@dataclass(frozen=True, eq=False)
class DimTiles:
    """One dim's numbers per (group, Q tile); empty Q tiles have ``nonempty`` False and zeros."""

    nonempty: np.ndarray  # bool
    visited: np.ndarray  # int64: KV tiles in the scheduler's range
    full: np.ndarray  # int64: of those, tiles every query of the Q tile sees entirely
    ideal: np.ndarray  # int64: KV tiles holding >= 1 key some query of the Q tile attends
    attended: int  # (query, key) pairs of this dim, summed over all queries of all groups


def _frozen(*arrays: np.ndarray) -> None:
    for a in arrays:
        a.setflags(write=False)


@lru_cache(maxsize=4096)
def group_major(length: int, window: int, stride: int, dilation: int, causal: bool, q_tile: int,
                kv_tile: int) -> DimTiles:
    """Tiles inside each dilation group (team contract 4): shape ``(dilation, q_tiles)``."""
    n_q = nb.tiles_per_group(length, dilation, q_tile)
    n_kv = nb.tiles_per_group(length, dilation, kv_tile)
    g = np.arange(dilation, dtype=np.int64)[:, None]
    lg = nb.group_length(length, dilation, g)  # (d, 1)
    t = np.arange(n_q, dtype=np.int64)[None, :]
    nonempty = t * q_tile < lg

    lo, hi = nb.kv_tile_range(t, q_tile, kv_tile, lg, window, stride, causal, _MN, _MX)
    visited = np.where(nonempty, hi - lo, 0)

    full = np.zeros((dilation, n_q), dtype=np.int64)
    ideal = np.zeros((dilation, n_q), dtype=np.int64)
    attended = 0
    j = np.arange(n_kv, dtype=np.int64)[None, None, :]
    step = max(1, _CHUNK_ELEMS // (dilation * (n_kv + 1)))  # Q tiles per chunk: bounded memory
    for t0 in range(0, n_q, step):
        tc = t[:, t0:t0 + step]
        is_full = nb.kv_tile_is_full(tc[..., None], j, q_tile, kv_tile, lg[..., None], window,
                                     stride, causal, _MN, _MX)
        inside = (j >= lo[:, t0:t0 + step, None]) & (j < hi[:, t0:t0 + step, None])
        full[:, t0:t0 + step] = np.where(nonempty[:, t0:t0 + step], (is_full & inside).sum(-1), 0)

        # Ideal, from per-query windows: mark each query's KV tiles in its Q tile's coverage row.
        p = np.arange(t0 * q_tile, min(tc.shape[1] + t0, n_q) * q_tile, dtype=np.int64)[None, :]
        valid = np.broadcast_to(p < lg, (dilation, p.shape[1]))
        start, end = (np.broadcast_to(x, valid.shape)[valid]
                      for x in nb.window(p, lg, window, stride, causal, _MN, _MX))
        gi, pi = np.nonzero(valid)
        cover = np.zeros((dilation, tc.shape[1], n_kv + 1), dtype=np.int64)
        np.add.at(cover, (gi, pi // q_tile, start // kv_tile), 1)
        np.add.at(cover, (gi, pi // q_tile, (end - 1) // kv_tile + 1), -1)
        ideal[:, t0:t0 + step] = (np.cumsum(cover, axis=-1)[..., :n_kv] > 0).sum(-1)
        attended += int((end - start).sum())

    out = DimTiles(nonempty, visited.astype(np.int64), full, ideal, attended)
    _frozen(out.nonempty, out.visited, out.full, out.ideal)
    return out


@lru_cache(maxsize=1024)
def interleaved(length: int, window: int, stride: int, dilation: int, causal: bool, q_tile: int,
                kv_tile: int) -> DimTiles:
    """Tiles over the original coordinates (mixing dilation groups): shape ``(1, q_tiles)``.

    A box scheduler here visits the KV tiles between the smallest and largest key any query of
    the Q tile sees.  With ``dilation == 1`` this is the group-major layout.
    """
    if dilation == 1:
        return group_major(length, window, stride, 1, causal, q_tile, kv_tile)
    n_q = nb.num_tiles(length, q_tile)
    n_kv = nb.num_tiles(length, kv_tile)
    x = np.arange(n_q * q_tile, dtype=np.int64)
    valid = x < length
    xc = np.minimum(x, length - 1)  # padded query slots copy the last query (masked out below)
    g, p = xc % dilation, xc // dilation
    start, end = nb.window(p, nb.group_length(length, dilation, g), window, stride, causal, _MN, _MX)

    first = (g + dilation * start) // kv_tile
    last = (g + dilation * (end - 1)) // kv_tile
    visited = (last.reshape(n_q, q_tile).max(1) - first.reshape(n_q, q_tile).min(1) + 1)

    # Per (query, KV tile): how many of the tile's key slots the query sees.
    j = np.arange(n_kv, dtype=np.int64)
    a, b = j * kv_tile, np.minimum(j * kv_tile + kv_tile, length)
    full = np.zeros(n_q, dtype=np.int64)
    ideal = np.zeros(n_q, dtype=np.int64)
    step = max(1, _CHUNK_ELEMS // (q_tile * n_kv))
    for t0 in range(0, n_q, step):
        rows = slice(t0 * q_tile, min(n_q, t0 + step) * q_tile)
        gg, s, e, v = g[rows, None], start[rows, None], end[rows, None], valid[rows, None]
        k_lo = -((gg - a) // dilation)  # ceil((a - g) / d): first in-group key at or after a
        k_hi = -((gg - b) // dilation)
        seen = np.maximum(np.minimum(e, k_hi) - np.maximum(s, k_lo), 0)
        shape = (-1, q_tile, n_kv)
        ideal[t0:t0 + step] = ((seen > 0) & v).reshape(shape).any(1).sum(-1)
        full[t0:t0 + step] = ((seen == kv_tile) | ~v).reshape(shape).all(1).sum(-1)

    out = DimTiles(np.ones((1, n_q), dtype=bool), visited[None, :], full[None, :], ideal[None, :],
                   int((end - start)[valid].sum()))
    _frozen(out.nonempty, out.visited, out.full, out.ideal)
    return out
