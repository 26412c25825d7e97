"""Each provider called back to back for seconds: time, clock, power, cycles and energy per call.

Why: the timed rounds (:mod:`timing`) start every call from a short idle spin, and at the H100's
power cap the clock a call gets depends on what ran before it; the same two kernels' ratio moved
0.93-1.006x between processes on the 3D s=16 row (docs/bench.md).  Looped for seconds, a provider
settles at the cap.  Cycles per call (ms x SM MHz) then compare the kernels' work whatever the clock,
and joules per call (W x ms) what the cap charges for it: a kernel that moves fewer bytes gets a
faster clock at the same power (docs/sm90-kernel.md, seventeenth session).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from .clocks import Sample


@dataclass(frozen=True)
class Loop:
    """One provider's back-to-back calls in one round: how many, for how long, when (wall clock)."""

    calls: int
    seconds: float
    window: tuple[float, float]

    def as_dict(self) -> dict:
        return {"calls": self.calls, "seconds": self.seconds, "window": list(self.window)}


def loop(fn: Callable[[], object], seconds: float, sync: Callable[[], None], batch: int,
         settle: float = 0.5, clock: Callable[[], float] = time.time) -> Loop:
    """Call ``fn`` in batches of ``batch`` (synchronized after each) for ``settle`` seconds, then
    count the calls of the next ``seconds`` (at least one batch)."""
    start = clock()
    while clock() - start < settle:
        for _ in range(batch):
            fn()
        sync()
    t0, calls = clock(), 0
    while True:
        for _ in range(batch):
            fn()
        sync()
        calls += batch
        if clock() - t0 >= seconds:
            break
    t1 = clock()
    return Loop(calls, t1 - t0, (t0, t1))


def run(fns: list[Callable[[], object]], one_call_ms: list[float], seconds: float, sync: Callable[[], None],
        rounds: int = 2, **kw) -> list[list[Loop]]:
    """``rounds`` loops per provider, the order reversed every other round (as the timed rounds);
    batches of about 50 ms of calls."""
    loops: list[list[Loop]] = [[] for _ in fns]
    for r in range(rounds):
        order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))
        for i in order:
            batch = max(1, min(50, int(50.0 / max(one_call_ms[i], 1e-3))))
            loops[i].append(loop(fns[i], seconds, sync, batch, **kw))
    return loops


def summarize(loops: list[dict], samples: list[Sample]) -> dict:
    """A provider's loops (:meth:`Loop.as_dict`) with the clock samples taken inside them: ms per call
    over all rounds, the median SM clock and mean power of those samples, and what they give per
    call (None where there were no samples, e.g. no ``nvidia-smi``)."""
    calls = sum(x["calls"] for x in loops)
    ms = 1e3 * sum(x["seconds"] for x in loops) / calls
    inside = [s for s in samples if any(x["window"][0] <= s.t <= x["window"][1] for x in loops)]
    mhz = statistics.median(s.sm_mhz for s in inside) if inside else None
    watts = [s.power_w for s in inside if s.power_w is not None]
    w = statistics.fmean(watts) if watts else None
    return {"ms": ms, "calls": calls, "sm_mhz": mhz, "power_w": w, "samples": len(inside),
            "mcycles": None if mhz is None else ms * mhz / 1e3, "joules": None if w is None else w * ms / 1e3}


def describe(s: dict) -> str:
    """A table note: ``23.87 ms, 1346 MHz, 691 W: 32.1 Mcycles, 16.5 J per call``."""
    text = f"{s['ms']:.4g} ms"
    if s["sm_mhz"] is not None:
        text += f", {s['sm_mhz']:.0f} MHz"
    if s["power_w"] is not None:
        text += f", {s['power_w']:.0f} W"
    per_call = [f"{s[key]:.4g} {unit}" for key, unit in (("mcycles", "Mcycles"), ("joules", "J"))
                if s[key] is not None]
    return text + (f": {', '.join(per_call)} per call" if per_call else "")


def derive_ratios(rows: list[dict]) -> None:
    """Per problem, ``speedup_peer_sustained``: the best peer's looped ms over each looped row's
    (rows with a ``sustained_summary``; the peers are those ``runner`` marked ``peer_of_ratio``).

    Why: at the power cap the timed ratio of two kernels moves by several percent from process to
    process with the clock a call starts on; looped for seconds, both settle at the cap, and their
    ratio is the steady-state one a long training or sampling run sees.
    """
    by_problem: dict[str, list[dict]] = {}
    for r in rows:
        if r.get("sustained_summary"):
            by_problem.setdefault(r.get("problem", ""), []).append(r)
    for looped in by_problem.values():
        peers = [r["sustained_summary"]["ms"] for r in looped if r.get("peer_of_ratio")]
        if not peers:
            continue
        for r in looped:
            r["speedup_peer_sustained"] = min(peers) / r["sustained_summary"]["ms"]
