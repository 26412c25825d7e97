"""CPU: the kernels' tile scheduler and per-row windows, run on Python ints, reproduce the mask.

``kernels/scheduler.py`` is what the fused kernels execute (on DSL Int32 there).  Here it runs on
plain ints over every (dilation group, Q tile), and the union of the (query, key) pairs it lets
through -- per visited KV tile, filtered by the same per-row windows the kernel's element mask
uses -- must equal the brute-force mask exactly; a tile it calls *full* must need no mask at all.
The tiles are visited as the sm90 kernel does: the partial ones (masked loop), then the full ones
(unmasked loop), each exactly once, and the producers' order (the box walk of ``kv_boxes`` /
``box_step``) and the per-step decode ``tile_at`` must be that same order.
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


def _covered_pairs(shape, ks, st, dl, ca, q_tile, kv_tile) -> tuple[np.ndarray, int]:
    rank = len(shape)
    geom = TileGeometry(tuple(q_tile), tuple(kv_tile), tuple(ks), tuple(st), tuple(dl), tuple(ca))
    seen = np.zeros((int(np.prod(shape)),) * 2, dtype=bool)
    wrong_full = 0
    for w in range(geom.num_work_tiles(shape)):
        work = QTileWork(geom, shape, w)
        order = [(work.partial_tile(j), False) for j in range(work.num_partial_tiles)]
        order += [(work.full_tile(j), True) for j in range(work.num_full_tiles)]
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
    seen, wrong_full = _covered_pairs(c["shape"], c["ks"], c["st"], c["dl"], c["ca"], c["qt"], c["kt"])
    assert wrong_full == 0, f"a tile classified full hides masked pairs: {c}"
    np.testing.assert_array_equal(seen, np.asarray(expected), err_msg=str(c))


def test_worked_example_tile_ranges():
    # L=10, w=4, s=4 (windows [0,4), [4,8), [6,10)); Q tiles of 4, KV tiles of 2.
    geom = TileGeometry((4,), (2,), (4,), (4,), (1,), (False,))
    ranges = []
    for w in range(geom.num_work_tiles([10])):
        work = QTileWork(geom, [10], w)
        ranges.append(list(range(work.kv_lo[0], work.kv_lo[0] + work.kv_extent[0])))
    assert ranges == [[0, 1], [2, 3], [3, 4]]
