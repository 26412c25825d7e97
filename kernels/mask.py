"""Element mask of a partial (Q tile, KV tile) pair, for register-resident score tiles.

A key is visible to a query iff, in every dim, its in-group position lies in the query's window
``[start, end)`` from ``neighborhood.window`` (end clipped to the group's length, which also masks
padded key slots past the axis).  The windows depend only on the query, so each thread computes
them once per Q tile for its own rows (:class:`RowWindows`).  Full tiles never reach the mask (the
scheduler classifies them); partial ones are common (half the visited tiles of 2D/3D problems), so
the per-score cost matters.

Why the fast path is shaped as it is.  Decomposing each key's flat in-tile column into per-dim
coordinates at run time and comparing each against the row's bounds costs ~8-11 SASS instructions
per score (sm_90a, 2D/3D tiles).  But a Hopper warpgroup MMA gives a thread the columns ``8 k + b_e``
of the tile (``c = e + 2 k`` in the row view, ``e`` in {0, 1}, ``k`` static, ``b_e = 2 (lane % 4) + e``
a run-time value shared by all ``k``).  When adding any ``b < 8`` to ``8 k`` carries no digit of the
tile box (checked exhaustively at trace time by :func:`split_columns`; true for every supported KV
tile), the dim-``i`` coordinate is ``C_i(k) + B_i(b_e)`` with ``C_i(k)`` a trace-time int of the form
``step * ((k // run) % count)`` (:class:`GroupPattern`).  So ``B_i(b_e)`` folds into the row's
bounds, and the ``k`` visible in a dim form a bit mask that a few shifts build from the bounds
(:func:`group_mask`: a window shifted into place, copied once per period); a dim whose ``C_i`` is
the same for every ``k`` is one predicate on the mask.  ``b_1 = b_0 + 1`` with ``b_0`` even, so
only the dims that ``+1`` changes (usually just the last) need a mask per ``e``
(:func:`row_masks`).  Per score what is left is a bit test and a select; ptxas turns the bit tests
of one mask into ``R2P`` (7 predicates per instruction), so a score costs ~1.25 instructions plus
its share of the mask build: ~2-2.4 per score on 2D/3D tiles instead of ~8-11 (when written:
16x8 KV tile 553 -> 124 instructions for a thread's 64 scores, 4x8x4 642 -> 151).  The select and
the range test are inline PTX because LLVM turns a select on an AND of predicates into one select
per term; the obvious alternative, one shared compare per distinct ``C_i`` value, keeps too many
predicates alive (7 registers) and ptxas spills them through ``P2R``.  Other accumulator layouts, or
a tile shape with a carry, take the generic per-element decomposition, which computes the same mask
(``tests/test_mask_decomposition.py`` checks the fast path's pieces against plain divmod and
window tests).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Sequence

import cutlass
import cutlass.cute as cute
from cutlass import Float32, Int32, const_expr
from cutlass._mlir.dialects import llvm
from cutlass.cutlass_dsl import T

from gna_cute.kernels.dsl_values import DslCarried
from gna_cute.kernels.scheduler import QTileWork, split_tile_index
from gna_cute.kernels.softmax import acc_rows_view

# A thread's columns of an MMA accumulator are ``LANE_SPAN * k + b`` with ``b < LANE_SPAN``.
LANE_SPAN = 8
# Masks over k live in one 32-bit register.
_MAX_GROUPS = 31


@dataclass(frozen=True)
class GroupPattern:
    """How a dim's coordinate of position ``LANE_SPAN * k`` varies with ``k``: ``step * ((k // run) % count)``.

    ``step`` and ``run`` are powers of two (shifts in the kernel); ``run * count`` (the period)
    divides the number of column groups.
    """

    step: int
    run: int
    count: int

    def value(self, k: int) -> int:
        return self.step * ((k // self.run) % self.count)


@dataclass(frozen=True)
class ColumnSplit:
    """Static decomposition of the in-tile positions ``LANE_SPAN * k + b`` (``b < LANE_SPAN``).

    ``coords(k, b) == split_tile_index(LANE_SPAN * k + b, tile)`` for every ``k < num_groups`` and
    ``b < LANE_SPAN`` (what :func:`split_columns` checked), and ``group[k][i]`` equals
    ``patterns[i].value(k)`` (``patterns[i]`` None: ``group[k][i]`` is the same for every ``k``).
    """

    tile: tuple[int, ...]
    group: tuple[tuple[int, ...], ...]  # group[k][i] = C_i(k), dim-i coordinate of LANE_SPAN * k
    lane: tuple[tuple[int, ...], ...]  # lane[b][i] = B_i(b), dim-i coordinate of b
    lane_dims: tuple[int, ...]  # dims with B_i(b) != 0 for some b: bounds include B_i(b_e)
    patterns: tuple[GroupPattern | None, ...]
    # B(b + 1) - B(b) for every even b (adding 1 to an even b carries no digit), else None
    odd_step: tuple[int, ...] | None

    @property
    def num_groups(self) -> int:
        return len(self.group)

    def coords(self, k: int, b: int) -> tuple[int, ...]:
        return tuple(c + d for c, d in zip(self.group[k], self.lane[b]))

    @property
    def parity_dims(self) -> tuple[int, ...]:
        """Dims whose coordinate may differ between a thread's two columns ``b_0``, ``b_0 + 1``."""
        if self.odd_step is None:
            return self.lane_dims
        return tuple(i for i in self.lane_dims if self.odd_step[i])


def _is_pow2(x: int) -> bool:
    return x > 0 and x & (x - 1) == 0


def _find_pattern(values: Sequence[int]) -> GroupPattern | None:
    """A :class:`GroupPattern` reproducing ``values`` (indexed by k), or None."""
    n = len(values)
    for run in range(1, n + 1):
        for count in range(2, n // run + 1):
            if n % (run * count) or not _is_pow2(run):
                continue
            step = values[run]
            if not _is_pow2(step):
                continue
            p = GroupPattern(step, run, count)
            if all(p.value(k) == v for k, v in enumerate(values)):
                return p
    return None


def split_columns(tile: Sequence[int], num_groups: int) -> ColumnSplit | None:
    """The :class:`ColumnSplit` of ``num_groups`` column groups of ``tile``, or None.

    None when some ``LANE_SPAN * k + b`` carries between dims, when a dim's ``C_i(k)`` has no
    :class:`GroupPattern`, or when the masks would not fit a register.
    """
    tile = tuple(tile)
    if not 1 <= num_groups <= _MAX_GROUPS:
        return None
    lane = tuple(tuple(split_tile_index(b, tile)) for b in range(LANE_SPAN))
    group = tuple(tuple(split_tile_index(LANE_SPAN * k, tile)) for k in range(num_groups))
    for k in range(num_groups):
        for b in range(LANE_SPAN):
            whole = tuple(split_tile_index(LANE_SPAN * k + b, tile))
            if whole != tuple(c + d for c, d in zip(group[k], lane[b])):
                return None
    rank = len(tile)
    patterns: list[GroupPattern | None] = []
    for i in range(rank):
        values = [g[i] for g in group]
        if len(set(values)) == 1:
            patterns.append(None)
            continue
        p = _find_pattern(values)
        if p is None:
            return None
        patterns.append(p)
    lane_dims = tuple(i for i in range(rank) if any(d[i] for d in lane))
    odd_step: tuple[int, ...] | None = lane[1]
    for b in range(0, LANE_SPAN, 2):
        if lane[b + 1] != tuple(x + y for x, y in zip(lane[b], lane[1])):
            odd_step = None
    return ColumnSplit(tile, group, lane, lane_dims, tuple(patterns), odd_step)


def group_mask(
    p: GroupPattern,
    start: Any,
    end: Any,
    offset: Any,
    num_groups: int,
    mx: Callable[[Any, int], Any],
    shl: Callable[[int, Any], Any],
) -> Any:
    """Bit ``k`` set iff ``start - offset <= p.value(k) < end - offset``, for ``k < num_groups``.

    Higher bits are clear.  ``mx``: max; ``shl(c, s)``: ``c << s`` as a 32-bit shift that yields 0
    for ``s >= 32`` (PTX ``shl.b32``; plain ``<<`` on Python ints).  Works on Python ints (tests)
    and Int32 (kernel).  Within one period of ``run * count`` groups, ``value(k) >= t`` iff
    ``k >= run * ceil(t / step)``: a window mask shifted left, the same in every period (the
    multiply by ``rep`` copies it).
    """
    period = p.run * p.count
    win = (1 << period) - 1
    rep = sum(1 << j for j in range(0, num_groups, period))
    log_step, log_run = p.step.bit_length() - 1, p.run.bit_length() - 1
    # ceil((x - offset) / step) = floor((x - ceil_offset) / step), one subtraction per bound.
    ceil_offset = offset - (p.step - 1) if p.step > 1 else offset

    def at_least(x: Any) -> Any:
        d = mx(x - ceil_offset, 0)  # ceil((x - offset) / step), clamped at 0, times run:
        if log_step:
            d = d >> log_step
        if log_run:
            d = d << log_run
        return shl(win, d)

    m = at_least(start) & (at_least(end) ^ -1) & win
    return m * rep if rep != 1 else m


class MaskOps(NamedTuple):
    """The few operations :func:`row_masks` needs, on Python ints (tests) or Int32 (kernel)."""

    mx: Callable[[Any, int], Any]  # max
    shl: Callable[[int, Any], Any]  # c << s, 0 for s >= 32
    keep_if_inside: Callable[[Any, Any, Any, Any], Any]  # (mask, start, end, x): mask if start <= x < end, else 0
    const: Callable[[int], Any]  # a constant of the mask type


def odd_lane(split: ColumnSplit, lane0: Sequence[Any]) -> list[Any]:
    """Dim coordinates of ``b_0 + 1`` from those of an even ``b_0`` (needs ``split.odd_step``)."""
    assert split.odd_step is not None
    return [x + d if d else x for x, d in zip(lane0, split.odd_step)]


def row_masks(
    split: ColumnSplit,
    start: Sequence[Any],
    end: Sequence[Any],
    kv_base: Sequence[Any],
    lane: Sequence[Any],
    ops: MaskOps,
) -> list[Any]:
    """Per column parity ``e``: bit ``k`` set iff key ``LANE_SPAN * k + b_e`` of the tile is visible.

    One query row with per-dim window ``[start[i], end[i])``; ``kv_base``: the tile's first key per
    dim; ``lane[e]``: dim coordinates of ``b_e``.  The dims outside ``split.parity_dims`` are built
    once for both parities.
    """
    parity = split.parity_dims

    def dims_mask(dims, e: int, mask):
        inside = []  # (start, end, position) of the dims whose C_i is the same for every k
        for i in dims:
            o = kv_base[i] + lane[e][i] if i in split.lane_dims else kv_base[i]
            p = split.patterns[i]
            if p is None:
                c = split.group[0][i]
                inside.append((start[i], end[i], o + c if c else o))
            else:
                m = group_mask(p, start[i], end[i], o, split.num_groups, ops.mx, ops.shl)
                mask = m if mask is None else mask & m
        for lo, hi, x in inside:
            mask = ops.keep_if_inside(ops.const((1 << split.num_groups) - 1) if mask is None else mask, lo, hi, x)
        return mask

    shared = dims_mask([i for i in range(len(split.tile)) if i not in parity], 0, None)
    out = []
    for e in range(2):
        mask = dims_mask(parity, e, shared)
        out.append(ops.const((1 << split.num_groups) - 1) if mask is None else mask)
    return out


def _shl(c: int, s: Int32) -> Int32:
    """``c << s`` with PTX semantics (0 once ``s >= 32``; LLVM's shl would be poison there)."""
    return Int32(
        llvm.inline_asm(
            T.i32(),
            [Int32(s).ir_value()],
            f"shl.b32 $0, {c}, $1;",
            "=r,r",
            has_side_effects=False,
            is_align_stack=False,
            asm_dialect=llvm.AsmDialect.AD_ATT,
        )
    )


def _keep_if_inside(mask: Int32, start: Int32, end: Int32, x: Int32) -> Int32:
    """``mask`` if ``start <= x < end`` else 0 (inline PTX: two compares, the second ANDing, one select)."""
    return Int32(
        llvm.inline_asm(
            T.i32(),
            [Int32(mask).ir_value(), Int32(start).ir_value(), Int32(end).ir_value(), Int32(x).ir_value()],
            "{\n.reg .pred p;\n"
            "setp.le.s32 p, $2, $4;\n"
            "setp.gt.and.s32 p, $3, $4, p;\n"
            "selp.b32 $0, $1, 0, p;\n}",
            "=r,r,r,r,r",
            has_side_effects=False,
            is_align_stack=False,
            asm_dialect=llvm.AsmDialect.AD_ATT,
        )
    )


def _keep_if_bit(score: Float32, mask: Int32, k: int) -> Float32:
    """``score`` if bit ``k`` of ``mask`` is set, else ``-inf`` (ptxas: one LOP3 to a predicate, one FSEL)."""
    return Float32(
        llvm.inline_asm(
            T.f32(),
            [Float32(score).ir_value(), Int32(mask).ir_value()],
            "{\n.reg .pred p;\n.reg .b32 t;\n"
            f"and.b32 t, $2, {1 << k};\n"
            "setp.ne.b32 p, t, 0;\n"
            "selp.f32 $0, $1, 0fFF800000, p;\n}",
            "=f,f,r",
            has_side_effects=False,
            is_align_stack=False,
            asm_dialect=llvm.AsmDialect.AD_ATT,
        )
    )


_DSL_OPS = MaskOps(cutlass.max, _shl, _keep_if_inside, Int32)


def _wgmma_split(acc: cute.Tensor, num_cols: int, kv_tile: tuple[int, ...]) -> ColumnSplit | None:
    """The split of ``kv_tile`` if ``acc`` is a Hopper MMA accumulator covering it, else None.

    Only the warpgroup MMA fragment ``((2, 2, N/8), M, N)`` gives thread columns ``b_e + 8 k``
    (``c = e + 2 k`` in the row view), the layout the split mask relies on; any other shape, or a
    tile :func:`split_columns` rejects, takes the generic path.
    """
    shape = acc.layout.shape
    if not isinstance(shape, tuple) or len(shape) != 3:
        return None
    frag = shape[0]
    if not isinstance(frag, tuple) or len(frag) != 3 or frag[0] != 2 or frag[1] != 2:
        return None
    if num_cols != 2 * frag[2] * shape[2] or LANE_SPAN * (num_cols // 2) != math.prod(kv_tile):
        return None
    return split_columns(kv_tile, num_cols // 2)


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
        """Set invisible scores of ``acc_S`` (a Hopper MMA accumulator) to ``-inf``.

        ``col_coords[c]``: column index inside the KV tile (Int32) of this thread's ``c``-th column
        in the row view; ``kv_tile_idx``: the KV tile's per-dim tile indices.  On the fast path
        (``acc_S`` shaped as a warpgroup MMA fragment) only ``col_coords[0]`` is read, and
        ``col_coords[c] == col_coords[0] + c % 2 + 8 * (c // 2)`` with ``col_coords[0]`` even is
        assumed: that is the fragment's layout.
        """
        s_rows = acc_rows_view(acc_S)
        kv_base = [kv_tile_idx[i] * self.kv_tile[i] for i in range(self.rank)]
        split = _wgmma_split(acc_S, len(col_coords), self.kv_tile)
        if const_expr(split is not None):
            self._apply_split(s_rows, col_coords, kv_base, split)
        else:
            self._apply_generic(s_rows, col_coords, kv_base)

    def _apply_split(self, s_rows: cute.Tensor, col_coords: list, kv_base: list, split: ColumnSplit) -> None:
        """The mask through ``split``: column ``c = e + 2 k`` is position ``8 k + b_e`` of the tile.

        Plain Python at trace time: per row the two bit masks of :func:`row_masks`, per score a bit
        test.  The fragment has ``b_1 = b_0 + 1`` with ``b_0`` even, so with ``split.odd_step`` the
        coordinates of ``b_1`` cost nothing and only ``split.parity_dims`` depend on ``e``.
        """
        rank = self.rank
        lane0 = split_tile_index(col_coords[0], self.kv_tile)
        if const_expr(split.odd_step is not None):
            lane1 = odd_lane(split, lane0)
        else:
            lane1 = split_tile_index(col_coords[1], self.kv_tile)
        for r in range(self.num_rows):
            start = [self.start[r * rank + i] for i in range(rank)]
            end = [self.end[r * rank + i] for i in range(rank)]
            masks = row_masks(split, start, end, kv_base, [lane0, lane1], _DSL_OPS)
            for e in range(2):
                for k in range(split.num_groups):
                    c = e + 2 * k
                    s_rows[r, c] = _keep_if_bit(s_rows[r, c], masks[e], k)

    @cute.jit
    def _apply_generic(self, s_rows: cute.Tensor, col_coords: list, kv_base: list) -> None:
        """Any column layout: decompose each column index at run time (the reference form)."""
        for r in cutlass.range_constexpr(self.num_rows):
            lo = [self.start[r * self.rank + i] - kv_base[i] for i in range(self.rank)]
            hi = [self.end[r * self.rank + i] - kv_base[i] for i in range(self.rank)]
            for c in cutlass.range_constexpr(len(col_coords)):
                k = split_tile_index(col_coords[c], self.kv_tile)
                visible = (k[0] >= lo[0]) & (k[0] < hi[0])
                for i in cutlass.range_constexpr(1, self.rank):
                    visible = visible & (k[i] >= lo[i]) & (k[i] < hi[i])
                s_rows[r, c] = s_rows[r, c] if visible else -Float32.inf
