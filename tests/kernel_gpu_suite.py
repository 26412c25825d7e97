"""The GPU test suite of a fused kernel, written once for every architecture (sm90 now, sm100 next).

``define_tests(arch, name)`` returns the test functions (and their session fixture) for one kernel
backend; a test module puts them in its namespace and adds its skip marker:

    pytestmark = requires_sm90
    globals().update(define_tests(90, "sm90"))

What they check: output and LSE against the fp32 reference and an fp64 truth over the seeded sweep
(``kernel_sweep``: 294 random problems over 42 static configurations, the worked examples of the
semantics doc, the three headline shapes; plus ``kernel_sweep.dilation_remainder_cases``: 42
problems whose spatial sizes are not divisible by their dilation, run group by group), the kernel's
visited/full tile counts against the simulator (also assembled over those groups), the same
for 1D problems on two persistent CTAs (sm90: many work items per CTA), ``backend="auto"`` picking the kernel, CUDA-graph capture and replay, and
``torch.compile(fullgraph=True)`` through ``torch.ops.gna_cute.attention``.  Every configuration is
compiled once, up front, in parallel processes (``interface.warm``), into the disk cache.
"""

from __future__ import annotations

import dataclasses
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable

import numpy as np
import pytest
import torch

import kernel_sweep as ks
from gna_cute import backends, sim
from gna_cute.kernels import config, interface


def _items(case: ks.Case) -> int:
    """Tokens times heads and batch: how many work items a 1D problem has, up to a constant."""
    return case.batch * case.heads * case.spatial[0]


def define_tests(arch: int, name: str) -> dict[str, Callable[..., Any]]:
    def tile_pairs(rank: int, head_dim: int):
        return config.supported_tile_shapes(arch, rank, head_dim)

    random_cases = ks.random_cases(seed=2024, n_static=42, per_static=7, tile_pairs=tile_pairs)
    remainder = ks.dilation_remainder_cases(seed=5, n_static=12, per_static=3, tile_pairs=tile_pairs)
    cases = random_cases + ks.worked_example_cases() + remainder
    headline = ks.headline_cases()
    # tile counts: the first two problems of the first six random configurations, the 2D headline,
    # the first problem of every remainder configuration and the fixed remainder problems
    count_cases = (
        [c for i, c in enumerate(random_cases) if i % 7 < 2 and i < 42]
        + [dataclasses.replace(c, heads=1) for c in headline if c.static.rank == 2]
        + [c for i, c in enumerate(remainder) if i % 3 == 0 or i >= 36]
    )
    # one launch and several (dilation group by group) under CUDA graphs and torch.compile
    replay_cases = [cases[1], remainder[-1]]
    # persistent CTAs (sm90, rank 1 without causal dims): forced down to two CTAs so every CTA
    # runs many work items (the real count, the SM count, leaves small problems one item each);
    # per static configuration the problem with the most work items, 10 configurations
    largest: dict = {}
    for c in random_cases + remainder:
        if arch == 90 and c.static.rank == 1 and not any(c.static.is_causal):
            if c.static not in largest or _items(c) > _items(largest[c.static]):
                largest[c.static] = c
    persistent_cases = list(largest.values())[:10]
    # tail clusters (sm90, ``FwdConfig.cluster_tail``), forced on whatever the product's flag says
    tail_cases = ks.tail_cluster_cases() if arch == 90 else []
    # the softmax's FMA-pipe exponentials (sm90, ``FwdConfig.exp2_emulation``), forced on likewise
    exp2_cases = ks.exp2_emulation_cases() if arch == 90 else []
    # full-first visiting (sm90, ``FwdConfig.kv_start_align``), both product rules forced on
    kv_start_cases = ks.kv_start_cases() if arch == 90 else []
    kernel = {
        "can_run": getattr(interface, f"can_run_{name}"),
        "forward": getattr(interface, f"forward_{name}"),
        "tile_counts": getattr(interface, f"tile_counts_{name}"),
    }

    def config_of(case: ks.Case, count_tiles: bool = False):
        return interface.make_config(case.args("meta"), arch, count_tiles)

    @pytest.fixture(scope="session")
    def compile_errors() -> dict:
        """Compile every configuration of the suite (parallel, into the disk cache): config -> error."""
        configs = [config_of(c) for c in cases + headline] + [config_of(c, True) for c in count_cases]
        configs = list(dict.fromkeys(configs))
        errors = interface.warm(configs)
        # a crashed worker is no verdict on the configs it left: those compile in-process later
        return {cfg: err for cfg, err in zip(configs, errors) if err is not None and not isinstance(err, BrokenProcessPool)}

    def prepare(case: ks.Case, errors: dict, count_tiles: bool = False):
        args = case.args()
        cfg = interface.make_config(args, arch, count_tiles)
        if cfg in errors:
            pytest.fail(f"compile failed for {cfg}: {errors[cfg]!r}")
        assert kernel["can_run"](args) is None
        return args

    @pytest.mark.parametrize("case", cases, ids=[c.id for c in cases])
    def test_matches_reference(case: ks.Case, compile_errors: dict) -> None:
        args = prepare(case, compile_errors)
        out, lse = kernel["forward"](args)
        assert out.shape == args.q.shape and out.dtype == args.q.dtype
        assert lse.shape == args.q.shape[:-1] and lse.dtype == torch.float32
        errors = ks.measure(case, args, out, lse)
        assert errors.ok(), errors

    @pytest.mark.parametrize("case", headline, ids=[c.id for c in headline])
    def test_headline_shapes(case: ks.Case, compile_errors: dict) -> None:
        """Full-size problems (2 heads): sampled rows against fp64, no full fp32 reference (too slow)."""
        args = prepare(case, compile_errors)
        out, lse = kernel["forward"](args)
        assert torch.isfinite(out).all() and torch.isfinite(lse).all()
        errors = ks.measure(case, args, out, lse, full_reference=False)
        assert errors.ok(), errors

    @pytest.mark.parametrize("case", count_cases, ids=[c.id for c in count_cases])
    def test_tile_counts_match_simulator(case: ks.Case, compile_errors: dict) -> None:
        args = prepare(case, compile_errors, count_tiles=True)
        cfg = interface.make_config(args, arch, count_tiles=True)
        counts = kernel["tile_counts"](args)
        expected = sim.tile_counts(args.params, cfg.q_tile_shape, cfg.kv_tile_shape)
        assert counts.dtype == np.int64 and counts.shape == expected.shape
        np.testing.assert_array_equal(counts, expected)

    @pytest.mark.parametrize("case", persistent_cases, ids=[c.id for c in persistent_cases])
    def test_persistent_ctas_many_items(case: ks.Case, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(interface, "_sm_count", lambda device: 2)
        args = case.args()
        assert interface.make_config(args, arch).persistent_ctas == 2
        out, lse = kernel["forward"](args)
        errors = ks.measure(case, args, out, lse)
        assert errors.ok(), errors
        cfg = interface.make_config(args, arch, count_tiles=True)
        expected = sim.tile_counts(args.params, cfg.q_tile_shape, cfg.kv_tile_shape)
        np.testing.assert_array_equal(kernel["tile_counts"](args), expected)

    def product_flag_on(monkeypatch: pytest.MonkeyPatch, *flags: str):
        """The host layer with ``tile_choice.<flag>`` on for each flag (its config caches, and
        those of the choices that read the flags, cleared on both sides)."""
        from gna_cute.kernels import tile_choice

        def clear() -> None:
            for fn in (interface._config_of, tile_choice.choose_kv_start_align, tile_choice.choose_q_buffers):
                fn.cache_clear()

        for flag in flags:
            monkeypatch.setattr(tile_choice, flag, True)
        clear()
        yield
        clear()

    def check_counted_run(case: ks.Case, expect) -> None:
        """``case`` through the host layer, whose config must satisfy ``expect``: output and LSE
        against the reference, the debug tile counts against the simulator."""
        args = case.args()
        cfg, counted = (interface.make_config(args, arch, count_tiles=c) for c in (False, True))
        assert expect(cfg), cfg
        interface.warm([cfg, counted])
        out, lse = kernel["forward"](args)
        errors = ks.measure(case, args, out, lse, full_reference=ks.is_small(case.spatial))
        assert errors.ok(), errors
        expected = sim.tile_counts(args.params, counted.q_tile_shape, counted.kv_tile_shape)
        np.testing.assert_array_equal(kernel["tile_counts"](args), expected)

    @pytest.fixture
    def tails_on(monkeypatch: pytest.MonkeyPatch):
        """Tail clusters allowed."""
        yield from product_flag_on(monkeypatch, "PRODUCT_CLUSTER_TAIL")

    @pytest.mark.parametrize("sm_count", [132, 6])
    @pytest.mark.parametrize("case", tail_cases, ids=[c.id for c in tail_cases])
    def test_tail_clusters(case: ks.Case, sm_count: int, tails_on: None, monkeypatch: pytest.MonkeyPatch) -> None:
        """Output, LSE and tile counts of problems run with tail clusters (unshared clusters of the
        paired dim's last tiles), on the SM count's persistent CTAs where the work is uniform and on
        6 (many items per CTA, shared and tail clusters in one CTA's walk)."""
        monkeypatch.setattr(interface, "_sm_count", lambda device: sm_count)
        check_counted_run(case, lambda cfg: cfg.cluster_dim >= 0 and cfg.cluster_tail)

    @pytest.fixture
    def exp2_emulation_on(monkeypatch: pytest.MonkeyPatch):
        """The FMA-pipe exponentials on."""
        yield from product_flag_on(monkeypatch, "PRODUCT_EXP2_EMULATION")

    @pytest.mark.parametrize("case", exp2_cases, ids=[c.id for c in exp2_cases])
    def test_exp2_emulation(case: ks.Case, exp2_emulation_on: None) -> None:
        """Output and LSE with every n-th exponential (the product's n) computed by the polynomial
        (``softmax.exp2_poly``): masked and block-sparse tiles, D 32 / 64, fp16 / bf16."""
        args = case.args()
        cfg = interface.make_config(args, arch)
        assert cfg.exp2_emulation > 0, cfg
        interface.warm([cfg])
        out, lse = kernel["forward"](args)
        errors = ks.measure(case, args, out, lse, full_reference=ks.is_small(case.spatial))
        assert errors.ok(), errors

    @pytest.fixture
    def full_first_on(monkeypatch: pytest.MonkeyPatch):
        """Both full-first rules on (``FwdConfig.kv_start_align``)."""
        yield from product_flag_on(monkeypatch, "PRODUCT_SHARED_START_1D", "PRODUCT_FULL_FIRST_UNIFORM")

    @pytest.mark.parametrize("sm_count", [132, 6])
    @pytest.mark.parametrize("case, align", kv_start_cases, ids=[c.id for c, _ in kv_start_cases])
    def test_kv_start_align(case: ks.Case, align: int, sm_count: int, full_first_on: None,
                            monkeypatch: pytest.MonkeyPatch) -> None:
        """Output, LSE and tile counts with the full KV tiles visited first (from the product rule's
        aligned start), on the SM count's persistent CTAs and on 6 (many items per CTA, so the
        next item's first tile follows a masked one across the pipelined boundary)."""
        monkeypatch.setattr(interface, "_sm_count", lambda device: sm_count)
        check_counted_run(case, lambda cfg: cfg.kv_start_align == align and cfg.persistent_ctas == sm_count)

    @pytest.mark.parametrize("case", replay_cases, ids=[c.id for c in replay_cases])
    def test_auto_picks_the_kernel(case: ks.Case, compile_errors: dict) -> None:
        args = prepare(case, compile_errors)
        assert backends.choose(args).backend.name == name

    def op(args, backend: str = name):
        p = args.params
        return torch.ops.gna_cute.attention(
            args.q, args.k, args.v, list(p.kernel_size), list(p.stride), list(p.dilation), list(p.is_causal),
            args.scale, None, None, backend, None, None,
        )  # fmt: skip

    @pytest.mark.parametrize("case", replay_cases, ids=[c.id for c in replay_cases])
    def test_repeated_signature_runs_on_its_own_tensors(case: ks.Case, compile_errors: dict) -> None:
        """``gna_cute.attention`` twice with one signature (the second call skips the checks and
        the choice, ``call_cache``): each call's output is the kernel's on that call's tensors."""
        from gna_cute import api, call_cache

        args = prepare(case, compile_errors)
        fresh = dataclasses.replace(case, seed=case.seed + 1).args()
        p = args.params

        def call(a):
            return api.attention(a.q, a.k, a.v, p.kernel_size, p.stride, p.dilation, p.is_causal, a.scale,
                                 return_lse=True, backend=name, q_tile_shape=a.q_tile_shape,
                                 kv_tile_shape=a.kv_tile_shape)  # fmt: skip

        call_cache.clear()
        call(args)
        assert len(call_cache._ENTRIES) == 1
        for a in (fresh, args):
            out, lse = call(a)
            want_out, want_lse = kernel["forward"](a)
            torch.testing.assert_close(out, want_out, rtol=0, atol=0)
            torch.testing.assert_close(lse, want_lse, rtol=0, atol=0)
        assert len(call_cache._ENTRIES) == 1

    @pytest.mark.parametrize("case", replay_cases, ids=[c.id for c in replay_cases])
    def test_cuda_graph_capture_and_replay(case: ks.Case, compile_errors: dict) -> None:
        args = prepare(case, compile_errors)
        op(args)  # compile / load outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out, lse = op(args)
        for seed in (1, 2):
            fresh = dataclasses.replace(case, seed=seed).args()
            for static, new in ((args.q, fresh.q), (args.k, fresh.k), (args.v, fresh.v)):
                static.copy_(new)
            graph.replay()
            eager_out, eager_lse = op(fresh)
            torch.cuda.synchronize()
            torch.testing.assert_close(out, eager_out, rtol=0, atol=0)
            torch.testing.assert_close(lse, eager_lse, rtol=0, atol=0)

    @pytest.mark.parametrize("case", replay_cases, ids=[c.id for c in replay_cases])
    def test_torch_compile_fullgraph(case: ks.Case, compile_errors: dict) -> None:
        args = prepare(case, compile_errors)
        p = args.params

        @torch.compile(fullgraph=True)
        def f(q, k, v):
            out, lse = torch.ops.gna_cute.attention(
                q, k, v, list(p.kernel_size), list(p.stride), list(p.dilation), list(p.is_causal),
                args.scale, None, None, name, None, None,
            )  # fmt: skip
            return out * 2, lse

        out, lse = f(args.q, args.k, args.v)
        eager_out, eager_lse = op(args)
        torch.testing.assert_close(out, eager_out * 2, rtol=0, atol=0)
        torch.testing.assert_close(lse, eager_lse, rtol=0, atol=0)

    return {
        "compile_errors": compile_errors,
        "test_matches_reference": test_matches_reference,
        "test_headline_shapes": test_headline_shapes,
        "test_tile_counts_match_simulator": test_tile_counts_match_simulator,
        "test_auto_picks_the_kernel": test_auto_picks_the_kernel,
        "test_persistent_ctas_many_items": test_persistent_ctas_many_items,
        "tails_on": tails_on,
        "test_tail_clusters": test_tail_clusters,
        "exp2_emulation_on": exp2_emulation_on,
        "test_exp2_emulation": test_exp2_emulation,
        "full_first_on": full_first_on,
        "test_kv_start_align": test_kv_start_align,
        "test_repeated_signature_runs_on_its_own_tensors": test_repeated_signature_runs_on_its_own_tensors,
        "test_cuda_graph_capture_and_replay": test_cuda_graph_capture_and_replay,
        "test_torch_compile_fullgraph": test_torch_compile_fullgraph,
    }
