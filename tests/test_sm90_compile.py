"""CPU, in CI: the Hopper kernel compiles for sm_90a with no GPU, and its machine code is a Hopper FMHA's.

Each compile runs in a fresh process because the CuTe DSL reads ``CUTE_DSL_ARCH`` and
``CUTE_DSL_KEEP`` once, at first import.  One process compiles one configuration per rank through
the real host layer (``interface.compiled_kernel``, placeholder tensors) with SASS dumps on; the
test then reads the SASS for warpgroup MMA (``HGMMA``) and TMA loads (``UTMALDG``).  A second
process, same disk cache, must load all three without compiling (the persistent compile cache).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gna_cute.kernels import config
from gna_cute.kernels.config import FwdConfig

pytest.importorskip("cutlass")


def _cfg(dtype: str, head_dim: int, kernel_size, stride, dilation, is_causal) -> FwdConfig:
    rank = len(kernel_size)
    q_tile, kv_tile = config.default_tile_shapes(90, rank, head_dim)
    return FwdConfig(
        arch=90,
        dtype=dtype,
        head_dim=head_dim,
        head_dim_v=head_dim,
        q_tile_shape=tuple(q_tile),
        kv_tile_shape=tuple(kv_tile),
        kernel_size=tuple(kernel_size),
        stride=tuple(stride),
        dilation=tuple(dilation),
        is_causal=tuple(is_causal),
    )


# One per rank, between them: both dtypes, two head dims, stride > 1, dilation > 1, causal.
CONFIGS = [
    _cfg("float16", 128, (64,), (1,), (1,), (True,)),
    _cfg("bfloat16", 64, (8, 9), (2, 3), (1, 2), (False, False)),
    _cfg("float16", 128, (3, 4, 5), (1, 2, 1), (1, 1, 2), (True, False, False)),
]

# Child process: compile (or load) every config given as JSON, report new SASS files and stats.
_CHILD = r"""
import json, sys
from pathlib import Path
from gna_cute.kernels import interface
from gna_cute.kernels.config import FwdConfig

dump = Path(sys.argv[2]) if len(sys.argv) > 2 else None
report = []
for spec in json.loads(sys.argv[1]):
    cfg = FwdConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()})
    before = set(dump.glob("*.sass")) if dump else set()
    interface.compiled_kernel(cfg)
    after = set(dump.glob("*.sass")) if dump else set()
    report.append(sorted(str(p) for p in after - before))
stats = interface.CACHE.stats
print("REPORT" + json.dumps({"sass": report, "compiles": stats.compiles, "disk_loads": stats.disk_loads,
                             "export_error": stats.last_export_error[-2000:]}))
"""


def _run_child(configs: list[FwdConfig], env: dict[str, str], dump: Path | None) -> dict:
    specs = json.dumps([dataclasses.asdict(c) for c in configs])
    argv = [sys.executable, "-c", _CHILD, specs] + ([str(dump)] if dump else [])
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{proc.stderr[-6000:]}"
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("REPORT")][-1]
    return json.loads(line[len("REPORT") :])


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> tuple[dict, dict[str, str]]:
    """Compile CONFIGS once for sm_90a with SASS dumps; returns the child's report and its env."""
    cache = tmp_path_factory.mktemp("gna_cache")
    dump = tmp_path_factory.mktemp("dsl_dump")
    env = dict(os.environ)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env.update(GNA_CUTE_CACHE_DIR=str(cache), GNA_CUTE_DISK_CACHE="1", CUTE_DSL_ARCH="sm_90a")
    dump_env = dict(env, CUTE_DSL_KEEP="ptx,cubin,sass", CUTE_DSL_DUMP_DIR=str(dump))
    return _run_child(CONFIGS, dump_env, dump), env


@pytest.mark.parametrize("index", range(len(CONFIGS)), ids=[f"{c.rank}d" for c in CONFIGS])
def test_sass_has_hgmma_and_tma(compiled, index: int) -> None:
    report, _ = compiled
    assert report["compiles"] == len(CONFIGS)
    files = report["sass"][index]
    assert files, f"no SASS dumped for {CONFIGS[index]}"
    sass = "\n".join(Path(f).read_text() for f in files)
    assert "HGMMA" in sass, f"no warpgroup MMA in the SASS of {CONFIGS[index]}"
    assert "UTMALDG" in sass, f"no TMA load in the SASS of {CONFIGS[index]}"


def test_new_process_loads_from_disk(compiled) -> None:
    """Same sources, same DSL, same cache directory: a fresh process compiles nothing."""
    first, env = compiled
    assert not first["export_error"], f"the compiling process could not export: {first['export_error']}"
    report = _run_child(CONFIGS, env, None)
    assert (report["compiles"], report["disk_loads"]) == (0, len(CONFIGS))
