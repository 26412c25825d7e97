"""Pick the (Q tile, KV tile) shapes of a problem with the simulator's tile counts.

Which tiling is fastest depends on the window: a KV tile that matches the window edges leaves
fewer masked and fewer wasted pairs, a smaller KV tile wastes less at the edges but pays the
per-tile overhead more often.  The simulator counts, exactly and in milliseconds, how many tile
pairs each supported tiling visits and how many of them need an element mask; a small cost model
turns those counts into a relative time, and the cheapest supported tiling wins.

Cost of one (batch, head), in units of one KV token of an unmasked tile pair::

    cost = q * ((full + (1 + MASK_FACTOR) * partial) * (kv_tile_tokens + TILE_OVERHEAD)
                + Q_TILE_OVERHEAD * q_tiles),        q = q_tile_tokens / 128

Every supported Q tile holds 128 tokens today (q = 1); a larger Q tile (sm100 may add 256-token
ones) is costed as proportionally more work per pair, which is an assumption until measured.
Head dim scales every term alike and drops out.  The constants were fitted on the
H100 (serial mainloop, fp16, D = 128; ``docs/sm90-kernel.md``, "Tile shapes chosen per problem"):

* ``TILE_OVERHEAD`` -- the part of a tile pair's time that does not shrink with the KV tile
  (pipeline waits, the O rescale, row reductions, loop bookkeeping), in KV tokens: dense 2D 256^2
  with KV tiles of 64 (8x8) and 128 (16x8) tokens; per-pair time ratio ``r = 0.575`` gives
  ``(128 r - 64) / (1 - r) = 22.6``.
* ``Q_TILE_OVERHEAD`` -- prologue (Q load, first K) and epilogue (O store) of one CTA, in the same
  units: what the block-sparse s=16^2 run takes beyond its full pairs, per Q tile (408).
* ``MASK_FACTOR`` -- a masked pair costs 1 + m times a full one: the rest of the s=1 run with the
  same tiles (0.211).

With these, the model reproduces the measured 2D and 1D times within 2 % (2D s=1 for three
tilings, s=16, dense with KV 64 and 128) and the 3D s=1 ratio between two tilings within 0.2 %.

Ties (within ``TIE_TOLERANCE``) go to the kernel's default tiling, then to the earlier entry of
``config.supported_tile_shapes``: the choice is deterministic and stable under rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from math import gcd, prod
from typing import Any

from gna_cute.params import GNAParams
from gna_cute.kernels import config
from gna_cute.kernels.dilation_split import kernel_dilation
from gna_cute.kernels.scheduler import TileGeometry, dim_schedule, pairable_dims

#: Extra cost of a masked tile pair, relative to an unmasked one of the same shape.
MASK_FACTOR = 0.21
#: Fixed cost of one tile pair, in KV tokens (see the module docstring for how it is measured).
TILE_OVERHEAD = 23.0
#: Fixed cost of one Q tile (CTA prologue + epilogue), in KV tokens.
Q_TILE_OVERHEAD = 410.0
#: Relative cost difference under which two tilings count as equally fast.
TIE_TOLERANCE = 1e-3


@dataclass(frozen=True)
class CostModel:
    """The constants of the cost formula (frozen: part of the choice's cache key)."""

    mask_factor: float = MASK_FACTOR
    tile_overhead: float = TILE_OVERHEAD
    q_tile_overhead: float = Q_TILE_OVERHEAD

    def __post_init__(self) -> None:
        for name in ("mask_factor", "tile_overhead", "q_tile_overhead"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{name}={value!r} must be a number >= 0")


@dataclass(frozen=True)
class TileCost:
    """One candidate tiling with the counts behind its cost."""

    q_tile_shape: tuple[int, ...]
    kv_tile_shape: tuple[int, ...]
    full: int
    partial: int
    q_tiles: int
    block_sparse: bool
    cost: float  # KV-token units per (batch, head)


def tile_cost(params: GNAParams, q_tile_shape: tuple[int, ...], kv_tile_shape: tuple[int, ...],
              model: CostModel = CostModel()) -> TileCost:
    """The modelled cost of one tiling of ``params`` (simulator counts, no GPU)."""
    from gna_cute.sim import Tiling, simulate  # numpy only; imported late to keep this module light

    stats = simulate(params, Tiling(tuple(q_tile_shape), tuple(kv_tile_shape)))
    per_pair = prod(kv_tile_shape) + model.tile_overhead
    q_scale = prod(q_tile_shape) / 128.0  # work per pair grows with the Q rows (1 for all sm90 tiles)
    cost = q_scale * ((stats.full + (1.0 + model.mask_factor) * stats.partial) * per_pair
                      + model.q_tile_overhead * stats.q_tiles)
    return TileCost(tuple(q_tile_shape), tuple(kv_tile_shape), stats.full, stats.partial,
                    stats.q_tiles, stats.block_sparse, cost)


def rank_tilings(arch: int, params: GNAParams, head_dim: int,
                 model: CostModel = CostModel()) -> list[TileCost]:
    """Every supported tiling of ``params`` on ``arch``, cheapest first (ties as documented)."""
    if not isinstance(params, GNAParams):
        raise TypeError(f"params must be a GNAParams, got {type(params).__name__}")
    for name, value in (("arch", arch), ("head_dim", head_dim)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {value!r}")
    supported = config.supported_tile_shapes(arch, params.rank, head_dim)
    if not supported:
        raise ValueError(
            f"arch={arch}, rank={params.rank}, head_dim={head_dim}: the kernel supports no tile shapes"
        )
    default = config.default_tile_shapes(arch, params.rank, head_dim)
    costs = [tile_cost(params, q, kv, model) for q, kv in supported]
    best = min(c.cost for c in costs)

    def key(item: tuple[int, TileCost]) -> tuple:
        i, c = item
        if c.cost <= best * (1.0 + TIE_TOLERANCE):  # tied with the best: default, then list order
            return (0, (c.q_tile_shape, c.kv_tile_shape) != default, 0.0, i)
        return (1, False, c.cost, i)

    return [c for _, c in sorted(enumerate(costs), key=key)]


@lru_cache(maxsize=1024)
def choose_tile_shapes(arch: int, params: GNAParams, head_dim: int,
                       model: CostModel = CostModel()) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The cheapest supported ``(q_tile_shape, kv_tile_shape)`` for ``params`` on ``arch``.

    Cached per (arch, params, head_dim, model): the simulator takes milliseconds, a repeated call
    a dictionary lookup.  Raises ValueError when the kernel supports no tiles for this problem.
    """
    best = rank_tilings(arch, params, head_dim, model)[0]
    return best.q_tile_shape, best.kv_tile_shape


@lru_cache(maxsize=1024)
def choose_mainloop(arch: int, params: GNAParams, q_tile_shape: tuple[int, ...],
                    kv_tile_shape: tuple[int, ...]) -> str:
    """The sm90 mainloop for this problem and tiling (``FwdConfig.mainloop``).

    Measured on the H100 (docs/sm90-kernel.md, "Mainloop order"): the rotated loop is fastest or
    within the run-to-run spread on every bench row, with KV tiles of 128 tokens (dense,
    block-sparse, 1D, 2D and 3D s=1; 11-68 % of the visited pairs masked) and of 64 (2D dense
    92.5 ms vs serial 98.6, 1D s=1 0.068 vs 0.075 ms).  The serial and hybrid loops are kept for
    the sweeps; the sm100 kernel has one mainloop ("serial" is its config's placeholder).
    """
    return "rotated" if arch == 90 else "serial"


#: The largest cluster the product launches (``choose_cluster``'s ``max_size`` in the host layer).
#: Pairs: clusters of four are correct but ~1.7x slower on the H100, where only 30 of them (120 of
#: 132 SMs) are co-resident; their 2-3 % faster tiles do not pay for the idle SMs on any bench row
#: (docs/sm90-kernel.md, "Measured: clusters of four lose on the H100").
PRODUCT_MAX_CLUSTER = 2


def _geometry(params: GNAParams, q_tile_shape: tuple[int, ...], kv_tile_shape: tuple[int, ...]) -> TileGeometry:
    """The scheduler's static geometry of ``params`` with these tiles (plain row-major order)."""
    return TileGeometry(tuple(q_tile_shape), tuple(kv_tile_shape), tuple(params.kernel_size),
                        tuple(params.stride), tuple(params.dilation), tuple(params.is_causal))


#: Whether the product lets a paired dim end in unshared tail clusters (``FwdConfig.cluster_tail``;
#: 3D 30x48x80 s = 16x8x8 with 2x8x8 tiles: 14 of 15 tiles along dim 0 pair).  Off: built and
#: checked on a CPU (the work order's brute-force tests, the sm_90a compile), not yet run on a GPU.
PRODUCT_CLUSTER_TAIL = False


@lru_cache(maxsize=1024)
def choose_cluster(arch: int, params: GNAParams, q_tile_shape: tuple[int, ...], kv_tile_shape: tuple[int, ...],
                   max_size: int = PRODUCT_MAX_CLUSTER, tail: bool = False) -> tuple[int, int, bool]:
    """``(FwdConfig.cluster_dim, FwdConfig.cluster_size, FwdConfig.cluster_tail)``: the dim along
    which groups of 2 or 4 neighbouring Q tiles share their K/V loads in one cluster, the group
    size, and whether the dim's last tiles form unshared tail clusters; ``(-1, 2, False)`` for none.

    Only where the groups' KV schedules are identical in every launch (``scheduler.pairable_dims``:
    dense dims, strides that are multiples of the group's Q tiles); not for dims split into one
    launch per dilation group (their launches have other lengths).  The largest size up to
    ``max_size`` that some dim allows; the last such dim is taken.  With ``tail``, a dim whose tile
    count leaves a remainder is taken where no dim of that size pairs whole.
    """
    if arch != 90 or kernel_dilation(params) != tuple(params.dilation):
        return -1, 2, False
    geom = _geometry(params, q_tile_shape, kv_tile_shape)
    for size in sorted((s for s in config.CLUSTER_SIZES if s <= max_size), reverse=True):
        if dims := pairable_dims(geom, params.spatial_shape, size):
            return dims[-1], size, False
        if tail and (dims := pairable_dims(geom, params.spatial_shape, size, tail=True)):
            return dims[-1], size, True
    return -1, 2, False


@lru_cache(maxsize=1024)
def choose_tile_order(arch: int, params: GNAParams, q_tile_shape: tuple[int, ...],
                      kv_tile_shape: tuple[int, ...]) -> tuple[int, ...]:
    """``FwdConfig.tile_order``: the dims sorted by how much of its KV box a Q tile shares with
    its neighbour along them (:func:`step_share`), least first, so the work items step fastest
    along the dim whose neighbours read the most K/V in common; ``()`` where that is row-major.

    Why: the items in flight at one time are consecutive ones; neighbours that share most of their
    K/V then read it from L2 together.  Measured on the H100 (docs/sm90-kernel.md, "Work-item tile
    order"): 3D 30x48x80 w = 18x24x24, 2x8x8 tiles (dim 0, whose neighbours share 8 of 9 KV
    tiles, fastest): s = 1 52.2 vs 53.3 ms, s = 16x8x8 level in time with 40 % less DRAM traffic.
    Ties keep row-major (the lower dim slower).  Only the static parameters decide (the spatial
    sizes do not), so one compiled kernel still serves every size.
    """
    if arch != 90 or params.rank == 1:
        return ()
    geom = _geometry(params, q_tile_shape, kv_tile_shape)
    shares = [step_share(geom, d) for d in range(params.rank)]
    order = tuple(sorted(range(params.rank), key=lambda d: (round(shares[d], 3), d)))
    return () if order == tuple(range(params.rank)) else order


def step_share(geom: TileGeometry, dim: int) -> float:
    """The fraction of a Q tile's visited KV tiles along ``dim`` that the previous Q tile along
    ``dim`` visits too, averaged over the interior of a long axis (away from its borders, where
    clamped windows would make it depend on the spatial size)."""
    q, s = geom.q_tile[dim], geom.stride[dim]
    period = q * s // gcd(q, s)  # the boxes' shifts repeat every period / q tiles
    margin = _border_margin(geom, dim)
    count = 64 * (period // q) + 1
    n = (count + 2 * margin) * q
    boxes = [dim_schedule(geom, dim, t, n)[:2] for t in range(margin, margin + count)]
    shared = [max(0, min(a + m, b + e) - max(a, b)) / e for (a, m), (b, e) in zip(boxes, boxes[1:])]
    return sum(shared) / len(shared)


@lru_cache(maxsize=1024)
def choose_persistent_ctas(arch: int, params: GNAParams, sm_count: int, q_tile_shape: tuple[int, ...],
                           kv_tile_shape: tuple[int, ...], cluster_size: int = 2) -> int:
    """``FwdConfig.persistent_ctas``: the SM count, rounded down to a multiple of ``cluster_size``
    (every cluster's CTAs walk the work together), where persistent CTAs measured faster, else 0
    (one CTA per work item).

    Measured on the H100 (docs/sm90-kernel.md, "Persistent CTAs"): 1D problems gain 4-5 % (32K
    tokens, w = 2048: s = 1 0.0695 -> 0.0658 ms, s = 2048 0.063 -> 0.0605 ms; dense level) from
    hiding the next item's CTA start and Q/K loads, which under a saturated L2 take ~2 us.  2D/3D
    problems with unequal work items lose to the static round-robin (2D s = 1: H200 12.0 vs
    11.9 ms with the item boundary pipelined, H100 +4 % before), so they keep one CTA per item,
    as do causal 1D problems.  2D/3D problems whose items are all alike (no partial tile, the
    same KV tile count everywhere: block-sparse strides, dense) run persistent: on the H200 with
    the pipelined item boundary 2D s = 16 took 8.06 / 8.12 ms against 8.34 / 8.34 with one CTA
    per item (dense 2D 80.5 / 81.1 vs 80.8 / 81.7, 3D s = 16 within its spread).
    """
    if (why := config.cluster_size_problem(cluster_size)) is not None:
        raise ValueError(why)
    if arch != 90 or sm_count < cluster_size:
        return 0
    if (params.rank == 1 and not any(params.is_causal)) or _uniform_work(params, q_tile_shape, kv_tile_shape):
        return sm_count - sm_count % cluster_size
    return 0


#: Whether the product runs persistent CTAs with one Q buffer where items are long
#: (``FwdConfig.q_buffers = 1``) and slices the K/V stages early (``early_stage_slices``).  Both
#: shorten the unmasked loop's SASS toward FA4's (1D dense: 507 -> 460 instructions per tile, FA4
#: 457); off until the interleaved bench timing on a GPU says they win (docs/sm90-kernel.md).
PRODUCT_ONE_Q_BUFFER = False
PRODUCT_EARLY_STAGE_SLICES = False
#: Items of at least this many KV tiles (per Q tile, on average) take one Q buffer: one item
#: boundary, no longer overlapped with the tensor cores (~1 us), against ~3 % of each tile.
ONE_Q_BUFFER_MIN_TILES = 64


@lru_cache(maxsize=1024)
def choose_q_buffers(arch: int, params: GNAParams, q_tile_shape: tuple[int, ...], kv_tile_shape: tuple[int, ...],
                     persistent_ctas: int) -> int:
    """``FwdConfig.q_buffers``: 1 for persistent CTAs whose items average at least
    ``ONE_Q_BUFFER_MIN_TILES`` visited KV tiles (where ``PRODUCT_ONE_Q_BUFFER`` is on), else 0
    (the kernel's default: two Q buffers where they fit)."""
    if arch != 90 or not persistent_ctas or not PRODUCT_ONE_Q_BUFFER:
        return 0
    return 1 if _tile_counts(params, q_tile_shape, kv_tile_shape)[0].mean() >= ONE_Q_BUFFER_MIN_TILES else 0


def choose_early_stage_slices(arch: int, mainloop: str) -> bool:
    """``FwdConfig.early_stage_slices``: on for the sm90 rotated loops where
    ``PRODUCT_EARLY_STAGE_SLICES`` is on."""
    return arch == 90 and mainloop != "serial" and PRODUCT_EARLY_STAGE_SLICES


#: Whether the product computes part of the softmax's exponentials on the FMA pipe at head dims
#: <= 64 (``FwdConfig.exp2_emulation``); off until a GPU measures it.
PRODUCT_EXP2_EMULATION = False
#: One exponential in this many goes to the FMA pipe: the MUFU unit's 1024 clocks per 128x128 tile
#: (16 per clock) drop to 896, while each SM sub-partition's two consumer warps issue ~1010 instead
#: of 882 instructions per tile at D 64 (8 FMA-pipe instructions and an LEA each; softmax.py).  One
#: in four would leave issue (1140) the bound.  A paper estimate until measured.
EXP2_EMULATION_EVERY = 8


def choose_exp2_emulation(arch: int, head_dim: int) -> int:
    """``FwdConfig.exp2_emulation``: ``EXP2_EMULATION_EVERY`` at head dims <= 64 on sm90, where a
    tile's exponentials take the MUFU unit as long as (D 64) or longer than (D 32) its GEMMs take
    the tensor cores (``PRODUCT_EXP2_EMULATION`` on), else 0."""
    return EXP2_EMULATION_EVERY if arch == 90 and head_dim <= 64 and PRODUCT_EXP2_EMULATION else 0


#: Whether the product visits the full KV tiles first (``FwdConfig.kv_start_align``), by rule:
#: - ``PRODUCT_SHARED_START_1D``: persistent 1D sliding windows (partial tiles at both window
#:   edges) from an aligned tile that groups of neighbouring Q tiles share, so the launch's first
#:   K/V loads are ~17 distinct tiles instead of ~124 (1D 32K, w = 2048, s = 1; the blocked row,
#:   whose first loads are shared, reached its first S 1.2 us sooner in the H100 trace);
#: - ``PRODUCT_FULL_FIRST_UNIFORM``: items with no partial tile (dense, block-sparse strides), in
#:   order unchanged (A = 1): ptxas builds the K descriptors of the first of the two loops without
#:   the 32-bit add pairs (sm_90a, DSL 4.8.1: unmasked loop 507 -> 470 instructions per tile on 1D
#:   dense, 515 -> 477 on 2D s = 16, 500 -> 463 on 3D s = 16; turn window ~100 -> 61-70).
#: Both off until the interleaved bench timing on a GPU says they win.
PRODUCT_SHARED_START_1D = False
PRODUCT_FULL_FIRST_UNIFORM = False


@lru_cache(maxsize=1024)
def choose_kv_start_align(arch: int, params: GNAParams, q_tile_shape: tuple[int, ...],
                          kv_tile_shape: tuple[int, ...], mainloop: str, persistent_ctas: int) -> int:
    """``FwdConfig.kv_start_align`` (0: partial tiles first) for the sm90 rotated mainloop.

    Problems with no partial tile take 1 (full-first, unrotated).  Other 1D persistent problems
    whose interior Q tiles visit partial tiles and ``F >= 3`` full ones take the largest power of
    two ``A <= (F + 1) / 2``: then the ``A`` neighbours of an aligned group all see KV tile
    ``A * g`` fully and start there.  Only the static parameters (and the problem's uniformity,
    which the persistent launch already depends on) decide.
    """
    if arch != 90 or mainloop != "rotated":
        return 0
    if _uniform_work(params, q_tile_shape, kv_tile_shape):
        return 1 if PRODUCT_FULL_FIRST_UNIFORM else 0
    if PRODUCT_SHARED_START_1D and params.rank == 1 and persistent_ctas:
        _, extent, _, full = _interior_schedule(_geometry(params, q_tile_shape, kv_tile_shape), 0)
        if full >= 3 and extent > full:
            return 1 << (((full + 1) // 2).bit_length() - 1)
    return 0


def _interior_schedule(geom: TileGeometry, dim: int) -> tuple[int, int, int, int]:
    """``dim_schedule`` of a Q tile in the middle of a long axis (no border clamps its window)."""
    margin = _border_margin(geom, dim)
    return dim_schedule(geom, dim, 2 * margin, (4 * margin + 1) * geom.q_tile[dim])


def _border_margin(geom: TileGeometry, dim: int) -> int:
    """How many Q tiles at each end of an axis along ``dim`` have KV boxes a border can clamp."""
    q, k, s, d = geom.q_tile[dim], geom.kernel_size[dim], geom.stride[dim], geom.dilation[dim]
    return -(-(k * d + s) // q) + 1


@lru_cache(maxsize=64)
def _tile_counts(params: GNAParams, q_tile_shape: tuple[int, ...], kv_tile_shape: tuple[int, ...]) -> Any:
    """The simulator's visited / full KV tiles per Q tile (the counts the kernels' debug counters
    are tested against), computed once per problem for the choices that read them (read-only)."""
    from gna_cute.sim import tile_counts  # numpy only; imported late so the module stays light

    counts = tile_counts(params, q_tile_shape, kv_tile_shape)
    counts.setflags(write=False)
    return counts


def _uniform_work(params: GNAParams, q_tile_shape: tuple[int, ...], kv_tile_shape: tuple[int, ...]) -> bool:
    """Whether every Q tile visits the same number of KV tiles, all of them unmasked."""
    counts = _tile_counts(params, q_tile_shape, kv_tile_shape)
    visited, full = counts[0], counts[1]
    return bool((visited == visited.flat[0]).all() and (full == visited).all())
