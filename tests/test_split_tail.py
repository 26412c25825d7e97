"""CPU: the persistent CTAs' split tail (``scheduler.SplitTail``), run on Python ints as the sm90
kernel runs it on Int32, against a direct enumeration of (unit, tile) pairs.

Every tile of every unit must be computed exactly once, by a piece that is a contiguous tile
range of one unit; each unit computed in more than one piece has exactly one owner (the piece
from tile 0), and the writers the owner merges (``writers`` + ``has_range``) must be exactly the
lanes whose pieces hold the rest.  A writer must be its lane's first tail piece (so it never
waits behind an owner), and the lanes' loads must differ by at most one tile.
"""

from __future__ import annotations

import random

import pytest

from gna_cute.kernels.scheduler import SplitTail


def _check(units: int, lanes: int, tiles: int) -> list[int]:
    """Asserts the properties above; returns every lane's tile count."""
    done: dict[tuple[int, int], int] = {}
    owners: dict[int, tuple[int, list[int]]] = {}
    writers: dict[int, list[int]] = {}
    loads = []
    for lane in range(lanes):
        st = SplitTail(units, lanes, lane, tiles)
        load = 0
        for k in range(st.num_pieces()):
            unit, a, b = st.piece(k)
            assert 0 <= unit < units and 0 <= a < b <= tiles, (lane, k, unit, a, b)
            if k < st.full_waves:
                assert (unit, a, b) == (k * lanes + lane, 0, tiles)  # whole items round-robin
            for t in range(a, b):
                assert (unit, t) not in done, f"tile {t} of unit {unit} twice"
                done[unit, t] = lane
            load += b - a
            if a > 0:
                assert k == st.full_waves, "a writer must be its lane's first tail piece"
                writers.setdefault(unit, []).append(lane)
            elif b < tiles:
                first, last = st.writers(unit, b)
                owners[unit] = (lane, [c for c in range(first, last + 1) if st.has_range(c)])
        loads.append(load)
    assert len(done) == units * tiles
    assert set(owners) == set(writers)
    for unit, (_, expected) in owners.items():
        assert expected == sorted(writers[unit])
    assert max(loads) - min(loads) <= 1
    return loads


@pytest.mark.parametrize(
    "units, lanes, tiles",
    [(256, 132, 256), (256, 132, 16), (128, 66, 256), (80, 66, 32), (160, 132, 3), (80, 3, 2), (5, 4, 1),
     (12288, 132, 25), (10800, 66, 81), (132, 132, 7), (7, 7, 1)],
)
def test_split_tail_headline_and_edge_shapes(units: int, lanes: int, tiles: int) -> None:
    loads = _check(units, lanes, tiles)
    assert sum(loads) == units * tiles


def test_split_tail_random_shapes() -> None:
    rng = random.Random(7)
    for _ in range(3000):
        lanes = rng.randint(1, 24)
        _check(rng.randint(lanes, 100), lanes, rng.randint(1, 40))


def test_split_tail_1d_dense_balance() -> None:
    """The case it is for: 256 items of 256 tiles on 132 CTAs were 512 tiles on 124 CTAs."""
    loads = _check(256, 132, 256)
    assert max(loads) == 497 and min(loads) == 496
