"""FlashAttention-4 running the exact GNA mask: ``mask_mod`` + block sparsity (the strongest peer).

On sm90 FA4's block sparsity needs 128x128 blocks and takes both tables: *partial* blocks get the
``mask_mod`` per element, *full* blocks none.  Tokens are reordered once, outside timing, so each
128-token block is one multi-dim tile (:mod:`tiled_order`, tile shape chosen for FA4 by the
simulator); the tables come analytically from the per-dim tile rules (:mod:`block_tables`); the
``mask_mod`` is a CuTe DSL function decoding token indices to (group, position) per dim and
applying the GNA window (:func:`tiled_order.gna_allowed` on DSL ``Int32`` values).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from .block_tables import block_tables
from .problems import Problem
from .providers import Prepared, Refused, _fa4_reason, _x
from .tiled_order import Reorder, TiledOrder, best_tile_shape, gna_allowed

BLOCK = 128  # sm90 block-sparse tile (Q and KV)

_MASK_MODS: dict[TiledOrder, Callable] = {}


def gna_mask_mod(order: TiledOrder) -> Callable:
    """The CuTe DSL ``mask_mod`` of ``order`` (one per order, so FA4's compile cache can hit)."""
    if order in _MASK_MODS:
        return _MASK_MODS[order]
    import warnings

    import cutlass
    import cutlass.cute as cute
    from flash_attn.cute import utils as fa_utils

    # FA4 4.0.0b36 warns on every compile that its AuxData is no JIT argument; harmless noise.
    warnings.filterwarnings("ignore", message="Argument aux_data", category=UserWarning)

    @cute.jit
    def mask_mod(batch, head, m_idx, n_idx, seqlen_info, aux_tensors):
        allowed = gna_allowed(order, m_idx[0], n_idx[0], cutlass.min, cutlass.max)
        return fa_utils.scalar_to_ssa(allowed, cutlass.Boolean)

    # FA4 keys its compile cache by a hash of the function; make it the order, not the source.
    base = getattr(mask_mod, "__wrapped__", mask_mod)
    base.__cute_hash__ = f"gna_cute.bench:{order!r}"
    _MASK_MODS[order] = mask_mod
    return mask_mod


class FA4Gna:
    name = "fa4-gna"
    role = "peer"

    def available(self) -> str | None:
        return _fa4_reason()

    def can_run(self, problem: Problem) -> str | None:
        if problem.is_dense:
            return "dense problem (see fa4-dense)"
        return None

    def setup(self, problem: Problem, q, k, v, scale: float) -> Prepared:
        from flash_attn.cute.block_sparsity import BlockSparseTensorsTorch
        from flash_attn.cute.interface import _flash_attn_fwd

        tile = best_tile_shape(problem.params, BLOCK)
        order = TiledOrder.make(problem.params, tile)
        reorder = Reorder(order, q.device)
        qt, kt, vt = (reorder.to_tiled(t) for t in (q, k, v))
        tables = block_tables(order)
        dev = lambda a: torch.from_numpy(a).to(q.device)[None, None]  # noqa: E731  (B=1, H=1: broadcast)
        sparse = BlockSparseTensorsTorch(
            mask_block_cnt=dev(tables.mask_cnt),
            mask_block_idx=dev(tables.mask_idx),
            full_block_cnt=dev(tables.full_cnt),
            full_block_idx=dev(tables.full_idx),
            block_size=(BLOCK, BLOCK),
        )
        mask_mod = gna_mask_mod(order)
        out = torch.empty_like(qt)

        def call() -> Any:
            return _flash_attn_fwd(qt, kt, vt, softmax_scale=scale, mask_mod=mask_mod,
                                   block_sparse_tensors=sparse, out=out, return_lse=True)

        try:
            call()  # compile outside timing
        except (ValueError, NotImplementedError, AssertionError) as e:
            raise Refused(f"FA4 refused: {type(e).__name__}: {e}") from e
        partial, full = int(tables.mask_cnt.sum()), int(tables.full_cnt.sum())
        return Prepared(call, lambda: reorder.from_tiled(out, q.shape),
                        info={"tiles": f"{_x(tile)} (tiled order, {order.padded_tokens} tokens)",
                              "partial_blocks": partial, "full_blocks": full})
