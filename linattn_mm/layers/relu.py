"""ReLU linear attention (EfficientViT's lightweight multi-scale attention, Cai et al., ICCV 2023).

``out_i = relu(q_i) (sum_j relu(k_j)^T v_j) / (relu(q_i) . sum_j relu(k_j))``. With ``scales`` the q/k/v map is
also aggregated by depthwise ``k x k`` + grouped 1x1 convs per scale (EfficientViT's ``aggreg``); each scale
adds ``num_heads`` heads, and ``proj`` maps the concatenation back to ``C``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from ..ops._utils import merge_heads
from ..ops.relu import relu_linear_attention
from .base import BaseAttention


class ReLULinearAttention(BaseAttention):
    """ReLU linear attention, optionally multi-scale. Keys: ``qkv``, ``aggreg.{i}.{0,1}``, ``proj``.

    Args:
        scales: kernel sizes of the multi-scale aggregation (EfficientViT uses ``(5,)``); empty = plain.
    """

    def __init__(self, embed_dims: int, num_heads: int = 8, qkv_bias: bool = True, attn_drop: float = 0.,
                 proj_drop: float = 0., qkv_layout: str = 'qkv', scales: Sequence[int] = ()) -> None:
        super().__init__(embed_dims, num_heads, qkv_bias, attn_drop, proj_drop, qkv_layout)
        self.scales = tuple(int(s) for s in scales)
        c3 = 3 * embed_dims
        self.aggreg = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c3, c3, s, padding=s // 2, groups=c3, bias=False),
                          nn.Conv2d(c3, c3, 1, groups=3 * num_heads, bias=False))
            for s in self.scales)
        if self.scales:
            self.proj = nn.Linear(embed_dims * (1 + len(self.scales)), embed_dims)

    def forward(self, x: Tensor, hw_shape: Sequence[int], key_padding_mask: Optional[Tensor] = None) -> Tensor:
        hw = self.check_input(x, hw_shape, key_padding_mask)
        b, n, c = x.shape
        d = c // self.num_heads
        qkv = self.qkv(x) if self.qkv_layout == 'qkv' else torch.cat(self.project_qkv(x), -1)  # (B, N, 3C)
        if self.scales:
            fmap = self.to_map(qkv, hw, key_padding_mask)              # padded tokens zeroed before the convs
            maps = torch.cat([fmap] + [op(fmap) for op in self.aggreg], 1)   # (B, (1 + S) 3C, H, W)
            # every scale contributes its own heads: channels (scale, q/k/v, head, d) -> q/k/v with H (1 + S)
            # heads, scale-major; one copy into the (B, heads, N, D) layout of the matmuls
            t = maps.view(b, 1 + len(self.scales), 3, self.num_heads, d, n).permute(2, 0, 1, 3, 5, 4)
            q, k, v = t.reshape(3, b, -1, n, d).unbind(0)
        else:
            q, k, v = qkv.view(b, n, 3, self.num_heads, d).permute(2, 0, 3, 1, 4).unbind(0)  # views, no copy
        out = relu_linear_attention(q, k, v, key_padding_mask=key_padding_mask)
        return self.project_out(merge_heads(out))

    def extra_repr(self) -> str:
        return super().extra_repr() + f', scales={self.scales}'
