"""Materialised TaylorShift attention. Ground truth for tests only (builds the ``(B, H, Nq, Nk)`` weights).

``w_ij = f(tau * cos(q_i, k_j)) / sum_j f(tau * cos(q_i, k_j))``, ``f(x) = 1 + x + x^2/2``, over valid keys
(Nauen et al., "TaylorShift", ICPR 2024, arXiv 2403.02920).
"""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor

from .._utils import check_qkv, zero_empty_rows
from ._common import check_mode, check_temperature, output_scale, taylor_exp, unit_qk


def taylor_attention_naive(q: Tensor, k: Tensor, v: Tensor, temperature: Union[None, float, Tensor] = None,
                           mode: str = 'auto', n0: Optional[int] = None, output_normalized: bool = False,
                           key_padding_mask: Optional[Tensor] = None) -> Tensor:
    """Same contract as :func:`taylor_attention`; ``mode`` and ``n0`` are checked and otherwise ignored."""
    name = 'taylor_attention_naive'
    check_qkv(q, k, v, key_padding_mask, name=name)
    check_mode(mode, name)
    tau = check_temperature(temperature, q, name)
    qn, kn = unit_qk(q, k)
    w = taylor_exp(tau.to(q.dtype) * (qn @ kn.transpose(-2, -1)))
    if key_padding_mask is not None:
        w = w.masked_fill(key_padding_mask[:, None, None, :], 0.)
        v = v.masked_fill(key_padding_mask[:, None, :, None], 0.)
    w = w / w.sum(-1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
    out = w @ v
    if output_normalized:
        out = out * output_scale(key_padding_mask, k, q.shape[-1], out.dtype)
    return zero_empty_rows(out, key_padding_mask)
