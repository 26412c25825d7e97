"""GNA tile scheduler shared by the fused kernels: which KV tiles a Q tile visits, and which are full.

Everything here follows the tiling convention of the simulator (contract 4): Q and KV tiles are
boxes in the in-group coordinates of one dilation group; per dim, the KV tiles a Q tile visits are
``neighborhood.kv_tile_range`` and a visited pair needs no element mask iff
``neighborhood.kv_tile_is_full`` holds in every dim.  No formula is re-derived here: this module
only decodes indices and composes the per-dim answers into the box.

The code is written once for two number types: CuTe DSL ``Int32`` values inside a kernel (pass
``mn=cutlass.min, mx=cutlass.max``) and plain Python ints (the defaults), so it can be checked on a
CPU against the simulator and the brute force.  Tile shapes, windows, strides, dilations and the
causal flags are compile-time Python values; spatial lengths and indices are run-time values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from gna_cute import neighborhood as nb
from gna_cute.kernels.dsl_values import DslCarried

Num = Any
MinMax = Callable[[Num, Num], Num]


@dataclass(frozen=True)
class TileGeometry:
    """The static half of the schedule: tile boxes and the per-dim neighborhood parameters."""

    q_tile: tuple[int, ...]
    kv_tile: tuple[int, ...]
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    is_causal: tuple[bool, ...]

    @classmethod
    def from_config(cls, cfg: Any) -> "TileGeometry":
        """From a ``FwdConfig`` (or anything with the same field names)."""
        return cls(
            tuple(cfg.q_tile_shape),
            tuple(cfg.kv_tile_shape),
            tuple(cfg.kernel_size),
            tuple(cfg.stride),
            tuple(cfg.dilation),
            tuple(bool(c) for c in cfg.is_causal),
        )

    @property
    def rank(self) -> int:
        return len(self.q_tile)

    @property
    def num_groups(self) -> int:
        out = 1
        for d in self.dilation:
            out *= d
        return out

    def tiles_per_dim(self, lengths: Sequence[Num]) -> list[Num]:
        """Q tiles per dim: ``num_tiles(ceil(L / d), T_q)`` (the longest group decides)."""
        return [nb.tiles_per_group(n, d, t) for n, d, t in zip(lengths, self.dilation, self.q_tile)]

    def num_work_tiles(self, lengths: Sequence[Num]) -> Num:
        """Work items of one (batch, head): every dilation group times every Q tile."""
        out = self.num_groups
        for t in self.tiles_per_dim(lengths):
            out = out * t
        return out


class QTileWork(DslCarried):
    """One Q tile of one dilation group, decoded from a linear work index, with its KV tile box.

    The linear index enumerates ``(*dilation_group, *q_tile)`` row-major (last dim fastest), the
    order of the counts array ``(2, *dilation, *tiles)`` minus its first mode.
    """

    def __init__(
        self,
        geom: TileGeometry,
        lengths: Sequence[Num],
        work_idx: Num,
        mn: MinMax = min,
        mx: MinMax = max,
    ) -> None:
        self.geom, self.mn, self.mx = geom, mn, mx
        rank = geom.rank
        ntiles = geom.tiles_per_dim(lengths)
        rem = work_idx
        tile: list[Num] = [0] * rank
        for i in reversed(range(rank)):
            tile[i] = rem % ntiles[i]
            rem = rem // ntiles[i]
        group: list[Num] = [0] * rank
        for i in reversed(range(rank)):
            group[i] = rem % geom.dilation[i]
            rem = rem // geom.dilation[i]
        self.q_tile_idx = tile
        self.group = group
        self.group_len = [nb.group_length(n, d, g) for n, d, g in zip(lengths, geom.dilation, group)]
        self.kv_lo: list[Num] = []
        self.kv_extent: list[Num] = []
        for i in range(rank):
            lo, hi = nb.kv_tile_range(
                tile[i], geom.q_tile[i], geom.kv_tile[i], self.group_len[i],
                geom.kernel_size[i], geom.stride[i], geom.is_causal[i], mn, mx,
            )
            self.kv_lo.append(lo)
            self.kv_extent.append(hi - lo)
        n = self.kv_extent[0]
        for e in self.kv_extent[1:]:
            n = n * e
        self.num_kv_tiles = n

    def kv_tile(self, j: Num) -> list[Num]:
        """Per-dim KV tile indices of the ``j``-th visited tile (row-major over the box)."""
        idx: list[Num] = [0] * self.geom.rank
        rem = j
        for i in reversed(range(self.geom.rank)):
            if i == 0:
                idx[i] = self.kv_lo[i] + rem
            else:
                idx[i] = self.kv_lo[i] + rem % self.kv_extent[i]
                rem = rem // self.kv_extent[i]
        return idx

    def kv_is_full(self, kv: Sequence[Num]) -> Num:
        """Whether the pair (this Q tile, KV tile ``kv``) needs no element mask (every dim full)."""
        g = self.geom
        full = None
        for i in range(g.rank):
            f = nb.kv_tile_is_full(
                self.q_tile_idx[i], kv[i], g.q_tile[i], g.kv_tile[i], self.group_len[i],
                g.kernel_size[i], g.stride[i], g.is_causal[i], self.mn, self.mx,
            )
            full = f if full is None else (full & f)
        return full

    def row_window(self, q_in_tile: Sequence[Num]) -> list[tuple[Num, Num]]:
        """Per-dim key window ``[start, end)`` (in-group positions) of the query at ``q_in_tile``.

        ``end`` is clipped to the group's length so the window also excludes padded key slots past
        the axis (it only matters for padded query rows of a causal dim, whose end is ``i + 1``).
        """
        g = self.geom
        out = []
        for i in range(g.rank):
            q = self.q_tile_idx[i] * g.q_tile[i] + q_in_tile[i]
            start, end = nb.window(
                q, self.group_len[i], g.kernel_size[i], g.stride[i], g.is_causal[i], self.mn, self.mx
            )
            out.append((start, self.mn(end, self.group_len[i])))
        return out


def split_tile_index(flat: Num, tile: Sequence[int]) -> list[Num]:
    """Per-dim coordinates of position ``flat`` inside a tile box (row-major, last dim fastest)."""
    out: list[Num] = [0] * len(tile)
    rem = flat
    for i in reversed(range(len(tile))):
        if i == 0:
            out[i] = rem
        else:
            out[i] = rem % tile[i]
            rem = rem // tile[i]
    return out
