"""TaylorShift attention: softmax's exp replaced by its 2nd-order Taylor expansion, in two exact paths.

Reference: T. C. Nauen, S. Palacio, A. Dengel, "TaylorShift: Shifting the Complexity of Self-Attention from
Squared to Linear (and Back) using Taylor-Softmax", ICPR 2024, arXiv 2403.02920.

With q and k L2-normalised per head, tau a per-head temperature and f(x) = 1 + x + x^2/2,

    o_i = sum_j f(tau cos(q_i, k_j)) v_j / sum_j f(tau cos(q_i, k_j))      (valid keys j only)

* ``direct``: the (Nq x Nk) weights, O(Nq Nk D). Each row is divided by f(max_j |a_ij|) before the
  normalisation (the paper's overflow guard): every weight is then <= 1 and the row sum <= Nk.
* ``efficient``: O((Nq + Nk) D^2 Dv) through ``f(a.b) = 1 + a.b + (a (x) a).(b (x) b) / 2`` where
  ``a (x) a`` is the row-wise outer product (D^2 features). As in the paper, q and k are scaled by
  ``D ** (1/4)`` (entries of ``k (x) k`` are then O(1)) and the key-side sums carry 1/N; here the 1/N is
  split as 1/sqrt(N) on each factor (like InLine's K^T V), and the remaining constants, tau and a
  head-wise guard 1/f(|tau|) are folded into the small (D^2 x Dv) state, so every intermediate stays
  bounded in fp16/bf16 whatever N and tau are.
* ``auto``: ``efficient`` when Nk > n0, default ``n0 = D^2 + D + 1`` (the paper's N0, where the two costs meet).

``backend='auto'|'torch'|'triton'`` (see :mod:`linattn_mm.ops.backend`) chooses how the efficient path runs:
this module's torch code, which forms the (N x D^2) feature tensors, or the fused kernels of
:mod:`linattn_mm.ops.taylor.triton_impl`, which never store them (imported only when chosen). The direct path
is always torch.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor

from .._utils import check_qkv, is_exporting, size_hint, zero_empty_rows
from ..backend import BACKENDS, resolve_backend
from ._common import (check_mode, check_temperature, output_scale, taylor_exp, unit_qk,
                      valid_count)


def taylor_crossover(head_dim: int) -> int:
    """The paper's N0 = D^2 + D + 1: above it the efficient path costs fewer operations than the direct one."""
    return head_dim * head_dim + head_dim + 1


def _outer_rows(x: Tensor) -> Tensor:
    """Row-wise outer product ``x (x) x``: ``(..., N, D)`` -> ``(..., N, D * D)`` (a new tensor, no views written)."""
    return (x.unsqueeze(-1) * x.unsqueeze(-2)).flatten(-2)


def _direct(qn: Tensor, kn: Tensor, v: Tensor, tau: Tensor, key_padding_mask: Optional[Tensor]) -> Tensor:
    # padded keys are zero (masked before normalising), so a = 0 there: |0| never raises the row max
    a = (qn * tau.to(qn.dtype)) @ kn.transpose(-2, -1)                     # tau * cos, (B, H, Nq, Nk)
    # f(a) <= f(a_max) on the row; f_max is a (B, H, Nq, 1) column, formed in float32+ so it cannot overflow
    f_max = taylor_exp(a.abs().amax(-1, keepdim=True).to(tau.dtype))
    inv, inv_sqrt = f_max.reciprocal().to(a.dtype), f_max.rsqrt().to(a.dtype)
    # f(a) / f_max written term by term (the paper's form): no a^2 is formed before the division
    w = 0.5 * (a * inv_sqrt).square() + a * inv + inv
    if key_padding_mask is not None:
        w = w.masked_fill(key_padding_mask[:, None, None, :], 0.)
        v = v.masked_fill(key_padding_mask[:, None, :, None], 0.)
    # a valid row sums to >= 1/f_max > 0; an all-padded row sums to 0 and gets 0 / tiny = 0
    w = w / w.sum(-1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
    return w @ v


def _efficient(qn: Tensor, kn: Tensor, v: Tensor, tau: Tensor, key_padding_mask: Optional[Tensor]) -> Tensor:
    d = qn.shape[-1]
    s = d ** 0.25
    qs, ks = qn * s, kn * s                                                # |qs| = |ks| = d^(1/4)
    # v' = [1, v]: the ones column carries the normaliser sum_j f(.) through the same products
    v1 = torch.cat([torch.ones_like(v[..., :1]), v], dim=-1)
    if key_padding_mask is not None:   # padded keys are already zero; v may hold anything there
        v1 = v1.masked_fill(key_padding_mask[:, None, :, None], 0.)        # also zeroes the ones column
    n = valid_count(key_padding_mask, ks)                                  # N = valid keys, float32+
    r = n.rsqrt().to(v1.dtype)                                             # 1/sqrt(N)
    r4 = n.pow(-0.25).to(ks.dtype)                                         # (ks r4) (x) (ks r4) = (ks (x) ks) r
    v1 = v1 * r
    # key-side state, each a sum over keys of O(1) terms times 1/N:
    #   s2 = sum_j (ks_j (x) ks_j) v'_j / N   (D^2, Dv+1);  s1 = sum_j ks_j v'_j / N;  s0 = sum_j v'_j / N
    s2 = _outer_rows(ks * r4).transpose(-2, -1) @ v1
    s1 = (ks * r).transpose(-2, -1) @ v1
    s0 = v1.sum(-2, keepdim=True) * r
    # f(tau cos) = 1 + tau (qs.ks)/sqrt(d) + tau^2 (qs (x) qs).(ks (x) ks) / (2 d). The constants and tau go
    # into the small state rather than onto the (Nq x D^2) features, and every term is divided by
    # g = f(|tau|) >= f(tau cos) (the head-wise analogue of the paper's row guard; it cancels in y / y_0 and
    # is detached for that reason): y then stays <= max|v| in fp16 even for a large learned temperature.
    # The coefficients are formed in float32+ (d * g alone can pass the fp16 maximum), then cast.
    g = taylor_exp(tau.detach().abs())
    c2 = (0.5 * tau * tau / (d * g)).to(s2.dtype)
    c1 = (tau / (d ** 0.5 * g)).to(s1.dtype)
    c0 = g.reciprocal().to(s0.dtype)
    y = _outer_rows(qs) @ (s2 * c2) + qs @ (s1 * c1) + s0 * c0
    # y[..., 0] = sum_j f_j / (N g) > 0 for any sample with a valid key, so the division is safe
    den = y[..., :1]
    if key_padding_mask is not None:
        den = den.masked_fill(den == 0, 1.)                                # all-padded: y = 0 -> output 0
    return y[..., 1:] / den


def _triton_selected(backend: str, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Optional[Tensor]) -> bool:
    """Whether the efficient path runs the fused kernels; ``'auto'`` also needs one dtype for q, k and v."""
    if resolve_backend(backend, q, k, v, key_padding_mask) != 'triton':
        return False
    if q.dtype == k.dtype == v.dtype:
        return True
    if backend == 'triton':
        raise ValueError(f"taylor_attention: backend='triton' needs one dtype for q, k, v, got {q.dtype}, "
                         f"{k.dtype}, {v.dtype}; cast them or use backend='auto'")
    return False


def taylor_attention(q: Tensor, k: Tensor, v: Tensor, temperature: Union[None, float, Tensor] = None,
                     mode: str = 'auto', n0: Optional[int] = None, output_normalized: bool = False,
                     key_padding_mask: Optional[Tensor] = None, backend: str = 'auto') -> Tensor:
    """TaylorShift attention (Taylor-softmax over cosine similarities).

    Args:
        q: ``(B, H, Nq, D)`` queries.
        k: ``(B, H, Nk, D)`` keys.
        v: ``(B, H, Nk, Dv)`` values.
        temperature: per-head temperature tau, a tensor of shape ``(H,)`` (a learnable parameter; gradients
            flow), a scalar, or None for 1. It multiplies the cosine: weights are ``f(tau * cos(q_i, k_j))``.
        mode: ``'direct'`` (O(Nq Nk D)), ``'efficient'`` (O((Nq + Nk) D^2 Dv)) or ``'auto'`` (efficient when
            ``Nk > n0``). Both paths compute the same function and both train.
        n0: crossover length for ``'auto'``; default :func:`taylor_crossover` ``(D) = D^2 + D + 1``.
        output_normalized: multiply the result by ``sqrt(N / D)`` (N = valid keys of the sample), the paper's
            output normalisation that keeps the output's magnitude from shrinking as N grows.
        key_padding_mask: ``(B, Nk)`` bool, True = padding key, excluded exactly in both paths.
        backend: how the efficient path runs: ``'auto'`` (fused Triton kernels on CUDA when available and
            supported: fp16/bf16/fp32 with one dtype for q, k, v and head dims <= 128; this torch path
            otherwise), ``'torch'`` or ``'triton'``. The direct path is torch whatever this says; ``'triton'``
            with ``mode='direct'`` is an error.

    Returns:
        ``(B, H, Nq, Dv)``. A sample whose keys are all padding gets zeros.

    Raises:
        ValueError: on inconsistent shapes, a bad mask, temperature shape, ``mode`` or ``backend``, or for
            ``backend='triton'`` where the kernels cannot run (the message says why).
    """
    name = 'taylor_attention'
    check_qkv(q, k, v, key_padding_mask, name=name)
    check_mode(mode, name)
    tau = check_temperature(temperature, q, name)
    d = q.shape[-1]
    if mode == 'auto':
        # exporting: chosen once by the example's length (no guard on the symbolic size); both paths compute
        # the same function, so the exported graph is right at every size, only its cost follows this choice
        nk = size_hint(k.shape[2]) if is_exporting() else k.shape[2]
        mode = 'efficient' if nk > (taylor_crossover(d) if n0 is None else n0) else 'direct'
    if backend not in BACKENDS:
        raise ValueError(f'{name}: unknown backend {backend!r}; choose one of {BACKENDS}')
    if backend == 'triton' and mode == 'direct':
        raise ValueError(f"{name}: backend='triton' runs the efficient path only, got mode='direct'; use "
                         f"mode='efficient' (or 'auto') or backend='auto'")
    if key_padding_mask is not None:  # before normalising (both paths rely on it): inf/NaN in padded keys must
        k = k.masked_fill(key_padding_mask[:, None, :, None], 0.)  # not reach any gradient; unit(0) = 0
    qn, kn = unit_qk(q, k)
    if mode == 'direct':
        out = _direct(qn, kn, v, tau, key_padding_mask)
    elif _triton_selected(backend, q, k, v, key_padding_mask):
        from .triton_impl import taylor_efficient_triton  # Triton is optional: imported only when chosen
        out = taylor_efficient_triton(qn, kn, v, tau, key_padding_mask)
    else:
        out = _efficient(qn, kn, v, tau, key_padding_mask)
    if output_normalized:
        out = out * output_scale(key_padding_mask, k, d, out.dtype)
    return zero_empty_rows(out, key_padding_mask)
