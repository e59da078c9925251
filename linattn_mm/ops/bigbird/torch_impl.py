"""BigBird attention on the token grid: window + global tokens + block-sparse random attention.

M. Zaheer, G. Guruganesh, A. Dubey, J. Ainslie, C. Alberti, S. Ontanon, P. Pham, A. Ravula, Q. Wang, L. Yang,
A. Ahmed, "Big Bird: Transformers for Longer Sequences", NeurIPS 2020.

The Longformer pattern of :mod:`linattn_mm.ops.longformer` (2-D ``wy x wx`` window, ``G`` global tokens that
attend to and are attended by all; BigBird-ETC style extra tokens) plus, for every query block of the grid,
``r`` random key blocks, all in one softmax per query. Blocks are the ``by x bx`` query blocks of the blocked
window kernel (default: the window size); the random blocks of each (head, query block) are distinct and never
the query's own block. Where a random block overlaps a query's window the shared keys are counted once, so the
attention is a softmax over the *union* of window, random and global keys.

The random pattern is an input (``rand_blocks``, ``(H|1, nblk, r)``, ``-1`` = empty slot): the op is a pure
function, and :func:`bigbird_random_blocks` computes a pattern from a seed with tensor ops (so it is the same in
eager and in an exported graph of any size; the layer seeds it, so it is deterministic unless asked to redraw). Cost ``O(N (T + r*Q + G) D)``: linear in N.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from .._utils import check_qkv, is_exporting
from ..longformer._common import IntPair, check_grid, geometry
from ..longformer.torch_impl import local_global_attention


def grid_blocks(hw_shape: Sequence[int], window_size: IntPair = 7,
                block_size: Optional[IntPair] = None) -> Tuple[int, int]:
    """Number of query blocks ``(ny, nx)`` of an ``H x W`` grid (what :func:`bigbird_random_blocks` needs)."""
    g = geometry(hw_shape, window_size, block_size)
    return g.ny, g.nx


# The pattern is a hash of (seed, head, query block, Floyd step) in int64 arithmetic modulo the prime 2^31 - 1:
# every product of two residues stays below 2^62, and only +, *, floor division and remainder on non-negative
# integers are used (exactly what ONNX and both exporters express), so the pattern is one graph of the
# (possibly symbolic) number of blocks. ``bigbird_random_blocks_naive`` (naive.py) is the same rule in Python ints.
PRIME = 2147483647
MULTS = (1103515245, 1664525, 22695477, 69069)                        # seed, head, block, step
ROUNDS = ((12345, 48271), (1013904223, 16807), (2531011, 39373))


def _pow5(x: Tensor) -> Tensor:
    """``x^5 mod p``: a bijection of the residues (5 does not divide p - 1), the non-linear part of the mix."""
    x2 = x * x % PRIME
    return x2 * x2 % PRIME * x % PRIME


def pattern_hash(seed: int, head: Tensor, block: Tensor, step: Tensor) -> Tensor:
    """Pseudo-random residue in ``[0, p)`` of (seed, head, query block, step); broadcasts its tensor arguments."""
    x = (seed % PRIME) * MULTS[0] % PRIME + 1
    x = (head * MULTS[1] % PRIME + block * MULTS[2] % PRIME + step * MULTS[3] % PRIME + x) % PRIME
    for add, mult in ROUNDS:
        x = (_pow5(x) + add) % PRIME * mult % PRIME
    return x


def bigbird_random_blocks(num_blocks, num_random: int, num_heads: int = 1, seed: int = 0,
                          device=None, generator: Optional[torch.Generator] = None) -> Tensor:
    """BigBird's random key blocks, ``(num_heads, num_blocks, num_random)`` long: a deterministic function of
    (query block, number of blocks, head, seed) computed with tensor ops only.

    What the pattern satisfies (Zaheer et al. 2020, Sec. 2 and App. D: every query block attends to ``r`` random
    key blocks, drawn without replacement; the official ``bigbird_block_rand_mask`` draws them once per layer from
    a seed): for every head and query block ``i`` the ``r`` entries are distinct blocks other than ``i``, uniform
    among the ``num_blocks - 1`` others (Floyd's sampling without replacement, its random draws replaced by
    :func:`pattern_hash`; O(num_blocks * r^2), no ``num_blocks^2`` table). Where fewer than ``r`` other blocks
    exist, the missing slots are ``-1`` (empty: the op skips them), so the shape never depends on the grid.

    ``num_blocks`` may be a symbolic size while exporting: no Python branch, loop count or host sync depends on
    it (the loop runs ``r`` times). The same seed gives the same pattern on every device, in eager, in an exported
    graph and in :func:`~linattn_mm.ops.bigbird.naive.bigbird_random_blocks_naive`.

    Args:
        num_blocks: query blocks ``nblk = ny * nx`` (:func:`grid_blocks`).
        num_random: ``r``.
        num_heads: heads with their own pattern (1 = shared).
        seed: seed of the pattern.
        device: device of the result.
        generator: if given, the seed is drawn from it (a new pattern per call, for redrawing).
    """
    if isinstance(num_blocks, int) and num_blocks < 1 or num_random < 0 or num_heads < 1:
        raise ValueError(f'bigbird_random_blocks: need num_blocks >= 1, num_random >= 0, num_heads >= 1; got '
                         f'{num_blocks}, {num_random}, {num_heads}')
    if generator is not None:
        seed = int(torch.randint(0, PRIME, (), generator=generator))  # a CPU generator: no device sync
    block = torch.arange(num_blocks, device=device)[None, :]          # (1, nblk)
    head = torch.arange(num_heads, device=device)[:, None]            # (H, 1)
    last = torch.ones((), dtype=torch.long, device=device) * num_blocks - 2   # m - 1 (m = nblk - 1 candidates)
    chosen = []
    for s in range(num_random):   # Floyd: step j = m - r + s draws t in [0, j]; t taken already -> j
        j = last - (num_random - 1 - s)
        jc = j.clamp_min(0)
        t = pattern_hash(seed, head, block, jc) % (jc + 1)          # (H, nblk)
        taken = torch.zeros_like(t, dtype=torch.bool)
        for c in chosen:
            taken = taken | (c == t)
        t = torch.where(taken, jc.expand_as(t), t)
        chosen.append(torch.where(j >= 0, t, torch.full_like(t, -1)))  # j < 0: fewer than r other blocks
    if not chosen:
        return torch.empty(num_heads, block.shape[1], 0, dtype=torch.long, device=device)
    out = torch.stack(chosen, -1)                                     # candidates [0, m) ...
    return torch.where(out >= 0, out + (out >= block[..., None]).long(), out)  # ... skip the query's own block


def check_rand_blocks(rand_blocks: Tensor, num_heads: int, num_blocks, name: str) -> None:
    """Shape and dtype always; index values ``[-1, nblk)`` only for CPU tensors in eager (elsewhere the check
    would be a host sync or a data-dependent branch)."""
    if is_exporting():
        return
    if rand_blocks.dim() != 3 or rand_blocks.shape[0] not in (1, num_heads) or rand_blocks.shape[1] != num_blocks:
        raise ValueError(f'{name}: rand_blocks must be (H|1, nblk, r) = ({num_heads}|1, {num_blocks}, r), got '
                         f'{tuple(rand_blocks.shape)}; draw it with bigbird_random_blocks(nblk, r, H) where '
                         f'nblk = ny * nx from grid_blocks(hw_shape, window_size, block_size)')
    if rand_blocks.dtype != torch.long:
        raise ValueError(f'{name}: rand_blocks must be torch.long, got {rand_blocks.dtype}')
    if rand_blocks.device.type == 'cpu' and not torch.compiler.is_compiling() and rand_blocks.numel() and \
            (rand_blocks.min() < -1 or rand_blocks.max() >= num_blocks):
        raise ValueError(f'{name}: rand_blocks indices must lie in [0, {num_blocks}) (or be -1 for an empty slot)')


def bigbird_attention(q: Tensor, k: Tensor, v: Tensor, hw_shape: Sequence[int], rand_blocks: Tensor,
                      window_size: IntPair = 7, num_global: int = 0, key_padding_mask: Optional[Tensor] = None,
                      block_size: Optional[IntPair] = None, exact: bool = True, scale: Optional[float] = None,
                      return_global: bool = True, dropout_p: float = 0.) -> Tensor:
    """Window + global + random-block attention.

    Args:
        q, k: ``(B, H, G + N, D)``, ``G = num_global`` global tokens then the grid row-major; v: ``(B, H, G + N, Dv)``.
        hw_shape: grid ``(H, W)``.
        rand_blocks: ``(H|1, nblk, r)`` long: the random key blocks of every query block
            (:func:`bigbird_random_blocks`), ``nblk = ny * nx`` from :func:`grid_blocks`; ``-1`` = no block.
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
