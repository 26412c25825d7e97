"""Optional figures (matplotlib is an optional dependency: imported only when plotting)."""

from __future__ import annotations

from math import log2, prod
from pathlib import Path

from gna_cute.params import GNAParams

from .problem import Tiling
from .search import SearchResult
from .tiles import tile_counts


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise RuntimeError("plots need matplotlib: pip install 'gna_cute[plot]'") from e
    return plt


def plot_search(result: SearchResult, path: str | Path) -> Path:
    """Stride size (log2 of the stride product) against the tile-wise bound."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    x = [log2(prod(r.stride)) for r in result.rows]
    ax.scatter(x, [r.bound for r in result.rows], s=10, color="0.7", label="all strides (best tiling)")
    front = result.pareto
    ax.plot([log2(prod(r.stride)) for r in front], [r.bound for r in front], "o-", label="Pareto front")
    if result.block_sparse is not None:
        b = result.block_sparse
        ax.plot([log2(prod(b.stride))], [b.bound], "*", markersize=14, label="smallest block-sparse")
    ax.axhline(result.rows[0].stats.flop_bound, linestyle="--", color="k", linewidth=0.8,
               label="FLOP-wise bound")
    ax.set_xlabel("log2(product of strides)")
    ax.set_ylabel("tile-wise bound (dense / visited)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_visited_heatmap(params: GNAParams, tiling: Tiling, path: str | Path) -> Path:
    """KV tiles visited per Q tile of dilation group (0, 0), 2D problems only."""
    if params.rank != 2:
        raise ValueError(
            f"the visited-tile heatmap is for 2D problems, got spatial shape {params.spatial_shape}")
    plt = _pyplot()
    counts = tile_counts(params, tiling.q_tile_shape, tiling.kv_tile_shape, tiling.layout)
    visited = counts[0][0, 0]
    fig, ax = plt.subplots(figsize=(6, 5))
    im = ax.imshow(visited, cmap="viridis", origin="upper", aspect="auto")
    fig.colorbar(im, ax=ax, label="KV tiles visited")
    ax.set_xlabel("Q tile index, dim 1")
    ax.set_ylabel("Q tile index, dim 0")
    ax.set_title(f"visited KV tiles per Q tile, {tiling}, group (0, 0)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
