"""Blackwell (sm_100a) fused GNA forward: TMA loads, tcgen05 MMA into tensor memory, GNA schedule.

Compile-checked on a CPU only (no Blackwell GPU here); its GPU tests are ready for SM 10.x.

One CTA computes one Q tile (128 or 256 in-group tokens of one dilation group, a 1-3 dim box) of
one (batch, head).  A 256-token tile is two 128-row halves *in flight at once*: they share every
K/V load, and while the softmax of one half runs, the tensor cores work on the other.  Roles:
- load warp: Q once, then K and V of every KV tile the shared scheduler names, partial tiles
  first, by TMA straight from the heads-last layout (``tile_views``) into a multi-stage
  shared-memory pipeline;
- MMA warp (one issuing thread): per KV tile ``S_h = Q_h K^T`` for each half into tensor memory,
  then ``O_h += P_h V`` into tensor memory (tcgen05, both operands in shared memory);
- one softmax warpgroup per half (one thread per Q row): read S from tensor memory, mask only
  partial tiles (window math of ``neighborhood`` via ``scheduler``/``mask``; the partial tiles
  run in a masked loop, then the full ones in an unmasked one), online softmax in fp32
  registers, P (input dtype) to shared memory, the row's rescale factor to the correction
  warpgroup;
- correction warpgroup (one thread per row of every half): rescale the O rows in tensor memory
  between P V products; at the end normalize O into shared memory (over Q), one TMA store of the Q
  box, and the LSE.

Hand-offs are mbarrier pipelines: TMA -> MMA (``PipelineTmaUmma``), MMA -> softmax (S) and MMA ->
correction (O) (``PipelineUmmaAsync``, signalled by tcgen05 commit), softmax -> MMA (P,
``PipelineAsyncUmma``), softmax -> correction (row factors through shared memory,
``PipelineAsync``); one set per half.  Not yet (the Blackwell FMHA's full form): P kept in tensor
memory (TS MMA), a lagging row max that skips most rescales, a persistent scheduler.
"""

from __future__ import annotations

import math
from typing import Any

import cutlass
import cutlass.cute as cute
import cutlass.pipeline as pipeline
import cutlass.utils as utils
import cutlass.utils.blackwell_helpers as sm100_utils
from cuda.bindings import driver as cuda
from cutlass import Float32, Int32, const_expr
from cutlass.cute.nvgpu import OperandMajorMode, cpasync, tcgen05

from gna_cute.kernels import fwd_common, tile_views
from gna_cute.kernels.config import FwdConfig
from gna_cute.kernels.mask import RowWindows
from gna_cute.kernels.scheduler import QTileWork, TileCursor, TileGeometry, split_tile_index
from gna_cute.kernels.softmax import LN2

_SMEM_BUDGET = 220 * 1024
_ROWS = 128  # one tcgen05 MMA of M = 128 per half: one TMEM lane (one softmax thread) per Q row
_TMEM_BARRIER = 1  # softmax + correction warpgroups + MMA warp: the TMEM base address is published
_EPILOGUE_BARRIER = 2  # correction warpgroup: the O tile is in shared memory
_TEARDOWN_BARRIER = 3  # softmax + correction warpgroups: nobody touches TMEM any more
_O_CHUNK = 32  # TMEM columns of O per load/store round trip


def _dsl_target() -> str:
    """The architecture the CuTe DSL compiles for (``CUTE_DSL_ARCH`` or the detected GPU)."""
    from cutlass.cutlass_dsl import CuTeDSL

    return str(CuTeDSL._get_dsl().envar.arch)


def _tmem_columns(needed: int) -> int:
    """TMEM allocations are a power of two of at least 32 columns."""
    cols = 32
    while cols < needed:
        cols *= 2
    return cols


class GNAFwdSm100:
    """The kernel for one static configuration (``FwdConfig`` is the compile-cache key)."""

    def __init__(self, cfg: FwdConfig) -> None:
        fwd_common.check_config(cfg, 100, "GNAFwdSm100")
        if cfg.q_tile_size not in (_ROWS, 2 * _ROWS):
            raise ValueError(f"q_tile_shape={cfg.q_tile_shape} must hold 128 or 256 tokens (1 or 2 MMAs of M = 128)")
        if cfg.kv_tile_size not in (64, 128):
            raise ValueError(f"kv_tile_shape={cfg.kv_tile_shape} must hold 64 or 128 tokens")
        target = _dsl_target()
        if not target.startswith(("sm_10", "sm_11")):
            raise ValueError(
                f"GNAFwdSm100 emits tcgen05/TMEM code for sm_100a, but the CuTe DSL targets {target!r} "
                "(set CUTE_DSL_ARCH=sm_100a before importing cutlass, or run on an SM 10.x GPU)"
            )
        self.cfg = cfg
        self.geom = TileGeometry.from_config(cfg)
        self.rank = cfg.rank
        self.dtype = fwd_common.DTYPES[cfg.dtype]
        self.tile_n = cfg.kv_tile_size
        self.hdim = cfg.head_dim
        self.dilated = any(d > 1 for d in cfg.dilation)
        self.halves = cfg.q_tile_size // _ROWS
        # warps 0 .. 4*halves-1: one softmax warpgroup per half; then the correction warpgroup; then
        # one warpgroup of the MMA warp, the load warp and two idle warps (setmaxnreg works on whole
        # warpgroups).  Registers per thread for softmax, correction, MMA/load: fits 64K per SM.
        self.correction_warp = 4 * self.halves
        self.mma_warp = self.correction_warp + 4
        self.load_warp = self.mma_warp + 1
        self.num_threads = 32 * (self.mma_warp + 4)
        self.regs = (240, 200, 56) if self.halves == 1 else (184, 88, 48)
        # TMEM columns: S of each half, then O of each half
        self.tmem_s = [h * self.tile_n for h in range(self.halves)]
        self.tmem_o = [self.halves * self.tile_n + h * self.hdim for h in range(self.halves)]
        self.tmem_cols = _tmem_columns(self.halves * (self.tile_n + self.hdim))
        if self.tmem_cols > 512:
            raise ValueError(f"{cfg}: S and O of {self.halves} halves need {self.tmem_cols} TMEM columns > 512")
        fixed = (cfg.q_tile_size * self.hdim + self.halves * _ROWS * self.tile_n) * 2  # Q (reused for O), P
        per_stage = self.tile_n * self.hdim * 2 * 2  # K and V
        self.num_stages = min(4, (_SMEM_BUDGET - fixed) // per_stage)
        if self.num_stages < 2:
            raise ValueError(
                f"q_tile_shape={cfg.q_tile_shape}, kv_tile_shape={cfg.kv_tile_shape}, head_dim={self.hdim}: "
                f"shared memory holds fewer than 2 K/V stages; use a KV tile of 64 tokens"
            )

    # ------------------------------------------------------------------ layouts and MMAs
    def _smem_layout(self, rows: int, cols: int, stages: int | None) -> Any:
        """K-major swizzled layout of a ``rows x cols`` tile (cols contiguous), optionally staged."""
        kind = sm100_utils.get_smem_layout_atom_ab(OperandMajorMode.K, self.dtype, (rows, cols))
        atom = tcgen05.make_smem_layout_atom(kind, self.dtype)
        if stages is None:
            return cute.tile_to_shape(atom, (rows, cols), order=(0, 1))
        return cute.tile_to_shape(atom, (rows, cols, stages), order=(0, 1, 2))

    def _make_layouts(self) -> None:
        """Static smem layouts (rebuilt wherever used: host and device are separate IR)."""
        self.sQ_layout = self._smem_layout(self.cfg.q_tile_size, self.hdim, None)
        self.sK_layout = self._smem_layout(self.tile_n, self.hdim, self.num_stages)
        self.sV_layout = self._smem_layout(self.tile_n, self.hdim, self.num_stages)
        self.sP_layout = self._smem_layout(_ROWS, self.tile_n, self.halves)  # one P tile per half

    def _make_mmas(self) -> tuple[cute.TiledMma, cute.TiledMma]:
        """S = Q K^T (both K-major) and O = P V (V MN-major), accumulating in tensor memory.

        Fresh objects per use: the MMA warp toggles their ACCUMULATE field inside its loop.
        """
        mma_qk = sm100_utils.make_trivial_tiled_mma(
            self.dtype, self.dtype, OperandMajorMode.K, OperandMajorMode.K, Float32,
            tcgen05.CtaGroup.ONE, (_ROWS, self.tile_n),
        )  # fmt: skip
        mma_pv = sm100_utils.make_trivial_tiled_mma(
            self.dtype, self.dtype, OperandMajorMode.K, OperandMajorMode.MN, Float32,
            tcgen05.CtaGroup.ONE, (_ROWS, self.hdim),
        )  # fmt: skip
        return mma_qk, mma_pv

    # ------------------------------------------------------------------ host side
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
            self.hdim, self.hdim, self.sQ_layout, self.sK_layout, self.sV_layout, self.sQ_layout,
        )  # O is staged in sQ
        self.tx_q = cute.size_in_bytes(self.dtype, self.sQ_layout)
        self.tx_kv = cute.size_in_bytes(self.dtype, fwd_common.stage_box(self.sK_layout))
        stages = self.num_stages
        halves = self.halves

        @cute.struct
        class SharedStorage:
            mbar_q: cute.struct.MemRange[cutlass.Int64, 2]
            mbar_k: cute.struct.MemRange[cutlass.Int64, 2 * stages]
            mbar_v: cute.struct.MemRange[cutlass.Int64, 2 * stages]
            mbar_s: cute.struct.MemRange[cutlass.Int64, 2 * halves]
            mbar_p: cute.struct.MemRange[cutlass.Int64, 2 * halves]
            mbar_o: cute.struct.MemRange[cutlass.Int64, 2 * halves]
            mbar_c: cute.struct.MemRange[cutlass.Int64, 2 * halves]
            tmem_base: Int32
            row_scale: cute.struct.MemRange[Float32, _ROWS * halves]  # softmax -> correction
            row_lse: cute.struct.MemRange[Float32, _ROWS * halves]
            sQ: cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(self.sQ_layout)], 1024]
            sK: cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(self.sK_layout)], 1024]
            sV: cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(self.sV_layout)], 1024]
            sP: cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(self.sP_layout)], 1024]

        self.shared_storage = SharedStorage
        grid = fwd_common.launch_grid(self.geom, mQ, n)
        self.kernel(*tma, mLSE, mCounts, mK.shape[n + 1], scale_log2).launch(
            grid=grid, block=[self.num_threads, 1, 1], smem=SharedStorage.size_in_bytes(), stream=stream,
            min_blocks_per_mp=1,
        )  # fmt: skip

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
        warp_idx = cute.arch.make_warp_uniform(cute.arch.warp_idx())
        if warp_idx == self.load_warp:
            for atom in (tma_atom_Q, tma_atom_K, tma_atom_V, tma_atom_O):
                cpasync.prefetch_descriptor(atom)

        storage = cutlass.utils.SmemAllocator().allocate(self.shared_storage)
        one = pipeline.CooperativeGroup(pipeline.Agent.Thread, 1)
        rows = pipeline.CooperativeGroup(pipeline.Agent.Thread, _ROWS)
        pipe_q, pipe_k, pipe_v = fwd_common.qkv_pipelines(
            pipeline.PipelineTmaUmma, storage, one, one, self.num_stages, self.tx_q, self.tx_kv, self.tx_kv
        )
        pipe_s, pipe_o, pipe_p, pipe_c = [], [], [], []
        make = fwd_common.make_pipeline
        for h in cutlass.range_constexpr(self.halves):  # one S / O / P hand-off per half
            pipe_s.append(make(pipeline.PipelineUmmaAsync, storage.mbar_s.data_ptr() + 2 * h, one, rows))
            pipe_o.append(make(pipeline.PipelineUmmaAsync, storage.mbar_o.data_ptr() + 2 * h, one, rows))
            pipe_p.append(make(pipeline.PipelineAsyncUmma, storage.mbar_p.data_ptr() + 2 * h, rows, one))
            pipe_c.append(make(pipeline.PipelineAsync, storage.mbar_c.data_ptr() + 2 * h, rows, rows))
        cute.arch.mbarrier_init_fence()
        cute.arch.barrier()

        sQ = fwd_common.smem_tensor(storage.sQ, self.sQ_layout)
        sK = fwd_common.smem_tensor(storage.sK, self.sK_layout)
        sV = fwd_common.smem_tensor(storage.sV, self.sV_layout)
        sP = fwd_common.smem_tensor(storage.sP, self.sP_layout)

        row_scale = storage.row_scale.get_tensor(cute.make_layout((_ROWS, self.halves)))
        row_lse = storage.row_lse.get_tensor(cute.make_layout((_ROWS, self.halves)))
        tmem = utils.TmemAllocator(
            storage.tmem_base.ptr,
            barrier_for_retrieve=pipeline.NamedBarrier(
                barrier_id=_TMEM_BARRIER, num_threads=(self.halves + 1) * _ROWS + 32
            ),
            allocator_warp_id=0,
        )
        tmem.allocate(self.tmem_cols)  # by the allocator warp only
        # Each role runs entirely inside its branch (register reallocation needs that), and builds
        # its scheduler work item there, after its register change: built once before the branches,
        # the scheduler values live across the reallocation and ptxas spilled them (2D KV 16x8).
        if warp_idx >= self.mma_warp:
            self._set_registers(self.regs[2])
            work, head, head_kv, batch = fwd_common.block_work(self.geom, mLSE, num_heads_kv, n)
            if warp_idx == self.load_warp:
                self.load(work, head, head_kv, batch, tma_atom_Q, tma_Q, tma_atom_K, tma_K, tma_atom_V,
                          tma_V, sQ, sK, sV, pipe_q, pipe_k, pipe_v)  # fmt: skip
            if warp_idx == self.mma_warp:
                tmem.wait_for_alloc()
                tmem_ptr = tmem.retrieve_ptr(Float32)
                self.mma(work, tmem_ptr, sQ, sK, sV, sP, pipe_q, pipe_k, pipe_v, pipe_s, pipe_p, pipe_o)
        elif warp_idx >= self.correction_warp:
            self._set_registers(self.regs[1])
            work, head, head_kv, batch = fwd_common.block_work(self.geom, mLSE, num_heads_kv, n)
            tmem.wait_for_alloc()
            tmem_ptr = tmem.retrieve_ptr(Float32)
            self.correction(work, head, batch, tmem_ptr, sQ, pipe_o, pipe_c, row_scale, row_lse,
                            tma_atom_O, tma_O, mLSE)  # fmt: skip
            cute.arch.barrier(barrier_id=_TEARDOWN_BARRIER, number_of_threads=(self.halves + 1) * _ROWS)
        else:
            self._set_registers(self.regs[0])
            work, head, head_kv, batch = fwd_common.block_work(self.geom, mLSE, num_heads_kv, n)
            tmem.wait_for_alloc()
            tmem_ptr = tmem.retrieve_ptr(Float32)
            tmem.relinquish_alloc_permit()
            if warp_idx < 4:
                self.softmax(0, work, tmem_ptr, sP, pipe_s[0], pipe_p[0], pipe_c[0], row_scale, row_lse,
                             mCounts, scale_log2, head, batch)  # fmt: skip
            if const_expr(self.halves == 2):
                if warp_idx >= 4:
                    self.softmax(1, work, tmem_ptr, sP, pipe_s[1], pipe_p[1], pipe_c[1], row_scale, row_lse,
                                 mCounts, scale_log2, head, batch)  # fmt: skip
            cute.arch.barrier(barrier_id=_TEARDOWN_BARRIER, number_of_threads=(self.halves + 1) * _ROWS)
            tmem.free(tmem_ptr, self.tmem_cols)

    def _set_registers(self, count: int) -> None:
        """Move this warpgroup from the launch's per-thread register count to ``count``."""
        at_launch = min(256, 65536 // self.num_threads // 8 * 8)
        if count > at_launch:
            cute.arch.setmaxregister_increase(count)
        elif count < at_launch:
            cute.arch.setmaxregister_decrease(count)

    # ------------------------------------------------------------------ load warp
    @cute.jit
    def load(
        self, work: QTileWork, head: Int32, head_kv: Int32, batch: Int32,
        tma_atom_Q: cute.CopyAtom, tma_Q: cute.Tensor, tma_atom_K: cute.CopyAtom, tma_K: cute.Tensor,
        tma_atom_V: cute.CopyAtom, tma_V: cute.Tensor, sQ: cute.Tensor, sK: cute.Tensor, sV: cute.Tensor,
        pipe_q: Any, pipe_k: Any, pipe_v: Any,
    ):  # fmt: skip
        """Q once, then K and V of every scheduled KV tile: the partial tiles, then the full ones
        (the softmax warpgroups' order), walking ``QTileWork.kv_boxes`` with ``box_step``: a compare
        and a select per dim and tile, no division (the sm90 producer's walk, see there)."""
        tiler_q = tile_views.tile_tiler(self.cfg.q_tile_shape, self.hdim)
        tiler_kv = tile_views.tile_tiler(self.cfg.kv_tile_shape, self.hdim)
        q_coord = tile_views.tile_coord(work.q_tile_idx, head, work.group, batch, self.dilated)
        gQ = cute.zipped_divide(tma_Q, tiler_q)[q_coord]
        tQsQ, tQgQ = fwd_common.tma_tile_partition(tma_atom_Q, sQ, gQ)
        tKsK, tKgK = fwd_common.tma_tile_partition(tma_atom_K, sK, cute.zipped_divide(tma_K, tiler_kv))
        tVsV, tVgV = fwd_common.tma_tile_partition(tma_atom_V, sV, cute.zipped_divide(tma_V, tiler_kv))
        fwd_common.tma_load_q(tma_atom_Q, tQgQ, tQsQ, pipe_q)
        kv_state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Producer, self.num_stages)
        kv_io = (tma_atom_K, tKgK, tKsK, pipe_k, tma_atom_V, tVgV, tVsV, pipe_v, head_kv, work.group, batch)
        for origin, extent in work.kv_boxes():  # 2 * rank + 1 boxes, unrolled
            cur = TileCursor(origin)
            for _ in cutlass.range(math.prod(extent), unroll=1):
                self._load_kv(cur.idx, *kv_io, kv_state)
                kv_state.advance()
                cur = TileCursor(work.box_step(cur.idx, origin, extent))

    def _load_kv(
        self, kv: list, tma_atom_K: cute.CopyAtom, tKgK: cute.Tensor, tKsK: cute.Tensor, pipe_k: Any,
        tma_atom_V: cute.CopyAtom, tVgV: cute.Tensor, tVsV: cute.Tensor, pipe_v: Any, head_kv: Int32,
        group: list, batch: Int32, kv_state: Any,
    ) -> None:  # fmt: skip
        """Acquire a stage and TMA-load K and V of KV tile ``kv`` into it."""
        coord = tile_views.tile_coord(kv, head_kv, group, batch, self.dilated)[1]
        fwd_common.tma_load_stage(tma_atom_K, tKgK, tKsK, pipe_k, coord, kv_state)
        fwd_common.tma_load_stage(tma_atom_V, tVgV, tVsV, pipe_v, coord, kv_state)

    # ------------------------------------------------------------------ MMA warp
    def _tmem_tensors(self, tmem_ptr: Any, half: int) -> tuple[cute.Tensor, cute.Tensor]:
        """S (``128 x tile_n``) and O (``128 x D``) accumulators of one half in tensor memory."""
        mma_qk, mma_pv = self._make_mmas()
        tS = mma_qk.make_fragment_C(mma_qk.partition_shape_C((_ROWS, self.tile_n)))
        tO = mma_pv.make_fragment_C(mma_pv.partition_shape_C((_ROWS, self.hdim)))
        tStS = cute.make_tensor(tmem_ptr + self.tmem_s[half], tS.layout)
        tOtO = cute.make_tensor(tmem_ptr + self.tmem_o[half], tO.layout)
        return tStS, tOtO

    @cute.jit
    def mma(
        self, work: QTileWork, tmem_ptr: Any, sQ: cute.Tensor, sK: cute.Tensor, sV: cute.Tensor,
        sP: cute.Tensor, pipe_q: Any, pipe_k: Any, pipe_v: Any, pipe_s: Any, pipe_p: Any, pipe_o: Any,
    ):  # fmt: skip
        """One thread issues every tcgen05 MMA; commits signal the softmax warpgroups.

        Per KV tile: ``S_h = Q_h K^T`` for every half, then ``O_h += P_h V`` for every half, so the
        tensor cores compute one half's product while the other half's softmax runs.
        """
        mma_qk, mma_pv = self._make_mmas()
        thr_qk = mma_qk.get_slice(0)
        thr_pv = mma_pv.get_slice(0)
        tSrK = mma_qk.make_fragment_B(thr_qk.partition_B(sK))
        sVt = cute.composition(
            sV, cute.make_ordered_layout((self.hdim, self.tile_n, self.num_stages), order=(1, 0, 2))
        )
        tOrV = mma_pv.make_fragment_B(thr_pv.partition_B(sVt))
        tStS, tOtO, tSrQ, tOrP = [], [], [], []
        for h in cutlass.range_constexpr(self.halves):
            s_h, o_h = self._tmem_tensors(tmem_ptr, h)
            tStS.append(s_h)
            tOtO.append(o_h)
            sQ_h = cute.local_tile(sQ, (_ROWS, self.hdim), (h, 0))
            tSrQ.append(mma_qk.make_fragment_A(thr_qk.partition_A(sQ_h)))
            tOrP.append(mma_pv.make_fragment_A(thr_pv.partition_A(sP[None, None, h])))
        num_k_qk = cute.size(tSrQ[0], mode=[2])
        num_k_pv = cute.size(tOrP[0], mode=[2])

        q_state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, 1)
        kv_state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, self.num_stages)
        s_state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Producer, 1)
        o_state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Producer, 1)
        p_state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, 1)
        pipe_q.consumer_wait(q_state)
        for j in cutlass.range(work.num_kv_tiles, unroll=1):
            pipe_k.consumer_wait(kv_state)
            for h in cutlass.range_constexpr(self.halves):
                pipe_s[h].producer_acquire(s_state)  # this half's softmax has read its previous S
                mma_qk.set(tcgen05.Field.ACCUMULATE, False)
                for k in cutlass.range_constexpr(num_k_qk):
                    cute.gemm(mma_qk, tStS[h], tSrQ[h][None, None, k], tSrK[None, None, k, kv_state.index], tStS[h])
                    mma_qk.set(tcgen05.Field.ACCUMULATE, True)
                pipe_s[h].producer_commit(s_state)
            s_state.advance()
            pipe_k.consumer_release(kv_state)

            pipe_v.consumer_wait(kv_state)
            for h in cutlass.range_constexpr(self.halves):
                pipe_p[h].consumer_wait(p_state)  # P_h written, O_h rescaled
                pipe_o[h].producer_acquire(o_state)
                mma_pv.set(tcgen05.Field.ACCUMULATE, j > 0)
                for k in cutlass.range_constexpr(num_k_pv):
                    cute.gemm(mma_pv, tOtO[h], tOrP[h][None, None, k], tOrV[None, None, k, kv_state.index], tOtO[h])
                    mma_pv.set(tcgen05.Field.ACCUMULATE, True)
                pipe_o[h].producer_commit(o_state)
                pipe_p[h].consumer_release(p_state)
            o_state.advance()
            p_state.advance()
            pipe_v.consumer_release(kv_state)
            kv_state.advance()

    # ------------------------------------------------------------------ softmax warpgroups
    @cute.jit
    def softmax(
        self, half: cutlass.Constexpr, work: QTileWork, tmem_ptr: Any, sP: cute.Tensor, pipe_s: Any,
        pipe_p: Any, pipe_c: Any, row_scale: cute.Tensor, row_lse: cute.Tensor, mCounts: cute.Tensor,
        scale_log2: Float32, head: Int32, batch: Int32,
    ):  # fmt: skip
        """Thread ``t`` of this half's warpgroup owns row ``128 * half + t`` of the Q tile.

        Per KV tile: S row from TMEM, mask (partial tiles only), online softmax, P row to shared
        memory; the factor by which the O row must shrink goes to the correction warpgroup.  At
        the end, ``1 / sum`` and the LSE go the same way.  Tiles come partial first (masked loop),
        then full (unmasked loop), the order of the load warp (``QTileWork.kv_boxes``).
        """
        tidx = cute.arch.thread_idx()[0] - _ROWS * half
        tStS, _ = self._tmem_tensors(tmem_ptr, half)
        sP = sP[None, None, half]
        tS = tStS[(None, None), 0, 0]
        load_s = tcgen05.make_tmem_copy(
            cute.make_copy_atom(tcgen05.copy.Ld32x32bOp(tcgen05.copy.Repetition(self.tile_n)), Float32), tS
        ).get_slice(tidx)
        tSt = load_s.partition_S(tS)
        tSc = load_s.partition_D(cute.make_identity_tensor((_ROWS, self.tile_n)))
        rS = cute.make_rmem_tensor(tSc.shape, Float32)
        rP = cute.make_rmem_tensor(self.tile_n, self.dtype)  # this row of P, in the input dtype
        lane = tSc[0][0]
        windows = RowWindows(work, [lane + _ROWS * half])
        kv_tile = self.cfg.kv_tile_shape
        col_in_tile = [split_tile_index(tSc[c][1], kv_tile) for c in range(cute.size(rS))]

        row_max = -Float32.inf
        row_sum = Float32(0.0)
        s_state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, 1)
        p_state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Producer, 1)
        c_state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Producer, 1)
        s_io = (load_s, tSt, rS, pipe_s)
        p_io = (rS, rP, sP[lane, None], pipe_p)
        # The partial tiles (element mask), then the full ones (none): two loops, so no per-tile
        # branch merges masked and unmasked scores.  The states advance in the loop bodies (the
        # DSL carries only what a body itself advances); O holds the previous tiles' sum from the
        # second tile on (global index ``j``, then ``num_partial + f``), and the correction
        # warpgroup rescales it by the factor handed over.
        num_partial = work.num_partial_tiles
        for j in cutlass.range(num_partial, unroll=1):
            kv = work.partial_tile(j)
            self._load_s(*s_io, s_state)
            s_state.advance()
            self._mask_row(rS, windows, col_in_tile, kv)
            row_max, row_sum, rescale = self._softmax_step(rS, row_max, row_sum, scale_log2)
            if j > 0:
                self._send_factor(row_scale, lane, half, rescale, pipe_c, c_state)
                c_state.advance()
            self._store_p(*p_io, p_state)
            p_state.advance()
        for f in cutlass.range(work.num_full_tiles, unroll=1):
            self._load_s(*s_io, s_state)
            s_state.advance()
            row_max, row_sum, rescale = self._softmax_step(rS, row_max, row_sum, scale_log2)
            if num_partial + f > 0:
                self._send_factor(row_scale, lane, half, rescale, pipe_c, c_state)
                c_state.advance()
            self._store_p(*p_io, p_state)
            p_state.advance()

        empty = row_sum == Float32(0.0)
        pipe_c.producer_acquire(c_state)
        row_scale[lane, half] = Float32(0.0) if empty else cute.arch.rcp_approx(row_sum)
        row_lse[lane, half] = (
            -Float32.inf if empty else (row_max * scale_log2 + cute.math.log2(row_sum, fastmath=True)) * LN2
        )
        pipe_c.producer_commit(c_state)
        if const_expr(self.cfg.count_tiles):
            if tidx == 0 and half == 0 and batch == 0 and head == 0:
                idx = (*work.group, *work.q_tile_idx)
                mCounts[(0, *idx)] = work.num_kv_tiles
                mCounts[(1, *idx)] = work.num_full_tiles  # the unmasked iterations

    # ------------------------------------------------------------------ correction warpgroup
    @cute.jit
    def correction(
        self, work: QTileWork, head: Int32, batch: Int32, tmem_ptr: Any, sQ: cute.Tensor, pipe_o: list,
        pipe_c: list, row_scale: cute.Tensor, row_lse: cute.Tensor, tma_atom_O: cute.CopyAtom,
        tma_O: cute.Tensor, mLSE: cute.Tensor,
    ):  # fmt: skip
        """Rescale each O row in TMEM between P V products; at the end normalize, store O and LSE.

        Thread ``t`` owns row ``t`` of every half.  Rescaling here keeps the softmax warpgroups on
        the next scores while the tensor cores finish the previous P V.
        """
        tidx = cute.arch.thread_idx()[0] - _ROWS * self.halves
        tOtO = [self._tmem_tensors(tmem_ptr, h)[1] for h in range(self.halves)]
        lane = self._o_chunks(tOtO[0], tidx)[0][4][0][0]
        c_state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, 1)
        o_state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, 1)
        for j in cutlass.range(1, work.num_kv_tiles, unroll=1):
            for h in cutlass.range_constexpr(self.halves):
                pipe_c[h].consumer_wait(c_state)
                factor = row_scale[lane, h]
                pipe_c[h].consumer_release(c_state)
                pipe_o[h].consumer_wait(o_state)  # O_h += P_h V of the previous tile has landed
                self._scale_o_row(tOtO[h], tidx, factor)
                pipe_o[h].consumer_release(o_state)
            c_state.advance()
            o_state.advance()

        for h in cutlass.range_constexpr(self.halves):
            pipe_c[h].consumer_wait(c_state)
            inv_sum = row_scale[lane, h]
            lse = row_lse[lane, h]
            pipe_c[h].consumer_release(c_state)
            pipe_o[h].consumer_wait(o_state)  # the last P V: every Q K^T is done too, sQ is free
            row = lane + _ROWS * h
            self._o_row_to_smem(tOtO[h], tidx, inv_sum, row, sQ)
            self._store_lse(work, head, batch, row, lse, mLSE)
        cute.arch.fence_view_async_shared()
        cute.arch.barrier(barrier_id=_EPILOGUE_BARRIER, number_of_threads=_ROWS)
        if tidx == 0:
            tiler_o = tile_views.tile_tiler(self.cfg.q_tile_shape, self.hdim)
            coord = tile_views.tile_coord(work.q_tile_idx, head, work.group, batch, self.dilated)
            fwd_common.tma_store_tile(tma_atom_O, sQ, cute.zipped_divide(tma_O, tiler_o)[coord])

    def _load_s(self, load_s: Any, tSt: cute.Tensor, rS: cute.Tensor, pipe_s: Any, s_state: Any) -> None:
        """This thread's S row from tensor memory into ``rS``; the S buffer is released at once."""
        pipe_s.consumer_wait(s_state)
        cute.copy(load_s, tSt, rS)
        cute.arch.fence_view_async_tmem_load()
        pipe_s.consumer_release(s_state)

    @cute.jit
    def _softmax_step(self, rS: cute.Tensor, row_max: Float32, row_sum: Float32, scale_log2: Float32):
        """Online softmax of one tile's scores, in place (``rS`` becomes P, unnormalized).

        Returns the new ``(row_max, row_sum)`` and the factor by which the O row must shrink.
        """
        tile_max = rS[0]
        for c in cutlass.range_constexpr(1, cute.size(rS)):
            tile_max = cute.arch.fmax(tile_max, rS[c])
        new_max = cute.arch.fmax(row_max, tile_max)
        safe_max = Float32(0.0) if new_max == -Float32.inf else new_max
        max_scaled = safe_max * scale_log2
        rescale = cute.math.exp2(row_max * scale_log2 - max_scaled, fastmath=True)
        acc = row_sum * rescale
        for c in cutlass.range_constexpr(cute.size(rS)):
            p = cute.math.exp2(rS[c] * scale_log2 - max_scaled, fastmath=True)
            rS[c] = p
            acc = acc + p
        return new_max, acc, rescale

    def _send_factor(
        self, row_scale: cute.Tensor, lane: Int32, half: int, factor: Float32, pipe_c: Any, c_state: Any
    ) -> None:
        """This row's O rescale factor to the correction warpgroup (through shared memory)."""
        pipe_c.producer_acquire(c_state)
        row_scale[lane, half] = factor
        pipe_c.producer_commit(c_state)

    def _store_p(self, rS: cute.Tensor, rP: cute.Tensor, sP_row: cute.Tensor, pipe_p: Any, p_state: Any) -> None:
        """P row (input dtype) to shared memory, once the previous P V has finished reading it."""
        rP.store(rS.load().to(self.dtype))
        pipe_p.producer_acquire(p_state)
        cute.autovec_copy(rP, sP_row)
        cute.arch.fence_view_async_shared()
        pipe_p.producer_commit(p_state)

    @cute.jit
    def _mask_row(self, rS: cute.Tensor, windows: RowWindows, col_in_tile: list, kv: list) -> None:
        """Scores of keys outside this row's window (or past the axis) become ``-inf``."""
        lo = [windows.start[i] - kv[i] * self.cfg.kv_tile_shape[i] for i in range(self.rank)]
        hi = [windows.end[i] - kv[i] * self.cfg.kv_tile_shape[i] for i in range(self.rank)]
        for c in cutlass.range_constexpr(cute.size(rS)):
            k = col_in_tile[c]
            visible = (k[0] >= lo[0]) & (k[0] < hi[0])
            for i in cutlass.range_constexpr(1, self.rank):
                visible = visible & (k[i] >= lo[i]) & (k[i] < hi[i])
            rS[c] = rS[c] if visible else -Float32.inf

    def _o_chunks(self, tOtO: cute.Tensor, tidx: Int32):
        """Per 32-column chunk of this thread's O row: (tmem load slice, tmem store slice, coords)."""
        tO = tOtO[(None, None), 0, 0]
        cO = cute.make_identity_tensor((_ROWS, self.hdim))
        out = []
        for c0 in range(0, self.hdim, _O_CHUNK):
            t_chunk = cute.local_tile(tO, (_ROWS, _O_CHUNK), (0, c0 // _O_CHUNK))
            c_chunk = cute.local_tile(cO, (_ROWS, _O_CHUNK), (0, c0 // _O_CHUNK))
            ld = tcgen05.make_tmem_copy(
                cute.make_copy_atom(tcgen05.copy.Ld32x32bOp(tcgen05.copy.Repetition(_O_CHUNK)), Float32), t_chunk
            ).get_slice(tidx)
            st = tcgen05.make_tmem_copy(
                cute.make_copy_atom(tcgen05.copy.St32x32bOp(tcgen05.copy.Repetition(_O_CHUNK)), Float32), t_chunk
            ).get_slice(tidx)
            out.append((ld, ld.partition_S(t_chunk), st, st.partition_D(t_chunk), ld.partition_D(c_chunk)))
        return out

    @cute.jit
    def _scale_o_row(self, tOtO: cute.Tensor, tidx: Int32, factor: Float32) -> None:
        """O row *= factor, in tensor memory (correction of the running max)."""
        for ld, src, st, dst, coords in self._o_chunks(tOtO, tidx):
            r = cute.make_rmem_tensor(coords.shape, Float32)
            cute.copy(ld, src, r)
            for c in cutlass.range_constexpr(cute.size(r)):
                r[c] = r[c] * factor
            cute.copy(st, r, dst)
        cute.arch.fence_view_async_tmem_store()

    @cute.jit
    def _o_row_to_smem(self, tOtO: cute.Tensor, tidx: Int32, inv_sum: Float32, row: Int32, sO: cute.Tensor) -> None:
        """Normalized O row, in the input dtype, into the staging tile of the TMA store."""
        sO_row = sO[row, None]
        for chunk, (ld, src, _, _, coords) in enumerate(self._o_chunks(tOtO, tidx)):
            r = cute.make_rmem_tensor(coords.shape, Float32)
            cute.copy(ld, src, r)
            for c in cutlass.range_constexpr(cute.size(r)):
                r[c] = r[c] * inv_sum
            rO = cute.make_rmem_tensor(_O_CHUNK, self.dtype)
            rO.store(r.load().to(self.dtype))
            cute.autovec_copy(rO, cute.local_tile(sO_row, (_O_CHUNK,), (chunk,)))

    @cute.jit
    def _store_lse(self, work: QTileWork, head: Int32, batch: Int32, row: Int32, lse: Float32, mLSE: cute.Tensor) -> None:
        """LSE of this thread's row, if the row lies inside the axis (padded rows are dropped)."""
        n = self.rank
        q_in = split_tile_index(row, self.cfg.q_tile_shape)
        q = [work.q_tile_idx[i] * self.cfg.q_tile_shape[i] + q_in[i] for i in range(n)]
        inside = q[0] < work.group_len[0]
        for i in cutlass.range_constexpr(1, n):
            inside = inside & (q[i] < work.group_len[i])
        if inside:
            x = [q[i] * self.cfg.dilation[i] + work.group[i] for i in range(n)]
            mLSE[(batch, *x, head)] = lse
