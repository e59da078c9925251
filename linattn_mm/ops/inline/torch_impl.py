"""InLine attention in O(N D Dv): the injective linear attention of Han et al.

Reference: D. Han, Y. Pu, Z. Xia, Y. Han, X. Pan, X. Li, J. Lu, S. Song, G. Huang,
"Bridging the Divide: Reconsidering Softmax and Linear Attention", NeurIPS 2024.

With phi the kernel, s = D ** -0.5 and N the number of valid keys, query i gets the weights

    w_ij = 1/N + (s/N) * (phi(q_i) . phi(k_j) - phi(q_i) . mean(phi(K)))      (sum_j w_ij = 1)

so that

    o_i = mean(V) + s * phi(q_i)^T C,    C = (phi(K) - mean(phi(K)))^T V / N   (D x Dv).

Centring one factor of C is the same matrix as ``K^T V / N - mean(K)^T mean(V)`` but avoids the
cancellation of two large terms in reduced precision; both factors are pre-scaled by 1/sqrt(N) so
neither the (D x Dv) state nor the products that build it grow with N (fp16/bf16 stay bounded).
The local dynamic depthwise term of InLine lives in the layer, not here.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .._utils import check_qkv, count_tensor
from ..backend import resolve_backend
from ._kernels import apply_kernel


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else (fp16, bf16, fp32) accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _valid_count(key_padding_mask: Optional[Tensor], k: Tensor) -> Tensor:
    # counts never live in half precision: 65,536 keys is already past the fp16 maximum (65,504)
    acc = _acc_dtype(k.dtype)
    if key_padding_mask is None:
        return count_tensor(k.shape[2], acc, k.device)
    return (~key_padding_mask).sum(-1).clamp_min(1).to(acc)[:, None, None, None]


def _token_mean(x: Tensor, n: Tensor) -> Tensor:
    """Mean over the token axis of an already-zero-padded ``x``, accumulated in float32+, cast back."""
    return (x.sum(-2, keepdim=True, dtype=n.dtype) / n).to(x.dtype)


def inline_attention(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Optional[Tensor] = None,
                     kernel: str = 'identity', backend: str = 'auto') -> Tensor:
    """Injective linear attention (InLine), linear in the number of tokens.

    Args:
        q: ``(B, H, Nq, D)`` queries.
        k: ``(B, H, Nk, D)`` keys (``Nk`` may differ from ``Nq``: cross-attention works).
        v: ``(B, H, Nk, Dv)`` values.
        key_padding_mask: ``(B, Nk)`` bool, True = padding key. Padded keys are excluded exactly:
            N, mean(K), mean(V) and C run over valid keys only.
        kernel: feature map applied elementwise to q and k first: ``'identity'`` (default), ``'relu'``,
            ``'leakyrelu'`` (slope 0.01) or ``'exp'`` (``exp(0.2 x)``), as in the official Swin variant;
            the scale stays ``D ** -0.5`` for every kernel.
        backend: ``'auto'`` (fused Triton kernels on CUDA when available and supported, this torch path
            otherwise), ``'torch'`` or ``'triton'`` (see :mod:`linattn_mm.ops.backend`).

    Returns:
        ``(B, H, Nq, Dv)`` in the dtype of the inputs. A sample whose keys are all padding gets zeros.

    Raises:
        ValueError: on inconsistent shapes, a bad mask, or an unknown ``kernel``.
    """
    check_qkv(q, k, v, key_padding_mask, name='inline_attention')
    if backend != 'torch' and resolve_backend(backend, q, k, v, key_padding_mask) == 'triton':
        from .triton_impl import inline_attention_triton  # imported lazily: Triton is optional
        q, k = apply_kernel(q, k, kernel, 'inline_attention')
        return inline_attention_triton(q, k, v, key_padding_mask)
    dtype = k.dtype
    # The key side (kernel, mean, centring) runs in float32 for half inputs: phi(K) - mean(phi(K)) cancels
    # (badly for the all-positive exp/relu features), and rounding phi(K) to bf16 first costs ~3x accuracy.
    # It is an (N x D) elementwise island; the O(N D Dv) matmuls below stay in the input dtype.
    q, k = apply_kernel(q, k.to(_acc_dtype(dtype)), kernel, 'inline_attention')
    s = q.shape[-1] ** -0.5
    if key_padding_mask is not None:
        # masked_fill (not a multiply) so that inf/huge garbage in padded slots cannot leak as NaN;
        # the kernel is applied before, since phi(0) != 0 for the exp kernel
        pad = key_padding_mask[:, None, :, None]
        k = k.masked_fill(pad, 0.)
        v = v.masked_fill(pad, 0.)
    n = _valid_count(key_padding_mask, k)
    k_mean = _token_mean(k, n)                                            # (B, H, 1, D)
    v_mean = _token_mean(v, n)                                            # (B, H, 1, Dv)
    k_c = k - k_mean
    if key_padding_mask is not None:
        k_c = k_c.masked_fill(pad, 0.)                                    # padded rows stay out of C
    r = n.rsqrt()
    k_c = (k_c * r).to(dtype)
    c = k_c.transpose(-2, -1) @ (v * r.to(v.dtype))                       # (B, H, D, Dv) = centred K^T V / N
    # an all-padded sample has v_mean = 0 and C = 0, hence a zero output without a special case
    return v_mean + (q * s) @ c
