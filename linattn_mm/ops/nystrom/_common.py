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


def nystrom_kernels(q: Tensor, k: Tensor, key_padding_mask: Optional[Tensor], num_landmarks: int,
                    pinv_iters: int):
    """The three kernels of the Nystrom approximation (q already scaled by D^-1/2), for ``N > num_landmarks``
    (the callers' contract; shorter sequences are exact softmax there):

    ``F = softmax(Q K~^T)`` (B,H,Nq,m), ``A+ = pinv(softmax(Q~ K~^T))`` (B,H,m,m), ``B = softmax(Q~ K^T)``
    (B,H,m,Nk). Query landmarks come from the queries with the key mask (self-attention).
    """
    b, _, n, _ = k.shape
    keep = torch.ones(b, n, dtype=torch.bool, device=k.device) if key_padding_mask is None \
        else ~key_padding_mask
    avg, slot = landmark_assignment(keep, num_landmarks, q.dtype)         # (B, N, m), (B, m)
    avg = avg[:, None]                                                    # broadcast over heads
    q_l = avg.transpose(-2, -1) @ q                                       # (B, H, m, D)
    k_l = avg.transpose(-2, -1) @ k
    if key_padding_mask is None:
        # nothing padded and N > m (the caller's contract): every landmark slot is non-empty, so the slot and
        # key masks are all True; plain softmaxes (no mask, no host sync, no branch on tensor values)
        return ((q @ k_l.transpose(-2, -1)).softmax(-1), iterative_pinv((q_l @ k_l.transpose(-2, -1)).softmax(-1),
                                                                          pinv_iters),
                (q_l @ k.transpose(-2, -1)).softmax(-1))
    slot_col = slot[:, None, None, :]                                     # (B, 1, 1, m)
    slot_row = slot[:, None, :, None]                                     # (B, 1, m, 1)
    f = masked_softmax(q @ k_l.transpose(-2, -1), slot_col)
    a = masked_softmax(q_l @ k_l.transpose(-2, -1), slot_col) * slot_row.to(q.dtype)
    bmat = masked_softmax(q_l @ k.transpose(-2, -1), keep[:, None, None, :]) * slot_row.to(q.dtype)
    return f, iterative_pinv(a, pinv_iters), bmat
