"""Benchmark problems and the named suites.

A :class:`Problem` is the static description of one benchmark row group (sizes, neighborhood,
dtype, tiles); everything the table needs besides timings -- attended pairs, useful FLOPs, the
simulator's FLOP-wise and tile-wise bounds -- is derived from :mod:`gna_cute.sim`, so the
benchmark and the simulator can never disagree about what a problem costs.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass, field
from functools import cached_property
from math import prod
from typing import Any, Callable, Sequence

from gna_cute.params import GNAParams

DTYPES = ("float16", "bfloat16")
_DTYPE_SHORT = {"float16": "fp16", "bfloat16": "bf16"}

#: Tile shapes used when neither the problem nor the kernel's config names any (issue 7's tiles).
FALLBACK_TILES: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {
    1: ((128,), (128,)),
    2: ((16, 8), (16, 8)),
    3: ((2, 8, 8), (2, 8, 8)),
}


@dataclass(frozen=True)
class PublishedRef:
    """Numbers published by someone else, shown beside ours but never measured here."""

    speedup: str  # e.g. "5.2x / 6.0x" (with token permute / kernel only)
    tflops: float | None
    source: str


@dataclass(frozen=True)
class Problem:
    """One GNA forward problem (heads-last ``[B, *spatial, H, D]``)."""

    spatial_shape: tuple[int, ...]
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    is_causal: tuple[bool, ...]
    batch: int = 1
    heads: int = 1
    head_dim: int = 128
    dtype: str = "float16"
    q_tile_shape: tuple[int, ...] | None = None
    kv_tile_shape: tuple[int, ...] | None = None
    published: PublishedRef | None = field(default=None, compare=False)
    label: str | None = field(default=None, compare=False)

    @classmethod
    def make(
        cls,
        spatial_shape: Sequence[int],
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        dilation: int | Sequence[int] = 1,
        is_causal: bool | Sequence[bool] = False,
        *,
        batch: int = 1,
        heads: int = 1,
        head_dim: int = 128,
        dtype: str = "float16",
        q_tile_shape: Sequence[int] | None = None,
        kv_tile_shape: Sequence[int] | None = None,
        published: PublishedRef | None = None,
        label: str | None = None,
    ) -> "Problem":
        """Broadcast and validate (``GNAParams.make`` does the neighborhood checks)."""
        p = GNAParams.make(spatial_shape, kernel_size, stride, dilation, is_causal)
        for name, value in (("batch", batch), ("heads", heads), ("head_dim", head_dim)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive int")
        if dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r} must be one of {DTYPES}")
        if (q_tile_shape is None) != (kv_tile_shape is None):
            raise ValueError(
                f"q_tile_shape={q_tile_shape} and kv_tile_shape={kv_tile_shape}: give both or neither"
            )
        tiles = []
        for name, t in (("q_tile_shape", q_tile_shape), ("kv_tile_shape", kv_tile_shape)):
            if t is not None:
                t = tuple(t)
                if len(t) != p.rank or any(not isinstance(x, int) or x < 1 for x in t):
                    raise ValueError(f"{name}={t} must hold {p.rank} positive ints (one per spatial dim)")
            tiles.append(t)
        return cls(p.spatial_shape, p.kernel_size, p.stride, p.dilation, p.is_causal, batch, heads,
                   head_dim, dtype, tiles[0], tiles[1], published, label)

    # -- identity --------------------------------------------------------------------------------

    @property
    def rank(self) -> int:
        return len(self.spatial_shape)

    @property
    def params(self) -> GNAParams:
        return GNAParams(self.spatial_shape, self.kernel_size, self.stride, self.dilation, self.is_causal)

    @property
    def is_dense(self) -> bool:
        return self.params.is_dense

    @property
    def name(self) -> str:
        """Stable, readable id: ``2d-256x256-w80x80-s16x16-h24-d128-fp16``."""
        x = lambda t: "x".join(str(int(v)) for v in t)  # noqa: E731
        parts = [f"{self.rank}d", x(self.spatial_shape), f"w{x(self.kernel_size)}"]
        if any(s != 1 for s in self.stride):
            parts.append(f"s{x(self.stride)}")
        if any(d != 1 for d in self.dilation):
            parts.append(f"dil{x(self.dilation)}")
        if any(self.is_causal):
            parts.append("c" + "".join("1" if c else "0" for c in self.is_causal))
        if self.batch != 1:
            parts.append(f"b{self.batch}")
        parts += [f"h{self.heads}", f"d{self.head_dim}", _DTYPE_SHORT[self.dtype]]
        if self.q_tile_shape is not None:
            parts.append(f"t{x(self.q_tile_shape)}-{x(self.kv_tile_shape)}")
        return "-".join(parts)

    @property
    def tokens(self) -> int:
        return prod(self.spatial_shape)

    def tile_shapes(self, arch: int = 90) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Tiles our kernel uses: the problem's, else the kernel's own choice (the simulator-ranked
        ``tile_choice``, as ``gna_cute.attention`` picks them), else issue 7's."""
        if self.q_tile_shape is not None:
            return self.q_tile_shape, self.kv_tile_shape
        return self.chosen_tile_shapes(arch)

    def chosen_tile_shapes(self, arch: int = 90) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The tiles the kernel picks when none are given (``kernels.tile_choice``)."""
        try:
            from gna_cute.kernels import tile_choice

            q, kv = tile_choice.choose_tile_shapes(arch, self.params, self.head_dim)
            return tuple(q), tuple(kv)
        except (ImportError, AttributeError, ValueError):
            return FALLBACK_TILES[self.rank]

    # -- derived quantities (simulator) ----------------------------------------------------------

    def sim_problem(self) -> Any:
        from gna_cute import sim

        return sim.Problem(self.params, self.batch, self.heads, self.head_dim)

    def stats(self, q_tile_shape: tuple[int, ...], kv_tile_shape: tuple[int, ...]) -> Any:
        """The simulator's :class:`TileStats` (per batch and head) for one tiling."""
        from gna_cute import sim

        return sim.simulate(self.params, sim.Tiling(tuple(q_tile_shape), tuple(kv_tile_shape)))

    @cached_property
    def kernel_stats(self) -> Any:
        return self.stats(*self.tile_shapes())

    @property
    def attended_pairs(self) -> int:
        """(query, key) pairs over all batches and heads."""
        return self.kernel_stats.attended_pairs * self.batch * self.heads

    @property
    def useful_flops(self) -> int:
        """Attended pairs x 4 x D (QK^T and PV, 2 FLOPs per multiply-add, D_v = D)."""
        return self.attended_pairs * 4 * self.head_dim

    @property
    def dense_flops(self) -> int:
        return self.tokens * self.tokens * self.batch * self.heads * 4 * self.head_dim

    def summary(self) -> dict:
        """Static description plus derived numbers, JSON-ready."""
        st = self.kernel_stats
        q_tile, kv_tile = self.tile_shapes()
        out = asdict(self)
        out.update(
            name=self.name,
            tokens=self.tokens,
            attended_pairs=self.attended_pairs,
            useful_flops=self.useful_flops,
            flop_bound=st.flop_bound,
            tile_bound=st.tile_bound,
            tiles=[list(q_tile), list(kv_tile)],
            visited_tile_pairs=st.visited,
            partial_tile_pairs=st.partial,
            block_sparse=st.block_sparse,
        )
        return json.loads(json.dumps(out))  # plain JSON types (tuples -> lists), as stored


def problem_from_dict(d: dict) -> Problem:
    """Inverse of ``asdict(problem)`` (extra derived keys are ignored)."""
    pub = d.get("published")
    tup = lambda v: None if v is None else tuple(v)  # noqa: E731
    return Problem.make(
        d["spatial_shape"], tuple(d["kernel_size"]), tuple(d["stride"]), tuple(d["dilation"]),
        tuple(bool(c) for c in d["is_causal"]), batch=d["batch"], heads=d["heads"],
        head_dim=d["head_dim"], dtype=d["dtype"], q_tile_shape=tup(d.get("q_tile_shape")),
        kv_tile_shape=tup(d.get("kv_tile_shape")), published=PublishedRef(**pub) if pub else None,
        label=d.get("label"),
    )


# ------------------------------------------------------------------------------------------------
# Suites
# ------------------------------------------------------------------------------------------------

_NATTEN_SRC = "NATTEN's published H100 numbers as quoted in issue 7 (speedup vs cuDNN incl. token permute / kernel only)"


def _headline() -> list[Problem]:
    """Issue 7's table: fp16, D=128, B=1; 1D one head, 2D/3D 24 heads; issue 7's tiles."""
    one = dict(heads=1, q_tile_shape=(128,), kv_tile_shape=(128,))
    two = dict(heads=24, q_tile_shape=(16, 8), kv_tile_shape=(16, 8))
    three = dict(heads=24, q_tile_shape=(2, 8, 8), kv_tile_shape=(2, 8, 8))
    ref = lambda s, tf: PublishedRef(s, tf, _NATTEN_SRC)  # noqa: E731
    return [
        Problem.make((32768,), 2048, 1, **one, published=ref("8.3x", 363.0)),
        Problem.make((32768,), 2048, 2048, **one, published=ref("13.3x", 580.0)),
        Problem.make((256, 256), 80, 1, **two, published=ref("5.2x / 6.0x", 318.0)),
        Problem.make((256, 256), 80, 16, **two, published=ref("9.2x / 12.3x", 653.0)),
        Problem.make((30, 48, 80), (18, 24, 24), 1, **three, published=ref("3.35x / 3.6x", 186.0)),
        Problem.make((30, 48, 80), (18, 24, 24), (16, 8, 8), **three, published=ref("9.7x / 12.1x", 627.0)),
        Problem.make((32768,), 32768, 1, **one, label="dense"),
        Problem.make((256, 256), 256, 1, **two, label="dense"),
    ]


def _sweep_1d() -> list[Problem]:
    """L 4K-128K x windows x strides (8 heads so short rows are not pure launch overhead)."""
    out = []
    for n, w in itertools.product((4096, 16384, 32768, 131072), (256, 2048)):
        for s in sorted({1, max(1, w // 8), w // 2, w}):
            out.append(Problem.make((n,), w, s, heads=8))
    return out


def _sweep_2d() -> list[Problem]:
    out = []
    for n, w in itertools.product((128, 256), (16, 32, 80)):
        if w > n:
            continue
        for s in sorted({1, min(8, w), w // 2, w}):
            out.append(Problem.make((n, n), w, s, heads=8))
    return out


def _sweep_3d() -> list[Problem]:
    out = []
    for shape, w, strides in (
        ((32, 32, 32), (8, 8, 8), (1, (2, 4, 4), (8, 8, 8))),
        ((30, 48, 80), (18, 24, 24), (1, (2, 8, 8), (9, 12, 12), (16, 8, 8))),
    ):
        for s in strides:
            out.append(Problem.make(shape, w, s, heads=8))
    return out


def _dtype_headdim() -> list[Problem]:
    out = []
    for dtype, d in itertools.product(DTYPES, (32, 64, 128)):
        for s in (1, 16):
            out.append(Problem.make((256, 256), 80, s, heads=24, head_dim=d, dtype=dtype))
        out.append(Problem.make((32768,), 2048, 1, heads=1, head_dim=d, dtype=dtype))
    return out


SUITES: dict[str, Callable[[], list[Problem]]] = {
    "headline": _headline,
    "sweep-1d": _sweep_1d,
    "sweep-2d": _sweep_2d,
    "sweep-3d": _sweep_3d,
    "dtype-headdim": _dtype_headdim,
}


def suite(name: str) -> list[Problem]:
    if name not in SUITES:
        raise ValueError(f"suite={name!r} is not one of {sorted(SUITES)}")
    return SUITES[name]()
