"""Runs problems x providers on one GPU and turns timings into table rows.

Per problem: one set of random inputs shared by every provider; the reference output (first
``err_heads`` heads) computed once, outside timing; then each provider is set up (untimed), called
once (compilation, also untimed: reported as ``first_call_s``) and checked against the reference;
then all of them are timed together in interleaved rounds (:func:`timing.time_interleaved`).  The
derived columns (speedups, useful TFLOP/s, fraction of the simulator's tile bound) are filled once
every provider of the problem has run.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable

import torch

from . import sustained, timing
from .problems import Problem
from .providers import Prepared, Refused, reference_output


@dataclass(frozen=True)
class Settings:
    runs: int = 30
    rounds: int = 10  # interleaved timing rounds per problem (each provider's runs split over them)
    warmup: int = 3
    use_graph: bool = False
    flush_l2: bool = True
    err_heads: int = 1  # heads compared with the reference (the reference is slow on big rows)
    seed: int = 0
    sustained_s: float = 0.0  # > 0: each provider also called back to back this long (:mod:`sustained`)

    def __post_init__(self) -> None:
        timing.check_counts(self.runs, self.warmup, self.rounds)  # refused before anything runs
        if not 0.0 <= self.sustained_s <= 60.0:
            raise ValueError(f"sustained_s={self.sustained_s} must be between 0 and 60 seconds")

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _inputs(problem: Problem, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator(device="cuda").manual_seed(seed)
    shape = (problem.batch, *problem.spatial_shape, problem.heads, problem.head_dim)
    dtype = getattr(torch, problem.dtype)
    return tuple(torch.randn(shape, generator=gen, device="cuda", dtype=dtype) for _ in range(3))


def _max_error(out: torch.Tensor, ref: torch.Tensor, heads: int, region: tuple[slice, ...] | None) -> float:
    o = out[..., :heads, :].float()
    if region is not None:
        index = (slice(None), *region)
        o, ref = o[index], ref[index]
    return float((o - ref).abs().max())


def run_problem(problem: Problem, providers: list[Any], settings: Settings,
                log: Callable[[str], None], timing_cache: dict) -> list[dict]:
    """Rows (one per provider, ran or not) for one problem."""
    rows: list[dict] = []
    q, k, v = _inputs(problem, settings.seed)
    scale = problem.head_dim ** -0.5
    h = min(settings.err_heads, problem.heads)
    t0 = time.perf_counter()
    ref = reference_output(problem, *(t[..., :h, :].contiguous() for t in (q, k, v)), scale).float()
    torch.cuda.synchronize()
    log(f"  reference ({h} head{'s' if h > 1 else ''}) {time.perf_counter() - t0:.1f} s")

    timed: list[tuple[dict, Any, Prepared, tuple | None]] = []  # (row, provider, prepared, cache key)
    for prov in providers:
        row: dict = {"problem": problem.name, "provider": prov.name, "role": prov.role}
        rows.append(row)
        reason = prov.available() or prov.can_run(problem)
        if reason:
            row.update(status="skipped", reason=reason)
            continue
        key = (prov.name, _timing_key(problem)) if prov.role == "baseline" else None
        try:
            if key in timing_cache and not problem.is_dense:
                row.update(status="ok", info={"timing": "shared with an earlier row of the same sizes"},
                           **timing_cache[key])
                log(f"  {prov.name:12s} {row['ms']:9.3f} ms (cached)")
                continue
            t0 = time.perf_counter()
            prep = prov.setup(problem, q, k, v, scale)
            prep.fn()
            torch.cuda.synchronize()
            row["first_call_s"] = round(time.perf_counter() - t0, 2)
            if prep.compare:
                row["max_err"] = _max_error(prep.output(), ref, h, prep.error_region)
                if prep.error_region is not None:
                    prep.info["error_over"] = "queries away from the borders"
            timed.append((row, prov, prep, key))
        except Exception as e:  # one provider's failure must not lose the other rows
            _failed(row, prov, e, log)

    window = [time.time()]
    results = timing.time_interleaved([p.fn for _, _, p, _ in timed], settings.runs, settings.rounds,
                                      settings.warmup, settings.use_graph, settings.flush_l2)
    window.append(time.time())  # wall clock: matched with nvidia-smi's samples (clocks.annotate)
    for (row, prov, prep, key), tm in zip(timed, results):
        if isinstance(tm, Exception):
            _failed(row, prov, tm, log)
            continue
        measured = {"ms": tm.median_ms, "q1_ms": tm.q1_ms, "q3_ms": tm.q3_ms, "runs": tm.runs,
                    "method": tm.method, "host_us": tm.host_us, "timed_window": window}
        if key is not None:
            timing_cache[key] = measured
        row.update(status="ok", info=prep.info, **measured)
        log(f"  {prov.name:12s} {tm.median_ms:9.3f} ms  (IQR {100 * tm.spread:.1f} %, host "
            f"{tm.host_us:.0f} us, first call {row['first_call_s']} s)")
    if settings.sustained_s > 0:
        _sustained([(row, prep) for row, _, prep, _ in timed if row.get("status") == "ok"], settings.sustained_s)
    del timed, results, q, k, v, ref
    torch.cuda.empty_cache()
    _derive(problem, rows)
    rows.extend(_sim_rows(problem, rows))
    return rows


def _sustained(ran: list[tuple[dict, Prepared]], seconds: float) -> None:
    """Back-to-back loops of the timed providers (:mod:`sustained`); their clocks and power are added
    from nvidia-smi's samples afterwards (``clocks.annotate``).  A provider whose host path takes
    more than half its call is left out: its loop would time the host."""
    loopable = []
    for row, prep in ran:
        if (row["host_us"] or 0.0) * 1e-3 > 0.5 * row["ms"]:
            row["info"] = {**(row.get("info") or {}), "sustained": f"not run (host {row['host_us']:.0f} us per call)"}
        else:
            loopable.append((row, prep))
    if not loopable:
        return
    loops = sustained.run([p.fn for _, p in loopable], [r["ms"] for r, _ in loopable], seconds, torch.cuda.synchronize)
    for (row, _), lp in zip(loopable, loops):
        row["sustained"] = [x.as_dict() for x in lp]


def _failed(row: dict, prov: Any, e: Exception, log: Callable[[str], None]) -> None:
    """A provider's row after an exception: skipped when it refused the problem, else failed."""
    if isinstance(e, Refused):
        row.update(status="skipped", reason=str(e))
        log(f"  {prov.name:12s} skipped: {e}")
        return
    row.update(status="failed", reason=f"{type(e).__name__}: {str(e)[:300]}")
    log(f"  {prov.name:12s} FAILED: {type(e).__name__}: {str(e)[:300]}")
    log("".join(traceback.format_exception(type(e), e, e.__traceback__, limit=4)))


def _timing_key(problem: Problem) -> tuple:
    """Dense attention costs the same for every window: share its timing across such rows."""
    return (problem.batch, problem.tokens, problem.heads, problem.head_dim, problem.dtype)


def _derive(problem: Problem, rows: list[dict]) -> None:
    ok = {r["provider"]: r for r in rows if r.get("status") == "ok"}
    cudnn = ok.get("cudnn-dense", {}).get("ms")
    peer_roles = ("dense-peer",) if problem.is_dense else ("peer",)
    peers = [r["ms"] for r in ok.values() if r["role"] in peer_roles]
    best_peer = min(peers) if peers else None
    bound = problem.kernel_stats.tile_bound
    for r in ok.values():
        ms = r["ms"]
        r["useful_tflops"] = problem.useful_flops / (ms * 1e-3) / 1e12
        if cudnn:
            r["speedup_cudnn"] = cudnn / ms
            r["pct_tile_bound"] = 100.0 * (cudnn / ms) / bound
        if best_peer:
            r["speedup_peer"] = best_peer / ms
        r["peer_of_ratio"] = r["role"] in peer_roles  # a candidate best peer (also for the looped ratio)


def _sim_rows(problem: Problem, rows: list[dict]) -> list[dict]:
    """The simulator's FLOP-wise and tile-wise bounds and its predicted time, as timed-like rows.

    Times are relative to this run's cuDNN dense time: FLOP bound = cuDNN / (dense / attended
    pairs); tile bound = cuDNN / (dense / visited tile pairs); predicted = the simulator's time
    model calibrated on that same dense time with our kernel's tiling.
    """
    cudnn = next((r["ms"] for r in rows if r["provider"] == "cudnn-dense" and r.get("status") == "ok"), None)
    if cudnn is None or problem.is_dense:
        return []
    from gna_cute import sim
    from gna_cute.sim import timemodel

    st = problem.kernel_stats
    q_tile, kv_tile = problem.tile_shapes()
    model = timemodel.calibrate(cudnn, problem.sim_problem(), sim.Tiling(q_tile, kv_tile))
    predicted = model.predict_ms(problem.sim_problem(), st)
    out = []
    for name, ms in (("sim-flop-bound", cudnn / st.flop_bound), ("sim-tile-bound", cudnn / st.tile_bound),
                     ("sim-predicted", predicted)):
        out.append({"problem": problem.name, "provider": name, "role": "simulator", "status": "ok",
                    "ms": ms, "speedup_cudnn": cudnn / ms,
                    "useful_tflops": problem.useful_flops / (ms * 1e-3) / 1e12,
                    "pct_tile_bound": 100.0 * (cudnn / ms) / st.tile_bound,
                    "info": {"from": "simulator x this run's cuDNN time",
                             "mask_factor": model.mask_factor} if name == "sim-predicted" else {}})
    return out


def run(problems: list[Problem], providers: list[Any], settings: Settings,
        log: Callable[[str], None] = print, after_problem: Callable[[list[dict]], None] | None = None,
        max_seconds: float | None = None) -> list[dict]:
    """All rows of all problems, logging progress.

    ``after_problem(rows so far)`` lets the caller save partial results (a run killed by a time
    limit keeps what it measured); past ``max_seconds`` the remaining problems are skipped.
    """
    timing_cache: dict = {}
    rows: list[dict] = []
    t_start = time.perf_counter()
    for i, problem in enumerate(problems, 1):
        elapsed = time.perf_counter() - t_start
        if max_seconds is not None and elapsed > max_seconds:
            log(f"[{i}/{len(problems)}] {problem.name}: skipped (time budget {max_seconds:.0f} s spent)")
            rows += [{"problem": problem.name, "provider": p.name, "role": p.role, "status": "skipped",
                      "reason": "time budget of the run spent"} for p in providers]
            continue
        log(f"[{i}/{len(problems)}] {problem.name}  ({elapsed:.0f} s elapsed)")
        rows.extend(run_problem(problem, providers, settings, log, timing_cache))
        _derive_own_dense(problems, rows)
        if after_problem is not None:
            after_problem(rows)
    return rows


def _derive_own_dense(problems: list[Problem], rows: list[dict]) -> None:
    """``x own dense``: our dense run of the same sizes (if in this run) / our time (issue 7)."""
    dense_ms = {}
    for p in problems:
        if p.is_dense:
            for r in rows:
                if r["problem"] == p.name and r["provider"] == "gna_cute" and r.get("status") == "ok":
                    dense_ms[_timing_key(p)] = r["ms"]
    for p in problems:
        ms = dense_ms.get(_timing_key(p))
        if ms is None or p.is_dense:
            continue
        for r in rows:
            if r["problem"] == p.name and r["provider"] == "gna_cute" and r.get("status") == "ok":
                r["speedup_own_dense"] = ms / r["ms"]
                r["pct_tile_bound_own_dense"] = 100.0 * (ms / r["ms"]) / p.kernel_stats.tile_bound
