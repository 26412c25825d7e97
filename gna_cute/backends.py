"""Backends behind one ordered ``can_run`` chain: ``sm100``, ``sm90``, ``reference``.

Why a chain of refusals: a user (or ``gna-cute env``) can always ask why a faster backend was not
picked, and ``backend="auto"`` takes the first one that can run.  Kernel backends import
``gna_cute.kernels.interface`` lazily, so this module works on machines without a GPU or CuTe DSL;
an import failure simply becomes the refusal reason.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import sys
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch

from .merge import dense_attention, merge_by_lse
from .params import GNAParams
from .reference import reference_forward


@dataclass(frozen=True, eq=False)
class AttentionArgs:
    """One validated GNA call, as every backend receives it (tensors heads-last)."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    params: GNAParams
    scale: float
    additional_keys: torch.Tensor | None = None
    additional_values: torch.Tensor | None = None
    q_tile_shape: tuple[int, ...] | None = None
    kv_tile_shape: tuple[int, ...] | None = None

    @property
    def has_extra_kv(self) -> bool:
        return self.additional_keys is not None

    def without_extra_kv(self) -> "AttentionArgs":
        return dataclasses.replace(self, additional_keys=None, additional_values=None)


Launch = Callable[[], tuple[torch.Tensor, torch.Tensor]]
Run = Callable[[AttentionArgs], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Prepared:
    """A backend's launch of one checked call, and (``run``, or None) the same launch for any call
    whose checks read the same values.  ``run`` holds no tensors: ``gna_cute.call_cache`` keeps it
    for the eager calls that repeat a signature."""

    launch: Launch
    run: Run | None = None

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.launch()


@dataclass(frozen=True)
class Backend:
    """A named implementation: ``can_run``/``available`` return None or the reason they refuse.

    ``prepare`` (optional) checks like ``can_run`` but returns, instead of None, the launch of the
    checked call: what the check worked out (e.g. tile shapes) is not worked out again to run it.
    """

    name: str
    can_run: Callable[[AttentionArgs], str | None]
    forward: Callable[[AttentionArgs], tuple[torch.Tensor, torch.Tensor]]
    available: Callable[[], str | None]
    prepare: Callable[[AttentionArgs], str | Launch] | None = None

    def check(self, args: AttentionArgs) -> str | Launch:
        """The reason this backend refuses ``args``, or the call that runs them."""
        if self.prepare is not None:
            return self.prepare(args)
        reason = self.can_run(args)
        return reason if reason is not None else Prepared(functools.partial(self.forward, args), self.forward)


_INTERFACE = "gna_cute.kernels.interface"


def _kernel_function(arch: str, what: str):
    """``gna_cute.kernels.interface.<what>_<arch>``, or the reason it cannot be had."""
    interface = sys.modules.get(_INTERFACE)  # once imported: no import machinery per call (~2 us)
    if interface is None:
        try:
            interface = importlib.import_module(_INTERFACE)
        except ImportError as exc:
            return None, f"gna_cute.kernels.interface cannot be imported: {exc}"
    fn = getattr(interface, f"{what}_{arch}", None)
    if fn is None:
        return None, f"gna_cute.kernels.interface has no {what}_{arch}"
    return fn, None


def _kernel_backend(arch: str) -> Backend:
    def available() -> str | None:
        fn, reason = _kernel_function(arch, "available")
        return reason if fn is None else fn()

    def can_run(args: AttentionArgs) -> str | None:
        fn, reason = _kernel_function(arch, "can_run")
        return reason if fn is None else fn(args)

    def forward(args: AttentionArgs) -> tuple[torch.Tensor, torch.Tensor]:
        fn, reason = _kernel_function(arch, "forward")
        if fn is None:
            raise RuntimeError(reason)
        return fn(args)

    def prepare(args: AttentionArgs) -> str | Launch:
        fn, reason = _kernel_function(arch, "plan")
        if fn is None:
            return reason
        plan = fn(args)
        return plan if isinstance(plan, str) else Prepared(plan.run, functools.partial(_run_plan, plan.for_args(None)))

    return Backend(arch, can_run, forward, available, prepare)


def _run_plan(template, args: AttentionArgs) -> tuple[torch.Tensor, torch.Tensor]:
    """A kernel plan (its tiles) run on ``args``, a call of the signature it was made for."""
    return template.for_args(args).run()


def _reference_forward(args: AttentionArgs) -> tuple[torch.Tensor, torch.Tensor]:
    return reference_forward(
        args.q, args.k, args.v, args.params, args.scale, args.additional_keys, args.additional_values
    )


REFERENCE = Backend("reference", lambda args: None, _reference_forward, lambda: None)
BACKENDS: tuple[Backend, ...] = (_kernel_backend("sm100"), _kernel_backend("sm90"), REFERENCE)
BACKEND_NAMES: tuple[str, ...] = tuple(b.name for b in BACKENDS)


def get_backend(name: str) -> Backend:
    for b in BACKENDS:
        if b.name == name:
            return b
    raise ValueError(f"backend={name!r} is not one of {['auto', *BACKEND_NAMES]}")


@dataclass(frozen=True)
class Choice:
    """The backend picked for a call, and whether extra KV tokens are merged outside it.

    ``launch`` runs the backend on the call it was chosen for (``args``; without its extra KV
    tokens when they are merged), as that backend's check prepared it.
    """

    backend: Backend
    merge_extra: bool = False
    launch: Launch | None = field(default=None, repr=False, compare=False)
    args: AttentionArgs | None = field(default=None, repr=False, compare=False)


def _checked(backend: Backend, args: AttentionArgs) -> tuple[str | Launch, bool]:
    """``(reason or launch, merge_extra)``: can ``backend`` run ``args``, directly or by merging?

    A kernel that refuses only because of extra KV tokens still runs: the dispatch layer merges a
    dense attention over those tokens by LSE.
    """
    checked = backend.check(args)
    if not isinstance(checked, str) or not args.has_extra_kv:
        return checked, False
    without = backend.check(args.without_extra_kv())
    if not isinstance(without, str):
        return without, True
    return checked, False


def refusal(backend: Backend, args: AttentionArgs) -> tuple[str | None, bool]:
    """``(reason or None, merge_extra)``: can ``backend`` run ``args``, directly or by merging?"""
    checked, merge = _checked(backend, args)
    return (checked if isinstance(checked, str) else None), merge


_warned_fallback = False


def choose(args: AttentionArgs, name: str = "auto") -> Choice:
    """Pick a backend; an explicit name that cannot run raises ValueError with its reason."""
    global _warned_fallback
    if name != "auto":
        backend = get_backend(name)
        checked, merge = _checked(backend, args)
        if isinstance(checked, str):
            raise ValueError(f"backend={name!r} cannot run this problem: {checked}")
        return Choice(backend, merge, checked, args)
    reasons = []
    for backend in BACKENDS:
        checked, merge = _checked(backend, args)
        if not isinstance(checked, str):
            if backend is REFERENCE and reasons and not _warned_fallback:
                _warned_fallback = True
                warnings.warn(
                    "gna_cute: no kernel backend can run this problem, using the (slow) reference: "
                    + "; ".join(reasons)
                    + " (warned once)",
                    stacklevel=3,
                )
            return Choice(backend, merge, checked, args)
        reasons.append(f"{backend.name}: {checked}")
    raise AssertionError("the reference backend always runs")  # pragma: no cover


def execute(choice: Choice, args: AttentionArgs) -> tuple[torch.Tensor, torch.Tensor]:
    """Run an already chosen backend (merging extra KV tokens by LSE when it needs that).

    The choice's prepared launch is used only for the very ``args`` it was chosen for; any other
    ``args`` go through the backend's ``forward`` (which checks them).
    """
    prepared = choice.launch is not None and choice.args is args
    if not choice.merge_extra:
        return choice.launch() if prepared else choice.backend.forward(args)
    out, lse = choice.launch() if prepared else choice.backend.forward(args.without_extra_kv())
    extra_out, extra_lse = dense_attention(args.q, args.additional_keys, args.additional_values, args.scale)
    return merge_by_lse(out, lse, extra_out, extra_lse)


def run(args: AttentionArgs, name: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Choose and run: ``(out, lse)``."""
    return execute(choose(args, name), args)


def why_not(args: AttentionArgs) -> dict[str, str | None]:
    """Every backend's refusal reason for ``args`` (None = can run)."""
    return {b.name: refusal(b, args)[0] for b in BACKENDS}
