"""Public entry point ``gna_cute.attention``: check arguments, then call the torch op.

Layering: this function validates (so errors surface before anything is dispatched, with the
user's own argument spelling), then calls ``torch.ops.gna_cute.attention`` (which picks the backend
and runs it) when traced by torch.compile or when an input needs a gradient; in plain eager calls
it runs the op's implementation directly, saving the op's dispatch cost, and an eager call that
repeats an earlier call's signature skips the checks and the choice it already passed
(``call_cache``).
"""

from __future__ import annotations

from typing import Sequence, Union

import torch

from . import call_cache, ops  # noqa: F401  (ops registers torch.ops.gna_cute.attention)
from .backends import BACKEND_NAMES, AttentionArgs, choose, execute
from .checks import check_attention_args, check_backend_name

IntOrTuple = Union[int, Sequence[int]]
BoolOrTuple = Union[bool, Sequence[bool]]


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kernel_size: IntOrTuple,
    stride: IntOrTuple = 1,
    dilation: IntOrTuple = 1,
    is_causal: BoolOrTuple = False,
    scale: float | None = None,
    return_lse: bool = False,
    additional_keys: torch.Tensor | None = None,
    additional_values: torch.Tensor | None = None,
    backend: str = "auto",
    q_tile_shape: Sequence[int] | None = None,
    kv_tile_shape: Sequence[int] | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Generalized neighborhood attention (forward) on heads-last tensors.

    q ``[B, *spatial, H, D]``, k ``[B, *spatial, H_kv, D]``, v ``[B, *spatial, H_kv, D_v]`` with
    1-3 spatial dims; per-dim ``kernel_size``/``stride``/``dilation``/``is_causal`` (an int/bool
    broadcasts).  ``scale`` defaults to ``D ** -0.5``.  Extra KV tokens
    ``[B, N_extra, H_kv, D(_v)]`` are seen by every query under the same softmax.
    ``backend``: ``"auto"`` (first of sm100, sm90, reference that can run) or one of those names.
    Returns ``out [B, *spatial, H, D_v]`` (q's dtype), and ``lse [B, *spatial, H]`` (fp32) when
    ``return_lse``.  Semantics: docs/semantics.md.
    """
    eager = _eager_without_grad(q, k, v, additional_keys, additional_values)
    key = None
    if eager and additional_keys is None and additional_values is None:
        # A repeated signature: its checks passed and its backend was chosen before (call_cache).
        key = call_cache.signature(q, k, v, kernel_size, stride, dilation, is_causal, scale, backend,
                                   q_tile_shape, kv_tile_shape)  # fmt: skip
        hit = None if key is None else call_cache.get(key)
        if hit is not None:
            _check_return_lse(return_lse)
            checked, launch = hit
            out, lse = launch(AttentionArgs(q, k, v, checked.params, checked.scale, None, None,
                                            checked.q_tile_shape, checked.kv_tile_shape))  # fmt: skip
            return (out, lse) if return_lse else out
    checked = check_attention_args(
        q, k, v, kernel_size, stride, dilation, is_causal, scale,
        additional_keys, additional_values, q_tile_shape, kv_tile_shape,
    )  # fmt: skip
    check_backend_name(backend, BACKEND_NAMES)
    _check_return_lse(return_lse)
    p = checked.params
    if eager:
        # Same implementation as the op's, minus its dispatch layers and second argument check:
        # about half of the host time per call (bench host-us column).
        args = AttentionArgs(
            q, k, v, p, checked.scale, additional_keys, additional_values,
            checked.q_tile_shape, checked.kv_tile_shape,
        )  # fmt: skip
        choice = choose(args, backend)
        out, lse = execute(choice, args)
        if key is not None:
            call_cache.put(key, checked, choice)
    else:  # traced, or autograd asked for: the op (graph node; backward raises a clear error)
        out, lse = torch.ops.gna_cute.attention(
            q, k, v, list(p.kernel_size), list(p.stride), list(p.dilation), list(p.is_causal),
            checked.scale, additional_keys, additional_values, backend,
            _list(checked.q_tile_shape), _list(checked.kv_tile_shape),
        )  # fmt: skip
    return (out, lse) if return_lse else out


def _check_return_lse(return_lse: object) -> None:
    if not isinstance(return_lse, bool):
        raise TypeError(f"return_lse must be a bool, got {return_lse!r}")


def _eager_without_grad(*tensors: torch.Tensor | None) -> bool:
    """Not being traced by torch.compile, and no input needs a gradient."""
    if torch.compiler.is_compiling():
        return False
    if not torch.is_grad_enabled():
        return True
    return not any(getattr(t, "requires_grad", False) for t in tensors)  # non-tensors: the checks say why


def _list(x: tuple[int, ...] | None) -> list[int] | None:
    return None if x is None else list(x)
