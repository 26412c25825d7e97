"""CPU, in CI: the Hopper kernel compiles for sm_90a with no GPU, and its machine code is a Hopper FMHA's.

One process compiles one configuration per rank through the real host layer with SASS dumps on
(``compile_check``); the test reads the SASS for warpgroup MMA (``HGMMA``) and TMA loads
(``UTMALDG``).  A second process, same disk cache, must load them all without compiling (the
persistent compile cache).
"""

from __future__ import annotations

import dataclasses
import re

import pytest

from compile_check import child_env, opcode, run_child, sass_loops, sass_text
from gna_cute.kernels import config
from gna_cute.kernels.config import FwdConfig

pytest.importorskip("cutlass")


def _cfg(dtype: str, head_dim: int, kernel_size, stride, dilation, is_causal) -> FwdConfig:
    q_tile, kv_tile = config.default_tile_shapes(90, len(kernel_size), head_dim)
    return FwdConfig(90, dtype, head_dim, head_dim, tuple(q_tile), tuple(kv_tile), tuple(kernel_size),
                     tuple(stride), tuple(dilation), tuple(is_causal))  # fmt: skip


# One per rank, between them: both dtypes, two head dims, stride > 1, dilation > 1, causal.
CONFIGS = [
    _cfg("float16", 128, (64,), (1,), (1,), (True,)),
    _cfg("bfloat16", 64, (8, 9), (2, 3), (1, 2), (False, False)),
    _cfg("float16", 128, (3, 4, 5), (1, 2, 1), (1, 1, 2), (True, False, False)),
    # Q-tile pairs in clusters of two CTAs (the 2D block-sparse row's config): K/V multicast.
    dataclasses.replace(_cfg("float16", 128, (80, 80), (16, 16), (1, 1), (False, False)), cluster_dim=1),
    # persistent CTAs with a double-buffered Q (the 1D rows' config): the 224 KiB of smem must fit.
    dataclasses.replace(_cfg("float16", 128, (2048,), (1,), (1,), (False,)), persistent_ctas=132, mainloop="rotated"),
    # persistent in 3D (dilated, bf16, D = 64): each warpgroup stores its half of the 2x8x8 Q box;
    # work items walk dim 0 fastest (the 3D headline rows' tile order; row-major 3D is the third entry).
    dataclasses.replace(_cfg("bfloat16", 64, (3, 4, 5), (1, 2, 1), (1, 1, 2), (False, False, False)),
                        persistent_ctas=132, mainloop="rotated", tile_order=(1, 2, 0)),
    # clusters of four Q tiles on persistent CTAs (the 1D blocked row): K/V multicast into four CTAs.
    dataclasses.replace(_cfg("float16", 128, (2048,), (2048,), (1,), (False,)), persistent_ctas=128,
                        mainloop="rotated", cluster_dim=0, cluster_size=4),
    # pairs with unshared tail clusters (the 3D s=16 row: 15 Q tiles along dim 0): every K/V load
    # is a multicast whose issuer and mask depend on the item.
    dataclasses.replace(_cfg("float16", 128, (18, 24, 24), (16, 8, 8), (1, 1, 1), (False, False, False)),
                        persistent_ctas=132, mainloop="rotated", tile_order=(1, 2, 0), cluster_dim=0,
                        cluster_tail=True),
    # the second entry with every fourth exponential on the FMA pipe (head dim 64)
    dataclasses.replace(_cfg("bfloat16", 64, (8, 9), (2, 3), (1, 2), (False, False)), exp2_emulation=4),
]
IDS = [f"{c.rank}d{f'-clusters{c.cluster_size}' * (c.cluster_dim >= 0)}{'-tail' * c.cluster_tail}{'-persistent' * (c.persistent_ctas > 0)}{'-order' * bool(c.tile_order)}{'-exp2poly' * bool(c.exp2_emulation)}"
       for c in CONFIGS]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> tuple[dict, dict[str, str]]:
    """Compile CONFIGS once for sm_90a with SASS dumps; the child's report and its plain env."""
    cache = tmp_path_factory.mktemp("gna_cache")
    dump = tmp_path_factory.mktemp("dsl_dump")
    return run_child(CONFIGS, child_env("sm_90a", cache, dump), dump), child_env("sm_90a", cache)


@pytest.mark.parametrize("index", range(len(CONFIGS)), ids=IDS)
def test_sass_has_hgmma_and_tma(compiled, index: int) -> None:
    report, _ = compiled
    assert not report["errors"][index], report["errors"][index]
    files = report["sass"][index]
    assert files, f"no SASS dumped for {CONFIGS[index]}"
    sass = sass_text(files)
    assert "HGMMA" in sass, f"no warpgroup MMA in the SASS of {CONFIGS[index]}"
    assert "UTMALDG" in sass, f"no TMA load in the SASS of {CONFIGS[index]}"
    # K/V multicast into both CTAs of a pair, and only there
    assert bool(re.search(r"UTMALDG\.\dD\.MULTICAST", sass)) == (CONFIGS[index].cluster_dim >= 0), CONFIGS[index]


@pytest.mark.parametrize("index", range(len(CONFIGS)), ids=IDS)
def test_wgmma_not_serialized(compiled, index: int) -> None:
    """ptxas waits after every WGMMA of a kernel when it cannot follow one (a WGMMA issued in a
    branch, or waited for across a loop's back edge: seen with the pipelined item boundary's first
    version, 56 waits for 56 HGMMAs).  The kernels overlap QK with PV and the softmax, so a wait
    may follow only a few of them."""
    report, _ = compiled
    sass = sass_text(report["sass"][index])
    waits, mmas = sass.count("WARPGROUP.DEPBAR.LE gsb0"), sass.count("HGMMA")
    assert mmas and waits <= mmas // 4, f"{waits} WGMMA waits for {mmas} HGMMAs: serialized ({CONFIGS[index]})"


def test_exp2_emulation_moves_a_quarter_of_the_exponentials_off_mufu(compiled) -> None:
    """``exp2_emulation=4``: in every softmax loop (masked and unmasked) 16 of a thread's 64
    exponentials per tile (per tile of the loop body) leave MUFU for ``softmax.exp2_poly`` (3 FFMA
    each for the cubic, an LEA builds 2^j), and nothing spills."""
    report, _ = compiled
    plain, poly = (sass_text(report["sass"][i]) for i in (1, len(CONFIGS) - 1))
    assert CONFIGS[-1] == dataclasses.replace(CONFIGS[1], exp2_emulation=4)

    def softmax_loops(sass: str) -> list[list[str]]:
        return [body for body in sass_loops(sass)
                if sum(opcode(x).startswith("HGMMA") for x in body) >= 8 and "MUFU.EX2" in " ".join(body)]

    pairs = list(zip(softmax_loops(plain), softmax_loops(poly)))
    assert pairs and len(softmax_loops(plain)) == len(softmax_loops(poly))
    for a, b in pairs:
        count = lambda body, op: sum(opcode(x) == op for x in body)  # noqa: E731
        moved = count(a, "MUFU.EX2") - count(b, "MUFU.EX2")  # 16 per tile the loop body holds
        assert moved > 0 and moved % 16 == 0 and moved * 4 <= count(a, "MUFU.EX2")
        assert count(b, "FFMA") - count(a, "FFMA") == 3 * moved
        assert count(b, "LEA") >= moved
    assert "STL" not in poly


def test_new_process_loads_from_disk(compiled) -> None:
    """Same sources, same DSL, same cache directory: a fresh process compiles nothing."""
    first, env = compiled
    assert not first["export_error"], f"the compiling process could not export: {first['export_error']}"
    report = run_child(CONFIGS, env)
    assert (report["compiles"], report["disk_loads"]) == (0, len(CONFIGS))


@pytest.mark.parametrize(
    "changes, words",
    [
        (dict(persistent_ctas=3), ["persistent_ctas=3", "even"]),
        (dict(persistent_ctas=-2), ["persistent_ctas=-2"]),
        (dict(persistent_ctas=132, mainloop="serial"), ["persistent_ctas=132", "rotated"]),
    ],
)
def test_bad_persistent_config_is_refused_naming_it(changes: dict, words: list[str]) -> None:
    from gna_cute.kernels.sm90_fwd import GNAFwdSm90

    cfg = dataclasses.replace(CONFIGS[5], **changes)
    with pytest.raises(ValueError) as e:
        GNAFwdSm90(cfg)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_cluster_tail_needs_a_cluster_dim() -> None:
    from gna_cute.kernels.sm90_fwd import GNAFwdSm90

    with pytest.raises(ValueError, match="cluster_tail=True"):
        GNAFwdSm90(dataclasses.replace(next(c for c in CONFIGS if c.cluster_tail), cluster_dim=-1))


@pytest.mark.parametrize("n", [1, -4])
def test_bad_exp2_emulation_is_refused_naming_it(n: int) -> None:
    from gna_cute.kernels.sm90_fwd import GNAFwdSm90

    with pytest.raises(ValueError, match=f"exp2_emulation={n}"):
        GNAFwdSm90(dataclasses.replace(CONFIGS[1], exp2_emulation=n))


def test_split_epilogue_needs_an_even_first_dim() -> None:
    """Each warpgroup stores half of the Q box along dim 0: an odd dim 0 is refused, naming it."""
    from gna_cute.kernels.sm90_fwd import GNAFwdSm90

    cfg = dataclasses.replace(CONFIGS[1], q_tile_shape=(1, 128), kv_tile_shape=(1, 128))
    GNAFwdSm90(cfg)  # the default (one CTA per item) stores the whole box
    with pytest.raises(ValueError) as e:
        GNAFwdSm90(cfg, split_epilogue=True)
    assert "q_tile_shape=(1, 128)" in str(e.value) and "even" in str(e.value), str(e.value)
