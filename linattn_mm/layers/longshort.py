"""Long-Short Transformer attention (Zhu et al., NeurIPS 2021; official code NVIDIA/transformer-ls): a 2-D
sliding window (short term) plus a dynamic low-rank projection of keys and values (long term), with DualLN."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch.nn as nn
from torch import Tensor

from ..ops._utils import merge_heads
from ..ops.longformer._common import pair
from ..ops.longshort import longshort_attention
from .base import BaseAttention


class LongShortAttention(BaseAttention):
    """Long-short attention. Keys: ``qkv`` (or ``q`` + ``kv``), ``proj``, ``to_dynamic_projection``
    (``Linear(C, H*r)``), ``dual_ln_full`` (LN of the window keys / values) and ``dual_ln_dp`` (LN of the
    projected ones), named as in the official ImageNet code.

    The projection scores come from the layer input, ``P_h = softmax_tokens(X W_P)_h`` (``r`` rows per head), so the
    landmarks adapt to the image and any ``H x W`` works; padded tokens get zero projection weight.

    Args:
        window_size: window side ``w`` or ``(wy, wx)`` of the short-term attention.
        num_landmarks: rank ``r`` of the dynamic projection (``dp_rank`` in the official code).
        block_size: query block of the blocked window kernel (speed / memory only; default the window).
        exact: True = each token's own ``w x w`` window; False = the segment-level window (block + halo) of the
            paper's implementation.
        dual_ln: DualLN on (False: no LayerNorm on keys / values; the LN modules are then not created).
        scale: score scale, ``head_dims ** -0.5`` by default.
    """

    def __init__(self, embed_dims: int, num_heads: int = 8, qkv_bias: bool = True, attn_drop: float = 0.,
                 proj_drop: float = 0., qkv_layout: str = 'qkv', window_size: Union[int, Sequence[int]] = 7,
                 num_landmarks: int = 16, block_size: Optional[Union[int, Sequence[int]]] = None, exact: bool = True,
                 dual_ln: bool = True, scale: Optional[float] = None) -> None:
        super().__init__(embed_dims, num_heads, qkv_bias, attn_drop, proj_drop, qkv_layout)
        if num_landmarks < 1:
            raise ValueError(f'LongShortAttention: num_landmarks must be >= 1, got {num_landmarks}')
        self.window_size = pair(window_size, 'window_size')
        self.block_size = None if block_size is None else pair(block_size, 'block_size')
        self.num_landmarks = num_landmarks
        self.exact = exact
        self.dual_ln = dual_ln
        self.scale = scale
        self.to_dynamic_projection = nn.Linear(embed_dims, num_landmarks * num_heads)
        if dual_ln:
            self.dual_ln_full = nn.LayerNorm(embed_dims)
            self.dual_ln_dp = nn.LayerNorm(embed_dims)

    def forward(self, x: Tensor, hw_shape: Sequence[int], key_padding_mask: Optional[Tensor] = None) -> Tensor:
        hw = self.check_input(x, hw_shape, key_padding_mask)
        b, n, _ = x.shape
        q, k, v = (self.heads(t) for t in self.project_qkv(x))
        logits = self.to_dynamic_projection(x).view(b, n, self.num_heads, self.num_landmarks).permute(0, 2, 3, 1)
        ln = dict(short_ln=(self.dual_ln_full.weight, self.dual_ln_full.bias), ln_eps=self.dual_ln_full.eps,
                  long_ln=(self.dual_ln_dp.weight, self.dual_ln_dp.bias)) if self.dual_ln else {}
        out = longshort_attention(q, k, v, hw, logits, self.window_size, key_padding_mask, self.block_size,
                                  self.exact, self.dual_ln, scale=self.scale,
                                  dropout_p=self.attn_drop.p if self.training else 0., **ln)
        return self.project_out(merge_heads(out))

    def extra_repr(self) -> str:
        return super().extra_repr() + (f', window_size={self.window_size}, num_landmarks={self.num_landmarks}, '
                                       f'exact={self.exact}, dual_ln={self.dual_ln}')
