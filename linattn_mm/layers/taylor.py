"""TaylorShift attention (Nauen et al., ICPR 2024): softmax replaced by its 2nd-order Taylor expansion
``1 + x + x^2 / 2`` of normalised, temperature-scaled logits, computed directly (O(N^2 d)) for short sequences
and by the efficient O(N d^3) factorisation above the crossover ``N0`` (``mode='auto'``)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from ..ops._utils import merge_heads
from ..ops.taylor import taylor_attention
from .base import BaseAttention

MODES = ('auto', 'direct', 'efficient')


class TaylorShiftAttention(BaseAttention):
    """TaylorShift attention. Keys match tobna/TaylorShift: ``qkv``, ``proj``, ``temperature``.

    ``temperature`` is stored as ``(H,)``; official checkpoints hold it as ``(1, H, 1, 1)``: any shape with H
    elements is reshaped on load (``LinViT.convert_official`` does the same for the conversion tool). ``mode``,
    ``n0`` and ``output_normalized`` are plain attributes and may be changed on a built model
    (e.g. ``for m in model.modules(): m.n0 = 512`` after measuring the crossover on a device).

    Args:
        mode: ``'auto'`` (direct below ``n0`` tokens, efficient above), ``'direct'`` or ``'efficient'``.
        n0: crossover length for ``'auto'``; None = the op's default (``d^2 + d + 1``, the official ``N0``).
        output_normalized: the paper's output normalisation (values scaled by ``sqrt(d / N)``).
    """

    def __init__(self, embed_dims: int, num_heads: int = 8, qkv_bias: bool = True, attn_drop: float = 0.,
                 proj_drop: float = 0., qkv_layout: str = 'qkv', mode: str = 'auto', n0: Optional[int] = None,
                 output_normalized: bool = False) -> None:
        super().__init__(embed_dims, num_heads, qkv_bias, attn_drop, proj_drop, qkv_layout)
        if mode not in MODES:
            raise ValueError(f'TaylorShiftAttention: mode must be one of {MODES}, got {mode!r}')
        self.mode = mode
        self.n0 = n0
        self.output_normalized = output_normalized
        self.temperature = nn.Parameter(torch.ones(num_heads))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + 'temperature'
        t = state_dict.get(key)
        if t is not None and t.dim() != 1 and t.numel() == self.num_heads:  # official (1, H, 1, 1)
            state_dict[key] = t.reshape(-1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor, hw_shape: Sequence[int], key_padding_mask: Optional[Tensor] = None) -> Tensor:
        self.check_input(x, hw_shape, key_padding_mask)
        q, k, v = (self.heads(t) for t in self.project_qkv(x))
        out = taylor_attention(q, k, v, temperature=self.temperature.to(q.dtype), mode=self.mode, n0=self.n0,
                               output_normalized=self.output_normalized, key_padding_mask=key_padding_mask)
        return self.project_out(merge_heads(out))

    def extra_repr(self) -> str:
        return super().extra_repr() + (f', mode={self.mode!r}, n0={self.n0}, '
                                       f'output_normalized={self.output_normalized}')
