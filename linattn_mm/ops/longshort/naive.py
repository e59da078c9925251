"""Materialised Long-Short attention (tests only): the ``N x (r + N)`` scores of every query against the
landmarks and all grid keys, the window materialised as an ``(N, N)`` mask, one masked softmax per row."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .._utils import check_qkv
from ..longformer._common import IntPair, check_grid
from ..longformer.naive import masked_softmax_attention, window_pattern
from .torch_impl import Affine, check_projection


def _ln(x: Tensor, affine: Affine, eps: float) -> Tensor:
    b, h, n, d = x.shape                                               # LN over the H*D channels of a token
    flat = x.transpose(1, 2).reshape(b, n, h * d)
    w, bias = affine if affine is not None else (None, None)
    return F.layer_norm(flat, (h * d,), w, bias, eps).view(b, n, h, d).transpose(1, 2)


def longshort_attention_naive(q: Tensor, k: Tensor, v: Tensor, hw_shape: Sequence[int], proj_logits: Tensor,
                              window_size: IntPair = 7, key_padding_mask: Optional[Tensor] = None,
                              block_size: Optional[IntPair] = None, exact: bool = True, dual_ln: bool = True,
                              short_ln: Affine = None, long_ln: Affine = None, ln_eps: float = 1e-5,
                              scale: Optional[float] = None, dropout_p: float = 0.) -> Tensor:
    """Same contract as :func:`longshort_attention` (no dropout)."""
    check_qkv(q, k, v, key_padding_mask, name='longshort_attention_naive')
    check_grid(q, k, hw_shape, 0, 'longshort_attention_naive')
    check_projection(proj_logits, q, k.shape[2], 'longshort_attention_naive')
    b, n = k.shape[0], k.shape[2]
    r = proj_logits.shape[2]
    valid = torch.ones(b, n, dtype=torch.bool, device=q.device) if key_padding_mask is None else ~key_padding_mask
    k = k * valid[:, None, :, None]
    v = v * valid[:, None, :, None]
    if dual_ln:
        k, v = _ln(k, short_ln, ln_eps), _ln(v, short_ln, ln_eps)
    logits = proj_logits.masked_fill(~valid[:, None, None, :], float('-inf'))
    p = torch.nan_to_num(logits.softmax(-1), nan=0.)                   # rows of an all-padded sample -> 0
    k_l, v_l = p @ k, p @ v
    if dual_ln:
        k_l, v_l = _ln(k_l, long_ln, ln_eps), _ln(v_l, long_ln, ln_eps)
    has_any = valid.any(-1)                                            # (B,)
    allowed = torch.cat([has_any[:, None, None, None].expand(b, 1, n, r),
                         window_pattern(hw_shape, window_size, block_size, exact, q.device).expand(b, 1, n, n)], -1)
    pad = None if key_padding_mask is None else torch.cat([~has_any[:, None].expand(b, r), key_padding_mask], -1)
    return masked_softmax_attention(q, torch.cat([k_l, k], 2), torch.cat([v_l, v], 2), allowed, pad, scale)
