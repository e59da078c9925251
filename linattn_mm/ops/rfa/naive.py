"""Materialised RFA (tests only): the explicit ``(Nq, Nk)`` weights ``phi(q) phi(k)^T``, row-normalised."""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from .._utils import check_qkv
from .torch_impl import check_rfa, rfa_features


def rfa_attention_naive(q: Tensor, k: Tensor, v: Tensor, features: Tensor, key_padding_mask: Optional[Tensor] = None,
                        kernel: str = 'gaussian', normalize: bool = True, eps: float = 1e-4) -> Tensor:
    """Same contract as :func:`rfa_attention`."""
    check_qkv(q, k, v, key_padding_mask, name='rfa_attention_naive')
    check_rfa(q, features, kernel, eps, 'rfa_attention_naive')
    w = rfa_features(q, features, kernel, normalize) @ rfa_features(k, features, kernel, normalize).transpose(-2, -1)
    n = float(max(k.shape[2], 1))
    if key_padding_mask is not None:
        w = w.masked_fill(key_padding_mask[:, None, None, :], 0.)
        v = v.masked_fill(key_padding_mask[:, None, :, None], 0.)
        n = (~key_padding_mask).sum(-1).clamp_min(1).to(w.dtype)[:, None, None, None]
    den = (w.sum(-1, keepdim=True) / n).clamp_min(eps)
    return ((w @ v.to(w.dtype)) / n / den).to(v.dtype)
