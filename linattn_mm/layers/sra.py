"""Spatial-reduction attention (PVT, Wang et al., ICCV 2021; PVTv2 'linear' SRA, CVMJ 2022).

Keys/values come from a reduced map: a ``sr_ratio`` x ``sr_ratio`` strided conv + LayerNorm (PVTv1/v2), or,
with ``linear=True``, adaptive average pooling to ``pool_size`` + 1x1 conv + LayerNorm + GELU (PVTv2-li).
``sr_ratio=1`` (and not linear) is plain global softmax attention. Padded tokens are zeroed before the
reduction, and a reduced cell that saw only padding is itself masked as a key.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..ops._utils import is_exporting, merge_heads, pad_amount
from ..ops.softmax import softmax_attention
from .base import BaseAttention


class SRAttention(BaseAttention):
    """PVT spatial-reduction attention. Keys match PVT/PVTv2 checkpoints: ``q``, ``kv``, ``proj``, ``sr``,
    ``norm`` (``qkv_layout='q_kv'`` by default; ``pool``/``act`` hold no parameters).

    Args:
        sr_ratio: reduction ratio of the key/value map (1 = none).
        linear: PVTv2 linear SRA (pool to ``pool_size`` then 1x1 conv), independent of input size.
        pool_size: output side of the adaptive pooling when ``linear``.
        scale: logit scale, ``head_dims ** -0.5`` by default.
    """

    def __init__(self, embed_dims: int, num_heads: int = 8, qkv_bias: bool = True, attn_drop: float = 0.,
                 proj_drop: float = 0., qkv_layout: str = 'q_kv', sr_ratio: int = 1, linear: bool = False,
                 pool_size: int = 7, scale: Optional[float] = None) -> None:
        super().__init__(embed_dims, num_heads, qkv_bias, attn_drop, proj_drop, qkv_layout)
        self.sr_ratio = int(sr_ratio)
        self.linear = linear
        self.scale = scale
        self.pool_size = pool_size
        if linear:
            self.pool = nn.AdaptiveAvgPool2d(pool_size)
            self.sr = nn.Conv2d(embed_dims, embed_dims, kernel_size=1, stride=1)
            self.norm = nn.LayerNorm(embed_dims)
            self.act = nn.GELU()
        elif self.sr_ratio > 1:
            self.sr = nn.Conv2d(embed_dims, embed_dims, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(embed_dims)

    def reduce(self, x: Tensor, hw, key_padding_mask: Optional[Tensor]):
        """``(B, N, C)`` -> reduced tokens ``(B, M, C)`` and their padding mask ``(B, M)`` (or None)."""
        if not self.linear and self.sr_ratio == 1:
            return x, key_padding_mask
        fmap = self.to_map(x, hw, key_padding_mask)
        valid = None if key_padding_mask is None else \
            (~key_padding_mask).to(x.dtype).view(x.shape[0], 1, hw[0], hw[1])
        if self.linear:
            fmap = self.sr(self.pool(fmap))
            valid = None if valid is None else F.adaptive_max_pool2d(valid, self.pool_size)
        else:
            # pad to a multiple of sr_ratio (official PVT floors, dropping the last rows/cols as keys and
            # failing below sr_ratio); zeros carry no information, and every padded cell still covers a valid token
            r = self.sr_ratio
            ph, pw = pad_amount(hw[0], r), pad_amount(hw[1], r)  # no `%`: see ops._utils.pad_amount
            if is_exporting() or ph or pw:  # exporting: pad by a symbolic amount, no branch on it
                fmap = F.pad(fmap, (0, pw, 0, ph))
                valid = None if valid is None else F.pad(valid, (0, pw, 0, ph))
            fmap = self.sr(fmap)
            valid = None if valid is None else F.max_pool2d(valid, r, r)
        red = self.norm(fmap.flatten(2).transpose(1, 2))
        if self.linear:
            red = self.act(red)
        kpm = None if valid is None else valid.flatten(1) == 0
        return red, kpm

    def forward(self, x: Tensor, hw_shape: Sequence[int], key_padding_mask: Optional[Tensor] = None) -> Tensor:
        hw = self.check_input(x, hw_shape, key_padding_mask)
        kv_x, kv_mask = self.reduce(x, hw, key_padding_mask)
        q, k, v = (self.heads(t) for t in self.project_qkv(x, kv_x=kv_x))
        p = self.attn_drop.p if self.training else 0.
        out = softmax_attention(q, k, v, key_padding_mask=kv_mask, scale=self.scale, dropout_p=p)
        return self.project_out(merge_heads(out))

    def extra_repr(self) -> str:
        return super().extra_repr() + f', sr_ratio={self.sr_ratio}, linear={self.linear}'
