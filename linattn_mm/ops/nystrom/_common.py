"""Pieces shared by the fast and the materialised Nystromformer: landmarks, the three softmax kernels and
the iterative pseudo-inverse (Xiong et al., "Nystromformer: A Nystrom-Based Algorithm for Approximating
Self-Attention", AAAI 2021)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor


def landmark_assignment(keep: Tensor, num_landmarks: int, dtype: torch.dtype) -> Tuple[Tensor, Tensor]:
    """Segment-mean landmarks over the valid tokens of each sample.

    The ``n_b`` valid tokens of sample b, in order, are split into ``m_b = min(num_landmarks, n_b)``
    contiguous segments of sizes differing by at most one (the paper's segment means; no divisibility
    requirement and no padding token ever counted). Returns the ``(B, N, m)`` averaging matrix and the
    ``(B, m)`` bool mask of non-empty landmark slots (slots beyond ``m_b`` are empty).
    """
    b, n = keep.shape
    n_valid = keep.sum(-1, keepdim=True)                                  # (B, 1)
    m_b = n_valid.clamp(max=num_landmarks)
    rank = keep.long().cumsum(-1) - 1                                     # rank among valid tokens
    seg = torch.div(rank * m_b, n_valid.clamp_min(1), rounding_mode='floor')
    seg = torch.where(keep, seg, torch.full_like(seg, num_landmarks))     # padding -> a dropped slot
    onehot = torch.nn.functional.one_hot(seg, num_landmarks + 1)[..., :num_landmarks].to(dtype)
    counts = onehot.sum(1)                                                # (B, m)
    return onehot / counts.clamp_min(1)[:, None, :], counts > 0


def segment_means(x: Tensor, num_landmarks: int) -> Tensor:
    """Means of ``x`` (``(..., N, D)``) over the ``num_landmarks`` contiguous segments of
    :func:`landmark_assignment` when no token is padded and ``N >= num_landmarks``: token i belongs to segment
    ``floor(i m / N)``, so segment j holds tokens ``ceil(j N / m) .. ceil((j + 1) N / m) - 1``.

    One ``index_add`` (``O(N D)``, backward a gather) instead of the ``(N, m)`` averaging matmul, which costs
    ``O(N m D)`` and a one-hot matrix; the two agree to rounding (tested).
    """
    n, m = x.shape[-2], num_landmarks
    seg = torch.div(torch.arange(n, device=x.device) * m, n, rounding_mode='floor')
    j = torch.arange(m + 1, device=x.device)
    starts = torch.div(j * n + m - 1, m, rounding_mode='floor')         # ceil(j N / m)
    counts = (starts[1:] - starts[:-1]).to(x.dtype)
    sums = x.new_zeros(x.shape[:-2] + (m, x.shape[-1])).index_add(x.dim() - 2, seg, x)
    return sums / counts[:, None]


def masked_softmax(logits: Tensor, valid: Optional[Tensor]) -> Tensor:
    """Softmax over the last axis restricted to ``valid`` columns (broadcastable bool); rows with no valid
    column give zeros. A finite fill keeps gradients free of NaN."""
    if valid is None:
        return logits.softmax(-1)
    logits = logits.masked_fill(~valid, torch.finfo(logits.dtype).min)
    return logits.softmax(-1) * valid.to(logits.dtype)


def iterative_pinv(a: Tensor, iters: int) -> Tensor:
    """Moore-Penrose pseudo-inverse of ``(..., m, m)`` matrices by the paper's iteration (their eq. 13):
    ``Z <- Z (13 I - A Z (15 I - A Z (7 I - A Z))) / 4``, started at ``A^T / (max col sum * max row sum)``.

    The initial scale is taken per matrix (the reference code takes one maximum over the whole batch,
    which would make a sample's output depend on the others). Empty landmark slots are zero rows and
    columns of ``A`` and stay zero in ``Z``.
    """
    absa = a.abs()
    denom = absa.sum(-2).amax(-1) * absa.sum(-1).amax(-1)                 # (...)
    z = a.transpose(-2, -1) / denom.clamp_min(torch.finfo(a.dtype).tiny)[..., None, None]
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    for _ in range(iters):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


def _unmasked_kernels(q: Tensor, k: Tensor, q_l: Tensor, k_l: Tensor, pinv_iters: int):
    # nothing padded and N > m (the callers' contract): every landmark slot is non-empty, so the slot and key
    # masks are all True; plain softmaxes (no mask, no host sync, no branch on tensor values)
    return ((q @ k_l.transpose(-2, -1)).softmax(-1),
            iterative_pinv((q_l @ k_l.transpose(-2, -1)).softmax(-1), pinv_iters),
            (q_l @ k.transpose(-2, -1)).softmax(-1))


def nystrom_kernels(q: Tensor, k: Tensor, key_padding_mask: Optional[Tensor], num_landmarks: int,
                    pinv_iters: int, index_landmarks: bool = False):
    """The three kernels of the Nystrom approximation (q already scaled by D^-1/2), for ``N > num_landmarks``
    (the callers' contract; shorter sequences are exact softmax there):

    ``F = softmax(Q K~^T)`` (B,H,Nq,m), ``A+ = pinv(softmax(Q~ K~^T))`` (B,H,m,m), ``B = softmax(Q~ K^T)``
    (B,H,m,Nk). Query landmarks come from the queries with the key mask (self-attention).

    ``index_landmarks``: without padding, take the landmarks by :func:`segment_means` (the fast path); else,
    and always with padding, through the averaging matrix of :func:`landmark_assignment` (the reference, and
    what ONNX export uses).
    """
    if key_padding_mask is None and index_landmarks:
        q_l, k_l = segment_means(q, num_landmarks), segment_means(k, num_landmarks)
        return _unmasked_kernels(q, k, q_l, k_l, pinv_iters)
    b, _, n, _ = k.shape
    keep = torch.ones(b, n, dtype=torch.bool, device=k.device) if key_padding_mask is None \
        else ~key_padding_mask
    avg, slot = landmark_assignment(keep, num_landmarks, q.dtype)         # (B, N, m), (B, m)
    avg = avg[:, None]                                                    # broadcast over heads
    q_l = avg.transpose(-2, -1) @ q                                       # (B, H, m, D)
    k_l = avg.transpose(-2, -1) @ k
    if key_padding_mask is None:
        return _unmasked_kernels(q, k, q_l, k_l, pinv_iters)
    slot_col = slot[:, None, None, :]                                     # (B, 1, 1, m)
    slot_row = slot[:, None, :, None]                                     # (B, 1, m, 1)
    f = masked_softmax(q @ k_l.transpose(-2, -1), slot_col)
    a = masked_softmax(q_l @ k_l.transpose(-2, -1), slot_col) * slot_row.to(q.dtype)
    bmat = masked_softmax(q_l @ k.transpose(-2, -1), keep[:, None, None, :]) * slot_row.to(q.dtype)
    return f, iterative_pinv(a, pinv_iters), bmat
