"""Benchmark providers: the implementations timed side by side on the same tensors.

A provider has a ``name``, a ``role`` (``ours``, ``baseline`` = the cuDNN denominator, ``peer`` =
the competitors "speedup vs best peer" is taken over, ``dense-peer``, ``reference``),
``available() -> reason | None`` (device / package level, cheap, no GPU work), ``can_run(problem)
-> reason | None`` (static) and ``setup(problem, q, k, v, scale) -> Prepared``.  ``setup`` does
everything that is not the measured call (layout views, token reordering, block tables, mask
builds) and may raise :class:`Refused`.  Inputs are heads-last ``[B, *spatial, H, D]``.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .problems import Problem


class Refused(Exception):
    """A provider cannot run a problem; the message is the reason shown in the table."""


@dataclass
class Prepared:
    """What the runner times and checks for one provider on one problem."""

    fn: Callable[[], Any]  # the timed call
    output: Callable[[], torch.Tensor]  # heads-last output of the last call (outside timing)
    compare: bool = True  # whether the output is GNA's (False: e.g. dense attention on a GNA problem)
    error_region: tuple[slice, ...] | None = None  # spatial region where the output is exact
    info: dict = field(default_factory=dict)  # shown in the table's notes and stored in the JSON


class _Holder:
    """Keeps the last output so ``Prepared.output`` can read it after timing."""

    def __init__(self) -> None:
        self.value: Any = None

    def wrap(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        def call() -> Any:
            self.value = fn()
            return self.value

        return call


def _cuda_reason() -> str | None:
    return None if torch.cuda.is_available() else "no CUDA device"


def _flat(t: torch.Tensor, rank: int) -> torch.Tensor:
    """``[B, *spatial, H, D]`` -> ``[B, N, H, D]`` view."""
    return t.flatten(1, rank)


# ------------------------------------------------------------------------------------------------
# cuDNN dense (the denominator)
# ------------------------------------------------------------------------------------------------


class CudnnDense:
    name = "cudnn-dense"
    role = "baseline"

    def available(self) -> str | None:
        if reason := _cuda_reason():
            return reason
        if not torch.backends.cudnn.is_available():
            return "torch has no cuDNN"
        return None

    def can_run(self, problem: Problem) -> str | None:
        return None

    def setup(self, problem: Problem, q, k, v, scale: float) -> Prepared:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        from torch.nn.functional import scaled_dot_product_attention as sdpa

        # [B, H, N, D] views of the heads-last tensors: no copies.
        qb, kb, vb = (_flat(t, problem.rank).transpose(1, 2) for t in (q, k, v))
        holder = _Holder()

        def call() -> torch.Tensor:
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                return sdpa(qb, kb, vb, scale=scale)

        def output() -> torch.Tensor:
            return holder.value.transpose(1, 2).reshape(q.shape[:-1] + (v.shape[-1],))

        return Prepared(holder.wrap(call), output, compare=problem.is_dense,
                        info={"layout": "[B,H,N,D] views of heads-last"})


# ------------------------------------------------------------------------------------------------
# FlashAttention-4 dense and native local window
# ------------------------------------------------------------------------------------------------


def _fa4_reason() -> str | None:
    if reason := _cuda_reason():
        return reason
    if importlib.util.find_spec("flash_attn") is None:
        return "flash-attn-4 (flash_attn.cute) is not installed"
    try:
        import flash_attn.cute.interface  # noqa: F401
    except Exception as e:  # a broken install says why
        return f"flash_attn.cute cannot be imported: {type(e).__name__}: {e}"
    return None


class FA4Dense:
    name = "fa4-dense"
    role = "dense-peer"

    def available(self) -> str | None:
        return _fa4_reason()

    def can_run(self, problem: Problem) -> str | None:
        return None if problem.is_dense else "dense attention only (shown on the dense rows)"

    def setup(self, problem: Problem, q, k, v, scale: float) -> Prepared:
        from flash_attn.cute.interface import _flash_attn_fwd

        qf, kf, vf = (_flat(t, problem.rank) for t in (q, k, v))
        out = torch.empty_like(qf)
        fn = lambda: _flash_attn_fwd(qf, kf, vf, softmax_scale=scale, out=out, return_lse=True)  # noqa: E731
        return Prepared(fn, lambda: out.view(q.shape))


def _local_window(problem: Problem) -> tuple[int, int] | str:
    """FA4 ``window_size`` for 1D neighborhood attention, or why it does not apply."""
    if problem.rank != 1:
        return "native local window is 1D only"
    if problem.is_dense:
        return "dense problem (see fa4-dense)"
    if problem.stride != (1,) or problem.dilation != (1,):
        return "native local window has no stride or dilation"
    w = problem.kernel_size[0]
    if problem.is_causal[0]:
        return (w - 1, 0)
    return (w // 2, w - w // 2 - 1)


class FA4Local:
    """FA4's sliding window: exact for causal 1D, and for non-causal 1D away from the borders
    (sliding windows are truncated at the borders, GNA windows are shifted inward)."""

    name = "fa4-local"
    role = "peer"

    def available(self) -> str | None:
        return _fa4_reason()

    def can_run(self, problem: Problem) -> str | None:
        w = _local_window(problem)
        return w if isinstance(w, str) else None

    def setup(self, problem: Problem, q, k, v, scale: float) -> Prepared:
        from flash_attn.cute.interface import _flash_attn_fwd

        left, right = _local_window(problem)
        qf, kf, vf = (_flat(t, 1) for t in (q, k, v))
        out = torch.empty_like(qf)

        def call() -> Any:
            return _flash_attn_fwd(qf, kf, vf, softmax_scale=scale, window_size_left=left,
                                   window_size_right=right, out=out, return_lse=True)

        # Causal (w-1, 0) equals GNA causal s=1 everywhere; otherwise compare away from borders.
        n = problem.spatial_shape[0]
        region = None if problem.is_causal[0] else (slice(left, n - right),)
        return Prepared(call, lambda: out.view(q.shape), error_region=region,
                        info={"window_size": f"({left},{right})"})


# ------------------------------------------------------------------------------------------------
# gna_cute (ours) and the reference backend
# ------------------------------------------------------------------------------------------------


def _our_arch() -> int | None:
    if not torch.cuda.is_available():
        return None
    major = torch.cuda.get_device_capability()[0]
    return {9: 90, 10: 100}.get(major)


def launch_info(q, k, v, problem: Problem, scale: float, arch: int, q_tile=None, kv_tile=None) -> str:
    """How our kernel launches ``problem`` (the ``FwdConfig`` the host layer builds): mainloop,
    one CTA per item or persistent CTAs, clusters, work-item tile order -- recorded with each
    timing so a result says which kernel variant produced it."""
    from gna_cute.backends import AttentionArgs
    from gna_cute.kernels import interface

    args = AttentionArgs(q=q, k=k, v=v, params=problem.params, scale=scale, q_tile_shape=q_tile,
                         kv_tile_shape=kv_tile)
    cfg = interface.make_config(args, arch)
    parts = [cfg.mainloop, f"{cfg.persistent_ctas} persistent CTAs" if cfg.persistent_ctas else "one CTA per item"]
    if cfg.cluster_dim >= 0:
        parts.append(f"clusters of {cfg.cluster_size} along dim {cfg.cluster_dim}" + " with tail" * cfg.cluster_tail)
    if cfg.tile_order:
        parts.append("tile order " + ",".join(map(str, cfg.tile_order)))
    if cfg.q_buffers == 1:
        parts.append("one Q buffer")
    if cfg.early_stage_slices:
        parts.append("early stage slices")
    if cfg.exp2_emulation:
        parts.append(f"1 in {cfg.exp2_emulation} exp2 on the FMA pipe")
    if cfg.kv_start_align:
        parts.append("full tiles first" + (f" from {cfg.kv_start_align}-aligned tiles" if cfg.kv_start_align > 1 else ""))
    return ", ".join(parts)


class GnaCute:
    name = "gna_cute"
    role = "ours"

    def available(self) -> str | None:
        if reason := _cuda_reason():
            return reason
        if _our_arch() is None:
            return f"no gna_cute kernel for SM {torch.cuda.get_device_capability()}"
        import gna_cute

        if not hasattr(gna_cute, "attention"):
            return "gna_cute.attention is not available yet"
        try:
            from gna_cute.kernels import interface
        except ImportError as e:
            return f"gna_cute.kernels.interface cannot be imported: {e}"
        return getattr(interface, f"available_sm{_our_arch()}")()

    def can_run(self, problem: Problem) -> str | None:
        return None

    def setup(self, problem: Problem, q, k, v, scale: float) -> Prepared:
        import gna_cute

        arch = _our_arch()
        backend = {90: "sm90", 100: "sm100"}[arch]
        q_tile, kv_tile = problem.q_tile_shape, problem.kv_tile_shape  # None: the kernel picks
        shown = problem.tile_shapes(arch)
        p = problem.params
        holder = _Holder()

        def call() -> torch.Tensor:
            return gna_cute.attention(q, k, v, kernel_size=p.kernel_size, stride=p.stride,
                                      dilation=p.dilation, is_causal=p.is_causal, scale=scale,
                                      backend=backend, q_tile_shape=q_tile, kv_tile_shape=kv_tile)

        _refuse_on_error(call)
        return Prepared(holder.wrap(call), lambda: holder.value,
                        info={"backend": backend, "tiles": f"{_x(shown[0])}/{_x(shown[1])}"
                              + ("" if q_tile else " (kernel default)"),
                              "launch": launch_info(q, k, v, problem, scale, arch, q_tile, kv_tile)})


class GnaCuteAuto(GnaCute):
    """Ours with the tiles the kernel picks itself (simulator-ranked), where they differ from the
    problem's named tiles; the tile bound of the chosen tiles is in the notes."""

    name = "gna_cute-auto"

    def can_run(self, problem: Problem) -> str | None:
        arch = _our_arch() or 90
        if problem.q_tile_shape is None or problem.chosen_tile_shapes(arch) == problem.tile_shapes(arch):
            return "the kernel's own tile choice equals the problem's tiles (see gna_cute)"
        return None

    def setup(self, problem: Problem, q, k, v, scale: float) -> Prepared:
        import gna_cute

        arch = _our_arch()
        backend = {90: "sm90", 100: "sm100"}[arch]
        q_tile, kv_tile = problem.chosen_tile_shapes(arch)
        bound = problem.stats(q_tile, kv_tile).tile_bound
        p = problem.params

        def call() -> torch.Tensor:
            return gna_cute.attention(q, k, v, kernel_size=p.kernel_size, stride=p.stride,
                                      dilation=p.dilation, is_causal=p.is_causal, scale=scale,
                                      backend=backend)

        holder = _Holder()
        _refuse_on_error(call)
        return Prepared(holder.wrap(call), lambda: holder.value,
                        info={"backend": backend, "tiles": f"{_x(q_tile)}/{_x(kv_tile)} (kernel's choice)",
                              "tile_bound": f"{bound:.2f}", "launch": launch_info(q, k, v, problem, scale, arch)})


class Reference:
    """The package's exact reference backend; timed on small problems only."""

    name = "reference"
    role = "reference"
    max_flops = 2e10

    def available(self) -> str | None:
        return _cuda_reason()

    def can_run(self, problem: Problem) -> str | None:
        if problem.useful_flops > self.max_flops:
            return f"only timed on small problems (<= {self.max_flops:.0e} useful FLOPs); used for the error column"
        return None

    def setup(self, problem: Problem, q, k, v, scale: float) -> Prepared:
        holder = _Holder()
        fn = lambda: reference_output(problem, q, k, v, scale)  # noqa: E731
        return Prepared(holder.wrap(fn), lambda: holder.value)


def reference_output(problem: Problem, q, k, v, scale: float) -> torch.Tensor:
    """GNA output of the package's reference (the ground truth of the error column)."""
    from gna_cute.reference import reference_forward

    return reference_forward(q, k, v, problem.params, scale)[0]


def _refuse_on_error(call: Callable[[], Any]) -> None:
    """First call (compilation included); argument/support errors become refusals."""
    try:
        call()
    except (ValueError, TypeError, NotImplementedError) as e:
        raise Refused(f"{type(e).__name__}: {e}") from e


def _x(t: tuple[int, ...]) -> str:
    return "x".join(map(str, t))


# ------------------------------------------------------------------------------------------------
# Registry
# ------------------------------------------------------------------------------------------------


def all_providers() -> list[Any]:
    from .fa4_gna import FA4Gna
    from .flex_gna import FlexGna

    return [CudnnDense(), FA4Dense(), FA4Local(), FA4Gna(), FlexGna(), GnaCute(), GnaCuteAuto(), Reference()]


def select(names: str | None) -> list[Any]:
    """Providers by comma-separated names (all when None); unknown names are a ValueError."""
    providers = all_providers()
    if not names:
        return providers
    by_name = {p.name: p for p in providers}
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        raise ValueError(f"--providers: unknown {unknown}; known: {sorted(by_name)}")
    if "cudnn-dense" not in wanted:
        wanted.insert(0, "cudnn-dense")  # every speedup is relative to it
    return [by_name[n] for n in wanted]
