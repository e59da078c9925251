"""Linear attention with the elu+1 feature map, non-causal.

A. Katharopoulos, A. Vyas, N. Pappas, F. Fleuret, "Transformers are RNNs: Fast Autoregressive
Transformers with Linear Attention", ICML 2020:

    phi(x) = elu(x) + 1,   o_i = phi(q_i)^T S / (phi(q_i)^T z + eps),   S = sum_j phi(k_j) v_j^T,  z = sum_j phi(k_j)

(S and z are averaged over the N valid keys, see :mod:`linattn_mm.ops._kernelized`). On CUDA the default
``backend='auto'`` runs the fused Triton kernels (:mod:`linattn_mm.ops._kernelized_triton`), elu+1 included.
"""
from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from torch import Tensor

from .._kernelized import acc_dtype, kernelized_attention, triton_selected
from .._utils import check_qkv


def elu_feature_map(x: Tensor) -> Tensor:
    return F.elu(x.to(acc_dtype(x.dtype))) + 1.


def linear_attention(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Optional[Tensor] = None,
                     eps: float = 1e-6, backend: str = 'auto') -> Tensor:
    """elu+1 linear attention.

    Args:
        q: ``(B, H, Nq, D)``; k: ``(B, H, Nk, D)``; v: ``(B, H, Nk, Dv)``.
        key_padding_mask: ``(B, Nk)`` bool, True = padding; padded keys are excluded exactly.
        eps: added to the (mean-normalised) denominator.
        backend: ``'auto'`` (fused Triton kernels on CUDA when available and supported, this torch path
            otherwise), ``'torch'`` or ``'triton'`` (see :mod:`linattn_mm.ops.backend`).

    Returns:
        ``(B, H, Nq, Dv)`` in the input dtype; zeros for a sample without valid keys.
    """
    check_qkv(q, k, v, key_padding_mask, name='linear_attention')
    if triton_selected(backend, q, k, v, key_padding_mask):
        from .._kernelized_triton import kernelized_attention_triton  # imported lazily: Triton is optional
        return kernelized_attention_triton(q, k, v, key_padding_mask, eps=eps, feature='elu')
    return kernelized_attention(elu_feature_map(q), elu_feature_map(k), v, key_padding_mask, eps, v.dtype)
