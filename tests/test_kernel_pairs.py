"""CPU: the Q-tile pairs that share K/V loads in a cluster (sm90 ``FwdConfig.cluster_dim``).

Two CTAs of a cluster load every K/V tile once for both, so they must visit the same KV tiles in
the same order.  ``scheduler.pairable_dims`` claims that for a dim from the per-dim schedule
formulas; here the claim is checked against the brute-force mask (``tests/brute_force.py``) of
that dim (GNA is separable): per Q tile, the KV tiles some query sees (visited) and those every
query sees whole (full; with the visited range it fixes the kernel's partial-first order),
compared for tiles ``2t`` and ``2t + 1`` (clusters of four: ``4t .. 4t + 3``) of every dilation
group.  A claimed dim must pass; where every full set is nonempty (so the sets decide the order)
the converse must hold too.  And the grouped work order must be a bijection whose neighbouring
indices are the groups.
"""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest

from brute_force import neighborhood_mask
from gna_cute.kernels.scheduler import QTileWork, TileGeometry, pairable_dims


def _dim_sets(mask, length, dl, group, q_tile, kv_tile, tile):
    """Brute force, one dim (GNA is separable): ``(visited, full)`` KV tile sets of Q tile ``tile``
    of one dilation group, from the 1D mask of that dim."""
    pos = list(range(group, length, dl))  # the group's tokens, in-group order
    queries = [pos[q] for q in range(tile * q_tile, min((tile + 1) * q_tile, len(pos)))]
    visited, full = set(), set()
    for kv in range(-(-len(pos) // kv_tile)):
        slots = range(kv * kv_tile, (kv + 1) * kv_tile)
        keys = [pos[k] for k in slots if k < len(pos)]
        sub = mask[np.ix_(queries, keys)]
        if sub.any():
            visited.add(kv)
            if len(keys) == kv_tile and sub.all():  # a padded key slot is never full
                full.add(kv)
    return frozenset(visited), frozenset(full)


def _brute_pairable(shape, ks, st, dl, ca, q_tile, kv_tile, size=2) -> tuple[list[int], list[int]]:
    """``(pairable, decided)``: the dims whose groups of ``size`` tiles have equal brute-force sets
    and tile counts divisible by ``size``, and the dims where that is also what the kernel needs --
    every full set nonempty (an empty full range still places the partial tiles' split, which the
    sets do not show)."""
    pairable, decided = [], []
    for d in range(len(shape)):
        count = -(-(-(-shape[d] // dl[d])) // q_tile[d])
        if count % size:  # a tile without its twins: not pairable, whatever the sets
            decided.append(d)
            continue
        mask = np.asarray(neighborhood_mask((shape[d],), (ks[d],), (st[d],), (dl[d],), (ca[d],)))
        sets = [[_dim_sets(mask, shape[d], dl[d], g, q_tile[d], kv_tile[d], t) for t in range(count)]
                for g in range(dl[d])]
        if all(len(set(per_group[t:t + size])) == 1 for per_group in sets for t in range(0, count, size)):
            pairable.append(d)
        if all(full for per_group in sets for _, full in per_group):
            decided.append(d)
    return pairable, decided


def _pairable_case(rng: random.Random, size: int = 2):
    """Small problems biased toward pairable dims: dense dims, strides of ``size`` Q tiles, causal
    dims."""
    rank = rng.choice([1, 2, 3])
    c = {k: [] for k in ("shape", "ks", "st", "dl", "ca", "qt", "kt")}
    for _ in range(rank):
        d = rng.choice([1, 1, 1, 2])
        qt = rng.choice([1, 2, 4])
        n = d * rng.randint(2, (12 if rank < 3 else 6) * size // 2)
        kind = rng.choice(["dense", "blocked", "any"])
        w = n // d if kind == "dense" else rng.randint(2, max(2, n // d))
        s = min(w, size * qt * rng.randint(1, 2)) if kind == "blocked" else rng.randint(1, w)
        c["shape"].append(n)
        c["ks"].append(w)
        c["st"].append(s)
        c["dl"].append(d)
        c["ca"].append(rng.random() < 0.2)
        c["qt"].append(qt)
        c["kt"].append(rng.choice([1, 2, 4]))
    return c


@pytest.mark.parametrize("size", [2, 4])
def test_pairable_dims_match_brute_force(size: int):
    found = {"pairable": 0, "not": 0}
    for seed in range(60 if size == 2 else 120):
        c = _pairable_case(random.Random(seed), size)
        if any(w * d > n for w, d, n in zip(c["ks"], c["dl"], c["shape"])):
            continue
        geom = TileGeometry(tuple(c["qt"]), tuple(c["kt"]), tuple(c["ks"]), tuple(c["st"]), tuple(c["dl"]),
                            tuple(c["ca"]))
        got = pairable_dims(geom, c["shape"], size)
        want, decided = _brute_pairable(c["shape"], c["ks"], c["st"], c["dl"], c["ca"], c["qt"], c["kt"], size)
        assert set(got) <= set(want), f"seed {seed}: pairs with different KV tiles claimed: {c}"
        for d in decided:
            assert (d in got) == (d in want), f"seed {seed}, dim {d}: {c}"
            found["pairable" if d in got else "not"] += 1
    assert found["pairable"] >= 10 and found["not"] >= 10, found  # both answers were exercised


def test_worked_examples():
    # 1D 32K, w=2048: s=2048 pairs (every pair inside one stride group), s=1 does not; dense does.
    for st, want in ((2048, [0]), (1, []), (256, [0]), (128, [])):
        assert pairable_dims(TileGeometry((128,), (128,), (2048,), (st,), (1,), (False,)), [32768]) == want
    assert pairable_dims(TileGeometry((128,), (128,), (32768,), (1,), (1,), (False,)), [32768]) == [0]
    # 2D 256^2 w=80 s=16 with 16x8 Q tiles: pairs along dim 1 (8 + 8 = one stride group).
    g = TileGeometry((16, 8), (16, 8), (80, 80), (16, 16), (1, 1), (False, False))
    assert pairable_dims(g, [256, 256]) == [1]
    # An odd tile count (30 / 2 = 15 tiles in dim 0) cannot pair.
    g = TileGeometry((2, 8, 8), (2, 8, 8), (18, 24, 24), (16, 8, 8), (1, 1, 1), (False,) * 3)
    assert pairable_dims(g, [30, 48, 80]) == []
    # Clusters of four: s=2048 holds 16 Q tiles per stride group, s=256 only two; 2D s=16 two.
    for st, want in ((2048, [0]), (256, []), (512, [0])):
        assert pairable_dims(TileGeometry((128,), (128,), (2048,), (st,), (1,), (False,)), [32768], 4) == want
    g = TileGeometry((16, 8), (16, 8), (80, 80), (16, 16), (1, 1), (False, False))
    assert pairable_dims(g, [256, 256], 4) == []
    g = TileGeometry((16, 8), (16, 8), (256, 256), (1, 1), (1, 1), (False, False))
    assert pairable_dims(g, [256, 256], 4) == [0, 1]
    # 3D s=16x8x8 with 4x4x8 Q tiles: four per stride group along dim 0 (30 -> 8 tiles, the last
    # group's two tiles cut by the border still see the group's window), two along dim 1.
    g = TileGeometry((4, 4, 8), (2, 8, 8), (18, 24, 24), (16, 8, 8), (1, 1, 1), (False,) * 3)
    assert pairable_dims(g, [30, 48, 80], 4) == [0]
    assert pairable_dims(g, [30, 48, 80]) == [0, 1]


@pytest.mark.parametrize(
    "shape,q_tile,dl,pair,size",
    [((40,), (4,), (1,), 0, 2), ((6, 8), (3, 2), (1, 2), 1, 2), ((6, 8), (3, 2), (1, 2), 0, 2),
     ((4, 6, 8), (2, 3, 2), (2, 1, 1), 2, 2), ((48,), (4,), (1,), 0, 4), ((6, 16), (3, 2), (1, 2), 1, 4),
     ((4, 6, 16), (2, 3, 2), (2, 1, 1), 2, 4)],
)
def test_paired_work_order_is_a_bijection_of_pairs(shape, q_tile, dl, pair, size):
    rank = len(shape)
    geom = TileGeometry(q_tile, (1,) * rank, shape, (1,) * rank, dl, (False,) * rank, pair, size)
    plain = TileGeometry(q_tile, (1,) * rank, shape, (1,) * rank, dl, (False,) * rank)
    n = geom.num_work_tiles(shape)
    seen = set()
    for w in range(n):
        work = QTileWork(geom, shape, w)
        seen.add((tuple(work.group), tuple(work.q_tile_idx)))
        assert work.q_tile_idx[pair] % size == w % size
        if w % size:
            prev = QTileWork(geom, shape, w - 1)
            assert prev.group == work.group
            assert [t - (i == pair) for i, t in enumerate(work.q_tile_idx)] == prev.q_tile_idx
    every = {(tuple(QTileWork(plain, shape, w).group), tuple(QTileWork(plain, shape, w).q_tile_idx)) for w in range(n)}
    assert seen == every and len(seen) == n


@pytest.mark.parametrize(
    "shape,q_tile,ks,st,size,heads,ctas",
    [((2048,), (128,), (512,), (512,), 4, 3, 8), ((2048,), (128,), (512,), (512,), 4, 3, 132),
     ((32, 64), (16, 8), (32, 64), (1, 1), 4, 5, 12), ((1000,), (128,), (256,), (256,), 2, 3, 6)],
)
def test_persistent_clusters_walk_their_groups_in_step(shape, q_tile, ks, st, size, heads, ctas):
    """A persistent launch (``fwd_common.persistent_grid``: ``min(items, ctas)`` CTAs, CTA ``b``
    taking items ``b, b + grid, ...``, tile fastest, then head): the CTAs of one cluster (``size``
    consecutive CTAs) must take the same number of items, and at every step the ``size`` tiles of
    one group with the same KV boxes; otherwise a multicast K/V load would wait for a CTA that
    never asks for it."""
    rank = len(shape)
    kv_tile = q_tile
    geom0 = TileGeometry(q_tile, kv_tile, ks, st, (1,) * rank, (False,) * rank)
    dim = pairable_dims(geom0, shape, size)[-1]
    geom = TileGeometry(q_tile, kv_tile, ks, st, (1,) * rank, (False,) * rank, dim, size)
    tiles = geom.num_work_tiles(shape)
    total = tiles * heads
    grid = min(total, ctas)
    assert grid % size == 0
    walks = [list(range(b, total, grid)) for b in range(grid)]
    for c in range(grid // size):
        members = walks[c * size:(c + 1) * size]
        assert len({len(m) for m in members}) == 1, f"cluster {c}: unequal item counts"
        for step in zip(*members):
            works = [QTileWork(geom, shape, w % tiles) for w in step]
            assert len({w // tiles for w in step}) == 1  # one head
            assert all(wk.kv_boxes() == works[0].kv_boxes() for wk in works)
            assert [wk.q_tile_idx[dim] % size for wk in works] == list(range(size))


@pytest.mark.parametrize(
    "shape,q_tile,dl,order,pair,size",
    [((30, 48, 80), (2, 8, 8), (1, 1, 1), (1, 2, 0), -1, 2), ((6, 8, 4), (3, 2, 2), (2, 1, 1), (2, 0, 1), -1, 2),
     ((6, 8, 8), (3, 2, 2), (1, 1, 2), (2, 0, 1), 1, 2), ((6, 16), (3, 2), (2, 1), (1, 0), 1, 4),
     ((12, 16), (3, 2), (1, 1), (1, 0), 0, 2)],
)
def test_tile_order_walks_the_tiles_in_that_digit_order(shape, q_tile, dl, order, pair, size):
    """``TileGeometry.tile_order``: the work items enumerate the dilation groups row-major, then
    the tiles with ``order[0]`` slowest and ``order[-1]`` fastest, a cluster's group digit (if
    any) fastest of all -- written out with ``itertools.product`` and compared item by item."""
    rank = len(shape)
    geom = TileGeometry(q_tile, (1,) * rank, shape, (1,) * rank, dl, (False,) * rank, pair, size, order)
    counts = [-(-(-(-n // d)) // t) for n, d, t in zip(shape, dl, q_tile)]
    if pair >= 0:
        counts[pair] //= size
    expected = []
    for group in itertools.product(*(range(d) for d in dl)):
        for digits in itertools.product(*(range(counts[d]) for d in order)):
            for low in range(size if pair >= 0 else 1):
                tile = [0] * rank
                for d, v in zip(order, digits):
                    tile[d] = v
                if pair >= 0:
                    tile[pair] = size * tile[pair] + low
                expected.append((group, tuple(tile)))
    n = geom.num_work_tiles(shape)
    got = [(tuple(w.group), tuple(w.q_tile_idx)) for w in (QTileWork(geom, shape, i) for i in range(n))]
    assert got == expected


@pytest.mark.parametrize("order", [(0, 0, 1), (0, 1), (1, 2, 3)])
def test_tile_order_must_be_a_permutation(order):
    with pytest.raises(ValueError, match="tile_order"):
        TileGeometry((2, 8, 8), (2, 8, 8), (3, 3, 3), (1, 1, 1), (1, 1, 1), (False,) * 3, tile_order=order)


# --- tail clusters (``pairable_dims(..., tail=True)``, ``TileGeometry.pair_tail``) ---------------


def _brute_tail_ok(c, d: int, size: int) -> bool:
    """Brute force of what a tail dim needs: its complete groups pair (equal sets), and every tail
    tile -- the last ``count % size`` tiles along ``d``, with any tiles of the other dims, in any
    dilation group -- visits the same number of KV tiles, and the tail items fill whole clusters."""
    shape, ks, st, dl, ca, qt, kt = (c[k] for k in ("shape", "ks", "st", "dl", "ca", "qt", "kt"))
    counts = [-(-(-(-n // g)) // t) for n, g, t in zip(shape, dl, qt)]
    rest = counts[d] % size
    others = math.prod(counts) // counts[d]
    if not rest or counts[d] < size or rest * others % size:
        return False
    sizes = []  # per dim: the visited-set sizes of the tiles a tail item may have there
    for e in range(len(shape)):
        mask = np.asarray(neighborhood_mask((shape[e],), (ks[e],), (st[e],), (dl[e],), (ca[e],)))
        sets = [[_dim_sets(mask, shape[e], dl[e], g, qt[e], kt[e], t) for t in range(counts[e])]
                for g in range(dl[e])]
        if e == d:
            if not all(len(set(per_group[t:t + size])) == 1 for per_group in sets
                       for t in range(0, counts[d] - rest, size)):
                return False
            sizes.append({len(v) for per_group in sets for v, _ in per_group[counts[d] - rest:]})
        else:
            sizes.append({len(v) for per_group in sets for v, _ in per_group})
    return len({math.prod(p) for p in itertools.product(*sizes)}) == 1


def test_tail_dims_are_sound_against_brute_force():
    claimed = 0
    for seed in range(400):
        c = _pairable_case(random.Random(1000 + seed), 2)
        if any(w * d > n for w, d, n in zip(c["ks"], c["dl"], c["shape"])):
            continue
        geom = TileGeometry(tuple(c["qt"]), tuple(c["kt"]), tuple(c["ks"]), tuple(c["st"]), tuple(c["dl"]),
                            tuple(c["ca"]))
        whole = set(pairable_dims(geom, c["shape"], 2))
        with_tail = set(pairable_dims(geom, c["shape"], 2, tail=True))
        assert whole <= with_tail, f"seed {seed}: {c}"
        for d in with_tail - whole:
            assert _brute_tail_ok(c, d, 2), f"seed {seed}, dim {d}: tail clusters claimed: {c}"
            claimed += 1
    assert claimed >= 10, claimed  # the tail rule was exercised


def test_tail_worked_example():
    # 3D 30x48x80 w=18x24x24 s=16x8x8, 2x8x8 tiles: 15 tiles along dim 0 (two stride groups of 8
    # and 7), pairs 0..13, tile 14 alone in 6 x 10 columns: 30 tail clusters per head.
    g = TileGeometry((2, 8, 8), (2, 8, 8), (18, 24, 24), (16, 8, 8), (1, 1, 1), (False,) * 3)
    assert pairable_dims(g, [30, 48, 80], 2, tail=True) == [0]
    # 2D s=1: neighbouring tiles see different windows, tail or not.
    g = TileGeometry((16, 8), (16, 8), (80, 80), (1, 1), (1, 1), (False, False))
    assert pairable_dims(g, [256, 256], 2, tail=True) == []
    # 1D blocked with an odd tile count: the one tail tile has no partner.
    g = TileGeometry((128,), (128,), (256,), (256,), (1,), (False,))
    assert pairable_dims(g, [128 * 5], 2, tail=True) == []


_TAIL_CASES = [  # shape, q_tile, kernel_size, stride, dilation, order
    ((30, 48, 80), (2, 8, 8), (18, 24, 24), (16, 8, 8), (1, 1, 1), (1, 2, 0)),
    ((30, 48, 80), (2, 8, 8), (18, 24, 24), (16, 8, 8), (1, 1, 1), ()),
    ((14, 16), (2, 4), (14, 4), (1, 4), (1, 1), ()),  # dense dim 0 of 7 tiles, dim 1 one window per tile
    ((28, 16), (2, 4), (14, 4), (1, 4), (2, 1), (1, 0)),  # the same, dim 0 dilated (two groups of 14)
]


def _tail_geometry(shape, q_tile, ks, st, dl, order) -> TileGeometry:
    rank = len(shape)
    plain = TileGeometry(q_tile, q_tile, ks, st, dl, (False,) * rank)
    assert not pairable_dims(plain, shape, 2)
    dim = pairable_dims(plain, shape, 2, tail=True)[-1]
    return TileGeometry(q_tile, q_tile, ks, st, dl, (False,) * rank, dim, 2, order, pair_tail=True)


@pytest.mark.parametrize("case", _TAIL_CASES)
def test_tail_work_order_is_a_bijection_of_clusters(case):
    """With a tail, item pairs ``(2c, 2c + 1)`` are either a complete group (tiles ``2t, 2t + 1``
    along the pair dim, same KV boxes, ``shared``) or two tail tiles (unshared, equal KV tile
    counts); every tile of every group occurs once."""
    shape, q_tile, ks, st, dl, order = case
    geom = _tail_geometry(*case)
    rank, dim = len(shape), geom.pair_dim
    plain = TileGeometry(q_tile, q_tile, ks, st, dl, (False,) * rank)
    n = geom.num_work_tiles(shape)
    count = -(-(-(-shape[dim] // dl[dim])) // q_tile[dim])
    works = [QTileWork(geom, shape, w) for w in range(n)]
    assert n % 2 == 0
    for a, b in zip(works[0::2], works[1::2]):
        assert a.group == b.group and a.shared == b.shared
        assert a.shared == (a.q_tile_idx[dim] < count - count % 2)
        if a.shared:
            assert a.q_tile_idx[dim] % 2 == 0 and b.q_tile_idx[dim] == a.q_tile_idx[dim] + 1
            assert [t for i, t in enumerate(a.q_tile_idx) if i != dim] == [t for i, t in enumerate(b.q_tile_idx) if i != dim]
            assert a.kv_boxes() == b.kv_boxes()
        else:
            assert a.num_kv_tiles == b.num_kv_tiles
    seen = [(tuple(w.group), tuple(w.q_tile_idx)) for w in works]
    every = {(tuple(w.group), tuple(w.q_tile_idx)) for w in (QTileWork(plain, shape, i) for i in range(n))}
    assert len(set(seen)) == n and set(seen) == every
    assert sum(not w.shared for w in works) == n // count * (count % 2)


@pytest.mark.parametrize("ctas", [132, 6, 4])
@pytest.mark.parametrize("heads", [1, 3])
def test_persistent_tail_clusters_stay_in_step(ctas: int, heads: int):
    """A persistent launch of the 3D s=16 row with tails: the two CTAs of a cluster take equally
    many items and at every step either one shared group (same KV boxes) or two tail tiles with
    equal KV tile counts, so their K/V stages turn over together."""
    shape = (30, 48, 80)
    geom = _tail_geometry(*_TAIL_CASES[0])
    tiles = geom.num_work_tiles(shape)
    total = tiles * heads
    grid = min(total, ctas)
    walks = [list(range(b, total, grid)) for b in range(grid)]
    for c in range(grid // 2):
        a_walk, b_walk = walks[2 * c], walks[2 * c + 1]
        assert len(a_walk) == len(b_walk)
        for wa, wb in zip(a_walk, b_walk):
            assert wa // tiles == wb // tiles  # one head
            a, b = QTileWork(geom, shape, wa % tiles), QTileWork(geom, shape, wb % tiles)
            assert a.shared == b.shared
            if a.shared:
                assert a.kv_boxes() == b.kv_boxes()
            else:
                assert a.num_kv_tiles == b.num_kv_tiles
