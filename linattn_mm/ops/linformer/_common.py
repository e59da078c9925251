"""Checks and masking shared by the fast and the naive Linformer attention."""
from __future__ import annotations

from typing import Optional, Tuple

from torch import Tensor


def check_projections(proj_k: Tensor, proj_v: Tensor, k: Tensor, name: str) -> None:
    """E and F must be ``(Kp, Nk)`` (shared over heads), ``(H, Kp, Nk)`` (per head) or ``(B, 1 or H, Kp, Nk)``
    (per sample, e.g. resized to each image's valid region), with the same Kp."""
    b, h, nk = k.shape[0], k.shape[1], k.shape[2]
    for p, n in ((proj_k, 'proj_k'), (proj_v, 'proj_v')):
        if not isinstance(p, Tensor) or p.dim() not in (2, 3, 4):
            raise ValueError(f'{name}: {n} must be a tensor of shape (Kp, Nk) or (H, Kp, Nk) (per sample: (B, 1 or H, Kp, Nk)), '
                             f'got {tuple(p.shape) if isinstance(p, Tensor) else type(p).__name__}')
        if p.dim() == 4 and (p.shape[0] != b or p.shape[1] not in (1, h)):
            raise ValueError(f'{name}: per-sample {n} must be (B, 1 or H, Kp, Nk) with B = {b}, H = {h}, '
                             f'got {tuple(p.shape)}')
        if p.shape[-1] != nk:
            raise ValueError(f'{name}: {n} has last dim {p.shape[-1]} but there are Nk = {nk} keys; the '
                             f'projection must match the actual key length (layers resize E/F to it, '
                             f'e.g. by interpolating along the token axis)')
        if p.dim() == 3 and p.shape[0] != h:
            raise ValueError(f'{name}: per-head {n} must be (H, Kp, Nk) with H = {h}, got {tuple(p.shape)}')
        if not p.is_floating_point():
            raise ValueError(f'{name}: {n} must be floating point, got {p.dtype}')
    if proj_k.shape[-2] != proj_v.shape[-2]:
        raise ValueError(f'{name}: proj_k and proj_v project to different lengths '
                         f'({proj_k.shape[-2]} vs {proj_v.shape[-2]}); both need the same Kp')


def zero_padded(k: Tensor, v: Tensor, key_padding_mask: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """Zero the rows of padded keys and values (masked_fill, so even inf garbage cannot leak)."""
    if key_padding_mask is None:
        return k, v
    pad = key_padding_mask[:, None, :, None]
    return k.masked_fill(pad, 0.), v.masked_fill(pad, 0.)
