"""Merging two attentions over disjoint key sets by their LSE, and the dense part to merge.

Why: a kernel that handles only the neighborhood can still serve calls with extra KV tokens: the
softmax over the union of keys is the LSE-weighted mix of the two partial softmaxes.
"""

from __future__ import annotations

import torch

# Query rows per chunk of the dense extra-token attention (bounds its logits memory).
_CHUNK_ROWS = 1 << 14


def dense_attention(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every query over all ``keys``: q ``[B, *spatial, H, D]``, keys/values ``[B, N, H_kv, D(_v)]``.

    Returns ``(out [B, *spatial, H, D_v] fp32, lse [B, *spatial, H] fp32)``; GQA without repeat.
    """
    batch, heads, dim = q.shape[0], q.shape[-2], q.shape[-1]
    kv_heads, dim_v = values.shape[-2], values.shape[-1]
    group = heads // kv_heads
    qf = q.reshape(batch, -1, kv_heads, group, dim)
    kf = keys.float().permute(0, 2, 3, 1)  # [B, Hkv, D, N]
    vf = values.float().transpose(1, 2)  # [B, Hkv, N, Dv]
    n_q = qf.shape[1]
    out = torch.empty(batch, n_q, kv_heads, group, dim_v, dtype=torch.float32, device=q.device)
    lse = torch.empty(batch, n_q, kv_heads, group, dtype=torch.float32, device=q.device)
    for lo in range(0, n_q, _CHUNK_ROWS):
        hi = min(lo + _CHUNK_ROWS, n_q)
        rows = qf[:, lo:hi].permute(0, 2, 3, 1, 4).reshape(batch, kv_heads, -1, dim).float()
        logits = torch.matmul(rows, kf).mul_(scale)
        chunk_lse = torch.logsumexp(logits, dim=-1, keepdim=True)
        chunk_out = torch.matmul(logits.sub_(chunk_lse).exp_(), vf)
        out[:, lo:hi] = chunk_out.view(batch, kv_heads, group, hi - lo, dim_v).permute(0, 3, 1, 2, 4)
        lse[:, lo:hi] = chunk_lse.view(batch, kv_heads, group, hi - lo).permute(0, 3, 1, 2)
    return out.view(*q.shape[:-1], dim_v), lse.view(*q.shape[:-1])


def merge_by_lse(
    out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over the union of two disjoint key sets; output in ``out_a``'s dtype, LSE fp32."""
    lse = torch.logaddexp(lse_a.float(), lse_b.float())
    wa = torch.exp(lse_a.float() - lse).unsqueeze(-1)
    wb = torch.exp(lse_b.float() - lse).unsqueeze(-1)
    out = wa * out_a.float() + wb * out_b.float()
    return out.to(out_a.dtype), lse
