"""What every attention layer shares: input checks, q/k/v projection, head split, output projection.

The contract (see DESIGN.md): ``Layer(embed_dims, num_heads=8, qkv_bias=True, attn_drop=0., proj_drop=0.,
**method_options)`` and ``forward(x, hw_shape, key_padding_mask=None)`` with ``x`` ``(B, N, C)``,
``hw_shape = (H, W)``, ``N == H * W``, returning ``(B, N, C)``. ``key_padding_mask`` is ``(B, N)`` bool,
True = padding: padded tokens never influence valid tokens' outputs (their own outputs are unspecified).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..ops._utils import is_exporting, split_heads

QKV_LAYOUTS = ('qkv', 'q_kv')


class BaseAttention(nn.Module):
    """Base class: projections and checks; subclasses write ``forward`` in a few lines.

    Args:
        embed_dims: channels ``C``; must be divisible by ``num_heads``.
        num_heads: number of heads ``H``; head dims ``D = C // H``.
        qkv_bias: bias in the q/k/v projection.
        attn_drop: dropout on attention weights where the method has them (softmax, window, SRA); the
            linear methods never materialise weights and ignore it, as their official code does.
        proj_drop: dropout after the output projection.
        qkv_layout: ``'qkv'`` -> one ``qkv`` Linear (Swin, DeiT, timm); ``'q_kv'`` -> ``q`` and ``kv`` Linears
            (PVT and its InLine/FLatten variants), so official checkpoints load one to one.
    """

    def __init__(self, embed_dims: int, num_heads: int = 8, qkv_bias: bool = True, attn_drop: float = 0.,
                 proj_drop: float = 0., qkv_layout: str = 'qkv') -> None:
        super().__init__()
        if embed_dims % num_heads != 0:
            raise ValueError(f'{type(self).__name__}: embed_dims ({embed_dims}) must be divisible by '
                             f'num_heads ({num_heads})')
        if qkv_layout not in QKV_LAYOUTS:
            raise ValueError(f'{type(self).__name__}: qkv_layout must be one of {QKV_LAYOUTS}, got {qkv_layout!r}')
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.head_dims = embed_dims // num_heads
        self.qkv_layout = qkv_layout
        if qkv_layout == 'qkv':
            self.qkv = nn.Linear(embed_dims, embed_dims * 3, bias=qkv_bias)
        else:
            self.q = nn.Linear(embed_dims, embed_dims, bias=qkv_bias)
            self.kv = nn.Linear(embed_dims, embed_dims * 2, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(embed_dims, embed_dims)
        self.proj_drop = nn.Dropout(proj_drop) if proj_drop > 0 else nn.Identity()  # p=0 still costs an op

    # ----------------------------------------------------------------------------------------- helpers
    def check_input(self, x: Tensor, hw_shape: Sequence[int], key_padding_mask: Optional[Tensor]) -> Tuple[int, int]:
        """Validate ``x`` ``(B, N, C)``, ``hw_shape`` and the mask; return ``(H, W)``."""
        name = type(self).__name__
        if x.dim() != 3 or x.shape[-1] != self.embed_dims:
            raise ValueError(f'{name}: x must be (B, N, C={self.embed_dims}), got {tuple(x.shape)}')
        if len(hw_shape) != 2:
            raise ValueError(f'{name}: hw_shape must be (H, W), got {hw_shape!r}')
        if is_exporting():  # symbolic sizes: int() would freeze them at the example's values
            return hw_shape[0], hw_shape[1]
        h, w = int(hw_shape[0]), int(hw_shape[1])
        if h * w != x.shape[1]:
            raise ValueError(f'{name}: x has N={x.shape[1]} tokens but hw_shape={tuple(hw_shape)} gives '
                             f'H*W={h * w}; pass the token grid the sequence was flattened from')
        if key_padding_mask is not None:
            if key_padding_mask.shape != x.shape[:2] or key_padding_mask.dtype != torch.bool:
                raise ValueError(f'{name}: key_padding_mask must be bool (B, N)={tuple(x.shape[:2])} '
                                 f'(True = padding), got {key_padding_mask.dtype} {tuple(key_padding_mask.shape)}')
        return h, w

    def project_qkv(self, x: Tensor, kv_x: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor]:
        """``(B, N, C)`` -> q, k, v each ``(B, N, C)``; keys/values from ``kv_x`` when given (SRA)."""
        if self.qkv_layout == 'q_kv':
            q = self.q(x)
            k, v = self.kv(x if kv_x is None else kv_x).chunk(2, dim=-1)
            return q, k, v
        if kv_x is None:
            return self.qkv(x).chunk(3, dim=-1)
        w_q, w_kv = self.qkv.weight.split([self.embed_dims, 2 * self.embed_dims])
        b_q, b_kv = (None, None) if self.qkv.bias is None else self.qkv.bias.split(
            [self.embed_dims, 2 * self.embed_dims])
        k, v = F.linear(kv_x, w_kv, b_kv).chunk(2, dim=-1)
        return F.linear(x, w_q, b_q), k, v

    def heads(self, t: Tensor) -> Tensor:
        """``(B, N, C)`` -> ``(B, H, N, D)``."""
        return split_heads(t, self.num_heads)

    def project_out(self, x: Tensor) -> Tensor:
        """``(B, N, C)`` -> output projection and dropout."""
        return self.proj_drop(self.proj(x))

    @staticmethod
    def to_map(t: Tensor, hw: Tuple[int, int], key_padding_mask: Optional[Tensor] = None) -> Tensor:
        """``(B, N, C)`` tokens -> ``(B, C, H, W)`` map with padded tokens zeroed (so convs cannot leak them)."""
        if key_padding_mask is not None:
            t = t.masked_fill(key_padding_mask[..., None], 0.)
        b, n, c = t.shape
        return t.transpose(1, 2).reshape(b, c, hw[0], hw[1])

    @staticmethod
    def masked_token_mean(x: Tensor, key_padding_mask: Optional[Tensor]) -> Tensor:
        """Mean over valid tokens: ``(B, N, C)`` -> ``(B, C)``."""
        if key_padding_mask is None:
            return x.mean(1)
        keep = (~key_padding_mask).to(x.dtype)[..., None]
        return (x * keep).sum(1) / keep.sum(1).clamp_min(1.)

    def extra_repr(self) -> str:
        return f'embed_dims={self.embed_dims}, num_heads={self.num_heads}, qkv_layout={self.qkv_layout!r}'
