"""Materialised InLine attention. Ground truth for tests only (builds the ``(B, H, Nq, Nk)`` weights).

``w_ij = 1/N + (s/N) * (q_i . k_j - q_i . mean_j(k_j))`` over the N valid keys, ``s = D ** -0.5``;
each row of ``w`` sums to exactly 1 (Han et al., "Bridging the Divide", NeurIPS 2024, eq. 5).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .._utils import check_qkv, valid_count
from ._kernels import apply_kernel


def inline_attention_naive(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Optional[Tensor] = None,
                           kernel: str = 'identity') -> Tensor:
    """Same contract as :func:`inline_attention`, with the ``(B, H, Nq, Nk)`` weights built explicitly."""
    check_qkv(q, k, v, key_padding_mask, name='inline_attention_naive')
    q, k = apply_kernel(q, k, kernel, 'inline_attention_naive')
    s = q.shape[-1] ** -0.5
    n = valid_count(key_padding_mask, k.shape[2], q.dtype, q.device)
    if key_padding_mask is not None:
        pad = key_padding_mask[:, None, :, None]
        k = k.masked_fill(pad, 0.)
        v = v.masked_fill(pad, 0.)
    k_mean = k.sum(-2, keepdim=True) / n                                  # (B, H, 1, D)
    w = (1. + s * (q @ k.transpose(-2, -1)) - s * (q @ k_mean.transpose(-2, -1))) / n
    if key_padding_mask is not None:
        w = w.masked_fill(key_padding_mask[:, None, None, :], 0.)
    return w @ v
