"""Host layer of the fused GNA kernels: what they support, compile once, launch without copies.

The backend chain (``gna_cute.backends``) calls, per architecture (``sm90`` Hopper, ``sm100``
Blackwell): ``available_*()`` (device-level reason or None), ``can_run_*(args)`` (reason or None),
``plan_*(args)`` (the reason, or a :class:`Plan` whose ``run()`` launches without checking again),
``forward_*(args) -> (out, lse)`` and the debug ``tile_counts_*(args)``.  Importing this module
needs neither a GPU nor the CuTe DSL; both are touched only when a kernel is asked for.

Flow of a call: check (a :class:`Plan`: tiles chosen) -> :class:`FwdConfig` (the static part of
the problem, also the compile-cache key) -> compiled kernel from :mod:`compile_cache` -> launch on
torch's current stream with zero-copy views of the user's heads-last tensors (:mod:`cute_tensors`).
A dim whose dilation does not divide its size runs one launch per dilation group on strided views
(:mod:`dilation_split`); all launches of a call share one compiled kernel.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable

import numpy as np
import torch

from gna_cute import neighborhood
from gna_cute.kernels import compile_cache, config, cute_tensors, dilation_split, tile_choice
from gna_cute.kernels.config import FwdConfig

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)
SUPPORTED_HEAD_DIMS = (32, 64, 128)
_ARCH_NAME = {90: "sm90", 100: "sm100"}
_CC_MAJOR = {90: 9, 100: 10}
_INT32_MAX = 2**31 - 1
# LSE is stored element by element (no TMA): its views (one per dilation group) need only fp32 alignment.
_LSE_ALIGN_BYTES = 4


def _kernel_class(arch: int) -> type:
    """The device kernel class for ``arch`` (ImportError when its module cannot load)."""
    if arch == 90:
        from gna_cute.kernels.sm90_fwd import GNAFwdSm90

        return GNAFwdSm90
    if arch == 100:
        from gna_cute.kernels.sm100_fwd import GNAFwdSm100

        return GNAFwdSm100
    raise ValueError(f"arch={arch!r} has no GNA kernel (known: {sorted(_ARCH_NAME)})")


# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------


def _device_reason(arch: int, device: torch.device | None) -> str | None:
    """Why ``device`` (None: the current one) cannot run the ``arch`` kernel, or None."""
    index = None if device is None else device.index
    if index is None:
        if not torch.cuda.is_available():
            return f"{_ARCH_NAME[arch]} needs a CUDA GPU; torch sees none"
        index = torch.cuda.current_device()
    return _device_index_reason(arch, index)


@lru_cache(maxsize=None)
def _device_index_reason(arch: int, index: int) -> str | None:
    """``_device_reason`` for ``cuda:<index>``, memoized: a GPU's capability and name, and whether
    the kernel module imports, do not change within a process (and cost a few us per call to ask)."""
    name = _ARCH_NAME[arch]
    if not torch.cuda.is_available():
        return f"{name} needs a CUDA GPU; torch sees none"
    major, minor = torch.cuda.get_device_capability(index)
    if major != _CC_MAJOR[arch]:
        gpu = torch.cuda.get_device_name(index)
        return f"{name} needs an SM {_CC_MAJOR[arch]}.x GPU; cuda:{index} ({gpu}) is SM {major}.{minor}"
    try:
        _kernel_class(arch)
    except ImportError as e:
        return f"{name} kernel module cannot be imported: {e}"
    return None


@lru_cache(maxsize=None)
def _supported_tile_shapes(arch: int, rank: int, head_dim: int) -> tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]:
    """``config.supported_tile_shapes`` as tuples, built once per (arch, rank, head dim), not per call."""
    return tuple((tuple(a), tuple(b)) for a, b in config.supported_tile_shapes(arch, rank, head_dim))


def _tile_shapes(args: Any, arch: int) -> tuple[tuple[int, ...], tuple[int, ...]] | str:
    """The (q, kv) tile shapes to use, or the reason the requested ones are not supported."""
    rank = args.params.rank
    head_dim = args.q.shape[-1]
    q_tile, kv_tile = args.q_tile_shape, args.kv_tile_shape
    if q_tile is None and kv_tile is None:  # the simulator's cheapest supported tiling (cached)
        if not _supported_tile_shapes(arch, rank, head_dim):
            return f"{_ARCH_NAME[arch]} has no tile shapes for rank {rank}, head dim {head_dim}"
        return tile_choice.choose_tile_shapes(arch, args.params, head_dim)
    if q_tile is None or kv_tile is None:
        return f"q_tile_shape={q_tile} and kv_tile_shape={kv_tile}: give both or neither"
    pair = (tuple(q_tile), tuple(kv_tile))
    supported = _supported_tile_shapes(arch, rank, head_dim)
    if pair not in supported:
        listed = ", ".join(f"{a}/{b}" for a, b in supported)
        return (
            f"{_ARCH_NAME[arch]} does not support q_tile_shape={pair[0]}, kv_tile_shape={pair[1]} "
            f"for rank {rank}, head dim {head_dim} (supported q/kv: {listed})"
        )
    return pair


@dataclass(frozen=True, eq=False)
class Plan:
    """A problem the ``arch`` kernel can run, with the tile shapes its check chose.

    Why: the check (:func:`plan`) and the launch (:meth:`run`) of one call share it, so the call
    is checked, and its tiles chosen, once -- not again when it launches.
    """

    args: Any
    arch: int
    q_tile_shape: tuple[int, ...]
    kv_tile_shape: tuple[int, ...]

    def run(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Launch: ``(out, lse)`` as :func:`forward` returns them; asynchronous."""
        out, lse, _ = _launch(self, count_tiles=False)
        return out, lse

    def for_args(self, args: Any) -> "Plan":
        """This plan for another call whose checks read the same values (``gna_cute.call_cache``:
        shapes, strides, dtypes, devices, alignment, parameters); ``None`` gives a plan holding no
        tensors."""
        return Plan(args, self.arch, self.q_tile_shape, self.kv_tile_shape)


def problem_plan(args: Any, arch: int) -> Plan | str:
    """The plan of ``args`` on ``arch``, or why the kernel cannot run it, looking at the problem
    only (not the device).

    Assumes ``args`` already passed the public argument validation (shapes, ranks, GNAParams).
    """
    name = _ARCH_NAME[arch]
    q, k, v = args.q, args.k, args.v
    if q.dtype not in SUPPORTED_DTYPES:
        return f"{name} supports float16 and bfloat16, got q.dtype={q.dtype}"
    if k.dtype != q.dtype or v.dtype != q.dtype:
        return f"{name} needs q, k, v of one dtype, got {q.dtype}, {k.dtype}, {v.dtype}"
    head_dim, head_dim_v = q.shape[-1], v.shape[-1]
    if head_dim not in SUPPORTED_HEAD_DIMS:
        return f"{name} supports head dim {SUPPORTED_HEAD_DIMS}, got {head_dim}"
    if head_dim_v != head_dim:
        return f"{name} needs the value head dim equal to the query/key head dim, got {head_dim_v} != {head_dim}"
    if args.additional_keys is not None or args.additional_values is not None:
        return f"{name} does not support additional_keys/additional_values"
    # Aligned strides here keep every per-group view of a split dim aligned (dilation_split).
    for t_name, t in (("q", q), ("k", k), ("v", v)):
        if problem := cute_tensors.layout_problem(t_name, t):
            return f"{name}: {problem}"
        if max(t.shape) > _INT32_MAX:
            return f"{name}: {t_name} has an extent over 2^31 - 1: {tuple(t.shape)}"
    tiles = _tile_shapes(args, arch)
    if isinstance(tiles, str):
        return tiles
    return Plan(args, arch, tuple(tiles[0]), tuple(tiles[1]))


def problem_reason(args: Any, arch: int) -> str | None:
    """Why the ``arch`` kernel cannot run ``args``, looking at the problem only (not the device)."""
    return _reason(problem_plan(args, arch))


def plan(args: Any, arch: int) -> Plan | str:
    """The plan that launches ``args`` on ``arch``, or the reason the kernel cannot run them."""
    if not args.q.is_cuda:
        return f"{_ARCH_NAME[arch]} runs on CUDA tensors; q is on {args.q.device}"
    return _device_reason(arch, args.q.device) or problem_plan(args, arch)


def can_run(args: Any, arch: int) -> str | None:
    """None when the ``arch`` kernel can run ``args``, else the reason it cannot."""
    return _reason(plan(args, arch))


def _reason(checked: Plan | str) -> str | None:
    return checked if isinstance(checked, str) else None


def _checked_plan(args: Any, arch: int) -> Plan:
    """:func:`plan`, raising ValueError with the reason when the kernel cannot run ``args``."""
    checked = plan(args, arch)
    if isinstance(checked, str):
        raise ValueError(checked)
    return checked


# ---------------------------------------------------------------------------------------------
# Compile
# ---------------------------------------------------------------------------------------------


def make_config(args: Any, arch: int, count_tiles: bool = False) -> FwdConfig:
    """The static configuration (compile-cache key) of ``args`` on ``arch``; args must be runnable.

    A dim whose dilation does not divide its size has dilation 1 here: it runs group by group
    (:mod:`dilation_split`), every group with this one config.
    """
    tiles = _tile_shapes(args, arch)
    if isinstance(tiles, str):
        raise ValueError(tiles)
    return _config(args, arch, tuple(tiles[0]), tuple(tiles[1]), count_tiles)


def _config(
    args: Any, arch: int, q_tile_shape: tuple[int, ...], kv_tile_shape: tuple[int, ...], count_tiles: bool
) -> FwdConfig:
    """:func:`make_config` with the tile shapes already chosen."""
    q = args.q
    return _config_of(
        arch, q.dtype, q.shape[-1], args.v.shape[-1], q_tile_shape, kv_tile_shape, args.params, count_tiles,
        _sm_count(q.device),
    )


def _sm_count(device: torch.device) -> int:
    """SMs of ``device`` (of the current CUDA device for a meta tensor; 0 without CUDA): the
    persistent CTA count is part of the compile-cache key."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
    elif torch.cuda.is_available():
        index = torch.cuda.current_device()
    else:
        return 0
    return _sm_count_of(index)


@lru_cache(maxsize=16)
def _sm_count_of(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


@lru_cache(maxsize=1024)
def _config_of(
    arch: int,
    dtype: torch.dtype,
    head_dim: int,
    head_dim_v: int,
    q_tile_shape: tuple[int, ...],
    kv_tile_shape: tuple[int, ...],
    p: Any,
    count_tiles: bool,
    sm_count: int,
) -> FwdConfig:
    """The config of a problem, cached: a repeated problem costs a lookup, not ~6 us of building."""
    cluster_dim, cluster_size, cluster_tail = tile_choice.choose_cluster(
        arch, p, q_tile_shape, kv_tile_shape, tile_choice.PRODUCT_MAX_CLUSTER, tile_choice.PRODUCT_CLUSTER_TAIL)
    mainloop = tile_choice.choose_mainloop(arch, p, q_tile_shape, kv_tile_shape)
    persistent = tile_choice.choose_persistent_ctas(arch, p, sm_count, q_tile_shape, kv_tile_shape, cluster_size)
    return FwdConfig(
        arch=arch,
        dtype=cute_tensors.dtype_name(dtype),
        head_dim=head_dim,
        head_dim_v=head_dim_v,
        q_tile_shape=q_tile_shape,
        kv_tile_shape=kv_tile_shape,
        kernel_size=p.kernel_size,
        stride=p.stride,
        dilation=dilation_split.kernel_dilation(p),
        is_causal=p.is_causal,
        count_tiles=count_tiles,
        mainloop=mainloop,
        cluster_dim=cluster_dim,
        cluster_size=cluster_size,
        cluster_tail=cluster_tail,
        persistent_ctas=persistent,
        tile_order=tile_choice.choose_tile_order(arch, p, q_tile_shape, kv_tile_shape),
        q_buffers=tile_choice.choose_q_buffers(arch, p, q_tile_shape, kv_tile_shape, persistent),
        early_stage_slices=tile_choice.choose_early_stage_slices(arch, mainloop),
        exp2_emulation=tile_choice.choose_exp2_emulation(arch, head_dim),
        kv_start_align=tile_choice.choose_kv_start_align(arch, p, q_tile_shape, kv_tile_shape, mainloop, persistent),
    )


@dataclass(frozen=True)
class CompileKey:
    """What one compiled kernel is specialized on: the kernel config and the calling convention."""

    cfg: FwdConfig
    tvm_ffi: bool


def _build(key: CompileKey) -> Any:
    """``cute.compile`` the kernel for ``key`` with placeholder tensors (no GPU needed)."""
    import cutlass
    import cutlass.cute as cute

    cfg = key.cfg
    rank = cfg.rank
    fake = cute_tensors.fake_tensor
    kernel = _kernel_class(cfg.arch)(cfg)
    return cute.compile(
        kernel,
        fake(cfg.dtype, rank + 3),  # q [B, *spatial, H, D]
        fake(cfg.dtype, rank + 3),  # k
        fake(cfg.dtype, rank + 3),  # v
        fake(cfg.dtype, rank + 3),  # out
        fake("float32", rank + 2, align=_LSE_ALIGN_BYTES),  # lse [B, *spatial, H]
        fake("int32", 2 * rank + 1),  # counts (2, *dilation, *tiles)
        cutlass.Float32(1.0),
        cute_tensors.fake_stream(key.tvm_ffi),
        options="--enable-tvm-ffi" if key.tvm_ffi else "",
    )


CACHE = compile_cache.KernelCache("fwd", _build, uses_tvm_ffi=lambda key: key.tvm_ffi)


def compile_key(cfg: FwdConfig) -> CompileKey:
    return CompileKey(cfg, cute_tensors.use_tvm_ffi())


def compiled_kernel(cfg: FwdConfig) -> Any:
    """The compiled kernel for ``cfg``: from memory, from disk, or compiled now."""
    return CACHE.get(compile_key(cfg))


def _warm_one(key: CompileKey) -> None:
    CACHE.get(key)


def warm(configs: Iterable[FwdConfig], workers: int | None = None) -> list[BaseException | None]:
    """Compile ``configs`` into the disk cache in parallel processes (per config: the error).

    For test sweeps and deployments that know their configurations ahead of time; the calls that
    follow load from disk instead of compiling.  Needs the disk cache enabled.
    """
    keys = [compile_key(c) for c in configs]
    todo = [k for k in dict.fromkeys(keys) if k not in CACHE]
    if workers is None:
        workers = max(1, min(len(todo), (os.cpu_count() or 2) - 1, 16))  # ~1.5 GB per process
    errors = dict(zip(todo, compile_cache.warm(_warm_one, todo, workers)))
    return [errors.get(k) for k in keys]


# ---------------------------------------------------------------------------------------------
# Launch
# ---------------------------------------------------------------------------------------------


def counts_shape(params: Any, q_tile_shape: tuple[int, ...]) -> tuple[int, ...]:
    """``(2, *dilation, *tiles)``: Q tiles per dim cover the longest dilation group, ceil(L/d)."""
    tiles = tuple(
        neighborhood.tiles_per_group(n, d, t)
        for n, d, t in zip(params.spatial_shape, params.dilation, q_tile_shape)
    )
    return (2, *params.dilation, *tiles)


def _launch(plan: Plan, count_tiles: bool) -> tuple[torch.Tensor, torch.Tensor, np.ndarray | None]:
    """Run the kernel (one launch per dilation group of split dims); counts only if ``count_tiles``.

    ``plan`` comes from :func:`plan`, so the problem is known to be runnable here.
    """
    args = plan.args
    # The tiles were chosen once, for the whole problem (every group's launch uses them).
    cfg = _config(args, plan.arch, plan.q_tile_shape, plan.kv_tile_shape, count_tiles)
    kernel = compiled_kernel(cfg)
    q, v = args.q, args.v
    out = torch.empty((*q.shape[:-1], v.shape[-1]), dtype=q.dtype, device=q.device)
    lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
    scale_log2 = args.scale * math.log2(math.e)
    parts = dilation_split.split(args, out, lse)
    part_counts = []
    with torch.cuda.device(q.device):
        unused = None if count_tiles else _unused_counts(q.device, cfg.rank)
        for part in parts:
            counts = unused
            if count_tiles:
                shape = counts_shape(part.args.params, cfg.q_tile_shape)
                counts = torch.zeros(shape, dtype=torch.int32, device=q.device)
            _call(kernel, part, counts, scale_log2)
            part_counts.append(counts)
    if not count_tiles:
        return out, lse, None
    total = np.zeros(counts_shape(args.params, cfg.q_tile_shape), dtype=np.int64)
    for part, counts in zip(parts, part_counts):  # .cpu() synchronizes: debug path only
        dilation_split.place_counts(total, part, counts.cpu().numpy().astype(np.int64))
    return out, lse, total


_UNUSED_COUNTS: dict[tuple[torch.device, int], torch.Tensor] = {}


def _unused_counts(device: torch.device, rank: int) -> torch.Tensor:
    """The counts argument of a kernel compiled without ``count_tiles``, one per (device, rank).

    Such a kernel never reads or writes it (``mCounts`` is touched only under
    ``const_expr(cfg.count_tiles)`` in sm90_fwd/sm100_fwd), so sharing it saves an allocation per
    call.  Not kept when first asked for inside a CUDA graph capture (it would live in its pool).
    """
    key = (device, rank)
    counts = _UNUSED_COUNTS.get(key)
    if counts is None:
        counts = torch.empty((1,) * (2 * rank + 1), dtype=torch.int32, device=device)
        if not (device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
            counts = _UNUSED_COUNTS.setdefault(key, counts)
    return counts


def _call(kernel: Any, part: dilation_split.GroupPart, counts: torch.Tensor, scale_log2: float) -> None:
    """One launch on torch's current stream, writing through ``part``'s out/lse views."""
    q, k, v = part.args.q, part.args.k, part.args.v
    if cute_tensors.use_tvm_ffi():  # tensors as they are; the stream is torch's current one
        kernel(_no_grad(q), _no_grad(k), _no_grad(v), part.out, part.lse, counts, scale_log2)
        return
    import cutlass

    to_cute = cute_tensors.to_cute
    kernel(
        to_cute(q), to_cute(k), to_cute(v), to_cute(part.out), to_cute(part.lse, align=_LSE_ALIGN_BYTES),
        to_cute(counts), cutlass.Float32(scale_log2), cute_tensors.current_stream(q.device),
    )  # fmt: skip


def _no_grad(t: torch.Tensor) -> torch.Tensor:
    """``t`` as DLPack can export it: detached only if it requires grad (a detach costs ~0.5 us)."""
    return t.detach() if t.requires_grad else t


def forward(args: Any, arch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out [B, *spatial, H, D_v] in q's dtype, lse [B, *spatial, H] fp32)``; asynchronous."""
    return _checked_plan(args, arch).run()


def tile_counts(args: Any, arch: int) -> np.ndarray:
    """Visited / full KV tiles per (dilation group, Q tile), as the kernel counted them.

    int64 ``(2, *dilation, *tiles)`` (team contract 4), the layout ``gna_cute.sim.tile_counts``
    returns; a problem run group by group has its launches' counts assembled into it.  Runs the
    kernel compiled with ``count_tiles=True`` and synchronizes.
    """
    _, _, counts = _launch(_checked_plan(args, arch), count_tiles=True)
    return counts


# ---------------------------------------------------------------------------------------------
# Contract 2: per-architecture entry points
# ---------------------------------------------------------------------------------------------


def available_sm90() -> str | None:
    return _device_reason(90, None)


def can_run_sm90(args: Any) -> str | None:
    return can_run(args, 90)


def plan_sm90(args: Any) -> Plan | str:
    return plan(args, 90)


def forward_sm90(args: Any) -> tuple[torch.Tensor, torch.Tensor]:
    return forward(args, 90)


def tile_counts_sm90(args: Any) -> np.ndarray:
    return tile_counts(args, 90)


SM100_STATUS = "compiled and SASS-checked for sm_100a on CPU only; not yet run on Blackwell hardware"


def available_sm100() -> str | None:
    reason = _device_reason(100, None)
    return None if reason is None else f"{reason} ({SM100_STATUS})"


def can_run_sm100(args: Any) -> str | None:
    return can_run(args, 100)


def plan_sm100(args: Any) -> Plan | str:
    return plan(args, 100)


def forward_sm100(args: Any) -> tuple[torch.Tensor, torch.Tensor]:
    return forward(args, 100)


def tile_counts_sm100(args: Any) -> np.ndarray:
    return tile_counts(args, 100)
