"""Vision Longformer attention: 2-D sliding window + global tokens, linear in the number of tokens.

P. Zhang, X. Dai, J. Yang, B. Xiao, L. Yuan, L. Zhang, J. Gao, "Multi-Scale Vision Longformer: A New Vision
Transformer for High-Resolution Image Encoding", ICCV 2021 (ViL; official code microsoft/vision-longformer; 1-D
origin: Beltagy et al., "Longformer: The Long-Document Transformer", 2020).

The sequence is ``G`` global tokens followed by the ``H x W`` grid (row-major). With ``s = D^-1/2``:

* a global query attends to every token: ``o_g = softmax_j(s q_g . k_j) v_j`` over all ``G + N`` keys;
* a grid query at ``(y, x)`` attends to the global keys and to the grid keys of its ``wy x wx`` window
  ``{(y + dy, x + dx) : -wy//2 <= dy <= (wy-1)//2, -wx//2 <= dx <= (wx-1)//2}`` clipped at the borders,
  in one joint softmax over both sets.

Global rows are dense softmax (``G x (G + N)``, through SDPA); grid rows use the blocked window kernel of
:mod:`._common` (query blocks against halo'd key tiles, an exact per-query mask), never an ``N x N`` matrix nor a
``w^2``-fold unfold. ViL's relative position bias is not part of the op.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from .._utils import check_qkv
from ..softmax import softmax_attention
from ._common import IntPair, check_grid, geometry, window_softmax


def split_global(key_padding_mask: Optional[Tensor], num_global: int):
    """``(B, G + N)`` -> the global part ``(B, G)`` and the grid part ``(B, N)`` (Nones stay None)."""
    if key_padding_mask is None:
        return None, None
    return key_padding_mask[:, :num_global], key_padding_mask[:, num_global:]


def local_global_attention(q: Tensor, k: Tensor, v: Tensor, hw_shape: Sequence[int], window_size: IntPair,
                           num_global: int, key_padding_mask: Optional[Tensor], block_size: Optional[IntPair],
                           exact: bool, scale: Optional[float], return_global: bool, dropout_p: float,
                           rand_blocks: Optional[Tensor] = None) -> Tensor:
    """Shared by Longformer and BigBird: global rows dense, grid rows through the window kernel."""
    g = geometry(hw_shape, window_size, block_size)
    kpm_g, kpm_x = split_global(key_padding_mask, num_global)
    out = window_softmax(q[:, :, num_global:], k[:, :, num_global:], v[:, :, num_global:], g, kpm_x, exact=exact,
                         scale=scale, extra_k=k[:, :, :num_global] if num_global else None,
                         extra_v=v[:, :, :num_global] if num_global else None, extra_padding_mask=kpm_g,
                         rand_blocks=rand_blocks, dropout_p=dropout_p)
    if not (return_global and num_global):
        return out
    out_g = softmax_attention(q[:, :, :num_global], k, v, key_padding_mask=key_padding_mask, scale=scale,
                              dropout_p=dropout_p)
    return torch.cat([out_g.to(out.dtype), out], 2)


def longformer_attention(q: Tensor, k: Tensor, v: Tensor, hw_shape: Sequence[int], window_size: IntPair = 7,
                         num_global: int = 0, key_padding_mask: Optional[Tensor] = None,
                         block_size: Optional[IntPair] = None, exact: bool = True, scale: Optional[float] = None,
                         return_global: bool = True, dropout_p: float = 0.) -> Tensor:
    """2-D sliding-window attention with global tokens (ViL).

    Args:
        q, k: ``(B, H, G + N, D)``: ``G = num_global`` global tokens, then the ``N = H*W`` grid tokens row-major;
            v: ``(B, H, G + N, Dv)``.
        hw_shape: the grid ``(H, W)``; any size, windows need not divide it.
        window_size: window side ``w`` or ``(wy, wx)``; each grid query sees a ``wy x wx`` neighbourhood.
        num_global: number of leading global tokens.
        key_padding_mask: ``(B, G + N)`` bool, True = padding; padded keys are excluded from every softmax.
        block_size: query block of the blocked kernel (default: the window). Only speed / memory depend on it
            while ``exact=True``.
        exact: True: each query sees exactly its window. False: every query of a block sees the block's whole
            tile (block + halo; ViL's and Long-Short's block-level window), which depends on ``block_size``.
        scale: score scale, ``D ** -0.5`` by default.
        return_global: also return the global tokens' outputs (False: grid rows only, skipping their work).
        dropout_p: dropout on the attention weights (pass 0 at eval).

    Returns:
        ``(B, H, G + N, Dv)`` (``(B, H, N, Dv)`` with ``return_global=False``); zeros for a query without any
        valid key.
    """
    check_qkv(q, k, v, key_padding_mask, name='longformer_attention')
    check_grid(q, k, hw_shape, num_global, 'longformer_attention')
    return local_global_attention(q, k, v, hw_shape, window_size, num_global, key_padding_mask, block_size, exact,
                                  scale, return_global, dropout_p)
