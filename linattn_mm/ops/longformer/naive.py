"""Materialised Longformer / local-global attention (tests only): the full ``(G+N) x (G+N)`` allowed-pattern
matrix built from grid coordinates, then one masked softmax per row."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from .._utils import check_qkv
from ._common import IntPair, check_grid, pair


def grid_coords(hw: Sequence[int], device=None) -> Tuple[Tensor, Tensor]:
    """Row and column of every grid token (row-major), ``(N,)`` each."""
    y, x = torch.meshgrid(torch.arange(hw[0], device=device), torch.arange(hw[1], device=device), indexing='ij')
    return y.flatten(), x.flatten()


def block_ids(hw: Sequence[int], window_size: IntPair, block_size: Optional[IntPair], device=None) -> Tensor:
    """Query-block index of every grid token (blocks of ``block_size``, default the window, clipped to the grid;
    numbered row-major over the padded grid), ``(N,)``."""
    by, bx = pair(block_size if block_size is not None else window_size)
    by, bx = min(by, hw[0]), min(bx, hw[1])
    y, x = grid_coords(hw, device)
    nx = -(-hw[1] // bx)
    return (y // by) * nx + x // bx


def window_pattern(hw: Sequence[int], window_size: IntPair, block_size: Optional[IntPair] = None,
                   exact: bool = True, device=None) -> Tensor:
    """``(N, N)`` bool: grid query i may see grid key j through the window.

    exact: ``-wy//2 <= y_j - y_i <= (wy-1)//2`` and the same for columns. Otherwise the key lies in the tile of
    the query's block: the block's rows ``[y0 - wy//2, y0 + by - 1 + (wy-1)//2]`` (and columns likewise).
    """
    wy, wx = pair(window_size)
    y, x = grid_coords(hw, device)
    if exact:
        dy, dx = y[None, :] - y[:, None], x[None, :] - x[:, None]
        return (dy >= -(wy // 2)) & (dy <= (wy - 1) // 2) & (dx >= -(wx // 2)) & (dx <= (wx - 1) // 2)
    by, bx = pair(block_size if block_size is not None else window_size)
    by, bx = min(by, hw[0]), min(bx, hw[1])
    y0, x0 = (y // by) * by, (x // bx) * bx                      # the query's block origin
    top, bottom = (y0 - wy // 2)[:, None], (y0 + by - 1 + (wy - 1) // 2)[:, None]
    left, right = (x0 - wx // 2)[:, None], (x0 + bx - 1 + (wx - 1) // 2)[:, None]
    return (y[None, :] >= top) & (y[None, :] <= bottom) & (x[None, :] >= left) & (x[None, :] <= right)


def global_pattern(num_global: int, grid_pattern: Tensor) -> Tensor:
    """Embed a ``(..., N, N)`` grid pattern in the ``(G+N) x (G+N)`` one: global rows and columns all True."""
    n = grid_pattern.shape[-1]
    full = torch.ones(*grid_pattern.shape[:-2], num_global + n, num_global + n, dtype=torch.bool,
                      device=grid_pattern.device)
    full[..., num_global:, num_global:] = grid_pattern
    return full


def masked_softmax_attention(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor,
                             key_padding_mask: Optional[Tensor], scale: Optional[float]) -> Tensor:
    """``softmax(s q k^T)`` restricted to ``allowed & ~padding`` (rows with nothing allowed -> 0), times v."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    logits = (q @ k.transpose(-2, -1)) * scale
    if key_padding_mask is not None:
        allowed = allowed & ~key_padding_mask[:, None, None, :]
        v = v.masked_fill(key_padding_mask[:, None, :, None], 0.)
    logits = logits.masked_fill(~allowed, torch.finfo(logits.dtype).min)
    return (logits.softmax(-1) * allowed) @ v


def longformer_attention_naive(q: Tensor, k: Tensor, v: Tensor, hw_shape: Sequence[int], window_size: IntPair = 7,
                               num_global: int = 0, key_padding_mask: Optional[Tensor] = None,
                               block_size: Optional[IntPair] = None, exact: bool = True,
                               scale: Optional[float] = None, return_global: bool = True,
                               dropout_p: float = 0.) -> Tensor:
    """Same contract as :func:`longformer_attention` (no dropout), with the pattern materialised."""
    check_qkv(q, k, v, key_padding_mask, name='longformer_attention_naive')
    check_grid(q, k, hw_shape, num_global, 'longformer_attention_naive')
    allowed = global_pattern(num_global, window_pattern(hw_shape, window_size, block_size, exact, q.device))
    out = masked_softmax_attention(q, k, v, allowed, key_padding_mask, scale)
    return out if return_global else out[:, :, num_global:]
