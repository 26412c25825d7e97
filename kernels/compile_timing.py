"""Measure what the compile cache buys: first call, cached call, first call of a new process.

    python -m gna_cute.kernels.compile_timing [--arch 90]

Uses a fresh, temporary disk cache.  Prints a markdown table (the one in docs/kernels.md):
first call in a process with an empty cache (compile + export + launch), later calls in that
process (host time of one call, and call + sync), and the first call of a new process that finds
the disk entry (load + launch).  Needs a GPU of the given architecture.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

_PROBLEM = dict(spatial=(64, 64), heads=8, dim=128, kernel_size=(13, 13))


def _args():
    import torch

    from gna_cute.backends import AttentionArgs
    from gna_cute.params import GNAParams

    spatial, heads, dim = _PROBLEM["spatial"], _PROBLEM["heads"], _PROBLEM["dim"]
    q, k, v = (torch.randn(2, *spatial, heads, dim, device="cuda", dtype=torch.float16) for _ in range(3))
    params = GNAParams.make(spatial, _PROBLEM["kernel_size"])
    return AttentionArgs(q, k, v, params, dim**-0.5)


def _measure(arch: int, repeats: int) -> dict:
    """This process's first call, then steady-state call timings."""
    import torch

    from gna_cute.kernels import interface

    args = _args()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    interface.forward(args, arch)
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    host, total = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        interface.forward(args, arch)
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        host.append(t1 - t0)
        total.append(t2 - t0)
    stats = interface.CACHE.stats
    from gna_cute.kernels import cute_tensors

    return {
        "calling": "TVM-FFI" if cute_tensors.use_tvm_ffi() else "DLPack views",
        "first_s": first,
        "host_call_us": 1e6 * statistics.median(host),
        "call_sync_us": 1e6 * statistics.median(total),
        "compiles": stats.compiles,
        "disk_loads": stats.disk_loads,
        "compile_s": stats.compile_s,
        "disk_load_s": stats.disk_load_s,
        "export_error": stats.last_export_error[-500:],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.child:
        print("RESULT" + json.dumps(_measure(opts.arch, opts.repeats)))
        return 0
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, GNA_CUTE_CACHE_DIR=cache, GNA_CUTE_DISK_CACHE="1")
        runs = []
        for _ in range(2):  # empty cache, then a new process finding the disk entry
            proc = subprocess.run(
                [sys.executable, "-m", "gna_cute.kernels.compile_timing", "--child", f"--arch={opts.arch}",
                 f"--repeats={opts.repeats}"],
                env=env, capture_output=True, text=True, check=True,
            )  # fmt: skip
            runs.append(json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1][6:]))
    cold, warm = runs
    p = _PROBLEM
    print(f"problem: 2D {p['spatial']}, window {p['kernel_size']}, B=2, H={p['heads']}, D={p['dim']}, fp16, "
          f"sm{opts.arch}, calling convention: {cold['calling']}")
    print("| call | time | of which |")
    print("| --- | --- | --- |")
    print(f"| first call, empty cache | {cold['first_s']:.2f} s | compile + export {cold['compile_s']:.2f} s |")
    print(f"| later call, same process (host) | {cold['host_call_us']:.0f} us | to launch |")
    print(f"| later call, same process (+ sync) | {cold['call_sync_us']:.0f} us | launch + kernel |")
    print(f"| first call, new process, disk entry | {warm['first_s']:.3f} s | load {warm['disk_load_s']:.3f} s |")
    print(f"compiles: {cold['compiles']} then {warm['compiles']}; disk loads: {cold['disk_loads']} then {warm['disk_loads']}")
    if cold["export_error"]:
        print(f"export error: {cold['export_error']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
