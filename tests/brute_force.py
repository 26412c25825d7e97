"""Independent brute-force GNA for tests: explicit loops written from docs/semantics.md.

Deliberately imports nothing from ``gna_cute``: it is the ground truth the package is tested
against, so it must not share code (or bugs) with it.  Only for small problems: the mask is dense
``[N, N]`` and the attention runs in float64.
"""

from __future__ import annotations

import itertools
from typing import Sequence, Union

import numpy as np
import torch

IntOrSeq = Union[int, Sequence[int]]
BoolOrSeq = Union[bool, Sequence[bool]]


def _per_dim(value, rank: int) -> tuple:
    if isinstance(value, (tuple, list)):
        assert len(value) == rank, (value, rank)
        return tuple(value)
    return (value,) * rank


def keys_of_query_1d(x: int, length: int, window: int, stride: int, dilation: int, causal: bool) -> set[int]:
    """Set of key positions (original coordinates) that query ``x`` attends to on one axis.

    Spelled out step by step as in the semantics text: dilation group, in-group position, stride
    leader, window clamp, then back to original coordinates.
    """
    group = x % dilation
    i = x // dilation
    group_len = length // dilation
    if group < length % dilation:
        group_len += 1
    if causal:
        leader = (i // stride) * stride + stride - 1
        if leader > group_len - 1:
            leader = group_len - 1
        start = leader - window + 1
        if start < 0:
            start = 0
        end = i + 1
    else:
        left = window // 2
        leader = (i // stride) * stride + stride // 2
        if leader > group_len - 1:
            leader = group_len - 1
        start = leader - left
        if start < 0:
            start = 0
        if start > group_len - window:
            start = group_len - window
        end = start + window
    keys = set()
    for j in range(start, end):
        keys.add(j * dilation + group)
    return keys


def neighborhood_mask(
    spatial_shape: Sequence[int],
    kernel_size: IntOrSeq,
    stride: IntOrSeq = 1,
    dilation: IntOrSeq = 1,
    is_causal: BoolOrSeq = False,
) -> np.ndarray:
    """Dense bool ``[N, N]`` mask, ``mask[q, k]`` true iff query q attends to key k.

    ``N = prod(spatial_shape)``, positions flattened row-major (last dim fastest).  A key is in a
    query's neighborhood iff it is in the per-dim neighborhood in every dim.
    """
    shape = tuple(int(n) for n in spatial_shape)
    rank = len(shape)
    ks = _per_dim(kernel_size, rank)
    st = _per_dim(stride, rank)
    dl = _per_dim(dilation, rank)
    ca = _per_dim(is_causal, rank)
    per_dim = [
        [keys_of_query_1d(x, shape[a], ks[a], st[a], dl[a], bool(ca[a])) for x in range(shape[a])]
        for a in range(rank)
    ]
    coords = list(itertools.product(*[range(n) for n in shape]))
    n = len(coords)
    mask = np.zeros((n, n), dtype=bool)
    for qi, qc in enumerate(coords):
        for ki, kc in enumerate(coords):
            ok = True
            for a in range(rank):
                if kc[a] not in per_dim[a][qc[a]]:
                    ok = False
                    break
            mask[qi, ki] = ok
    return mask


def attention_fp64(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: np.ndarray,
    scale: float,
    extra_k: torch.Tensor | None = None,
    extra_v: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked softmax attention in float64 with explicit loops over batch, heads and queries.

    q ``[B, *spatial, H, D]``, k ``[B, *spatial, H_kv, D]``, v ``[B, *spatial, H_kv, D_v]``;
    optional extra tokens ``[B, N_extra, H_kv, D(_v)]`` seen by every query.  Query head h reads
    kv head ``h // (H // H_kv)``.  Returns ``(out [B, *spatial, H, D_v] float64,
    lse [B, *spatial, H] float64)``.
    """
    batch = q.shape[0]
    spatial = tuple(q.shape[1:-2])
    heads, dim = q.shape[-2], q.shape[-1]
    kv_heads, dim_v = v.shape[-2], v.shape[-1]
    n = int(np.prod(spatial))
    # numpy float64 copies: per-element loops over small arrays are much cheaper than in torch
    qf = q.detach().to("cpu", torch.float64).reshape(batch, n, heads, dim).numpy()
    kf = k.detach().to("cpu", torch.float64).reshape(batch, n, kv_heads, dim).numpy()
    vf = v.detach().to("cpu", torch.float64).reshape(batch, n, kv_heads, dim_v).numpy()
    if extra_k is not None:
        ek = extra_k.detach().to("cpu", torch.float64).numpy()
        ev = extra_v.detach().to("cpu", torch.float64).numpy()
    group = heads // kv_heads
    out = np.zeros((batch, n, heads, dim_v))
    lse = np.zeros((batch, n, heads))
    for b in range(batch):
        for h in range(heads):
            hk = h // group
            for qi in range(n):
                key_idx = np.nonzero(mask[qi])[0]
                keys = kf[b, key_idx, hk]
                values = vf[b, key_idx, hk]
                if extra_k is not None:
                    keys = np.concatenate([keys, ek[b, :, hk]])
                    values = np.concatenate([values, ev[b, :, hk]])
                logits = (keys @ qf[b, qi, h]) * scale
                top = logits.max()
                weights = np.exp(logits - top)
                total = weights.sum()
                out[b, qi, h] = (weights[:, None] * values).sum(0) / total
                lse[b, qi, h] = np.log(total) + top
    return (
        torch.from_numpy(out).reshape(batch, *spatial, heads, dim_v),
        torch.from_numpy(lse).reshape(batch, *spatial, heads),
    )
