"""Exact GNA forward in plain PyTorch: the ground truth for kernels, simulator and benchmarks.

Why blocks: a dense ``N x N`` mask does not fit for real sizes (a 32K sequence is 4 G entries).
Instead, per dilation group (strided views ``x[g::d]``, no copies), queries are processed in boxes;
each box attends to the box of keys any of its queries can see (``neighborhood.visible_key_range``)
with one batched matmul, masked per element by ``neighborhood.window``.  The work is at most the
box overhead above the exact neighborhood, and memory is bounded by the logits budget.

Precision: inputs of any float dtype are upcast block by block; logits, softmax, LSE and the
value product run in fp32.  GQA/MQA: query heads are folded into rows next to their KV head, so K
and V are never repeated.  Extra KV tokens join every block's softmax as always-visible columns.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch

from . import neighborhood as nb
from .params import GNAParams

# Per block: at most this many fp32 logits (a few temporaries of this size are alive at once),
# and at least this many queries when the budget allows (amortizes per-block overhead).
_LOGITS_BUDGET = {"cpu": 1 << 23, "cuda": 1 << 27}
_MIN_QUERIES = {"cpu": 128, "cuda": 2048}


def reference_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    params: GNAParams,
    scale: float,
    additional_keys: torch.Tensor | None = None,
    additional_values: torch.Tensor | None = None,
    block_shape: tuple[int, ...] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GNA forward: ``(out [B, *spatial, H, D_v] in q.dtype, lse [B, *spatial, H] fp32)``.

    Arguments are assumed validated (``gna_cute.checks``).  ``block_shape`` (in-group queries per
    dim) overrides the automatic choice; tests use it to exercise many blocks on small problems.
    """
    batch, heads, kv_heads = q.shape[0], q.shape[-2], k.shape[-2]
    dim_v = v.shape[-1]
    spatial = params.spatial_shape
    out = torch.empty(*q.shape[:-1], dim_v, dtype=q.dtype, device=q.device)
    lse = torch.empty(*q.shape[:-1], dtype=torch.float32, device=q.device)
    extra = _prepare_extra(additional_keys, additional_values)
    kind = "cuda" if q.is_cuda else "cpu"
    n_extra = 0 if extra is None else extra[0].shape[2]

    for group in itertools.product(*[range(d) for d in params.dilation]):
        lengths = tuple(nb.group_length(n, d, g) for n, d, g in zip(spatial, params.dilation, group))
        views = [_group_view(t, group, params.dilation) for t in (q, k, v, out, lse)]
        windows = [_axis_windows(lengths[a], params, a, q.device) for a in range(params.rank)]
        shape = block_shape or _choose_block_shape(
            lengths, params, batch * heads, n_extra, _LOGITS_BUDGET[kind], _MIN_QUERIES[kind]
        )
        for q_box in _boxes(lengths, shape):
            k_box = tuple(
                nb.visible_key_range(lo, hi, lengths[a], *_dim_args(params, a))
                for a, (lo, hi) in enumerate(q_box)
            )
            mask = _box_mask(q_box, k_box, windows)
            _attend_box(views, q_box, k_box, mask, heads // kv_heads, scale, extra)
    return out, lse


def _dim_args(params: GNAParams, axis: int) -> tuple[int, int, bool]:
    return params.kernel_size[axis], params.stride[axis], params.is_causal[axis]


def _group_view(t: torch.Tensor, group: tuple[int, ...], dilation: tuple[int, ...]) -> torch.Tensor:
    """Strided view of one dilation group: spatial dims 1..rank sliced ``g::d``."""
    index = (slice(None),) + tuple(slice(g, None, d) for g, d in zip(group, dilation))
    return t[index]


def _axis_windows(length: int, params: GNAParams, axis: int, device: torch.device) -> torch.Tensor:
    """``[2, length]`` int64: window start and end of every in-group query on one axis."""
    i = np.arange(length, dtype=np.int64)
    start, end = nb.window(i, length, *_dim_args(params, axis), mn=np.minimum, mx=np.maximum)
    return torch.from_numpy(np.stack([start, end])).to(device)


def _choose_block_shape(
    lengths: tuple[int, ...], params: GNAParams, rows: int, n_extra: int, budget: int, min_queries: int
) -> tuple[int, ...]:
    """Query box per dim: about one window (key box <= 2x per dim), within the logits budget.

    Smaller boxes waste fewer masked logits (the key box is ``block + w - 1`` per dim); bigger
    ones amortize per-block Python and launch overhead.  Start at one window per dim, halve the
    largest dim while over ``budget`` logits, then grow the smallest (relative to its window)
    while a box has fewer than ``min_queries`` queries and the next size still fits.
    """
    shape = [min(n, w) for n, w in zip(lengths, params.kernel_size)]

    def cost(s: list[int]) -> int:
        nq = math.prod(s)
        nk = math.prod(min(n, b + w - 1) for n, b, w in zip(lengths, s, params.kernel_size))
        return rows * nq * (nk + n_extra)

    while cost(shape) > budget and max(shape) > 1:
        axis = max(range(len(shape)), key=lambda a: shape[a])
        shape[axis] = (shape[axis] + 1) // 2
    while math.prod(shape) < min_queries:
        growable = [a for a in range(len(shape)) if shape[a] < lengths[a]]
        if not growable:
            break
        axis = min(growable, key=lambda a: shape[a] / params.kernel_size[a])
        bigger = shape.copy()
        bigger[axis] = min(lengths[axis], 2 * shape[axis])
        if cost(bigger) > budget:
            break
        shape = bigger
    return tuple(shape)


def _boxes(lengths: tuple[int, ...], shape: tuple[int, ...]):
    """All query boxes ``((lo, hi) per dim)`` tiling the group, row-major."""
    ranges = [[(lo, min(lo + b, n)) for lo in range(0, n, b)] for n, b in zip(lengths, shape)]
    return itertools.product(*ranges)


def _box_mask(q_box, k_box, windows: list[torch.Tensor]) -> torch.Tensor:
    """Bool ``[nq, nk]``: query (row-major in its box) sees key (row-major in its box)."""
    mask = None
    for (q_lo, q_hi), (k_lo, k_hi), win in zip(q_box, k_box, windows):
        start = win[0, q_lo:q_hi, None]
        end = win[1, q_lo:q_hi, None]
        keys = torch.arange(k_lo, k_hi, device=win.device)[None, :]
        dim_mask = (keys >= start) & (keys < end)  # [nq_a, nk_a]
        if mask is None:
            mask = dim_mask
        else:
            # outer product over dims: [(..., nq_a), (..., nk_a)]
            mask = (mask[:, None, :, None] & dim_mask[None, :, None, :]).flatten(2, 3).flatten(0, 1)
    return mask


def _prepare_extra(keys: torch.Tensor | None, values: torch.Tensor | None):
    """Extra KV tokens as fp32 ``[B, H_kv, N_extra, D]`` (once, reused by every block)."""
    if keys is None:
        return None
    return keys.float().transpose(1, 2), values.float().transpose(1, 2)


def _attend_box(views, q_box, k_box, mask, group_size, scale, extra) -> None:
    """Attention of one query box over its key box (+ extra tokens); writes out and lse in place."""
    q, k, v, out, lse = views
    qs = (slice(None),) + tuple(slice(lo, hi) for lo, hi in q_box)
    ks = (slice(None),) + tuple(slice(lo, hi) for lo, hi in k_box)
    batch, heads, dim = q.shape[0], q.shape[-2], q.shape[-1]
    kv_heads, dim_v = v.shape[-2], v.shape[-1]
    qb = q[qs].reshape(batch, -1, kv_heads, group_size, dim)  # [B, nq, Hkv, G, D]
    nq = qb.shape[1]
    # rows ordered (G, nq) per KV head so one matmul per (batch, kv head) covers all its q heads
    qb = qb.permute(0, 2, 3, 1, 4).reshape(batch, kv_heads, group_size * nq, dim).float()
    kb = k[ks].reshape(batch, -1, kv_heads, dim).transpose(1, 2).float()  # [B, Hkv, nk, D]
    vb = v[ks].reshape(batch, -1, kv_heads, dim_v).transpose(1, 2).float()
    nk = kb.shape[2]
    logits = torch.matmul(qb, kb.transpose(-1, -2)).mul_(scale)
    logits = logits.view(batch, kv_heads, group_size, nq, nk)
    logits.masked_fill_(~mask, float("-inf"))
    logits = logits.view(batch, kv_heads, group_size * nq, nk)
    if extra is not None:
        ek, ev = extra
        logits = torch.cat([logits, torch.matmul(qb, ek.transpose(-1, -2)).mul_(scale)], dim=-1)
        vb = torch.cat([vb, ev], dim=2)
    block_lse = torch.logsumexp(logits, dim=-1, keepdim=True)
    probs = logits.sub_(block_lse).exp_()
    block_out = torch.matmul(probs, vb)  # [B, Hkv, G*nq, Dv]
    # back to [B, nq, H, .] with H = (Hkv, G)
    block_out = block_out.view(batch, kv_heads, group_size, nq, dim_v).permute(0, 3, 1, 2, 4)
    block_lse = block_lse.view(batch, kv_heads, group_size, nq).permute(0, 3, 1, 2)
    box = tuple(hi - lo for lo, hi in q_box)
    out[qs] = block_out.reshape(batch, *box, heads, dim_v).to(out.dtype)
    lse[qs] = block_lse.reshape(batch, *box, heads)
