"""Materialised softmax attention: ``softmax(scale * Q K^T + bias) V``. Ground truth for tests only."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .._utils import check_qkv
from ._masks import combine_masks


def softmax_attention_naive(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Optional[Tensor] = None,
                            attn_mask: Optional[Tensor] = None, scale: Optional[float] = None,
                            dropout_p: float = 0.0) -> Tensor:
    """Same contract as :func:`softmax_attention`, with the ``(B, H, Nq, Nk)`` weights built explicitly."""
    check_qkv(q, k, v, key_padding_mask, name='softmax_attention_naive')
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    logits = (q @ k.transpose(-2, -1)) * scale
    allowed, bias, row_ok = combine_masks(q, k, key_padding_mask, attn_mask)
    if bias is not None:
        logits = logits + bias
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float('-inf'))
    attn = logits.softmax(-1)
    if dropout_p > 0:
        attn = F.dropout(attn, dropout_p)
    out = attn @ v
    if row_ok is not None:
        out = out * row_ok.to(out.dtype)
    return out
