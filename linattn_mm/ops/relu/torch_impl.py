"""ReLU linear attention of EfficientViT.

H. Cai, J. Li, M. Hu, C. Gan, S. Han, "EfficientViT: Lightweight Multi-Scale Attention for
High-Resolution Dense Prediction", ICCV 2023:

    o_i = sum_j relu(q_i)^T relu(k_j) v_j / (sum_j relu(q_i)^T relu(k_j) + eps)

Their code pads V with a column of ones to get the normaliser from the same matmul and runs the whole
computation in float32 under autocast ("fp32 island"); here the reductions run in float32 for half
inputs (same math) and the result is cast back. eps = 1e-15 as theirs: a query orthogonal to all keys
gets 0 instead of NaN. On CUDA the default ``backend='auto'`` runs the fused Triton kernels
(:mod:`linattn_mm.ops._kernelized_triton`), with the same fp32 accumulation.
"""
from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from torch import Tensor

from .._kernelized import acc_dtype, kernelized_attention, triton_selected
from .._utils import check_qkv


def relu_feature_map(x: Tensor) -> Tensor:
    return F.relu(x.to(acc_dtype(x.dtype)))


def relu_linear_attention(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Optional[Tensor] = None,
                          eps: float = 1e-15, backend: str = 'auto') -> Tensor:
    """ReLU linear attention; q ``(B, H, Nq, D)``, k ``(B, H, Nk, D)``, v ``(B, H, Nk, Dv)`` -> ``(B, H, Nq, Dv)``.

    ``key_padding_mask`` ``(B, Nk)`` bool (True = padding) excludes keys exactly. ``backend``: ``'auto'``
    (fused Triton kernels on CUDA when available and supported, torch otherwise), ``'torch'`` or ``'triton'``.
    """
    check_qkv(q, k, v, key_padding_mask, name='relu_linear_attention')
    if triton_selected(backend, q, k, v, key_padding_mask):
        from .._kernelized_triton import kernelized_attention_triton  # imported lazily: Triton is optional
        return kernelized_attention_triton(q, k, v, key_padding_mask, eps=eps, feature='relu')
    return kernelized_attention(relu_feature_map(q), relu_feature_map(k), v, key_padding_mask, eps, v.dtype)
