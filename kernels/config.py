"""Static (compile-time) configuration of a GNA forward kernel.

The frozen dataclass is both what the kernel specializes on and the compile-cache key: two calls
with equal ``FwdConfig`` reuse one compiled kernel.  Everything not in here (batch, spatial sizes,
head counts, scale) is a run-time value, so one compile serves every problem size.
This module imports no CuTe DSL so the simulator and the host layer can use it cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FwdConfig:
    arch: int  # 90 (Hopper) or 100 (Blackwell)
    dtype: str  # "float16" or "bfloat16"
    head_dim: int
    head_dim_v: int
    q_tile_shape: tuple[int, ...]  # in-group tokens per spatial dim; product = Q rows per CTA tile
    kv_tile_shape: tuple[int, ...]  # likewise for K/V; product = KV rows per tile
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    is_causal: tuple[bool, ...]
    count_tiles: bool = False  # debug: write visited / full KV-tile counts per Q tile

    @property
    def rank(self) -> int:
        return len(self.kernel_size)

    @property
    def q_tile_size(self) -> int:
        return _prod(self.q_tile_shape)

    @property
    def kv_tile_size(self) -> int:
        return _prod(self.kv_tile_shape)


def _prod(xs: tuple[int, ...]) -> int:
    out = 1
    for x in xs:
        out *= x
    return out
