"""A deliberately simple time model: time is proportional to the tile pairs the kernel computes.

    t = B * H * c * (T_q * T_kv / E0) * (D / D0) * (full + (1 + m) * partial + o * q_tiles)

``c`` (ms per unmasked tile pair of the calibration tiling, element count ``E0`` and head dim
``D0``) comes from one dense run on the device (:func:`calibrate`); ``m`` is the extra cost of a
tile that needs an element mask, ``o`` a per-Q-tile overhead (prologue, epilogue) counted in tile
pairs.  Scaling by tile elements and head dim assumes equal efficiency across tile shapes: good for
ranking strides under one tiling, rough across tilings.  See ``docs/simulator.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

from .problem import Problem, Tiling
from .tiles import TileStats, simulate

#: Extra cost of a masked tile pair relative to an unmasked one.  An assumption (the mask is a
#: few integer ops and selects per score element next to two MMAs); refine it per device with
#: :func:`fit_mask_factor` from one strided or s=1 measurement.
DEFAULT_MASK_FACTOR = 0.3


def work_units(stats: TileStats, mask_factor: float = DEFAULT_MASK_FACTOR,
               q_tile_overhead: float = 0.0) -> float:
    """Cost of one (batch, head) in unmasked-tile-pair units of this tiling."""
    return stats.full + (1.0 + mask_factor) * stats.partial + q_tile_overhead * stats.q_tiles


def dense_work_units(stats: TileStats, mask_factor: float = DEFAULT_MASK_FACTOR,
                     q_tile_overhead: float = 0.0) -> float:
    """The same for plain attention on the same tiling (partial only where tiles overhang)."""
    return (stats.dense_tile_pairs + mask_factor * stats.dense_partial
            + q_tile_overhead * stats.dense_q_tiles)


def predicted_speedup(stats: TileStats, mask_factor: float = DEFAULT_MASK_FACTOR,
                      q_tile_overhead: float = 0.0) -> float:
    """Dense time / GNA time on the same tiling; needs no calibration."""
    return dense_work_units(stats, mask_factor, q_tile_overhead) / work_units(
        stats, mask_factor, q_tile_overhead)


@dataclass(frozen=True)
class TimeModel:
    """A calibrated cost per tile pair, and what it was calibrated on."""

    ms_per_tile_pair: float  # one unmasked pair of the calibration tiling, one batch and head
    tile_elems: int  # T_q * T_kv (tokens) of the calibration tiling
    head_dim: int
    mask_factor: float = DEFAULT_MASK_FACTOR
    q_tile_overhead: float = 0.0

    def predict_ms(self, problem: Problem, stats: TileStats) -> float:
        """Predicted kernel time of ``problem`` whose tiling gave ``stats``."""
        elems = prod(stats.q_tile_shape) * prod(stats.kv_tile_shape)
        per_pair = self.ms_per_tile_pair * (elems / self.tile_elems) * (problem.head_dim / self.head_dim)
        units = work_units(stats, self.mask_factor, self.q_tile_overhead)
        return problem.batch * problem.heads * per_pair * units


def calibrate(dense_ms: float, dense_problem: Problem, tiling: Tiling,
              mask_factor: float = DEFAULT_MASK_FACTOR, q_tile_overhead: float = 0.0) -> TimeModel:
    """Fit ``c`` so the model reproduces ``dense_ms``, a measured dense run of ``dense_problem``.

    ``dense_problem`` may be any problem; only its plain-attention twin (same sizes) is used, so
    passing the GNA problem itself is fine.
    """
    if not isinstance(dense_ms, (int, float)) or isinstance(dense_ms, bool) or not dense_ms > 0:
        raise ValueError(f"dense_ms={dense_ms!r} must be a positive number of milliseconds")
    if not isinstance(dense_problem, Problem):
        raise TypeError(f"dense_problem must be a Problem, got {type(dense_problem).__name__}")
    if not mask_factor >= 0:
        raise ValueError(f"mask_factor={mask_factor!r} must be >= 0")
    if not q_tile_overhead >= 0:
        raise ValueError(f"q_tile_overhead={q_tile_overhead!r} must be >= 0")
    dense = dense_problem.dense()
    stats = simulate(dense, Tiling(tiling.q_tile_shape, tiling.kv_tile_shape))
    units = work_units(stats, mask_factor, q_tile_overhead) * dense.batch * dense.heads
    return TimeModel(dense_ms / units, tiling.q_tile_size * tiling.kv_tile_size, dense.head_dim,
                     float(mask_factor), float(q_tile_overhead))


def fit_mask_factor(measured_ms: float, problem: Problem, stats: TileStats, model: TimeModel) -> float:
    """The mask factor that makes ``model`` reproduce one measured GNA run with masked tiles."""
    if stats.partial == 0:
        raise ValueError("stats has no partial tiles: a block-sparse run cannot fit mask_factor")
    unit_ms = model.predict_ms(problem, stats) / work_units(stats, model.mask_factor, model.q_tile_overhead)
    units = measured_ms / unit_ms
    return (units - stats.full - model.q_tile_overhead * stats.q_tiles) / stats.partial - 1.0
