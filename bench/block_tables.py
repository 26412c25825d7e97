"""Block-sparsity tables of the GNA mask on the tiled order, built analytically.

FA4's block-sparse forward takes, per Q block, the list of KV blocks to visit split into *partial*
blocks (``mask_mod`` applied per element) and *full* blocks (no mask).  With the tiled order of
:mod:`tiled_order` one block is one multi-dim tile, so the lists follow from the per-dim rules our
own scheduler (and the simulator) uses -- ``neighborhood.kv_tile_range`` and
``neighborhood.kv_tile_is_full`` -- combined as a product over dims: no N x N mask is ever built.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from gna_cute import neighborhood as nb

from .tiled_order import TiledOrder


@dataclass(frozen=True, eq=False)
class BlockTables:
    """Per Q block (tiled order): partial and full KV block counts and (padded) index lists."""

    mask_cnt: np.ndarray  # int32 [M]
    mask_idx: np.ndarray  # int32 [M, max(1, max count)]
    full_cnt: np.ndarray  # int32 [M]
    full_idx: np.ndarray  # int32 [M, max(1, max count)]


def _dim_table(length: int, dilation: int, tiles: int, tile: int, window: int, stride: int,
               causal: bool) -> list[list[tuple[list[int], list[bool]]]]:
    """``[group][q_tile] -> (kv tiles visited, full flag of each)`` for one dim (empty tiles: [])."""
    out = []
    for g in range(dilation):
        lg = nb.group_length(length, dilation, g)
        rows = []
        for t in range(tiles):
            if t * tile >= lg:
                rows.append(([], []))
                continue
            lo, hi = nb.kv_tile_range(t, tile, tile, lg, window, stride, causal)
            kv = list(range(lo, hi))
            rows.append((kv, [bool(nb.kv_tile_is_full(t, j, tile, tile, lg, window, stride, causal))
                              for j in kv]))
        out.append(rows)
    return out


def _pad(lists: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    cnt = np.array([len(x) for x in lists], dtype=np.int32)
    idx = np.zeros((len(lists), max(1, int(cnt.max(initial=0)))), dtype=np.int32)
    for m, row in enumerate(lists):
        idx[m, : len(row)] = row
    return cnt, idx


def block_tables(order: TiledOrder) -> BlockTables:
    """Partial/full KV block lists of every Q block (one block = one tile of ``order``)."""
    tiles = order.tiles_per_dim
    per_dim = [
        _dim_table(n, d, nt, t, w, s, bool(c))
        for n, d, nt, t, w, s, c in zip(order.spatial_shape, order.dilation, tiles, order.tile_shape,
                                        order.kernel_size, order.stride, order.is_causal)
    ]
    tiles_flat = int(np.prod(tiles))
    partial_rows: list[list[int]] = []
    full_rows: list[list[int]] = []
    for g_flat, group in enumerate(itertools.product(*[range(d) for d in order.dilation])):
        for tile in itertools.product(*[range(n) for n in tiles]):
            dims = [per_dim[i][group[i]][tile[i]] for i in range(order.rank)]
            partial: list[int] = []
            full: list[int] = []
            for combo in itertools.product(*[list(zip(kv, fl)) for kv, fl in dims]):
                kv_flat = 0
                for (j, _), n in zip(combo, tiles):
                    kv_flat = kv_flat * n + j
                block = g_flat * tiles_flat + kv_flat
                (full if all(f for _, f in combo) else partial).append(block)
            partial_rows.append(partial)
            full_rows.append(full)
    mask_cnt, mask_idx = _pad(partial_rows)
    full_cnt, full_idx = _pad(full_rows)
    return BlockTables(mask_cnt, mask_idx, full_cnt, full_idx)
