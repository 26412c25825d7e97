"""NATTEN-compatible ``na1d`` / ``na2d`` / ``na3d`` (NATTEN 0.21 argument names and order).

Why: a NATTEN user switches by changing the import.  Arguments that only tune NATTEN's own
kernels or its backward pass (``attention_kwargs``, ``backward_*``, ``run_persistent_kernel``,
``kernel_schedule``, ``torch_compile``) are accepted and ignored: this package is forward-only
and chooses its own kernels.  ``backend=None`` means ``"auto"``; otherwise one of our names.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from .api import BoolOrTuple, IntOrTuple, attention


def _natten_entry(rank: int, layout: str):  # return type left to inference: IDEs then see the signature
    """``na{rank}d`` with NATTEN's exact signature, written once for all three ranks.

    Why a factory: the three entry points differ only in the rank they check; NATTEN users and
    their IDEs need the real parameter list (``inspect.signature``), which this def carries.
    """

    def na(
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kernel_size: IntOrTuple,
        stride: IntOrTuple = 1,
        dilation: IntOrTuple = 1,
        is_causal: BoolOrTuple = False,
        scale: float | None = None,
        additional_keys: torch.Tensor | None = None,
        additional_values: torch.Tensor | None = None,
        attention_kwargs: dict | None = None,
        backend: str | None = None,
        q_tile_shape: Sequence[int] | None = None,
        kv_tile_shape: Sequence[int] | None = None,
        backward_q_tile_shape: Any = None,
        backward_kv_tile_shape: Any = None,
        backward_kv_splits: Any = None,
        backward_use_pt_reduction: bool = False,
        run_persistent_kernel: bool = True,
        kernel_schedule: Any = None,
        torch_compile: bool = False,
        return_lse: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if isinstance(query, torch.Tensor) and query.dim() != rank + 3:
            raise ValueError(
                f"na{rank}d expects query of rank {rank + 3} ([B, {rank} spatial dims, H, D]), "
                f"got rank {query.dim()} (shape {tuple(query.shape)})"
            )
        return attention(
            query, key, value, kernel_size, stride, dilation, is_causal, scale, return_lse,
            additional_keys, additional_values, "auto" if backend is None else backend,
            q_tile_shape, kv_tile_shape,
        )  # fmt: skip

    na.__name__ = na.__qualname__ = f"na{rank}d"
    na.__doc__ = f"{rank}D GNA on ``{layout}``; see :func:`gna_cute.attention`."
    return na


na1d = _natten_entry(1, "[B, L, H, D]")
na2d = _natten_entry(2, "[B, X, Y, H, D]")
na3d = _natten_entry(3, "[B, X, Y, Z, H, D]")
