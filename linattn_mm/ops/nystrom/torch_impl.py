"""Nystromformer attention, linear in the number of tokens.

Y. Xiong, Z. Zeng, R. Chakraborty, M. Tan, G. Fung, Y. Li, V. Singh, "Nystromformer: A Nystrom-Based
Algorithm for Approximating Self-Attention", AAAI 2021:

    softmax(Q K^T / sqrt(D)) V  ~  softmax(Q K~^T) · pinv(softmax(Q~ K~^T)) · (softmax(Q~ K^T) V)

with m segment-mean landmarks Q~, K~ (over valid tokens only) and the paper's iterative pseudo-inverse.
Evaluated right to left, it costs O(N m D) and never forms an N x N matrix.

Choices: when the sequence is no longer than ``num_landmarks`` the op returns exact softmax attention
(landmarks would be the tokens themselves; an exported graph evaluates this rule at run time, see
:func:`_exported`); a sample with fewer valid tokens than landmarks uses one
landmark per valid token. It is a self-attention method: query landmarks are segment means of the
queries under the key mask, so q and k must have the same length. The depthwise-conv skip on V of the
official code is a layer concern.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .._kernelized import acc_dtype
from .._utils import check_qkv, is_exporting
from ..softmax import softmax_attention
from ._common import nystrom_kernels


def _check(q: Tensor, k: Tensor, num_landmarks: int, pinv_iters: int, name: str) -> None:
    if q.shape[2] != k.shape[2]:
        raise ValueError(f'{name}: Nystromformer is self-attention (query landmarks are segment means '
                         f'under the key mask): q has {q.shape[2]} tokens, k has {k.shape[2]}')
    if num_landmarks < 1 or pinv_iters < 0:
        raise ValueError(f'{name}: need num_landmarks >= 1 and pinv_iters >= 0, '
                         f'got {num_landmarks}, {pinv_iters}')


def nystrom_attention(q: Tensor, k: Tensor, v: Tensor, num_landmarks: int = 64, pinv_iters: int = 6,
                      key_padding_mask: Optional[Tensor] = None) -> Tensor:
    """Nystrom approximation of softmax attention.

    Args:
        q, k: ``(B, H, N, D)``; v: ``(B, H, N, Dv)``.
        num_landmarks: m, the number of segment-mean landmarks.
        pinv_iters: iterations of the pseudo-inverse (6 in the paper).
        key_padding_mask: ``(B, N)`` bool, True = padding: padded tokens are neither keys nor part of
            any landmark.

    Returns:
        ``(B, H, N, Dv)`` in the input dtype; zeros for a sample without valid tokens. Computed in float32
        for half inputs (the pseudo-inverse iteration is not stable in half precision).
    """
    check_qkv(q, k, v, key_padding_mask, name='nystrom_attention')
    _check(q, k, num_landmarks, pinv_iters, 'nystrom_attention')
    n = k.shape[2]
    if is_exporting():
        return _exported(q, k, v, num_landmarks, pinv_iters, key_padding_mask)
    if n <= num_landmarks:
        return softmax_attention(q, k, v, key_padding_mask=key_padding_mask)
    return _nystrom(q, k, v, num_landmarks, pinv_iters, key_padding_mask, index_landmarks=True)


def _nystrom(q: Tensor, k: Tensor, v: Tensor, num_landmarks: int, pinv_iters: int,
             key_padding_mask: Optional[Tensor], index_landmarks: bool = False) -> Tensor:
    acc = acc_dtype(v.dtype)
    qa, ka, va = (t.to(acc) for t in (q, k, v))
    if key_padding_mask is not None:
        va = va.masked_fill(key_padding_mask[:, None, :, None], 0.)  # garbage in padding must not leak
    f, a_inv, bmat = nystrom_kernels(qa * q.shape[-1] ** -0.5, ka, key_padding_mask, num_landmarks, pinv_iters,
                                     index_landmarks)
    return (f @ (a_inv @ (bmat @ va))).to(v.dtype)


def _exported(q: Tensor, k: Tensor, v: Tensor, num_landmarks: int, pinv_iters: int,
              key_padding_mask: Optional[Tensor]) -> Tensor:
    """The eager rule "exact softmax when ``N <= m``" without a branch on the symbolic ``N``: both results,
    then a ``where`` on ``N <= m`` computed in the graph. The exact one attends to the first ``m`` keys only
    (a slice clamps to ``N``), which is every key exactly when it is selected, so it costs ``O(N m D)`` like a
    Nystrom kernel, never ``O(N^2)``."""
    m = num_landmarks
    kpm = None if key_padding_mask is None else key_padding_mask[:, :m]
    exact = softmax_attention(q, k[:, :, :m], v[:, :, :m], key_padding_mask=kpm)
    approx = _nystrom(q, k, v, num_landmarks, pinv_iters, key_padding_mask)
    short = torch.ones((), dtype=torch.long, device=q.device) * k.shape[2] <= m
    return torch.where(short, exact, approx)
