"""CPU, in CI: the sm90 kernel's dev-only options still compile for sm_90a, and do what they say.

The persistent ``trace`` variant must compile and read the global timer, the plain kernel must not.
A fresh process with SASS dumps on compiles the ``_dev_check`` variants of a 1D problem with Q-tile
pairs.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from compile_check import child_env

pytest.importorskip("cutlass")

_CHILD = r"""
import json, shutil, sys
from pathlib import Path
from gna_cute.kernels._dev_check import VariantKey, _build_variant, make_cfg, with_pairs

dump, out = Path(sys.argv[1]), {}
cfg = with_pairs(make_cfg(1, 512, stride=256), (2048,))
for variant in sys.argv[2:]:
    for p in dump.glob("*"):
        p.unlink() if p.is_file() else shutil.rmtree(p)
    _build_variant(VariantKey.of(cfg, variant))
    out[variant] = "\n".join(p.read_text() for p in dump.glob("*.sass"))
print("REPORT" + json.dumps({"cluster_dim": cfg.cluster_dim, "sass": out}))
"""

_VARIANTS = ("rotated+mc+pers", "rotated+mc+pers+trace")


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    dump = tmp_path_factory.mktemp("sass")
    env = child_env("sm_90a", tmp_path_factory.mktemp("cache"), dump)
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(dump), *_VARIANTS], env=env, capture_output=True,
                          text=True, timeout=1800)
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{proc.stderr[-6000:]}"
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("REPORT")][-1]
    return json.loads(line[len("REPORT"):])


def test_problem_is_paired(report: dict) -> None:
    assert report["cluster_dim"] == 0  # the variants must hold in a cluster (multicast K)


def test_persistent_trace_compiles_with_timer_reads(report: dict) -> None:
    sass = report["sass"]["rotated+mc+pers+trace"]
    assert "HGMMA" in sass and "GLOBALTIMER" in sass
    assert "GLOBALTIMER" not in report["sass"]["rotated+mc+pers"]
