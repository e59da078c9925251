"""Softmax attention through ``torch.nn.functional.scaled_dot_product_attention`` (Vaswani et al., 2017).

``out_i = sum_j softmax_j(scale * q_i . k_j + bias_ij) v_j`` over the keys a query may see. This is the
quadratic baseline every linear method is measured against, and the reference for the layers' tests.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .._utils import check_qkv
from ._masks import combine_masks


def softmax_attention(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Optional[Tensor] = None,
                      attn_mask: Optional[Tensor] = None, scale: Optional[float] = None,
                      dropout_p: float = 0.0) -> Tensor:
    """Exact softmax attention.

    Args:
        q: ``(B, H, Nq, D)`` queries.
        k: ``(B, H, Nk, D)`` keys.
        v: ``(B, H, Nk, Dv)`` values.
        key_padding_mask: ``(B, Nk)`` bool, True = padding key (excluded exactly).
        attn_mask: broadcastable to ``(B, H, Nq, Nk)``. Bool: True = *masked out* (the convention of
            ``torch.nn.MultiheadAttention``, the opposite of SDPA's). Float: added to the logits; ``-inf``
            entries count as masked.
        scale: logit scale, ``D ** -0.5`` by default.
        dropout_p: dropout on the attention weights (pass 0 at eval).

    Returns:
        ``(B, H, Nq, Dv)``. A query with no visible key gets zeros (never NaN).
    """
    check_qkv(q, k, v, key_padding_mask, name='softmax_attention')
    allowed, bias, row_ok = combine_masks(q, k, key_padding_mask, attn_mask)
    if bias is None:
        mask = allowed  # SDPA's bool mask means "may attend"
    elif allowed is None:
        mask = bias
    else:
        mask = bias.masked_fill(~allowed, float('-inf'))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)
    if row_ok is not None:
        out = out * row_ok.to(out.dtype)
    return out
