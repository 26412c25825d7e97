"""GNA window math: the one place the neighborhood formulas live.

Every consumer -- the reference backend (torch tensors), the simulator (numpy / Python ints) and
the kernels' tile schedulers (CuTe DSL ``Int32`` values traced at compile time) -- calls these
functions.  They are written with ``//``, ``+``, ``-`` and two injected functions ``mn``/``mx``
(element-wise min/max of the caller's number type), so one copy of the formulas serves all of them.
``causal`` must be a Python bool (it is a compile-time constant in the kernels).

Coordinates: everything below works on *in-group* positions.  Dilation ``d`` splits an axis of
length ``L`` into ``d`` interleaved groups; token ``x`` is in group ``x % d`` at in-group position
``x // d``, and group ``g`` has ``group_length(L, d, g)`` tokens.  Windows are half-open
``[start, end)`` in in-group positions.  See ``docs/semantics.md``.

Both ``window_start`` and ``window_end`` are non-decreasing in the query position, which is what
makes the tile-level ranges below exact: the keys any query of ``[q_lo, q_hi)`` sees are
``[start(q_lo), end(q_hi - 1))`` and the keys every one of them sees are
``[start(q_hi - 1), end(q_lo))``.
"""

from __future__ import annotations

from typing import Any, Callable

Num = Any  # int, numpy array, torch tensor or a CuTe DSL Int32
MinMax = Callable[[Num, Num], Num]


def group_length(length: Num, dilation: Num, group: Num) -> Num:
    """Number of tokens of dilation group ``group`` on an axis of ``length`` tokens.

    ``length // dilation`` plus one for the first ``length % dilation`` groups.  Written without a
    comparison so it also works on DSL integers: ``(length % d + d - 1 - g) // d`` is 1 exactly
    when ``g < length % d`` (for ``0 <= g < d``).
    """
    return length // dilation + (length % dilation + dilation - 1 - group) // dilation


def stride_leader(i: Num, length: Num, stride: int, causal: bool, mn: MinMax = min) -> Num:
    """The query whose window every query of ``i``'s stride group shares.

    Non-causal: the centre of the group (right of centre for even strides); causal: its last query.
    The last, partial stride group's leader is clamped to the axis, not its own centre.
    """
    offset = stride - 1 if causal else stride // 2
    return mn((i // stride) * stride + offset, length - 1)


def window_start(
    i: Num, length: Num, window: int, stride: int, causal: bool, mn: MinMax = min, mx: MinMax = max
) -> Num:
    """First key (in-group position) of query ``i``'s window on an axis of ``length`` tokens."""
    leader = stride_leader(i, length, stride, causal, mn)
    if causal:
        return mx(leader - window + 1, 0)
    return mn(mx(leader - window // 2, 0), length - window)


def window_end(i: Num, start: Num, window: int, causal: bool) -> Num:
    """One past the last key of query ``i``'s window (``start`` from :func:`window_start`)."""
    if causal:
        return i + 1
    return start + window


def window(
    i: Num, length: Num, window: int, stride: int, causal: bool, mn: MinMax = min, mx: MinMax = max
) -> tuple[Num, Num]:
    """``(start, end)`` of query ``i``'s window, in-group positions, half-open."""
    start = window_start(i, length, window, stride, causal, mn, mx)
    return start, window_end(i, start, window, causal)


def visible_key_range(
    q_lo: Num,
    q_hi: Num,
    length: Num,
    window: int,
    stride: int,
    causal: bool,
    mn: MinMax = min,
    mx: MinMax = max,
) -> tuple[Num, Num]:
    """Keys seen by *any* query of ``[q_lo, q_hi)`` (non-empty, clipped to the axis by the caller).

    By monotonicity this is ``[start(q_lo), end(q_hi - 1))``.
    """
    lo = window_start(q_lo, length, window, stride, causal, mn, mx)
    last = q_hi - 1
    hi = window_end(last, window_start(last, length, window, stride, causal, mn, mx), window, causal)
    return lo, hi


def common_key_range(
    q_lo: Num,
    q_hi: Num,
    length: Num,
    window: int,
    stride: int,
    causal: bool,
    mn: MinMax = min,
    mx: MinMax = max,
) -> tuple[Num, Num]:
    """Keys seen by *every* query of ``[q_lo, q_hi)``: ``[start(q_hi - 1), end(q_lo))``.

    May be empty (``lo >= hi``).  A key tile inside it needs no element mask in this dimension.
    """
    lo = window_start(q_hi - 1, length, window, stride, causal, mn, mx)
    hi = window_end(q_lo, window_start(q_lo, length, window, stride, causal, mn, mx), window, causal)
    return lo, hi


def kv_tile_range(
    q_tile: Num,
    q_tile_size: int,
    kv_tile_size: int,
    length: Num,
    window: int,
    stride: int,
    causal: bool,
    mn: MinMax = min,
    mx: MinMax = max,
) -> tuple[Num, Num]:
    """Half-open range of KV tile indices that query tile ``q_tile`` must visit (one dim, in-group).

    The query tile is clipped to the axis; the key range is rounded out to whole KV tiles.  This is
    the scheduler's rule, shared by the kernels and the simulator.
    """
    q_lo = q_tile * q_tile_size
    q_hi = mn(q_lo + q_tile_size, length)
    k_lo, k_hi = visible_key_range(q_lo, q_hi, length, window, stride, causal, mn, mx)
    return k_lo // kv_tile_size, (k_hi + kv_tile_size - 1) // kv_tile_size


def kv_full_tile_range(
    q_tile: Num,
    q_tile_size: int,
    kv_tile_size: int,
    length: Num,
    window: int,
    stride: int,
    causal: bool,
    mn: MinMax = min,
    mx: MinMax = max,
) -> tuple[Num, Num]:
    """Half-open range of KV tile indices that every (valid) query of ``q_tile`` sees whole (one dim).

    May be empty (``lo >= hi``).  These are the KV tiles inside the tile's common key range; a KV
    tile reaching past the axis is never among them (its padded key slots must be masked), since
    the common range ends inside the axis.  A multi-dim tile pair is full iff it is full in every dim.
    """
    q_lo = q_tile * q_tile_size
    q_hi = mn(q_lo + q_tile_size, length)
    c_lo, c_hi = common_key_range(q_lo, q_hi, length, window, stride, causal, mn, mx)
    return (c_lo + kv_tile_size - 1) // kv_tile_size, c_hi // kv_tile_size


def kv_tile_is_full(
    q_tile: Num,
    kv_tile: Num,
    q_tile_size: int,
    kv_tile_size: int,
    length: Num,
    window: int,
    stride: int,
    causal: bool,
    mn: MinMax = min,
    mx: MinMax = max,
) -> Num:
    """Whether every (valid) query of ``q_tile`` sees every key slot of ``kv_tile`` (one dim).

    Returns a boolean of the caller's number type (see :func:`kv_full_tile_range`).
    """
    lo, hi = kv_full_tile_range(q_tile, q_tile_size, kv_tile_size, length, window, stride, causal, mn, mx)
    return (kv_tile >= lo) & (kv_tile < hi)


def num_tiles(length: Num, tile: int) -> Num:
    """Tiles of size ``tile`` covering ``length`` positions (ceil division)."""
    return (length + tile - 1) // tile


def tiles_per_group(length: Num, dilation: Num, tile: int) -> Num:
    """Tiles of size ``tile`` covering the longest dilation group, ``ceil(length / dilation)`` tokens.

    The per-dim tile count of the group-major tiling shared by the kernels' grids, their debug
    counters and the simulator (shorter groups leave their last tile empty).
    """
    return num_tiles(num_tiles(length, dilation), tile)
