"""Benchmark results: one JSON file (the record) and a markdown rendering of it.

Every file carries the environment (device, driver, CUDA, torch, CuTe DSL, FlashAttention-4,
gna_cute commit) so a number is never separated from what produced it.  ``load`` reads back exactly
what ``save`` wrote (tested), so tables and plots can be re-made from committed JSON.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import os
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

SCHEMA = 1


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _run(cmd: list[str], cwd: str | None = None) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, cwd=cwd)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def source_fingerprint() -> str:
    """Hash of the project's Python sources (gna_cute, kernels, sim, bench): identifies the code
    that produced a result even where the copy has no git history (the lent GPU machine)."""
    import hashlib
    import importlib

    h = hashlib.sha256()
    for pkg in ("gna_cute", "gna_cute.kernels", "gna_cute.sim", "gna_cute.bench"):
        folder = Path(importlib.import_module(pkg).__file__).resolve().parent
        for src in sorted(folder.glob("*.py")):
            h.update(f"{pkg}/{src.name}:".encode())
            h.update(src.read_bytes())
    return h.hexdigest()[:16]


def collect_env() -> dict:
    """Versions and device of this process (no GPU needed: fields are None without one)."""
    import torch

    env = {
        "device": None,
        "capability": None,
        "driver": None,
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "cutlass_dsl": _version("nvidia-cutlass-dsl"),
        "flash_attn_4": _version("flash-attn-4"),
        "gna_cute": _version("gna_cute"),
        # GNA_CUTE_GIT_COMMIT: the commit a copy without (current) git history was made from
        "git_commit": os.environ.get("GNA_CUTE_GIT_COMMIT")
        or _run(["git", "rev-parse", "--short", "HEAD"], cwd=str(Path(__file__).parent)),
        "source_fingerprint": source_fingerprint(),
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        env["device"] = torch.cuda.get_device_name()
        env["capability"] = "sm%d%d" % torch.cuda.get_device_capability()
        drv = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
        env["driver"] = drv.splitlines()[0] if drv else None
    return env


@dataclass
class RunRecord:
    suite: str
    env: dict
    settings: dict
    problems: list[dict]
    rows: list[dict]
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    schema: int = SCHEMA

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=False, default=_jsonable)

    @classmethod
    def from_json(cls, text: str) -> "RunRecord":
        data = json.loads(text)
        if data.get("schema") != SCHEMA:
            raise ValueError(f"schema={data.get('schema')!r}: this reader knows schema {SCHEMA}")
        return cls(**data)


def _jsonable(value):
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot store {type(value).__name__} in the results JSON")


def device_dirname(env: dict) -> str:
    """``bench/results/<device-name>/``: lower-case, letters, digits and dashes."""
    name = (env.get("device") or "no-gpu").lower()
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


def save(record: RunRecord, out_dir: Path, stem: str, with_plots: bool = True) -> list[Path]:
    """Write ``<stem>.json`` and ``<stem>.md`` (and plots when asked and matplotlib is there)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.json", out_dir / f"{stem}.md"]
    paths[0].write_text(record.to_json() + "\n")
    paths[1].write_text(markdown(record))
    if not with_plots:
        return paths
    try:
        from . import plots

        paths += plots.save_plots(record, out_dir, stem)
    except ImportError:
        pass
    return paths


def load(path: Path) -> RunRecord:
    return RunRecord.from_json(Path(path).read_text())


# ------------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------------

ROW_HEADERS = ["problem", "provider", "ms", "x cuDNN", "x best peer", "useful TFLOP/s",
               "% tile bound", "x own dense (% bound)", "max err", "host us", "notes"]


def table(rows: list[list], headers: list[str]) -> str:
    """GitHub-markdown table (tabulate when installed; a plain fallback for bare GPU hosts)."""
    try:
        from tabulate import tabulate
    except ImportError:
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
        return "\n".join(lines)
    return tabulate(rows, headers, tablefmt="github")


def _f(v, fmt: str) -> str:
    return "" if v is None else format(v, fmt)


def _own_dense(row: dict) -> str:
    if row.get("speedup_own_dense") is None:
        return ""
    return f"{row['speedup_own_dense']:.2f} ({row['pct_tile_bound_own_dense']:.0f} %)"


def _peer(row: dict) -> str:
    """``x best peer``, with the ratio of the back-to-back loops (``--sustained``) where there is one."""
    text = _f(row.get("speedup_peer"), ".2f")
    if row.get("speedup_peer_sustained") is not None:
        text += f" ({row['speedup_peer_sustained']:.2f} looped)"
    return text


def _notes(row: dict) -> str:
    if row.get("status") != "ok":
        return f"{row.get('status')}: {row.get('reason', '')}"
    info = dict(row.get("info") or {})
    if "first_call_s" in row:
        info["first call s"] = row["first_call_s"]
    if row.get("method", "events") != "events":
        info["timed"] = "CUDA graph" if row["method"] == "graph" else row["method"]
    return "; ".join(f"{k}={v}" for k, v in info.items())


def row_table(record: RunRecord, include_skipped: bool = True) -> list[list[str]]:
    out = []
    for r in record.rows:
        if r.get("status") != "ok" and not include_skipped:
            continue
        ran = r.get("status") == "ok"
        out.append([
            r["problem"], r["provider"], _f(r.get("ms"), ".3f") if ran else "-",
            _f(r.get("speedup_cudnn"), ".2f"), _peer(r),
            _f(r.get("useful_tflops"), ".0f"), _f(r.get("pct_tile_bound"), ".0f"), _own_dense(r),
            _f(r.get("max_err"), ".1e"), _f(r.get("host_us"), ".0f"), _notes(r),
        ])
    return out


PROBLEM_HEADERS = ["problem", "tokens", "heads", "attended pairs", "FLOP bound", "tile bound (tiles)",
                   "partial tiles", "NATTEN published (x cuDNN, TFLOP/s)"]


def problem_table(record: RunRecord) -> list[list[str]]:
    out = []
    for p in record.problems:
        pub = p.get("published")
        q_tile, kv_tile = p["tiles"]
        tiles = "x".join(map(str, q_tile)) + "/" + "x".join(map(str, kv_tile))
        out.append([
            p["name"], p["tokens"], p["heads"], p["attended_pairs"], f"{p['flop_bound']:.2f}",
            f"{p['tile_bound']:.2f} ({tiles})", p["partial_tile_pairs"],
            f"{pub['speedup']}, {pub['tflops']:.0f}" if pub else "",
        ])
    return out


def _method(settings: dict) -> str:
    """How the times were taken, from the run's settings (a warm-L2 graph run must not read as cold)."""
    rounds = settings.get("rounds", 1)
    return ", ".join([
        "CUDA-graph replays of each call" if settings.get("use_graph") else "CUDA events",
        "GPU kept busy ahead of each call",
        "L2 flushed between calls" if settings.get("flush_l2", True) else "L2 left warm between calls",
    ]) + (f"; each problem's providers timed in {rounds} interleaved rounds" if rounds > 1
          else "; providers timed one after another")


def markdown(record: RunRecord) -> str:
    env = record.env
    lines = [
        f"# gna-cute bench: `{record.suite}`",
        "",
        f"Device **{env.get('device')}** ({env.get('capability')}), driver {env.get('driver')}, "
        f"CUDA {env.get('cuda')}, torch {env.get('torch')}, CuTe DSL {env.get('cutlass_dsl')}, "
        f"FlashAttention-4 {env.get('flash_attn_4')}, gna_cute {env.get('gna_cute')} "
        f"(commit {env.get('git_commit')}, sources {env.get('source_fingerprint')}), Python {env.get('python')}; {record.created}.",
        "",
        "Settings: " + ", ".join(f"{k}={v}" for k, v in record.settings.items()) + ".",
        "Times are GPU medians (" + _method(record.settings) + "); `host us` is the Python launch "
        "cost per call, measured separately. "
        "`x cuDNN` = cuDNN dense time / this time; `% tile bound` = `x cuDNN` / the simulator's "
        "tile-wise bound; `x own dense` = our dense run of the same sizes / this time (with its "
        "fraction of the tile bound); useful TFLOP/s count attended pairs only (pairs x 4 x D). "
        "Mask-based peers (fa4-gna, flex-gna) run on a tiled token order built once outside timing.",
        "",
        "## Problems",
        "",
        table(problem_table(record), PROBLEM_HEADERS),
        "",
    ]
    pubs = {p["published"]["source"] for p in record.problems if p.get("published")}
    lines += [f"NATTEN column source: {s}." for s in sorted(pubs)] + ([""] if pubs else [])
    lines += ["## Results", "", table(row_table(record), ROW_HEADERS), ""]
    return "\n".join(lines)
