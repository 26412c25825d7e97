"""Normalized GNA parameters: per-dim tuples, validated once, hashable (usable as cache keys)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

IntOrTuple = Union[int, Sequence[int]]
BoolOrTuple = Union[bool, Sequence[bool]]


def _as_tuple(name: str, value, rank: int, kind: type) -> tuple:
    """Broadcast an int/bool to ``rank`` entries, or check a sequence has exactly ``rank``."""
    if isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
        return (value,) * rank
    if isinstance(value, (tuple, list)):
        if len(value) != rank:
            raise ValueError(
                f"{name}={tuple(value)!r} has {len(value)} entries, expected {rank} (one per spatial dim)"
            )
        for v in value:
            if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
                raise TypeError(f"{name}={tuple(value)!r}: every entry must be {kind.__name__}, got {v!r}")
        return tuple(value)
    raise TypeError(f"{name} must be {kind.__name__} or a tuple of {kind.__name__}, got {value!r}")


@dataclass(frozen=True)
class GNAParams:
    """One GNA problem's neighborhood definition; see ``docs/semantics.md``."""

    spatial_shape: tuple[int, ...]
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    is_causal: tuple[bool, ...]

    @property
    def rank(self) -> int:
        return len(self.spatial_shape)

    @property
    def is_dense(self) -> bool:
        """Window covers every axis and nothing is causal: plain attention."""
        return all(
            w == n and d == 1 and not c
            for w, n, d, c in zip(self.kernel_size, self.spatial_shape, self.dilation, self.is_causal)
        )

    @classmethod
    def make(
        cls,
        spatial_shape: Sequence[int],
        kernel_size: IntOrTuple,
        stride: IntOrTuple = 1,
        dilation: IntOrTuple = 1,
        is_causal: BoolOrTuple = False,
    ) -> "GNAParams":
        """Broadcast and validate; raises ValueError/TypeError naming the offending argument."""
        spatial_shape = tuple(int(n) for n in spatial_shape)
        rank = len(spatial_shape)
        if rank not in (1, 2, 3):
            raise ValueError(f"GNA supports 1, 2 or 3 spatial dims, got spatial shape {spatial_shape}")
        ks = _as_tuple("kernel_size", kernel_size, rank, int)
        st = _as_tuple("stride", stride, rank, int)
        dl = _as_tuple("dilation", dilation, rank, int)
        ca = _as_tuple("is_causal", is_causal, rank, bool)
        for i, (n, w, s, d) in enumerate(zip(spatial_shape, ks, st, dl)):
            if w < 2:
                raise ValueError(f"kernel_size={ks} must be >= 2 in every dim (dim {i} has {w})")
            if s < 1:
                raise ValueError(f"stride={st} must be >= 1 in every dim (dim {i} has {s})")
            if d < 1:
                raise ValueError(f"dilation={dl} must be >= 1 in every dim (dim {i} has {d})")
            if s > w:
                raise ValueError(f"stride={st} must be <= kernel_size={ks} in every dim (dim {i}: {s} > {w})")
            if w * d > n:
                raise ValueError(
                    f"kernel_size={ks} x dilation={dl} must be <= the spatial size {spatial_shape} "
                    f"in every dim (dim {i}: {w} x {d} > {n})"
                )
        return cls(spatial_shape, ks, st, dl, ca)
