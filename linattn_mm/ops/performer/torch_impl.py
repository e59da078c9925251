"""Performer FAVOR+: softmax attention approximated with positive orthogonal random features.

K. Choromanski et al., "Rethinking Attention with Performers", ICLR 2021. With x' = x · D^-1/4 and the
rows w_m of the (M, D) feature matrix,

    phi(x) = exp(w_m^T x' - |x'|^2 / 2) / sqrt(M),   E[phi(q)^T phi(k)] = exp(q^T k / sqrt(D)),

and attention is normalised kernel attention with phi (see :mod:`linattn_mm.ops._kernelized`).

Numerical stabilisation: exponents are shifted before ``exp``. Queries use a per-row shift (it scales
numerator and denominator of that row alike); keys use one shift per (sample, head), the maximum over
*valid* keys, so padding never changes it and it cancels exactly in the ratio. The shifts are treated
as constants for autograd, which is exact because the output does not depend on them.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .._kernelized import acc_dtype, kernelized_attention
from .._utils import check_qkv


def orthogonal_random_features(num_features: int, dim: int, generator: Optional[torch.Generator] = None,
                               device=None, dtype=None) -> Tensor:
    """``(num_features, dim)`` Gaussian features made orthogonal in blocks of ``dim`` rows (FAVOR+).

    Each block is the Q factor of a Gaussian matrix; rows are rescaled by norms of independent Gaussian
    vectors (chi(dim) distributed) so that every row is marginally N(0, I), as in the paper.
    """
    if num_features < 1 or dim < 1:
        raise ValueError(f'orthogonal_random_features: need num_features >= 1 and dim >= 1, '
                         f'got {num_features}, {dim}')
    blocks = []
    for _ in range(math.ceil(num_features / dim)):
        g = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
        qmat, _ = torch.linalg.qr(g)
        blocks.append(qmat.T)
    w = torch.cat(blocks)[:num_features]
    norms = torch.randn(num_features, dim, generator=generator, dtype=torch.float64).norm(dim=1, keepdim=True)
    return (w * norms).to(device=device, dtype=dtype or torch.get_default_dtype())


def _exponent(x: Tensor, features: Tensor) -> Tensor:
    """``w_m^T x' - |x'|^2 / 2`` for x' = x D^-1/4, in float32/64: ``(B, H, N, M)``."""
    acc = acc_dtype(x.dtype)
    x = x.to(acc) * x.shape[-1] ** -0.25
    return x @ features.to(acc).T - 0.5 * (x * x).sum(-1, keepdim=True)


def performer_features(q: Tensor, k: Tensor, features: Tensor,
                       key_padding_mask: Optional[Tensor] = None):
    """Stabilised positive features ``(phi(q), phi(k))`` (each scaled by its own constant)."""
    m = features.shape[0]
    eq = _exponent(q, features)
    ek = _exponent(k, features)
    q_shift = eq.detach().amax(-1, keepdim=True)
    ek_valid = ek.detach()
    if key_padding_mask is not None:
        ek_valid = ek_valid.masked_fill(key_padding_mask[:, None, :, None], float('-inf'))
    k_shift = ek_valid.amax(dim=(-2, -1), keepdim=True)
    k_shift = torch.where(torch.isfinite(k_shift), k_shift, torch.zeros_like(k_shift))  # all-padded sample
    scale = m ** -0.5
    return torch.exp(eq - q_shift) * scale, torch.exp(ek - k_shift) * scale


def performer_attention(q: Tensor, k: Tensor, v: Tensor, features: Tensor,
                        key_padding_mask: Optional[Tensor] = None, eps: float = 0.) -> Tensor:
    """FAVOR+ attention.

    Args:
        q: ``(B, H, Nq, D)``; k: ``(B, H, Nk, D)``; v: ``(B, H, Nk, Dv)``.
        features: ``(M, D)`` random features (:func:`orthogonal_random_features`); redraw is a layer concern.
        key_padding_mask: ``(B, Nk)`` bool, True = padding; padded keys are excluded exactly.
        eps: added to the normaliser. The default 0 keeps the estimator exact (features are positive);
            the stabilising shifts make an absolute eps meaningless anyway.

    Returns:
        ``(B, H, Nq, Dv)`` in the input dtype; zeros for a sample without valid keys.
    """
    check_qkv(q, k, v, key_padding_mask, name='performer_attention')
    if features.dim() != 2 or features.shape[1] != q.shape[-1]:
        raise ValueError(f'performer_attention: features must be (M, D={q.shape[-1]}), '
                         f'got {tuple(features.shape)}')
    phi_q, phi_k = performer_features(q, k, features, key_padding_mask)
    return kernelized_attention(phi_q, phi_k, v, key_padding_mask, eps, v.dtype)
