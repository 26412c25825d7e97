"""What the simulator is asked about: a GNA problem and a tiling of it.

Both are frozen dataclasses so they can key caches and be compared; both validate on construction
so every later function can trust them.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

from gna_cute.params import GNAParams

#: Tiles live inside one dilation group (what our kernels do, team contract 4).
GROUP_MAJOR = "group-major"
#: Tiles over the original coordinates, mixing dilation groups (for comparison only).
INTERLEAVED = "interleaved"
LAYOUTS = (GROUP_MAJOR, INTERLEAVED)


@dataclass(frozen=True)
class Problem:
    """A GNA problem: the neighborhood plus the sizes the time model and FLOP counts need."""

    params: GNAParams
    batch: int = 1
    heads: int = 1
    head_dim: int = 128

    def __post_init__(self) -> None:
        if not isinstance(self.params, GNAParams):
            raise TypeError(f"params must be a GNAParams, got {type(self.params).__name__}")
        for name in ("batch", "heads", "head_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive int")

    @property
    def tokens(self) -> int:
        return prod(self.params.spatial_shape)

    def dense(self) -> "Problem":
        """The same sizes with plain attention (window = whole axis, no dilation, not causal)."""
        shape = self.params.spatial_shape
        return Problem(GNAParams.make(shape, shape, 1, 1, False), self.batch, self.heads, self.head_dim)


@dataclass(frozen=True)
class Tiling:
    """Q and KV tile shapes (tokens per spatial dim) and how dilation groups are laid out."""

    q_tile_shape: tuple[int, ...]
    kv_tile_shape: tuple[int, ...]
    layout: str = GROUP_MAJOR

    def __post_init__(self) -> None:
        for name in ("q_tile_shape", "kv_tile_shape"):
            value = getattr(self, name)
            if not isinstance(value, tuple) or not value:
                raise TypeError(f"{name}={value!r} must be a non-empty tuple of ints")
            if any(not isinstance(t, int) or isinstance(t, bool) or t < 1 for t in value):
                raise ValueError(f"{name}={value!r}: every entry must be an int >= 1")
        if len(self.q_tile_shape) != len(self.kv_tile_shape):
            raise ValueError(
                f"q_tile_shape={self.q_tile_shape} and kv_tile_shape={self.kv_tile_shape} "
                "must have the same rank"
            )
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout={self.layout!r} must be one of {LAYOUTS}")

    @property
    def rank(self) -> int:
        return len(self.q_tile_shape)

    @property
    def q_tile_size(self) -> int:
        return prod(self.q_tile_shape)

    @property
    def kv_tile_size(self) -> int:
        return prod(self.kv_tile_shape)

    def check_rank(self, params: GNAParams) -> None:
        """Raise if the tile shapes do not have one entry per spatial dim of ``params``."""
        if self.rank != params.rank:
            raise ValueError(
                f"q_tile_shape={self.q_tile_shape} has {self.rank} dims but the problem has "
                f"{params.rank} spatial dims {params.spatial_shape}"
            )

    def __str__(self) -> str:
        fmt = lambda t: "x".join(map(str, t))  # noqa: E731
        return f"{fmt(self.q_tile_shape)}/{fmt(self.kv_tile_shape)}"
