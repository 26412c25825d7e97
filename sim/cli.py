"""``gna-cute sim``: the simulator from the command line (registered by ``gna_cute.cli``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gna_cute.params import GNAParams

from . import report
from .problem import GROUP_MAJOR, LAYOUTS, Problem, Tiling
from .search import EXHAUSTIVE_UP_TO, allowed_tilings, default_tiling, search
from .tiles import simulate
from .timemodel import DEFAULT_MASK_FACTOR, calibrate, predicted_speedup

EXAMPLE = "gna-cute sim -i 256 256 -w 80 80 -s 16 16 --heads 24 --q-tile 16 8 --kv-tile 16 8"


def register(subparsers) -> None:
    """Add the ``sim`` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser(
        "sim", help="tile simulator: visited / masked tile pairs, bounds, stride search",
        description="Count the (Q tile, KV tile) pairs a tiled GNA kernel computes, and search "
                    f"strides and tile shapes.  Example: {EXAMPLE}")
    ints = dict(type=int, nargs="+", metavar="N")
    p.add_argument("-i", "--input-size", required=True, help="spatial shape", **ints)
    p.add_argument("-w", "--window", required=True, help="kernel size per dim (or one for all)", **ints)
    p.add_argument("-s", "--stride", action="append",
                   help="stride per dim (default 1); repeat (-s 1 1 -s 16 16) to compare strides", **ints)
    p.add_argument("--dilation", default=[1], help="dilation per dim (default 1)", **ints)
    p.add_argument("--causal", type=int, nargs="+", default=[0], choices=(0, 1), metavar="0|1",
                   help="causal flag per dim (default 0)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=1)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--q-tile", help="Q tile shape (default: the kernel's default)", **ints)
    p.add_argument("--kv-tile", help="KV tile shape (default: the kernel's default)", **ints)
    p.add_argument("--layout", choices=LAYOUTS, default=GROUP_MAJOR,
                   help="dilation layout of tiles (our kernels: group-major)")
    p.add_argument("--arch", type=int, default=90, help="kernel whose tile shapes to use (90, 100)")
    p.add_argument("--search", action="store_true",
                   help="search strides x tile shapes (only the given tiling if --q-tile is set)")
    p.add_argument("--exhaustive-up-to", type=int, default=EXHAUSTIVE_UP_TO,
                   help="windows up to this size try every stride (default %(default)s)")
    p.add_argument("--dense-ms", type=float, help="measured ms of a dense run (same B, H, D) to calibrate")
    p.add_argument("--mask-factor", type=float, default=DEFAULT_MASK_FACTOR,
                   help="extra cost of a masked tile pair (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--plot", type=Path, metavar="DIR", help="write figures into DIR (needs matplotlib)")
    p.set_defaults(func=run)


def _per_dim(values: list[int]):
    return values[0] if len(values) == 1 else tuple(values)


def _problems(args: argparse.Namespace) -> list[Problem]:
    """One problem per ``-s`` given (validated by GNAParams.make)."""
    causal = [bool(c) for c in args.causal]
    out = []
    for stride in args.stride or [[1]]:
        params = GNAParams.make(args.input_size, _per_dim(args.window), _per_dim(stride),
                                _per_dim(args.dilation), causal[0] if len(causal) == 1 else tuple(causal))
        out.append(Problem(params, args.batch, args.heads, args.head_dim))
    return out


def _tiling(args: argparse.Namespace, rank: int) -> Tiling | None:
    """The tiling from the flags, or None if neither tile flag is given."""
    if args.q_tile is None and args.kv_tile is None:
        return None
    if args.q_tile is None or args.kv_tile is None:
        raise ValueError(
            f"give both --q-tile and --kv-tile (got q_tile={args.q_tile}, kv_tile={args.kv_tile})")
    tiling = Tiling(tuple(args.q_tile), tuple(args.kv_tile), args.layout)
    if tiling.rank != rank:
        raise ValueError(f"--q-tile {args.q_tile} has {tiling.rank} dims, the input has {rank}")
    return tiling


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except (ValueError, TypeError, RuntimeError) as e:
        print(f"gna-cute sim: error: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.dense_ms is not None and not args.dense_ms > 0:
        raise ValueError(f"--dense-ms {args.dense_ms} must be positive")
    problems = _problems(args)
    problem, rank = problems[0], problems[0].params.rank
    given = _tiling(args, rank)
    tiling = given or Tiling(*_default_shapes(rank, args), args.layout)
    runs = [(p, simulate(p, tiling)) for p in problems]
    model = None
    if args.dense_ms is not None:
        model = calibrate(args.dense_ms, problem, tiling, args.mask_factor)

    result = None
    if args.search:
        tilings = [Tiling(tiling.q_tile_shape, tiling.kv_tile_shape)] if given else allowed_tilings(
            rank, args.arch, args.head_dim)
        result = search(problem, tilings, exhaustive_up_to=args.exhaustive_up_to)

    if args.json:
        print(json.dumps(_json(args, tiling, runs, model, result), indent=2))
    else:
        print(report.problem_line(problem, strides=len(runs) > 1))
        print()
        if len(runs) == 1:
            print(report.stats_table(problem, runs[0][1], model, args.mask_factor))
        else:
            print(report.compare_table(runs, model, args.mask_factor))
        if result is not None:
            print()
            print(f"stride search over {len(result.rows)} strides x "
                  f"{'the given tiling' if given else 'the kernel tile shapes'}; Pareto front:")
            print(report.search_table(problem, result, model))

    if args.plot is not None:
        _plots(args.plot, problem, tiling, result)
    return 0


def _json(args: argparse.Namespace, tiling: Tiling, runs, model, result) -> dict:
    out = {"problem": report.problem_dict(runs[0][0]), "tiling": report.tiling_dict(tiling),
           "mask_factor": args.mask_factor, "runs": []}
    for p, stats in runs:
        run = {"stride": list(p.params.stride), "stats": stats.as_dict(),
               "predicted_speedup": predicted_speedup(stats, args.mask_factor)}
        if model is not None:
            run["predicted_ms"] = model.predict_ms(p, stats)
        out["runs"].append(run)
    if result is not None:
        out["search"] = report.search_dict(result)
    return out


def _default_shapes(rank: int, args: argparse.Namespace):
    t = default_tiling(rank, args.arch, args.head_dim)
    return t.q_tile_shape, t.kv_tile_shape


def _plots(folder: Path, problem: Problem, tiling: Tiling, result) -> None:
    from . import plots

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    if result is not None:
        written.append(plots.plot_search(result, folder / "sim_search.png"))
    if problem.params.rank == 2:
        written.append(plots.plot_visited_heatmap(problem.params, tiling, folder / "sim_visited.png"))
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
