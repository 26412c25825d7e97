"""Turning simulator results into tables (people) and plain dicts (JSON, machines)."""

from __future__ import annotations

from dataclasses import asdict, replace
from math import prod

from tabulate import tabulate

from .problem import Problem, Tiling
from .search import SearchResult, SearchRow
from .tiles import TileStats
from .timemodel import DEFAULT_MASK_FACTOR, TimeModel, predicted_speedup

TABLE_FORMAT = "github"  # pastes into Markdown as is


def _shape(t: tuple) -> str:
    return "x".join(str(int(x)) for x in t)


def problem_line(problem: Problem, strides: bool = False) -> str:
    """One line naming the problem; ``strides`` leaves the stride out (a table lists several)."""
    p = problem.params
    causal = "x".join("1" if c else "0" for c in p.is_causal)
    stride = "" if strides else f", stride {_shape(p.stride)}"
    return (f"input {_shape(p.spatial_shape)}, window {_shape(p.kernel_size)}{stride}, "
            f"dilation {_shape(p.dilation)}, causal {causal}; batch {problem.batch}, heads {problem.heads}, "
            f"head dim {problem.head_dim}")


def stats_rows(problem: Problem, stats: TileStats, model: TimeModel | None = None,
               mask_factor: float = DEFAULT_MASK_FACTOR) -> list[tuple[str, str]]:
    """(quantity, value) rows; counts are per (batch, head) unless said otherwise."""
    flops = 4.0 * problem.batch * problem.heads * problem.head_dim * stats.attended_pairs
    rows = [
        ("tiling (Q/KV), layout",
         f"{_shape(stats.q_tile_shape)}/{_shape(stats.kv_tile_shape)}, {stats.layout}"),
        ("attended (query, key) pairs", f"{stats.attended_pairs:,}"),
        ("dense pairs", f"{stats.dense_pairs:,}"),
        ("FLOP-wise bound (dense / GNA)", f"{stats.flop_bound:.2f}"),
        ("GNA TFLOP (all heads, fwd)", f"{flops / 1e12:.3f}"),
        ("Q tiles", f"{stats.q_tiles:,}"),
        ("visited tile pairs", f"{stats.visited:,}"),
        ("of which full (no mask)", f"{stats.full:,}"),
        ("of which partial (masked)", f"{stats.partial:,} ({100 * stats.partial_fraction:.1f}%)"),
        ("ideal tile pairs (>= 1 attended)", f"{stats.ideal:,}"),
        ("dense tile pairs", f"{stats.dense_tile_pairs:,}"),
        ("tile-wise bound (dense / visited)", f"{stats.tile_bound:.2f}"),
        ("ideal bound (dense / ideal)", f"{stats.ideal_bound:.2f}"),
        ("KV tiles per Q tile min/mean/max",
         f"{stats.visited_min} / {stats.visited_mean:.1f} / {stats.visited_max}"),
        ("perfectly block-sparse", "yes" if stats.block_sparse else "no"),
    ]
    if model is None:
        rows.append((f"predicted speedup (mask factor {mask_factor:g})",
                     f"{predicted_speedup(stats, mask_factor):.2f}"))
    else:
        ms = model.predict_ms(problem, stats)
        dense_ms = model.predict_ms(problem, _dense_view(stats))
        rows.append((f"predicted time, ms (mask factor {model.mask_factor:g})", f"{ms:.3f}"))
        rows.append(("predicted speedup", f"{dense_ms / ms:.2f}"))
    return rows


def _dense_view(stats: TileStats) -> TileStats:
    """The plain-attention run on the same tiling, as the time model sees it."""
    return replace(stats, q_tiles=stats.dense_q_tiles, visited=stats.dense_tile_pairs,
                   full=stats.dense_tile_pairs - stats.dense_partial, partial=stats.dense_partial)


def stats_table(problem: Problem, stats: TileStats, model: TimeModel | None = None,
                mask_factor: float = DEFAULT_MASK_FACTOR) -> str:
    rows = stats_rows(problem, stats, model, mask_factor)
    return tabulate(rows, headers=["quantity (per batch x head)", "value"], tablefmt=TABLE_FORMAT,
                    disable_numparse=True)


def compare_table(runs: list[tuple[Problem, TileStats]], model: TimeModel | None = None,
                  mask_factor: float = DEFAULT_MASK_FACTOR) -> str:
    """One row per stride of the same problem and tiling: the headline numbers side by side."""
    s0 = runs[0][1]
    headers = ["stride", "FLOP bound", "tile bound", "ideal bound", "visited", "masked %",
               "KV tiles/Q tile", "block-sparse", "pred. speedup"]
    if model is not None:
        headers.append("pred. ms")
    table = []
    for problem, s in runs:
        line = [_shape(problem.params.stride), f"{s.flop_bound:.2f}", f"{s.tile_bound:.2f}",
                f"{s.ideal_bound:.2f}", f"{s.visited:,}", f"{100 * s.partial_fraction:.1f}",
                f"{s.visited_min}/{s.visited_mean:.1f}/{s.visited_max}", "yes" if s.block_sparse else "no",
                f"{predicted_speedup(s, mask_factor if model is None else model.mask_factor):.2f}"]
        if model is not None:
            line.append(f"{model.predict_ms(problem, s):.3f}")
        table.append(line)
    title = (f"tiling {_shape(s0.q_tile_shape)}/{_shape(s0.kv_tile_shape)} ({s0.layout}), "
             f"{s0.q_tiles:,} Q tiles, {s0.dense_tile_pairs:,} dense tile pairs per batch x head")
    return title + "\n" + tabulate(table, headers=headers, tablefmt=TABLE_FORMAT, disable_numparse=True)


def _search_rows(result: SearchResult) -> list[SearchRow]:
    rows = list(result.pareto)
    if result.block_sparse is not None and result.block_sparse not in rows:
        rows.append(result.block_sparse)
    return sorted(rows, key=lambda r: (prod(r.stride), r.stride))


def search_table(problem: Problem, result: SearchResult, model: TimeModel | None = None) -> str:
    """Pareto front (stride vs tile-wise bound), the smallest block-sparse stride marked '*'."""
    headers = ["stride", "tiling", "tile bound", "FLOP bound", "masked %", "KV tiles/Q tile",
               "pred. speedup", "block-sparse"]
    if model is not None:
        headers.append("pred. ms")
    table = []
    for r in _search_rows(result):
        s = r.stats
        sparse = ""
        if r.block_sparse_tiling is not None:
            sparse = f"yes ({r.block_sparse_tiling})"
            if r is result.block_sparse:
                sparse = "* " + sparse
        line = [_shape(r.stride), str(r.tiling), f"{s.tile_bound:.2f}", f"{s.flop_bound:.2f}",
                f"{100 * s.partial_fraction:.1f}", f"{s.visited_min}/{s.visited_mean:.1f}/{s.visited_max}",
                f"{r.predicted_speedup:.2f}", sparse]
        if model is not None:
            line.append(f"{model.predict_ms(problem, s):.3f}")
        table.append(line)
    return tabulate(table, headers=headers, tablefmt=TABLE_FORMAT, disable_numparse=True)


def problem_dict(problem: Problem) -> dict:
    out = asdict(problem.params)
    out.update(batch=problem.batch, heads=problem.heads, head_dim=problem.head_dim)
    return out


def tiling_dict(tiling: Tiling) -> dict:
    return asdict(tiling)


def row_dict(row: SearchRow) -> dict:
    return {
        "stride": list(row.stride),
        "tiling": tiling_dict(row.tiling),
        "tile_bound": row.bound,
        "predicted_speedup": row.predicted_speedup,
        "block_sparse_tiling": (None if row.block_sparse_tiling is None
                                else tiling_dict(row.block_sparse_tiling)),
        "stats": row.stats.as_dict(),
    }


def search_dict(result: SearchResult) -> dict:
    key = lambda r: list(r.stride)  # noqa: E731
    return {
        "pareto": [row_dict(r) for r in result.pareto],
        "kept_strides": [key(r) for r in result.kept],
        "smallest_block_sparse": None if result.block_sparse is None else row_dict(result.block_sparse),
        "tried": len(result.rows),
    }
