"""CPU, in CI: the sm90 kernel's dev-only options still compile for sm_90a, and do what they say.

The persistent ``trace`` variant must compile and read the global timer, the plain kernel must not;
the L2 prefetch (``pf2``) must add prefetches and leave the loads alone.
The config fields ``q_buffers`` / ``early_stage_slices`` must build the same loop as the dev options.
The ``early`` variant must shorten the unmasked mainloop and its turn window, and with one Q buffer
(``q1``) drop every 32-bit descriptor step.  Full-first (``ff2``, a 1D sliding window) must run the
unmasked loop first, shorter, with one more producer box loop.  A fresh process with SASS dumps on compiles the
``_dev_check`` variants of a 1D problem with Q-tile pairs.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from compile_check import child_env, opcode, sass_instructions, sass_loops

pytest.importorskip("cutlass")

_CHILD = r"""
import dataclasses, json, shutil, sys
from pathlib import Path
from gna_cute.kernels._dev_check import VariantKey, _build_variant, make_cfg, with_pairs

dump, out = Path(sys.argv[1]), {}

def sass_of(key):
    for p in dump.glob("*"):
        p.unlink() if p.is_file() else shutil.rmtree(p)
    _build_variant(key)
    return "\n".join(p.read_text() for p in dump.glob("*.sass"))

cfg = with_pairs(make_cfg(1, 512, stride=256), (2048,))
for variant in sys.argv[2:]:
    out[variant] = sass_of(VariantKey.of(cfg, variant))
# the same options as config fields (the product's path): one Q buffer, early slices
fields = dataclasses.replace(cfg, q_buffers=1, early_stage_slices=True)
out["fields:q1+early"] = sass_of(VariantKey.of(fields, "rotated+mc+pers"))
# a 1D sliding window (masked and unmasked tiles), partial-first and full-first
s1 = make_cfg(1, 512)
for variant in ("rotated+mc+pers", "rotated+mc+pers+ff2"):
    out["s1:" + variant] = sass_of(VariantKey.of(s1, variant))
print("REPORT" + json.dumps({"cluster_dim": cfg.cluster_dim, "sass": out}))
"""

_VARIANTS = ("rotated+mc+pers", "rotated+mc+pers+trace", "rotated+mc+pers+early", "rotated+mc+pers+q1+early",
             "rotated+mc+pers+pf2+trace")


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


def _count(sass: str, prefix: str) -> int:
    return sum(opcode(x).startswith(prefix) for x in sass_instructions(sass))


def test_l2_prefetch_only_where_asked(report: dict) -> None:
    # prefetch_kv: the producer's K issue also prefetches (UTMAPF) a later step's K and V tiles
    # (both 64-wide boxes at D 128), in each of the 2 * rank + 1 box loops; the loads are unchanged.
    pf, plain = report["sass"]["rotated+mc+pers+pf2+trace"], report["sass"]["rotated+mc+pers"]
    assert _count(plain, "UTMAPF") == 0
    assert _count(pf, "UTMAPF") == 3 * 2 * 2
    assert _count(pf, "UTMALDG") == _count(plain, "UTMALDG")


def _unmasked_loop(sass: str) -> list[str]:
    """The rotated mainloop without the mask: 16 HGMMAs (QK and PV), 64+ exps, no per-element FSEL."""
    loops = [body for body in sass_loops(sass)
             if sum(opcode(x).startswith("HGMMA") for x in body) == 16
             and sum(opcode(x).startswith("MUFU") for x in body) >= 64
             and sum(opcode(x) == "FSEL" for x in body) < 8]
    assert len(loops) == 1, [len(b) for b in loops]
    return loops[0]


def _turn_window(body: list[str]) -> int:
    """Instructions from taking the turn (named barrier wait) to passing it (arrive)."""
    sync = next(i for i, x in enumerate(body) if opcode(x).startswith("BAR.SYNC"))
    return next(i for i, x in enumerate(body) if opcode(x).startswith("BAR.ARV")) - sync


def test_early_stage_slices_shorten_the_unmasked_loop(report: dict) -> None:
    # sm_90a, DSL 4.8.1 (docs/sm90-kernel.md): 507 -> 485 instructions per tile, the turn window
    # 101 -> 68, the QK descriptor steps of K as 64-bit adds.  A later ptxas may schedule both
    # alike; then this option has no reason left to exist.
    plain, early = (_unmasked_loop(report["sass"][v]) for v in ("rotated+mc+pers", "rotated+mc+pers+early"))
    assert len(early) < len(plain)
    assert _turn_window(early) < _turn_window(plain)
    carries = [sum(opcode(x) == "UIADD3.X" for x in body) for body in (plain, early)]
    assert carries[1] < carries[0]


def test_one_q_buffer_makes_the_q_descriptors_static(report: dict) -> None:
    # sm_90a, DSL 4.8.1: 460 instructions per tile, window 51, no UIADD3.X (FA4's loop: 457, 57).
    early, q1 = (_unmasked_loop(report["sass"][v]) for v in ("rotated+mc+pers+early", "rotated+mc+pers+q1+early"))
    assert len(q1) < len(early) and _turn_window(q1) < _turn_window(early)
    assert sum(opcode(x) == "UIADD3.X" for x in q1) == 0


def test_config_fields_build_the_dev_options(report: dict) -> None:
    # FwdConfig(q_buffers=1, early_stage_slices=True) is how the product would ask for them
    dev, fields = (_unmasked_loop(report["sass"][v]) for v in ("rotated+mc+pers+q1+early", "fields:q1+early"))
    assert fields == dev


def _loops_with_gemms(sass: str) -> list[list[str]]:
    """The rotated mainloops (16 HGMMAs, 64+ exps, a turn passed with BAR.ARV), in code order."""
    return [body for body in sass_loops(sass) if sum(opcode(x).startswith("HGMMA") for x in body) == 16
            and sum(opcode(x).startswith("MUFU") for x in body) >= 64 and any(opcode(x) == "BAR.ARV" for x in body)]


def test_full_first_runs_the_short_unmasked_loop_first(report: dict) -> None:
    # sm_90a, DSL 4.8.1: ptxas builds the K descriptors of the second of the two loops as 32-bit
    # add pairs; full-first that is the masked loop (2 tiles of 17 on the 1D s=1 row).  1D w=512:
    # unmasked 499 -> 462 instructions per tile.  One more producer box loop (the rotated full
    # box is split in two): 2 more K and 2 more V loads (64-wide boxes at D 128); no spills.
    plain, ff = report["sass"]["s1:rotated+mc+pers"], report["sass"]["s1:rotated+mc+pers+ff2"]
    masked = [sum(opcode(x) == "FSEL" for x in body) >= 8 for body in _loops_with_gemms(plain)]
    assert masked == [True, False]
    loops = _loops_with_gemms(ff)
    assert [sum(opcode(x) == "FSEL" for x in body) >= 8 for body in loops] == [False, True]
    assert len(loops[0]) < len(_loops_with_gemms(plain)[1])
    assert _count(ff, "UTMALDG") == _count(plain, "UTMALDG") + 4
    assert _count(ff, "STL") == _count(ff, "LDL") == 0
