"""Long-Short Transformer attention on the token grid: sliding window + dynamic projection, with DualLN.

C. Zhu, W. Ping, C. Xiao, M. Shoeybi, T. Goldstein, A. Anandkumar, B. Catanzaro, "Long-Short Transformer:
Efficient Transformers for Language and Vision", NeurIPS 2021 (official code: NVIDIA/transformer-ls).

Short-term: every grid query sees its ``wy x wx`` window (clipped at the borders, as in
:mod:`linattn_mm.ops.longformer`). Long-term: ``r`` landmarks made by a *dynamic* projection of the keys and
values along the token axis,

    P = softmax_over_tokens(logits)  (B, H, r, N),    K_l = P K,   V_l = P V,

where ``logits`` comes from the layer input (``X W_P``, so any sequence length works). DualLN: the window keys /
values and the landmark keys / values are each layer-normalised (over all heads' channels, as in the official
code), ``K_s = LN_s(K)``, ``K_l = LN_l(P K_s)``, so the two sets have matched scales before they share **one
softmax** per query over ``[landmarks | window]``. Cost ``O(N (T + r) D)``: linear in N.

Padding: padded tokens get zero projection weight (the softmax over tokens runs over valid tokens only) and are
never window keys; a sample without valid tokens gets zeros.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .._kernelized import acc_dtype
from .._utils import check_qkv, has_valid
from ..longformer._common import IntPair, check_grid, geometry, window_softmax

Affine = Optional[Tuple[Optional[Tensor], Optional[Tensor]]]


def head_layer_norm(x: Tensor, affine: Affine, eps: float) -> Tensor:
    """LayerNorm of ``(B, H, N, D)`` over the ``H*D`` channels of each token (LN over C before the head split);
    ``affine = (weight, bias)`` of shape ``(H*D,)`` (either may be None)."""
    h, d = int(x.shape[1]), int(x.shape[3])   # heads and head dims are fixed by the model (never dynamic)
    w, bias = affine if affine is not None else (None, None)
    w = None if w is None else w.view(h, d)
    bias = None if bias is None else bias.view(h, d)
    return F.layer_norm(x.transpose(1, 2), (h, d), w, bias, eps).transpose(1, 2)


def dynamic_projection(logits: Tensor, key_padding_mask: Optional[Tensor]) -> Tensor:
    """``P = softmax(logits)`` over the token axis (last), valid tokens only; all-padded samples give zeros.
    Float32 (or float64) for the softmax, as the official code."""
    acc = acc_dtype(logits.dtype)
    logits = logits.to(acc)
    if key_padding_mask is None:
        return logits.softmax(-1)
    keep = ~key_padding_mask[:, None, None, :]
    return logits.masked_fill(~keep, torch.finfo(acc).min).softmax(-1) * keep


def check_projection(proj_logits: Tensor, q: Tensor, n: int, name: str) -> None:
    b, h = q.shape[:2]
    if proj_logits.dim() != 4 or proj_logits.shape[:2] != (b, h) or proj_logits.shape[-1] != n:
        raise ValueError(f'{name}: proj_logits must be (B, H, r, N) = ({b}, {h}, r, {n}), got '
                         f'{tuple(proj_logits.shape)}; e.g. Linear(C, H*r)(x).view(B, N, H, r).permute(0, 2, 3, 1)')


def longshort_attention(q: Tensor, k: Tensor, v: Tensor, hw_shape: Sequence[int], proj_logits: Tensor,
                        window_size: IntPair = 7, key_padding_mask: Optional[Tensor] = None,
                        block_size: Optional[IntPair] = None, exact: bool = True, dual_ln: bool = True,
                        short_ln: Affine = None, long_ln: Affine = None, ln_eps: float = 1e-5,
                        scale: Optional[float] = None, dropout_p: float = 0.) -> Tensor:
    """Long-short attention.

    Args:
        q, k: ``(B, H, N, D)`` grid tokens row-major, ``N = H*W``; v: ``(B, H, N, D)`` (DualLN needs Dv = D).
        hw_shape: grid ``(H, W)``.
        proj_logits: ``(B, H, r, N)`` scores of the dynamic projection (``X W_P`` per head); softmax over N inside.
        window_size, block_size, exact: the short-term window (see :func:`linattn_mm.ops.longformer_attention`).
        key_padding_mask: ``(B, N)`` bool, True = padding.
        dual_ln: apply DualLN (``LN_s`` on window keys / values, ``LN_l`` on landmarks).
        short_ln, long_ln: ``(weight, bias)`` of ``LN_s`` / ``LN_l``, each ``(H*D,)`` or None (no affine).
        ln_eps: LayerNorm epsilon.
        scale: score scale, ``D ** -0.5`` by default.
        dropout_p: dropout on the attention weights.

    Returns:
        ``(B, H, N, D)``; zeros for a sample without valid tokens.
    """
    check_qkv(q, k, v, key_padding_mask, name='longshort_attention')
    check_grid(q, k, hw_shape, 0, 'longshort_attention')
    check_projection(proj_logits, q, k.shape[2], 'longshort_attention')
    if key_padding_mask is not None:  # garbage in padding must not reach LN or P K (0 * inf)
        pad = key_padding_mask[:, None, :, None]
        k, v = k.masked_fill(pad, 0.), v.masked_fill(pad, 0.)
    if dual_ln:
        k, v = head_layer_norm(k, short_ln, ln_eps), head_layer_norm(v, short_ln, ln_eps)
    p = dynamic_projection(proj_logits, key_padding_mask)              # (B, H, r, N)
    k_l, v_l = (p @ k.to(p.dtype)).to(k.dtype), (p @ v.to(p.dtype)).to(v.dtype)
    if dual_ln:
        k_l, v_l = head_layer_norm(k_l, long_ln, ln_eps), head_layer_norm(v_l, long_ln, ln_eps)
    ok = has_valid(key_padding_mask)
    extra_pad = None if ok is None else (~ok[:, 0, 0, :]).expand(-1, k_l.shape[2])  # empty sample: no landmarks
    g = geometry(hw_shape, window_size, block_size)
    return window_softmax(q, k, v, g, key_padding_mask, exact=exact, scale=scale, extra_k=k_l, extra_v=v_l,
                          extra_padding_mask=extra_pad, dropout_p=dropout_p)
