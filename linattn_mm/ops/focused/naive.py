"""Materialised focused linear attention (tests only), with the focusing function written as in the paper."""
from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from torch import Tensor

from .._kernelized import kernelized_attention_naive
from .._utils import check_qkv
from .torch_impl import KERNEL_EPS


def _focus_naive(x: Tensor, p: float) -> Tensor:
    x = F.relu(x) + KERNEL_EPS
    xp = x ** p
    return x.norm(dim=-1, keepdim=True) * xp / xp.norm(dim=-1, keepdim=True)


def focused_linear_attention_naive(q: Tensor, k: Tensor, v: Tensor, focusing_factor: float = 3.,
                                   key_padding_mask: Optional[Tensor] = None, eps: float = 1e-6) -> Tensor:
    check_qkv(q, k, v, key_padding_mask, name='focused_linear_attention_naive')
    return kernelized_attention_naive(_focus_naive(q, focusing_factor), _focus_naive(k, focusing_factor),
                                      v, key_padding_mask, eps)
