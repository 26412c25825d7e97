"""K1's scratch driver for the sm90 kernel: compile on a CPU, or run and check on a GPU.

    CUTE_DSL_ARCH=sm_90a python -m gna_cute.kernels._dev_check compile
    python -m gna_cute.kernels._dev_check gpu        # on the H100: correctness (GNA_K1_VARIANT)
    CUTE_DSL_ARCH=sm_90a GNA_CUTE_CACHE_DIR=.pcache python -m gna_cute.kernels._dev_check warm
    GNA_CUTE_CACHE_DIR=.pcache python -m gna_cute.kernels._dev_check sweep   # on the H100

``sweep`` runs the correctness cases for every mainloop variant (``GNA_P_VARIANTS``, default
``SWEEP_VARIANTS``), then times the bench rows for every variant and cuDNN in the same run
(``$OUT/sweep.json``).  ``warm`` compiles the same kernels on a CPU into the disk cache, which
a GPU machine of the same DSL version loads instead of compiling.

Not part of the product (the host layer is ``kernels/interface.py``); kept so the kernel's author
can reproduce every check.  The GPU reference is a dense masked attention in fp32 with the mask
built by ``tests/brute_force.py`` (independent of gna_cute).
"""

from __future__ import annotations

import math
import os
import sys
import time

from dataclasses import dataclass

from gna_cute.kernels.config import FwdConfig
from gna_cute.kernels.scheduler import TileGeometry


def make_cfg(rank, kernel_size, stride=1, dilation=1, causal=False, dtype="float16", head_dim=128,
             q_tile=None, kv_tile=None, count_tiles=False) -> FwdConfig:
    from gna_cute.kernels.config import default_tile_shapes

    def tup(x, t=int):
        return tuple(x) if isinstance(x, (tuple, list)) else (t(x),) * rank

    dq, dkv = default_tile_shapes(90, rank, head_dim)
    return FwdConfig(
        arch=90, dtype=dtype, head_dim=head_dim, head_dim_v=head_dim,
        q_tile_shape=tuple(q_tile or dq), kv_tile_shape=tuple(kv_tile or dkv),
        kernel_size=tup(kernel_size), stride=tup(stride), dilation=tup(dilation),
        is_causal=tup(causal, bool), count_tiles=count_tiles,
    )


def _fake_args(cfg: FwdConfig):
    import cutlass
    import cutlass.cute as cute
    from cutlass.cute.runtime import make_fake_stream, make_fake_tensor

    dt = {"float16": cutlass.Float16, "bfloat16": cutlass.BFloat16}[cfg.dtype]

    def fake(dtype, rank):
        shape = tuple(cute.sym_int32() for _ in range(rank))
        stride = tuple(cute.sym_int64() for _ in range(rank - 1)) + (1,)
        return make_fake_tensor(dtype, shape, stride, assumed_align=16)

    r = cfg.rank
    return (fake(dt, r + 3), fake(dt, r + 3), fake(dt, r + 3), fake(dt, r + 3), fake(cutlass.Float32, r + 2),
            fake(cutlass.Int32, 2 * r + 1), cutlass.Float32(1.0), make_fake_stream())


def compile_cfg(cfg: FwdConfig, mainloop=None):
    import cutlass.cute as cute
    from gna_cute.kernels.sm90_fwd import GNAFwdSm90

    t0 = time.time()
    compiled = cute.compile(GNAFwdSm90(cfg, mainloop=mainloop), *_fake_args(cfg))
    return compiled, time.time() - t0


VARIANTS = {
    "serial": dict(mainloop="serial"),
    "rotated+turns": dict(mainloop="rotated"),
    "rotated": dict(mainloop="rotated", turns=False),
    "hybrid": dict(mainloop="hybrid"),
    "serial+3st": dict(mainloop="serial", alias_o=True),
    "rotated+turns+3st": dict(mainloop="rotated", alias_o=True),
    # rotated+turns with Q-tile pairs in clusters sharing K/V loads where the problem allows it
    # (the config's cluster_dim, set per problem in ``run_kernel``; the product's host layer does
    # the same through ``tile_choice.choose_cluster``).
    "rotated+mc": dict(mainloop="rotated"),
    # writing a per-work-item timeline into the counts argument (``GNAFwdSm90(trace=True)``;
    # docs/sm90-kernel.md, "Persistent CTAs").
    "rotated+mc+trace": dict(mainloop="rotated", trace=True),
    "rotated+trace": dict(mainloop="rotated", trace=True),
    # persistent CTAs (132 = the H100's SMs; 4: many work items per CTA, for correctness)
    "rotated+pers": dict(mainloop="rotated", persistent_ctas=132),
    "rotated+mc+pers": dict(mainloop="rotated", persistent_ctas=132),
    "rotated+mc+pers4": dict(mainloop="rotated", persistent_ctas=4),
    "rotated+mc+pers+trace": dict(mainloop="rotated", persistent_ctas=132, trace=True),
    # the other epilogue: one per warpgroup (split) with one CTA per item, whole-tile when persistent
    "rotated+mc+split": dict(mainloop="rotated", split_epilogue=True),
    "rotated+mc+pers+whole": dict(mainloop="rotated", persistent_ctas=132, split_epilogue=False),
    # persistent CTAs with the item boundary not pipelined (before overlap_items)
    "rotated+mc+pers+seq": dict(mainloop="rotated", persistent_ctas=132, overlap_items=False),
    "rotated+mc+pers4+seq": dict(mainloop="rotated", persistent_ctas=4, overlap_items=False),
    "rotated+mc+pers6": dict(mainloop="rotated", persistent_ctas=6),
    # clusters of four Q tiles sharing K/V where the problem allows it (else pairs): one CTA per
    # item, 132 / 128 persistent CTAs (33 / 32 clusters; how many are co-resident depends on the
    # GPCs), and a few (check only)
    "rotated+q4": dict(mainloop="rotated"),
    "rotated+q4+pers": dict(mainloop="rotated", persistent_ctas=132),
    "rotated+q4+pers128": dict(mainloop="rotated", persistent_ctas=128),
    "rotated+q4+pers4": dict(mainloop="rotated", persistent_ctas=4),
    "rotated+q4+pers8": dict(mainloop="rotated", persistent_ctas=8),
    "rotated+q4+pers+trace": dict(mainloop="rotated", persistent_ctas=132, trace=True),
    # the unmasked rotated step with its stage slices taken before the K wait (shorter loop and
    # turn window in the SASS; ``GNAFwdSm90(early_stage_slices=True)``)
    "rotated+early": dict(mainloop="rotated", early_stage_slices=True),
    "rotated+mc+pers+early": dict(mainloop="rotated", persistent_ctas=132, early_stage_slices=True),
    # persistent with one Q buffer: Q's descriptors are static (as in FA4's loop), the item
    # boundary is not pipelined (``GNAFwdSm90(q_stages=1)``)
    "rotated+mc+pers+q1": dict(mainloop="rotated", persistent_ctas=132, q_stages=1),
    "rotated+mc+pers+q1+early": dict(mainloop="rotated", persistent_ctas=132, q_stages=1, early_stage_slices=True),
    # pairs also where the paired dim's tile count is odd: its last tiles form unshared tail
    # clusters (``FwdConfig.cluster_tail``, chosen per problem in ``run_key``); 132 and 6 CTAs
    "rotated+mc+pers+tail": dict(mainloop="rotated", persistent_ctas=132),
    "rotated+mc+pers6+tail": dict(mainloop="rotated", persistent_ctas=6),
    "rotated+mc+tail": dict(mainloop="rotated"),
    # 1D: on a CTA's first item, L2 prefetch of the K/V tiles 2 / 4 visiting steps ahead
    # (``GNAFwdSm90(prefetch_kv=L)``; a no-op in 2D/3D)
    "rotated+mc+pers+pf2": dict(mainloop="rotated", persistent_ctas=132, prefetch_kv=2),
    "rotated+mc+pers+pf4": dict(mainloop="rotated", persistent_ctas=132, prefetch_kv=4),
    "rotated+mc+pers+pf2+trace": dict(mainloop="rotated", persistent_ctas=132, prefetch_kv=2, trace=True),
    "rotated+mc+pers4+pf2": dict(mainloop="rotated", persistent_ctas=4, prefetch_kv=2),
    # every fourth exponential of the softmax on the FMA pipe (``GNAFwdSm90(exp2_emulation=4)``;
    # the product would take it at head dims <= 64 only, the checks run it on every case)
    "rotated+mc+em4": dict(mainloop="rotated", exp2_emulation=4),
    "rotated+mc+pers+em4": dict(mainloop="rotated", persistent_ctas=132, exp2_emulation=4),
    # full KV tiles first, from the first 8- (2-) aligned one along dim 0, so that neighbouring Q
    # tiles of a sliding window start on one shared KV tile (``GNAFwdSm90(kv_start_align=A)``);
    # ff2 rotates the walk in most dev cases (correctness), ff8 is the 1D s=1 product candidate
    "rotated+mc+ff2": dict(mainloop="rotated", kv_start_align=2),
    "rotated+mc+pers+ff2": dict(mainloop="rotated", persistent_ctas=132, kv_start_align=2),
    "rotated+mc+pers4+ff2": dict(mainloop="rotated", persistent_ctas=4, kv_start_align=2),
    "rotated+mc+pers+ff8": dict(mainloop="rotated", persistent_ctas=132, kv_start_align=8),
    "rotated+mc+pers+ff8+trace": dict(mainloop="rotated", persistent_ctas=132, kv_start_align=8, trace=True),
}


def cluster_limit(variant: str) -> int:
    """The largest cluster a variant's config may take where the problem allows (``with_pairs``):
    ``+q4`` variants group four Q tiles (else two), ``+mc`` variants two, the others none."""
    return 4 if "+q4" in variant else 2 if "+mc" in variant else 1


#: Variants ``sweep`` checks for correctness but does not time (a few CTAs: slow by design).
CHECK_ONLY_VARIANTS = ("rotated+mc+pers4", "rotated+mc+pers4+seq", "rotated+mc+pers6", "rotated+q4+pers4",
                       "rotated+q4+pers8", "rotated+mc+pers6+tail", "rotated+mc+pers4+pf2",
                       "rotated+mc+ff2", "rotated+mc+pers+ff2", "rotated+mc+pers4+ff2")
#: What ``sweep`` measures by default (``GNA_P_VARIANTS=a,b`` to change).
SWEEP_VARIANTS = ("serial", "rotated+turns", "hybrid")


@dataclass(frozen=True)
class VariantKey:
    """One compiled dev kernel: a config and a mainloop variant (DLPack calling convention)."""

    cfg: FwdConfig
    variant: str
    options: tuple = ()  # the constructor flags of the variant (so they are in the disk key)

    @classmethod
    def of(cls, cfg: FwdConfig, variant: str) -> "VariantKey":
        return cls(cfg, variant, tuple(sorted(VARIANTS[variant].items())))


def _build_variant(key: VariantKey):
    import cutlass.cute as cute
    from gna_cute.kernels.sm90_fwd import GNAFwdSm90

    return cute.compile(GNAFwdSm90(key.cfg, **dict(key.options)), *_fake_args(key.cfg))


def _code_only(path) -> str:
    """The source's syntax tree without docstrings (comments are not in it): edits to the text
    around the code do not invalidate compiled kernels."""
    import ast

    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


def _variant_cache():
    """Disk-backed cache of variant kernels, keyed by the sm90 kernel's own sources only (edits to
    other ``kernels/*.py`` files must not invalidate a cache built on another machine)."""
    import hashlib
    import platform
    from pathlib import Path

    import cutlass
    from gna_cute import neighborhood
    from gna_cute.kernels import compile_cache

    here = Path(__file__).resolve().parent
    h = hashlib.sha256(f"{cutlass.__version__};{platform.machine()}".encode())
    for name in ("sm90_fwd", "softmax", "mask", "scheduler", "tile_views", "dsl_values", "config"):
        h.update(_code_only(here / f"{name}.py").encode())
    h.update(_code_only(Path(neighborhood.__file__)).encode())
    directory = compile_cache.default_root() / "dev_variants" / h.hexdigest()[:20]

    class _Cache(compile_cache.KernelCache):
        def directory(self):
            return directory

    return _Cache("dev_variants", _build_variant)


_CACHE = []


def variant_kernel(key: VariantKey):
    if not _CACHE:
        _CACHE.append(_variant_cache())
    return _CACHE[0].get(key)


def _warm_one(key: VariantKey) -> None:
    variant_kernel(key)


def warm_variants(keys, workers: int | None = None) -> int:
    """Compile ``keys`` in parallel processes into the disk cache; the number that failed."""
    from gna_cute.kernels import compile_cache

    if not _CACHE:
        _CACHE.append(_variant_cache())
    # already on disk: the first call loads it in milliseconds, no worker process needed
    entries = {k: _CACHE[0]._entry(k) for k in dict.fromkeys(keys)}
    keys = [k for k, e in entries.items() if e is None or not e[0].exists()]
    if not keys:
        return 0
    workers = workers or max(1, min(len(keys), (os.cpu_count() or 2) - 1))
    errors = compile_cache.warm(_warm_one, keys, workers)
    for k, e in zip(keys, errors):
        if e is not None:
            print(f"COMPILE-ERR {k.variant} {k.cfg}: {type(e).__name__}: {str(e)[:800]}", flush=True)
    return sum(e is not None for e in errors)


def with_pairs(cfg: FwdConfig, spatial, max_size: int = 2, tail: bool = False) -> FwdConfig:
    """``cfg`` with the cluster dim, size (up to ``max_size``) and tail the host layer would
    choose for this spatial shape (dim -1: none) if it allowed tails where ``tail`` is set."""
    from gna_cute.kernels.tile_choice import choose_cluster
    from gna_cute.params import GNAParams

    p = GNAParams.make(spatial, cfg.kernel_size, cfg.stride, cfg.dilation, cfg.is_causal)
    dim, size, has_tail = choose_cluster(90, p, cfg.q_tile_shape, cfg.kv_tile_shape, max_size, tail)
    return FwdConfig(**{**cfg.__dict__, "cluster_dim": dim, "cluster_size": size, "cluster_tail": has_tail})


def counted(cfg: FwdConfig) -> FwdConfig:
    """``cfg`` with the debug tile counts on (the correctness cases compare them with the simulator)."""
    return FwdConfig(**{**cfg.__dict__, "count_tiles": True})


def run_key(cfg: FwdConfig, variant: str, spatial) -> VariantKey:
    """The kernel ``run_kernel`` runs for ``variant`` on a problem of size ``spatial`` (Q-tile
    pairs where the variant and the problem allow); ``sweep``'s warm-up compiles the same keys."""
    if (limit := cluster_limit(variant)) > 1:
        cfg = with_pairs(cfg, spatial, limit, tail="+tail" in variant)
    return VariantKey.of(cfg, variant)


def run_kernel(cfg: FwdConfig, q, k, v, scale, variant="serial", counts=None):
    """Launch on torch tensors (minimal launcher; the product's is kernels/interface.py).

    Returns ``(o, lse, counts, launch)``; ``launch()`` repeats the call on torch's current stream
    (so it can be captured into a CUDA graph).  ``counts``: the tile-count (or, for a trace
    variant, the timeline) tensor to pass; default the tile counts'.
    """
    import torch
    import cutlass
    from cuda.bindings import driver
    from cutlass.cute.runtime import from_dlpack
    from gna_cute.kernels.sm90_fwd import log2_scale

    r = cfg.rank
    key = run_key(cfg, variant, tuple(q.shape[1:1 + r]))
    cfg = key.cfg
    o = torch.full_like(q, float("nan"))
    lse = torch.full(q.shape[:-1], float("nan"), device=q.device, dtype=torch.float32)
    if counts is None:
        tiles = TileGeometry.from_config(cfg).tiles_per_dim(q.shape[1:1 + r])
        counts = torch.full((2, *cfg.dilation, *tiles), -1, device=q.device, dtype=torch.int32)

    def cv(t):
        return from_dlpack(t.detach(), assumed_align=16).mark_layout_dynamic(leading_dim=t.dim() - 1)

    fn = variant_kernel(key)
    args = (cv(q), cv(k), cv(v), cv(o), cv(lse), cv(counts), cutlass.Float32(log2_scale(scale)))

    def launch():
        fn(*args, driver.CUstream(torch.cuda.current_stream().cuda_stream))

    launch()
    return o, lse, counts, launch


def reference(q, k, v, cfg: FwdConfig, scale):
    """fp32 dense attention under the brute-force GNA mask (tests/brute_force.py)."""
    import numpy as np
    import torch

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    from brute_force import neighborhood_mask

    r = cfg.rank
    spatial = tuple(q.shape[1:1 + r])
    mask = torch.from_numpy(np.asarray(neighborhood_mask(spatial, cfg.kernel_size, cfg.stride, cfg.dilation, cfg.is_causal))).to(q.device)
    B, H, Hk, D = q.shape[0], q.shape[-2], k.shape[-2], q.shape[-1]
    N = int(np.prod(spatial))
    qf = q.reshape(B, N, H, D).float().transpose(1, 2)
    kf = k.reshape(B, N, Hk, D).float().transpose(1, 2).repeat_interleave(H // Hk, dim=1)
    vf = v.reshape(B, N, Hk, D).float().transpose(1, 2).repeat_interleave(H // Hk, dim=1)
    s = (qf @ kf.transpose(-1, -2)) * scale
    s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    o = torch.softmax(s, dim=-1) @ vf
    return o.transpose(1, 2).reshape(q.shape), lse.transpose(1, 2).reshape(q.shape[:-1])


def gpu_cases():
    """(name, cfg, B, spatial, H, Hkv) cases spanning the coverage of issue 5."""
    C = []
    C.append(("1d dense", make_cfg(1, 1000), 2, (1000,), 3, 3))
    C.append(("1d w=64", make_cfg(1, 64), 1, (1000,), 2, 2))
    C.append(("1d w=100 s=7", make_cfg(1, 100, 7), 1, (777,), 2, 1))
    C.append(("1d causal w=200 s=3", make_cfg(1, 200, 3, 1, True), 2, (1000,), 2, 2))
    C.append(("1d dil2 w=33", make_cfg(1, 33, 1, 2), 1, (500,), 2, 2))
    C.append(("1d bf16 d64", make_cfg(1, 50, 2, 1, False, "bfloat16", 64), 1, (613,), 4, 2))
    C.append(("1d d32 kv64", make_cfg(1, 40, 1, 1, True, "float16", 32, kv_tile=(64,)), 1, (300,), 2, 1))
    C.append(("2d 16x8", make_cfg(2, (7, 9), (2, 3)), 1, (37, 41), 2, 2))
    C.append(("2d causal dil", make_cfg(2, (5, 6), (1, 2), (2, 3), (True, False)), 1, (30, 33), 2, 1))
    C.append(("2d dense", make_cfg(2, (20, 24)), 1, (20, 24), 2, 2))
    C.append(("2d 8x16 bf16", make_cfg(2, (9, 13), 1, 1, False, "bfloat16", 64, (8, 16), (8, 16)), 2, (33, 50), 2, 2))
    C.append(("3d 2x8x8", make_cfg(3, (3, 5, 7), (1, 2, 3), 1, (False, True, False)), 1, (9, 14, 20), 2, 2))
    C.append(("3d dil bf16", make_cfg(3, (2, 3, 4), 1, (2, 1, 2), False, "bfloat16", 128, (4, 4, 8), (2, 4, 16)), 1, (8, 10, 24), 2, 1))
    # Pairable (rotated+mc runs them in clusters): blocked strides of two Q tiles, a dense dim.
    C.append(("1d s256 pairs", make_cfg(1, 256, 256), 2, (1000,), 3, 1))
    C.append(("2d s16 pairs", make_cfg(2, (20, 24), (16, 16)), 1, (48, 64), 2, 2))
    C.append(("3d pairs dil", make_cfg(3, (5, 8, 8), (4, 8, 8), (2, 1, 1), False, "bfloat16", 64), 1, (16, 16, 16), 2, 1))
    # Uniform work (every item the same full KV tiles, as the block-sparse and dense rows), item
    # counts that leave a partial last wave on 132, 6 and 4 persistent CTAs; paired but the second.
    C.append(("1d dense 5 heads", make_cfg(1, 4096), 1, (4096,), 5, 5))
    C.append(("1d w384 s128 gqa", make_cfg(1, 384, 128), 1, (4096,), 5, 1))
    C.append(("2d blocked 5 heads", make_cfg(2, (32, 32), (32, 32)), 1, (64, 64), 5, 5))
    C.append(("3d blocked bf16 d64", make_cfg(3, (4, 8, 8), (4, 8, 8), 1, False, "bfloat16", 64), 1, (8, 16, 16), 5, 5))
    # Clusters of four (the q4 variants): a dense 2D dim of 8 tiles, and a 1D stride of 4 Q tiles
    # with its last group cut short by the border (1D dense, 1D dense 5 heads and 2D blocked above
    # also group by four).
    C.append(("2d dense quads gqa", make_cfg(2, (32, 64)), 1, (32, 64), 4, 2))
    C.append(("1d s512 quads bf16", make_cfg(1, 700, 512, 1, False, "bfloat16"), 1, (2000,), 3, 3))
    # Tail clusters (the +tail variants): an odd Q tile count along the paired dim, its last tiles
    # in unshared clusters -- 3D stride groups of 4 and 3 tiles along dim 0; a dense dim 0 of three
    # 16-row tiles (the last one half outside the axis) with GQA.
    C.append(("3d s8 tail", make_cfg(3, (10, 8, 8), (8, 8, 8)), 2, (14, 16, 16), 3, 3))
    C.append(("2d dense-dim tail gqa", make_cfg(2, (40, 8), (1, 8), 1, False, "bfloat16", 64), 1, (40, 32), 4, 2))
    return C


def gpu_main(variant: str = "serial") -> int:
    import torch

    torch.manual_seed(0)
    fails = 0
    cases = gpu_cases()
    if os.environ.get("GNA_K1_CASES"):
        cases = [cases[int(i)] for i in os.environ["GNA_K1_CASES"].split(",")]
    for name, cfg, B, spatial, H, Hk in cases:
        dt = getattr(torch, cfg.dtype)
        D = cfg.head_dim
        q = torch.randn(B, *spatial, H, D, device="cuda", dtype=dt)
        k = torch.randn(B, *spatial, Hk, D, device="cuda", dtype=dt)
        v = torch.randn(B, *spatial, Hk, D, device="cuda", dtype=dt)
        scale = D ** -0.5
        try:
            t0 = time.time()
            cfg_c = counted(cfg)
            o, lse, counts, _ = run_kernel(cfg_c, q, k, v, scale, variant)
            torch.cuda.synchronize()
            t1 = time.time() - t0
            ro, rlse = reference(q, k, v, cfg, scale)
            # same-dtype torch error for the tolerance rule
            lo, _ = reference(q.to(dt), k, v, cfg, scale)
            err_o = (o.float() - ro).abs().max().item()
            err_l = (lse - rlse).abs().max().item()
            ref_dt_err = (ro.to(dt).float() - ro).abs().max().item()
            ok = err_o <= 4 * ref_dt_err + 2e-3 and err_l < 1e-2 and not torch.isnan(o).any()
            cnt = ""
            try:
                from gna_cute.params import GNAParams
                from gna_cute.sim import tile_counts
                p = GNAParams.make(spatial, cfg.kernel_size, cfg.stride, cfg.dilation, cfg.is_causal)
                sim = tile_counts(p, cfg.q_tile_shape, cfg.kv_tile_shape)
                same = (counts.cpu().numpy() == sim).all()
                cnt = f"counts==sim:{bool(same)}"
                ok = ok and same
            except Exception as e:  # simulator may not be there yet
                cnt = f"counts: {type(e).__name__}"
            fails += not ok
            print(f"{'OK ' if ok else 'BAD'} {name:24s} err_o={err_o:.2e} (dtype ref {ref_dt_err:.2e}) err_lse={err_l:.2e} {cnt} first={t1:.1f}s", flush=True)
        except Exception as e:
            fails += 1
            print(f"ERR {name}: {type(e).__name__}: {str(e)[:1500]}", flush=True)
    print(f"FAILS {fails}")
    return fails


def _time_ms(fn, iters=20) -> float:
    """Median of ``iters`` single calls between CUDA events (after 3 warm-up calls; 10 calls when
    one takes over 20 ms)."""
    import torch

    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    if start.elapsed_time(end) > 20.0:
        iters = min(iters, 10)
    times = []
    for _ in range(iters):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def _graph_ms(fn, calls=20, replays=10) -> float:
    """Per-call time of ``calls`` launches captured in one CUDA graph (median of ``replays``):
    for microsecond kernels, where single timed calls measure the host launch."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    return _time_ms(graph.replay, replays) / calls


#: (name, rank, spatial, heads, window, stride, q_tile, kv_tile, timer); tiles None = the default.
BENCH_ROWS = [  # most important first: a run cut short keeps these
    ("2d256 dense", 2, (256, 256), 24, (256, 256), (1, 1), None, None, "events"),
    ("2d256 w80 s1", 2, (256, 256), 24, (80, 80), (1, 1), None, None, "events"),
    ("2d256 w80 s1 chosen", 2, (256, 256), 24, (80, 80), (1, 1), "choose", "choose", "events"),
    ("2d256 w80 s16", 2, (256, 256), 24, (80, 80), (16, 16), None, None, "events"),
    ("1d32K w2048 s1", 1, (32768,), 1, (2048,), (1,), None, None, "graph"),
    ("2d256 dense kv8x8", 2, (256, 256), 24, (256, 256), (1, 1), (16, 8), (8, 8), "events"),
    ("2d256 w80 s1 kv8x8", 2, (256, 256), 24, (80, 80), (1, 1), (16, 8), (8, 8), "events"),
    ("1d32K w2048 s1 kv64", 1, (32768,), 1, (2048,), (1,), (128,), (64,), "graph"),
    ("3d w18x24x24 s1", 3, (30, 48, 80), 24, (18, 24, 24), (1, 1, 1), None, None, "events"),
    ("3d w18x24x24 s1 chosen", 3, (30, 48, 80), 24, (18, 24, 24), (1, 1, 1), "choose", "choose", "events"),
    ("1d32K dense", 1, (32768,), 1, (32768,), (1,), None, None, "graph"),
    ("1d32K w2048 s2048", 1, (32768,), 1, (2048,), (2048,), None, None, "graph"),
    ("3d w18x24x24 s16x8x8", 3, (30, 48, 80), 24, (18, 24, 24), (16, 8, 8), None, None, "events"),
    # Q tiles that group by four along dim 0 (the q4 variants) and by two along dim 1
    ("3d w18x24x24 s16x8x8 q4x4x8", 3, (30, 48, 80), 24, (18, 24, 24), (16, 8, 8), (4, 4, 8), (2, 8, 8), "events"),
]
#: Rows timed for a few variants only (the 3D problem is large: ~50 ms a call).
ROW_VARIANTS = {"3d w18x24x24 s1": ("serial", "rotated+turns", "hybrid"),
                "3d w18x24x24 s1 chosen": ("serial", "rotated+turns", "hybrid")}


def bench_rows() -> list:
    """The bench rows to time: all, or those named in ``GNA_P_ROWS`` (comma-separated)."""
    names = os.environ.get("GNA_P_ROWS")
    return [r for r in BENCH_ROWS if names is None or r[0] in names.split(",")]


def bench_cfgs(rows=BENCH_ROWS):
    """The config of every bench row (tiles "choose": ``kernels.tile_choice``)."""
    from gna_cute.kernels.tile_choice import choose_tile_shapes
    from gna_cute.params import GNAParams

    out = []
    for name, rank, spatial, _, ks, st, q_tile, kv_tile, _ in rows:
        if q_tile == "choose":
            q_tile, kv_tile = choose_tile_shapes(90, GNAParams.make(spatial, ks, st), 128)
        out.append(make_cfg(rank, ks, st, q_tile=q_tile, kv_tile=kv_tile))
    return out


def _timed_variants(row: str, variants) -> list:
    """The variants ``sweep`` times on bench row ``row``: those asked for that the row allows
    (``ROW_VARIANTS``), less the check-only ones."""
    return [v for v in ROW_VARIANTS.get(row, variants) if v in variants and v not in CHECK_ONLY_VARIANTS]


def sweep_keys(variants, rows, cfgs) -> list:
    """Every kernel ``sweep`` runs: the correctness cases per variant, the timed (row, variant) pairs."""
    keys = [run_key(counted(cfg), v, spatial)
            for v in variants for _, cfg, _, spatial, *_ in gpu_cases()]
    return keys + [run_key(c, v, row[2]) for row, c in zip(rows, cfgs) for v in _timed_variants(row[0], variants)]


def sweep_main(variants, rounds: int = 2, save=lambda result: None) -> dict:
    """Per variant: the correctness cases (``gpu_cases``); then every bench row for every variant, ``rounds``
    times (interleaved, so the spread between rounds is the run-to-run noise), and cuDNN.
    ``save(result)`` runs after every step, so a run cut short keeps what it measured."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    rows = bench_rows()
    cfgs = bench_cfgs(rows)
    t0 = time.time()
    failed = warm_variants(sweep_keys(variants, rows, cfgs))
    print(f"warm: {time.time() - t0:.1f}s, {failed} failed", flush=True)
    result = {"fails": {}, "ms": {}, "cudnn_ms": {}, "cfgs": {}}
    cudnn_done: dict = {}
    for v in variants if not os.environ.get("GNA_P_NOCHECK") else ():  # set: timings only
        result["fails"][v] = gpu_main(v)
        save(result)
    for (name, rank, spatial, H, ks, st, *_, timer), cfg in zip(rows, cfgs):
        result["cfgs"][name] = [cfg.q_tile_shape, cfg.kv_tile_shape]
        q, k, v_ = (torch.randn(1, *spatial, H, 128, device="cuda", dtype=torch.float16) for _ in range(3))
        time_fn = _graph_ms if timer == "graph" else _time_ms
        row_variants = _timed_variants(name, variants)
        for r in range(rounds):
            for v in row_variants:
                try:
                    _, _, _, launch = run_kernel(cfg, q, k, v_, 128 ** -0.5, v)
                    ms = time_fn(launch)
                except Exception as e:
                    print(f"ERR bench {name} {v}: {type(e).__name__}: {str(e)[:500]}", flush=True)
                    ms = float("nan")
                result["ms"].setdefault(name, {}).setdefault(v, []).append(ms)
        if (spatial, H) not in cudnn_done:  # dense cuDNN once per problem size
            cudnn_done[spatial, H] = name
            N = math.prod(spatial)
            qt, kt, vt = (x.reshape(1, N, H, 128).transpose(1, 2) for x in (q, k, v_))
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                sdpa = lambda: torch.nn.functional.scaled_dot_product_attention(qt, kt, vt)  # noqa: E731
                try:
                    result["cudnn_ms"][name] = [time_fn(sdpa) for _ in range(1 if rank == 3 else rounds)]
                except Exception as e:  # e.g. a graph capture cuDNN refuses: time single calls
                    print(f"cudnn {name}: {type(e).__name__}: {str(e)[:300]}; events instead", flush=True)
                    result["cudnn_ms"][name] = [_time_ms(sdpa)]
        best = {v: min(ts) for v, ts in result["ms"][name].items()}
        cud = min(result["cudnn_ms"][cudnn_done[spatial, H]])
        pairs = math.prod(spatial) * math.prod(ks) * H
        line = " ".join(f"{v}={'/'.join(f'{t:.3f}' for t in result['ms'][name][v])}" for v in row_variants)
        fastest = min(best, key=best.get)
        print(f"BENCH {name:22s} {line} | cudnn {cud:.3f} | best {fastest} {best[fastest]:.3f} ms "
              f"{cud / best[fastest]:.2f}x {pairs * 4 * 128 / best[fastest] / 1e9:.0f} TF/s", flush=True)
        save(result)
    return result


def _trace_rows(t, tiles, grid: int, stamped=None) -> tuple:
    """Per-CTA phases (us) of one persistent trace ``t`` (items x 32 int64 ns from the first CTA's
    entry, see GNAFwdSm90) of ``grid`` CTAs with ``tiles`` KV tiles per item, and the kernel span;
    ``stamped`` (items x 32 bools, the raw stamps' nonzero entries) adds each item 0 / 1 step's time."""
    if stamped is None:
        stamped = t * 0
    t0 = t[:grid, 15].min()
    ph: dict = {k: [] for k in ("launch skew", "init+sync", "sync->Q issued", "Q issued->S0", "per tile, item 0",
                                "per tile, item 1", "per tile, item 2", "epilogue", "boundary", "CTA", "tail")}
    # steps 1..12 of items 0 and 1 (slots 18..29 after the first S, slot 13; 0 = not stamped)
    steps = {(i, s): [] for i in (0, 1) for s in range(1, 13)}
    items = t.shape[0]
    end = max(int(t[:, 5].max()), int(t[:grid, 17].max()))
    for c in range(grid):
        ws = list(range(c, items, grid))
        ph["launch skew"].append(t[c, 15] - t0)
        ph["init+sync"].append(t[c, 16] - t[c, 15])
        ph["sync->Q issued"].append(t[c, 9] - t[c, 16])
        ph["Q issued->S0"].append(t[c, 13] - t[c, 9])
        for i, w in enumerate(ws):
            if tiles[w] > 1:
                ph[f"per tile, item {min(i, 2)}"].append((t[w, 4] - t[w, 13]) / (tiles[w] - 1))
            if i < 2:
                for s in range(1, min(13, int(tiles[w]))):
                    prev = 16 + s if s > 1 else 13  # step s - 1's stamp; step 0's is the first S
                    if stamped[w, 17 + s] and stamped[w, prev]:
                        steps[(i, s)].append(t[w, 17 + s] - t[w, prev])
            ph["epilogue"].append(t[w, 5] - t[w, 4])
            if i + 1 < len(ws):
                ph["boundary"].append(t[ws[i + 1], 13] - t[w, 4])
        ph["CTA"].append(t[ws[-1], 5] - t[c, 15])
        ph["tail"].append(end - t[ws[-1], 5])
    for (i, s), v in steps.items():
        ph[f"item {i} step {s}"] = v
    return {k: [x / 1000 for x in v] for k, v in ph.items()}, (end - t0) / 1000


def trace_main(variant: str = "rotated+mc+pers+trace", calls: int = 5, warm: bool = False) -> None:
    """Trace the bench rows (``GNA_P_ROWS``) with a persistent trace variant, the L2 flushed before
    each call (not if ``warm``): per-CTA phase medians [min, max] in us and the kernel span from
    the first CTA's entry to the last stamp.  (The CUDA-event time printed beside it includes
    the host's launch time: no timing.)  With ``$OUT`` set, the raw timelines (per row: calls x
    items x 32 stamps, ns, unwrapped) go to ``$OUT/trace-<variant>[-warm].npz`` (``+`` written ``_``)."""
    ctas = VARIANTS[variant].get("persistent_ctas", 0)  # the launch's CTA count (at most the items)
    if not (ctas and VARIANTS[variant].get("trace")):
        raise ValueError(f"variant={variant!r}: trace needs a persistent trace variant")
    import statistics
    import numpy as np
    import torch

    raws: dict = {}
    rows = bench_rows()
    flush = torch.empty(2 * torch.cuda.get_device_properties(0).L2_cache_size // 4, dtype=torch.int32, device="cuda")
    for (name, rank, spatial, H, *_), cfg in zip(rows, bench_cfgs(rows)):
        q, k, v = (torch.randn(1, *spatial, H, 128, device="cuda", dtype=torch.float16) for _ in range(3))
        items = TileGeometry.from_config(cfg).num_work_tiles(spatial) * H
        grid = min(items, ctas)
        trace = torch.zeros((items, 32, *([1] * (2 * rank - 1))), device="cuda", dtype=torch.int32)
        _, _, _, launch = run_kernel(cfg, q, k, v, 128 ** -0.5, variant, counts=trace)
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        spans, evs, phases = [], [], {}
        for _ in range(calls):
            if not warm:
                flush.fill_(0)
            trace.zero_()
            start.record()
            launch()
            stop.record()
            torch.cuda.synchronize()
            evs.append(start.elapsed_time(stop) * 1000)
            raw = trace.reshape(items, 32).cpu().long()
            t = (raw - raw[:grid, 15].min()) % (1 << 32)  # unwrap the 32-bit ns timer
            ph, span = _trace_rows(t, raw[:, 6], grid, raw != 0)
            raws.setdefault(name, []).append(np.concatenate([t[:, :30].numpy(), raw[:, [0, 6]].numpy()], axis=1))
            spans.append(span)
            for key, vals in ph.items():
                phases.setdefault(key, []).extend(vals)
        print(f"TRACE {name} {variant}{' warm L2' * warm}: event {statistics.median(evs):.1f} us, span {statistics.median(spans):.1f} us",
              flush=True)
        for key, vals in phases.items():
            if vals and not key.startswith("item "):
                print(f"  {key:16s} {statistics.median(vals):7.2f} [{min(vals):.2f}, {max(vals):.2f}]", flush=True)
        for i in (0, 1):  # the per-step curve, medians (us)
            curve = [f"{statistics.median(phases[k]):.2f}" for s in range(1, 13) if phases.get(k := f"item {i} step {s}")]
            if curve:
                print(f"  item {i} steps 1..: {' '.join(curve)}", flush=True)
    if os.environ.get("OUT"):  # columns: stamps 0-29 (ns from the first CTA's entry), then SM id and KV tiles raw
        np.savez_compressed(os.path.join(os.environ["OUT"], f"trace-{variant.replace('+', '_')}{'-warm' * warm}.npz"),
                            **{n.replace(" ", "_"): np.stack(v) for n, v in raws.items()})


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "compile"
    if what == "compile":
        for name, cfg, *_ in gpu_cases()[: int(sys.argv[2]) if len(sys.argv) > 2 else 1]:
            _, dt = compile_cfg(cfg)
            print(f"compiled {name} in {dt:.1f}s")
    elif what == "warm":  # CPU: fill the variant cache for a later GPU sweep
        chosen = os.environ.get("GNA_P_VARIANTS", ",".join(SWEEP_VARIANTS)).split(",")
        rows = bench_rows()
        cfgs = bench_cfgs(rows)
        sys.exit(warm_variants(sweep_keys(chosen, rows, cfgs), int(sys.argv[2]) if len(sys.argv) > 2 else None))
    elif what == "sweep":
        import json

        chosen = os.environ.get("GNA_P_VARIANTS", ",".join(SWEEP_VARIANTS)).split(",")
        out = os.environ.get("OUT")

        def save(result):
            if out:
                with open(os.path.join(out, "sweep.json"), "w") as f:
                    json.dump(result, f, indent=1, default=str)

        res = sweep_main(chosen, int(os.environ.get("GNA_P_ROUNDS", "2")), save=save)
        sys.exit(sum(res["fails"].values()))
    elif what == "trace":
        for variant in os.environ.get("GNA_P_VARIANTS", "rotated+mc+pers+trace").split(","):
            for warm in (False, True) if os.environ.get("GNA_TRACE_WARM") else (False,):
                trace_main(variant, warm=warm)
    else:
        sys.exit(gpu_main(os.environ.get("GNA_K1_VARIANT", "serial")))
