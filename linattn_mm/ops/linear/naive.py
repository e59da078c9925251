"""Materialised elu+1 linear attention (tests only): weights (elu(q)+1)·(elu(k)+1), row-normalised."""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from .._kernelized import kernelized_attention_naive
from .._utils import check_qkv
from .torch_impl import elu_feature_map


def linear_attention_naive(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Optional[Tensor] = None,
                           eps: float = 1e-6) -> Tensor:
    check_qkv(q, k, v, key_padding_mask, name='linear_attention_naive')
    return kernelized_attention_naive(elu_feature_map(q), elu_feature_map(k), v, key_padding_mask, eps)
