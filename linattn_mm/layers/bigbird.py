"""BigBird attention (Zaheer et al., "Big Bird: Transformers for Longer Sequences", NeurIPS 2020) on the token
grid: the Longformer layer (2-D window + learned global tokens, BigBird-ETC style) plus ``r`` random key blocks
per query block, in one softmax per query."""
from __future__ import annotations

import random
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ..ops._utils import is_exporting
from ..ops.bigbird import bigbird_attention, bigbird_random_blocks, grid_blocks
from .longformer import LongformerAttention


class BigBirdAttention(LongformerAttention):
    """Window + global + block-sparse random attention. Keys as :class:`LongformerAttention`.

    The random pattern (``(H, nblk, r)``, distinct blocks per head and query block, never the query's own) is a
    function of (query block, number of blocks, head, ``seed``) computed with tensor ops
    (:func:`~linattn_mm.ops.bigbird_random_blocks`), so by default every forward on the same grid uses the same
    pattern (deterministic, checkpoint- and ``with_cp``-safe, identical for every sample of a batch, and the same
    in an exported graph of any size). With ``redraw=True`` each training forward uses a fresh seed from the
    layer's own random stream (seeded once with ``seed``); eval always uses ``seed``.

    Args:
        num_random_blocks: random key blocks ``r`` per query block (3 in the paper).
        seed: seed of the pattern.
        redraw: draw a new pattern at every training forward.
        window_size, num_global, block_size, exact, global_update, scale: see :class:`LongformerAttention`;
            blocks (default: the window) are also the units of the random attention.
    """

    def __init__(self, embed_dims: int, num_heads: int = 8, qkv_bias: bool = True, attn_drop: float = 0.,
                 proj_drop: float = 0., qkv_layout: str = 'qkv', window_size: Union[int, Sequence[int]] = 7,
                 num_global: int = 1, block_size: Optional[Union[int, Sequence[int]]] = None, exact: bool = True,
                 global_update: bool = True, scale: Optional[float] = None, num_random_blocks: int = 3,
                 seed: int = 0, redraw: bool = False) -> None:
        super().__init__(embed_dims, num_heads, qkv_bias, attn_drop, proj_drop, qkv_layout, window_size, num_global,
                         block_size, exact, global_update, scale)
        if num_random_blocks < 0:
            raise ValueError(f'BigBirdAttention: num_random_blocks must be >= 0, got {num_random_blocks}')
        self.num_random_blocks = num_random_blocks
        self.seed = seed
        self.redraw = redraw
        self._rng = random.Random(seed)                                 # seeds of redrawn patterns
        self._patterns: Dict[Tuple[int, int, str], Tensor] = {}

    def random_blocks(self, hw: Tuple[int, int], device=None) -> Tensor:
        """The ``(H, nblk, r)`` pattern this forward uses on an ``H x W`` grid (``-1`` = empty slot)."""
        ny, nx = grid_blocks(hw, self.window_size, self.block_size)
        if self.redraw and self.training:
            return bigbird_random_blocks(ny * nx, self.num_random_blocks, self.num_heads,
                                         self._rng.randrange(2 ** 31 - 1), device)
        if is_exporting() or torch.compiler.is_compiling():   # symbolic sizes: computed in the graph
            return bigbird_random_blocks(ny * nx, self.num_random_blocks, self.num_heads, self.seed, device)
        key = (ny, nx, str(device))
        if key not in self._patterns:
            with torch.inference_mode(False):  # a normal tensor: a later training forward may save it
                self._patterns[key] = bigbird_random_blocks(ny * nx, self.num_random_blocks, self.num_heads,
                                                            self.seed, device)
        return self._patterns[key]

    def attend(self, q: Tensor, k: Tensor, v: Tensor, hw: Tuple[int, int], kpm: Optional[Tensor]) -> Tensor:
        return bigbird_attention(q, k, v, hw, self.random_blocks(hw, q.device), self.window_size, self.num_global,
                                 kpm, self.block_size, self.exact, self.scale, return_global=False,
                                 dropout_p=self._dropout_p())

    def extra_repr(self) -> str:
        return super().extra_repr() + (f', num_random_blocks={self.num_random_blocks}, seed={self.seed}, '
                                       f'redraw={self.redraw}')
