"""CPU: the kernels' tile scheduler and per-row windows, run on Python ints, reproduce the mask.

``kernels/scheduler.py`` is what the fused kernels execute (on DSL Int32 there).  Here it runs on
plain ints over every (dilation group, Q tile), and the union of the (query, key) pairs it lets
through -- per visited KV tile, filtered by the same per-row windows the kernel's element mask
uses -- must equal the brute-force mask exactly; a tile it calls *full* must need no mask at all.
The tiles are visited as the sm90 kernel does: the partial ones (masked loop), then the full ones
(unmasked loop), each exactly once, and the producers' order (the box walk of ``kv_boxes`` /
``box_step``) and the per-step decode ``tile_at`` must be that same order.  With
``kv_start_align = A`` the full tiles come first, rotated to start at the first A-aligned full
tile along dim 0 (rebuilt here from the sorted box), then the partial ones.
"""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from brute_force import neighborhood_mask
from gna_cute import neighborhood as nb
from gna_cute.kernels.scheduler import QTileWork, TileGeometry, split_tile_index


def _is_full(geom: TileGeometry, work: QTileWork, kv) -> bool:
    """The pair needs no mask: ``neighborhood.kv_tile_is_full`` in every dim."""
    return all(
        nb.kv_tile_is_full(work.q_tile_idx[i], kv[i], geom.q_tile[i], geom.kv_tile[i], work.group_len[i],
                           geom.kernel_size[i], geom.stride[i], geom.is_causal[i])
        for i in range(geom.rank)
    )


def _walk_boxes(work: QTileWork) -> list:
    """The producers' order: every box of ``kv_boxes`` walked with ``box_step`` from its origin."""
    out = []
    for origin, extent in work.kv_boxes():
        idx = list(origin)
        for _ in range(int(np.prod(extent))):
            out.append(idx)
            idx = work.box_step(idx, origin, extent)
    return out


def _expected_full_order(work: QTileWork, align: int) -> list:
    """The full sub-box row-major; with ``align``, rotated to start at the first dim-0 index that
    is a multiple of ``align`` (if the box has one)."""
    tiles = [list(t) for t in itertools.product(*(range(lo, lo + e) for lo, e in zip(work.full_lo, work.full_extent)))]
    if align and tiles:
        starts = [i for i, t in enumerate(tiles) if t[0] % align == 0]
        if starts:
            tiles = tiles[starts[0]:] + tiles[:starts[0]]
    return tiles


def _covered_pairs(shape, ks, st, dl, ca, q_tile, kv_tile, align: int = 0) -> tuple[np.ndarray, int]:
    rank = len(shape)
    geom = TileGeometry(tuple(q_tile), tuple(kv_tile), tuple(ks), tuple(st), tuple(dl), tuple(ca),
                        kv_start_align=align)
    seen = np.zeros((int(np.prod(shape)),) * 2, dtype=bool)
    wrong_full = 0
    for w in range(geom.num_work_tiles(shape)):
        work = QTileWork(geom, shape, w)
        partial = [(work.partial_tile(j), False) for j in range(work.num_partial_tiles)]
        full = [(kv, True) for kv in _expected_full_order(work, align)]
        assert [work.full_tile(j) for j in range(work.num_full_tiles)] == [kv for kv, _ in full]
        order = full + partial if align else partial + full
        runs = [(tile_of(j), not masked) for tile_of, masked, n in work.visit_runs() for j in range(n)]
        assert runs == order, "the kernels' runs in the visiting order"
        box = sorted(itertools.product(*(range(lo, lo + e) for lo, e in zip(work.kv_lo, work.kv_extent))))
        assert sorted(tuple(kv) for kv, _ in order) == box, "each tile of the box exactly once"
        assert _walk_boxes(work) == [kv for kv, _ in order]
        assert [work.tile_at(s) for s in range(work.num_kv_tiles)] == [kv for kv, _ in order]
        assert all(_is_full(geom, work, kv) == full for kv, full in order)
        for kv, full in order:
            for qf in range(int(np.prod(q_tile))):
                q_in = split_tile_index(qf, q_tile)
                q = [work.q_tile_idx[i] * q_tile[i] + q_in[i] for i in range(rank)]
                if any(q[i] >= work.group_len[i] for i in range(rank)):
                    continue
                win = work.row_window(q_in)
                q_flat = np.ravel_multi_index([q[i] * dl[i] + work.group[i] for i in range(rank)], shape)
                for kf in range(int(np.prod(kv_tile))):
                    k_in = split_tile_index(kf, kv_tile)
                    k = [kv[i] * kv_tile[i] + k_in[i] for i in range(rank)]
                    visible = all(win[i][0] <= k[i] < win[i][1] for i in range(rank))
                    wrong_full += bool(full and not visible)
                    if visible:
                        k_flat = np.ravel_multi_index([k[i] * dl[i] + work.group[i] for i in range(rank)], shape)
                        seen[q_flat, k_flat] = True
    return seen, wrong_full


def _random_case(rng: random.Random):
    rank = rng.choice([1, 2, 3])
    case = {k: [] for k in ("shape", "ks", "st", "dl", "ca", "qt", "kt")}
    for _ in range(rank):
        d = rng.choice([1, 1, 2, 3])
        n = d * rng.randint(2, 11 if rank < 3 else 5)
        w = rng.randint(2, max(2, n // d))
        case["shape"].append(n)
        case["ks"].append(w)
        case["st"].append(rng.randint(1, w))
        case["dl"].append(d)
        case["ca"].append(rng.random() < 0.3)
        case["qt"].append(rng.choice([1, 2, 4]))
        case["kt"].append(rng.choice([1, 2, 4]))
    return case


@pytest.mark.parametrize("seed", range(40))
def test_scheduler_and_row_windows_reproduce_the_mask(seed):
    c = _random_case(random.Random(seed))
    if any(w * d > n for w, d, n in zip(c["ks"], c["dl"], c["shape"])):
        pytest.skip("invalid draw")
    expected = neighborhood_mask(tuple(c["shape"]), tuple(c["ks"]), tuple(c["st"]), tuple(c["dl"]), tuple(c["ca"]))
    align = (0, 0, 2, 3)[seed % 4]  # every other draw visits its full tiles first
    seen, wrong_full = _covered_pairs(c["shape"], c["ks"], c["st"], c["dl"], c["ca"], c["qt"], c["kt"], align)
    assert wrong_full == 0, f"a tile classified full hides masked pairs: {c}"
    np.testing.assert_array_equal(seen, np.asarray(expected), err_msg=str(c))


@pytest.mark.parametrize("align", [2, 4])
def test_full_first_dense_sweep_1d_2d(align):
    """Full-first on every small 1D / 2D window and stride (rotations that wrap, boxes without an
    aligned tile, windows with no full tile): the order and the covered pairs stay exact."""
    for shape, ks, st, ca in (((13,), (5,), (1,), (False,)), ((13,), (6,), (2,), (True,)), ((9, 7), (4, 3), (1, 2), (False, False)),
                              ((8, 6), (5, 6), (1, 1), (True, False))):
        expected = neighborhood_mask(shape, ks, st, (1,) * len(shape), ca)
        for qt, kt in (((1,) * len(shape), (1,) * len(shape)), ((2,) * len(shape), (1,) * len(shape))):
            seen, wrong_full = _covered_pairs(shape, ks, st, (1,) * len(shape), ca, qt, kt, align)
            assert wrong_full == 0
            np.testing.assert_array_equal(seen, np.asarray(expected), err_msg=str((shape, ks, st, ca, qt, kt)))


def test_full_first_neighbours_share_their_first_tile():
    """The reason for ``kv_start_align``: on the 1D headline problem (32K tokens, w = 2048, s = 1,
    128-token tiles) the first wave's 132 Q tiles start on 124 different KV tiles partial-first
    (each its own window edge; the 8 tiles at the border share tile 0) and on one per 8
    neighbours full-first with A = 8."""
    def first_tiles(align):
        geom = TileGeometry((128,), (128,), (2048,), (1,), (1,), (False,), kv_start_align=align)
        return {QTileWork(geom, [32768], w).tile_at(0)[0] for w in range(132)}

    assert len(first_tiles(0)) == 124
    assert len(first_tiles(8)) == 17


def test_worked_example_tile_ranges():
    # L=10, w=4, s=4 (windows [0,4), [4,8), [6,10)); Q tiles of 4, KV tiles of 2.
    geom = TileGeometry((4,), (2,), (4,), (4,), (1,), (False,))
    ranges = []
    for w in range(geom.num_work_tiles([10])):
        work = QTileWork(geom, [10], w)
        ranges.append(list(range(work.kv_lo[0], work.kv_lo[0] + work.kv_extent[0])))
    assert ranges == [[0, 1], [2, 3], [3, 4]]
