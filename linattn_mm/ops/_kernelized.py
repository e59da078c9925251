"""Normalised kernel (feature-map) attention shared by elu+1, ReLU, focused and Performer attention.

With feature maps ``phi_q`` (B, H, Nq, M) and ``phi_k`` (B, H, Nk, M) of non-negative entries, and the N
valid keys of a sample,

    o_i = (phi_q_i^T (sum_j phi_k_j v_j^T) / N) / (phi_q_i^T (sum_j phi_k_j) / N + eps)

i.e. the weights ``phi_q_i . phi_k_j`` normalised per row (Katharopoulos et al., ICML 2020, eq. 5). The
``1/N`` on both sides cancels except against ``eps`` (it keeps a state bounded whatever N is, so that half
precision does not overflow); the torch path computes the same ``(phi_q_i . S) / (phi_q_i . z + N eps)`` from
the unscaled sums ``S``, ``z`` in float32, where they cannot overflow. Reductions run in float32 (or float64)
and the result is cast back: the
"fp32 island" EfficientViT uses for its ReLU attention. The island switches autocast off (:func:`fp32_island`):
under ``torch.autocast`` a matmul of float32 operands still runs in fp16 / bf16, which overflowed the backward
of focused attention in fp16 (``out / den`` terms summed in fp16) and made the loss scale collapse.

``backend='auto'|'torch'|'triton'`` (see :mod:`linattn_mm.ops.backend`) selects between this torch path and the
fused Triton kernels of :mod:`linattn_mm.ops._kernelized_triton` (imported only when chosen, so CPU calls
never import Triton under ``'auto'``).
"""
from __future__ import annotations

import contextlib
from typing import ContextManager, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ._utils import count_tensor, is_exporting
from .backend import resolve_backend


def triton_selected(backend: str, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Optional[Tensor]) -> bool:
    """Whether a kernelized op runs the fused Triton kernels: ``resolve_backend`` says ``'triton'`` and, for
    ``'auto'``, q, k and v share one dtype (the kernels take one I/O dtype; mixed inputs stay on the torch
    path, whose fp32 island accepts them). Raises ``ValueError`` for an unknown name or an impossible
    ``'triton'``."""
    if backend == 'torch':
        return False
    if resolve_backend(backend, q, k, v, key_padding_mask) != 'triton':
        return False
    return backend == 'triton' or q.dtype == k.dtype == v.dtype


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def fp32_island(device: torch.device) -> ContextManager:
    """Autocast off on ``device`` (a no-op context when it is off already), so that the float32 operands of an
    island stay float32 in its matmuls: autocast recasts every ``@`` / ``bmm`` / ``einsum`` to the low dtype
    whatever its inputs are, which silently turned the reductions below back into fp16 under
    ``torch.autocast`` (and fp16 ``phi(q) / den`` products overflow in the backward)."""
    dev = device.type
    if dev in ('cpu', 'cuda') and torch.is_autocast_enabled(dev):
        return torch.autocast(dev, enabled=False)
    return contextlib.nullcontext()


def kernelized_attention(phi_q: Tensor, phi_k: Tensor, v: Tensor, key_padding_mask: Optional[Tensor],
                         eps: float, out_dtype: torch.dtype, backend: str = 'torch') -> Tensor:
    """Fast path, O(N·M·Dv): never forms the (Nq, Nk) weights.

    ``phi_q`` ``(B, H, Nq, M)`` and ``phi_k`` ``(B, H, Nk, M)`` are features >= 0 computed by the caller. With
    ``backend`` ``'auto'``/``'triton'`` (and ``out_dtype == v.dtype``) they go to the fused kernels as they are
    (``feature='identity'``), cast to v's dtype first: for half v the features are rounded to it. The ops with
    an elementwise feature map (elu+1, relu, focused) call the kernels with the raw q, k instead, so that the
    map runs inside them. The default stays ``'torch'`` for the callers that build features themselves.
    """
    if backend != 'torch' and out_dtype == v.dtype and \
            resolve_backend(backend, phi_q, phi_k, v, key_padding_mask) == 'triton':
        from ._kernelized_triton import kernelized_attention_triton  # Triton is optional: imported lazily
        return kernelized_attention_triton(phi_q.to(v.dtype), phi_k.to(v.dtype), v, key_padding_mask, eps=eps,
                                           feature='identity')
    with fp32_island(v.device):
        return _kernelized_torch(phi_q, phi_k, v, key_padding_mask, eps, out_dtype)


def _kernelized_torch(phi_q: Tensor, phi_k: Tensor, v: Tensor, key_padding_mask: Optional[Tensor], eps: float,
                      out_dtype: torch.dtype) -> Tensor:
    acc = acc_dtype(out_dtype)
    phi_q, phi_k, v = phi_q.to(acc), phi_k.to(acc), v.to(acc)
    if key_padding_mask is not None:
        pad = key_padding_mask[:, None, :, None]
        phi_k = phi_k.masked_fill(pad, 0.)
        v = v.masked_fill(pad, 0.)   # masked_fill, not a product: garbage (inf) in padding must not leak
        n_eps = (~key_padding_mask).sum(-1).clamp_min(1).to(acc)[:, None, None, None] * eps
    elif is_exporting():  # the count from the graph's size, not the export example's
        n_eps = count_tensor(phi_k.shape[2], acc, v.device) * eps
    else:
        n_eps = max(phi_k.shape[2], 1) * eps
    # (q . sum_j k_j v_j / N) / (q . sum_j k_j / N + eps) == (q . sum_j k_j v_j) / (q . sum_j k_j + N eps):
    # sums in the float32 island, and the normaliser from the same matmuls through a column of ones appended
    # to v (EfficientViT's trick): two matmuls, no division of the (M, Dv) state
    kv = phi_k.transpose(-2, -1) @ F.pad(v, (0, 1), value=1.)     # (B, H, M, Dv + 1)
    out = phi_q @ kv                                                # (B, H, Nq, Dv + 1)
    den = out[..., -1:] + n_eps
    if eps <= 0:  # features are >= 0, so den == 0 means the row's weights (and num) are all 0: output 0, not 0/0
        den = den.masked_fill(den == 0, 1.)
    return (out[..., :-1] / den).to(out_dtype)


def kernelized_attention_naive(phi_q: Tensor, phi_k: Tensor, v: Tensor, key_padding_mask: Optional[Tensor],
                               eps: float) -> Tensor:
    """Materialised twin: builds the (B, H, Nq, Nk) weights ``phi_q phi_k^T`` (tests only)."""
    w = phi_q @ phi_k.transpose(-2, -1)
    n = float(max(phi_k.shape[2], 1))
    if key_padding_mask is not None:
        w = w.masked_fill(key_padding_mask[:, None, None, :], 0.)
        v = v.masked_fill(key_padding_mask[:, None, :, None], 0.)
        n = (~key_padding_mask).sum(-1).clamp_min(1).to(w.dtype)[:, None, None, None]
    den = w.sum(-1, keepdim=True) / n + eps
    return (w @ v / n) / den.masked_fill(den == 0, 1.)
