"""Materialised Linformer attention. Ground truth for tests only.

Builds the effective ``(B, H, Nq, Nk)`` weights over the original keys,
``W = softmax(s * (Q K_m^T) E^T) F_m`` with ``K_m`` the keys with padded rows zeroed and ``F_m`` = F with
the padded columns zeroed, then returns ``W V``. Same function as the fast path, other association order.
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from .._utils import check_qkv, zero_empty_rows
from ._common import check_projections, zero_padded


def linformer_attention_naive(q: Tensor, k: Tensor, v: Tensor, proj_k: Tensor, proj_v: Tensor,
                              key_padding_mask: Optional[Tensor] = None) -> Tensor:
    """Same contract as :func:`linformer_attention`, with the ``(B, H, Nq, Nk)`` weights built explicitly."""
    name = 'linformer_attention_naive'
    check_qkv(q, k, v, key_padding_mask, name=name)
    check_projections(proj_k, proj_v, k, name)
    e, f = proj_k.to(q.dtype), proj_v.to(q.dtype)
    k, v = zero_padded(k, v, key_padding_mask)
    if key_padding_mask is not None:
        f = f * (~key_padding_mask).to(q.dtype)[:, None, None, :]         # (B, H|1, Kp, Nk)
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5               # (B, H, Nq, Nk)
    p = (scores @ e.transpose(-2, -1)).softmax(-1)                         # (B, H, Nq, Kp)
    w = p @ f                                                              # (B, H, Nq, Nk)
    return zero_empty_rows(w @ v, key_padding_mask)
