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
from math import prod
from typing import Any, Callable, Sequence

from gna_cute import neighborhood as nb
from gna_cute.kernels.dsl_values import DslCarried

Num = Any
MinMax = Callable[[Num, Num], Num]
Select = Callable[[Any, Num, Num], Num]  # sel(cond, a, b): a where cond else b


def _py_select(cond: Any, a: Num, b: Num) -> Num:
    return a if cond else b


@dataclass(frozen=True)
class TileGeometry:
    """The static half of the schedule: tile boxes and the per-dim neighborhood parameters."""

    q_tile: tuple[int, ...]
    kv_tile: tuple[int, ...]
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    is_causal: tuple[bool, ...]
    # The dim along which work indices ``s*w .. s*w + s-1`` are neighbouring Q tiles ``s*t .. s*t + s-1``
    # (the ``s = pair_size`` CTAs of a cluster that share their K/V loads); -1: the plain row-major
    # order.
    pair_dim: int = -1
    pair_size: int = 2
    # The order of the work items' tile digits, slowest dim first (empty: row-major, the last dim
    # fastest).  Why: consecutive work items run at the same time, so a dim along which many Q
    # tiles share one KV window (a block-sparse stride) made fastest puts those tiles in one
    # wave, reading their K/V from L2 together (``tile_choice.choose_tile_order``).
    tile_order: tuple[int, ...] = ()
    # With ``pair_dim``: the tile count along it may leave a remainder (``count % s`` tiles).  The
    # work items first walk the complete groups, then those tail tiles, which form clusters among
    # themselves (``s`` consecutive tail items, neighbours along the other dims) that share
    # nothing: their KV tile counts are equal (``pairable_dims(..., tail=True)``), so the cluster's
    # stages stay in step while each CTA loads its own K/V (``QTileWork.shared``).
    pair_tail: bool = False
    # The visiting order of an item's KV tiles.  0: the partial tiles (masked loop), then the full
    # ones.  A > 0: the full tiles first, walked from the first A-aligned full tile along dim 0
    # (wrapping round to the box's start), then the partial ones.  Why: neighbouring Q tiles of a
    # sliding window (s = 1) then start on one shared KV tile, so the launch's first loads are a
    # few distinct K/V tiles instead of one per CTA (partial-first, each CTA's first tile is its own
    # window edge); the blocked rows, whose Q tiles already share a start, reached the first S
    # 3.9 us after the Q issue against 5.1 us for s = 1 (H100 trace, cold L2).
    kv_start_align: int = 0

    def __post_init__(self) -> None:
        if self.tile_order and sorted(self.tile_order) != list(range(len(self.q_tile))):
            raise ValueError(f"tile_order={self.tile_order}: must be empty or a permutation of the "
                             f"{len(self.q_tile)} dims")
        if not isinstance(self.kv_start_align, int) or self.kv_start_align < 0:
            raise ValueError(f"kv_start_align={self.kv_start_align!r}: must be an int >= 0")

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
            cfg.cluster_dim,
            cfg.cluster_size,
            tuple(cfg.tile_order),
            cfg.cluster_tail,
            cfg.kv_start_align,
        )

    @property
    def rank(self) -> int:
        return len(self.q_tile)

    @property
    def digit_order(self) -> tuple[int, ...]:
        """The work items' tile digits, slowest dim first (``tile_order``, else row-major)."""
        return self.tile_order or tuple(range(self.rank))

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


def dim_schedule(geom: TileGeometry, dim: int, q_tile: Num, group_len: Num, mn: MinMax = min,
                 mx: MinMax = max) -> tuple[Num, Num, Num, Num]:
    """``(lo, extent, full_lo, full_extent)`` of Q tile ``q_tile`` in dim ``dim``: the visited KV
    tiles, and the full ones clamped into them (empty: extent 0)."""
    args = (geom.q_tile[dim], geom.kv_tile[dim], group_len, geom.kernel_size[dim], geom.stride[dim],
            geom.is_causal[dim], mn, mx)
    lo, hi = nb.kv_tile_range(q_tile, *args)
    f_lo, f_hi = nb.kv_full_tile_range(q_tile, *args)
    f_lo = mn(mx(f_lo, lo), hi)
    return lo, hi - lo, f_lo, mx(mn(f_hi, hi), f_lo) - f_lo


def pairable_dims(geom: TileGeometry, lengths: Sequence[int], size: int = 2, tail: bool = False) -> list[int]:
    """The dims along which Q tiles ``s*t .. s*t + s-1`` (``s = size``) visit the same KV tiles in
    the same order, for every ``t`` and dilation group (Python ints; ``lengths`` are the spatial
    sizes).

    Why: CTAs with identical KV schedules can share every K/V load (one TMA multicast into all
    of their shared memories).  All tiles of a group must exist (a tile count divisible by
    ``size``) and have the same visited and full boxes per dim, which fixes the visiting order
    (``kv_boxes``).  Holds for dense dims and for strides that are multiples of ``size`` Q tiles
    (blocked / block-sparse rows).

    ``tail``: a tile count with a remainder is allowed too (``TileGeometry.pair_tail``), when
    the remainder's tiles can form unshared clusters: the tail items of a dilation group fill
    whole clusters, and every tail tile visits as many KV tiles as every other (the other dims'
    visited extents are the same for all of their tiles, and so is the tail tile's along ``d``
    in every group), so the CTAs of such a cluster use their K/V stages equally often.
    """
    return [d for d in range(geom.rank) if _groups_match(geom, d, lengths, size, tail)]


def _groups_match(geom: TileGeometry, d: int, lengths: Sequence[int], size: int, tail: bool) -> bool:
    """:func:`pairable_dims` for dim ``d``."""
    length = lengths[d]
    grid = nb.tiles_per_group(length, geom.dilation[d], geom.q_tile[d])  # the grid's tile count
    rest = grid % size
    if rest and not (tail and grid >= size and _tail_is_even(geom, d, lengths, size)):
        return False
    for n in {nb.group_length(length, geom.dilation[d], g) for g in range(geom.dilation[d])}:
        count = nb.num_tiles(n, geom.q_tile[d])
        if count != grid:
            return False
        for t in range(0, count - rest, size):
            first = dim_schedule(geom, d, t, n)
            if any(dim_schedule(geom, d, t + i, n) != first for i in range(1, size)):
                return False
    return True


def _tail_is_even(geom: TileGeometry, d: int, lengths: Sequence[int], size: int) -> bool:
    """Whether dim ``d``'s tail tiles fill whole clusters of equal KV tile counts (see
    :func:`pairable_dims`)."""
    grid = geom.tiles_per_dim(lengths)
    others = prod(grid) // grid[d]
    if (grid[d] % size) * others % size:
        return False
    for e in range(geom.rank):
        groups = {nb.group_length(lengths[e], geom.dilation[e], g) for g in range(geom.dilation[e])}
        tiles = range(grid[d] - grid[d] % size, grid[d]) if e == d else range(grid[e])
        if len({dim_schedule(geom, e, t, n)[1] for n in groups for t in tiles}) != 1:
            return False
    return True


class QTileWork(DslCarried):
    """One Q tile of one dilation group, decoded from a linear work index, with its KV tile box.

    The linear index enumerates ``(*dilation_group, *q_tile)`` row-major (last dim fastest), the
    order of the counts array ``(2, *dilation, *tiles)`` minus its first mode, except that the
    tile digits follow ``geom.digit_order``; with
    ``geom.pair_dim`` its remainder modulo ``s = geom.pair_size`` picks the tile of a cluster's
    group ``s*t .. s*t + s-1`` along that dim.
    """

    def __init__(
        self,
        geom: TileGeometry,
        lengths: Sequence[Num],
        work_idx: Num,
        mn: MinMax = min,
        mx: MinMax = max,
        sel: Select = _py_select,
    ) -> None:
        self.geom, self.mn, self.mx, self.sel = geom, mn, mx, sel
        rank = geom.rank
        ntiles = geom.tiles_per_dim(lengths)
        rem = work_idx
        pair, size = geom.pair_dim, geom.pair_size
        # Whether this item's cluster shares its K/V loads (Python True unless tails are on).
        self.shared: Num = True
        if pair >= 0 and geom.pair_tail:  # complete groups first, then the tail tiles (row-major)
            per_group = prod(ntiles)
            rest = work_idx // per_group
            r = work_idx - rest * per_group
            groups = ntiles[pair] // size
            paired = prod(n for i, n in enumerate(ntiles) if i != pair) * groups * size
            shared = r < paired
            low = sel(shared, r % size, 0)
            rem = sel(shared, r // size, r - paired)
            ntiles[pair] = sel(shared, groups, ntiles[pair] - groups * size)
            base = sel(shared, 0, groups * size)
            self.shared = sel(shared, 1, 0)
        elif pair >= 0:  # the lowest digit picks the tile of the group; the groups run row-major
            low = rem % size
            rem = rem // size
            ntiles[pair] = ntiles[pair] // size
        tile: list[Num] = [0] * rank
        for i in reversed(geom.digit_order):
            tile[i] = rem % ntiles[i]
            rem = rem // ntiles[i]
        if pair >= 0 and geom.pair_tail:
            tile[pair] = sel(shared, size * tile[pair] + low, base + tile[pair])
            rem = rest
        elif pair >= 0:
            tile[pair] = size * tile[pair] + low
        group: list[Num] = [0] * rank
        for i in reversed(range(rank)):
            group[i] = rem % geom.dilation[i]
            rem = rem // geom.dilation[i]
        self.q_tile_idx = tile
        self.group = group
        self.group_len = [nb.group_length(n, d, g) for n, d, g in zip(lengths, geom.dilation, group)]
        self.kv_lo: list[Num] = []
        self.kv_extent: list[Num] = []
        self.full_lo: list[Num] = []
        self.full_extent: list[Num] = []
        for i in range(rank):
            lo, extent, f_lo, f_extent = dim_schedule(geom, i, tile[i], self.group_len[i], mn, mx)
            self.kv_lo.append(lo)
            self.kv_extent.append(extent)
            self.full_lo.append(f_lo)
            self.full_extent.append(f_extent)
        self.num_kv_tiles = prod(self.kv_extent)
        self.num_full_tiles = prod(self.full_extent)
        self.num_partial_tiles = self.num_kv_tiles - self.num_full_tiles
        # Full-first (kv_start_align): the full tiles' walk starts at dim-0 index ``full_start``
        # (the first aligned one, else the box's first), ``full_shift`` positions into the
        # row-major box.  Partial-first both stay Python 0s (no extra value carried in loops).
        self.full_start: Num = 0
        self.full_shift: Num = 0
        if geom.kv_start_align > 0:
            a = geom.kv_start_align
            lo, ext = self.full_lo[0], self.full_extent[0]
            up = (lo + (a - 1)) // a * a
            self.full_start = sel(up < lo + ext, up, lo)
            self.full_shift = (self.full_start - lo) * prod(self.full_extent[1:])

    # The visiting order: the kernels visit the two kinds of tiles in two runs, the partial tiles
    # (masked loop body) and the full ones (unmasked loop body), so no per-tile branch merges
    # masked and unmasked scores.  Partial-first by default; full-first with ``kv_start_align``.
    # The full tiles are the sub-box ``full_lo + [0, full_extent)``; the partial ones are the rest
    # of the box, peeled dim by dim.

    @property
    def full_first(self) -> bool:
        """Whether the full tiles run first (a static property of the geometry)."""
        return self.geom.kv_start_align > 0

    def visit_runs(self) -> list[tuple[Callable[[Num], list[Num]], bool, Num]]:
        """The item's two runs in visiting order: ``(tile_of, masked, count)`` each, where
        ``tile_of(j)`` is the run's ``j``-th tile and ``masked`` (static) whether it needs the mask."""
        partial = (self.partial_tile, True, self.num_partial_tiles)
        full = (self.full_tile, False, self.num_full_tiles)
        return [full, partial] if self.full_first else [partial, full]

    def full_tile(self, j: Num) -> list[Num]:
        """Per-dim KV tile indices of the ``j``-th full tile (row-major over the full sub-box,
        from position ``full_shift`` on, wrapping round)."""
        if self.full_first:
            k = j + self.full_shift
            j = self.sel(k >= self.num_full_tiles, k - self.num_full_tiles, k)
        return self._box_index(j, self.full_lo, self.full_extent)

    def _partial_parts(self) -> list[tuple[list[Num], list[Num]]]:
        """The partial tiles as ``2 * rank`` boxes ``(origin, extent)``, some possibly empty.

        Part ``(d, low)``: dims before ``d`` in their full range, dim ``d`` below its full range,
        dims after ``d`` over the whole box; ``(d, high)`` likewise above the full range.
        """
        parts = []
        r = self.geom.rank
        for d in range(r):
            f_hi = self.full_lo[d] + self.full_extent[d]
            for lo_d, ext_d in (
                (self.kv_lo[d], self.full_lo[d] - self.kv_lo[d]),
                (f_hi, self.kv_lo[d] + self.kv_extent[d] - f_hi),
            ):
                origin = self.full_lo[:d] + [lo_d] + self.kv_lo[d + 1:]
                extent = self.full_extent[:d] + [ext_d] + self.kv_extent[d + 1:]
                parts.append((origin, extent))
        return parts

    def partial_tile(self, j: Num) -> list[Num]:
        """Per-dim KV tile indices of the ``j``-th partial tile, ``0 <= j < num_partial_tiles``.

        The last part starting at or before ``j`` holds it (empty parts start where the next one
        does, so they are never the last such part); then ``j`` is decoded inside that box.
        """
        parts = self._partial_parts()
        origin, extent = list(parts[0][0]), list(parts[0][1])
        base: Num = 0
        start: Num = 0
        prev_size = prod(extent)
        for p_origin, p_extent in parts[1:]:
            start = start + prev_size
            prev_size = prod(p_extent)
            take = j >= start
            origin = [self.sel(take, a, b) for a, b in zip(p_origin, origin)]
            extent = [self.sel(take, a, b) for a, b in zip(p_extent, extent)]
            base = self.sel(take, start, base)
        return self._box_index(j - base, origin, extent)

    def tile_at(self, s: Num) -> list[Num]:
        """Per-dim KV tile indices of visiting step ``s`` (the first run, then the second): a
        decode per call, for look-ahead work off the loading path (the dev L2 prefetch)."""
        (first_of, _, n_first), (second_of, _, _) = self.visit_runs()
        in_first = s < n_first
        a, b = first_of(s), second_of(s - n_first)
        return [self.sel(in_first, x, y) for x, y in zip(a, b)]

    def kv_boxes(self) -> list[tuple[list[Num], list[Num]]]:
        """The visited tiles as ``(origin, extent)`` boxes in the visiting order: the ``2 * rank``
        partial parts, then the full sub-box; full-first, the full sub-box split at ``full_start``
        along dim 0 (its rotated walk) and then the partial parts.  Walking each box row-major
        with ``box_step`` gives the order of ``visit_runs`` without a division or a part search
        per tile (the producer's loops; its issue slots are shared with a consumer warp's)."""
        full = [(list(self.full_lo), list(self.full_extent))]
        if not self.full_first:
            return self._partial_parts() + full
        lo, start = self.full_lo[0], self.full_start
        end = lo + self.full_extent[0]
        rest = list(self.full_lo[1:]), list(self.full_extent[1:])
        full = [([start] + rest[0], [end - start] + rest[1]), ([lo] + rest[0], [start - lo] + rest[1])]
        return full + self._partial_parts()

    def box_step(self, idx: Sequence[Num], origin: Sequence[Num], extent: Sequence[Num]) -> list[Num]:
        """The row-major successor of ``idx`` inside a box (an odometer: the last dim advances, a dim
        that passes its end returns to its origin and carries; dim 0 only ever advances)."""
        out = list(idx)
        carry: Num = 1
        for i in reversed(range(len(idx))):
            v = idx[i] + carry
            if i == 0:
                out[0] = v
            else:
                wrap = v >= origin[i] + extent[i]
                out[i] = self.sel(wrap, origin[i], v)
                carry = self.sel(wrap, 1, 0)
        return out

    def _box_index(self, j: Num, origin: Sequence[Num], extent: Sequence[Num]) -> list[Num]:
        """Per-dim indices of position ``j`` of a box (row-major, last dim fastest).

        Divides by ``max(extent, 1)``: ``partial_tile`` decodes inside its selected part, which
        may be an empty one when ``j`` is out of range, and must not divide by zero there.
        """
        idx: list[Num] = [0] * len(origin)
        rem = j
        for i in reversed(range(len(origin))):
            if i == 0:
                idx[i] = origin[i] + rem
            else:
                ext = self.mx(extent[i], 1)
                idx[i] = origin[i] + rem % ext
                rem = rem // ext
        return idx

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


class TileCursor(DslCarried):
    """Per-dim KV tile indices carried across a run-time loop (the producer's box walk)."""

    def __init__(self, idx: Sequence[Num]) -> None:
        self.idx = list(idx)
