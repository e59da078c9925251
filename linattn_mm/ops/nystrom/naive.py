"""Materialised Nystromformer (tests only): forms the approximated N x N matrix F · pinv(A) · B, then
multiplies V. Same landmarks and pseudo-inverse as the fast path."""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from .._utils import check_qkv
from ..softmax import softmax_attention_naive
from ._common import nystrom_kernels
from .torch_impl import _check


def nystrom_attention_naive(q: Tensor, k: Tensor, v: Tensor, num_landmarks: int = 64, pinv_iters: int = 6,
                            key_padding_mask: Optional[Tensor] = None) -> Tensor:
    check_qkv(q, k, v, key_padding_mask, name='nystrom_attention_naive')
    _check(q, k, num_landmarks, pinv_iters, 'nystrom_attention_naive')
    if k.shape[2] <= num_landmarks:
        return softmax_attention_naive(q, k, v, key_padding_mask=key_padding_mask)
    if key_padding_mask is not None:
        v = v.masked_fill(key_padding_mask[:, None, :, None], 0.)
    f, a_inv, bmat = nystrom_kernels(q * q.shape[-1] ** -0.5, k, key_padding_mask, num_landmarks, pinv_iters)
    weights = f @ a_inv @ bmat                                            # (B, H, N, N)
    return weights @ v
