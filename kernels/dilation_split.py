"""Dilation that does not divide the axis: one kernel launch per dilation group of such dims.

Why: the fused kernels load a dilated axis through an ``(L/d, d)`` view, which needs ``d | L``
(``config.dilation_problem``).  Dilation groups never see each other, and inside group ``g`` a
dim is an undilated axis of ``group_length(L, d, g)`` tokens on which window, stride and causal act
exactly as on any axis (docs/semantics.md: the window counts in-group tokens, causal compares
in-group positions).  So for every dim with ``L % d != 0`` each group runs as its own launch on
the strided views ``x[:, .., g::d, ..]`` of q, k, v, out and lse, with that dim's dilation set to 1;
dims with ``d | L`` keep the in-kernel dilation.  Nothing is copied: out and lse are written
through the views.

Alignment (TMA): a view starts ``g * x.stride(dim)`` elements after ``x`` and has stride
``d * x.stride(dim)``; every non-innermost stride of q, k, v (checked by the host layer) and of
the freshly allocated out (a multiple of ``H * D_v``, D_v >= 32) is a multiple of 16 bytes, so
the views keep 16-byte aligned base pointers and strides.  The lse views are only 4-byte aligned
in general; the kernels store LSE as scalars and are compiled for that.

Every launch uses the same tile shapes (chosen once for the whole problem), so all of a
problem's launches share one compiled kernel and their debug tile counts assemble into the whole
problem's ``(2, *dilation, *tiles)`` array (:func:`place_counts`).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gna_cute import neighborhood
from gna_cute.params import GNAParams


@dataclass(frozen=True, eq=False)
class GroupPart:
    """One launch: the sub-problem on strided views, and where its results land.

    ``groups[i]`` is the dilation group of dim ``i`` this launch covers, or None when the dim is
    left whole (its dilation, if any, handled inside the kernel).
    """

    groups: tuple[int | None, ...]
    args: Any  # gna_cute.backends.AttentionArgs on views of the whole problem's tensors
    out: torch.Tensor  # view of the whole output, [B, *sub_spatial, H, D_v]
    lse: torch.Tensor  # view of the whole LSE, [B, *sub_spatial, H]


def split_dims(params: GNAParams) -> tuple[int, ...]:
    """The spatial dims whose dilation does not divide their size (run group by group)."""
    return tuple(i for i, (n, d) in enumerate(zip(params.spatial_shape, params.dilation)) if n % d)


def kernel_dilation(params: GNAParams) -> tuple[int, ...]:
    """The dilation the kernel is compiled with: 1 in split dims, the problem's elsewhere."""
    split = split_dims(params)
    return tuple(1 if i in split else d for i, d in enumerate(params.dilation))


def num_launches(params: GNAParams) -> int:
    """How many kernel launches one call takes: the product of the split dims' dilations."""
    return math.prod(params.dilation[i] for i in split_dims(params))


def group_params(params: GNAParams, groups: tuple[int | None, ...]) -> GNAParams:
    """The neighborhood of one launch: split dims shrink to their group's length, dilation 1."""
    if len(groups) != params.rank:
        raise ValueError(f"groups={groups} has {len(groups)} entries, expected {params.rank} (one per spatial dim)")
    spatial, dilation = list(params.spatial_shape), list(params.dilation)
    for i, g in enumerate(groups):
        if g is None:
            continue
        if not 0 <= g < dilation[i]:
            raise ValueError(f"groups={groups}: dim {i} group {g} is outside [0, {dilation[i]})")
        spatial[i] = neighborhood.group_length(spatial[i], dilation[i], g)
        dilation[i] = 1
    return GNAParams.make(tuple(spatial), params.kernel_size, params.stride, tuple(dilation), params.is_causal)


def group_view(t: torch.Tensor, groups: tuple[int | None, ...], dilation: tuple[int, ...]) -> torch.Tensor:
    """Zero-copy view of ``t [B, *spatial, ...]``: spatial dim ``i`` sliced ``g_i::d_i`` where given."""
    index = (slice(None),) + tuple(
        slice(None) if g is None else slice(g, None, d) for g, d in zip(groups, dilation)
    )
    return t[index]


def split(args: Any, out: torch.Tensor, lse: torch.Tensor) -> list[GroupPart]:
    """The launches that compute ``args`` into ``out``/``lse``; one part when nothing is split.

    Extra KV tokens, scale and tile shapes are passed on unchanged (extra tokens are seen by every
    query whatever its group).
    """
    params = args.params
    dims = split_dims(params)
    if not dims:
        return [GroupPart((None,) * params.rank, args, out, lse)]
    parts = []
    for combo in itertools.product(*(range(params.dilation[i]) for i in dims)):
        groups = [None] * params.rank
        for i, g in zip(dims, combo):
            groups[i] = g
        groups = tuple(groups)
        views = [group_view(t, groups, params.dilation) for t in (args.q, args.k, args.v, out, lse)]
        sub = dataclasses.replace(args, q=views[0], k=views[1], v=views[2], params=group_params(params, groups))
        parts.append(GroupPart(groups, sub, views[3], views[4]))
    return parts


def place_counts(counts: np.ndarray, part: GroupPart, part_counts: np.ndarray) -> None:
    """Write one launch's tile counts ``(2, *sub_dilation, *sub_tiles)`` into the whole problem's.

    ``counts`` is ``(2, *dilation, *tiles)`` with tiles per dim from ``ceil(L / d)`` and must start
    at zero: a group with fewer Q tiles than the longest leaves its extra tiles at 0 (empty).
    """
    rank = len(part.groups)
    if part_counts.ndim != 2 * rank + 1 or counts.ndim != 2 * rank + 1:
        raise ValueError(
            f"counts of rank {counts.ndim} and part_counts of rank {part_counts.ndim} must both be "
            f"{2 * rank + 1} for {rank} spatial dims"
        )
    group_index = tuple(slice(None) if g is None else slice(g, g + 1) for g in part.groups)
    tile_index = tuple(slice(0, n) for n in part_counts.shape[1 + rank :])
    counts[(slice(None),) + group_index + tile_index] = part_counts
