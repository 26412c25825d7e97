"""TMA plumbing and per-CTA work setup shared by the Hopper and Blackwell forward kernels.

Why: both kernels move Q/K/V/O the same way (one TMA box per GNA tile of the heads-last
``tile_views.token_view``) and launch one CTA per (Q tile, head, batch); only the MMAs, pipelines
and roles differ.  These helpers emit exactly the ops the kernels used to spell out inline, in the
same order, so the compiled code is unchanged.
"""

from __future__ import annotations

from typing import Any, Sequence

import cutlass
import cutlass.cute as cute
import cutlass.pipeline as pipeline
from cutlass import Int32, const_expr
from cutlass.cute.nvgpu import cpasync

from gna_cute.kernels import tile_views
from gna_cute.kernels.config import FwdConfig, cluster_size_problem
from gna_cute.kernels.scheduler import QTileWork, TileGeometry

DTYPES = {"float16": cutlass.Float16, "bfloat16": cutlass.BFloat16}
HEAD_DIMS = (32, 64, 128)


def check_config(cfg: FwdConfig, arch: int, kernel: str) -> None:
    """What both kernels require of ``cfg`` (ValueError naming the field); each adds its own tiles."""
    if cfg.arch != arch:
        raise ValueError(f"cfg.arch={cfg.arch}: {kernel} is the sm{arch} kernel")
    if cfg.dtype not in DTYPES:
        raise ValueError(f"cfg.dtype={cfg.dtype!r} must be one of {list(DTYPES)}")
    if cfg.head_dim != cfg.head_dim_v or cfg.head_dim not in HEAD_DIMS:
        raise ValueError(f"head_dim={cfg.head_dim}, head_dim_v={cfg.head_dim_v}: need equal and in {HEAD_DIMS}")
    if cfg.cluster_dim >= 0 and (arch != 90 or cfg.cluster_dim >= cfg.rank):
        raise ValueError(f"cluster_dim={cfg.cluster_dim}: clusters of paired Q tiles are sm90 only, dim < rank")
    if (why := cluster_size_problem(cfg.cluster_size)) is not None:
        raise ValueError(why)
    if cfg.q_buffers not in (0, 1, 2) or (cfg.q_buffers and arch != 90):
        raise ValueError(f"q_buffers={cfg.q_buffers}: 0 (the kernel's choice), 1 or 2; an sm90 option")
    if cfg.early_stage_slices and arch != 90:
        raise ValueError("early_stage_slices=True: an sm90 option")
    if cfg.exp2_emulation < 0 or cfg.exp2_emulation == 1 or (cfg.exp2_emulation and arch != 90):
        raise ValueError(f"exp2_emulation={cfg.exp2_emulation}: 0 (none) or n >= 2 (every n-th exp2); an sm90 option")
    if cfg.kv_start_align < 0 or (cfg.kv_start_align and (arch != 90 or cfg.mainloop != "rotated")):
        raise ValueError(f"kv_start_align={cfg.kv_start_align}: 0 (partial tiles first) or A > 0 (full tiles first); "
                         f"an sm90 option of the rotated mainloop (mainloop={cfg.mainloop!r})")
    if cfg.cluster_tail and cfg.cluster_dim < 0:
        raise ValueError("cluster_tail=True: needs a cluster_dim >= 0 (tail tiles of a paired dim)")
    if cfg.persistent_ctas and (arch != 90 or cfg.persistent_ctas < 0 or cfg.persistent_ctas % 2):
        raise ValueError(f"persistent_ctas={cfg.persistent_ctas}: persistent CTAs are sm90 only, an even count >= 0")
    if cfg.cluster_dim >= 0 and cfg.persistent_ctas % cfg.cluster_size:
        raise ValueError(f"persistent_ctas={cfg.persistent_ctas}: must be a multiple of cluster_size={cfg.cluster_size}")


# ---------------------------------------------------------------------------------------------
# Host side
# ---------------------------------------------------------------------------------------------


def stage_box(layout: Any) -> Any:
    """One stage (the first two modes) of a smem layout that may carry a stage mode."""
    return layout if cute.rank(layout) == 2 else cute.select(layout, mode=[0, 1])


def make_tma_atoms(
    mQ: cute.Tensor, mK: cute.Tensor, mV: cute.Tensor, mO: cute.Tensor, rank: int, dilation: Sequence[int],
    q_tile_shape: Sequence[int], kv_tile_shape: Sequence[int], head_dim: int, head_dim_v: int,
    sQ_layout: Any, sK_layout: Any, sV_layout: Any, sO_layout: Any, kv_multicast: bool = False,
    o_tile_shape: Sequence[int] | None = None,
) -> tuple:
    """``(atom_Q, tma_Q, atom_K, tma_K, atom_V, tma_V, atom_O, tma_O)``: loads of Q, K, V, store of O.

    The smem layouts may carry a stage mode; one box is their first two modes.  ``kv_multicast``:
    K and V load whole boxes that one CTA of a cluster multicasts to all of them.  ``o_tile_shape``:
    the O store's box (default the Q tile; sm90 stores each warpgroup's half on its own).
    """
    tiler_q = tile_views.tile_tiler(q_tile_shape, head_dim)
    tiler_k = tile_views.tile_tiler(kv_tile_shape, head_dim)
    tiler_v = tile_views.tile_tiler(kv_tile_shape, head_dim_v)
    tiler_o = tile_views.tile_tiler(q_tile_shape if o_tile_shape is None else o_tile_shape, head_dim_v)
    load = cpasync.CopyBulkTensorTileG2SOp()
    atom_Q, tma_Q = cpasync.make_tiled_tma_atom(load, tile_views.token_view(mQ, rank, dilation), stage_box(sQ_layout), tiler_q)
    load_kv = cpasync.CopyBulkTensorTileG2SMulticastOp() if kv_multicast else load
    atom_K, tma_K = cpasync.make_tiled_tma_atom(
        load_kv, tile_views.token_view(mK, rank, dilation), stage_box(sK_layout), tiler_k
    )
    atom_V, tma_V = cpasync.make_tiled_tma_atom(
        load_kv, tile_views.token_view(mV, rank, dilation), stage_box(sV_layout), tiler_v
    )
    atom_O, tma_O = cpasync.make_tiled_tma_atom(
        cpasync.CopyBulkTensorTileS2GOp(), tile_views.token_view(mO, rank, dilation), stage_box(sO_layout), tiler_o
    )
    return atom_Q, tma_Q, atom_K, tma_K, atom_V, tma_V, atom_O, tma_O


def _lengths(mX: cute.Tensor, rank: int) -> list:
    """The spatial sizes of a ``[B, *spatial, H, ...]`` tensor (Q, O or LSE)."""
    return [mX.shape[1 + i] for i in range(rank)]


def _total_work(geom: TileGeometry, mX: cute.Tensor, rank: int) -> Any:
    """Work items (Q tiles x heads x batch) of a ``[B, *spatial, H, ...]`` tensor."""
    return geom.num_work_tiles(_lengths(mX, rank)) * mX.shape[rank + 1] * mX.shape[0]


def launch_grid(geom: TileGeometry, mQ: cute.Tensor, rank: int) -> tuple:
    """One CTA per (work tile, head, batch) of the heads-last ``mQ``."""
    return (geom.num_work_tiles(_lengths(mQ, rank)), mQ.shape[rank + 1], mQ.shape[0])


# ---------------------------------------------------------------------------------------------
# Device side
# ---------------------------------------------------------------------------------------------


def _select(cond: Any, a: Any, b: Any) -> Int32:
    """``a`` where ``cond`` else ``b``, as an ``Int32`` (the scheduler's injected select)."""
    return Int32(cutlass.select_(cond, a, b))


def persistent_grid(geom: TileGeometry, mQ: cute.Tensor, rank: int, ctas: int) -> tuple:
    """A persistent launch: ``min(work items, ctas)`` CTAs, each looping over work items
    (``ctas`` a multiple of the cluster size: a cluster's CTAs take consecutive items, the tiles
    of one group that share their K/V loads)."""
    return (cutlass.min(_total_work(geom, mQ, rank), ctas), 1, 1)


def persistent_work_range(geom: TileGeometry, mLSE: cute.Tensor, rank: int) -> tuple:
    """``(first, end, step)``: the linear work items (tile fastest, then head, batch) of this
    CTA of a :func:`persistent_grid`: every ``gridDim.x``-th from ``blockIdx.x``."""
    return cute.arch.block_idx()[0], _total_work(geom, mLSE, rank), cute.arch.grid_dim()[0]


def _work_of(geom: TileGeometry, mLSE: cute.Tensor, num_heads_kv: Int32, rank: int, tile: Int32, head: Int32,
             batch: Int32) -> tuple:
    """``(work, head, head_kv, batch)`` of work tile ``tile``; GQA maps query heads onto KV heads
    in groups."""
    work = QTileWork(geom, _lengths(mLSE, rank), tile, cutlass.min, cutlass.max, _select)
    return work, head, head // (mLSE.shape[rank + 1] // num_heads_kv), batch


def decode_work(geom: TileGeometry, mLSE: cute.Tensor, num_heads_kv: Int32, rank: int, w: Int32) -> tuple:
    """``(work, head, head_kv, batch)`` of linear work item ``w`` (see :func:`persistent_work_range`)."""
    tiles = geom.num_work_tiles(_lengths(mLSE, rank))
    heads = mLSE.shape[rank + 1]
    rest = w // tiles
    return _work_of(geom, mLSE, num_heads_kv, rank, w - rest * tiles, rest % heads, rest // heads)


def block_work(geom: TileGeometry, mLSE: cute.Tensor, num_heads_kv: Int32, rank: int) -> tuple:
    """This CTA's ``(work, head, head_kv, batch)`` (one CTA per work item)."""
    return _work_of(geom, mLSE, num_heads_kv, rank, *cute.arch.block_idx())


def make_pipeline(
    cls: type, barriers: Any, producer: Any, consumer: Any, num_stages: int = 1, tx_count: int | None = None,
    **extra: Any,
) -> Any:
    """One mbarrier pipeline of class ``cls`` (its barriers synced by the kernel's own barrier)."""
    if tx_count is not None:
        extra["tx_count"] = tx_count
    return cls.create(
        barrier_storage=barriers, num_stages=num_stages, producer_group=producer, consumer_group=consumer,
        defer_sync=True, **extra,
    )


def qkv_pipelines(
    cls: type, storage: Any, producer: Any, consumer: Any, num_stages: int, tx_q: int, tx_k: int, tx_v: int,
    cluster: int = 1, q_stages: int = 1,
) -> tuple:
    """``(pipe_q, pipe_k, pipe_v)``: TMA loads of Q (``q_stages``) and of K and V (``num_stages``).

    ``storage`` holds the barriers as ``mbar_q``, ``mbar_k``, ``mbar_v``.  ``cluster`` > 1: K and V
    are shared by that many CTAs (a row of the cluster), so a stage is empty only once every CTA's
    consumers released it: each consumer warp arrives on every CTA's empty barrier (``consumer``
    counts one arrive per warp).
    """
    pipe_q = make_pipeline(cls, storage.mbar_q.data_ptr(), producer, consumer, q_stages, tx_q)
    kv = {}
    if cluster > 1:
        kv = dict(cta_layout_vmnk=cute.make_layout((1, cluster, 1, 1)))
        consumer = pipeline.CooperativeGroup(pipeline.Agent.Thread, consumer.size * cluster)
    pipe_k = make_pipeline(cls, storage.mbar_k.data_ptr(), producer, consumer, num_stages, tx_k, **kv)
    pipe_v = make_pipeline(cls, storage.mbar_v.data_ptr(), producer, consumer, num_stages, tx_v, **kv)
    return pipe_q, pipe_k, pipe_v


def smem_tensor(mem: Any, layout: Any) -> cute.Tensor:
    """A shared-memory struct field viewed through a swizzled (composed) layout."""
    return mem.get_tensor(layout.outer, swizzle=layout.inner)


def tma_tile_partition(atom: cute.CopyAtom, sX: cute.Tensor, gX: cute.Tensor) -> tuple:
    """``(smem, gmem)`` partitions of one TMA box (``sX``'s first two modes) for a single CTA."""
    return cpasync.tma_partition(atom, 0, cute.make_layout(1), cute.group_modes(sX, 0, 2), gX)


def tma_load_q(atom: cute.CopyAtom, tQgQ: cute.Tensor, tQsQ: cute.Tensor, pipe_q: Any, q_state: Any = None) -> None:
    """Load the Q tile through its pipeline (``q_state``: a persistent CTA's position; none: stage 0)."""
    if q_state is None:
        q_state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Producer, 1)
    pipe_q.producer_acquire(q_state)
    cute.copy(atom, tQgQ, tQsQ, tma_bar_ptr=pipe_q.producer_get_barrier(q_state))


@cute.jit
def tma_load_stage(
    atom: cute.CopyAtom, tXgX: cute.Tensor, tXsX: cute.Tensor, pipe: Any, coord: Any, state: Any,
    issuer: Any = None, mcast_mask: Any = 0,
) -> None:
    """Acquire a pipeline stage and TMA-load the K or V tile at ``coord`` into it.

    A tile shared by a cluster (``mcast_mask`` a nonzero int or a run-time value): every CTA
    acquires the stage (and arms its own full barrier with the tile's bytes); only ``issuer``
    loads it, into every CTA of ``mcast_mask``, whose barriers at the same offset count the bytes.
    """
    pipe.producer_acquire(state)
    src, dst, bar = tXgX[None, coord], tXsX[None, state.index], pipe.producer_get_barrier(state)
    if const_expr(isinstance(mcast_mask, int) and mcast_mask == 0):
        cute.copy(atom, src, dst, tma_bar_ptr=bar)
    elif issuer:
        cute.copy(atom, src, dst, tma_bar_ptr=bar, mcast_mask=cutlass.Int16(mcast_mask))


def tma_store_tile(atom: cute.CopyAtom, sO: cute.Tensor, gO: cute.Tensor, wait: bool = True) -> None:
    """Store the O tile from shared memory with one TMA copy and (``wait``) wait until smem may be
    reused; without ``wait`` the caller calls :func:`tma_store_wait` before the CTA exits."""
    tOsO, tOgO = tma_tile_partition(atom, sO, gO)
    cute.copy(atom, tOsO, tOgO)
    cute.arch.cp_async_bulk_commit_group()
    if wait:
        tma_store_wait()


def tma_store_wait() -> None:
    """Wait until the committed TMA stores have read their shared memory."""
    cute.arch.cp_async_bulk_wait_group(0, read=True)
