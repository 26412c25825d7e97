"""Argument validation, run before any compute, shared by the public API and the torch op.

Why one place: every entry point (``gna_cute.attention``, ``na1d/2d/3d``, ``torch.ops.gna_cute``,
the fake implementation under ``torch.compile``) must reject the same inputs with the same
messages.  Each error is a ValueError (bad value) or TypeError (bad type) naming the argument and
the offending value.  Only shapes, dtypes and devices are read, so it also runs on fake tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from .params import GNAParams

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@dataclass(frozen=True)
class CheckedArgs:
    """Normalized non-tensor arguments of one validated call."""

    params: GNAParams
    scale: float
    q_tile_shape: tuple[int, ...] | None
    kv_tile_shape: tuple[int, ...] | None


def check_attention_args(
    q: Any,
    k: Any,
    v: Any,
    kernel_size: Any,
    stride: Any = 1,
    dilation: Any = 1,
    is_causal: Any = False,
    scale: Any = None,
    additional_keys: Any = None,
    additional_values: Any = None,
    q_tile_shape: Any = None,
    kv_tile_shape: Any = None,
) -> CheckedArgs:
    """Validate everything; return the normalized parameters (scale resolved to a float)."""
    _check_qkv(q, k, v)
    params = GNAParams.make(tuple(q.shape[1:-2]), kernel_size, stride, dilation, is_causal)
    _check_extra(q, k, v, additional_keys, additional_values)
    tiles = _check_tiles(q_tile_shape, kv_tile_shape, params.rank)
    return CheckedArgs(params, _check_scale(scale, q.shape[-1]), *tiles)


def _describe(t: torch.Tensor) -> str:
    return f"shape {tuple(t.shape)}"


def _check_qkv(q: Any, k: Any, v: Any) -> None:
    # Runs on every call: plain comparisons of shapes (torch.Size is a tuple), no generators.
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    rank = q.dim()
    if rank not in (4, 5, 6):
        raise ValueError(
            f"q has rank {rank} ({_describe(q)}); expected 4, 5 or 6: [B, *spatial, H, D] with 1-3 spatial dims"
        )
    for name, t in (("k", k), ("v", v)):
        if t.dim() != rank:
            raise ValueError(f"{name} has rank {t.dim()} ({_describe(t)}), but q has rank {rank} ({_describe(q)})")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if 0 in t.shape:
            raise ValueError(f"{name} is empty ({_describe(t)}); every dimension must be >= 1")
    dtype, device = q.dtype, q.device
    if dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"q.dtype={dtype} is not supported; use float16, bfloat16 or float32")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != dtype:
            raise TypeError(f"{name}.dtype={t.dtype} differs from q.dtype={dtype}")
        if t.device != device:
            raise ValueError(f"{name}.device={t.device} differs from q.device={device}")
    outer = q.shape[:-2]
    for name, t in (("k", k), ("v", v)):
        if t.shape[:-2] != outer:
            raise ValueError(
                f"{name} batch/spatial dims {tuple(t.shape[:-2])} ({_describe(t)}) differ from "
                f"q's {tuple(outer)} ({_describe(q)})"
            )
    if k.shape[-1] != q.shape[-1]:
        raise ValueError(f"k head dim {k.shape[-1]} differs from q head dim {q.shape[-1]} (k {_describe(k)}, q {_describe(q)})")
    if v.shape[-2] != k.shape[-2]:
        raise ValueError(f"v has {v.shape[-2]} heads but k has {k.shape[-2]} (v {_describe(v)}, k {_describe(k)})")
    if q.shape[-2] % k.shape[-2] != 0:
        raise ValueError(
            f"q heads ({q.shape[-2]}) must be a multiple of k/v heads ({k.shape[-2]}) for GQA/MQA "
            f"(q {_describe(q)}, k {_describe(k)})"
        )


def _check_extra(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ek: Any, ev: Any) -> None:
    if ek is None and ev is None:
        return
    if ek is None or ev is None:
        given, missing = ("additional_keys", "additional_values") if ev is None else ("additional_values", "additional_keys")
        raise ValueError(f"{given} given without {missing}; pass both or neither")
    for name, t in (("additional_keys", ek), ("additional_values", ev)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} has rank {t.dim()} ({_describe(t)}); expected 4: [B, N_extra, H_kv, D]")
        if t.dtype != q.dtype:
            raise TypeError(f"{name}.dtype={t.dtype} differs from q.dtype={q.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name}.device={t.device} differs from q.device={q.device}")
        if t.shape[1] == 0:
            raise ValueError(f"{name} is empty ({_describe(t)}); N_extra must be >= 1")
    for name, t, ref, what in (
        ("additional_keys", ek, k, "k"),
        ("additional_values", ev, v, "v"),
    ):
        expected = (q.shape[0], ek.shape[1], ref.shape[-2], ref.shape[-1])
        if tuple(t.shape) != expected:
            raise ValueError(
                f"{name} {_describe(t)} must be [B, N_extra, H_kv, D] = {expected} "
                f"(batch of q, N_extra of additional_keys, heads and head dim of {what})"
            )


def _check_tile(name: str, value: Any, rank: int) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)):
        raise TypeError(f"{name}={value!r} must be a tuple of {rank} ints (one per spatial dim)")
    if len(value) != rank:
        raise ValueError(f"{name}={tuple(value)!r} has {len(value)} entries, expected {rank} (one per spatial dim)")
    for x in value:
        if not isinstance(x, int) or isinstance(x, bool):
            raise TypeError(f"{name}={tuple(value)!r}: every entry must be int, got {x!r}")
        if x < 1:
            raise ValueError(f"{name}={tuple(value)!r}: every entry must be >= 1, got {x}")
    return tuple(value)


def _check_tiles(q_tile: Any, kv_tile: Any, rank: int) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None]:
    if q_tile is None and kv_tile is None:
        return None, None
    if q_tile is None:
        raise ValueError(f"kv_tile_shape={kv_tile!r} given without q_tile_shape; pass both or neither")
    if kv_tile is None:
        raise ValueError(f"q_tile_shape={q_tile!r} given without kv_tile_shape; pass both or neither")
    return _check_tile("q_tile_shape", q_tile, rank), _check_tile("kv_tile_shape", kv_tile, rank)


def _check_scale(scale: Any, head_dim: int) -> float:
    if scale is None:
        return float(head_dim) ** -0.5
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a float or None, got {scale!r} ({type(scale).__name__})")
    if not math.isfinite(scale):
        raise ValueError(f"scale={scale!r} must be finite")
    return float(scale)


def check_backend_name(backend: Any, names: Sequence[str]) -> str:
    """``backend`` must be ``"auto"`` or one of ``names``."""
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, got {backend!r}")
    if backend != "auto" and backend not in names:
        raise ValueError(f"backend={backend!r} is not one of {['auto', *names]}")
    return backend
