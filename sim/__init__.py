"""Analytical tile simulator: what a tiled GNA kernel computes, and what it could skip.

``tile_counts`` is the reference the kernels' debug counters are tested against; ``simulate``
gives every number of ``docs/simulator.md``; ``search`` ranks strides and tile shapes.
"""

from .problem import GROUP_MAJOR, INTERLEAVED, Problem, Tiling
from .search import SearchResult, SearchRow, allowed_tilings, search, stride_candidates
from .tiles import TileStats, simulate, tile_counts
from .timemodel import DEFAULT_MASK_FACTOR, TimeModel, calibrate, fit_mask_factor, predicted_speedup

__all__ = [
    "DEFAULT_MASK_FACTOR",
    "GROUP_MAJOR",
    "INTERLEAVED",
    "Problem",
    "SearchResult",
    "SearchRow",
    "TileStats",
    "Tiling",
    "TimeModel",
    "allowed_tilings",
    "calibrate",
    "fit_mask_factor",
    "predicted_speedup",
    "search",
    "simulate",
    "stride_candidates",
    "tile_counts",
]
