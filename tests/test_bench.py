"""CPU tests of the benchmark suite: problems, tiled order + block tables, writer, CLI dry run.

Counts are checked against the independent brute-force mask (``tests/brute_force.py``), never
against the code under test; the simulator is checked to agree where the bench relies on it.
"""

from __future__ import annotations

import argparse
import itertools
import random

import numpy as np
import pytest
import torch

from brute_force import neighborhood_mask
from gna_cute import sim
from gna_cute.bench import cli, problems, providers, results
from gna_cute.bench.block_tables import block_tables
from gna_cute.bench.flex_gna import flex_mask_mod
from gna_cute.bench.tiled_order import TiledOrder, gna_allowed, tile_candidates


def _random_config(rng: random.Random, rank: int) -> dict:
    shape, window, stride, dil, causal = [], [], [], [], []
    for _ in range(rank):
        n = rng.randint(3, {1: 40, 2: 11, 3: 6}[rank])
        d = rng.choice([1, 1, 2]) if n >= 4 else 1
        w = rng.randint(2, max(2, n // d))
        shape.append(n), dil.append(d), window.append(w)
        stride.append(rng.randint(1, w)), causal.append(rng.random() < 0.3)
    return dict(spatial_shape=tuple(shape), kernel_size=tuple(window), stride=tuple(stride),
                dilation=tuple(dil), is_causal=tuple(causal))


def _brute(cfg: dict) -> np.ndarray:
    return neighborhood_mask(cfg["spatial_shape"], cfg["kernel_size"], cfg["stride"],
                             cfg["dilation"], cfg["is_causal"])


CONFIGS = [_random_config(random.Random(seed), rank) for seed in range(8) for rank in (1, 2, 3)]


# ------------------------------------------------------------------------------------------------
# Suites and problems
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(problems.SUITES))
def test_suites_parse(name):
    probs = problems.suite(name)
    assert probs
    names = [p.name for p in probs]
    assert len(set(names)) == len(names), "problem names must be unique inside a suite"
    for p in probs:
        s = p.summary()
        assert s["attended_pairs"] > 0 and 1.0 <= s["tile_bound"] and 1.0 <= s["flop_bound"]
        assert problems.problem_from_dict(s) == p  # the JSON form round-trips


def test_headline_is_issue_7_table():
    probs = problems.suite("headline")
    assert len(probs) == 8
    assert sum(p.is_dense for p in probs) == 2
    for p in probs:
        assert (p.batch, p.head_dim, p.dtype) == (1, 128, "float16")
        assert p.heads == (1 if p.rank == 1 else 24)
    bounds = [round(p.kernel_stats.tile_bound, 1) for p in probs if not p.is_dense]
    assert bounds == [15.1, 16.0, 7.5, 10.2, 5.4, 11.1]  # issue 7's tile-bound column


def test_pair_counts_equal_simulator_and_brute_force():
    for cfg in CONFIGS[:12]:
        p = problems.Problem.make(cfg["spatial_shape"], cfg["kernel_size"], cfg["stride"],
                                  cfg["dilation"], cfg["is_causal"], batch=2, heads=3, head_dim=64)
        per_head = int(_brute(cfg).sum())
        assert p.attended_pairs == per_head * 2 * 3
        assert p.useful_flops == per_head * 2 * 3 * 4 * 64
        tiles = p.tile_shapes()
        stats = sim.simulate(p.params, sim.Tiling(*tiles))
        assert p.attended_pairs == stats.attended_pairs * 2 * 3


def test_problem_validation_names_argument():
    with pytest.raises(ValueError, match="dtype"):
        problems.Problem.make((64,), 8, dtype="float32")
    with pytest.raises(ValueError, match="q_tile_shape"):
        problems.Problem.make((64,), 8, q_tile_shape=(16,))
    with pytest.raises(ValueError, match="kernel_size"):
        problems.Problem.make((64,), 1)
    with pytest.raises(ValueError, match="heads"):
        problems.Problem.make((64,), 8, heads=0)
    with pytest.raises(ValueError, match="suite"):
        problems.suite("nope")
    with pytest.raises(ValueError, match="providers"):
        providers.select("cudnn-dense,nope")


# ------------------------------------------------------------------------------------------------
# Tiled order, GNA mask on it, block tables
# ------------------------------------------------------------------------------------------------


def _tiled_brute(order: TiledOrder, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Brute mask permuted into the tiled order (padded rows/cols False) and the validity map."""
    gather = order.gather_index()
    valid = gather >= 0
    tiled = np.zeros((len(gather), len(gather)), dtype=bool)
    real = np.nonzero(valid)[0]
    tiled[np.ix_(real, real)] = mask[np.ix_(gather[real], gather[real])]
    return tiled, valid


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: str(c["spatial_shape"]))
def test_tiled_mask_equals_brute_force(cfg):
    params = problems.Problem.make(**cfg).params
    mask = _brute(cfg)
    rng = random.Random(str(cfg))
    tile = tuple(rng.choice([1, 2, 4]) for _ in range(params.rank))
    order = TiledOrder.make(params, tile)
    gather = order.gather_index()
    real = gather[gather >= 0]
    assert sorted(real.tolist()) == list(range(mask.shape[0])), "every token appears exactly once"
    tiled, valid = _tiled_brute(order, mask)
    n = order.padded_tokens
    qi, ki = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    got = gna_allowed(order, qi, ki, np.minimum, np.maximum)
    np.testing.assert_array_equal(got[np.ix_(valid, valid)], tiled[np.ix_(valid, valid)])
    assert not got[np.ix_(valid, ~valid)].any(), "a real query must never see a padded key"
    # the torch form (Flex mask_mod) computes the same mask
    tq, tk = torch.from_numpy(qi), torch.from_numpy(ki)
    np.testing.assert_array_equal(flex_mask_mod(order)(0, 0, tq, tk).numpy(), got)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: str(c["spatial_shape"]))
def test_block_tables_cover_the_mask_exactly(cfg):
    params = problems.Problem.make(**cfg).params
    rng = random.Random(str(cfg) + "t")
    tile = tuple(rng.choice([1, 2, 4]) for _ in range(params.rank))
    order = TiledOrder.make(params, tile)
    tiled, valid = _tiled_brute(order, _brute(cfg))
    b = order.tile_size
    m = order.num_tiles
    blocks = tiled.reshape(m, b, m, b)
    any_pair = blocks.any(axis=(1, 3))
    real_q = valid.reshape(m, b)
    tb = block_tables(order)
    for qb in range(m):
        partial = set(tb.mask_idx[qb, : tb.mask_cnt[qb]].tolist())
        full = set(tb.full_idx[qb, : tb.full_cnt[qb]].tolist())
        assert not partial & full
        # every block holding an attended pair is visited
        assert set(np.nonzero(any_pair[qb])[0].tolist()) <= partial | full
        # a full block needs no mask: all its key slots real, every real query sees all of them
        for kb in full:
            assert valid.reshape(m, b)[kb].all()
            assert blocks[qb][real_q[qb]][:, kb].all()
    # per (group, Q tile) counts equal the simulator's (same scheduler rule, contract 4)
    counts = sim.tile_counts(params, tile, tile)
    np.testing.assert_array_equal((tb.mask_cnt + tb.full_cnt), counts[0].reshape(-1))
    np.testing.assert_array_equal(tb.full_cnt, counts[1].reshape(-1))


def test_tile_candidates_have_the_block_size():
    for shape in [(32768,), (256, 256), (30, 48, 80), (7, 300)]:
        cands = tile_candidates(shape, (1,) * len(shape), 128)
        assert cands and all(int(np.prod(c)) == 128 for c in cands)


# ------------------------------------------------------------------------------------------------
# Writer and CLI
# ------------------------------------------------------------------------------------------------


def _record() -> results.RunRecord:
    probs = problems.suite("headline")[:2]
    rows = [
        {"problem": probs[0].name, "provider": "cudnn-dense", "role": "baseline", "status": "ok",
         "ms": 0.81, "q1_ms": 0.8, "q3_ms": 0.82, "runs": 30, "method": "events", "host_us": 12.5,
         "speedup_cudnn": 1.0, "useful_tflops": 83.1, "info": {}},
        {"problem": probs[0].name, "provider": "fa4-gna", "role": "peer", "status": "skipped",
         "reason": "no CUDA device"},
    ]
    env = results.collect_env()
    return results.RunRecord("headline", env, {"runs": 30}, [p.summary() for p in probs], rows)


def test_writer_round_trips(tmp_path):
    rec = _record()
    paths = results.save(rec, tmp_path, "headline")
    assert (tmp_path / "headline.json") in paths and (tmp_path / "headline.md") in paths
    back = results.load(tmp_path / "headline.json")
    assert back == rec
    md = (tmp_path / "headline.md").read_text()
    for key in ("torch", "cutlass_dsl", "flash_attn_4", "driver", "device"):
        assert key in rec.env
    assert f"torch {rec.env['torch']}" in md and "CuTe DSL" in md and "FlashAttention-4" in md
    assert "skipped: no CUDA device" in md
    assert "8.3x, 363" in md  # NATTEN's published reference column


def test_markdown_states_the_timing_method():
    rec = _record()
    md = results.markdown(rec)
    assert "CUDA events" in md and "L2 flushed between calls" in md
    rec.settings.update(use_graph=True, flush_l2=False, rounds=10)
    md = results.markdown(rec)
    assert "CUDA-graph replays" in md and "L2 left warm" in md and "L2 flushed" not in md
    assert "10 interleaved rounds" in md


def test_reader_rejects_other_schema():
    text = _record().to_json().replace('"schema": 1', '"schema": 99')
    with pytest.raises(ValueError, match="schema"):
        results.RunRecord.from_json(text)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gna-cute")
    cli.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_dry_run_lists_problems_and_providers(capsys):
    assert cli.main(_parse(["bench", "--suite", "headline", "--dry-run"])) == 0
    out = capsys.readouterr().out
    for p in problems.suite("headline"):
        assert p.name in out
    for prov in providers.all_providers():
        assert prov.name in out


def test_one_problem_from_flags(capsys):
    args = _parse(["bench", "-i", "64", "48", "-w", "9", "-s", "2", "3", "--causal", "1", "0",
                   "--heads", "4", "--dry-run", "--providers", "gna_cute"])
    stem, probs = cli.problems_from_args(args)
    (p,) = probs
    assert (p.spatial_shape, p.kernel_size, p.stride, p.is_causal, p.heads) == (
        (64, 48), (9, 9), (2, 3), (True, False), 4)
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "cudnn-dense" in out and "gna_cute" in out and "fa4-gna" not in out


def test_repeated_stride_gives_one_problem_each():
    args = _parse(["bench", "-i", "256", "256", "-w", "80", "-s", "1", "-s", "16", "16", "--dry-run"])
    stem, probs = cli.problems_from_args(args)
    assert [p.stride for p in probs] == [(1, 1), (16, 16)]
    assert stem.endswith("-2-strides")


def test_cli_rejects_bad_input(capsys):
    assert cli.main(_parse(["bench", "--dry-run"])) == 2
    assert "--suite" in capsys.readouterr().err
    assert cli.main(_parse(["bench", "-i", "64", "-w", "100", "--dry-run"])) == 2
    assert "kernel_size" in capsys.readouterr().err


def test_package_cli_has_bench():
    """Through ``gna-cute`` itself once the foundation's CLI exists."""
    gcli = pytest.importorskip("gna_cute.cli")
    if not hasattr(gcli, "main"):
        pytest.skip("gna_cute.cli.main not there yet")
    assert gcli.main(["bench", "--suite", "sweep-3d", "--dry-run"]) == 0


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_every_suite_problem_has_a_fa4_tile(rank):
    from gna_cute.bench.tiled_order import best_tile_shape

    for p in itertools.chain.from_iterable(problems.suite(n) for n in problems.SUITES):
        if p.rank == rank and not p.is_dense:
            assert int(np.prod(best_tile_shape(p.params))) == 128


# ------------------------------------------------------------------------------------------------
# Derived columns (CPU, synthetic timings) and GPU checks of timing and providers
# ------------------------------------------------------------------------------------------------


def test_derived_columns_from_timings():
    from gna_cute.bench import runner

    sparse = problems.Problem.make((256, 256), 80, 16, heads=24, q_tile_shape=(16, 8), kv_tile_shape=(16, 8))
    dense = problems.Problem.make((256, 256), 256, 1, heads=24, q_tile_shape=(16, 8), kv_tile_shape=(16, 8))
    ok = lambda prob, prov, role, ms: {"problem": prob.name, "provider": prov, "role": role,  # noqa: E731
                                        "status": "ok", "ms": ms}
    rows = [ok(sparse, "cudnn-dense", "baseline", 100.0), ok(sparse, "fa4-gna", "peer", 10.0),
            ok(sparse, "flex-gna", "peer", 20.0), ok(sparse, "gna_cute", "ours", 8.0)]
    runner._derive(sparse, rows)
    ours = rows[3]
    assert ours["speedup_cudnn"] == pytest.approx(12.5)
    assert ours["speedup_peer"] == pytest.approx(10.0 / 8.0)  # best peer is the faster one
    assert [r["peer_of_ratio"] for r in rows] == [False, True, True, False]  # the looped ratio's peers
    assert ours["useful_tflops"] == pytest.approx(sparse.useful_flops / 8e-3 / 1e12)
    assert ours["pct_tile_bound"] == pytest.approx(100 * 12.5 / 10.24)
    dense_rows = [ok(dense, "gna_cute", "ours", 90.0)]
    runner._derive_own_dense([sparse, dense], rows + dense_rows)
    assert ours["speedup_own_dense"] == pytest.approx(90.0 / 8.0)


@pytest.mark.gpu
def test_time_fn_reports_gpu_time_not_host_time():
    import time

    from gna_cute.bench import timing

    env = timing._env()

    def fn():
        time.sleep(0.002)  # 2 ms of host work per call ...
        env.park(0.2)  # ... in front of 0.2 ms of GPU work

    t = timing.time_fn(fn, runs=20, warmup=1)
    assert 0.15 < t.median_ms < 0.5, t
    assert t.host_us > 1500, t


@pytest.mark.gpu
def test_interleaved_rounds_time_each_provider_and_keep_going_past_a_failure():
    from gna_cute.bench import timing

    env = timing._env()

    def boom():
        raise RuntimeError("provider broke")

    short, broken, long_ = timing.time_interleaved(
        [lambda: env.park(0.2), boom, lambda: env.park(0.6)], runs=21, rounds=4, warmup=1)
    assert isinstance(broken, RuntimeError)
    assert short.runs == long_.runs == 24  # ceil(21 / 4) calls in each of the 4 rounds
    assert 0.15 < short.median_ms < 0.4 and 0.5 < long_.median_ms < 0.9, (short, long_)


def test_interleaved_rounds_alternate_the_order_and_isolate_failures(monkeypatch):
    """CPU: the round structure of ``time_interleaved`` with the GPU parts replaced."""
    from gna_cute.bench import timing

    calls = []

    def prepare(fn, runs, warmup, use_graph, measure_host):
        fn()  # a provider that fails here is reported, not timed
        return timing._Subject(fn, "events", 1.0, {"a": 0.2, "c": 0.9, "d": 0.4}[fn.__name__], runs, [])

    def sample(subject, n, flush_l2):
        assert subject.park_ms == 0.9  # every provider parked as long as the slowest host path needs
        calls.append((subject.call.__name__, n))
        if subject.call.__name__ == "c" and len(calls) > 4:
            raise RuntimeError("c broke in round 2")
        subject.samples.extend([1.0] * n)

    def a():
        pass

    def b():
        raise ValueError("b cannot start")

    def c():
        pass

    def d():
        pass

    monkeypatch.setattr(timing, "_prepare", prepare)
    monkeypatch.setattr(timing, "_sample", sample)
    ta, tb, tc, td = timing.time_interleaved([a, b, c, d], runs=30, rounds=3)
    assert calls == [("a", 10), ("c", 10), ("d", 10), ("d", 10), ("c", 10), ("a", 10), ("a", 10), ("d", 10)]
    assert isinstance(tb, ValueError) and isinstance(tc, RuntimeError)
    assert ta.runs == 30 and td.runs == 30


@pytest.mark.parametrize("kw, word", [(dict(runs=10), "runs=10"), (dict(rounds=0), "rounds=0"),
                                      (dict(runs=20, rounds=11), "rounds=11"), (dict(warmup=0), "warmup=0"),
                                      (dict(sustained_s=-1.0), "sustained_s=-1.0")])
def test_bad_settings_are_refused_naming_them(kw: dict, word: str) -> None:
    from gna_cute.bench import runner

    with pytest.raises(ValueError, match=word):
        runner.Settings(**kw)


@pytest.mark.gpu
def test_every_provider_matches_the_reference_on_gpu():
    from gna_cute.bench import runner

    prob = problems.Problem.make((24, 40), (7, 9), (2, 3), (2, 1), (False, True), heads=2)
    rows = runner.run_problem(prob, providers.all_providers(), runner.Settings(runs=20), lambda s: None, {})
    assert not [r for r in rows if r.get("status") == "failed"], rows
    errs = {r["provider"]: r["max_err"] for r in rows if "max_err" in r}
    assert "gna_cute" in errs or any(r["provider"] == "gna_cute" and r["status"] == "skipped" for r in rows)
    assert all(e < 1e-2 for e in errs.values()), errs


def test_time_budget_skips_remaining_problems_without_running():
    from gna_cute.bench import runner

    probs = problems.suite("headline")[:2]
    seen = []
    rows = runner.run(probs, providers.all_providers(), runner.Settings(), log=seen.append,
                      after_problem=lambda r: pytest.fail("nothing ran"), max_seconds=0.0)
    assert len(rows) == 2 * len(providers.all_providers())
    assert all(r["status"] == "skipped" and "time budget" in r["reason"] for r in rows)
    assert len(seen) == 2


def test_clock_lines_parse_and_summarize_per_window():
    from gna_cute.bench import clocks

    s = clocks.parse_line("2026/11/24 00:26:05.100, 1500, 612.30, 0x0000000000000004")
    assert (s.sm_mhz, s.power_w, s.reasons) == (1500.0, 612.3, 4)
    assert clocks.parse_line("2026/11/24 00:26:05.150, 1980, [N/A], 0x0000000000000000").power_w is None
    assert clocks.parse_line("Failed to initialize NVML") is None
    t = s.t
    samples = [clocks.Sample(t + i * 0.05, mhz, 600.0, reason)
               for i, (mhz, reason) in enumerate([(1980, 0), (1500, 4), (1125, 4), (1600, 0x80), (1980, 1)])]
    stats = clocks.summarize(samples, t + 0.04, t + 0.16)  # the 2nd-4th samples
    assert stats == {"sm_mhz_median": 1500, "sm_mhz_min": 1125, "sm_mhz_max": 1600, "power_capped_pct": 100.0,
                     "samples": 3}
    assert clocks.summarize(samples, t + 1, t + 2) is None
    rows = [{"provider": "a", "info": {"x": 1}, "timed_window": [t, t + 0.11]}, {"provider": "b"}]
    clocks.annotate(rows, samples)
    assert rows[0]["clock"]["samples"] == 3 and rows[0]["info"]["sm clock"] == "1500 MHz (1125-1980), power cap 67 %"
    assert rows[0]["info"]["x"] == 1 and "clock" not in rows[1]


def test_sustained_loops_count_calls_after_settling_and_alternate_the_order():
    """CPU: the loop counts whole batches after the settle time, on a fake clock that each call moves."""
    from gna_cute.bench import sustained

    now = [100.0]
    calls = []

    def make(name, cost):
        def fn():
            calls.append(name)
            now[0] += cost
        return fn

    syncs = []
    lp = sustained.loop(make("a", 0.01), 0.1, lambda: syncs.append(1), batch=4, settle=0.05, clock=lambda: now[0])
    # settle: 2 batches (0.08 s); then batches until 0.1 s have passed: 3 batches = 12 calls, 0.12 s
    assert lp.calls == 12 and abs(lp.seconds - 0.12) < 1e-9 and len(calls) == 20 and len(syncs) == 5
    assert abs(lp.window[1] - lp.window[0] - 0.12) < 1e-9 and abs(lp.window[1] - 100.2) < 1e-9
    calls.clear()
    loops = sustained.run([make("a", 0.01), make("b", 0.02)], [1.0, 40.0], 0.05, lambda: None, rounds=3,
                          settle=0.0, clock=lambda: now[0])
    assert [len(x) for x in loops] == [3, 3]
    order = sorted((lp.window[0], name) for name, x in zip("ab", loops) for lp in x)
    assert [name for _, name in order] == ["a", "b", "b", "a", "a", "b"]  # reversed every other round
    assert loops[0][0].calls % 50 == 0 and loops[1][0].calls == 3  # batches of ~50 ms of calls


def test_sustained_summary_gives_cycles_and_joules_per_call():
    from gna_cute.bench import clocks, sustained

    loops = [{"calls": 100, "seconds": 2.0, "window": [10.0, 12.0]},
             {"calls": 100, "seconds": 2.2, "window": [20.0, 22.2]}]
    samples = [clocks.Sample(t, mhz, w, 4) for t, mhz, w in
               [(9.0, 1980, 100.0), (10.5, 1300, 690.0), (11.5, 1400, 700.0), (20.1, 1350, 680.0),
                (21.0, 1500, None), (30.0, 1980, 90.0)]]
    s = sustained.summarize(loops, samples)
    assert s["ms"] == pytest.approx(21.0) and s["calls"] == 200 and s["samples"] == 4
    assert s["sm_mhz"] == 1375 and s["power_w"] == pytest.approx(690.0)
    assert s["mcycles"] == pytest.approx(21.0 * 1375 / 1e3) and s["joules"] == pytest.approx(690.0 * 21.0 / 1e3)
    assert sustained.describe(s) == "21 ms, 1375 MHz, 690 W: 28.88 Mcycles, 14.49 J per call"
    bare = sustained.summarize(loops, [])
    assert bare["mcycles"] is None and bare["joules"] is None and sustained.describe(bare) == "21 ms"
    rows = [{"provider": "a", "sustained": loops}, {"provider": "b"}]
    clocks.annotate(rows, samples)
    assert rows[0]["info"]["sustained"] == sustained.describe(s) and "sustained_summary" not in rows[1]


def test_sustained_loops_leave_out_host_bound_providers(monkeypatch):
    """CPU: a provider whose host path takes over half its call is not looped (the loop would time the host)."""
    from gna_cute.bench import runner, sustained

    seen = []

    def fake_run(fns, one_call_ms, seconds, sync):
        seen.append((len(fns), one_call_ms, seconds))
        return [[sustained.Loop(10, 0.5, (1.0, 1.5))] for _ in fns]

    monkeypatch.setattr(sustained, "run", fake_run)
    fast, slow = {"ms": 23.0, "host_us": 150.0, "info": {"a": 1}}, {"ms": 0.06, "host_us": 160.0}
    prep = providers.Prepared(lambda: None, lambda: None)
    runner._sustained([(fast, prep), (slow, prep)], 3.0)
    assert seen == [(1, [23.0], 3.0)]
    assert fast["sustained"] == [{"calls": 10, "seconds": 0.5, "window": [1.0, 1.5]}] and fast["info"] == {"a": 1}
    assert "sustained" not in slow and slow["info"]["sustained"] == "not run (host 160 us per call)"


def test_clock_log_reads_a_sampler_and_survives_its_absence(tmp_path, monkeypatch):
    import time

    from gna_cute.bench import clocks

    fake = tmp_path / "fake-smi"
    fake.write_text("#!/bin/sh\n"
                    "echo '2026/11/24 00:26:05.100, 1500, 612.30, 0x0000000000000004'\n"
                    "echo '2026/11/24 00:26:05.150, 1980, 120.00, 0x0000000000000000'\n"
                    "exec sleep 30\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{__import__('os').environ['PATH']}")
    with clocks.ClockLog("0", command="fake-smi") as log:
        time.sleep(0.3)
    assert [s.sm_mhz for s in log.samples] == [1500.0, 1980.0]
    with clocks.ClockLog("0", command="no-such-sampler") as log:
        pass
    assert log.samples == []


@pytest.mark.parametrize(
    "name, expected",
    [
        ("3d-30x48x80-w18x24x24-s16x8x8", "rotated, one CTA per item, tile order 1,2,0"),
        ("2d-256x256-w80x80-s16x16", "rotated, one CTA per item, clusters of 2 along dim 1"),
        ("1d-32768-w2048-h1", "rotated, one CTA per item"),
    ],
)
def test_launch_info_names_the_kernel_variant(name: str, expected: str) -> None:
    """What the results record about our launch (no GPU here: no SM count, so no persistent CTAs)."""
    prob = next(p for p in problems.suite("headline") if p.name.startswith(name))
    shape = (prob.batch, *prob.spatial_shape, prob.heads, prob.head_dim)
    q = torch.empty(shape, dtype=torch.float16, device="meta")
    assert providers.launch_info(q, q, q, prob, 0.1, 90, prob.q_tile_shape, prob.kv_tile_shape) == expected


def test_launch_info_names_the_exp2_emulation(monkeypatch) -> None:
    from gna_cute.kernels import interface, tile_choice

    monkeypatch.setattr(tile_choice, "PRODUCT_EXP2_EMULATION", True)
    interface._config_of.cache_clear()
    try:
        prob = next(p for p in problems.suite("dtype-headdim") if p.name.startswith("2d-256x256-w80x80-s16x16-h24-d64"))
        q = torch.empty((prob.batch, *prob.spatial_shape, prob.heads, prob.head_dim), dtype=torch.float16,
                        device="meta")
        info = providers.launch_info(q, q, q, prob, 0.1, 90, prob.q_tile_shape, prob.kv_tile_shape)
    finally:
        interface._config_of.cache_clear()
    assert info.endswith(f", 1 in {tile_choice.EXP2_EMULATION_EVERY} exp2 on the FMA pipe"), info


@pytest.mark.parametrize("name, tail", [("1d-32768-w2048-h1", ", full tiles first from 8-aligned tiles"),
                                        ("2d-256x256-w80x80-s16x16", ", full tiles first")])
def test_launch_info_names_full_first_visiting(monkeypatch, name: str, tail: str) -> None:
    from gna_cute.kernels import interface, tile_choice

    monkeypatch.setattr(tile_choice, "PRODUCT_SHARED_START_1D", True)
    monkeypatch.setattr(tile_choice, "PRODUCT_FULL_FIRST_UNIFORM", True)
    monkeypatch.setattr(interface, "_sm_count", lambda device: 132)
    interface._config_of.cache_clear()
    tile_choice.choose_kv_start_align.cache_clear()
    try:
        prob = next(p for p in problems.suite("headline") if p.name.startswith(name))
        q = torch.empty((prob.batch, *prob.spatial_shape, prob.heads, prob.head_dim), dtype=torch.float16,
                        device="meta")
        info = providers.launch_info(q, q, q, prob, 0.1, 90, prob.q_tile_shape, prob.kv_tile_shape)
    finally:
        interface._config_of.cache_clear()
        tile_choice.choose_kv_start_align.cache_clear()
    assert info.endswith(tail), info


def test_looped_ratio_to_the_best_peer():
    """``--sustained``: each looped row's ratio to the best looped peer of its problem (here 20 ms
    vs the faster peer's 21 ms), shown next to the timed ratio; a problem whose peers did not loop
    gets none."""
    from gna_cute.bench import clocks, results

    def loops(ms):
        return [{"calls": 100, "seconds": ms / 10.0, "window": [10.0, 10.0 + ms / 10.0]}]

    rows = [
        {"problem": "p", "provider": "ours", "role": "ours", "status": "ok", "ms": 19.0, "speedup_peer": 21.5 / 19.0,
         "peer_of_ratio": False, "sustained": loops(20.0)},
        {"problem": "p", "provider": "fa4", "role": "peer", "status": "ok", "ms": 21.5, "speedup_peer": 1.0,
         "peer_of_ratio": True, "sustained": loops(21.0)},
        {"problem": "p", "provider": "flex", "role": "peer", "status": "ok", "ms": 30.0, "speedup_peer": 21.5 / 30.0,
         "peer_of_ratio": True, "sustained": loops(33.0)},
        {"problem": "q", "provider": "ours", "role": "ours", "status": "ok", "ms": 5.0, "peer_of_ratio": False,
         "sustained": loops(5.0)},
    ]
    clocks.annotate(rows, [])
    assert rows[0]["speedup_peer_sustained"] == pytest.approx(21.0 / 20.0)
    assert rows[2]["speedup_peer_sustained"] == pytest.approx(21.0 / 33.0)
    assert "speedup_peer_sustained" not in rows[3]
    record = results.RunRecord("t", {}, {}, [], rows)
    cells = {r[1]: r[4] for r in results.row_table(record) if r[0] == "p"}
    assert cells["ours"] == "1.13 (1.05 looped)"
