"""Focused linear attention (FLatten).

D. Han, X. Pan, Y. Han, S. Song, G. Huang, "FLatten Transformer: Vision Transformer using Focused Linear
Attention", ICCV 2023. The kernel is ``relu(x) + 1e-6`` followed by the focusing function

    f_p(x) = ||x|| * x**p / ||x**p||          (p = focusing_factor, elementwise power)

which sharpens the direction of x towards its dominant features while keeping its norm; then normalised
linear attention (the learnable scale of the paper is a layer parameter: the layer divides q and k by
softplus(scale) before calling this op).

Half precision: ``x**p`` overflows fp16 for moderate x (the known NaN of the official code under
autocast). f_p is invariant to rescaling x before the power, so x is divided by its row maximum first and
the whole map runs in float32. On CUDA the default ``backend='auto'`` runs the fused Triton kernels
(:mod:`linattn_mm.ops._kernelized_triton`), which compute the same map in float32 on chip.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .._kernelized import acc_dtype, kernelized_attention, triton_selected
from .._utils import check_qkv

KERNEL_EPS = 1e-6  # the official relu(x) + 1e-6 keeps every feature positive


def focusing_function(x: Tensor, focusing_factor: float = 3.) -> Tensor:
    """``f_p(x) = ||x|| x**p / ||x**p||`` over the last axis, for positive ``x``; overflow-free in float32
    (float64 stays float64)."""
    x = x.to(acc_dtype(x.dtype))
    norm = x.norm(dim=-1, keepdim=True)
    y = (x / x.amax(dim=-1, keepdim=True)) ** focusing_factor   # entries in (0, 1]: no overflow
    return y / y.norm(dim=-1, keepdim=True) * norm


def focused_feature_map(x: Tensor, focusing_factor: float = 3.) -> Tensor:
    """``f_p(relu(x) + 1e-6)``, the FLatten kernel of the op (focusing over the last axis)."""
    return focusing_function(F.relu(x.to(acc_dtype(x.dtype))) + KERNEL_EPS, focusing_factor)


def focused_linear_attention(q: Tensor, k: Tensor, v: Tensor, focusing_factor: float = 3.,
                             key_padding_mask: Optional[Tensor] = None, eps: float = 1e-6,
                             backend: str = 'auto') -> Tensor:
    """Focused linear attention; q ``(B, H, Nq, D)``, k ``(B, H, Nk, D)``, v ``(B, H, Nk, Dv)``.

    Args:
        focusing_factor: the power p of the focusing function (3 in the paper).
        key_padding_mask: ``(B, Nk)`` bool, True = padding; excluded exactly.
        eps: added to the mean-normalised denominator (the official 1e-6).
        backend: ``'auto'`` (fused Triton kernels on CUDA when available and supported, this torch path
            otherwise), ``'torch'`` or ``'triton'`` (see :mod:`linattn_mm.ops.backend`).

    Returns:
        ``(B, H, Nq, Dv)`` in the input dtype.
    """
    check_qkv(q, k, v, key_padding_mask, name='focused_linear_attention')
    if focusing_factor <= 0:
        raise ValueError(f'focused_linear_attention: focusing_factor must be > 0, got {focusing_factor}')
    if triton_selected(backend, q, k, v, key_padding_mask):
        from .._kernelized_triton import kernelized_attention_triton  # imported lazily: Triton is optional
        return kernelized_attention_triton(q, k, v, key_padding_mask, eps=eps, feature='focused',
                                           focusing_factor=focusing_factor)
    return kernelized_attention(focused_feature_map(q, focusing_factor), focused_feature_map(k, focusing_factor),
                                v, key_padding_mask, eps, v.dtype)
