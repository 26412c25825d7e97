"""The one timing helper every provider is measured with.

Why it looks like this:

* CUDA events bracket each timed call, so the number is GPU time.
* Before every timed call the GPU is parked in a ``torch.cuda._sleep`` spin longer than the host
  needs to enqueue the L2 flush, the start event and the call.  The call therefore starts the
  instant the flush ends: the queue is kept full, so a slow Python launch path (FA4 spends
  0.2-0.4 ms of host time per call) does not leak into a ~60 us kernel time.
* The L2 is flushed between iterations (a write over a buffer larger than L2), so no provider
  gets its inputs from the previous iteration's cache.
* Median and quartiles of >= 20 timed calls; optionally each call is a CUDA-graph replay.
* The providers of one problem are timed in interleaved rounds (:func:`time_interleaved`): the
  H100 hits its power cap under sustained load and its clocks wander, so back-to-back blocks would
  hand each provider a different clock.
* Host overhead per call (Python + launch, no GPU wait) is measured on its own.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch

MIN_RUNS = 20


def check_counts(runs: int, warmup: int, rounds: int = 1) -> None:
    """ValueError naming the count that cannot be timed: fewer than :data:`MIN_RUNS` calls, no
    warm-up, or rounds of fewer than two calls each."""
    if runs < MIN_RUNS:
        raise ValueError(f"runs={runs} must be >= {MIN_RUNS}")
    if not 1 <= rounds <= runs // 2:
        raise ValueError(f"rounds={rounds} must be between 1 and runs // 2 = {runs // 2}")
    if warmup < 1:
        raise ValueError(f"warmup={warmup} must be >= 1")


@dataclass(frozen=True)
class Timing:
    """GPU time of one provider on one problem, in milliseconds."""

    median_ms: float
    q1_ms: float
    q3_ms: float
    min_ms: float
    max_ms: float
    runs: int
    method: str  # "graph", "events", or "events (graph capture failed: ...)"
    host_us: float | None  # host time per call (launch path), measured separately

    @property
    def spread(self) -> float:
        """Interquartile range relative to the median."""
        return (self.q3_ms - self.q1_ms) / self.median_ms if self.median_ms > 0 else 0.0

    def as_dict(self) -> dict:
        return asdict(self)


class _Env:
    """Per-device helpers: an L2-sized flush buffer and the spin-clock calibration."""

    def __init__(self, device: torch.device) -> None:
        props = torch.cuda.get_device_properties(device)
        l2 = getattr(props, "L2_cache_size", 64 << 20) or (64 << 20)
        self.flush_buf = torch.empty(2 * l2 // 4, dtype=torch.int32, device=device)
        self.cycles_per_ms = self._calibrate()

    def flush(self) -> None:
        self.flush_buf.fill_(0)

    @staticmethod
    def _calibrate() -> float:
        cycles = 10_000_000
        torch.cuda._sleep(cycles)  # warm-up
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        torch.cuda._sleep(cycles)
        end.record()
        end.synchronize()
        return cycles / max(start.elapsed_time(end), 1e-3)

    def park(self, ms: float) -> None:
        """Keep the GPU busy for about ``ms`` so the host can enqueue ahead of it."""
        torch.cuda._sleep(int(self.cycles_per_ms * ms))


_ENVS: dict[int, _Env] = {}


def _env() -> _Env:
    index = torch.cuda.current_device()
    if index not in _ENVS:
        _ENVS[index] = _Env(torch.device("cuda", index))
    return _ENVS[index]


def host_overhead_us(fn: Callable[[], object], calls: int = 20) -> float:
    """Host wall time per call while the GPU is busy (so no call waits on the device)."""
    env = _env()
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    one = time.perf_counter() - t0
    env.park(1e3 * one * calls * 2 + 5.0)  # outlast every launch below
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    per_call = (time.perf_counter() - t0) / calls
    torch.cuda.synchronize()
    return per_call * 1e6


def _one_call_ms(fn: Callable[[], object]) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def capture_graph(fn: Callable[[], object]) -> torch.cuda.CUDAGraph:
    """Capture ``fn`` (already warmed up) into a CUDA graph; raises if it cannot be captured."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()  # warm-up on the capture stream, as torch recommends
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    torch.cuda.synchronize()
    return graph


@dataclass
class _Subject:
    """One provider's call while it is being timed: what is replayed, how long to park ahead of
    it, and the GPU times collected so far."""

    call: Callable[[], object]
    method: str
    host_us: float | None
    park_ms: float
    runs: int
    samples: list[float]


def _prepare(fn: Callable[[], object], runs: int, warmup: int, use_graph: bool, measure_host: bool) -> _Subject:
    """Warm ``fn`` up, measure its host time, capture it into a graph if asked; nothing timed yet."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    # Long ops (tens of ms): the minimum number of runs and fewer host-overhead calls, since
    # each of those also runs on the GPU.
    one_ms = _one_call_ms(fn)
    if one_ms > 20.0:
        runs = MIN_RUNS
    calls = max(3, min(20, int(50.0 / max(one_ms, 1e-3))))
    host_us = host_overhead_us(fn, calls) if measure_host else None

    call, method = fn, "events"
    if use_graph:
        try:
            graph = capture_graph(fn)
            call, method = graph.replay, "graph"
        except RuntimeError as e:  # e.g. host<->device copies inside the call
            torch.cuda.synchronize()
            method = f"events (graph capture failed: {str(e)[:80]})"

    # Park long enough to hide the host work of one iteration (flush + events + launch).
    call_host_us = host_us if (measure_host and call is fn) else host_overhead_us(call, calls)
    park_ms = max(0.2, 3e-3 * call_host_us + 0.1)
    return _Subject(call, method, host_us, park_ms, runs, [])


def _sample(subject: _Subject, n: int, flush_l2: bool) -> None:
    """``n`` more timed calls of ``subject``, each parked behind and (``flush_l2``) after a flush."""
    env = _env()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    for i in range(n):
        env.park(subject.park_ms)
        if flush_l2:
            env.flush()
        starts[i].record()
        subject.call()
        ends[i].record()
    torch.cuda.synchronize()
    subject.samples.extend(s.elapsed_time(e) for s, e in zip(starts, ends))


def _summary(subject: _Subject) -> Timing:
    ms = sorted(subject.samples)
    q = statistics.quantiles(ms, n=4)
    return Timing(statistics.median(ms), q[0], q[2], ms[0], ms[-1], len(ms), subject.method, subject.host_us)


def time_fn(
    fn: Callable[[], object],
    runs: int = 30,
    warmup: int = 3,
    use_graph: bool = False,
    flush_l2: bool = True,
    measure_host: bool = True,
) -> Timing:
    """Median GPU time of ``fn()`` over ``runs`` (>= 20) calls; see the module docstring."""
    check_counts(runs, warmup)
    subject = _prepare(fn, runs, warmup, use_graph, measure_host)
    _sample(subject, subject.runs, flush_l2)
    return _summary(subject)


def time_interleaved(
    fns: list[Callable[[], object]],
    runs: int = 30,
    rounds: int = 10,
    warmup: int = 3,
    use_graph: bool = False,
    flush_l2: bool = True,
) -> list[Timing | Exception]:
    """Like :func:`time_fn` for several providers of one problem, their ``runs`` calls spread over
    ``rounds`` alternating rounds (the order reversed every other round).

    Why: under sustained load the H100 runs into its power cap and its clocks wander by 10-25 %
    over a second or two; timed back to back, whichever provider runs in a slow stretch loses by
    that much.  Interleaved rounds give every provider a share of the same stretches, and every
    provider is parked equally long ahead of each call (the longest park any of them needs).  A
    provider that fails is returned as its exception; the others go on.
    """
    check_counts(runs, warmup, rounds)
    subjects: list[_Subject | Exception] = []
    for fn in fns:
        try:
            subjects.append(_prepare(fn, runs, warmup, use_graph, measure_host=True))
        except Exception as e:  # noqa: BLE001 - reported in that provider's row
            subjects.append(e)
    # One park for all: the idle spin ahead of a call lets the power-capped clock recover, so a
    # provider parked longer (a slower host path) would run its calls on a faster clock.
    live = [s for s in subjects if not isinstance(s, Exception)]
    park_ms = max((s.park_ms for s in live), default=0.0)
    for s in live:
        s.park_ms = park_ms
    for r in range(rounds):
        order = range(len(subjects)) if r % 2 == 0 else reversed(range(len(subjects)))
        for i in order:
            subject = subjects[i]
            if isinstance(subject, Exception):
                continue
            n = -(-subject.runs // rounds)
            try:
                _sample(subject, n, flush_l2)
            except Exception as e:  # noqa: BLE001
                subjects[i] = e
    return [x if isinstance(x, Exception) else _summary(x) for x in subjects]
