"""Element mask of a partial (Q tile, KV tile) pair, for register-resident score tiles.

A key is visible to a query iff, in every dim, its in-group position lies in the query's window
``[start, end)`` from ``neighborhood.window`` (end clipped to the group's length, which also masks
padded key slots past the axis).  The windows depend only on the query, so each thread computes
them once per Q tile for its own rows (:class:`RowWindows`); a partial KV tile then costs, per
element, the per-dim decomposition of the key's position in the tile and two compares per dim.
Full tiles never call this (the scheduler classifies them).
"""

from __future__ import annotations

import cutlass
import cutlass.cute as cute
from cutlass import Float32, Int32

from gna_cute.kernels.dsl_values import DslCarried
from gna_cute.kernels.scheduler import QTileWork, split_tile_index
from gna_cute.kernels.softmax import acc_rows_view


class RowWindows(DslCarried):
    """Per-dim key windows (in-group positions) of the query rows one thread owns."""

    def __init__(self, work: QTileWork, row_coords: list) -> None:
        """``row_coords[r]``: row index inside the Q tile (Int32) of this thread's ``r``-th row."""
        self.rank = work.geom.rank
        self.kv_tile = work.geom.kv_tile
        self.num_rows = len(row_coords)
        # Flattened (row, dim) -> start / end registers; static Python indexing only.
        self.start = cute.make_rmem_tensor(self.num_rows * self.rank, Int32)
        self.end = cute.make_rmem_tensor(self.num_rows * self.rank, Int32)
        for r, m in enumerate(row_coords):
            q_in_tile = split_tile_index(m, work.geom.q_tile)
            for i, (s, e) in enumerate(work.row_window(q_in_tile)):
                self.start[r * self.rank + i] = s
                self.end[r * self.rank + i] = e

    @cute.jit
    def apply(self, acc_S: cute.Tensor, col_coords: list, kv_tile_idx: list) -> None:
        """Set invisible scores of ``acc_S`` to ``-inf``.

        ``col_coords[c]``: column index inside the KV tile (Int32) of this thread's ``c``-th column
        in the row view; ``kv_tile_idx``: the KV tile's per-dim tile indices.
        """
        s_rows = acc_rows_view(acc_S)
        kv_base = [kv_tile_idx[i] * self.kv_tile[i] for i in range(self.rank)]
        for r in cutlass.range_constexpr(self.num_rows):
            lo = [self.start[r * self.rank + i] - kv_base[i] for i in range(self.rank)]
            hi = [self.end[r * self.rank + i] - kv_base[i] for i in range(self.rank)]
            for c in cutlass.range_constexpr(len(col_coords)):
                k = split_tile_index(col_coords[c], self.kv_tile)
                visible = (k[0] >= lo[0]) & (k[0] < hi[0])
                for i in cutlass.range_constexpr(1, self.rank):
                    visible = visible & (k[i] >= lo[i]) & (k[i] < hi[i])
                s_rows[r, c] = s_rows[r, c] if visible else -Float32.inf
