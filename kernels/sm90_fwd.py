"""Hopper (sm_90a) fused GNA forward: warp-specialized TMA + WGMMA, GNA tile schedule in-kernel.

One CTA computes one Q tile (128 in-group tokens of one dilation group, a 1-3 dim box) of one
(batch, head).  Warpgroup 0 is the producer: warp 0 loads Q once and streams the K/V tiles the
scheduler names through a multi-stage shared-memory pipeline (TMA, mbarriers).  Warpgroups 1-2
each own 64 Q rows: S = Q K^T (WGMMA, both operands in smem), mask only on partial tiles, online
softmax in fp32 registers, O += P V (WGMMA, P from registers).  The epilogue stages O in smem and
writes the Q box with one TMA store (clipped at borders); LSE is written by the threads owning
column 0, predicated on the rows that exist.

Tensors stay in the user's heads-last layout ``[B, *spatial, H, D]``: each is viewed as
``(tokens, D, H, [groups,] B)`` with the spatial dims grouped into one hierarchical token mode
(last spatial dim first, i.e. fastest) and, under dilation, each spatial dim split as ``(L/d, d)``
so a tile is a box of in-group positions of one group.  TMA zero-fills border tiles on load.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from cuda.bindings import driver as cuda
import cutlass
import cutlass.cute as cute
import cutlass.pipeline as pipeline
import cutlass.utils.hopper_helpers as sm90_utils
from cutlass import Float32, Int32, const_expr
from cutlass.cute.nvgpu import cpasync, warpgroup
from cutlass.utils import LayoutEnum

from gna_cute.kernels import fwd_common, tile_views
from gna_cute.kernels.dsl_values import DslCarried
from gna_cute.kernels.config import FwdConfig
from gna_cute.kernels.mask import RowWindows
from gna_cute.kernels.scheduler import QTileWork, TileCursor, TileGeometry, split_tile_index
from gna_cute.kernels.softmax import OnlineSoftmax, acc_rows_view, rescale_rows

MAINLOOPS = ("serial", "rotated", "hybrid")
_SMEM_BUDGET = 220 * 1024
# With O staged in Q's smem: the H100's 227 KiB per block less 1 KiB for the mbarriers (aligned).
_SMEM_BUDGET_ALIASED = 227 * 1024 - 1024
_EPILOGUE_BARRIER = 1  # both warpgroups (whole-tile epilogue)
_WG_EPILOGUE_BARRIER = 4  # and 5: one per consumer warpgroup (split epilogue)
_SCHED_BARRIER = 2  # and 3: one per consumer warpgroup, for taking turns issuing GEMMs
_TRACE_STEPS = 12  # trace mode: an item's visiting steps 1..12 are stamped (slots 18..29)


def _frag_a_view(acc: cute.Tensor) -> cute.Tensor:
    """View an fp32 S accumulator ``((2,2,N/8),M,N)`` as the A-operand fragment of the PV MMA.

    Two adjacent 8-column blocks of S form one 16-wide k block of P: ``((2,2,2),M,(N/16,N))``.
    """
    l = cute.logical_divide(acc.layout, ((None, None, 2), None, None))
    frag = cute.make_layout(
        ((l.shape[0][0], l.shape[0][1], l.shape[0][2][0]), l.shape[1], (l.shape[0][2][1], l.shape[2])),
        stride=(
            (l.stride[0][0], l.stride[0][1], l.stride[0][2][0]),
            l.stride[1],
            (l.stride[0][2][1], l.stride[2]),
        ),
    )
    return cute.make_tensor(acc.iterator, frag)


def _gemm(tiled_mma: cute.TiledMma, acc: cute.Tensor, a: cute.Tensor, b: cute.Tensor, zero_init: bool) -> None:
    """Issue one warpgroup GEMM over all k blocks and commit it (the caller waits)."""
    warpgroup.fence()
    atom = cute.make_mma_atom(tiled_mma.op)  # fresh atom: ACCUMULATE is toggled below
    atom.set(warpgroup.Field.ACCUMULATE, not zero_init)
    for k in range(cute.size(a.shape[2])):
        cute.gemm(atom, acc, a[None, None, k], b[None, None, k], acc)
        atom.set(warpgroup.Field.ACCUMULATE, True)
    warpgroup.commit_group()


def _spatial_slice(batch: Int32, head: Int32, rank: int) -> tuple:
    """``(batch, None.., head)``: the spatial slice of a ``[B, *spatial, H]`` tensor."""
    return (batch, *([None] * rank), head)


def _spatial_coord(x: list) -> Any:
    """A coordinate into :func:`_spatial_slice`'s slice: a tuple, or the scalar in rank 1."""
    return tuple(x) if len(x) > 1 else x[0]


class _PendingLoad(DslCarried):
    """A V load the producer still owes, carried from one work item's loop into the next:
    its KV tile, the item's (group, KV head, batch) and whether its cluster shares the load."""

    def __init__(self, idx: list, group: list, head_kv: Int32, batch: Int32, shared: Any = True) -> None:
        self.idx, self.group, self.head_kv, self.batch = list(idx), list(group), head_kv, batch
        self.shared = shared


class GNAFwdSm90:
    """The kernel for one static configuration (``FwdConfig`` is the compile-cache key)."""

    num_producer_regs = 24
    num_mma_regs = 240

    def __init__(
        self, cfg: FwdConfig, mainloop: str | None = None, turns: bool = True,
        alias_o: bool = False, stages: int | None = None, trace: bool = False,
        persistent_ctas: int | None = None, split_epilogue: bool | None = None,
        overlap_items: bool = True, early_stage_slices: bool | None = None, q_stages: int | None = None,
        prefetch_kv: int = 0, exp2_emulation: int | None = None, kv_start_align: int | None = None,
    ) -> None:
        fwd_common.check_config(cfg, 90, "GNAFwdSm90")
        if cfg.q_tile_size != 128:
            raise ValueError(f"q_tile_shape={cfg.q_tile_shape} must hold 128 tokens (2 warpgroups x 64 rows)")
        if cfg.kv_tile_size % 16 or not 16 <= cfg.kv_tile_size <= 256:
            raise ValueError(f"kv_tile_shape={cfg.kv_tile_shape} must hold a multiple of 16 tokens, 16..256")
        # ``mainloop`` overrides cfg.mainloop (_dev_check times every variant); "rotated": QK(j)
        # overlapped with PV(j-1) inside each warpgroup, warpgroups taking turns; "hybrid": the
        # partial tiles serially, the full ones rotated.  Chosen per problem (tile_choice).
        self.mainloop = cfg.mainloop if mainloop is None else mainloop
        if self.mainloop not in MAINLOOPS:
            raise ValueError(f"mainloop={self.mainloop!r} must be one of {MAINLOOPS}")
        self.cfg = cfg
        # trace (dev only): mCounts becomes an int32 (work items, 32, 1..) timeline of
        # %globaltimer_lo stamps (devscratch-style drivers read it; see docs/sm90-kernel.md).
        self.trace = trace and not cfg.count_tiles
        # persistent_ctas (overrides cfg's) > 0: at most that many CTAs, each looping over every
        # gridDim.x-th work item; the producer loads the next item's Q (double-buffered where it
        # fits) and K/V during this item's last tiles, and one item's O store overlaps the next
        # item's mainloop.  0: one CTA per work item.
        self.persistent = cfg.persistent_ctas if persistent_ctas is None else persistent_ctas
        # Clusters of 2 or 4 CTAs (Q tiles s*t .. s*t + s-1 along cfg.cluster_dim) with identical KV
        # schedules: CTA 0 loads every K tile, CTA 1 every V tile, each multicast into all of them.
        self.cluster = cfg.cluster_size if cfg.cluster_dim >= 0 else 1
        if self.persistent and (self.mainloop != "rotated" or alias_o or self.persistent % max(2, self.cluster)):
            raise ValueError(f"persistent_ctas={self.persistent}: needs the rotated mainloop, no alias_o, an even count"
                             f" (a multiple of the cluster size {self.cluster})")
        # The producer issues K one tile ahead of V for the rotated loops (serial: K and V together).
        self.overlap = self.mainloop != "serial"
        self.turns = turns and self.overlap  # the two warpgroups take turns issuing GEMMs
        # early_stage_slices (cfg's, or this override; off in the product until measured): the
        # unmasked rotated step slices its K/V stage operands before the K wait.  Same PTX values,
        # but ptxas then steps K's descriptors with 64-bit adds: a shorter loop and turn window
        # (docs/sm90-kernel.md, "Measured level: stage slices before the K wait").
        self.early_stage_slices = cfg.early_stage_slices if early_stage_slices is None else early_stage_slices
        # exp2_emulation (cfg's, or this override): every n-th exponential on the FMA pipe
        # (softmax.exp2_poly) where MUFU bounds the tile (head dim <= 64).
        self.exp2_emulation = cfg.exp2_emulation if exp2_emulation is None else exp2_emulation
        self.geom = TileGeometry.from_config(cfg)
        # kv_start_align (cfg's, or this override): full KV tiles first, from an aligned shared
        # start (``TileGeometry.kv_start_align``); the rotated mainloop only.
        if kv_start_align is not None:
            self.geom = dataclasses.replace(self.geom, kv_start_align=kv_start_align)
        if self.geom.kv_start_align and self.mainloop != "rotated":
            raise ValueError(f"kv_start_align={self.geom.kv_start_align}: needs the rotated mainloop, not {self.mainloop!r}")
        self.rank = cfg.rank
        self.dtype = fwd_common.DTYPES[cfg.dtype]
        self.tile_m = cfg.q_tile_size
        self.tile_n = cfg.kv_tile_size
        self.hdim = cfg.head_dim
        self.hdimv = cfg.head_dim_v
        self.has_groups = any(d > 1 for d in cfg.dilation)
        self.num_mma_wg = 2
        self.num_threads = 128 * (1 + self.num_mma_wg)
        # alias_o: the epilogue stages O in Q's smem (each warpgroup overwrites only the Q rows its
        # own, finished GEMMs read), which frees room for a third K/V stage at D = 128, KV = 128.
        self.alias_o = alias_o and cfg.head_dim == cfg.head_dim_v
        # split_epilogue: each warpgroup stages and stores its own 64 rows (half the Q box along
        # dim 0) behind its own named barrier, so in a persistent CTA one warpgroup's epilogue and
        # next-item setup overlap the other's last GEMMs instead of waiting for them.  Default: on
        # for persistent CTAs (H100: 1D s=2048 0.0600 -> 0.0594 ms, D = 64 0.0455 -> 0.0448; s=1
        # level); off for one CTA per item, where it measured level or up to 2 % slower (2D s=1).
        if split_epilogue is None:
            split_epilogue = self.persistent > 0
        self.split_epilogue = split_epilogue and not self.alias_o
        q0 = cfg.q_tile_shape[0]
        if self.split_epilogue and q0 % 2:
            raise ValueError(f"q_tile_shape={cfg.q_tile_shape}: the split epilogue halves dim 0, which must be even")
        self.o_tile_shape = (q0 // 2, *cfg.q_tile_shape[1:]) if self.split_epilogue else cfg.q_tile_shape
        elem = 2
        fixed = (self.tile_m * self.hdim + (0 if self.alias_o else self.tile_m * self.hdimv)) * elem
        per_stage = self.tile_n * (self.hdim + self.hdimv) * elem
        budget = _SMEM_BUDGET_ALIASED if self.alias_o else _SMEM_BUDGET
        self.num_stages = max(2, min(4, (budget - fixed) // per_stage))
        if stages is not None:
            if not 2 <= stages <= self.num_stages:
                raise ValueError(f"stages={stages}: this config fits 2..{self.num_stages} K/V stages")
            self.num_stages = stages
        # A persistent CTA double-buffers Q where it fits (D = 128: 2 x 32 KiB Q + 32 KiB O + two
        # 64 KiB K/V stages = 224 KiB): the next item's Q loads during this item's mainloop.
        self.q_stages = 1
        if self.persistent and fixed + self.tile_m * self.hdim * elem + self.num_stages * per_stage <= _SMEM_BUDGET_ALIASED:
            self.q_stages = 2
        if q_stages is None and cfg.q_buffers:
            q_stages = cfg.q_buffers
        if q_stages is not None:  # 1 = one Q buffer (static Q descriptors, no pipelined boundary)
            if q_stages not in (1, self.q_stages):
                raise ValueError(f"q_stages={q_stages}: this config takes 1..{self.q_stages} Q buffers")
            self.q_stages = q_stages
        # overlap_items (persistent CTAs with a double-buffered Q): the item boundary is software-
        # pipelined.  The producer's K/V stream runs on from item to item (the next item's Q and
        # first K go out before this item's last V), and each consumer warpgroup issues the next
        # item's first QK right after this item's last PV, so the epilogue runs while the tensor
        # cores work on the next item instead of leaving them idle.
        self.overlap_items = overlap_items and self.persistent > 0 and self.q_stages == 2
        # prefetch_kv = L > 0 (dev only; 1D: DSL 4.8.1 emits invalid NVVM IR for the prefetch of 3D
        # and dilated views): on a CTA's first work item, each K issue of visiting step s also
        # TMA-prefetches into L2 the K and V tiles of step s + L.  Tests whether the first item's
        # slower tiles (H100 trace: 1.64-1.70 us against 1.50-1.52 on the second item with the L2
        # flushed, 1.57-1.62 warm) wait on HBM misses the 2-stage smem pipeline cannot cover.
        self.prefetch_kv = prefetch_kv if self.rank == 1 and self.overlap else 0

    # ------------------------------------------------------------------ host side
    def _tile_coord(self, tile: list, head: Int32, group: list, batch: Int32) -> tuple:
        return tile_views.tile_coord(tile, head, group, batch, self.has_groups)

    def _smem_layout(self, rows: int, cols: int, stages: int | None) -> Any:
        atom = warpgroup.make_smem_layout_atom(
            sm90_utils.get_smem_layout_atom(LayoutEnum.ROW_MAJOR, self.dtype, cols), self.dtype
        )
        shape = (rows, cols) if stages is None else (rows, cols, stages)
        return cute.tile_to_shape(atom, shape, order=(0, 1) if stages is None else (0, 1, 2))

    def _make_layouts(self) -> None:
        """Swizzled smem layouts (static; rebuilt wherever used: host and device are separate IR)."""
        self.sQ_layout = self._smem_layout(self.tile_m, self.hdim, self.q_stages if self.q_stages > 1 else None)
        self.sK_layout = self._smem_layout(self.tile_n, self.hdim, self.num_stages)
        self.sV_layout = self._smem_layout(self.tile_n, self.hdimv, self.num_stages)
        if self.split_epilogue:  # one stage per warpgroup's half
            self.sO_layout = self._smem_layout(self.tile_m // 2, self.hdimv, 2)
        else:
            self.sO_layout = self._smem_layout(self.tile_m, self.hdimv, None)

    def _make_mmas(self) -> None:
        """S = Q K^T with both operands in smem; O += P V with P from registers."""
        self.tiled_mma_qk = sm90_utils.make_trivial_tiled_mma(
            self.dtype, self.dtype, warpgroup.OperandMajorMode.K, warpgroup.OperandMajorMode.K,
            Float32, atom_layout_mnk=(self.num_mma_wg, 1, 1), tiler_mn=(64, self.tile_n),
        )
        self.tiled_mma_pv = sm90_utils.make_trivial_tiled_mma(
            self.dtype, self.dtype, warpgroup.OperandMajorMode.K, warpgroup.OperandMajorMode.MN,
            Float32, atom_layout_mnk=(self.num_mma_wg, 1, 1), tiler_mn=(64, self.hdimv),
            a_source=warpgroup.OperandSource.RMEM,
        )

    @cute.jit
    def __call__(
        self,
        mQ: cute.Tensor,
        mK: cute.Tensor,
        mV: cute.Tensor,
        mO: cute.Tensor,
        mLSE: cute.Tensor,
        mCounts: cute.Tensor,
        scale_log2: Float32,
        stream: cuda.CUstream,
    ):
        n = self.rank
        self._make_layouts()

        tma = fwd_common.make_tma_atoms(
            mQ, mK, mV, mO, n, self.cfg.dilation, self.cfg.q_tile_shape, self.cfg.kv_tile_shape,
            self.hdim, self.hdimv, self.sQ_layout, self.sK_layout, self.sV_layout, self.sO_layout,
            kv_multicast=self.cluster > 1, o_tile_shape=self.o_tile_shape,
        )
        self.tx_q, self.tx_k, self.tx_v = (
            cute.size_in_bytes(self.dtype, fwd_common.stage_box(x)) for x in (self.sQ_layout, self.sK_layout, self.sV_layout)
        )

        stages = self.num_stages
        o_elems = 8 if self.alias_o else cute.cosize(self.sO_layout)  # aliased: O lives in sQ

        @cute.struct
        class SharedStorage:
            mbar_q: cute.struct.MemRange[cutlass.Int64, 2 * self.q_stages]
            mbar_k: cute.struct.MemRange[cutlass.Int64, 2 * stages]
            mbar_v: cute.struct.MemRange[cutlass.Int64, 2 * stages]
            sQ: cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(self.sQ_layout)], 1024]
            sK: cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(self.sK_layout)], 1024]
            sV: cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(self.sV_layout)], 1024]
            sO: cute.struct.Align[cute.struct.MemRange[self.dtype, o_elems], 1024]

        self.shared_storage = SharedStorage
        if const_expr(self.persistent > 0):
            grid = fwd_common.persistent_grid(self.geom, mQ, n, self.persistent)
        else:
            grid = fwd_common.launch_grid(self.geom, mQ, n)
        self.kernel(*tma, mLSE, mCounts, mK.shape[n + 1], scale_log2).launch(
            grid=grid,
            block=[self.num_threads, 1, 1],
            cluster=[self.cluster, 1, 1],
            smem=SharedStorage.size_in_bytes(),
            stream=stream,
            min_blocks_per_mp=1,
        )

    # ------------------------------------------------------------------ device side
    @cute.kernel
    def kernel(
        self,
        tma_atom_Q: cute.CopyAtom,
        tma_Q: cute.Tensor,
        tma_atom_K: cute.CopyAtom,
        tma_K: cute.Tensor,
        tma_atom_V: cute.CopyAtom,
        tma_V: cute.Tensor,
        tma_atom_O: cute.CopyAtom,
        tma_O: cute.Tensor,
        mLSE: cute.Tensor,
        mCounts: cute.Tensor,
        num_heads_kv: Int32,
        scale_log2: Float32,
    ):
        n = self.rank
        self._make_layouts()
        self._make_mmas()
        warp_idx = cute.arch.make_warp_uniform(cute.arch.warp_idx())
        t_entry = cute.arch.globaltimer_lo() if const_expr(self.trace) else Int32(0)
        self._trace_t = mCounts
        if warp_idx == 0:
            for atom in (tma_atom_Q, tma_atom_K, tma_atom_V, tma_atom_O):
                cpasync.prefetch_descriptor(atom)

        smem = cutlass.utils.SmemAllocator()
        storage = smem.allocate(self.shared_storage)
        producer = pipeline.CooperativeGroup(pipeline.Agent.Thread, 1)
        consumers = pipeline.CooperativeGroup(pipeline.Agent.Thread, self.num_mma_wg * 4)
        pipe_q, pipe_k, pipe_v = fwd_common.qkv_pipelines(
            pipeline.PipelineTmaAsync, storage, producer, consumers, self.num_stages, self.tx_q, self.tx_k,
            self.tx_v, self.cluster, self.q_stages,
        )
        cute.arch.mbarrier_init_fence()
        if const_expr(self.cluster > 1):  # the peer's barriers must be initialized before any arrive
            cute.arch.cluster_arrive_relaxed()
            cute.arch.cluster_wait()
        else:
            cute.arch.barrier()

        sQ = fwd_common.smem_tensor(storage.sQ, self.sQ_layout)
        sK = fwd_common.smem_tensor(storage.sK, self.sK_layout)
        sV = fwd_common.smem_tensor(storage.sV, self.sV_layout)
        sO = fwd_common.smem_tensor(storage.sQ if const_expr(self.alias_o) else storage.sO, self.sO_layout)

        if const_expr(self.persistent > 0):
            works = fwd_common.persistent_work_range(self.geom, mLSE, n)
        else:
            works = fwd_common.block_work(self.geom, mLSE, num_heads_kv, n)
        t_sync = cute.arch.globaltimer_lo() if const_expr(self.trace) else Int32(0)

        if warp_idx < 4:
            cute.arch.setmaxregister_decrease(self.num_producer_regs)
            if warp_idx == 0:
                self.load(
                    works, mLSE, num_heads_kv, tma_atom_Q, tma_Q, tma_atom_K, tma_K,
                    tma_atom_V, tma_V, sQ, sK, sV, pipe_q, pipe_k, pipe_v,
                )
                if const_expr(self.trace):
                    if cute.arch.lane_idx() == 0:
                        if const_expr(self.persistent > 0):  # on the CTA's first item
                            self._set_trace_item(works[0])
                            self._stamp(15, t_entry)
                            self._stamp(16, t_sync)
                            self._stamp(17, cute.arch.globaltimer_lo())
                        else:
                            self._stamp(0, cute.arch.smid())
                            self._stamp(1, t_entry)
                            self._stamp(7, cute.arch.globaltimer_lo())
                            self._stamp(8, t_sync)
        else:
            cute.arch.setmaxregister_increase(self.num_mma_regs)
            self.consume(
                works, mLSE, num_heads_kv, tma_atom_O, tma_O, mCounts, sQ, sK, sV, sO,
                pipe_q, pipe_k, pipe_v, scale_log2,
            )

    @cute.jit
    def load(
        self, works: tuple, mLSE: cute.Tensor, num_heads_kv: Int32,
        tma_atom_Q: cute.CopyAtom, tma_Q: cute.Tensor, tma_atom_K: cute.CopyAtom, tma_K: cute.Tensor,
        tma_atom_V: cute.CopyAtom, tma_V: cute.Tensor, sQ: cute.Tensor, sK: cute.Tensor, sV: cute.Tensor,
        pipe_q: Any, pipe_k: Any, pipe_v: Any,
    ):
        """Producer warp: Q, then K and V of every scheduled KV tile in the consumers' order
        (``QTileWork.visit_runs``), walking ``QTileWork.kv_boxes`` with ``box_step``: a compare and a
        select per dim and tile.  It replaced a producer that decoded every tile's index like the
        consumers do (both kinds, a part search, divisions): an ncu profile of the dense 2D problem
        counted 251 producer instructions per KV tile with it (FA4's producer: 70; now ~85), and
        the producer warp shares its issue slots with two consumer warps.  A persistent CTA does
        this per work item, its pipeline positions running on from item to item."""
        tiler_k = tile_views.tile_tiler(self.cfg.kv_tile_shape, self.hdim)
        tiler_v = tile_views.tile_tiler(self.cfg.kv_tile_shape, self.hdimv)
        tKsK, tKgK = fwd_common.tma_tile_partition(tma_atom_K, sK, cute.zipped_divide(tma_K, tiler_k))
        tVsV, tVgV = fwd_common.tma_tile_partition(tma_atom_V, sV, cute.zipped_divide(tma_V, tiler_v))
        q_state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Producer, self.q_stages)
        k_state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Producer, self.num_stages)
        v_state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Producer, self.num_stages)
        tile_args = (tma_atom_Q, tma_Q, sQ, tma_atom_K, tKgK, tKsK, tma_atom_V, tVgV, tVsV, pipe_q, pipe_k, pipe_v)
        if const_expr(self.overlap_items):
            k_state, v_state = self._load_items(works, mLSE, num_heads_kv, *tile_args, q_state, k_state, v_state)
        elif const_expr(self.persistent > 0):
            for w in cutlass.range(works[0], works[1], works[2], unroll=1):
                work, head, head_kv, batch = self._producer_item(w, mLSE, num_heads_kv)
                k_state, v_state = self._load_tile(work, head, head_kv, batch, *tile_args, q_state, k_state, v_state)
                q_state.advance()
        else:
            k_state, v_state = self._load_tile(*works, *tile_args, q_state, k_state, v_state)
        if const_expr(self.cluster > 1):
            # Stay until every CTA's consumers released every stage: their arrives land on this
            # CTA's empty barriers, which must outlive them.
            pipe_k.producer_tail(k_state)
            pipe_v.producer_tail(v_state)

    @cute.jit
    def _load_tile(
        self, work: QTileWork, head: Int32, head_kv: Int32, batch: Int32,
        tma_atom_Q: cute.CopyAtom, tma_Q: cute.Tensor, sQ: cute.Tensor, tma_atom_K: cute.CopyAtom,
        tKgK: cute.Tensor, tKsK: cute.Tensor, tma_atom_V: cute.CopyAtom, tVgV: cute.Tensor, tVsV: cute.Tensor,
        pipe_q: Any, pipe_k: Any, pipe_v: Any, q_state: Any, k_state: Any, v_state: Any,
    ) -> tuple:
        """One work item's loads: Q, then K and V; returns the K and V pipeline positions after it."""
        self._load_q(work, head, batch, tma_atom_Q, tma_Q, sQ, pipe_q, q_state)
        self._stamp_lane0(9)

        # In a cluster, CTA 0 loads every K tile and CTA 1 every V tile, each into every CTA.
        load_k = (tma_atom_K, tKgK, tKsK, pipe_k, 0, work.group, head_kv, batch)
        load_v = (tma_atom_V, tVgV, tVsV, pipe_v, 1, work.group, head_kv, batch)
        if const_expr(not self.overlap):
            kv_state = k_state
            for origin, extent in work.kv_boxes():  # 2 * rank + 1 boxes, unrolled
                cur = TileCursor(origin)
                for _ in cutlass.range(math.prod(extent), unroll=1):
                    self._load_kv(*load_k, cur.idx, kv_state, work.shared)
                    self._load_kv(*load_v, cur.idx, kv_state, work.shared)
                    kv_state.advance()
                    cur = TileCursor(work.box_step(cur.idx, origin, extent))
            k_state, v_state = kv_state, kv_state.clone()
        else:
            pending = _PendingLoad(work.kv_lo, work.group, head_kv, batch, work.shared)
            pending, _, k_state, v_state = self._load_kv_stream(
                work, head_kv, batch, tma_atom_K, tKgK, tKsK, tma_atom_V, tVgV, tVsV, pipe_k, pipe_v,
                pending, Int32(0), k_state, v_state, Int32(1),
            )
            self._load_pending_v(tma_atom_V, tVgV, tVsV, pipe_v, pending, v_state)
            v_state.advance()
        return k_state, v_state

    @cute.jit
    def _load_items(
        self, works: tuple, mLSE: cute.Tensor, num_heads_kv: Int32,
        tma_atom_Q: cute.CopyAtom, tma_Q: cute.Tensor, sQ: cute.Tensor, tma_atom_K: cute.CopyAtom,
        tKgK: cute.Tensor, tKsK: cute.Tensor, tma_atom_V: cute.CopyAtom, tVgV: cute.Tensor, tVsV: cute.Tensor,
        pipe_q: Any, pipe_k: Any, pipe_v: Any, q_state: Any, k_state: Any, v_state: Any,
    ) -> tuple:
        """A persistent CTA's loads as one stream (``overlap_items``): per item its Q, then K one
        tile ahead of V as in ``_load_tile``, but the last V of an item is issued after the next
        item's Q and first K.  Waiting for that V's stage (released one tile after K's) no longer
        holds back the next item's first loads, which the consumers ask for right after this
        item's last PV."""
        work, _, head_kv, batch = fwd_common.decode_work(self.geom, mLSE, num_heads_kv, self.rank, works[0])
        pending = _PendingLoad(work.kv_lo, work.group, head_kv, batch, work.shared)  # the V still to issue
        has_pending = Int32(0)
        for w in cutlass.range(works[0], works[1], works[2], unroll=1):
            work, head, head_kv, batch = self._producer_item(w, mLSE, num_heads_kv)
            self._load_q(work, head, batch, tma_atom_Q, tma_Q, sQ, pipe_q, q_state)
            q_state.advance()
            self._stamp_lane0(9)
            pending, has_pending, k_state, v_state = self._load_kv_stream(
                work, head_kv, batch, tma_atom_K, tKgK, tKsK, tma_atom_V, tVgV, tVsV, pipe_k, pipe_v,
                pending, has_pending, k_state, v_state, Int32(w == works[0]),
            )
        self._load_pending_v(tma_atom_V, tVgV, tVsV, pipe_v, pending, v_state)
        v_state.advance()
        return k_state, v_state

    @cute.jit
    def _load_kv_stream(
        self, work: QTileWork, head_kv: Int32, batch: Int32, tma_atom_K: cute.CopyAtom, tKgK: cute.Tensor,
        tKsK: cute.Tensor, tma_atom_V: cute.CopyAtom, tVgV: cute.Tensor, tVsV: cute.Tensor, pipe_k: Any,
        pipe_v: Any, pending: _PendingLoad, has_pending: Int32, k_state: Any, v_state: Any, first_item: Int32,
    ) -> tuple:
        """One item's K/V loads with K one tile ahead of V: each tile's K, then the ``pending``
        V (the previous tile's, possibly of an earlier item).  The overlapped consumer needs K(j)
        before V(j-1); issued together, V's stage releases (one tile later than K's) would
        throttle the K prefetch.  Returns the V still owed (this item's last), whether there is
        one, and the K/V pipeline positions.  ``first_item``: the CTA's first work item (the dev
        ``prefetch_kv`` look-ahead runs on it only)."""
        step = Int32(0)
        for origin, extent in work.kv_boxes():  # 2 * rank + 1 boxes, unrolled
            cur = TileCursor(origin)
            for _ in cutlass.range(math.prod(extent), unroll=1):
                self._load_kv(tma_atom_K, tKgK, tKsK, pipe_k, 0, work.group, head_kv, batch, cur.idx, k_state,
                              work.shared)
                k_state.advance()
                if const_expr(self.prefetch_kv > 0):
                    if first_item > 0:
                        self._prefetch_kv(work, step + self.prefetch_kv, head_kv, batch, tma_atom_K, tKgK,
                                          tma_atom_V, tVgV)
                    step = step + 1
                if const_expr(self.trace):
                    if has_pending == 0:
                        self._stamp_lane0(10)
                if has_pending > 0:
                    self._load_pending_v(tma_atom_V, tVgV, tVsV, pipe_v, pending, v_state)
                    v_state.advance()
                pending = _PendingLoad(cur.idx, work.group, head_kv, batch, work.shared)
                has_pending = Int32(1)
                cur = TileCursor(work.box_step(cur.idx, origin, extent))
        return pending, has_pending, k_state, v_state

    @cute.jit
    def _prefetch_kv(
        self, work: QTileWork, s: Int32, head_kv: Int32, batch: Int32, tma_atom_K: cute.CopyAtom,
        tKgK: cute.Tensor, tma_atom_V: cute.CopyAtom, tVgV: cute.Tensor,
    ) -> None:
        """Dev ``prefetch_kv``: TMA-prefetch the K and V tiles of visiting step ``s`` into L2 (none
        past the item's last tile; in a cluster CTA 0 prefetches for both)."""
        if s < work.num_kv_tiles:
            coord = self._tile_coord(work.tile_at(s), head_kv, work.group, batch)[1]
            issue = True
            if const_expr(self.cluster > 1):
                issue = cute.arch.block_idx_in_cluster() == 0
            if issue:
                cute.prefetch(tma_atom_K, tKgK[None, coord])
                cute.prefetch(tma_atom_V, tVgV[None, coord])

    def _load_pending_v(
        self, tma_atom_V: cute.CopyAtom, tVgV: cute.Tensor, tVsV: cute.Tensor, pipe_v: Any, pending: _PendingLoad,
        v_state: Any,
    ) -> None:
        """Issue the V load ``pending`` names (in a cluster, CTA 1 loads V for all of them)."""
        self._load_kv(tma_atom_V, tVgV, tVsV, pipe_v, 1, pending.group, pending.head_kv, pending.batch, pending.idx,
                      v_state, pending.shared)

    @cute.jit
    def _producer_item(self, w: Int32, mLSE: cute.Tensor, num_heads_kv: Int32) -> tuple:
        """A persistent producer's work item ``w``: ``(work, head, head_kv, batch)`` (and its first
        trace stamps)."""
        self._set_trace_item(w)
        if const_expr(self.trace):
            if cute.arch.lane_idx() == 0:
                self._stamp(0, cute.arch.smid())
                self._stamp(1, cute.arch.globaltimer_lo())
        return fwd_common.decode_work(self.geom, mLSE, num_heads_kv, self.rank, w)

    def _load_q(
        self, work: QTileWork, head: Int32, batch: Int32, tma_atom_Q: cute.CopyAtom, tma_Q: cute.Tensor,
        sQ: cute.Tensor, pipe_q: Any, q_state: Any,
    ) -> None:
        """TMA-load the item's Q tile into the Q stage of ``q_state``."""
        tiler_q = tile_views.tile_tiler(self.cfg.q_tile_shape, self.hdim)
        gQ = cute.zipped_divide(tma_Q, tiler_q)[self._tile_coord(work.q_tile_idx, head, work.group, batch)]
        if const_expr(self.q_stages > 1):
            sQ = sQ[None, None, q_state.index]
        tQsQ, tQgQ = fwd_common.tma_tile_partition(tma_atom_Q, sQ, gQ)
        fwd_common.tma_load_q(tma_atom_Q, tQgQ, tQsQ, pipe_q, q_state)

    def _load_kv(
        self, atom: cute.CopyAtom, tXgX: cute.Tensor, tXsX: cute.Tensor, pipe: Any, issuer_rank: int,
        group: list, head_kv: Int32, batch: Int32, kv: list, state: Any, shared: Any = True,
    ) -> None:
        """Acquire a stage and TMA-load K or V of KV tile ``kv`` (per-dim indices) into it; in a
        cluster only the CTA of rank ``issuer_rank`` loads, into every CTA of the cluster, unless
        the item's cluster shares nothing (``QTileWork.shared`` 0: a tail cluster), where every
        CTA loads its own tile (a multicast to itself: one TMA atom serves both)."""
        coord = self._tile_coord(kv, head_kv, group, batch)[1]
        if const_expr(self.cluster > 1):
            rank = cute.arch.block_idx_in_cluster()
            issuer, mask = rank == issuer_rank, (1 << self.cluster) - 1
            if const_expr(self.cfg.cluster_tail):
                issuer = issuer | (shared == 0)
                mask = cutlass.select_(shared == 0, Int32(1) << rank, Int32(mask))
            fwd_common.tma_load_stage(atom, tXgX, tXsX, pipe, coord, state, issuer, mask)
        else:
            fwd_common.tma_load_stage(atom, tXgX, tXsX, pipe, coord, state)

    @cute.jit
    def consume(
        self, works: tuple, mLSE: cute.Tensor, num_heads_kv: Int32, tma_atom_O: cute.CopyAtom,
        tma_O: cute.Tensor, mCounts: cute.Tensor, sQ: cute.Tensor, sK: cute.Tensor, sV: cute.Tensor,
        sO: cute.Tensor, pipe_q: Any, pipe_k: Any, pipe_v: Any, scale_log2: Float32,
    ):
        """Consumer warpgroups: per work item, the KV loop (masked body only on partial tiles),
        then the epilogue."""
        tidx = cute.arch.thread_idx()[0] - 128
        t_centry = cute.arch.globaltimer_lo() if const_expr(self.trace) else Int32(0)
        wg = cute.arch.make_warp_uniform(tidx // 128)
        mma_qk, mma_pv = self.tiled_mma_qk, self.tiled_mma_pv
        thr_qk = mma_qk.get_slice(tidx)
        wg_qk = mma_qk.get_slice(wg * 128)
        wg_pv = mma_pv.get_slice(wg * 128)
        tSrQ = wg_qk.make_fragment_A(wg_qk.partition_A(sQ))
        tSrK = wg_qk.make_fragment_B(wg_qk.partition_B(sK))
        sVt = cute.composition(
            sV, cute.make_ordered_layout((self.hdimv, self.tile_n, self.num_stages), order=(1, 0, 2))
        )
        tOrVt = wg_pv.make_fragment_B(wg_pv.partition_B(sVt))
        tOrP = wg_pv.make_fragment_A(wg_pv.partition_shape_A((self.tile_m, self.tile_n)))
        acc_S = cute.make_rmem_tensor(thr_qk.partition_shape_C((self.tile_m, self.tile_n)), Float32)
        thr_pv = mma_pv.get_slice(tidx)
        acc_O = cute.make_rmem_tensor(thr_pv.partition_shape_C((self.tile_m, self.hdimv)), Float32)

        # This thread's rows (Q tile positions) and columns (KV tile positions).
        coords = acc_rows_view(thr_qk.partition_C(cute.make_identity_tensor((self.tile_m, self.tile_n))))
        num_rows = cute.size(coords, mode=[0])
        row_coords = [coords[r, 0][0] for r in range(num_rows)]
        col_coords = [coords[0, c][1] for c in range(cute.size(coords, mode=[1]))]
        softmax = OnlineSoftmax(num_rows, scale_log2, self.exp2_emulation)
        row_scale = cute.make_rmem_tensor(num_rows, Float32)

        q_state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, self.q_stages)
        kv_state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, self.num_stages)
        if const_expr(self.mainloop == "rotated"):
            # Once per CTA: the turn chain runs on from work item to work item (each warpgroup
            # waits and arrives equally often per item).
            self._open_turns(wg)
        tile_args = (
            tma_atom_O, tma_O, mLSE, mCounts, sO, pipe_q, pipe_k, pipe_v, wg, tidx, row_coords, col_coords,
            softmax, row_scale, acc_S, acc_O, tSrQ, tSrK, tOrP, tOrVt, t_centry,
        )
        if const_expr(self.overlap_items):
            self._consume_items(works, num_heads_kv, *tile_args[:-1], q_state, kv_state)
            if self._is_o_store_warp(wg):
                fwd_common.tma_store_wait()  # the last item's O store has read its smem
        elif const_expr(self.persistent > 0):
            for w in cutlass.range(works[0], works[1], works[2], unroll=1):
                self._set_trace_item(w)
                work, head, _, batch = fwd_common.decode_work(self.geom, mLSE, num_heads_kv, self.rank, w)
                kv_state = self._consume_tile(work, head, batch, *tile_args, q_state, kv_state)
                q_state.advance()
            if self._is_o_store_warp(wg):
                fwd_common.tma_store_wait()  # the last item's O store has read its smem
        else:
            work, head, _, batch = works
            self._consume_tile(work, head, batch, *tile_args, q_state, kv_state)

    @cute.jit
    def _consume_tile(
        self, work: QTileWork, head: Int32, batch: Int32, tma_atom_O: cute.CopyAtom, tma_O: cute.Tensor,
        mLSE: cute.Tensor, mCounts: cute.Tensor, sO: cute.Tensor, pipe_q: Any, pipe_k: Any, pipe_v: Any,
        wg: Int32, tidx: Int32, row_coords: list, col_coords: list, softmax: OnlineSoftmax,
        row_scale: cute.Tensor, acc_S: cute.Tensor, acc_O: cute.Tensor, tSrQ: cute.Tensor, tSrK: cute.Tensor,
        tOrP: cute.Tensor, tOrVt: cute.Tensor, t_centry: Int32, q_state: Any, kv_state: Any,
    ) -> Any:
        """One work item: mainloop and epilogue; returns the K/V pipeline position after it."""
        if const_expr(self.q_stages > 1):
            tSrQ = tSrQ[None, None, None, q_state.index]
        acc_O.fill(0.0)
        windows = RowWindows(work, row_coords)
        softmax.reset()
        t_prolog = cute.arch.globaltimer_lo() if const_expr(self.trace) else Int32(0)
        pipe_q.consumer_wait(q_state)
        t_q = cute.arch.globaltimer_lo() if const_expr(self.trace) else Int32(0)
        loop_args = (windows, col_coords, softmax, row_scale, acc_S, acc_O, tSrQ, tSrK, tOrP, tOrVt, pipe_k, pipe_v)
        if const_expr(self.mainloop == "rotated"):
            num_full, kv_state = self._mainloop_rotated(work, wg, *loop_args, kv_state)
            if const_expr(self.persistent > 0):
                pipe_q.consumer_release(q_state)  # every QK is done: the next item's Q may load
            self._pv(acc_O, tOrP, tOrVt, pipe_v, kv_state)  # the last tile's PV
            kv_state.advance()
        elif const_expr(self.mainloop == "hybrid"):
            num_full = self._mainloop_hybrid(work, wg, *loop_args)
        else:
            num_full = self._mainloop_serial(work, *loop_args)

        t_loop = cute.arch.globaltimer_lo() if const_expr(self.trace) else Int32(0)
        self._finish_item(work, head, batch, num_full, softmax, row_scale, acc_O, row_coords, col_coords[0], wg, tidx,
                          sO, tma_atom_O, tma_O, mLSE, mCounts, t_q, t_loop, ((11, t_centry), (12, t_prolog)))
        return kv_state

    @cute.jit
    def _finish_item(
        self, work: QTileWork, head: Int32, batch: Int32, num_full: Int32, softmax: OnlineSoftmax,
        row_scale: cute.Tensor, acc_O: cute.Tensor, row_coords: list, col0: Int32, wg: Int32, tidx: Int32,
        sO: cute.Tensor, tma_atom_O: cute.CopyAtom, tma_O: cute.Tensor, mLSE: cute.Tensor, mCounts: cute.Tensor,
        t_q: Int32, t_loop: Int32, more_stamps: tuple = (),
    ) -> None:
        """After an item's last PV: normalize O, the epilogue, the trace stamps and debug counts."""
        lse = cute.make_rmem_tensor(len(row_coords), Float32)
        softmax.finalize(row_scale, lse)
        rescale_rows(acc_O, row_scale)
        self.epilogue(work, head, batch, acc_O, lse, row_coords, col0, wg, tidx, sO, tma_atom_O, tma_O, mLSE)
        if const_expr(self.trace):
            if tidx == 0:
                self._stamp(2, t_q)
                self._stamp(4, t_loop)
                self._stamp(5, cute.arch.globaltimer_lo())
                self._stamp(6, work.num_kv_tiles)
                for slot, value in more_stamps:
                    self._stamp(slot, value)
        if const_expr(self.cfg.count_tiles):
            if tidx == 0 and batch == 0 and head == 0:
                idx = (*work.group, *work.q_tile_idx)
                mCounts[(0, *idx)] = work.num_kv_tiles
                mCounts[(1, *idx)] = num_full

    @cute.jit
    def _stamp_first_s(self, w: Int32, tidx: Int32) -> None:
        """Trace mode, persistent CTA: item ``w``'s first S is done (slot 13)."""
        if const_expr(self.trace):
            if tidx == 0:
                self._set_trace_item(w)
                self._stamp(13, cute.arch.globaltimer_lo())

    def _set_trace_item(self, w: Int32) -> None:
        """Trace mode of a persistent CTA: the work item the next stamps belong to."""
        self._trace_item = w

    @cute.jit
    def _stamp_lane0(self, slot: int) -> None:
        """Trace mode, producer warp: stamp ``slot`` from lane 0."""
        if const_expr(self.trace):
            if cute.arch.lane_idx() == 0:
                self._stamp(slot, cute.arch.globaltimer_lo())

    def _stamp(self, slot: int, value: Int32) -> None:
        """Trace mode: ``trace[item, slot] = value`` in the counts argument; the item is the CTA's
        linear block index, or a persistent CTA's current work item."""
        if const_expr(self.persistent > 0):
            cta = self._trace_item  # the work item
        else:
            bx, by, bz = cute.arch.block_idx()
            gx, gy, _ = cute.arch.grid_dim()
            cta = bx + gx * (by + gy * bz)
        self._trace_t[(cta, slot, *([0] * (2 * self.rank - 1)))] = Int32(value)

    def _scores(
        self, acc_S: cute.Tensor, kv: list, masked: bool, windows: RowWindows, col_coords: list,
        softmax: OnlineSoftmax, row_scale: cute.Tensor,
    ) -> None:
        """S -> P in place: the element mask (partial tiles only), then the online softmax step."""
        if const_expr(masked):
            windows.apply(acc_S, col_coords, kv)
        softmax.update(acc_S, row_scale)

    def _qk(self, acc_S: cute.Tensor, tSrQ: cute.Tensor, tSrK: cute.Tensor, pipe_k: Any, k_state: Any) -> None:
        """S = Q K^T of the K stage ``k_state``, waited for; the stage is released at once."""
        pipe_k.consumer_wait(k_state)
        _gemm(self.tiled_mma_qk, acc_S, tSrQ, tSrK[None, None, None, k_state.index], zero_init=True)
        warpgroup.wait_group(0)
        pipe_k.consumer_release(k_state)

    def _pv(self, acc_O: cute.Tensor, tOrP: cute.Tensor, tOrVt: cute.Tensor, pipe_v: Any, v_state: Any) -> None:
        """O += P V of the V stage ``v_state``, waited for; the stage is released at once."""
        pipe_v.consumer_wait(v_state)
        _gemm(self.tiled_mma_pv, acc_O, tOrP, tOrVt[None, None, None, v_state.index], zero_init=False)
        warpgroup.wait_group(0)
        pipe_v.consumer_release(v_state)

    @cute.jit
    def _open_turns(self, wg: Int32) -> None:
        """Warpgroup 0 issues first: it starts the turn-taking chain of named barriers."""
        if const_expr(self.turns):
            if wg == 0:
                cute.arch.barrier_arrive(barrier_id=_SCHED_BARRIER, number_of_threads=256)

    def _serial_step(
        self, kv: list, masked: bool, windows: RowWindows, col_coords: list, softmax: OnlineSoftmax,
        row_scale: cute.Tensor, acc_S: cute.Tensor, acc_O: cute.Tensor, tSrQ: cute.Tensor,
        tSrK: cute.Tensor, tOrP: cute.Tensor, tOrVt: cute.Tensor, pipe_k: Any, pipe_v: Any, kv_state: Any,
    ) -> None:
        """One KV tile, QK then softmax then PV; the caller advances ``kv_state``."""
        self._qk(acc_S, tSrQ, tSrK, pipe_k, kv_state)
        self._scores(acc_S, kv, masked, windows, col_coords, softmax, row_scale)
        rescale_rows(acc_O, row_scale)
        tOrP.store(_frag_a_view(acc_S).load().to(self.dtype))
        self._pv(acc_O, tOrP, tOrVt, pipe_v, kv_state)

    @cute.jit
    def _mainloop_serial(
        self, work: QTileWork, windows: RowWindows, col_coords: list, softmax: OnlineSoftmax,
        row_scale: cute.Tensor, acc_S: cute.Tensor, acc_O: cute.Tensor, tSrQ: cute.Tensor,
        tSrK: cute.Tensor, tOrP: cute.Tensor, tOrVt: cute.Tensor, pipe_k: Any, pipe_v: Any,
    ) -> Int32:
        """QK, softmax, PV one after the other: partial tiles (masked), then full tiles.

        Returns the number of unmasked iterations (the debug counters' "full" count).
        """
        kv_state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, self.num_stages)
        step = (windows, col_coords, softmax, row_scale, acc_S, acc_O, tSrQ, tSrK, tOrP, tOrVt, pipe_k, pipe_v)
        for j in cutlass.range(work.num_partial_tiles, unroll=1):
            self._serial_step(work.partial_tile(j), True, *step, kv_state)
            kv_state.advance()
        for j in cutlass.range(work.num_full_tiles, unroll=1):
            self._serial_step(work.full_tile(j), False, *step, kv_state)
            kv_state.advance()
        return work.num_full_tiles

    @cute.jit
    def _rotated_first(
        self, kv: list, masked: bool, windows: RowWindows, col_coords: list, softmax: OnlineSoftmax,
        row_scale: cute.Tensor, acc_S: cute.Tensor, acc_O: cute.Tensor, tSrQ: cute.Tensor,
        tSrK: cute.Tensor, tOrP: cute.Tensor, tOrVt: cute.Tensor, pipe_k: Any, pipe_v: Any, state: Any,
    ) -> None:
        """The first tile of a rotated loop: QK, softmax, P -> fp16; its PV is issued by the next
        step (or by the caller after the loop), so ``state`` stays on this tile's stage."""
        if const_expr(self.trace):
            pipe_k.consumer_wait(state)
            if cute.arch.thread_idx()[0] == 128:
                self._stamp(13, cute.arch.globaltimer_lo())
        self._qk(acc_S, tSrQ, tSrK, pipe_k, state)
        self._first_scores(kv, masked, windows, col_coords, softmax, row_scale, acc_S, acc_O, tOrP)

    def _first_scores(
        self, kv: list, masked: bool, windows: RowWindows, col_coords: list, softmax: OnlineSoftmax,
        row_scale: cute.Tensor, acc_S: cute.Tensor, acc_O: cute.Tensor, tOrP: cute.Tensor,
    ) -> None:
        """The first tile's S (its QK done): mask, softmax, O rescale, P -> fp16."""
        self._scores(acc_S, kv, masked, windows, col_coords, softmax, row_scale)
        rescale_rows(acc_O, row_scale)
        tOrP.store(_frag_a_view(acc_S).load().to(self.dtype))

    @cute.jit
    def _rotated_step(
        self, wg: Int32, tile_of: Any, j: Int32, masked: bool, windows: RowWindows, col_coords: list,
        softmax: OnlineSoftmax, row_scale: cute.Tensor, acc_S: cute.Tensor, acc_O: cute.Tensor,
        tSrQ: cute.Tensor, tSrK: cute.Tensor, tOrP: cute.Tensor, tOrVt: cute.Tensor, pipe_k: Any,
        pipe_v: Any, state: Any,
    ) -> Any:
        """KV tile ``tile_of(j)``: issue QK(j) and PV(j-1) in this warpgroup's turn, wait QK(j),
        mask (``masked``) + softmax(j) while PV(j-1) runs, wait PV(j-1) and release its V, then
        P(j) -> fp16 and the O rescale by j's row factors.

        The conversion and the rescale sit at the end of the step, not before the next issue, so
        the turn window (barrier wait .. arrive) holds only the two GEMM issues; the other
        warpgroup waits on it (FA3/FA4's order; measured: 2D dense 80-81 ms vs 85-86 ms with
        them at the top).  One pipeline state: V lags K by one stage (``state`` enters on tile
        j-1's stage and leaves on tile j's).
        """
        v_state = state.clone()
        state.advance()
        kv = tile_of(j)
        early = self.early_stage_slices and not masked
        if const_expr(early):
            k_stage, v_stage = tSrK[None, None, None, state.index], tOrVt[None, None, None, v_state.index]
        pipe_k.consumer_wait(state)
        if const_expr(self.turns):
            cute.arch.barrier(barrier_id=_SCHED_BARRIER + wg, number_of_threads=256)
        if const_expr(not early):
            k_stage = tSrK[None, None, None, state.index]
        _gemm(self.tiled_mma_qk, acc_S, tSrQ, k_stage, zero_init=True)
        pipe_v.consumer_wait(v_state)
        if const_expr(not early):
            v_stage = tOrVt[None, None, None, v_state.index]
        _gemm(self.tiled_mma_pv, acc_O, tOrP, v_stage, zero_init=False)
        if const_expr(self.turns):
            cute.arch.barrier_arrive(barrier_id=_SCHED_BARRIER + 1 - wg, number_of_threads=256)
        warpgroup.wait_group(1)
        pipe_k.consumer_release(state)
        self._scores(acc_S, kv, masked, windows, col_coords, softmax, row_scale)
        warpgroup.wait_group(0)
        pipe_v.consumer_release(v_state)
        tOrP.store(_frag_a_view(acc_S).load().to(self.dtype))
        rescale_rows(acc_O, row_scale)
        return state

    @cute.jit
    def _mainloop_hybrid(
        self, work: QTileWork, wg: Int32, windows: RowWindows, col_coords: list, softmax: OnlineSoftmax,
        row_scale: cute.Tensor, acc_S: cute.Tensor, acc_O: cute.Tensor, tSrQ: cute.Tensor,
        tSrK: cute.Tensor, tOrP: cute.Tensor, tOrVt: cute.Tensor, pipe_k: Any, pipe_v: Any,
    ) -> Int32:
        """The partial tiles serially, then the full tiles in the rotated loop (see
        ``_mainloop_rotated``)."""
        state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, self.num_stages)
        step = (windows, col_coords, softmax, row_scale, acc_S, acc_O, tSrQ, tSrK, tOrP, tOrVt, pipe_k, pipe_v)
        for j in cutlass.range(work.num_partial_tiles, unroll=1):
            self._serial_step(work.partial_tile(j), True, *step, state)
            state.advance()
        if work.num_full_tiles > 0:
            self._open_turns(wg)
            self._rotated_first(work.full_tile(0), False, *step, state)
            for f in cutlass.range(1, work.num_full_tiles, unroll=1):
                state = self._rotated_step(wg, work.full_tile, f, False, *step, state)
            self._pv(acc_O, tOrP, tOrVt, pipe_v, state)
        return work.num_full_tiles

    @cute.jit
    def _mainloop_rotated(
        self, work: QTileWork, wg: Int32, windows: RowWindows, col_coords: list, softmax: OnlineSoftmax,
        row_scale: cute.Tensor, acc_S: cute.Tensor, acc_O: cute.Tensor, tSrQ: cute.Tensor,
        tSrK: cute.Tensor, tOrP: cute.Tensor, tOrVt: cute.Tensor, pipe_k: Any, pipe_v: Any, state: Any,
    ) -> tuple:
        """Software-pipelined by one tile: QK(j) and PV(j-1) are issued together, the softmax of
        tile j overlaps PV(j-1), and the two warpgroups take turns issuing (named barriers), so
        one's GEMMs run while the other does its softmax.

        Tile 0 (QK and softmax only) is peeled; the tiles after it run in the item's two runs
        (``QTileWork.visit_runs``: the masked loop, then the unmasked one, or full-first the other
        way round); the caller issues the last tile's PV (after releasing Q in a persistent CTA).
        ``state`` enters on tile 0's stage.
        Returns the number of unmasked iterations (the debug counters' "full" count) and the
        last tile's pipeline position.
        """
        step = (windows, col_coords, softmax, row_scale, acc_S, acc_O, tSrQ, tSrK, tOrP, tOrVt, pipe_k, pipe_v)
        self._on_first_tile(work, lambda kv, masked: self._rotated_first(kv, masked, *step, state))
        if const_expr(self.trace):
            if cute.arch.thread_idx()[0] == 128:
                self._stamp(14, cute.arch.globaltimer_lo())
        return work.num_full_tiles, self._rotated_rest(work, wg, *step, state)

    @cute.jit
    def _rotated_rest(
        self, work: QTileWork, wg: Int32, windows: RowWindows, col_coords: list, softmax: OnlineSoftmax,
        row_scale: cute.Tensor, acc_S: cute.Tensor, acc_O: cute.Tensor, tSrQ: cute.Tensor,
        tSrK: cute.Tensor, tOrP: cute.Tensor, tOrVt: cute.Tensor, pipe_k: Any, pipe_v: Any, state: Any,
    ) -> Any:
        """The rotated steps after the peeled tile 0: the item's first run (the partial tiles, or
        full-first the full ones), then its second; returns the last tile's pipeline position."""
        step = (windows, col_coords, softmax, row_scale, acc_S, acc_O, tSrQ, tSrK, tOrP, tOrVt, pipe_k, pipe_v)
        (first_of, first_masked, n_first), (second_of, second_masked, n_second) = work.visit_runs()
        for j in cutlass.range(1, n_first, unroll=1):
            state = self._rotated_step(wg, first_of, j, first_masked, *step, state)
            self._stamp_step(j)
        # The second run; its first tile was peeled when the first run is empty.
        for f in cutlass.range(1 - cutlass.min(n_first, 1), n_second, unroll=1):
            state = self._rotated_step(wg, second_of, f, second_masked, *step, state)
            self._stamp_step(n_first + f)
        return state

    @cute.jit
    def _stamp_step(self, s: Int32) -> None:
        """Trace mode: visiting step ``s`` (1..12) of the item done (its softmax, the previous PV),
        by the first consumer thread: slots 18..29, the per-tile time curve of an item."""
        if const_expr(self.trace):
            if cute.arch.thread_idx()[0] == 128:
                if s <= _TRACE_STEPS:
                    self._stamp(17 + s, cute.arch.globaltimer_lo())

    @cute.jit
    def _consume_items(
        self, works: tuple, num_heads_kv: Int32, tma_atom_O: cute.CopyAtom, tma_O: cute.Tensor,
        mLSE: cute.Tensor, mCounts: cute.Tensor, sO: cute.Tensor, pipe_q: Any, pipe_k: Any, pipe_v: Any,
        wg: Int32, tidx: Int32, row_coords: list, col_coords: list, softmax: OnlineSoftmax,
        row_scale: cute.Tensor, acc_S: cute.Tensor, acc_O: cute.Tensor, tSrQ: cute.Tensor, tSrK: cute.Tensor,
        tOrP: cute.Tensor, tOrVt: cute.Tensor, q_state: Any, state: Any,
    ) -> None:
        """A persistent CTA's items with the boundary software-pipelined (``overlap_items``).

        Per item: the rotated steps after tile 0; Q released; the last PV issued and the next
        item's first QK right behind it; once the PV is done, the epilogue (finalize, O to smem,
        TMA store, LSE) runs while the tensor cores compute the next item's first S; then that
        tile's softmax.  Every WGMMA is waited for inside the iteration that issued it, and none
        sits in a branch: ptxas serializes every WGMMA of the kernel otherwise (seen in the SASS:
        a wait after each one).  So the last item issues its "next" QK too, on the stale Q and K
        stages, and throws the result away.
        """
        first, end, stride = works
        work, head, _, batch = fwd_common.decode_work(self.geom, mLSE, num_heads_kv, self.rank, first)
        acc_O.fill(0.0)
        softmax.reset()
        pipe_q.consumer_wait(q_state)
        self._qk(acc_S, tSrQ[None, None, None, q_state.index], tSrK, pipe_k, state)
        self._stamp_first_s(first, tidx)
        self._first_tile_scores(work, RowWindows(work, row_coords), col_coords, softmax, row_scale, acc_S, acc_O, tOrP)
        for w in cutlass.range(first, end, stride, unroll=1):
            self._set_trace_item(w)
            t_q = cute.arch.globaltimer_lo() if const_expr(self.trace) else Int32(0)
            windows = RowWindows(work, row_coords)  # per item: a register array carried across the loop goes to local memory
            step = (windows, col_coords, softmax, row_scale, acc_S, acc_O, tSrQ[None, None, None, q_state.index],
                    tSrK, tOrP, tOrVt, pipe_k, pipe_v)
            state = self._rotated_rest(work, wg, *step, state)
            pipe_q.consumer_release(q_state)  # every QK of this item is done: a later Q may load
            q_state.advance()
            v_state = state.clone()
            state.advance()
            nxt = w + stride
            has_next = nxt < end
            pipe_v.consumer_wait(v_state)
            _gemm(self.tiled_mma_pv, acc_O, tOrP, tOrVt[None, None, None, v_state.index], zero_init=False)
            if has_next:
                pipe_q.consumer_wait(q_state)
                pipe_k.consumer_wait(state)
            _gemm(self.tiled_mma_qk, acc_S, tSrQ[None, None, None, q_state.index], tSrK[None, None, None, state.index],
                  zero_init=True)
            warpgroup.wait_group(1)  # the last PV
            pipe_v.consumer_release(v_state)
            t_loop = cute.arch.globaltimer_lo() if const_expr(self.trace) else Int32(0)
            self._finish_item(work, head, batch, work.num_full_tiles, softmax, row_scale, acc_O, row_coords,
                              col_coords[0], wg, tidx, sO, tma_atom_O, tma_O, mLSE, mCounts, t_q, t_loop)
            # The next item (past the end: decoded, its S computed from stale smem, all unused).
            work, head, _, batch = fwd_common.decode_work(self.geom, mLSE, num_heads_kv, self.rank, nxt)
            acc_O.fill(0.0)
            softmax.reset()
            warpgroup.wait_group(0)  # the next item's first QK
            if has_next:
                self._stamp_first_s(nxt, tidx)
                pipe_k.consumer_release(state)
                self._first_tile_scores(work, RowWindows(work, row_coords), col_coords, softmax, row_scale, acc_S,
                                        acc_O, tOrP)

    @cute.jit
    def _first_tile_scores(
        self, work: QTileWork, windows: RowWindows, col_coords: list, softmax: OnlineSoftmax,
        row_scale: cute.Tensor, acc_S: cute.Tensor, acc_O: cute.Tensor, tOrP: cute.Tensor,
    ) -> None:
        """Tile 0 of ``work`` (its QK done)."""
        self._on_first_tile(work, lambda kv, masked: self._first_scores(kv, masked, windows, col_coords, softmax,
                                                                        row_scale, acc_S, acc_O, tOrP))

    @cute.jit
    def _on_first_tile(self, work: QTileWork, fn: Any) -> None:
        """``fn(kv, masked)`` on the item's visiting step 0: the first run's first tile, else (an
        empty first run) the second's; ``masked`` is static, so each branch builds its own body."""
        (first_of, first_masked, n_first), (second_of, second_masked, _) = work.visit_runs()
        if n_first > 0:
            fn(first_of(0), first_masked)
        else:
            fn(second_of(0), second_masked)

    def _is_o_store_warp(self, wg: Int32) -> Any:
        """Whether this warp issues (and waits for) the O stores: the first warp of the storing
        warpgroup, i.e. of each warpgroup with the split epilogue."""
        warp_idx = cute.arch.make_warp_uniform(cute.arch.warp_idx())
        if const_expr(self.split_epilogue):
            return warp_idx == 4 + 4 * wg
        return warp_idx == 4

    def _epilogue_sync(self, wg: Int32) -> None:
        """The threads that share the O staging buffer meet: one warpgroup, or both."""
        if const_expr(self.split_epilogue):
            cute.arch.barrier(barrier_id=_WG_EPILOGUE_BARRIER + wg, number_of_threads=128)
        else:
            cute.arch.barrier(barrier_id=_EPILOGUE_BARRIER, number_of_threads=128 * self.num_mma_wg)

    @cute.jit
    def epilogue(
        self, work: QTileWork, head: Int32, batch: Int32, acc_O: cute.Tensor, lse: cute.Tensor,
        row_coords: list, col0: Int32, wg: Int32, tidx: Int32, sO: cute.Tensor, tma_atom_O: cute.CopyAtom,
        tma_O: cute.Tensor, mLSE: cute.Tensor,
    ):
        """O: registers -> smem (stmatrix) -> TMA store of the Q box, or of each warpgroup's half
        of it (split epilogue); LSE: predicated stores, issued while that store reads smem."""
        n = self.rank
        store_warp = self._is_o_store_warp(wg)
        rO = cute.make_rmem_tensor_like(acc_O, self.dtype)
        rO.store(acc_O.load().to(self.dtype))
        if const_expr(self.persistent > 0):
            # sO is free once the previous item's O store has read it (its issuer waits here).
            if store_warp:
                fwd_common.tma_store_wait()
            self._epilogue_sync(wg)
        sO_rows = sO  # (tile_m, D) as the PV MMA's C partition sees it
        if const_expr(self.split_epilogue):
            half = self.tile_m // 2
            sO_rows = cute.composition(sO, cute.make_layout(((half, 2), self.hdimv), stride=((1, half * self.hdimv), half)))
        store_atom = cute.make_copy_atom(cute.nvgpu.warp.StMatrix8x8x16bOp(transpose=False, num_matrices=4), self.dtype)
        thr_store = cute.make_tiled_copy_C(store_atom, self.tiled_mma_pv).get_slice(tidx)
        cute.copy(thr_store, thr_store.retile(rO), thr_store.partition_D(sO_rows))
        cute.arch.fence_view_async_shared()
        self._epilogue_sync(wg)

        box, sO_box = work.q_tile_idx, sO
        if const_expr(self.split_epilogue):  # this warpgroup's half of the Q box
            box = [work.q_tile_idx[0] * 2 + wg, *work.q_tile_idx[1:]]
            sO_box = sO[None, None, wg]
        if store_warp:
            tiler_o = tile_views.tile_tiler(self.o_tile_shape, self.hdimv)
            gO = cute.zipped_divide(tma_O, tiler_o)[self._tile_coord(box, head, work.group, batch)]
            fwd_common.tma_store_tile(tma_atom_O, sO_box, gO, wait=False)

        # The LSE stores run while the O store reads smem: the storing warp used to wait for those
        # reads first and only then store its rows' LSE (SASS).  The (batch, head) slice is taken
        # once; it was recomputed with 64-bit math for each row's store.
        if col0 == 0:
            gLSE = mLSE[_spatial_slice(batch, head, n)]
            for r in cutlass.range_constexpr(len(row_coords)):
                q_in = split_tile_index(row_coords[r], self.cfg.q_tile_shape)
                q = [work.q_tile_idx[i] * self.cfg.q_tile_shape[i] + q_in[i] for i in range(n)]
                inside = q[0] < work.group_len[0]
                for i in cutlass.range_constexpr(1, n):
                    inside = inside & (q[i] < work.group_len[i])
                if inside:
                    x = [q[i] * self.cfg.dilation[i] + work.group[i] for i in range(n)]
                    gLSE[_spatial_coord(x)] = lse[r]

        if const_expr(self.persistent == 0):
            if store_warp:
                fwd_common.tma_store_wait()


def log2_scale(scale: float) -> float:
    """The ``scale_log2`` argument: softmax scale times log2(e), folded into one exp2 FMA."""
    return scale * math.log2(math.e)
