"""``torch.ops.gna_cute.attention``: the GNA forward as a torch custom op.

Why a custom op: ``torch.compile(fullgraph=True)`` treats it as one opaque node (no graph break
into the backend choice or the kernel launch), and the fake implementation gives output shapes
and dtypes without running anything.  Both implementations validate first, so a direct caller of
``torch.ops.gna_cute.attention`` gets the same errors as ``gna_cute.attention``.
"""

from __future__ import annotations

from typing import Optional

import torch

from .backends import AttentionArgs, run
from .checks import CheckedArgs, check_attention_args


def _check(q, k, v, kernel_size, stride, dilation, is_causal, scale, ek, ev, q_tile, kv_tile) -> CheckedArgs:
    return check_attention_args(
        q, k, v, _tuple(kernel_size), _tuple(stride), _tuple(dilation), _tuple(is_causal), scale, ek, ev,
        _tuple(q_tile), _tuple(kv_tile),
    )  # fmt: skip


def _tuple(x):
    """The op receives lists; GNAParams and the tile checks want tuples (hashable) of plain ints.

    Under ``torch.compile``, an int list argument whose values changed since the last compile is
    made symbolic (automatic dynamic); the neighborhood is static, so each ``SymInt`` is
    specialized to its value here (``int()`` adds the guard that recompiles on a new value).
    """
    if not isinstance(x, list):
        return x
    return tuple(int(v) if isinstance(v, torch.SymInt) else v for v in x)


@torch.library.custom_op("gna_cute::attention", mutates_args=())
def attention_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kernel_size: list[int],
    stride: list[int],
    dilation: list[int],
    is_causal: list[bool],
    scale: Optional[float] = None,
    additional_keys: Optional[torch.Tensor] = None,
    additional_values: Optional[torch.Tensor] = None,
    backend: str = "auto",
    q_tile_shape: Optional[list[int]] = None,
    kv_tile_shape: Optional[list[int]] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GNA forward: ``(out [B, *spatial, H, D_v] in q.dtype, lse [B, *spatial, H] fp32)``."""
    checked = _check(
        q, k, v, kernel_size, stride, dilation, is_causal, scale,
        additional_keys, additional_values, q_tile_shape, kv_tile_shape,
    )  # fmt: skip
    args = AttentionArgs(
        q, k, v, checked.params, checked.scale, additional_keys, additional_values,
        checked.q_tile_shape, checked.kv_tile_shape,
    )  # fmt: skip
    return run(args, backend)


@attention_op.register_fake
def _attention_fake(
    q, k, v, kernel_size, stride, dilation, is_causal, scale=None,
    additional_keys=None, additional_values=None, backend="auto", q_tile_shape=None, kv_tile_shape=None,
):  # fmt: skip
    _check(
        q, k, v, kernel_size, stride, dilation, is_causal, scale,
        additional_keys, additional_values, q_tile_shape, kv_tile_shape,
    )  # fmt: skip
    out = q.new_empty((*q.shape[:-1], v.shape[-1]))
    lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
    return out, lse
