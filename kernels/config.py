"""Static (compile-time) configuration of a GNA forward kernel.

The frozen dataclass is both what the kernel specializes on and the compile-cache key: two calls
with equal ``FwdConfig`` reuse one compiled kernel.  Everything not in here (batch, spatial sizes,
head counts, scale) is a run-time value, so one compile serves every problem size.
This module imports no CuTe DSL so the simulator and the host layer can use it cheaply.

What the Hopper kernel (``kernels/sm90_fwd.py``) supports, for the host layer's ``can_run_sm90``:
- Q tile: 128 in-group tokens (two consumer warpgroups of 64 rows); KV tile: 128 tokens, or 64;
  both shapes from :func:`supported_tile_shapes`.
- head_dim == head_dim_v in (32, 64, 128); float16 / bfloat16.
- Dilation: each tile lives in one dilation group, loaded through an ``(L/d, d)`` view of the
  axis, so one launch needs every spatial size divisible by its dilation (:func:`dilation_problem`).
  The host layer meets that for any size: a dim with ``L % d != 0`` is split into one launch per
  dilation group on strided views (``kernels/dilation_split.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod


#: ``FwdConfig.cluster_size`` values the sm90 kernel supports (neighbouring Q tiles per cluster
#: sharing every K/V load), smallest first; the host layer prefers the largest a problem allows.
CLUSTER_SIZES: tuple[int, ...] = (2, 4)


def cluster_size_problem(size: object) -> str | None:
    """Why ``size`` cannot be a ``FwdConfig.cluster_size`` (None: it can)."""
    if size in CLUSTER_SIZES:
        return None
    return f"cluster_size={size!r}: must be {' or '.join(map(str, CLUSTER_SIZES))}"


@dataclass(frozen=True)
class FwdConfig:
    arch: int  # 90 (Hopper) or 100 (Blackwell)
    dtype: str  # "float16" or "bfloat16"
    head_dim: int
    head_dim_v: int
    q_tile_shape: tuple[int, ...]  # in-group tokens per spatial dim; product = Q rows per CTA tile
    kv_tile_shape: tuple[int, ...]  # likewise for K/V; product = KV rows per tile
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    is_causal: tuple[bool, ...]
    count_tiles: bool = False  # debug: write visited / full KV-tile counts per Q tile
    # sm90 mainloop: "serial" (QK, softmax, PV in turn), "rotated" (QK(j) issued with PV(j-1),
    # softmax(j) overlapping PV(j-1), warpgroups taking turns) or "hybrid" (partial tiles serially,
    # full tiles rotated); chosen per problem by ``tile_choice.choose_mainloop``.
    mainloop: str = "serial"
    # sm90: -1, or the dim along which Q tiles 2t and 2t+1 run as one cluster of two CTAs sharing
    # every K/V load (TMA multicast); only where their KV schedules are identical
    # (``scheduler.pairable_dims``, checked by the host layer for each problem).
    cluster_dim: int = -1
    # sm90, with cluster_dim >= 0: how many neighbouring Q tiles (2 or 4) form one cluster sharing
    # every K/V load (``tile_choice.choose_cluster``).
    cluster_size: int = 2
    # sm90, with cluster_dim >= 0: the tile count along cluster_dim may leave a remainder; those
    # tail tiles then form clusters among themselves that share no load, each CTA loading its own
    # K/V (``scheduler.pairable_dims(..., tail=True)``: equal KV tile counts keep them in step).
    # Why: 3D 30x48x80 with 2x8x8 Q tiles has 15 tiles along dim 0, 14 of which pair.
    cluster_tail: bool = False
    # sm90: 0 (one CTA per work item), or the number of persistent CTAs (the SM count rounded down
    # to whole clusters, even), each looping over every gridDim.x-th work item; chosen per problem
    # by ``tile_choice.choose_persistent_ctas``.
    persistent_ctas: int = 0
    # The order in which work items walk the Q tiles, slowest dim first (a permutation of the
    # dims; empty: row-major); chosen per problem by ``tile_choice.choose_tile_order``.
    tile_order: tuple[int, ...] = ()
    # sm90 persistent CTAs: Q buffers; 0: two where they fit (the next item's Q loads during this
    # item and the item boundary is pipelined), 1: one (Q's operand descriptors are static, which
    # shortens the mainloop; the boundary is not pipelined); ``tile_choice.choose_q_buffers``.
    q_buffers: int = 0
    # sm90: the unmasked rotated step slices its K/V stage operands before the K wait (ptxas then
    # steps K's descriptors with 64-bit adds: a shorter loop); ``tile_choice.choose_early_stage_slices``.
    early_stage_slices: bool = False
    # sm90: every n-th exponential of the softmax on the FMA pipe instead of MUFU (0: none), where
    # the MUFU unit, not the tensor cores, bounds a tile (head dim <= 64; ``softmax.exp2_poly``,
    # ``tile_choice.choose_exp2_emulation``).
    exp2_emulation: int = 0
    # sm90 rotated mainloop: 0, the partial KV tiles first; A > 0, the full tiles first, from the
    # first A-aligned one along dim 0 (so neighbouring Q tiles of a sliding window start on one
    # shared KV tile), then the partial ones (``scheduler.TileGeometry.kv_start_align``;
    # ``tile_choice.choose_kv_start_align``).
    kv_start_align: int = 0

    @property
    def rank(self) -> int:
        return len(self.kernel_size)

    @property
    def q_tile_size(self) -> int:
        return prod(self.q_tile_shape)

    @property
    def kv_tile_size(self) -> int:
        return prod(self.kv_tile_shape)



# Q and KV tile shapes the Hopper kernel is built for, per rank (products 128 / 64); sm100 reuses them.
_SM90_Q_TILES: dict[int, tuple[tuple[int, ...], ...]] = {
    1: ((128,),),
    2: ((16, 8), (8, 16), (32, 4), (4, 32)),
    3: ((2, 8, 8), (4, 4, 8), (2, 4, 16), (8, 4, 4), (4, 8, 4)),
}
_SM90_KV_TILES: dict[int, tuple[tuple[int, ...], ...]] = {
    1: ((128,), (64,)),
    2: ((16, 8), (8, 16), (32, 4), (4, 32), (8, 8)),
    3: ((2, 8, 8), (4, 4, 8), (2, 4, 16), (8, 4, 4), (4, 8, 4), (2, 4, 8)),
}
_SM90_HEAD_DIMS = (32, 64, 128)


def supported_tile_shapes(arch: int, rank: int, head_dim: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Every ``(q_tile_shape, kv_tile_shape)`` pair the kernel for ``arch`` compiles for.

    Blackwell (100) takes the Hopper boxes (Q tiles of 128 tokens) with KV tiles of 64 or 128.

    Empty when the arch, rank or head dim is not supported (the caller turns that into a reason).
    """
    if arch not in (90, 100) or rank not in _SM90_Q_TILES or head_dim not in _SM90_HEAD_DIMS:
        return []
    kv_sizes = (64, 128) if arch == 100 else None  # one tcgen05 MMA: N of 64 or 128
    return [
        (q, kv)
        for q in _SM90_Q_TILES[rank]
        for kv in _SM90_KV_TILES[rank]
        if kv_sizes is None or prod(kv) in kv_sizes
    ]


def default_tile_shapes(arch: int, rank: int, head_dim: int) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """A sensible tile pair without a search: square-ish boxes of 128 tokens for Q and KV."""
    if not supported_tile_shapes(arch, rank, head_dim):
        return None
    return {1: ((128,), (128,)), 2: ((16, 8), (16, 8)), 3: ((2, 8, 8), (2, 8, 8))}[rank]


def dilation_problem(spatial_shape: tuple[int, ...], dilation: tuple[int, ...]) -> str | None:
    """Why one kernel launch cannot take this dilation in-kernel (``L % d != 0`` in some dim), or None.

    The host layer never launches such a problem as a whole: it runs those dims group by group on
    strided views with dilation 1 (``kernels/dilation_split.py``), and every launch passes this check.
    """
    for i, (n, d) in enumerate(zip(spatial_shape, dilation)):
        if n % d:
            return (
                f"the kernels' in-kernel dilation needs every spatial size divisible by its dilation; "
                f"dim {i}: {n} % {d} != 0 (spatial_shape={spatial_shape}, dilation={dilation})"
            )
    return None
