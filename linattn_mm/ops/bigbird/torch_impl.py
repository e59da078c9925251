"""BigBird attention on the token grid: window + global tokens + block-sparse random attention.

M. Zaheer, G. Guruganesh, A. Dubey, J. Ainslie, C. Alberti, S. Ontanon, P. Pham, A. Ravula, Q. Wang, L. Yang,
A. Ahmed, "Big Bird: Transformers for Longer Sequences", NeurIPS 2020.

The Longformer pattern of :mod:`linattn_mm.ops.longformer` (2-D ``wy x wx`` window, ``G`` global tokens that
attend to and are attended by all; BigBird-ETC style extra tokens) plus, for every query block of the grid,
``r`` random key blocks, all in one softmax per query. Blocks are the ``by x bx`` query blocks of the blocked
window kernel (default: the window size); the random blocks of each (head, query block) are distinct and never
the query's own block. Where a random block overlaps a query's window the shared keys are counted once, so the
attention is a softmax over the *union* of window, random and global keys.

The random pattern is an input (``rand_blocks``, ``(H|1, nblk, r)``): the op is a pure function, and
:func:`bigbird_random_blocks` draws a pattern from a ``torch.Generator`` (the layer seeds it, so it is
deterministic unless asked to redraw). Cost ``O(N (T + r*Q + G) D)``: linear in N.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from .._utils import check_qkv
from ..longformer._common import IntPair, check_grid, geometry
from ..longformer.torch_impl import local_global_attention


def grid_blocks(hw_shape: Sequence[int], window_size: IntPair = 7,
                block_size: Optional[IntPair] = None) -> Tuple[int, int]:
    """Number of query blocks ``(ny, nx)`` of an ``H x W`` grid (what :func:`bigbird_random_blocks` needs)."""
    g = geometry(hw_shape, window_size, block_size)
    return g.ny, g.nx


def bigbird_random_blocks(num_blocks: int, num_random: int, num_heads: int = 1,
                          generator: Optional[torch.Generator] = None, device=None) -> Tensor:
    """Draw ``(num_heads, num_blocks, r)`` random key-block indices, ``r = min(num_random, num_blocks - 1)``.

    For every head and query block i: ``r`` distinct blocks other than i, uniformly without replacement
    (Floyd's algorithm, vectorised: O(num_blocks * r^2), no ``num_blocks^2`` table). Drawn on the CPU from
    ``generator`` so a seed gives the same pattern on every device.
    """
    if num_blocks < 1 or num_random < 0 or num_heads < 1:
        raise ValueError(f'bigbird_random_blocks: need num_blocks >= 1, num_random >= 0, num_heads >= 1; got '
                         f'{num_blocks}, {num_random}, {num_heads}')
    r = min(num_random, num_blocks - 1)
    m = num_blocks - 1                                                  # candidates: every block but its own
    chosen = torch.empty(num_heads, num_blocks, 0, dtype=torch.long)
    for j in range(m - r, m):
        t = torch.randint(0, j + 1, (num_heads, num_blocks, 1), generator=generator)
        t = torch.where((chosen == t).any(-1, keepdim=True), torch.full_like(t, j), t)
        chosen = torch.cat([chosen, t], -1)
    own = torch.arange(num_blocks)[None, :, None]
    return (chosen + (chosen >= own).long()).to(device)                 # skip the query's own block


def check_rand_blocks(rand_blocks: Tensor, num_heads: int, num_blocks: int, name: str) -> None:
    if rand_blocks.dim() != 3 or rand_blocks.shape[0] not in (1, num_heads) or rand_blocks.shape[1] != num_blocks:
        raise ValueError(f'{name}: rand_blocks must be (H|1, nblk, r) = ({num_heads}|1, {num_blocks}, r), got '
                         f'{tuple(rand_blocks.shape)}; draw it with bigbird_random_blocks(nblk, r, H) where '
                         f'nblk = ny * nx from grid_blocks(hw_shape, window_size, block_size)')
    if rand_blocks.dtype != torch.long:
        raise ValueError(f'{name}: rand_blocks must be torch.long, got {rand_blocks.dtype}')
    if rand_blocks.numel() and (rand_blocks.min() < 0 or rand_blocks.max() >= num_blocks):
        raise ValueError(f'{name}: rand_blocks indices must lie in [0, {num_blocks})')


def bigbird_attention(q: Tensor, k: Tensor, v: Tensor, hw_shape: Sequence[int], rand_blocks: Tensor,
                      window_size: IntPair = 7, num_global: int = 0, key_padding_mask: Optional[Tensor] = None,
                      block_size: Optional[IntPair] = None, exact: bool = True, scale: Optional[float] = None,
                      return_global: bool = True, dropout_p: float = 0.) -> Tensor:
    """Window + global + random-block attention.

    Args:
        q, k: ``(B, H, G + N, D)``, ``G = num_global`` global tokens then the grid row-major; v: ``(B, H, G + N, Dv)``.
        hw_shape: grid ``(H, W)``.
        rand_blocks: ``(H|1, nblk, r)`` long: the random key blocks of every query block
            (:func:`bigbird_random_blocks`), ``nblk = ny * nx`` from :func:`grid_blocks`.
        window_size, num_global, key_padding_mask, block_size, exact, scale, return_global, dropout_p: as in
            :func:`linattn_mm.ops.longformer_attention`; ``key_padding_mask`` is ``(B, G + N)``.

    Returns:
        ``(B, H, G + N, Dv)`` (grid rows only with ``return_global=False``).
    """
    check_qkv(q, k, v, key_padding_mask, name='bigbird_attention')
    check_grid(q, k, hw_shape, num_global, 'bigbird_attention')
    g = geometry(hw_shape, window_size, block_size)
    check_rand_blocks(rand_blocks, q.shape[1], g.num_blocks, 'bigbird_attention')
    return local_global_attention(q, k, v, hw_shape, window_size, num_global, key_padding_mask, block_size, exact,
                                  scale, return_global, dropout_p, rand_blocks=rand_blocks.to(q.device))
