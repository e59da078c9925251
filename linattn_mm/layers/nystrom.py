"""Nystromformer attention (Xiong et al., AAAI 2021): landmark (segment-mean) Nystrom approximation of softmax,
with the paper's optional depthwise convolution skip on V, here in 2-D over the token grid."""
from __future__ import annotations

from typing import Optional, Sequence

import torch.nn as nn
from torch import Tensor

from ..ops._utils import merge_heads
from ..ops.nystrom import nystrom_attention
from .base import BaseAttention


class NystromAttention(BaseAttention):
    """Nystrom attention. Keys: ``qkv``, ``proj`` and, with ``conv_kernel``, ``conv`` (``(H, 1, k, k)``).

    The official skip is ``Conv2d(H, H, (k, 1), groups=H)`` over ``V`` seen as ``(B, H, N, D)``: one kernel per
    head, shared by the head's channels, sliding along the sequence. On images the same conv slides over the
    ``H x W`` grid with a ``k x k`` kernel.

    Args:
        num_landmarks: landmarks ``m`` (segment means of q and k).
        pinv_iters: iterations of the Moore-Penrose pseudo-inverse.
        conv_kernel: kernel side of the depthwise skip on V (None = no skip; the paper uses 33 on text).
    """

    def __init__(self, embed_dims: int, num_heads: int = 8, qkv_bias: bool = True, attn_drop: float = 0.,
                 proj_drop: float = 0., qkv_layout: str = 'qkv', num_landmarks: int = 64, pinv_iters: int = 6,
                 conv_kernel: Optional[int] = None) -> None:
        super().__init__(embed_dims, num_heads, qkv_bias, attn_drop, proj_drop, qkv_layout)
        self.num_landmarks = num_landmarks
        self.pinv_iters = pinv_iters
        self.conv_kernel = conv_kernel
        if conv_kernel:
            self.conv = nn.Conv2d(num_heads, num_heads, conv_kernel, padding=conv_kernel // 2, groups=num_heads,
                                  bias=False)

    def forward(self, x: Tensor, hw_shape: Sequence[int], key_padding_mask: Optional[Tensor] = None) -> Tensor:
        h, w = self.check_input(x, hw_shape, key_padding_mask)
        q, k, v = self.project_qkv(x)
        qh, kh, vh = self.heads(q), self.heads(k), self.heads(v)
        out = nystrom_attention(qh, kh, vh, num_landmarks=self.num_landmarks, pinv_iters=self.pinv_iters,
                                key_padding_mask=key_padding_mask)
        out = merge_heads(out)
        if self.conv_kernel:
            b, n, c = x.shape
            d = self.head_dims
            vm = self.to_map(v, (h, w), key_padding_mask)              # (B, C, H, W), padding zeroed
            vm = vm.view(b, self.num_heads, d, h, w).transpose(1, 2).reshape(b * d, self.num_heads, h, w)
            skip = self.conv(vm).view(b, d, self.num_heads, n).permute(0, 3, 2, 1).reshape(b, n, c)
            out = out + skip
        return self.project_out(out)

    def extra_repr(self) -> str:
        return super().extra_repr() + (f', num_landmarks={self.num_landmarks}, pinv_iters={self.pinv_iters}, '
                                       f'conv_kernel={self.conv_kernel}')
