"""Linear attention with the ``elu(x) + 1`` feature map (Katharopoulos et al., ICML 2020)."""
from __future__ import annotations

from typing import Optional, Sequence

from torch import Tensor

from ..ops._utils import merge_heads
from ..ops.linear import linear_attention
from .base import BaseAttention


class LinearAttention(BaseAttention):
    """``phi(Q) (phi(K)^T V) / (phi(Q) sum_j phi(K_j))``, ``phi = elu + 1``. Keys: ``qkv``, ``proj``.

    Args:
        eps: added to the normaliser.
    """

    def __init__(self, embed_dims: int, num_heads: int = 8, qkv_bias: bool = True, attn_drop: float = 0.,
                 proj_drop: float = 0., qkv_layout: str = 'qkv', eps: float = 1e-6) -> None:
        super().__init__(embed_dims, num_heads, qkv_bias, attn_drop, proj_drop, qkv_layout)
        self.eps = eps

    def forward(self, x: Tensor, hw_shape: Sequence[int], key_padding_mask: Optional[Tensor] = None) -> Tensor:
        self.check_input(x, hw_shape, key_padding_mask)
        q, k, v = (self.heads(t) for t in self.project_qkv(x))
        out = linear_attention(q, k, v, key_padding_mask=key_padding_mask, eps=self.eps)
        return self.project_out(merge_heads(out))
