"""Materialised FAVOR+ (tests only): the same estimator, weights phi(Q) phi(K)^T without stabilisation."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .._kernelized import kernelized_attention_naive
from .._utils import check_qkv


def _phi(x: Tensor, features: Tensor) -> Tensor:
    x = x * x.shape[-1] ** -0.25
    return torch.exp(x @ features.T - 0.5 * (x * x).sum(-1, keepdim=True)) * features.shape[0] ** -0.5


def performer_attention_naive(q: Tensor, k: Tensor, v: Tensor, features: Tensor,
                              key_padding_mask: Optional[Tensor] = None, eps: float = 0.) -> Tensor:
    check_qkv(q, k, v, key_padding_mask, name='performer_attention_naive')
    if key_padding_mask is not None:  # padded keys may hold garbage: keep exp() away from it
        k = k.masked_fill(key_padding_mask[:, None, :, None], 0.)
    return kernelized_attention_naive(_phi(q, features), _phi(k, features), v, key_padding_mask, eps)
