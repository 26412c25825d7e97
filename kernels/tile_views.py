"""Views of heads-last tensors in which a GNA tile is one TMA box (shared by the fused kernels).

Why: Q/K/V/O stay in the user's ``[B, *spatial, H, D]`` layout (no token-permute copies).  Viewed
as ``(tokens, D, H, [groups,] B)``, with the spatial dims grouped into one hierarchical token mode
(last spatial dim first, i.e. fastest) and, under dilation, each spatial dim split as ``(L/d, d)``,
a Q or KV tile of one dilation group is a box ``((t_last, .., t_0), D)`` of that view, which
``cpasync.make_tiled_tma_atom`` turns into one bulk tensor copy that zero-fills (load) or clips
(store) at the borders.  One view needs ``L % d == 0`` per dim (``config.dilation_problem``);
the host layer splits other dims per dilation group (``kernels/dilation_split.py``).
"""

from __future__ import annotations

from typing import Any, Sequence

import cutlass.cute as cute


def rev(xs: Sequence[Any]) -> Any:
    """Spatial values in view order (last spatial dim first); a scalar for rank 1."""
    return tuple(reversed(list(xs))) if len(xs) > 1 else xs[0]


def token_view(t: cute.Tensor, rank: int, dilation: Sequence[int]) -> cute.Tensor:
    """``[B, *spatial, H, D]`` -> ``(tokens, D, H, [groups,] B)``; tokens in-group, last dim first."""
    shp, std = t.shape, t.stride
    tok_shape = [shp[1 + i] // dilation[i] for i in range(rank)]
    tok_stride = [std[1 + i] * dilation[i] for i in range(rank)]
    shape = [rev(tok_shape), shp[rank + 2], shp[rank + 1]]
    stride = [rev(tok_stride), std[rank + 2], std[rank + 1]]
    if any(d > 1 for d in dilation):
        shape.append(rev([dilation[i] for i in range(rank)]))
        stride.append(rev([std[1 + i] for i in range(rank)]))
    shape.append(shp[0])
    stride.append(std[0])
    return cute.make_tensor(t.iterator, cute.make_layout(tuple(shape), stride=tuple(stride)))


def tile_tiler(tile_shape: Sequence[int], head_dim: int) -> tuple:
    """The TMA box of one tile in :func:`token_view` coordinates."""
    return (rev(list(tile_shape)), head_dim)


def tile_coord(tile: Sequence[Any], head: Any, group: Sequence[Any], batch: Any, dilated: bool) -> tuple:
    """Coordinate of one tile (per-dim tile indices) in the zipped-divided token view."""
    rest = [rev(list(tile)), 0, head]
    if dilated:
        rest.append(rev(list(group)))
    rest.append(batch)
    return (None, tuple(rest))
