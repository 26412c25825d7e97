"""The window math (gna_cute.neighborhood) against the brute-force definition in brute_force.py."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from brute_force import keys_of_query_1d

from gna_cute import neighborhood as nb


def windows_1d(length: int, window: int, stride: int, dilation: int, causal: bool) -> list[set[int]]:
    """Per query (original coordinates) the key set given by gna_cute.neighborhood."""
    out = []
    for x in range(length):
        g, i = x % dilation, x // dilation
        n = nb.group_length(length, dilation, g)
        start, end = nb.window(i, n, window, stride, causal)
        out.append({j * dilation + g for j in range(start, end)})
    return out


# (L, w, s, d, causal, query, expected keys) -- the worked examples of docs/semantics.md
WORKED = [
    (10, 3, 1, 1, False, 0, {0, 1, 2}),
    (10, 3, 1, 1, False, 5, {4, 5, 6}),
    (10, 3, 1, 1, False, 9, {7, 8, 9}),
    (10, 4, 1, 1, False, 5, {3, 4, 5, 6}),
    (10, 4, 4, 1, False, 0, {0, 1, 2, 3}),
    (10, 4, 4, 1, False, 3, {0, 1, 2, 3}),
    (10, 4, 4, 1, False, 4, {4, 5, 6, 7}),
    (10, 4, 4, 1, False, 7, {4, 5, 6, 7}),
    (10, 4, 4, 1, False, 8, {6, 7, 8, 9}),
    (10, 4, 4, 1, False, 9, {6, 7, 8, 9}),
    (10, 4, 2, 1, True, 4, {2, 3, 4}),
    (10, 4, 2, 1, True, 5, {2, 3, 4, 5}),
    (10, 3, 1, 3, False, 9, {3, 6, 9}),
]


@pytest.mark.parametrize("length,window,stride,dilation,causal,query,expected", WORKED)
def test_worked_examples(length, window, stride, dilation, causal, query, expected):
    assert windows_1d(length, window, stride, dilation, causal)[query] == expected
    assert keys_of_query_1d(query, length, window, stride, dilation, causal) == expected


def test_stride_leaders_worked_example():
    # L=10, w=4, s=4: leaders 2, 6 and (clamped) 9
    assert [nb.stride_leader(i, 10, 4, False) for i in (0, 4, 8)] == [2, 6, 9]


def _all_1d_configs(max_length: int):
    for length in range(2, max_length + 1):
        for dilation in range(1, length // 2 + 1):
            for window in range(2, length // dilation + 1):
                for stride in range(1, window + 1):
                    for causal in (False, True):
                        yield length, window, stride, dilation, causal


def test_exhaustive_1d_small():
    """Every valid (L <= 14, w, s in 1..w, d, causal): identical key sets for every query."""
    count = 0
    for length, window, stride, dilation, causal in _all_1d_configs(14):
        got = windows_1d(length, window, stride, dilation, causal)
        for x in range(length):
            assert got[x] == keys_of_query_1d(x, length, window, stride, dilation, causal), (
                length, window, stride, dilation, causal, x,
            )  # fmt: skip
        count += 1
    assert count > 500


def test_window_properties_random():
    """Non-causal: exactly w keys; causal: 1..w keys ending at the query; on larger axes."""
    rng = np.random.default_rng(1)
    for _ in range(300):
        length = int(rng.integers(2, 200))
        dilation = int(rng.integers(1, length // 2 + 1))
        window = int(rng.integers(2, length // dilation + 1))
        stride = int(rng.integers(1, window + 1))
        causal = bool(rng.integers(0, 2))
        got = windows_1d(length, window, stride, dilation, causal)
        for x in range(length):
            want = keys_of_query_1d(x, length, window, stride, dilation, causal)
            assert got[x] == want
            assert all(key % dilation == x % dilation for key in want)
            if causal:
                assert max(want) == x and 1 <= len(want) <= window
            else:
                assert len(want) == window


def _random_in_group_1d(rng: np.random.Generator, max_length: int) -> tuple[int, int, int, bool]:
    """A random in-group 1D case ``(length, window, stride, causal)``, length in ``[2, max_length)``."""
    n = int(rng.integers(2, max_length))
    w = int(rng.integers(2, n + 1))
    s = int(rng.integers(1, w + 1))
    c = bool(rng.integers(0, 2))
    return n, w, s, c


def test_vectorized_numpy_matches_scalar():
    rng = np.random.default_rng(2)
    for _ in range(200):
        n, w, s, c = _random_in_group_1d(rng, 100)
        i = np.arange(n)
        start, end = nb.window(i, n, w, s, c, mn=np.minimum, mx=np.maximum)
        for x in range(n):
            assert (start[x], end[x]) == nb.window(x, n, w, s, c)


def test_group_length():
    for length in range(1, 30):
        for d in range(1, length + 1):
            for g in range(d):
                assert nb.group_length(length, d, g) == len(range(g, length, d))


def _brute_in_group(n: int, w: int, s: int, c: bool) -> list[set[int]]:
    """In-group key sets (dilation 1) from the brute force."""
    return [keys_of_query_1d(i, n, w, s, 1, c) for i in range(n)]


def test_visible_and_common_key_ranges():
    """Union / intersection of the brute-force windows of a query range."""
    rng = np.random.default_rng(3)
    for _ in range(300):
        n, w, s, c = _random_in_group_1d(rng, 60)
        sets = _brute_in_group(n, w, s, c)
        q_lo = int(rng.integers(0, n))
        q_hi = int(rng.integers(q_lo + 1, n + 1))
        union = set().union(*sets[q_lo:q_hi])
        common = set.intersection(*sets[q_lo:q_hi])
        lo, hi = nb.visible_key_range(q_lo, q_hi, n, w, s, c)
        assert set(range(lo, hi)) == union
        lo, hi = nb.common_key_range(q_lo, q_hi, n, w, s, c)
        assert set(range(lo, hi)) == common


def test_kv_tile_range_and_fullness():
    """Tiles any query of the Q tile needs; full iff every query sees every slot of the KV tile."""
    rng = np.random.default_rng(4)
    for _ in range(300):
        n, w, s, c = _random_in_group_1d(rng, 80)
        tq, tk = int(rng.integers(1, 17)), int(rng.integers(1, 17))
        sets = _brute_in_group(n, w, s, c)
        for t in range(nb.num_tiles(n, tq)):
            queries = range(t * tq, min(t * tq + tq, n))
            needed = {key // tk for x in queries for key in sets[x]}
            lo, hi = nb.kv_tile_range(t, tq, tk, n, w, s, c)
            assert set(range(lo, hi)) == needed, (n, w, s, c, tq, tk, t)
            for kt in range(lo, hi):
                slots = range(kt * tk, kt * tk + tk)
                full = all(slot < n and slot in sets[x] for x in queries for slot in slots)
                assert bool(nb.kv_tile_is_full(t, kt, tq, tk, n, w, s, c)) == full


def test_multi_dim_product_small():
    """Several dims: the neighborhood is the product of the per-dim ones (mask vs brute force)."""
    from brute_force import neighborhood_mask

    shape, ks, st, dl, ca = (5, 7), (2, 3), (2, 1), (2, 2), (True, False)
    mask = neighborhood_mask(shape, ks, st, dl, ca)
    per = [windows_1d(n, w, s, d, c) for n, w, s, d, c in zip(shape, ks, st, dl, ca)]
    coords = list(itertools.product(*[range(n) for n in shape]))
    for qi, qc in enumerate(coords):
        for ki, kc in enumerate(coords):
            assert mask[qi, ki] == all(kc[a] in per[a][qc[a]] for a in range(2))
