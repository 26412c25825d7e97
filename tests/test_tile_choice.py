"""CPU: the simulator-driven tile choice (kernels/tile_choice.py) and its use as the host default.

The block-sparse checks use a brute force written here from the definition (every query's window
per dim, then "is every (Q tile, KV tile) pair either untouched or entirely visible"), not the
simulator the chooser is built on.
"""

from __future__ import annotations

import dataclasses

import itertools
import math

import numpy as np
import pytest
import torch

from brute_force import neighborhood_mask
from gna_cute.backends import AttentionArgs
from gna_cute.kernels import config, interface, tile_choice
from gna_cute.kernels.scheduler import TileGeometry
from gna_cute.params import GNAParams


def _tile_blocks(spatial: tuple[int, ...], tile: tuple[int, ...]) -> np.ndarray:
    """Row-major token index -> tile id for a box tiling of the spatial grid (no dilation)."""
    coords = np.array(list(itertools.product(*[range(n) for n in spatial])))
    per_dim = [-(-n // t) for n, t in zip(spatial, tile)]
    ids = np.zeros(len(coords), dtype=np.int64)
    for i, t in enumerate(tile):
        ids = ids * per_dim[i] + coords[:, i] // t
    return ids


def _is_block_sparse(params: GNAParams, q_tile, kv_tile) -> bool:
    """Brute force: every (Q tile, KV tile) block of the dense mask is all-False or all-True, and
    the tiles divide the axes (a padded slot would need a mask)."""
    spatial = params.spatial_shape
    if any(n % t for n, t in zip(spatial, q_tile)) or any(n % t for n, t in zip(spatial, kv_tile)):
        return False
    mask = neighborhood_mask(spatial, params.kernel_size, params.stride, params.dilation, params.is_causal)
    qb, kb = _tile_blocks(spatial, q_tile), _tile_blocks(spatial, kv_tile)
    for a in np.unique(qb):
        rows = mask[qb == a]
        for b in np.unique(kb):
            block = rows[:, kb == b]
            if block.any() and not block.all():
                return False
    return True


PROBLEMS = [
    GNAParams.make((512,), 128, 1),
    GNAParams.make((512,), 128, 128),
    GNAParams.make((32, 32), (8, 8), 1),
    GNAParams.make((32, 32), (16, 16), (16, 16)),
    GNAParams.make((32, 48), (16, 8), (16, 8), is_causal=(False, True)),
    GNAParams.make((24, 40), (7, 9), (2, 3), (2, 1)),
    GNAParams.make((8, 16, 16), (4, 8, 8), (4, 8, 8)),
    GNAParams.make((6, 10, 12), (3, 5, 5), 1, (1, 2, 1), (True, False, False)),
]


@pytest.mark.parametrize("arch", [90, 100])
@pytest.mark.parametrize("params", PROBLEMS, ids=lambda p: f"{p.spatial_shape}-{p.kernel_size}-{p.stride}")
def test_choice_is_supported_and_deterministic(arch: int, params: GNAParams) -> None:
    choice = tile_choice.choose_tile_shapes(arch, params, 128)
    supported = config.supported_tile_shapes(arch, params.rank, 128)
    assert choice in [(tuple(q), tuple(kv)) for q, kv in supported]
    tile_choice.choose_tile_shapes.cache_clear()
    assert tile_choice.choose_tile_shapes(arch, params, 128) == choice
    ranked = tile_choice.rank_tilings(arch, params, 128)
    assert (ranked[0].q_tile_shape, ranked[0].kv_tile_shape) == choice
    assert len(ranked) == len(supported)
    assert all(a.cost <= b.cost * (1 + tile_choice.TIE_TOLERANCE) for a, b in zip(ranked, ranked[1:]))


@pytest.mark.parametrize(
    "spatial, window, stride",
    [
        ((1024,), 256, 256),  # blocked attention
        ((2048,), 512, 128),  # block-sparse well below s = w
        ((32, 64), (16, 32), (16, 32)),
        ((32, 32), (16, 16), (16, 16)),
        ((32, 48), (16, 24), (16, 8)),
        ((8, 16, 16), (4, 8, 8), (4, 8, 8)),
    ],
)
def test_block_sparse_problems_get_a_block_sparse_tiling(spatial, window, stride) -> None:
    params = GNAParams.make(spatial, window, stride)
    supported = config.supported_tile_shapes(90, params.rank, 128)
    assert any(_is_block_sparse(params, q, kv) for q, kv in supported), "test problem must admit one"
    q, kv = tile_choice.choose_tile_shapes(90, params, 128)
    assert _is_block_sparse(params, q, kv), (q, kv)


def test_costs_follow_the_documented_formula() -> None:
    # 1D L=512, w=128, s=128, tiles 128/128: 4 Q tiles x 1 KV tile each, all full (brute force above).
    params = GNAParams.make((512,), 128, 128)
    assert _is_block_sparse(params, (128,), (128,))
    c = tile_choice.tile_cost(params, (128,), (128,))
    assert (c.full, c.partial, c.q_tiles, c.block_sparse) == (4, 0, 4, True)
    m = tile_choice.CostModel(mask_factor=0.5, tile_overhead=10.0, q_tile_overhead=100.0)
    assert tile_choice.tile_cost(params, (128,), (128,), m).cost == pytest.approx(4 * 138 + 4 * 100)
    # s=1: some pairs are masked and cost (1 + m) times a full one
    p1 = GNAParams.make((512,), 128, 1)
    c1 = tile_choice.tile_cost(p1, (128,), (64,), m)
    assert c1.partial > 0
    assert c1.cost == pytest.approx((c1.full + 1.5 * c1.partial) * 74 + 100 * c1.q_tiles)


def test_q_tile_size_scales_the_cost() -> None:
    """A 256-token Q tile does twice the work per pair: same counts, twice the cost of 128 rows."""
    params = GNAParams.make((1024,), 256, 256)
    m = tile_choice.CostModel(mask_factor=0.5, tile_overhead=10.0, q_tile_overhead=100.0)
    c128 = tile_choice.tile_cost(params, (128,), (128,), m)
    c256 = tile_choice.tile_cost(params, (256,), (128,), m)
    # s=w=256: each 256-token Q tile sees 2 full KV tiles, each 128-token one also 2
    assert (c128.full, c128.partial, c128.q_tiles) == (16, 0, 8)
    assert (c256.full, c256.partial, c256.q_tiles) == (8, 0, 4)
    assert c128.cost == pytest.approx(16 * 138 + 8 * 100)
    assert c256.cost == pytest.approx(2 * (8 * 138 + 4 * 100))


def test_overhead_decides_between_kv_sizes() -> None:
    """1D s=1: small KV tiles waste less at the window edge but pay the per-tile overhead twice
    as often; with no overhead the 64 tile must win, with a large one the 128 tile."""
    params = GNAParams.make((4096,), 1000, 1)
    free = tile_choice.CostModel(tile_overhead=0.0)
    dear = tile_choice.CostModel(tile_overhead=200.0)
    assert tile_choice.choose_tile_shapes(90, params, 128, free)[1] == (64,)
    assert tile_choice.choose_tile_shapes(90, params, 128, dear)[1] == (128,)


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: tile_choice.choose_tile_shapes(90, (64, 64), 128), ["params", "GNAParams"]),
        (lambda: tile_choice.choose_tile_shapes(90, GNAParams.make((64,), 8), 96), ["head_dim=96"]),
        (lambda: tile_choice.choose_tile_shapes(80, GNAParams.make((64,), 8), 128), ["arch=80"]),
        (lambda: tile_choice.choose_tile_shapes("90", GNAParams.make((64,), 8), 128), ["arch", "'90'"]),
        (lambda: tile_choice.CostModel(mask_factor=-1.0), ["mask_factor=-1.0"]),
    ],
)
def test_bad_input_is_refused_naming_it(call, words) -> None:
    with pytest.raises((TypeError, ValueError)) as e:
        call()
    assert all(w in str(e.value) for w in words), str(e.value)


def _args(spatial, window, stride, **tiles) -> AttentionArgs:
    q = torch.randn(1, *spatial, 2, 64, dtype=torch.float16)
    params = GNAParams.make(spatial, window, stride)
    return AttentionArgs(q=q, k=q, v=q, params=params, scale=0.125, **tiles)


def test_host_layer_uses_the_choice_by_default() -> None:
    args = _args((32, 64), (16, 32), (16, 32))
    cfg = interface.make_config(args, 90)
    assert (cfg.q_tile_shape, cfg.kv_tile_shape) == tile_choice.choose_tile_shapes(90, args.params, 64)
    assert interface.problem_reason(args, 90) is None
    # explicit tiles still win over the choice
    explicit = _args((32, 64), (16, 32), (16, 32), q_tile_shape=(4, 32), kv_tile_shape=(8, 8))
    cfg = interface.make_config(explicit, 90)
    assert (cfg.q_tile_shape, cfg.kv_tile_shape) == ((4, 32), (8, 8))


T1, T2, T3 = ((128,), (128,)), ((16, 8), (16, 8)), ((2, 8, 8), (2, 8, 8))


@pytest.mark.parametrize(
    "arch, params, sm_count, tiles, expected",
    [
        (90, GNAParams.make((32768,), 2048), 132, T1, 132),  # 1D, measured faster persistent
        (90, GNAParams.make((32768,), 2048, 2048), 133, T1, 132),  # rounded down to even (CTA pairs)
        (90, GNAParams.make((4096,), 256, 1, 2), 132, T1, 132),  # dilation: still equal work items
        (90, GNAParams.make((4096,), 256, 1, 1, True), 132, T1, 0),  # causal: unequal work items
        (90, GNAParams.make((256, 256), (80, 80)), 132, T2, 0),  # 2D s=1: unequal items, slower
        (90, GNAParams.make((8, 16, 16), (3, 5, 5)), 132, T3, 0),
        (90, GNAParams.make((256, 256), (80, 80), (16, 16)), 132, T2, 132),  # block-sparse: equal items
        (90, GNAParams.make((256, 256), (256, 256)), 132, T2, 132),  # dense
        (90, GNAParams.make((30, 48, 80), (18, 24, 24), (16, 8, 8)), 132, T3, 132),
        (90, GNAParams.make((256, 256), (80, 80), (16, 16)), 132, ((16, 8), (8, 16)), 132),  # aligned too
        (90, GNAParams.make((256, 256), (80, 80), (8, 8)), 132, T2, 0),  # a Q tile spans two stride groups
        (90, GNAParams.make((64, 64), (64, 64), 1, 1, (True, False)), 132, T2, 0),  # causal 2D
        (100, GNAParams.make((32768,), 2048), 148, T1, 0),  # the sm100 kernel is not persistent
        (90, GNAParams.make((32768,), 2048), 0, T1, 0),  # no device (meta tensors without CUDA)
    ],
)
def test_persistent_ctas_policy(arch: int, params: GNAParams, sm_count: int, tiles: tuple, expected: int) -> None:
    assert tile_choice.choose_persistent_ctas(arch, params, sm_count, *tiles) == expected


@pytest.mark.parametrize(
    "sm_count, cluster_size, expected",
    [(132, 4, 132), (134, 4, 132), (130, 4, 128), (131, 2, 130), (3, 4, 0), (4, 4, 4)],
)
def test_persistent_ctas_are_whole_clusters(sm_count: int, cluster_size: int, expected: int) -> None:
    # a persistent cluster's CTAs take the tiles of one group together: a partial cluster would
    # leave a group's tiles to CTAs that are not in it (check_config refuses such a count)
    params = GNAParams.make((32768,), 2048, 2048)
    assert tile_choice.choose_persistent_ctas(90, params, sm_count, *T1, cluster_size) == expected


def test_persistent_ctas_refuse_other_cluster_sizes() -> None:
    with pytest.raises(ValueError, match="cluster_size=3"):
        tile_choice.choose_persistent_ctas(90, GNAParams.make((32768,), 2048), 132, *T1, 3)


def test_product_launches_pairs_where_quads_are_possible() -> None:
    # 1D s=2048: sixteen 128-token Q tiles share every KV tile, so groups of four are possible,
    # but the product takes at most PRODUCT_MAX_CLUSTER (pairs: quads measured slower on the H100)
    args = _args((32768,), (2048,), (2048,))
    assert tile_choice.choose_cluster(90, args.params, (128,), (128,), max_size=4) == (0, 4, False)
    cfg = interface.make_config(args, 90)
    assert (cfg.cluster_dim, cfg.cluster_size) == (0, tile_choice.PRODUCT_MAX_CLUSTER) == (0, 2)


def test_tail_clusters_only_where_no_dim_pairs_whole() -> None:
    # 3D s=16x8x8 with 2x8x8 tiles: no dim pairs whole (15 tiles along dim 0); with tails, dim 0.
    p = GNAParams.make((30, 48, 80), (18, 24, 24), (16, 8, 8))
    t3 = ((2, 8, 8), (2, 8, 8))
    assert tile_choice.choose_cluster(90, p, *t3) == (-1, 2, False)
    assert tile_choice.choose_cluster(90, p, *t3, tail=True) == (0, 2, True)
    # a dim that pairs whole is preferred to a tail (2D s=16 pairs along dim 1)
    p2 = GNAParams.make((256, 256), 80, 16)
    assert tile_choice.choose_cluster(90, p2, (16, 8), (16, 8), tail=True) == (1, 2, False)
    # the product's choice follows PRODUCT_CLUSTER_TAIL (off until measured on a GPU)
    args = _args((30, 48, 80), (18, 24, 24), (16, 8, 8), q_tile_shape=t3[0], kv_tile_shape=t3[1])
    cfg = interface.make_config(args, 90)
    assert (cfg.cluster_dim >= 0, cfg.cluster_tail) == (tile_choice.PRODUCT_CLUSTER_TAIL,) * 2


@pytest.mark.parametrize(
    "spatial, window, stride, causal, tiles",
    [
        ((32, 48), (20, 20), (16, 16), False, T2),
        ((32, 48), (32, 48), (1, 1), False, T2),
        ((32, 48), (10, 12), (1, 1), False, T2),
        ((4, 16, 16), (2, 8, 8), (2, 8, 8), False, T3),
        ((32, 32), (16, 16), (16, 16), True, T2),
        ((32, 48), (12, 12), (8, 8), False, T2),
        ((32, 48), (20, 20), (16, 16), False, ((16, 8), (8, 16))),
    ],
)
def test_uniform_work_matches_the_brute_force_mask(spatial, window, stride, causal, tiles) -> None:
    """The persistent policy's "all items alike" test against the dense mask: per Q tile, the
    KV tiles holding an attended pair, and whether every such tile is fully attended."""
    params = GNAParams.make(spatial, window, stride, 1, causal)
    q_tile, kv_tile = tiles
    assert not any(n % t for n, t in zip(spatial, q_tile + kv_tile)), "tiles must divide the axes"
    mask = neighborhood_mask(spatial, params.kernel_size, params.stride, params.dilation, params.is_causal)
    qb, kb = _tile_blocks(spatial, q_tile), _tile_blocks(spatial, kv_tile)
    nq, nk = int(np.prod(q_tile)), int(np.prod(kv_tile))
    blocks = np.asarray(mask)[np.argsort(qb, kind="stable")][:, np.argsort(kb, kind="stable")]
    pairs = blocks.reshape(len(qb) // nq, nq, len(kb) // nk, nk).sum(axis=(1, 3))  # attended pairs per block
    visited = {int(v) for v in (pairs > 0).sum(axis=1)}
    partial = int(((pairs > 0) & (pairs < nq * nk)).sum())
    assert tile_choice._uniform_work(params, *tiles) == (len(visited) == 1 and partial == 0)


def test_host_layer_sets_persistent_ctas_from_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(interface, "_sm_count", lambda device: 114)
    assert interface.make_config(_args((4096,), 512, 1), 90).persistent_ctas == 114
    assert interface.make_config(_args((64, 64), (16, 16), 1), 90).persistent_ctas == 0
    monkeypatch.setattr(interface, "_sm_count", lambda device: 0)
    assert interface.make_config(_args((4096,), 512, 1), 90).persistent_ctas == 0


@pytest.mark.parametrize(
    "window, stride, causal, q_tile, kv_tile",
    [(18, 16, False, 2, 2), (24, 1, False, 8, 8), (24, 8, False, 8, 8), (80, 1, False, 16, 8), (7, 3, True, 4, 8),
     (33, 5, False, 8, 16), (9, 9, False, 4, 4)],
)
def test_step_share_matches_the_brute_force_mask(window, stride, causal, q_tile, kv_tile) -> None:
    """``tile_choice.step_share`` of a 1D dim: per pair of neighbouring Q tiles far from the borders,
    the fraction of the second tile's attended KV tiles that the first attends too, averaged over
    whole periods of the stride/tile pattern -- from the dense mask of a long axis."""
    geom = TileGeometry((q_tile,), (kv_tile,), (window,), (stride,), (1,), (causal,))
    period = q_tile * stride // math.gcd(q_tile, stride) // q_tile  # Q tiles per repeat
    first, length = 4 * (window // q_tile + 4), 32 * q_tile * max(1, stride)
    n = length + 2 * first * q_tile + 2 * window
    n += -n % (q_tile * kv_tile)
    mask = neighborhood_mask((n,), window, stride, 1, causal)
    kv_of = [set(np.nonzero(mask[t * q_tile:(t + 1) * q_tile].any(axis=0))[0] // kv_tile) for t in range(n // q_tile)]
    steps = range(first, first + 4 * period)
    brute = sum(len(kv_of[t] & kv_of[t + 1]) / len(kv_of[t + 1]) for t in steps) / len(steps)
    assert tile_choice.step_share(geom, 0) == pytest.approx(brute, abs=1e-12)


@pytest.mark.parametrize(
    "params, tiles, expected",
    [
        # the 3D headline: dim 0's neighbours share 9/10 (s = 1) or, in one stride group, all of
        # their 2x8x8 KV tiles; dims 1 and 2 tie (row-major between them)
        (GNAParams.make((30, 48, 80), (18, 24, 24)), ((2, 8, 8), (2, 8, 8)), (1, 2, 0)),
        (GNAParams.make((30, 48, 80), (18, 24, 24), (16, 8, 8)), ((2, 8, 8), (2, 8, 8)), (1, 2, 0)),
        # 2D headline rows and dense: dim 1 (8-token tiles) already fastest
        (GNAParams.make((256, 256), (80, 80)), ((16, 8), (16, 8)), ()),
        (GNAParams.make((256, 256), (80, 80), (16, 16)), ((16, 8), (16, 8)), ()),
        (GNAParams.make((256, 256), (256, 256)), ((16, 8), (16, 8)), ()),
        # 1D has one order
        (GNAParams.make((32768,), 2048), ((128,), (128,)), ()),
    ],
)
def test_tile_order_of_headline_problems(params, tiles, expected) -> None:
    assert tile_choice.choose_tile_order(90, params, *tiles) == expected
    assert tile_choice.choose_tile_order(100, params, *tiles) == ()  # measured on sm90 only


@pytest.mark.parametrize("params", PROBLEMS, ids=lambda p: f"{p.spatial_shape}-{p.kernel_size}-{p.stride}")
def test_tile_order_puts_the_most_shared_dim_last(params: GNAParams) -> None:
    q_tile, kv_tile = config.default_tile_shapes(90, params.rank, 128)
    order = tile_choice.choose_tile_order(90, params, q_tile, kv_tile) or tuple(range(params.rank))
    assert sorted(order) == list(range(params.rank))
    geom = TileGeometry(q_tile, kv_tile, params.kernel_size, params.stride, params.dilation, params.is_causal)
    shares = [round(tile_choice.step_share(geom, d), 3) for d in order]
    assert shares == sorted(shares)
    # the spatial sizes do not decide (one compiled kernel serves every size)
    bigger = GNAParams.make(tuple(2 * n + 3 for n in params.spatial_shape), params.kernel_size, params.stride,
                            params.dilation, params.is_causal)
    assert tile_choice.choose_tile_order(90, bigger, q_tile, kv_tile) == tile_choice.choose_tile_order(
        90, params, q_tile, kv_tile)


def test_one_q_buffer_and_early_slices_follow_the_product_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    # off (the default): the kernel's own choice
    dense = GNAParams.make((32768,), 32768)
    blocked = GNAParams.make((32768,), 2048, 2048)
    assert tile_choice.choose_q_buffers(90, dense, *T1, 132) == 0
    assert tile_choice.choose_early_stage_slices(90, "rotated") is tile_choice.PRODUCT_EARLY_STAGE_SLICES
    monkeypatch.setattr(tile_choice, "PRODUCT_ONE_Q_BUFFER", True)
    monkeypatch.setattr(tile_choice, "PRODUCT_EARLY_STAGE_SLICES", True)
    tile_choice.choose_q_buffers.cache_clear()
    try:
        # 256 KV tiles per item: one buffer; 16 (the blocked row): the pipelined boundary stays
        assert tile_choice.choose_q_buffers(90, dense, *T1, 132) == 1
        assert tile_choice.choose_q_buffers(90, blocked, *T1, 132) == 0
        assert tile_choice.choose_q_buffers(90, dense, *T1, 0) == 0  # one CTA per item: one buffer anyway
        assert tile_choice.choose_q_buffers(100, dense, *T1, 132) == 0
        assert tile_choice.choose_early_stage_slices(90, "rotated")
        assert not tile_choice.choose_early_stage_slices(90, "serial")
        assert not tile_choice.choose_early_stage_slices(100, "rotated")
    finally:
        tile_choice.choose_q_buffers.cache_clear()


def test_exp2_emulation_follows_the_product_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    """Off by default; on, only where MUFU bounds a tile (sm90, head dim <= 64)."""
    assert all(tile_choice.choose_exp2_emulation(90, d) == 0 for d in (32, 64, 128))
    monkeypatch.setattr(tile_choice, "PRODUCT_EXP2_EMULATION", True)
    every = tile_choice.EXP2_EMULATION_EVERY
    assert every >= 2
    assert [tile_choice.choose_exp2_emulation(90, d) for d in (32, 64, 128)] == [every, every, 0]
    assert tile_choice.choose_exp2_emulation(100, 64) == 0


def test_kv_start_align_follows_the_product_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    """Off by default; on, A = 1 where no item has a partial tile, and for persistent 1D sliding
    windows the largest power of two whose aligned groups of Q tiles all see their group's first
    KV tile fully (checked with the shared window math, not the scheduler)."""
    from gna_cute import neighborhood as nb

    s1, narrow = GNAParams.make((32768,), 2048), GNAParams.make((32768,), 512)
    blocked, dense = GNAParams.make((32768,), 2048, 2048), GNAParams.make((32768,), 32768)
    cases = [s1, narrow, blocked, dense, GNAParams.make((256, 256), 80, 16), GNAParams.make((256, 256), 80)]
    choose = tile_choice.choose_kv_start_align
    tiles = {p: tile_choice.choose_tile_shapes(90, p, 128) for p in cases}
    monkeypatch.setattr(tile_choice, "PRODUCT_SHARED_START_1D", False)
    monkeypatch.setattr(tile_choice, "PRODUCT_FULL_FIRST_UNIFORM", False)
    choose.cache_clear()
    assert all(choose(90, p, *tiles[p], "rotated", 132) == 0 for p in cases)
    monkeypatch.setattr(tile_choice, "PRODUCT_SHARED_START_1D", True)
    monkeypatch.setattr(tile_choice, "PRODUCT_FULL_FIRST_UNIFORM", True)
    choose.cache_clear()
    try:
        assert [choose(90, p, *tiles[p], "rotated", 132) for p in cases] == [8, 2, 1, 1, 1, 0]
        assert choose(90, s1, *T1, "rotated", 0) == 0  # one CTA per item: CTAs start at different times
        assert choose(90, s1, *T1, "serial", 132) == 0 and choose(100, s1, *T1, "rotated", 132) == 0
        for p, a in ((s1, 8), (narrow, 2)):
            w = p.kernel_size[0]
            for g in range(w // 128 // a + 1, 32768 // 128 // a - w // 128 // a - 1):
                assert all(nb.kv_tile_is_full(q, a * g, 128, 128, 32768, w, 1, False) for q in range(a * g, a * g + a))
            # and no larger power of two would do: some group of 2A misses its first tile
            assert not all(nb.kv_tile_is_full(q, 2 * a * g, 128, 128, 32768, w, 1, False)
                           for g in range(4, 8) for q in range(2 * a * g, 2 * a * g + 2 * a))
    finally:
        choose.cache_clear()


@pytest.mark.parametrize("changes, words", [(dict(q_buffers=3), ["q_buffers=3"]),
                                            (dict(kv_start_align=-1), ["kv_start_align=-1"]),
                                            (dict(kv_start_align=8), ["kv_start_align=8", "rotated"]),
                                            (dict(arch=100, kv_start_align=8, mainloop="rotated"), ["kv_start_align=8", "sm90"]),
                                            (dict(arch=100, q_buffers=1), ["q_buffers=1", "sm90"]),
                                            (dict(arch=100, early_stage_slices=True), ["early_stage_slices", "sm90"]),
                                            (dict(arch=100, exp2_emulation=4), ["exp2_emulation=4", "sm90"])])
def test_sm90_loop_options_are_checked(changes: dict, words: list[str]) -> None:
    pytest.importorskip("cutlass")
    from gna_cute.kernels import fwd_common
    from gna_cute.kernels.config import FwdConfig

    cfg = dataclasses.replace(FwdConfig(90, "float16", 128, 128, (128,), (128,), (64,), (1,), (1,), (False,)),
                              **changes)
    with pytest.raises(ValueError) as e:
        fwd_common.check_config(cfg, cfg.arch, "kernel")
    assert all(w in str(e.value) for w in words), str(e.value)
