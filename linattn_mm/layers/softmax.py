"""Global multi-head softmax attention (ViT/DeiT), the quadratic baseline, through SDPA."""
from __future__ import annotations

from typing import Optional, Sequence

from torch import Tensor

from ..ops._utils import merge_heads
from ..ops.softmax import softmax_attention
from .base import BaseAttention


class SoftmaxAttention(BaseAttention):
    """``softmax(Q K^T / sqrt(D)) V`` over all ``H*W`` tokens (O(N^2)). Keys: ``qkv``, ``proj``.

    Args:
        scale: logit scale, ``head_dims ** -0.5`` by default.
    """

    def __init__(self, embed_dims: int, num_heads: int = 8, qkv_bias: bool = True, attn_drop: float = 0.,
                 proj_drop: float = 0., qkv_layout: str = 'qkv', scale: Optional[float] = None) -> None:
        super().__init__(embed_dims, num_heads, qkv_bias, attn_drop, proj_drop, qkv_layout)
        self.scale = scale

    def forward(self, x: Tensor, hw_shape: Sequence[int], key_padding_mask: Optional[Tensor] = None) -> Tensor:
        self.check_input(x, hw_shape, key_padding_mask)
        q, k, v = (self.heads(t) for t in self.project_qkv(x))
        p = self.attn_drop.p if self.training else 0.
        out = softmax_attention(q, k, v, key_padding_mask=key_padding_mask, scale=self.scale, dropout_p=p)
        return self.project_out(merge_heads(out))
