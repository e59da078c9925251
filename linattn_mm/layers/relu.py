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
        if self.scales:
            q, k, v = self._multiscale_qkv(x, hw, key_padding_mask)
        else:
            qkv = self.qkv(x) if self.qkv_layout == 'qkv' else torch.cat(self.project_qkv(x), -1)  # (B, N, 3C)
            q, k, v = qkv.view(b, n, 3, self.num_heads, d).permute(2, 0, 3, 1, 4).unbind(0)  # views, no copy
        out = relu_linear_attention(q, k, v, key_padding_mask=key_padding_mask)
        return self.project_out(merge_heads(out))

    def _multiscale_qkv(self, x: Tensor, hw: Sequence[int], key_padding_mask: Optional[Tensor]):
        """q/k/v ``(B, (1 + S) heads, N, D)`` of every scale, in the channels-first layout the convs want.

        The q/k/v projection writes ``(B, 3C, N)`` directly (one bmm, the token layout read through BLAS's
        transpose flag), so no ``(N, 3C) -> (3C, N)`` copy is made (on CPU a strided transpose of the whole map
        costs as much as the attention). The maps of every scale are stacked q/k/v-major, so q, k and v
        are views with N contiguous, heads scale-major (as EfficientViT concatenates them).
        """
        b, n, c = x.shape
        d = c // self.num_heads
        if self.qkv_layout == 'qkv':
            w = self.qkv.weight.expand(b, -1, -1)
            xt = x.transpose(1, 2)
            fmap = torch.bmm(w, xt) if self.qkv.bias is None else torch.baddbmm(self.qkv.bias[:, None], w, xt)
        else:
            fmap = torch.cat(self.project_qkv(x), -1).transpose(1, 2).contiguous()   # (B, 3C, N)
        if key_padding_mask is not None:   # padded tokens zeroed before the convs (so they cannot leak)
            fmap = fmap.masked_fill(key_padding_mask[:, None, :], 0.)
        maps = [fmap.view(b, 3, c, n)]
        fmap2d = fmap.view(b, 3 * c, hw[0], hw[1])
        maps += [op(fmap2d).view(b, 3, c, n) for op in self.aggreg]
        qkv = torch.cat(maps, 2).view(b, 3, -1, d, n).transpose(-1, -2)          # (B, 3, heads, N, D)
        return qkv.unbind(1)

    def extra_repr(self) -> str:
        return super().extra_repr() + f', scales={self.scales}'
