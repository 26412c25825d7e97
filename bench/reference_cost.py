"""Time and peak GPU memory of the reference backend on the Flux-size 2D problem.

Why: the reference is the ground truth of every GPU test and bench error column, so it must stay
usable on real sizes (it never builds an N x N matrix).  Run: ``python -m gna_cute.bench.reference_cost``.
"""

from __future__ import annotations

import time

import torch

import gna_cute


def main() -> None:
    q, k, v = (torch.randn(1, 256, 256, 24, 128, device="cuda", dtype=torch.float16) for _ in range(3))
    for _ in range(2):  # the first call includes CUDA/cuBLAS warm-up
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        start = time.perf_counter()
        gna_cute.attention(q, k, v, (80, 80), backend="reference")
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        print(f"reference, 2D 256x256 w=80x80, 24 heads, D=128, fp16: {seconds:.2f} s, "
              f"peak {peak:.0f} MiB above the inputs ({torch.cuda.get_device_name()})")


if __name__ == "__main__":
    main()
