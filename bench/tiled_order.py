"""Tiled token order for the mask-based peers (FA4 block sparsity, FlexAttention).

Generic block-sparse kernels tile the *flattened* sequence into runs of ``B`` tokens.  To give them
multi-dim tiles, tokens are reordered once (outside timing) so that every run of
``prod(tile_shape)`` tokens is one multi-dim tile of one dilation group, exactly the tiles our
kernel's scheduler uses (team contract 4)::

    index = ((group * tiles + tile) * tile_size + offset)      # each of the three row-major

Axes whose in-group length is not a multiple of the tile are padded: padded slots hold zeros, are
never inside any real query's window (windows end at the group length), and padded query rows are
dropped when the output is put back in the original order.

:func:`gna_allowed` is the GNA mask on this order, written once over injected ``mn``/``mx`` (like
:mod:`gna_cute.neighborhood`, which it calls) so it serves numpy (tests), torch (Flex) and CuTe DSL
``Int32`` values (the FA4 ``mask_mod``).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Any

import numpy as np

from gna_cute import neighborhood as nb
from gna_cute.params import GNAParams

Num = Any


@dataclass(frozen=True)
class TiledOrder:
    """Static description of the tiled order (hashable: it keys compiled mask functions)."""

    spatial_shape: tuple[int, ...]
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    is_causal: tuple[bool, ...]
    tile_shape: tuple[int, ...]

    @classmethod
    def make(cls, params: GNAParams, tile_shape: tuple[int, ...]) -> "TiledOrder":
        if len(tile_shape) != params.rank:
            raise ValueError(f"tile_shape={tile_shape} must have {params.rank} entries")
        return cls(params.spatial_shape, params.kernel_size, params.stride, params.dilation,
                   params.is_causal, tuple(int(t) for t in tile_shape))

    @property
    def rank(self) -> int:
        return len(self.spatial_shape)

    @property
    def tiles_per_dim(self) -> tuple[int, ...]:
        """Tiles per dim of one group: ``num_tiles(ceil(L / d), T)`` (contract 4)."""
        return tuple(nb.tiles_per_group(n, d, t)
                     for n, d, t in zip(self.spatial_shape, self.dilation, self.tile_shape))

    @property
    def tile_size(self) -> int:
        return prod(self.tile_shape)

    @property
    def num_groups(self) -> int:
        return prod(self.dilation)

    @property
    def num_tiles(self) -> int:
        """Tiles of all groups together (= 128-token blocks when ``tile_size`` is 128)."""
        return self.num_groups * prod(self.tiles_per_dim)

    @property
    def padded_tokens(self) -> int:
        return self.num_tiles * self.tile_size

    # -- index maps ------------------------------------------------------------------------------

    def decode(self, idx: Num) -> tuple[list[Num], list[Num]]:
        """Tiled index -> (group, in-group position) per dim.  Pure ``//`` and ``%``."""
        offset = idx % self.tile_size
        tile = idx // self.tile_size
        if self.num_groups == 1:  # no dilation: skip the group decode (fewer ops in mask_mods)
            g = [0] * self.rank
        else:
            g = _unravel(tile // prod(self.tiles_per_dim), self.dilation)
            tile = tile % prod(self.tiles_per_dim)
        t, o = _unravel(tile, self.tiles_per_dim), _unravel(offset, self.tile_shape)
        pos = [ti * ts + oi for ti, ts, oi in zip(t, self.tile_shape, o)]
        return g, pos

    def gather_index(self) -> np.ndarray:
        """For each tiled slot, the row-major flat index of its original token, or -1 (padding)."""
        idx = np.arange(self.padded_tokens, dtype=np.int64)
        g, pos = self.decode(idx)
        flat = np.zeros_like(idx)
        valid = np.ones(idx.shape, dtype=bool)
        for n, d, gi, xi in zip(self.spatial_shape, self.dilation, g, pos):
            x = xi * d + gi
            valid &= x < n
            flat = flat * n + np.where(x < n, x, 0)
        return np.where(valid, flat, -1)


def _unravel(i: Num, shape: tuple[int, ...]) -> list[Num]:
    """Row-major digits of ``i`` (the leading digit is not reduced: ``i`` is in range)."""
    out = []
    for n in reversed(shape[1:]):
        out.append(i % n)
        i = i // n
    out.append(i)
    return out[::-1]


def gna_allowed(order: TiledOrder, q_idx: Num, kv_idx: Num, mn, mx) -> Num:
    """Whether tiled query ``q_idx`` attends tiled key ``kv_idx`` (any number type, element-wise).

    Same dilation group in every dim, and the key's in-group position inside the query's window
    (``neighborhood.window`` on the group's length).  Padded keys fall outside every real window.
    """
    qg, qx = order.decode(q_idx)
    kg, kx = order.decode(kv_idx)
    ok = None
    for i in range(order.rank):
        length = nb.group_length(order.spatial_shape[i], order.dilation[i], qg[i])
        start, end = nb.window(qx[i], length, order.kernel_size[i], order.stride[i],
                               bool(order.is_causal[i]), mn, mx)
        dim_ok = (kx[i] >= start) & (kx[i] < end)
        if order.dilation[i] > 1:
            dim_ok = dim_ok & (kg[i] == qg[i])
        ok = dim_ok if ok is None else ok & dim_ok
    return ok


def tile_candidates(spatial_shape: tuple[int, ...], dilation: tuple[int, ...],
                    tile_size: int = 128) -> list[tuple[int, ...]]:
    """Power-of-two tile shapes of exactly ``tile_size`` tokens not much larger than each group."""
    rank = len(spatial_shape)
    exp = tile_size.bit_length() - 1
    if 1 << exp != tile_size:
        raise ValueError(f"tile_size={tile_size} must be a power of two")
    caps = [max(1, 1 << (max(1, -(-n // d)) - 1).bit_length()) for n, d in zip(spatial_shape, dilation)]
    out = []
    for split in _compositions(exp, rank):
        shape = tuple(1 << e for e in split)
        if all(t <= c for t, c in zip(shape, caps)) or rank == 1:
            out.append(shape)
    return out or [tuple([1] * (rank - 1) + [tile_size])]


def _compositions(total: int, parts: int) -> list[tuple[int, ...]]:
    if parts == 1:
        return [(total,)]
    return [(i,) + rest for i in range(total + 1) for rest in _compositions(total - i, parts - 1)]


def best_tile_shape(params: GNAParams, tile_size: int = 128, partial_cost: float = 3.4) -> tuple[int, ...]:
    """The ``tile_size``-token tile minimizing ``full + partial_cost * partial`` tile pairs.

    Used to give the mask-based peers their best tiled order; the partial-tile cost 3.4 is what
    issue 7 measured for FA4's element-wise ``mask_mod`` on H100.
    """
    from gna_cute import sim

    def cost(shape: tuple[int, ...]) -> float:
        st = sim.simulate(params, sim.Tiling(shape, shape))
        return st.full + partial_cost * st.partial

    return min(tile_candidates(params.spatial_shape, params.dilation, tile_size), key=cost)


class Reorder:
    """Moves heads-last tensors into the tiled order and back (done once, outside timing)."""

    def __init__(self, order: TiledOrder, device: Any) -> None:
        import torch

        gather = torch.from_numpy(order.gather_index()).to(device)
        self.order = order
        self.slots = torch.nonzero(gather >= 0).flatten()  # tiled slots holding real tokens
        self.tokens = gather[self.slots]  # their original flat indices

    def to_tiled(self, t: Any) -> Any:
        """``[B, *spatial, H, D]`` -> contiguous ``[B, N_padded, H, D]`` (padding zeros)."""
        import torch

        flat = t.flatten(1, self.order.rank)
        out = torch.zeros(flat.shape[0], self.order.padded_tokens, *flat.shape[2:], dtype=t.dtype,
                          device=t.device)
        out[:, self.slots] = flat[:, self.tokens]
        return out

    def from_tiled(self, t: Any, shape: tuple[int, ...]) -> Any:
        """``[B, N_padded, H, D]`` -> ``shape`` = ``[B, *spatial, H, D]`` (padded rows dropped)."""
        import torch

        flat = torch.empty(t.shape[0], self.tokens.numel(), *t.shape[2:], dtype=t.dtype, device=t.device)
        flat[:, self.tokens] = t[:, self.slots]
        return flat.view(shape)
