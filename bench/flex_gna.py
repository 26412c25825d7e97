"""FlexAttention with the exact GNA ``mask_mod``, on the tiled token order.

The token order, tile shape and block tables are the FA4 peer's (each 128-token block one
multi-dim tile; partial and full KV blocks from :mod:`block_tables`), handed to Flex with
``BlockMask.from_kv_blocks``; the ``mask_mod`` (the GNA mask over torch tensors) is applied on the
partial blocks.  The block-mask build is timed on its own (``block_mask_ms``), never inside the
kernel time.  Why not ``create_block_mask``: on the H100 it spent ~30 s per problem compiling its
mask evaluation, which alone would blow the headline suite's 10-minute budget; the analytic tables
are the same blocks (the CPU tests check them against a brute-force mask).
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch

from .problems import Problem
from .providers import Prepared, _cuda_reason, _x
from .block_tables import block_tables
from .tiled_order import Reorder, TiledOrder, best_tile_shape, gna_allowed

BLOCK = 128

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


def _widen(idx, cols: int):
    """Index table padded to one column per KV block (Flex's dense ``[.., Q blocks, KV blocks]``)."""
    import numpy as np

    out = np.zeros((idx.shape[0], cols), dtype=np.int32)
    out[:, : idx.shape[1]] = idx
    return out


def flex_mask_mod(order: TiledOrder) -> Callable:
    """Flex ``mask_mod(b, h, q_idx, kv_idx)`` of the GNA mask on ``order``."""

    def mask_mod(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        return gna_allowed(order, q_idx, kv_idx, _tmin, _tmax)

    return mask_mod


def _flex() -> Callable:
    """A freshly compiled ``flex_attention``.

    Each problem has its own ``mask_mod`` and shapes, so each recompiles anyway; resetting dynamo
    first keeps a long suite under dynamo's recompile limit, past which it would silently fall
    back to eager Flex (which materializes the scores).
    """
    from torch.nn.attention.flex_attention import flex_attention

    torch._dynamo.reset()
    return torch.compile(flex_attention, dynamic=False)


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
        from torch.nn.attention.flex_attention import BlockMask

        tile = best_tile_shape(problem.params, BLOCK)
        order = TiledOrder.make(problem.params, tile)
        reorder = Reorder(order, q.device)
        # Flex wants [B, H, N, D]; contiguous in that layout (its best case), built once.
        qt, kt, vt = (reorder.to_tiled(t).transpose(1, 2).contiguous() for t in (q, k, v))
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        tables = block_tables(order)
        m = order.num_tiles
        dev = lambda a: torch.from_numpy(_widen(a, m)).to(q.device)[None, None]  # noqa: E731
        block_mask = BlockMask.from_kv_blocks(
            torch.from_numpy(tables.mask_cnt).to(q.device)[None, None], dev(tables.mask_idx),
            torch.from_numpy(tables.full_cnt).to(q.device)[None, None], dev(tables.full_idx),
            BLOCK_SIZE=BLOCK, mask_mod=flex_mask_mod(order),
        )
        torch.cuda.synchronize()
        build_ms = 1e3 * (time.perf_counter() - t0)
        flex = _flex()
        holder: list[Any] = [None]

        def call() -> Any:
            holder[0] = flex(qt, kt, vt, block_mask=block_mask, scale=scale)
            return holder[0]

        return Prepared(call, lambda: reorder.from_tiled(holder[0].transpose(1, 2), q.shape),
                        info={"tiles": f"{_x(tile)} (tiled order)", "block_mask_ms (analytic tables)": round(build_ms, 1)})
