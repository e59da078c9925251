"""Random Feature Attention (RFA), non-causal.

H. Peng, N. Pappas, D. Yogatama, R. Schwartz, N. A. Smith, L. Kong, "Random Feature Attention", ICLR 2021.

Random Fourier features (Rahimi & Recht, 2007) of the l2-normalised queries and keys,

    phi(x) = sqrt(1/M) [sin(W x), cos(W x)],   W (M, D) with rows w_i ~ N(0, s^2 I),
    E[phi(x) . phi(y)] = exp(-s^2 |x - y|^2 / 2) = exp(s^2 x.y - s^2)    for |x| = |y| = 1,

so ``phi(q) . phi(k)`` estimates the softmax kernel ``exp(s^2 q.k)`` up to a constant that cancels in the row
normalisation, and

    RFA(q_i) = phi(q_i)^T (sum_j phi(k_j) v_j^T) / (phi(q_i) . sum_j phi(k_j))

costs O(N M Dv). ``kernel='arccos'`` is the paper's other variant, ``phi(x) = sqrt(1/M) ReLU(W x)`` (the order-1
arc-cosine kernel, non-negative features). The scale ``s`` lives in ``W`` (the layer learns it per head).

The trigonometric estimate of a positive kernel can be <= 0, so the normaliser (a mean over the valid keys, as
in :mod:`linattn_mm.ops._kernelized`) is floored at ``eps``; the naive twin applies the same floor. Its error is
absolute, ~1/sqrt(M) whatever the kernel's size: once ``s^2`` makes the kernel of most pairs small (random unit
vectors in D = 32 at s = 2: exp(-4) ~ 0.02), a share of the queries sit on the floor and their outputs and
gradients are amplified ~1/eps. That is the estimator (Choromanski et al., 2021, introduced positive features for
it), not rounding: fp32 sees the same spikes, fp16 training skips the steps where they overflow.

Half precision: features and reductions run in float32 with autocast off (:func:`~linattn_mm.ops._kernelized.
fp32_island`): sin / cos need the phase ``W x`` to ~1e-3, and a half-precision matmul rounds phases of |.| ~ 10 to
2^-7 (fp16) or 2^-4 (bf16).

The paper's *gated* RFA (a recency gate ``S_t = g_t S_{t-1} + (1 - g_t) phi(k_t) v_t^T``) is a causal recurrence
over a sequence order. Image tokens have no order: a raster scan would make the top-left of the image "old"
and the bottom-right "recent", break the layer's symmetry under flips, and turn a parallel sum into N sequential
steps, so this non-causal op omits it (as the paper does for its non-causal encoders).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .._kernelized import acc_dtype, fp32_island
from .._utils import check_qkv, count_tensor

KERNELS = ('gaussian', 'arccos')


def check_rfa(q: Tensor, features: Tensor, kernel: str, eps: float, name: str) -> None:
    h, d = q.shape[1], q.shape[-1]
    per_head_ok = features.dim() == 2 or features.shape[0] in (1, h)
    if features.dim() not in (2, 3) or features.shape[-1] != d or not per_head_ok:
        raise ValueError(f'{name}: features must be (M, D={d}) or (H|1, M, D) with H={h}, got {tuple(features.shape)}')
    if kernel not in KERNELS:
        raise ValueError(f'{name}: kernel must be one of {KERNELS}, got {kernel!r}')
    if eps <= 0:
        raise ValueError(f'{name}: eps must be > 0 (it floors the normaliser), got {eps}')


def rfa_features(x: Tensor, features: Tensor, kernel: str = 'gaussian', normalize: bool = True) -> Tensor:
    """``phi(x)``: ``(B, H, N, D)`` -> ``(B, H, N, 2M)`` (gaussian) or ``(B, H, N, M)`` (arccos), float32/64."""
    acc = acc_dtype(x.dtype)
    x = x.to(acc)
    if normalize:
        x = F.normalize(x, dim=-1)
    with fp32_island(x.device):   # sin / cos need the phase to ~1e-3: a half-precision matmul rounds it to 2^-4
        proj = x @ features.to(acc).transpose(-2, -1)                  # (B, H, N, M); (H, D, M) broadcasts over B
    m = proj.shape[-1]
    if kernel == 'arccos':
        return F.relu(proj) * m ** -0.5
    return torch.cat([torch.sin(proj), torch.cos(proj)], -1) * m ** -0.5


def _masked(phi_k: Tensor, v: Tensor, key_padding_mask: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
    if key_padding_mask is None:
        return phi_k, v, count_tensor(phi_k.shape[2], phi_k.dtype, phi_k.device)
    pad = key_padding_mask[:, None, :, None]
    n = (~key_padding_mask).sum(-1).clamp_min(1).to(phi_k.dtype)[:, None, None, None]
    return phi_k.masked_fill(pad, 0.), v.masked_fill(pad, 0.), n


def rfa_attention(q: Tensor, k: Tensor, v: Tensor, features: Tensor, key_padding_mask: Optional[Tensor] = None,
                  kernel: str = 'gaussian', normalize: bool = True, eps: float = 1e-4) -> Tensor:
    """Random feature attention.

    Args:
        q: ``(B, H, Nq, D)``; k: ``(B, H, Nk, D)``; v: ``(B, H, Nk, Dv)``.
        features: ``W``, ``(M, D)`` shared by the heads or ``(H, M, D)`` per head; rows ~ N(0, s^2 I) (the scale
            ``s`` is the kernel's inverse temperature: ``exp(s^2 cos(q, k))``). Redraw / seeding is a layer concern.
        key_padding_mask: ``(B, Nk)`` bool, True = padding; padded keys are excluded exactly.
        kernel: ``'gaussian'`` (sin/cos features) or ``'arccos'`` (ReLU features).
        normalize: l2-normalise q and k first (the paper's setting, which turns the Gaussian kernel into the
            softmax kernel).
        eps: floor of the mean-normalised denominator.

    Returns:
        ``(B, H, Nq, Dv)`` in v's dtype; zeros for a sample without valid keys. Float32 inside for half inputs.
    """
    check_qkv(q, k, v, key_padding_mask, name='rfa_attention')
    check_rfa(q, features, kernel, eps, 'rfa_attention')
    with fp32_island(q.device):   # the phases W x and every reduction in float32, also under autocast
        phi_q = rfa_features(q, features, kernel, normalize)
        phi_k, va, n = _masked(rfa_features(k, features, kernel, normalize), v.to(phi_q.dtype), key_padding_mask)
        kv = phi_k.transpose(-2, -1) @ va / n                              # (B, H, F, Dv)
        z = phi_k.sum(-2, keepdim=True) / n                                # (B, H, 1, F)
        den = (phi_q @ z.transpose(-2, -1)).clamp_min(eps)                 # (B, H, Nq, 1)
        return ((phi_q @ kv) / den).to(v.dtype)
