"""Performer FAVOR+ attention (Choromanski et al., ICLR 2021): positive orthogonal random features."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor

from ..ops._utils import merge_heads
from ..ops.performer import orthogonal_random_features, performer_attention
from .base import BaseAttention


class PerformerAttention(BaseAttention):
    """FAVOR+ softmax-kernel approximation with ``num_features`` orthogonal random features.

    The features live in the buffer ``features`` (saved in checkpoints, so eval is reproducible). They are drawn
    from a private generator seeded with ``seed``; with ``redraw=True`` a fresh draw replaces them at every
    training forward (the paper's redrawing, which keeps the estimator unbiased over training), while eval
    always uses the last draw. Keys: ``qkv``, ``proj``, buffer ``features``.

    Args:
        num_features: random features ``M``; default ``int(D * ln D)`` as in the paper (at least ``D``).
        redraw: redraw the features at every training forward.
        seed: seed of the layer's generator.
    """

    def __init__(self, embed_dims: int, num_heads: int = 8, qkv_bias: bool = True, attn_drop: float = 0.,
                 proj_drop: float = 0., qkv_layout: str = 'qkv', num_features: Optional[int] = None,
                 redraw: bool = False, seed: int = 0) -> None:
        super().__init__(embed_dims, num_heads, qkv_bias, attn_drop, proj_drop, qkv_layout)
        d = self.head_dims
        self.num_features = int(num_features) if num_features else max(d, int(d * math.log(max(d, 2))))
        self.redraw = redraw
        self.seed = seed
        self._generator = torch.Generator().manual_seed(seed)
        self.register_buffer('features', self._draw())

    def _draw(self, device=None, dtype=None) -> Tensor:
        feats = orthogonal_random_features(self.num_features, self.head_dims, generator=self._generator)
        return feats.to(device=device, dtype=dtype or torch.get_default_dtype())

    @torch.no_grad()
    def redraw_features(self) -> None:
        """Draw a new set of random features in place."""
        self.features.copy_(self._draw(self.features.device, self.features.dtype))

    def forward(self, x: Tensor, hw_shape: Sequence[int], key_padding_mask: Optional[Tensor] = None) -> Tensor:
        self.check_input(x, hw_shape, key_padding_mask)
        if self.redraw and self.training:
            self.redraw_features()
        q, k, v = (self.heads(t) for t in self.project_qkv(x))
        out = performer_attention(q, k, v, self.features.to(q.dtype), key_padding_mask=key_padding_mask)
        return self.project_out(merge_heads(out))

    def extra_repr(self) -> str:
        return super().extra_repr() + f', num_features={self.num_features}, redraw={self.redraw}'
