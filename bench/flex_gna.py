"""FlexAttention with the exact GNA ``mask_mod``, on the tiled token order.

Flex builds its block mask by evaluating the ``mask_mod`` (``create_block_mask``); that build is
timed on its own and reported in the notes, never inside the kernel time.  The token order and
tile shape are the same as the FA4 peer's (each 128-token block one multi-dim tile), which is what
makes the block mask sparse for multi-dim windows.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch

from .problems import Problem
from .providers import Prepared, Refused, _cuda_reason, _x
from .tiled_order import Reorder, TiledOrder, best_tile_shape, gna_allowed

BLOCK = 128

_COMPILED: list[Callable] = []


def _tmin(a: Any, b: Any) -> Any:
    if isinstance(a, int) and isinstance(b, int):
        return min(a, b)
    if isinstance(b, int):
        return torch.clamp(a, max=b)
    if isinstance(a, int):
        return torch.clamp(b, max=a)
    return torch.minimum(a, b)


def _tmax(a: Any, b: Any) -> Any:
    if isinstance(a, int) and isinstance(b, int):
        return max(a, b)
    if isinstance(b, int):
        return torch.clamp(a, min=b)
    if isinstance(a, int):
        return torch.clamp(b, min=a)
    return torch.maximum(a, b)


def flex_mask_mod(order: TiledOrder) -> Callable:
    """Flex ``mask_mod(b, h, q_idx, kv_idx)`` of the GNA mask on ``order``."""

    def mask_mod(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        return gna_allowed(order, q_idx, kv_idx, _tmin, _tmax)

    return mask_mod


def _flex() -> Callable:
    if not _COMPILED:
        from torch.nn.attention.flex_attention import flex_attention

        _COMPILED.append(torch.compile(flex_attention, dynamic=False))
    return _COMPILED[0]


class FlexGna:
    name = "flex-gna"
    role = "peer"

    def available(self) -> str | None:
        if reason := _cuda_reason():
            return reason
        try:
            import torch.nn.attention.flex_attention  # noqa: F401
        except ImportError as e:
            return f"torch has no FlexAttention: {e}"
        return None

    def can_run(self, problem: Problem) -> str | None:
        if problem.is_dense:
            return "dense problem (see cudnn-dense / fa4-dense)"
        return None

    def setup(self, problem: Problem, q, k, v, scale: float) -> Prepared:
        from torch.nn.attention.flex_attention import create_block_mask

        tile = best_tile_shape(problem.params, BLOCK)
        order = TiledOrder.make(problem.params, tile)
        reorder = Reorder(order, q.device)
        # Flex wants [B, H, N, D]; contiguous in that layout (its best case), built once.
        qt, kt, vt = (reorder.to_tiled(t).transpose(1, 2).contiguous() for t in (q, k, v))
        n = order.padded_tokens
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        block_mask = create_block_mask(flex_mask_mod(order), None, None, n, n, device=q.device,
                                       BLOCK_SIZE=BLOCK, _compile=True)
        torch.cuda.synchronize()
        build_ms = 1e3 * (time.perf_counter() - t0)
        flex = _flex()
        holder: list[Any] = [None]

        def call() -> Any:
            holder[0] = flex(qt, kt, vt, block_mask=block_mask, scale=scale)
            return holder[0]

        try:
            t0 = time.perf_counter()
            call()
            torch.cuda.synchronize()
            compile_s = time.perf_counter() - t0
        except Exception as e:  # Inductor failures are long; keep the gist
            raise Refused(f"FlexAttention failed: {type(e).__name__}: {str(e)[:200]}") from e
        return Prepared(call, lambda: reorder.from_tiled(holder[0].transpose(1, 2), q.shape),
                        info={"tiles": f"{_x(tile)} (tiled order)", "block_mask_ms": round(build_ms, 1),
                              "first_call_s": round(compile_s, 1)})
