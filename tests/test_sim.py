"""Simulator tests: every count against a brute force over the dense mask, plus known identities."""

from __future__ import annotations

import argparse
import itertools
import json
import random
from math import prod

import numpy as np
import pytest
from brute_force import neighborhood_mask

from gna_cute.params import GNAParams
from gna_cute.sim import Problem, Tiling, calibrate, fit_mask_factor, search, simulate, tile_counts
from gna_cute.sim import cli as sim_cli
from gna_cute.sim.search import stride_candidates


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _random_case(rng: random.Random):
    """A small random problem: dilation with non-divisible L, causal dims, non-dividing tiles."""
    rank = rng.choice([1, 1, 2, 2, 3])
    max_len = {1: 40, 2: 13, 3: 6}[rank]
    shape, ks, st, dl, ca, tq, tkv = [], [], [], [], [], [], []
    for _ in range(rank):
        n = rng.randint(3, max_len)
        d = rng.choice([1, 1, rng.randint(1, n // 2)])
        w = rng.randint(2, n // d)
        shape.append(n)
        dl.append(d)
        ks.append(w)
        st.append(rng.randint(1, w))
        ca.append(rng.random() < 0.3)
        tq.append(rng.randint(1, 5))
        tkv.append(rng.randint(1, 5))
    params = GNAParams.make(shape, tuple(ks), tuple(st), tuple(dl), tuple(ca))
    return params, tuple(tq), tuple(tkv)


def _flat(coords_per_dim, shape):
    """Row-major flat indices of the product of per-dim coordinate lists."""
    grids = np.meshgrid(*[np.asarray(c, dtype=np.int64) for c in coords_per_dim], indexing="ij")
    return np.ravel_multi_index([g.ravel() for g in grids], shape)


def _brute_group_major(params: GNAParams, tq, tkv, mask):
    """Ideal and full KV tiles per (group, Q tile) straight from the dense mask, plus empty flags.

    Tile ``t`` of group ``g`` in dim i holds original coordinates ``g + d * p`` for in-group
    ``p`` in ``[t*T, (t+1)*T)`` below the group length; missing key slots are padding.
    """
    shape, dil = params.spatial_shape, params.dilation
    n_q = [_ceil(_ceil(n, d), t) for n, d, t in zip(shape, dil, tq)]
    n_kv = [_ceil(_ceil(n, d), t) for n, d, t in zip(shape, dil, tkv)]
    ideal = np.zeros((*dil, *n_q), dtype=np.int64)
    full = np.zeros_like(ideal)
    empty = np.zeros(ideal.shape, dtype=bool)

    def members(n, d, g, t, size):
        return [g + d * p for p in range(t * size, (t + 1) * size) if g + d * p < n]

    for g in itertools.product(*[range(d) for d in dil]):
        for t in itertools.product(*[range(k) for k in n_q]):
            q_coords = [members(n, d, gi, ti, T) for n, d, gi, ti, T in zip(shape, dil, g, t, tq)]
            if any(not c for c in q_coords):
                empty[g + t] = True
                continue
            rows = mask[_flat(q_coords, shape)]
            for j in itertools.product(*[range(k) for k in n_kv]):
                k_coords = [members(n, d, gi, ji, T) for n, d, gi, ji, T in zip(shape, dil, g, j, tkv)]
                if any(not c for c in k_coords):
                    continue
                block = rows[:, _flat(k_coords, shape)]
                ideal[g + t] += bool(block.any())
                full[g + t] += bool(block.all()) and block.shape[1] == prod(tkv)
    return ideal, full, empty


CASES = [_random_case(random.Random(seed)) for seed in range(60)]


@pytest.mark.parametrize("params,tq,tkv", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_group_major_counts_match_brute_force(params, tq, tkv):
    mask = neighborhood_mask(params.spatial_shape, params.kernel_size, params.stride,
                             params.dilation, params.is_causal)
    ideal, full, empty = _brute_group_major(params, tq, tkv, mask)
    counts = tile_counts(params, tq, tkv)
    assert counts.shape == (2, *ideal.shape)
    visited = counts[0]
    # The scheduler's box contains every tile holding an attended pair, and never more: the
    # per-dim union of windows is an interval and the product of intervals is exact.
    assert np.all(visited >= ideal)
    np.testing.assert_array_equal(visited, ideal)
    np.testing.assert_array_equal(counts[1], full)
    assert np.all(visited[empty] == 0)

    stats = simulate(params, Tiling(tq, tkv))
    n = prod(params.spatial_shape)
    assert stats.attended_pairs == int(mask.sum())
    assert stats.flop_bound == pytest.approx(n * n / mask.sum())
    assert stats.q_tiles == int((~empty).sum())
    assert stats.visited == int(visited.sum())
    assert stats.ideal == int(ideal.sum())
    assert stats.full == int(full.sum())
    assert stats.partial == int(visited.sum() - full.sum())
    assert stats.visited_min == int(visited[~empty].min())
    assert stats.visited_max == int(visited[~empty].max())
    assert stats.visited_mean == pytest.approx(visited[~empty].mean())
    dense_pairs = prod(_ceil(n_, t) for n_, t in zip(params.spatial_shape, tq)) * prod(
        _ceil(n_, t) for n_, t in zip(params.spatial_shape, tkv))
    assert stats.dense_tile_pairs == dense_pairs
    assert stats.block_sparse == (stats.partial == 0)


def _brute_interleaved(params: GNAParams, tq, tkv, mask):
    """Per Q tile over original coordinates: key-box tiles, ideal and full tiles (brute force)."""
    shape = params.spatial_shape
    n_q = [_ceil(n, t) for n, t in zip(shape, tq)]
    n_kv = [_ceil(n, t) for n, t in zip(shape, tkv)]
    box = np.zeros(n_q, dtype=np.int64)
    ideal = np.zeros_like(box)
    full = np.zeros_like(box)
    span = lambda n, i, T: list(range(i * T, min((i + 1) * T, n)))  # noqa: E731
    for t in itertools.product(*[range(k) for k in n_q]):
        rows = mask[_flat([span(n, ti, T) for n, ti, T in zip(shape, t, tq)], shape)]
        keys = np.array(np.unravel_index(np.nonzero(rows.any(0))[0], shape))
        box[t] = prod(int(k.max() // T - k.min() // T + 1) for k, T in zip(keys, tkv))
        for j in itertools.product(*[range(k) for k in n_kv]):
            block = rows[:, _flat([span(n, ji, T) for n, ji, T in zip(shape, j, tkv)], shape)]
            ideal[t] += bool(block.any())
            full[t] += bool(block.all()) and block.shape[1] == prod(tkv)
    return box, ideal, full


@pytest.mark.parametrize("params,tq,tkv", CASES[:30], ids=[f"case{i}" for i in range(30)])
def test_interleaved_counts_match_brute_force(params, tq, tkv):
    mask = neighborhood_mask(params.spatial_shape, params.kernel_size, params.stride,
                             params.dilation, params.is_causal)
    box, ideal, full = _brute_interleaved(params, tq, tkv, mask)
    stats = simulate(params, Tiling(tq, tkv, "interleaved"))
    counts = tile_counts(params, tq, tkv, layout="interleaved")
    np.testing.assert_array_equal(counts[0].reshape(box.shape), box)
    np.testing.assert_array_equal(counts[1].reshape(full.shape), full)
    assert stats.visited == int(box.sum())
    assert stats.ideal == int(ideal.sum())
    assert stats.full == int(full.sum())
    assert stats.ideal <= stats.visited
    assert stats.attended_pairs == int(mask.sum())


@pytest.mark.parametrize("shape,tile", [((64,), (16,)), ((24, 32), (8, 4)), ((8, 12, 16), (2, 4, 8))])
def test_dense_window_has_bound_one_and_no_masks(shape, tile):
    stats = simulate(GNAParams.make(shape, shape), Tiling(tile, tile))
    assert stats.tile_bound == 1.0
    assert stats.flop_bound == 1.0
    assert stats.partial == 0 and stats.dense_partial == 0
    assert stats.block_sparse


@pytest.mark.parametrize("shape,window,tq,tkv", [
    ((96,), (16,), (8,), (16,)),
    ((64, 48), (16, 8), (8, 8), (16, 4)),
    ((12, 16, 24), (4, 8, 6), (2, 4, 3), (4, 2, 6)),
])
def test_blocked_stride_is_perfectly_block_sparse(shape, window, tq, tkv):
    stats = simulate(GNAParams.make(shape, window, window), Tiling(tq, tkv))
    assert stats.block_sparse
    assert stats.tile_bound == pytest.approx(stats.flop_bound)


def test_reference_problems_bounds():
    """The issue's targets for the three reference problems (D and heads do not matter)."""
    cases = [
        (((32768,), 2048, 1, (128,), (128,)), 16.0, 15.11),
        (((32768,), 2048, 2048, (128,), (128,)), 16.0, 16.0),
        (((256, 256), 80, 1, (16, 8), (16, 8)), 10.24, 7.51),
        (((256, 256), 80, 16, (16, 8), (16, 8)), 10.24, 10.24),
        (((30, 48, 80), (18, 24, 24), 1, (2, 8, 8), (2, 8, 8)), 11.11, 5.44),
        (((30, 48, 80), (18, 24, 24), (16, 8, 8), (2, 8, 8), (2, 8, 8)), 11.11, 11.11),
    ]
    for (shape, w, s, tq, tkv), flop, tile in cases:
        stats = simulate(GNAParams.make(shape, w, s), Tiling(tq, tkv))
        assert stats.flop_bound == pytest.approx(flop, abs=0.01)
        assert stats.tile_bound == pytest.approx(tile, abs=0.01)


def _rows_by_stride(result):
    return {r.stride: r for r in result.rows}


@pytest.mark.parametrize("shape,window,causal", [((48,), 12, False), ((40, 36), (8, 12), (False, True)),
                                                  ((12, 16, 20), (6, 8, 4), False)])
def test_search_pruning_keeps_every_improving_stride(shape, window, causal):
    params = GNAParams.make(shape, window, 1, 1, causal)
    tilings = [Tiling(tuple([4] * len(shape)), tuple([4] * len(shape))),
               Tiling(tuple([2] + [4] * (len(shape) - 1)), tuple([8] + [2] * (len(shape) - 1)))]
    result = search(params, tilings)
    rows = _rows_by_stride(result)
    # Every stride 1..w per dim was tried (small windows), and each row's bound is its best tiling's.
    assert len(rows) == prod(params.kernel_size)
    for stride, row in list(rows.items())[:20]:
        p = GNAParams.make(shape, window, stride, 1, causal)
        assert row.bound == max(simulate(p, t).tile_bound for t in tilings)
    kept = {r.stride for r in result.kept}
    for s, r in rows.items():
        smaller = [o for o in rows.values() if o.stride != s and all(a <= b for a, b in zip(o.stride, s))]
        if all(r.bound > o.bound for o in smaller):
            assert s in kept, s
        else:
            assert s not in kept, s
    # Pareto front: bounds strictly increase along (stride product) order, and nothing off it
    # beats the front at a smaller-or-equal stride product.
    front = result.pareto
    assert front[0].stride == tuple([1] * len(shape))
    assert all(a.bound < b.bound for a, b in zip(front, front[1:]))
    assert {r.stride for r in front} <= kept
    for r in result.rows:
        assert r.bound <= max(f.bound for f in front if prod(f.stride) <= prod(r.stride))
    # The smallest block-sparse stride is the first (in product order) with a block-sparse tiling.
    sparse = [s for s, r in rows.items()
              if any(simulate(GNAParams.make(shape, window, s, 1, causal), t).block_sparse for t in tilings)]
    first = min(sparse, key=lambda s: (prod(s), s)) if sparse else None
    assert (result.block_sparse.stride if result.block_sparse else None) == first


def test_stride_candidates():
    assert stride_candidates(7) == list(range(1, 8))
    big = stride_candidates(80)
    assert big == [1, 2, 4, 5, 8, 10, 16, 20, 32, 40, 64, 80]
    assert stride_candidates(2048) == [2 ** k for k in range(12)]
    with pytest.raises(ValueError, match="window=0"):
        stride_candidates(0)


def test_time_model_calibration_reproduces_dense_and_scales():
    params = GNAParams.make((256, 256), 80, 1)
    problem = Problem(params, batch=2, heads=24, head_dim=128)
    tiling = Tiling((16, 8), (16, 8))
    model = calibrate(10.0, problem, tiling, mask_factor=0.5)
    dense_stats = simulate(problem.dense(), tiling)
    assert model.predict_ms(problem.dense(), dense_stats) == pytest.approx(10.0)
    stats = simulate(problem, tiling)
    expected = 10.0 * (stats.full + 1.5 * stats.partial) / stats.dense_tile_pairs
    assert model.predict_ms(problem, stats) == pytest.approx(expected)
    # Twice the heads, twice the time; a calibrated model inverts its own mask factor.
    assert model.predict_ms(Problem(params, 2, 48, 128), stats) == pytest.approx(2 * expected)
    assert fit_mask_factor(expected, problem, stats, model) == pytest.approx(0.5)


@pytest.mark.parametrize("dense_ms,mask_factor,match", [
    (0.0, 0.3, "dense_ms=0.0"),
    (-1.0, 0.3, "dense_ms=-1.0"),
    (1.0, -0.1, "mask_factor=-0.1"),
])
def test_calibrate_rejects_bad_input(dense_ms, mask_factor, match):
    problem = Problem(GNAParams.make((64,), 16))
    with pytest.raises(ValueError, match=match):
        calibrate(dense_ms, problem, Tiling((16,), (16,)), mask_factor=mask_factor)


@pytest.mark.parametrize("q,kv,layout,error,match", [
    ((0,), (16,), "group-major", ValueError, "q_tile_shape=\\(0,\\)"),
    ([16], (16,), "group-major", TypeError, "q_tile_shape=\\[16\\]"),
    ((16,), (16, 8), "group-major", ValueError, "same rank"),
    ((16,), (16,), "diagonal", ValueError, "layout='diagonal'"),
])
def test_tiling_rejects_bad_input(q, kv, layout, error, match):
    with pytest.raises(error, match=match):
        Tiling(q, kv, layout)


def test_rank_mismatch_and_bad_problem_are_refused():
    params = GNAParams.make((64, 64), 8)
    with pytest.raises(ValueError, match="q_tile_shape=\\(16,\\)"):
        simulate(params, Tiling((16,), (16,)))
    with pytest.raises(TypeError, match="params must be a GNAParams"):
        tile_counts({"spatial_shape": (64,)}, (16,), (16,))
    with pytest.raises(ValueError, match="heads=0"):
        Problem(params, heads=0)


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="gna-cute")
    sim_cli.register(parser.add_subparsers())
    args = parser.parse_args(["sim", *argv])
    return args.func(args)


def test_cli_table_json_search_and_plots(capsys, tmp_path):
    assert _cli("-i", "256", "256", "-w", "80", "80", "-s", "16", "16", "--heads", "24",
                "--q-tile", "16", "8", "--kv-tile", "16", "8") == 0
    out = capsys.readouterr().out
    assert "10.24" in out and "perfectly block-sparse" in out

    assert _cli("-i", "32768", "-w", "2048", "-s", "1", "-s", "2048", "--q-tile", "128",
                "--kv-tile", "128") == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 1 ") or
            line.startswith("| 2048 ")]
    assert len(rows) == 2 and "15.11" in rows[0] and "16.00" in rows[1]

    import importlib.util

    plots = importlib.util.find_spec("matplotlib") is not None  # an optional extra: without it the CLI refuses --plot
    assert _cli("-i", "64", "48", "-w", "16", "8", "--q-tile", "8", "8", "--kv-tile", "8", "8",
                "--search", "--json", "--dense-ms", "2.5", *(["--plot", str(tmp_path)] if plots else [])) == 0
    data = json.loads(capsys.readouterr().out)
    stats = simulate(GNAParams.make((64, 48), (16, 8)), Tiling((8, 8), (8, 8)))
    assert data["runs"][0]["stats"]["visited"] == stats.visited
    assert data["search"]["pareto"][0]["stride"] == [1, 1]
    assert data["runs"][0]["predicted_ms"] > 0
    pytest.importorskip("matplotlib")
    assert (tmp_path / "sim_search.png").stat().st_size > 0
    assert (tmp_path / "sim_visited.png").stat().st_size > 0


@pytest.mark.parametrize("argv,match", [
    (("-i", "64", "-w", "100"), "kernel_size"),
    (("-i", "64", "-w", "16", "--q-tile", "16"), "--q-tile and --kv-tile"),
    (("-i", "64", "64", "-w", "16", "--q-tile", "16", "--kv-tile", "16"), "--q-tile"),
    (("-i", "64", "-w", "16", "--dense-ms", "0"), "--dense-ms"),
])
def test_cli_reports_bad_input(capsys, argv, match):
    assert _cli(*argv) == 2
    assert match in capsys.readouterr().err
