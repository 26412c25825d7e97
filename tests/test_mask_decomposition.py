"""CPU: the static column split behind the Hopper partial-tile mask (``kernels/mask.py``).

The kernel never decomposes a key's column at run time on its fast path: it trusts
``split_columns`` (position ``8 k + b`` = static ``C(k)`` + run-time ``B(b)`` per dim, no carry),
the per-dim ``GroupPattern`` of ``C(k)``, ``odd_step`` (coordinates of ``b_0 + 1`` from those of an
even ``b_0``) and ``row_masks`` (the bit masks it tests per score).  Each is checked here against
plain divmod loops and a direct visibility test, for every KV tile shape the kernels support.
"""

from __future__ import annotations

import math
import random

import pytest

pytest.importorskip("cutlass")

from gna_cute.kernels import config  # noqa: E402
from gna_cute.kernels.mask import LANE_SPAN, MaskOps, group_mask, odd_lane, row_masks, split_columns  # noqa: E402


def _kv_tiles() -> list[tuple[int, ...]]:
    tiles = set()
    for arch in (90, 100):
        for rank in (1, 2, 3):
            tiles |= {kv for _, kv in config.supported_tile_shapes(arch, rank, 128)}
    return sorted(tiles, key=lambda t: (len(t), t))


KV_TILES = _kv_tiles()


def _coords(flat: int, tile: tuple[int, ...]) -> tuple[int, ...]:
    """Row-major coordinates of ``flat`` in ``tile`` (last dim fastest), by plain divmod."""
    out = []
    for size in reversed(tile[1:]):
        flat, digit = divmod(flat, size)
        out.append(digit)
    out.append(flat)
    return tuple(reversed(out))


def _u32_shl(c: int, s: int) -> int:
    """PTX ``shl.b32``: shift amounts of 32 and more give 0."""
    return (c << s) & 0xFFFFFFFF if s < 32 else 0


def _keep_if_inside(mask: int, start: int, end: int, x: int) -> int:
    return mask if start <= x < end else 0


PY_OPS = MaskOps(max, _u32_shl, _keep_if_inside, int)


def test_every_kernel_tile_is_listed() -> None:
    assert (4, 8, 4) in KV_TILES and (8, 4, 4) in KV_TILES and (128,) in KV_TILES and (64,) in KV_TILES
    assert len(KV_TILES) == 13


@pytest.mark.parametrize("tile", KV_TILES, ids=lambda t: "x".join(map(str, t)))
def test_split_matches_divmod(tile: tuple[int, ...]) -> None:
    """Every supported KV tile takes the fast path, and its split is exact for all k and b < 8."""
    groups = math.prod(tile) // LANE_SPAN
    split = split_columns(tile, groups)
    assert split is not None, f"{tile} fell back to the generic mask"
    assert split.num_groups == groups
    for k in range(groups):
        assert split.group[k] == _coords(LANE_SPAN * k, tile)
        for b in range(LANE_SPAN):
            assert split.coords(k, b) == _coords(LANE_SPAN * k + b, tile), (k, b)
    for i in range(len(tile)):
        p = split.patterns[i]
        values = [_coords(LANE_SPAN * k, tile)[i] for k in range(groups)]
        if p is None:
            assert len(set(values)) == 1
        else:
            assert [p.value(k) for k in range(groups)] == values
            assert groups % (p.run * p.count) == 0
    assert split.lane_dims == tuple(i for i in range(len(tile)) if any(_coords(b, tile)[i] for b in range(LANE_SPAN)))
    # The kernel derives b_0 + 1's coordinates from an even b_0's.
    assert split.odd_step is not None
    for b in range(0, LANE_SPAN, 2):
        assert tuple(odd_lane(split, list(_coords(b, tile)))) == _coords(b + 1, tile)


def test_carry_and_odd_sizes_fall_back() -> None:
    # 8 + 4 = 12 is (2, 0) in a 6x6 box, but C(1) + B(4) = (1, 2) + (0, 4).
    assert split_columns((6, 6), 4) is None
    # A last dim of 3: 8 k + b carries for b >= 3 - (8 k) % 3.
    assert split_columns((4, 2, 3), 3) is None
    assert split_columns((128,), 40) is None  # more groups than a register has bits


@pytest.mark.parametrize("tile", KV_TILES, ids=lambda t: "x".join(map(str, t)))
def test_group_mask_matches_compares(tile: tuple[int, ...]) -> None:
    split = split_columns(tile, math.prod(tile) // LANE_SPAN)
    for i, p in enumerate(split.patterns):
        if p is None:
            continue
        for offset in (-5, 0, 3):
            for start in range(offset - 3, offset + tile[i] + 4):
                for end in range(offset - 3, offset + tile[i] + 4):
                    got = group_mask(p, start, end, offset, split.num_groups, max, _u32_shl)
                    want = sum(
                        1 << k for k in range(split.num_groups) if start - offset <= split.group[k][i] < end - offset
                    )
                    assert got == want, (i, p, start, end, offset)


@pytest.mark.parametrize("tile", KV_TILES, ids=lambda t: "x".join(map(str, t)))
def test_row_masks_match_visibility(tile: tuple[int, ...]) -> None:
    """The masks the kernel tests per score, against a direct window test of each key."""
    rng = random.Random(hash(tile) & 0xFFFF)
    rank = len(tile)
    split = split_columns(tile, math.prod(tile) // LANE_SPAN)
    for _ in range(400):
        kv_base = [rng.randrange(0, 5) * t for t in tile]
        start = [kv_base[i] + rng.randint(-tile[i] - 2, tile[i] + 1) for i in range(rank)]
        end = [start[i] + rng.randint(-1, 2 * tile[i] + 2) for i in range(rank)]
        for b0 in range(0, LANE_SPAN, 2):
            lane0 = list(_coords(b0, tile))
            masks = row_masks(split, start, end, kv_base, [lane0, odd_lane(split, lane0)], PY_OPS)
            for e in range(2):
                for k in range(split.num_groups):
                    key = _coords(LANE_SPAN * k + b0 + e, tile)
                    visible = all(start[i] <= kv_base[i] + key[i] < end[i] for i in range(rank))
                    assert bool(masks[e] >> k & 1) == visible, (start, end, kv_base, b0, e, k)
                assert masks[e] >> split.num_groups == 0
