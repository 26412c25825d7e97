"""The GPU's SM clock and power-cap state while the bench times, sampled with ``nvidia-smi``.

Why: under sustained load the lent H100 sits at its software power cap and its SM clock wanders
between ~1.1 and ~1.6 GHz (1.98 GHz idle), which moves every time by 10-25 % (docs/bench.md,
"Interleaved rounds").  A result that says at which clocks it was taken can be read for what it is.
A background ``nvidia-smi -lms`` writes one line per sample; the lines are parsed when the log
stops (``nvidia-smi`` buffers its output when it is not writing to a terminal).  Where there is no
``nvidia-smi`` the log records nothing and the rows say nothing.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

QUERY = "timestamp,clocks.sm,power.draw,clocks_event_reasons.active"
#: ``clocks_event_reasons.active`` bits that mean "held down by power": software power cap, and the
#: hardware power brake.
POWER_REASONS = 0x4 | 0x80


@dataclass(frozen=True)
class Sample:
    t: float  # seconds since the epoch (nvidia-smi's local time stamp)
    sm_mhz: float
    power_w: float | None
    reasons: int


def parse_line(line: str) -> Sample | None:
    """One ``--format=csv,noheader,nounits`` line of :data:`QUERY`, or None when it is not one."""
    parts = [p.strip() for p in line.split(",")]
    if len(parts) != 4:
        return None
    try:
        t = datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()
        sm = float(parts[1])
        power = None if "N/A" in parts[2] else float(parts[2])
        reasons = int(parts[3], 16)
    except ValueError:
        return None
    return Sample(t, sm, power, reasons)


def summarize(samples: list[Sample], t0: float, t1: float) -> dict | None:
    """Clock statistics of the samples taken in ``[t0, t1]`` (None if there are none)."""
    inside = [s for s in samples if t0 <= s.t <= t1]
    if not inside:
        return None
    clocks = [s.sm_mhz for s in inside]
    capped = sum(1 for s in inside if s.reasons & POWER_REASONS)
    return {"sm_mhz_median": statistics.median(clocks), "sm_mhz_min": min(clocks), "sm_mhz_max": max(clocks),
            "power_capped_pct": round(100.0 * capped / len(inside), 1), "samples": len(inside)}


def describe(stats: dict) -> str:
    """A table note: ``1520 MHz (1125-1980), power cap 95 %``."""
    return (f"{stats['sm_mhz_median']:.0f} MHz ({stats['sm_mhz_min']:.0f}-{stats['sm_mhz_max']:.0f}), "
            f"power cap {stats['power_capped_pct']:.0f} %")


def annotate(rows: list[dict], samples: list[Sample]) -> None:
    """Add the clocks of each timed row's window (``timed_window``, set by the runner), what its
    back-to-back loops (``sustained``, when asked for) ran at, and the looped ratio to the best peer."""
    from .sustained import derive_ratios, describe as describe_loops, summarize as summarize_loops

    for row in rows:
        window = row.get("timed_window")
        stats = summarize(samples, *window) if window else None
        if stats is not None:
            row["clock"] = stats
            row["info"] = {**(row.get("info") or {}), "sm clock": describe(stats)}
        if row.get("sustained"):
            loops = summarize_loops(row["sustained"], samples)
            row["sustained_summary"] = loops
            row["info"] = {**(row.get("info") or {}), "sustained": describe_loops(loops)}
    derive_ratios(rows)


def nvidia_smi_id(index: int) -> str:
    """``nvidia-smi -i`` for torch's CUDA device ``index``: the index itself where it is the only
    visible GPU and nothing remaps it, else the device's UUID (CUDA and nvidia-smi may number GPUs
    differently)."""
    import torch

    if torch.cuda.device_count() == 1 and not os.environ.get("CUDA_VISIBLE_DEVICES"):
        return str(index)
    try:
        uuid = str(getattr(torch.cuda.get_device_properties(index), "uuid", "") or "")
    except (RuntimeError, AssertionError):
        uuid = ""
    if not uuid:
        return str(index)
    return uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"


class ClockLog:
    """``with ClockLog(device) as log: ...``; then ``log.samples``.  ``device``: what
    ``nvidia-smi -i`` takes (an index or a ``GPU-...`` UUID)."""

    def __init__(self, device: str, period_ms: int = 50, command: str = "nvidia-smi") -> None:
        self.device, self.period_ms, self.command = device, period_ms, command
        self.samples: list[Sample] = []
        self._proc: subprocess.Popen | None = None
        self._out: Path | None = None
        self._file = None

    def __enter__(self) -> "ClockLog":
        exe = shutil.which(self.command)
        if exe is not None:
            self._out = Path(tempfile.mkstemp(prefix="gna_cute_clocks_", suffix=".csv")[1])
            self._file = self._out.open("w")
            try:
                self._proc = subprocess.Popen(
                    [exe, f"--query-gpu={QUERY}", "--format=csv,noheader,nounits", "-lms", str(self.period_ms),
                     "-i", self.device],
                    stdout=self._file, stderr=subprocess.DEVNULL,
                )
            except OSError:  # a sampler that cannot start leaves the results without clocks
                self._proc = None
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> list[Sample]:
        """Stop sampling (idempotent) and parse what was written."""
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._out is not None:
            lines = self._out.read_text().splitlines()
            self._out.unlink(missing_ok=True)
            self._out = None
            self.samples = [s for s in map(parse_line, lines) if s is not None]
        return self.samples
