"""Materialised ReLU linear attention (tests only)."""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from .._kernelized import kernelized_attention_naive
from .._utils import check_qkv
from .torch_impl import relu_feature_map


def relu_linear_attention_naive(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Optional[Tensor] = None,
                                eps: float = 1e-15) -> Tensor:
    check_qkv(q, k, v, key_padding_mask, name='relu_linear_attention_naive')
    return kernelized_attention_naive(relu_feature_map(q), relu_feature_map(k), v, key_padding_mask, eps)
