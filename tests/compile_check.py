"""Compile kernel configurations for a given architecture in a fresh process (no GPU needed).

Why a subprocess: the CuTe DSL reads ``CUTE_DSL_ARCH`` and ``CUTE_DSL_KEEP`` once, at its first
import, so each target architecture (and each SASS-dumping run) needs its own process.  The child
goes through the real host layer (``interface.compiled_kernel``: placeholder tensors, the compile
cache) and reports, per configuration, the SASS files it produced, or the error it hit.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from gna_cute.kernels.config import FwdConfig

_CHILD = r"""
import json, shutil, sys
from pathlib import Path
from gna_cute.kernels import interface
from gna_cute.kernels.config import FwdConfig

dump = Path(sys.argv[2]) if len(sys.argv) > 2 else None
sass, errors = [], []
for i, spec in enumerate(json.loads(sys.argv[1])):
    cfg = FwdConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()})
    # (name, mtime): a config whose kernel name repeats an earlier one's rewrites that file
    before = {(p, p.stat().st_mtime_ns) for p in dump.glob("*.sass")} if dump else set()
    try:
        interface.compiled_kernel(cfg)
        errors.append("")
    except Exception as e:
        errors.append(f"{type(e).__name__}: {e}"[-3000:])
    after = {(p, p.stat().st_mtime_ns) for p in dump.glob("*.sass")} if dump else set()
    # copied aside at once: a later config with the same kernel name rewrites the dump file
    kept = dump / f"cfg{i}" if dump else None
    if kept:
        kept.mkdir(exist_ok=True)
    sass.append(sorted(str(shutil.copy(p, kept / p.name)) for p, _ in after - before))
stats = interface.CACHE.stats
print("REPORT" + json.dumps({"sass": sass, "errors": errors, "compiles": stats.compiles,
                             "disk_loads": stats.disk_loads, "export_error": stats.last_export_error[-2000:]}))
"""


def child_env(arch: str, cache_dir: Path, dump_dir: Path | None = None) -> dict[str, str]:
    """Environment of a compile child: target ``arch`` (e.g. ``sm_90a``), its own disk cache."""
    env = dict(os.environ, GNA_CUTE_CACHE_DIR=str(cache_dir), GNA_CUTE_DISK_CACHE="1", CUTE_DSL_ARCH=arch)
    if dump_dir is not None:
        env.update(CUTE_DSL_KEEP="ptx,cubin,sass", CUTE_DSL_DUMP_DIR=str(dump_dir))
    return env


def run_child(configs: list[FwdConfig], env: dict[str, str], dump: Path | None = None) -> dict:
    """Compile (or load) ``configs`` in a fresh process; its report (see ``_CHILD``)."""
    specs = json.dumps([dataclasses.asdict(c) for c in configs])
    argv = [sys.executable, "-c", _CHILD, specs] + ([str(dump)] if dump else [])
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{proc.stderr[-6000:]}"
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("REPORT")][-1]
    return json.loads(line[len("REPORT") :])


def sass_text(files: list[str]) -> str:
    return "\n".join(Path(f).read_text() for f in files)


_INSTRUCTION = re.compile(r"\s*/\*[0-9a-f]+\*/\s+([^;]*);")


def sass_instructions(sass: str) -> list[str]:
    """``sass``'s instructions in order (without their addresses)."""
    return [m.group(1).strip() for line in sass.splitlines() if (m := _INSTRUCTION.match(line))]


def sass_loops(sass: str) -> list[list[str]]:
    """The instruction lists of ``sass``'s loops: from a label to a branch back to it."""
    ins: list[str] = []
    labels: dict[str, int] = {}
    for line in sass.splitlines():
        if m := re.match(r"\s*(\.L_x_\d+):", line):
            labels[m.group(1)] = len(ins)
        elif m := _INSTRUCTION.match(line):
            ins.append(m.group(1).strip())
    loops = []
    for i, text in enumerate(ins):
        m = re.search(r"BRA\s.*?\((\.L_x_\d+)\)", text)
        if m and labels.get(m.group(1), i + 1) <= i:
            loops.append(ins[labels[m.group(1)] : i + 1])
    return loops


def opcode(instruction: str) -> str:
    """``instruction``'s opcode with its modifiers, without a predicate (``@!P0``)."""
    return re.sub(r"^@!?U?P\w+\s+", "", instruction).split()[0]
