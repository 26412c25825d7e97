"""``gna-cute bench``: run a suite or one problem, print the table, write JSON/markdown/plots."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from . import problems as P


def _bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "y"):
        return True
    if low in ("0", "false", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected a bool (1/0/true/false), got {text!r}")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench",
        help="benchmark gna_cute against cuDNN, FlashAttention-4, FlexAttention and the simulator",
        description="Run a named suite (--suite) or one problem given by flags (-i/-w/...). "
        "--dry-run lists problems and providers without a GPU.",
    )
    p.add_argument("--suite", choices=sorted(P.SUITES), help="named problem suite")
    p.add_argument("-i", "--input-size", type=int, nargs="+", help="spatial shape, e.g. -i 256 256")
    p.add_argument("-w", "--window", type=int, nargs="+", help="kernel size (int or one per dim)")
    p.add_argument("-s", "--stride", type=int, nargs="+", action="append",
                   help="stride (int or one per dim); repeat (-s 1 -s 16) for one problem per stride")
    p.add_argument("--dilation", type=int, nargs="+", default=[1])
    p.add_argument("--causal", type=_bool, nargs="*", default=None,
                   help="bare: causal in every dim; or one bool per dim")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=1)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--dtype", choices=P.DTYPES, default="float16")
    p.add_argument("--q-tile", type=int, nargs="+", help="our kernel's Q tile shape")
    p.add_argument("--kv-tile", type=int, nargs="+", help="our kernel's KV tile shape")
    p.add_argument("--auto-tiles", action="store_true",
                   help="drop the problems' tile shapes: our kernel picks its own (its default)")
    p.add_argument("--providers", help="comma-separated subset (cudnn-dense is always added)")
    p.add_argument("--dry-run", action="store_true", help="list problems and providers, run nothing")
    p.add_argument("--out", type=Path, help="output folder (default bench/results/<device>/)")
    p.add_argument("--runs", type=int, default=30, help="timed calls per provider (>= 20)")
    p.add_argument("--rounds", type=int, default=10,
                   help="interleaved timing rounds per problem: every provider's runs are split over them, "
                        "the order reversed every other round (the GPU's clocks wander under its power cap)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--graphs", action="store_true", help="time CUDA-graph replays of each call")
    p.add_argument("--no-l2-flush", action="store_true")
    p.add_argument("--err-heads", type=int, default=1, help="heads compared with the reference")
    p.add_argument("--sustained", type=float, default=0.0, metavar="SECONDS",
                   help="after the timed rounds, also call each provider back to back for SECONDS (two rounds): "
                        "ms, SM clock, power, Mcycles and joules per call in the notes (clock-independent "
                        "comparison under the power cap)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--max-minutes", type=float,
                   help="skip the remaining problems once this much time has passed")
    p.set_defaults(func=main)


def _one(v: list[int] | None):
    return None if v is None else (v[0] if len(v) == 1 else tuple(v))


def problems_from_args(args: argparse.Namespace) -> tuple[str, list[P.Problem]]:
    """(output stem, problems) from ``--suite`` or the problem flags; ValueError when neither."""
    if args.suite and args.input_size:
        raise ValueError("give either --suite or one problem (-i/--input-size), not both")
    if args.suite:
        probs = P.suite(args.suite)
        if args.auto_tiles:
            probs = [dataclasses.replace(p, q_tile_shape=None, kv_tile_shape=None) for p in probs]
        return args.suite, probs
    if not args.input_size or not args.window:
        raise ValueError("give --suite NAME, or a problem with -i/--input-size and -w/--window")
    causal = False if args.causal is None else (True if args.causal == [] else _one(args.causal))
    probs = [
        P.Problem.make(
            args.input_size, _one(args.window), _one(stride), _one(args.dilation), causal,
            batch=args.batch, heads=args.heads, head_dim=args.head_dim, dtype=args.dtype,
            q_tile_shape=args.q_tile, kv_tile_shape=args.kv_tile,
        )
        for stride in (args.stride or [[1]])
    ]
    stem = probs[0].name if len(probs) == 1 else f"{probs[0].name}-{len(probs)}-strides"
    return stem, probs


def _dry_run(problems: list[P.Problem], providers: list) -> int:
    from .results import PROBLEM_HEADERS, RunRecord, problem_table, table

    rec = RunRecord("dry-run", {}, {}, [p.summary() for p in problems], [])
    print(table(problem_table(rec), PROBLEM_HEADERS))
    print()
    rows = []
    for prov in providers:
        avail = prov.available()
        runs = [p for p in problems if prov.can_run(p) is None]
        rows.append([prov.name, prov.role, avail or "yes", f"{len(runs)}/{len(problems)}"])
    print(table(rows, ["provider", "role", "available here", "problems it takes"]))
    for prov in providers:
        reasons = {prov.can_run(p) for p in problems} - {None}
        for r in sorted(reasons):
            print(f"  {prov.name}: skips some problems: {r}")
    return 0


def main(args: argparse.Namespace) -> int:
    from . import providers as prov_mod, runner

    try:
        stem, problems = problems_from_args(args)
        providers = prov_mod.select(args.providers)
        settings = runner.Settings(runs=args.runs, rounds=args.rounds, warmup=args.warmup, use_graph=args.graphs,
                                   flush_l2=not args.no_l2_flush, err_heads=args.err_heads,
                                   sustained_s=args.sustained)
    except ValueError as e:
        print(f"gna-cute bench: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        return _dry_run(problems, providers)

    import torch

    if not torch.cuda.is_available():
        print("gna-cute bench: no CUDA device (use --dry-run to list problems and providers)",
              file=sys.stderr)
        return 2
    from . import clocks, results
    env = results.collect_env()
    print(f"gna-cute bench {stem}: {len(problems)} problems x {len(providers)} providers on "
          f"{env['device']} (torch {env['torch']}, CuTe DSL {env['cutlass_dsl']}, FA4 {env['flash_attn_4']})",
          flush=True)
    t0 = time.perf_counter()
    out_dir = args.out or _default_out(env)
    summaries = [p.summary() for p in problems]

    def record_of(rows: list[dict]) -> results.RunRecord:
        return results.RunRecord(stem, env, {**settings.as_dict(), "wall_s": round(time.perf_counter() - t0, 1)},
                                 summaries, rows)

    with clocks.ClockLog(clocks.nvidia_smi_id(torch.cuda.current_device())) as clock_log:
        rows = runner.run(problems, providers, settings, log=lambda s: print(s, flush=True),
                          after_problem=lambda rows: results.save(record_of(rows), out_dir, stem, with_plots=False),
                          max_seconds=None if args.max_minutes is None else 60.0 * args.max_minutes)
    clocks.annotate(rows, clock_log.samples)
    record = record_of(rows)
    paths = results.save(record, out_dir, stem, with_plots=not args.no_plots)
    print()
    # Console: no notes column (they are in the markdown), so the table fits a terminal / log tail.
    print(results.table([r[:-1] for r in results.row_table(record, include_skipped=False)],
                        results.ROW_HEADERS[:-1]))
    failed = [r for r in rows if r.get("status") == "failed"]
    for r in failed:
        print(f"FAILED {r['problem']} {r['provider']}: {r['reason']}")
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0 if any(r.get("status") == "ok" for r in rows) else 1


def _default_out(env: dict) -> Path:
    from .results import device_dirname

    here = Path(__file__).resolve().parent / "results"
    return here / device_dirname(env)


def standalone(argv: list[str] | None = None) -> int:
    """``python -m gna_cute.bench.cli`` without the package CLI (for environments without it)."""
    parser = argparse.ArgumentParser(prog="gna-cute")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(standalone())
