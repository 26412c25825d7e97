"""CPU, in CI: the Blackwell kernel compiles for sm_100a with no GPU; its SASS is a Blackwell FMHA's.

A sampled matrix (each rank; fp16 and bf16; head dim 32, 64 and 128; causal and not; stride > 1;
dilation > 1; Q tiles of 128 and 256 tokens; KV tiles of 64 and 128) is compiled in one sm_100a
process with SASS dumps on; each kernel must contain tcgen05 MMA (``UTCHMMA``), tensor-memory loads and stores (``LDTM``/``STTM``)
and TMA loads (``UTMALDG``).  A second process targeting sm_90a must refuse it with a clear error.
"""

from __future__ import annotations

import pytest

from compile_check import child_env, run_child, sass_text
from gna_cute.kernels.config import FwdConfig

pytest.importorskip("cutlass")

def _cfg(dtype, head_dim, kernel_size, stride, dilation, is_causal, q_tile, kv_tile) -> FwdConfig:
    return FwdConfig(100, dtype, head_dim, head_dim, q_tile, kv_tile, tuple(kernel_size), tuple(stride),
                     tuple(dilation), tuple(is_causal))  # fmt: skip


# Q tiles of 128 tokens (one softmax warpgroup) and of 256 (two halves in flight); KV 64 or 128.
CONFIGS = [
    _cfg("float16", 128, (64,), (1,), (1,), (True,), (128,), (128,)),
    _cfg("bfloat16", 32, (9,), (3,), (2,), (False,), (256,), (64,)),
    _cfg("float16", 64, (7, 5), (2, 1), (1, 2), (False, True), (16, 8), (16, 8)),
    _cfg("bfloat16", 128, (8, 8), (8, 8), (1, 1), (False, False), (16, 16), (8, 8)),
    _cfg("bfloat16", 64, (3, 4, 5), (1, 2, 1), (2, 1, 1), (True, False, False), (4, 8, 8), (2, 4, 8)),
    _cfg("float16", 128, (3, 3, 3), (1, 1, 1), (1, 1, 1), (False, False, False), (2, 8, 8), (2, 4, 8)),
]
OPCODES = ("UTCHMMA", "LDTM", "STTM", "UTMALDG")


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    cache = tmp_path_factory.mktemp("gna_cache")
    dump = tmp_path_factory.mktemp("dsl_dump")
    return run_child(CONFIGS, child_env("sm_100a", cache, dump), dump)


def _id(c: FwdConfig) -> str:
    return f"{c.rank}d-{c.dtype}-d{c.head_dim}-w{c.kernel_size}-s{c.stride}-dil{c.dilation}-q{c.q_tile_size}-kv{c.kv_tile_size}"


@pytest.mark.parametrize("index", range(len(CONFIGS)), ids=[_id(c) for c in CONFIGS])
def test_sass_is_a_blackwell_fmha(report: dict, index: int) -> None:
    assert not report["errors"][index], report["errors"][index]
    files = report["sass"][index]
    assert files, f"no SASS dumped for {CONFIGS[index]}"
    sass = sass_text(files)
    missing = [op for op in OPCODES if op not in sass]
    assert not missing, f"{missing} missing from the SASS of {CONFIGS[index]}"


def test_refuses_to_compile_for_sm90(tmp_path) -> None:
    result = run_child(CONFIGS[:1], child_env("sm_90a", tmp_path))
    error = result["errors"][0]
    assert "sm_100a" in error and "sm_90a" in error, error
