"""Linformer attention for images (Wang et al., 2020): keys and values are projected along the token axis,
``softmax(Q (E K)^T / sqrt(D)) (F V)``, with ``E, F`` of shape ``(proj_len, N)``.

Images change size, so ``E``/``F`` are defined on a reference grid ``ref_hw`` (``(proj_len, h0 * w0)``) and
resized to the actual ``H x W`` by bilinear interpolation of each of their ``proj_len`` rows seen as an
``h0 x w0`` image (any resolution, non-square included). A row of ``E`` *sums* over tokens, so after resizing
it is multiplied by ``(h0 * w0) / (H * W)``: the row's total mass (and the magnitude of ``E K``) stays what it
was on the reference grid instead of growing with the number of tokens.

Sharing (the paper's options): ``share='none'`` one ``E`` and one ``F`` per head; ``'headwise'`` one ``E`` and one
``F`` for all heads; ``'kv'`` a single matrix for all heads used as both ``E`` and ``F``. ``'layerwise'`` sharing is
done by building one :class:`LinformerProjection` and passing it as ``shared_proj=`` to every layer (it is then
registered in each layer; ``named_parameters`` de-duplicates it, and checkpoints store it under each layer).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..ops._utils import is_exporting, merge_heads
from ..ops.linformer import linformer_attention
from .base import BaseAttention

SHARES = ('none', 'headwise', 'kv')


class LinformerProjection(nn.Module):
    """The ``E`` (``proj_k``) and ``F`` (``proj_v``) matrices on a reference grid, resized on demand.

    Args:
        ref_hw: reference token grid ``(h0, w0)`` (an int means square).
        proj_len: projected length ``K``.
        num_heads: heads (used when ``share='none'``).
        share: ``'none'`` -> ``(H, K, h0*w0)`` each; ``'headwise'`` -> ``(K, h0*w0)`` each; ``'kv'`` -> one
            ``(K, h0*w0)`` matrix ``proj_k`` used for both.
    """

    def __init__(self, ref_hw: Union[int, Sequence[int]] = (14, 14), proj_len: int = 64, num_heads: int = 8,
                 share: str = 'none') -> None:
        super().__init__()
        if share not in SHARES:
            raise ValueError(f'LinformerProjection: share must be one of {SHARES} (layerwise: pass shared_proj=), '
                             f'got {share!r}')
        self.ref_hw = (int(ref_hw), int(ref_hw)) if isinstance(ref_hw, int) else (int(ref_hw[0]), int(ref_hw[1]))
        self.proj_len = proj_len
        self.share = share
        n0 = self.ref_hw[0] * self.ref_hw[1]
        shape = (num_heads, proj_len, n0) if share == 'none' else (proj_len, n0)
        # std 1/sqrt(n0): E K then has the scale of a token (each row is a random mix of n0 tokens)
        self.proj_k = nn.Parameter(torch.randn(shape) * n0 ** -0.5)
        self.proj_v = None if share == 'kv' else nn.Parameter(torch.randn(shape) * n0 ** -0.5)

    def resize(self, p: Tensor, hw: Tuple[int, int]) -> Tensor:
        """``(..., K, h0*w0)`` -> ``(..., K, H*W)``, bilinear on the grid, mass-preserving rescale."""
        h0, w0 = self.ref_hw
        if not is_exporting() and tuple(hw) == (h0, w0):  # exporting: always resize (no branch on sizes)
            return p
        lead = p.shape[:-1]
        grid = p.reshape(-1, 1, h0, w0)
        grid = F.interpolate(grid, size=tuple(hw), mode='bilinear', align_corners=False)
        return grid.reshape(*lead, hw[0] * hw[1]) * ((h0 * w0) / (hw[0] * hw[1]))

    def forward(self, hw: Tuple[int, int]) -> Tuple[Tensor, Tensor]:
        pk = self.resize(self.proj_k, hw)
        pv = pk if self.proj_v is None else self.resize(self.proj_v, hw)
        return pk, pv

    def extra_repr(self) -> str:
        return f'ref_hw={self.ref_hw}, proj_len={self.proj_len}, share={self.share!r}'


class LinformerAttention(BaseAttention):
    """Linformer attention with resolution-free ``E``/``F``. Keys: ``qkv``, ``proj``,
    ``projection.proj_k``, ``projection.proj_v`` (absent with ``share='kv'``).

    Args:
        ref_hw: reference grid of ``E``/``F`` (e.g. the token grid at pre-training resolution).
        proj_len: projected key/value length ``K``.
        share: ``'none'`` | ``'headwise'`` | ``'kv'`` (see module docstring).
        shared_proj: a :class:`LinformerProjection` shared between layers (layerwise sharing); overrides
            ``ref_hw``/``proj_len``/``share``.
    """

    def __init__(self, embed_dims: int, num_heads: int = 8, qkv_bias: bool = True, attn_drop: float = 0.,
                 proj_drop: float = 0., qkv_layout: str = 'qkv', ref_hw: Union[int, Sequence[int]] = (14, 14),
                 proj_len: int = 64, share: str = 'none',
                 shared_proj: Optional[LinformerProjection] = None) -> None:
        super().__init__(embed_dims, num_heads, qkv_bias, attn_drop, proj_drop, qkv_layout)
        self.projection = shared_proj if shared_proj is not None else \
            LinformerProjection(ref_hw, proj_len, num_heads, share)
        if self.projection.share == 'none' and self.projection.proj_k.shape[0] != num_heads:
            raise ValueError('LinformerAttention: shared_proj has per-head matrices for '
                             f'{self.projection.proj_k.shape[0]} heads, this layer has {num_heads}')

    def forward(self, x: Tensor, hw_shape: Sequence[int], key_padding_mask: Optional[Tensor] = None) -> Tensor:
        hw = self.check_input(x, hw_shape, key_padding_mask)
        q, k, v = (self.heads(t) for t in self.project_qkv(x))
        pk, pv = self.projection(hw)
        out = linformer_attention(q, k, v, pk.to(q.dtype), pv.to(q.dtype), key_padding_mask=key_padding_mask)
        return self.project_out(merge_heads(out))
