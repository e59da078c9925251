"""Linformer attention: softmax attention over keys and values projected to a fixed length Kp.

Reference: S. Wang, B. Z. Li, M. Khabsa, H. Fang, H. Ma, "Linformer: Self-Attention with Linear
Complexity", arXiv 2006.04768, 2020:

    out = softmax( Q (E K)^T / sqrt(D) ) (F V),    E, F: (Kp, Nk)

O(Nq Kp D + Nk Kp D) instead of O(Nq Nk D). E and F are shared over heads ``(Kp, Nk)`` or given per head
``(H, Kp, Nk)``; they never mix batch items.

Padding (our definition; the paper has none): a padded key contributes nothing, i.e. its rows of K and V
are zeroed before the projection, so ``E K = E[:, valid] K[valid]``. A sample whose keys are all padding
gets zeros. Note that this is *not* "softmax over valid keys": the projected keys are mixtures, and a
padded slot still sees its column of E/F multiplied by zero.
"""
from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from torch import Tensor

from .._utils import check_qkv, zero_empty_rows
from ._common import check_projections, zero_padded


def linformer_attention(q: Tensor, k: Tensor, v: Tensor, proj_k: Tensor, proj_v: Tensor,
                        key_padding_mask: Optional[Tensor] = None) -> Tensor:
    """Linformer attention with given token-axis projections.

    Args:
        q: ``(B, H, Nq, D)`` queries.
        k: ``(B, H, Nk, D)`` keys.
        v: ``(B, H, Nk, Dv)`` values.
        proj_k: E, ``(Kp, Nk)`` shared over heads, ``(H, Kp, Nk)`` per head or ``(B, 1 or H, Kp, Nk)`` per
            sample. Cast to q's dtype, so an fp32 parameter works with half-precision activations (the
            gradient flows back in fp32).
        proj_v: F, same shape rules as ``proj_k`` and the same Kp.
        key_padding_mask: ``(B, Nk)`` bool, True = padding; padded rows of K and V are zeroed before the
            projection (they contribute nothing).

    Returns:
        ``(B, H, Nq, Dv)``. A sample whose keys are all padding gets zeros.

    Raises:
        ValueError: on inconsistent q/k/v/mask shapes, or when a projection is not ``(Kp, Nk)`` /
            ``(H, Kp, Nk)`` for the actual Nk (layers resize E/F to the input length before calling).
    """
    name = 'linformer_attention'
    check_qkv(q, k, v, key_padding_mask, name=name)
    check_projections(proj_k, proj_v, k, name)
    k, v = zero_padded(k, v, key_padding_mask)
    # (Kp, Nk), (H, Kp, Nk) or (B, 1|H, Kp, Nk) broadcast against (B, H, Nk, D): one matmul, no copy of E per sample
    kp = proj_k.to(k.dtype) @ k                                            # (B, H, Kp, D)
    vp = proj_v.to(v.dtype) @ v                                            # (B, H, Kp, Dv)
    out = F.scaled_dot_product_attention(q, kp, vp)                        # scale = D ** -0.5
    # all-padded: kp = vp = 0, so the output is already 0; the helper makes that explicit and cheap
    return zero_empty_rows(out, key_padding_mask)
