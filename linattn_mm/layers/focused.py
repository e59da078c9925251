"""Focused linear attention (FLatten, Han et al., ICCV 2023).

``phi_p(x) = ||x'|| * x'^p / ||x'^p||`` with ``x' = (relu(x) + 1e-6) / softplus(scale)``, taken over all
C channels before the head split as in the official code: a focusing function that sharpens
the attention distribution while keeping linear cost, plus a depthwise conv on V (``dwc``) that restores the
feature diversity (rank) a low-rank linear attention loses. Parameter names follow the official code
(LeapLabTHU/FLatten-Transformer): ``qkv`` (Swin) or ``q`` + ``kv`` (PVT), ``proj``, ``dwc`` (one
``head_dims``-channel depthwise conv shared by all heads), ``scale`` (``(1, 1, C)``, softplus-ed) and, with
``pos_hw``, ``positional_encoding`` (``(1, h0*w0, C)``, added to k; resized bilinearly to other grids).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..ops._utils import merge_heads
from ..ops._kernelized import kernelized_attention
from ..ops.focused.torch_impl import KERNEL_EPS, focusing_function
from .base import BaseAttention


class FocusedLinearAttention(BaseAttention):
    """FLatten focused linear attention with the depthwise-conv term on V.

    Args:
        focusing_factor: the power ``p`` of the focusing function (3 in the paper).
        kernel_size: side of the depthwise conv on V (5 in the paper).
        pos_hw: if given, a learned positional encoding on this reference grid is added to k (official
            FLatten-PVT/Swin); None = no positional encoding.
    """

    def __init__(self, embed_dims: int, num_heads: int = 8, qkv_bias: bool = True, attn_drop: float = 0.,
                 proj_drop: float = 0., qkv_layout: str = 'qkv', focusing_factor: float = 3,
                 kernel_size: int = 5, pos_hw: Optional[Union[int, Sequence[int]]] = None) -> None:
        super().__init__(embed_dims, num_heads, qkv_bias, attn_drop, proj_drop, qkv_layout)
        self.focusing_factor = focusing_factor
        self.kernel_size = kernel_size
        d = self.head_dims
        self.dwc = nn.Conv2d(d, d, kernel_size=kernel_size, groups=d, padding=kernel_size // 2)
        self.scale = nn.Parameter(torch.zeros(1, 1, embed_dims))
        self.pos_hw = None if pos_hw is None else \
            ((int(pos_hw), int(pos_hw)) if isinstance(pos_hw, int) else (int(pos_hw[0]), int(pos_hw[1])))
        if self.pos_hw is not None:
            self.positional_encoding = nn.Parameter(torch.zeros(1, self.pos_hw[0] * self.pos_hw[1], embed_dims))

    def _pos(self, hw) -> Tensor:
        pe = self.positional_encoding
        if tuple(hw) == self.pos_hw:
            return pe
        grid = pe.transpose(1, 2).reshape(1, self.embed_dims, *self.pos_hw)
        return F.interpolate(grid, size=tuple(hw), mode='bilinear', align_corners=False).flatten(2).transpose(1, 2)

    def forward(self, x: Tensor, hw_shape: Sequence[int], key_padding_mask: Optional[Tensor] = None) -> Tensor:
        hw = self.check_input(x, hw_shape, key_padding_mask)
        b, n, c = x.shape
        q, k, v = self.project_qkv(x)
        if self.pos_hw is not None:
            k = k + self._pos(hw)
        # as the official code: (relu(x) + 1e-6) / softplus(scale), then the focusing function over all C
        # channels (before the head split), then normalised linear attention per head
        s = F.softplus(self.scale)
        phi_q, phi_k = (focusing_function((F.relu(t) + KERNEL_EPS) / s, self.focusing_factor) for t in (q, k))
        out = kernelized_attention(self.heads(phi_q), self.heads(phi_k), self.heads(v), key_padding_mask,
                                   eps=1e-6, out_dtype=v.dtype)
        vmap = self.to_map(v, hw, key_padding_mask)                                 # (B, C, H, W)
        vmap = vmap.reshape(b * self.num_heads, self.head_dims, hw[0], hw[1])
        local = self.dwc(vmap).reshape(b, c, n).transpose(1, 2)
        return self.project_out(merge_heads(out) + local)

    def extra_repr(self) -> str:
        return super().extra_repr() + f', focusing_factor={self.focusing_factor}, kernel_size={self.kernel_size}'
