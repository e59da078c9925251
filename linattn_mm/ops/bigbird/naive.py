"""Materialised BigBird (tests only): the ``(H, G+N, G+N)`` union of window, random-block and global patterns."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from .._utils import check_qkv
from ..longformer._common import IntPair, check_grid
from .torch_impl import MULTS, PRIME, ROUNDS
from ..longformer.naive import block_ids, global_pattern, masked_softmax_attention, window_pattern


def _hash_int(seed: int, head: int, block: int, step: int) -> int:
    """:func:`~linattn_mm.ops.bigbird.torch_impl.pattern_hash` in Python ints (arbitrary precision)."""
    p, mults = PRIME, MULTS
    x = (seed % p) * mults[0] % p + 1
    x = (head * mults[1] + block * mults[2] + step * mults[3] + x) % p
    for add, mult in ROUNDS:
        x = (pow(x, 5, p) + add) % p * mult % p
    return x


def bigbird_random_blocks_naive(num_blocks: int, num_random: int, num_heads: int = 1, seed: int = 0) -> Tensor:
    """:func:`bigbird_random_blocks` written as the textbook Floyd loop over Python sets and ints (tests only)."""
    m = num_blocks - 1                                                 # candidates: every block but its own
    out = torch.full((num_heads, num_blocks, num_random), -1, dtype=torch.long)
    for h in range(num_heads):
        for i in range(num_blocks):
            taken = set()
            for s in range(num_random):
                j = m - num_random + s
                if j < 0:
                    continue                                           # fewer than r other blocks: empty slot
                t = _hash_int(seed, h, i, j) % (j + 1)
                t = j if t in taken else t
                taken.add(t)
                out[h, i, s] = t + (t >= i)                            # skip the query's own block
    return out


def random_pattern(rand_blocks: Tensor, blocks: Tensor) -> Tensor:
    """``(H, N, N)`` bool: key j's block is one of the random blocks of query i's block (``-1`` matches none)."""
    chosen = rand_blocks[:, blocks]                                    # (H, N, r): random blocks of i's block
    return (chosen[:, :, None, :] == blocks[None, None, :, None]).any(-1)


def bigbird_attention_naive(q: Tensor, k: Tensor, v: Tensor, hw_shape: Sequence[int], rand_blocks: Tensor,
                            window_size: IntPair = 7, num_global: int = 0, key_padding_mask: Optional[Tensor] = None,
                            block_size: Optional[IntPair] = None, exact: bool = True, scale: Optional[float] = None,
                            return_global: bool = True, dropout_p: float = 0.) -> Tensor:
    """Same contract as :func:`bigbird_attention` (no dropout), with the pattern materialised."""
    check_qkv(q, k, v, key_padding_mask, name='bigbird_attention_naive')
    check_grid(q, k, hw_shape, num_global, 'bigbird_attention_naive')
    blocks = block_ids(hw_shape, window_size, block_size, q.device)
    grid = window_pattern(hw_shape, window_size, block_size, exact, q.device)[None] \
        | random_pattern(rand_blocks.to(q.device), blocks)
    allowed = global_pattern(num_global, grid)[None]                   # (1, H, G+N, G+N)
    out = masked_softmax_attention(q, k, v, allowed, key_padding_mask, scale)
    return out if return_global else out[:, :, num_global:]
