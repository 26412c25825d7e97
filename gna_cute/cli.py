"""``gna-cute`` command line: ``env`` and ``run`` here; ``sim`` and ``bench`` plug in if present.

Each subcommand module exposes ``register(subparsers)``, which adds its parser with
``set_defaults(func=fn)``; ``fn(args) -> int`` is the exit code.
"""

from __future__ import annotations

import argparse
import importlib
import platform
import statistics
import sys
import time
import warnings
from importlib import metadata
from typing import Callable, Sequence

import torch

from . import backends
from .backends import AttentionArgs
from .checks import check_attention_args

_PLUGINS = ("gna_cute.sim.cli", "gna_cute.bench.cli")
_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def cmd_env(args: argparse.Namespace) -> int:
    """Versions, devices, and whether each backend can run on this machine (or why not)."""
    print(f"python             {platform.python_version()}")
    print(f"torch              {torch.__version__} (CUDA {torch.version.cuda or 'none'})")
    print(f"nvidia-cutlass-dsl {_version('nvidia-cutlass-dsl')}")
    print(f"gna_cute           {_version('gna_cute')}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(i)
            print(f"cuda:{i}             {torch.cuda.get_device_name(i)} (SM {major}.{minor})")
    else:
        print("devices            cpu only (no CUDA device visible)")
    print("backends (in auto order):")
    for b in backends.BACKENDS:
        try:
            reason = b.available()
        except Exception as exc:  # a broken backend must not hide the others
            reason = f"available() raised {type(exc).__name__}: {exc}"
        print(f"  {b.name:<10} {'available' if reason is None else 'unavailable: ' + reason}")
    return 0


def _add_run_parser(sub) -> None:
    p = sub.add_parser("run", help="run one GNA problem on the best backend: time and error vs reference")
    p.add_argument("-i", "--input-size", type=int, nargs="+", required=True, help="spatial shape, 1-3 ints")
    p.add_argument("-w", "--window", type=int, nargs="+", required=True, help="kernel_size per dim (or one int)")
    p.add_argument("-s", "--stride", type=int, nargs="+", default=[1])
    p.add_argument("--dilation", type=int, nargs="+", default=[1])
    p.add_argument("--causal", type=int, nargs="+", default=[0], choices=(0, 1), help="per dim, e.g. --causal 1 0")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=None, help="GQA/MQA: k/v heads (default: --heads)")
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--head-dim-v", type=int, default=None, help="value head dim (default: --head-dim)")
    p.add_argument("--extra-kv", type=int, default=0, help="number of additional KV tokens")
    p.add_argument("--dtype", choices=sorted(_DTYPES), default=None, help="default bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--backend", default="auto", help=f"auto or one of {', '.join(backends.BACKEND_NAMES)}")
    p.add_argument("--q-tile", type=int, nargs="+", default=None, help="q_tile_shape (with --kv-tile)")
    p.add_argument("--kv-tile", type=int, nargs="+", default=None, help="kv_tile_shape (with --q-tile)")
    p.add_argument("--device", default=None, help="default cuda if available, else cpu")
    p.add_argument("--iters", type=int, default=5, help="timed runs after one warm-up")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_run)


def _per_dim(values: list[int]) -> int | tuple[int, ...]:
    return values[0] if len(values) == 1 else tuple(values)


def _make_args(a: argparse.Namespace) -> AttentionArgs:
    """Random inputs for the problem on the command line; validated like any API call."""
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = _DTYPES[a.dtype or ("bfloat16" if device.type == "cuda" else "float32")]
    gen = torch.Generator(device="cpu").manual_seed(a.seed)
    kv_heads = a.kv_heads or a.heads
    dim_v = a.head_dim_v or a.head_dim
    shape = tuple(a.input_size)

    def rand(*s: int) -> torch.Tensor:
        return torch.randn(*s, generator=gen).to(device=device, dtype=dtype)

    q = rand(a.batch, *shape, a.heads, a.head_dim)
    k = rand(a.batch, *shape, kv_heads, a.head_dim)
    v = rand(a.batch, *shape, kv_heads, dim_v)
    ek = rand(a.batch, a.extra_kv, kv_heads, a.head_dim) if a.extra_kv else None
    ev = rand(a.batch, a.extra_kv, kv_heads, dim_v) if a.extra_kv else None
    causal = tuple(bool(c) for c in a.causal) if len(a.causal) > 1 else bool(a.causal[0])
    checked = check_attention_args(
        q, k, v, _per_dim(a.window), _per_dim(a.stride), _per_dim(a.dilation), causal,
        None, ek, ev, None if a.q_tile is None else tuple(a.q_tile), None if a.kv_tile is None else tuple(a.kv_tile),
    )  # fmt: skip
    return AttentionArgs(q, k, v, checked.params, checked.scale, ek, ev, checked.q_tile_shape, checked.kv_tile_shape)


def _time(fn: Callable[[], object], iters: int, cuda: bool) -> tuple[float, object]:
    """Median seconds per call after one warm-up (CUDA events on GPU)."""
    result = fn()
    samples = []
    for _ in range(max(iters, 1)):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            result = fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            result = fn()
            samples.append(time.perf_counter() - t0)
    return statistics.median(samples), result


def cmd_run(a: argparse.Namespace) -> int:
    try:
        args = _make_args(a)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            choice = backends.choose(args, a.backend)
    except (ValueError, TypeError) as exc:
        print(f"gna-cute run: error: {exc}", file=sys.stderr)
        return 2
    p = args.params
    print(
        f"problem  B={a.batch} spatial={p.spatial_shape} H={a.heads} H_kv={args.k.shape[-2]} D={a.head_dim} "
        f"D_v={args.v.shape[-1]} {args.q.dtype} on {args.q.device}"
    )
    print(f"gna      kernel_size={p.kernel_size} stride={p.stride} dilation={p.dilation} is_causal={p.is_causal}")
    if a.backend == "auto":
        for name, reason in backends.why_not(args).items():
            if reason is not None:
                print(f"skipped  {name}: {reason}")
    merged = " (+ extra KV merged by LSE)" if choice.merge_extra else ""
    print(f"backend  {choice.backend.name}{merged}")
    seconds, (out, lse) = _time(lambda: backends.execute(choice, args), a.iters, args.q.is_cuda)
    print(f"time     {seconds * 1e3:.3f} ms (median of {max(a.iters, 1)})")
    if choice.backend is backends.REFERENCE:
        print("error    n/a (ran the reference itself)")
        return 0
    ref_out, ref_lse = backends.run(args, "reference")
    out_err = (out.float() - ref_out.float()).abs().max().item()
    lse_err = (lse.float() - ref_lse.float()).abs().max().item()
    print(f"error    max |out - ref| = {out_err:.3e}, max |lse - ref| = {lse_err:.3e}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gna-cute", description="Generalized neighborhood attention in the CuTe DSL")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("env", help="versions, devices and which backends can run here").set_defaults(func=cmd_env)
    _add_run_parser(sub)
    for name in _PLUGINS:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
