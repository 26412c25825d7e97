"""K1's scratch driver for the sm90 kernel: compile on a CPU, or run and check on a GPU.

    CUTE_DSL_ARCH=sm_90a python -m gna_cute.kernels._dev_check compile
    python -m gna_cute.kernels._dev_check gpu        # on the H100: correctness + a few timings

Not part of the product (the host layer is ``kernels/interface.py``); kept so the kernel's author
can reproduce every check.  The GPU reference is a dense masked attention in fp32 with the mask
built by ``tests/brute_force.py`` (independent of gna_cute).
"""

from __future__ import annotations

import math
import os
import sys
import time

from gna_cute.kernels.config import FwdConfig


def make_cfg(rank, kernel_size, stride=1, dilation=1, causal=False, dtype="float16", head_dim=128,
             q_tile=None, kv_tile=None, count_tiles=False) -> FwdConfig:
    from gna_cute.kernels.config import default_tile_shapes

    def tup(x, t=int):
        return tuple(x) if isinstance(x, (tuple, list)) else (t(x),) * rank

    dq, dkv = default_tile_shapes(90, rank, head_dim)
    return FwdConfig(
        arch=90, dtype=dtype, head_dim=head_dim, head_dim_v=head_dim,
        q_tile_shape=tuple(q_tile or dq), kv_tile_shape=tuple(kv_tile or dkv),
        kernel_size=tup(kernel_size), stride=tup(stride), dilation=tup(dilation),
        is_causal=tup(causal, bool), count_tiles=count_tiles,
    )


def _fake_args(cfg: FwdConfig):
    import cutlass
    import cutlass.cute as cute
    from cutlass.cute.runtime import make_fake_stream, make_fake_tensor

    dt = {"float16": cutlass.Float16, "bfloat16": cutlass.BFloat16}[cfg.dtype]

    def fake(dtype, rank):
        shape = tuple(cute.sym_int32() for _ in range(rank))
        stride = tuple(cute.sym_int64() for _ in range(rank - 1)) + (1,)
        return make_fake_tensor(dtype, shape, stride, assumed_align=16)

    r = cfg.rank
    return (fake(dt, r + 3), fake(dt, r + 3), fake(dt, r + 3), fake(dt, r + 3), fake(cutlass.Float32, r + 2),
            fake(cutlass.Int32, 2 * r + 1), cutlass.Float32(1.0), make_fake_stream())


def compile_cfg(cfg: FwdConfig, overlap=True):
    import cutlass.cute as cute
    from gna_cute.kernels.sm90_fwd import GNAFwdSm90

    t0 = time.time()
    compiled = cute.compile(GNAFwdSm90(cfg, overlap=overlap), *_fake_args(cfg))
    return compiled, time.time() - t0


VARIANTS = {"overlap+turns": dict(overlap=True, turns=True), "overlap": dict(overlap=True, turns=False),
            "serial": dict(overlap=False, turns=False)}


def run_kernel(cfg: FwdConfig, q, k, v, scale, variant="serial", compiled_cache={}):
    """Launch on torch tensors (minimal launcher; the product's is kernels/interface.py)."""
    import torch
    import cutlass
    import cutlass.cute as cute
    from cuda.bindings import driver
    from cutlass.cute.runtime import from_dlpack
    from gna_cute.kernels.sm90_fwd import GNAFwdSm90, log2_scale

    r = cfg.rank
    o = torch.full_like(q, float("nan"))
    lse = torch.full(q.shape[:-1], float("nan"), device=q.device, dtype=torch.float32)
    tiles = [math.ceil(math.ceil(q.shape[1 + i] / cfg.dilation[i]) / cfg.q_tile_shape[i]) for i in range(r)]
    counts = torch.full((2, *cfg.dilation, *tiles), -1, device=q.device, dtype=torch.int32)

    def cv(t):
        return from_dlpack(t.detach(), assumed_align=16).mark_layout_dynamic(leading_dim=t.dim() - 1)

    if (cfg, variant) not in compiled_cache:
        compiled_cache[cfg, variant] = cute.compile(GNAFwdSm90(cfg, **VARIANTS[variant]), *_fake_args(cfg))
    fn = compiled_cache[cfg, variant]
    stream = driver.CUstream(torch.cuda.current_stream().cuda_stream)
    args = (cv(q), cv(k), cv(v), cv(o), cv(lse), cv(counts), cutlass.Float32(log2_scale(scale)), stream)
    fn(*args)
    return o, lse, counts, (fn, args)


def reference(q, k, v, cfg: FwdConfig, scale):
    """fp32 dense attention under the brute-force GNA mask (tests/brute_force.py)."""
    import numpy as np
    import torch

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    from brute_force import neighborhood_mask

    r = cfg.rank
    spatial = tuple(q.shape[1:1 + r])
    mask = torch.from_numpy(np.asarray(neighborhood_mask(spatial, cfg.kernel_size, cfg.stride, cfg.dilation, cfg.is_causal))).to(q.device)
    B, H, Hk, D = q.shape[0], q.shape[-2], k.shape[-2], q.shape[-1]
    N = int(np.prod(spatial))
    qf = q.reshape(B, N, H, D).float().transpose(1, 2)
    kf = k.reshape(B, N, Hk, D).float().transpose(1, 2).repeat_interleave(H // Hk, dim=1)
    vf = v.reshape(B, N, Hk, D).float().transpose(1, 2).repeat_interleave(H // Hk, dim=1)
    s = (qf @ kf.transpose(-1, -2)) * scale
    s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    o = torch.softmax(s, dim=-1) @ vf
    return o.transpose(1, 2).reshape(q.shape), lse.transpose(1, 2).reshape(q.shape[:-1])


def gpu_cases():
    """(name, cfg, B, spatial, H, Hkv) cases spanning the coverage of issue 5."""
    C = []
    C.append(("1d dense", make_cfg(1, 1000), 2, (1000,), 3, 3))
    C.append(("1d w=64", make_cfg(1, 64), 1, (1000,), 2, 2))
    C.append(("1d w=100 s=7", make_cfg(1, 100, 7), 1, (777,), 2, 1))
    C.append(("1d causal w=200 s=3", make_cfg(1, 200, 3, 1, True), 2, (1000,), 2, 2))
    C.append(("1d dil2 w=33", make_cfg(1, 33, 1, 2), 1, (500,), 2, 2))
    C.append(("1d bf16 d64", make_cfg(1, 50, 2, 1, False, "bfloat16", 64), 1, (613,), 4, 2))
    C.append(("1d d32 kv64", make_cfg(1, 40, 1, 1, True, "float16", 32, kv_tile=(64,)), 1, (300,), 2, 1))
    C.append(("2d 16x8", make_cfg(2, (7, 9), (2, 3)), 1, (37, 41), 2, 2))
    C.append(("2d causal dil", make_cfg(2, (5, 6), (1, 2), (2, 3), (True, False)), 1, (30, 33), 2, 1))
    C.append(("2d dense", make_cfg(2, (20, 24)), 1, (20, 24), 2, 2))
    C.append(("2d 8x16 bf16", make_cfg(2, (9, 13), 1, 1, False, "bfloat16", 64, (8, 16), (8, 16)), 2, (33, 50), 2, 2))
    C.append(("3d 2x8x8", make_cfg(3, (3, 5, 7), (1, 2, 3), 1, (False, True, False)), 1, (9, 14, 20), 2, 2))
    C.append(("3d dil bf16", make_cfg(3, (2, 3, 4), 1, (2, 1, 2), False, "bfloat16", 128, (4, 4, 8), (2, 4, 16)), 1, (8, 10, 24), 2, 1))
    return C


def gpu_main(variant: str = "serial") -> int:
    import torch

    torch.manual_seed(0)
    fails = 0
    cases = gpu_cases()
    if os.environ.get("GNA_K1_CASES"):
        cases = [cases[int(i)] for i in os.environ["GNA_K1_CASES"].split(",")]
    for name, cfg, B, spatial, H, Hk in cases:
        dt = getattr(torch, cfg.dtype)
        D = cfg.head_dim
        q = torch.randn(B, *spatial, H, D, device="cuda", dtype=dt)
        k = torch.randn(B, *spatial, Hk, D, device="cuda", dtype=dt)
        v = torch.randn(B, *spatial, Hk, D, device="cuda", dtype=dt)
        scale = D ** -0.5
        try:
            t0 = time.time()
            cfg_c = FwdConfig(**{**cfg.__dict__, "count_tiles": True})
            o, lse, counts, _ = run_kernel(cfg_c, q, k, v, scale, variant)
            torch.cuda.synchronize()
            t1 = time.time() - t0
            ro, rlse = reference(q, k, v, cfg, scale)
            # same-dtype torch error for the tolerance rule
            lo, _ = reference(q.to(dt), k, v, cfg, scale)
            err_o = (o.float() - ro).abs().max().item()
            err_l = (lse - rlse).abs().max().item()
            ref_dt_err = (ro.to(dt).float() - ro).abs().max().item()
            ok = err_o <= 4 * ref_dt_err + 2e-3 and err_l < 1e-2 and not torch.isnan(o).any()
            cnt = ""
            try:
                from gna_cute.params import GNAParams
                from gna_cute.sim import tile_counts
                p = GNAParams.make(spatial, cfg.kernel_size, cfg.stride, cfg.dilation, cfg.is_causal)
                sim = tile_counts(p, cfg.q_tile_shape, cfg.kv_tile_shape)
                same = (counts.cpu().numpy() == sim).all()
                cnt = f"counts==sim:{bool(same)}"
                ok = ok and same
            except Exception as e:  # simulator may not be there yet
                cnt = f"counts: {type(e).__name__}"
            fails += not ok
            print(f"{'OK ' if ok else 'BAD'} {name:24s} err_o={err_o:.2e} (dtype ref {ref_dt_err:.2e}) err_lse={err_l:.2e} {cnt} first={t1:.1f}s", flush=True)
        except Exception as e:
            fails += 1
            print(f"ERR {name}: {type(e).__name__}: {str(e)[:1500]}", flush=True)
    print(f"FAILS {fails}")
    return fails


def _time_ms(fn, iters=20) -> float:
    import torch

    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(iters):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def bench_main() -> None:
    """Headline shapes (fp16, D=128, batch 1): our kernel vs cuDNN dense SDPA, same run."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    rows = [
        ("2d 256^2 w80 s1", 2, (256, 256), 24, (80, 80), (1, 1)),
        ("2d 256^2 w80 s16", 2, (256, 256), 24, (80, 80), (16, 16)),
        ("1d 32K w2048 s1", 1, (32768,), 1, (2048,), (1,)),
        ("2d 256^2 dense", 2, (256, 256), 24, (256, 256), (1, 1)),
    ]
    for name, rank, spatial, H, ks, st in rows:
        cfg = make_cfg(rank, ks, st)
        q, k, v = (torch.randn(1, *spatial, H, 128, device="cuda", dtype=torch.float16) for _ in range(3))
        ms_v = {}
        for variant in VARIANTS:
            _, _, _, (fn, args) = run_kernel(cfg, q, k, v, 128 ** -0.5, variant)
            ms_v[variant] = _time_ms(lambda: fn(*args))
        ms = min(ms_v.values())
        alts = " ".join(f"{k}={t:.3f}" for k, t in ms_v.items())
        N = math.prod(spatial)
        qt, kt, vt = (x.reshape(1, N, H, 128).transpose(1, 2) for x in (q, k, v))
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            ms_cudnn = _time_ms(lambda: torch.nn.functional.scaled_dot_product_attention(qt, kt, vt))
        pairs = N * math.prod(ks) * H
        print(f"BENCH {name:20s} [{alts}] best {ms:8.3f} ms  cudnn {ms_cudnn:8.3f} ms  speedup {ms_cudnn / ms:5.2f}x  "
              f"useful {pairs * 4 * 128 / ms / 1e9:6.1f} TFLOP/s", flush=True)


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "compile"
    if what == "compile":
        for name, cfg, *_ in gpu_cases()[: int(sys.argv[2]) if len(sys.argv) > 2 else 1]:
            _, dt = compile_cfg(cfg)
            print(f"compiled {name} in {dt:.1f}s")
    elif what == "bench":
        bench_main()
    else:
        fails = gpu_main(os.environ.get("GNA_K1_VARIANT", "serial"))
        if "--bench" in sys.argv:
            bench_main()
        sys.exit(fails)
