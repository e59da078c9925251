"""Vision Longformer attention (Zhang et al., "Multi-Scale Vision Longformer", ICCV 2021): a 2-D sliding window
plus a few learned global tokens, one joint softmax per query.

ViL prepends ``nglo`` learned global tokens to the patch tokens of a stage and carries them through the stage's
layers: a global token attends to all tokens, every token attends to its window and to the global tokens.
Layers of this library exchange only the ``(B, H*W, C)`` grid, so each layer owns its global tokens
(``global_tokens``, ``(G, C)``) and, with ``global_update=True`` (default), plays both of ViL's halves in one
layer: first the global tokens attend to every valid token (their ViL rows, dense ``G x (G + N)``) and are
updated residually through ``proj``; then every grid token attends to its window and to the *updated* global
tokens. Global information thus crosses the whole image in every layer at ``O(G N)`` extra cost. With
``global_update=False`` the layer is ViL's single pass, in which per-layer global tokens are learned
memory tokens (their keys and values do not depend on the image).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch import Tensor

from ..ops._utils import merge_heads
from ..ops.longformer import longformer_attention
from ..ops.longformer._common import pair
from ..ops.softmax import softmax_attention
from .base import BaseAttention


class LongformerAttention(BaseAttention):
    """2-D sliding-window attention with learned global tokens. Keys: ``qkv`` (or ``q`` + ``kv``), ``proj``,
    ``global_tokens``.

    Args:
        window_size: window side ``w`` or ``(wy, wx)``; every token sees a ``wy x wx`` neighbourhood (clipped at
            the borders). Any ``H x W`` works; the window need not divide it.
        num_global: learned global tokens ``G`` (ViL uses 1); 0 = pure sliding window.
        block_size: query block of the blocked kernel (speed / memory only; default the window).
        exact: True = each token's own window; False = the block-level window (block + halo) of ViL's
            sliding-chunk form.
        global_update: update the global tokens from the whole image before the grid attends to them (see the
            module docstring); False = ViL's single pass with static per-layer global tokens.
        scale: score scale, ``head_dims ** -0.5`` by default.
    """

    def __init__(self, embed_dims: int, num_heads: int = 8, qkv_bias: bool = True, attn_drop: float = 0.,
                 proj_drop: float = 0., qkv_layout: str = 'qkv', window_size: Union[int, Sequence[int]] = 7,
                 num_global: int = 1, block_size: Optional[Union[int, Sequence[int]]] = None, exact: bool = True,
                 global_update: bool = True, scale: Optional[float] = None) -> None:
        super().__init__(embed_dims, num_heads, qkv_bias, attn_drop, proj_drop, qkv_layout)
        if num_global < 0:
            raise ValueError(f'{type(self).__name__}: num_global must be >= 0, got {num_global}')
        self.window_size = pair(window_size, 'window_size')
        self.block_size = None if block_size is None else pair(block_size, 'block_size')
        self.num_global = num_global
        self.exact = exact
        self.global_update = global_update
        self.scale = scale
        if num_global:
            self.global_tokens = nn.Parameter(torch.zeros(num_global, embed_dims))
            nn.init.trunc_normal_(self.global_tokens, std=.02)

    def _dropout_p(self) -> float:
        return self.attn_drop.p if self.training else 0.

    def _global_qkv(self, x: Tensor, q: Tensor, k: Tensor, v: Tensor,
                    kpm: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
        """q, k, v of the global tokens, ``(B, G, C)`` each (after the update when ``global_update``)."""
        b = x.shape[0]
        g = self.global_tokens.to(x.dtype).unsqueeze(0).expand(b, -1, -1)
        qg, kg, vg = self.project_qkv(g)
        if not self.global_update:
            return qg, kg, vg
        kpm_all = None if kpm is None else torch.cat([kpm.new_zeros(b, self.num_global), kpm], 1)
        og = softmax_attention(self.heads(qg), self.heads(torch.cat([kg, k], 1)), self.heads(torch.cat([vg, v], 1)),
                               key_padding_mask=kpm_all, scale=self.scale, dropout_p=self._dropout_p())
        g = g + self.proj(merge_heads(og))
        return self.project_qkv(g)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, hw: Tuple[int, int], kpm: Optional[Tensor]) -> Tensor:
        """The op on ``[globals; grid]`` (heads split), grid rows only: ``(B, H, N, D)``."""
        return longformer_attention(q, k, v, hw, self.window_size, self.num_global, kpm, self.block_size, self.exact,
                                    self.scale, return_global=False, dropout_p=self._dropout_p())

    def forward(self, x: Tensor, hw_shape: Sequence[int], key_padding_mask: Optional[Tensor] = None) -> Tensor:
        hw = self.check_input(x, hw_shape, key_padding_mask)
        q, k, v = self.project_qkv(x)
        kpm = key_padding_mask
        if self.num_global:
            qg, kg, vg = self._global_qkv(x, q, k, v, key_padding_mask)
            q, k, v = torch.cat([qg, q], 1), torch.cat([kg, k], 1), torch.cat([vg, v], 1)
            if kpm is not None:
                kpm = torch.cat([kpm.new_zeros(x.shape[0], self.num_global), kpm], 1)
        out = self.attend(self.heads(q), self.heads(k), self.heads(v), hw, kpm)
        return self.project_out(merge_heads(out))

    def extra_repr(self) -> str:
        return super().extra_repr() + (f', window_size={self.window_size}, num_global={self.num_global}, '
                                       f'block_size={self.block_size}, exact={self.exact}, '
                                       f'global_update={self.global_update}')
