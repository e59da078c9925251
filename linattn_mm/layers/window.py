"""Swin window attention (Liu et al., ICCV 2021): softmax inside non-overlapping windows plus a learned
relative position bias, optionally on a cyclically shifted grid (SW-MSA).

Any ``H x W`` works: the grid is padded to a multiple of the window and the padded tokens are *masked* as keys
(official Swin lets zero-padded tokens take part; here padding never leaks). The shifted-window mask is the
Swin one, built on the padded grid, applied as an exact mask instead of the ``-100`` logit offset.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..ops.softmax import softmax_attention
from ..ops._utils import crop_hw, is_exporting
from .base import BaseAttention


def _pair(v: Union[int, Sequence[int]]) -> Tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def relative_position_index(wh: int, ww: int) -> Tensor:
    """``(wh*ww, wh*ww)`` index into the ``(2wh-1)(2ww-1)`` bias table (Swin's formula)."""
    coords = torch.stack(torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing='ij')).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
    return (rel[..., 0] + wh - 1) * (2 * ww - 1) + (rel[..., 1] + ww - 1)


def window_partition(x: Tensor, wh: int, ww: int) -> Tensor:
    """``(B, Hp, Wp, C)`` -> ``(B * nW, wh * ww, C)``, windows in row-major order."""
    b, hp, wp, c = x.shape
    x = x.view(b, hp // wh, wh, wp // ww, ww, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, wh * ww, c)


def window_reverse(w: Tensor, wh: int, ww: int, hp: int, wp: int) -> Tensor:
    """Inverse of :func:`window_partition`: ``(B * nW, wh * ww, C)`` -> ``(B, Hp, Wp, C)``."""
    c = w.shape[-1]
    x = w.view(-1, hp // wh, wp // ww, wh, ww, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, hp, wp, c)


def shift_region_ids(hp: int, wp: int, wh: int, ww: int, sh: int, sw: int, device=None) -> Tensor:
    """Swin's region labels of the rolled grid, ``(Hp, Wp)`` long: tokens may attend only within a label.

    Rows ``[0, Hp - wh)``, ``[Hp - wh, Hp - sh)``, ``[Hp - sh, Hp)`` (and the same for columns) are Swin's
    regions; written with comparisons on ``arange`` rather than slice assignment, so it stays one graph
    for symbolic ``Hp, Wp`` when exported.
    """
    def bands(size: int, win: int, shift: int) -> Tensor:
        i = torch.arange(size, device=device)
        band = (i >= size - win).long()
        return band + (i >= size - shift).long() if shift > 0 else band

    return bands(hp, wh, sh)[:, None] * 3 + bands(wp, ww, sw)[None, :]


class WindowAttention(BaseAttention):
    """(Shifted) window softmax attention with relative position bias.

    Parameter names follow Swin / InLine-Swin / FLatten-Swin: ``qkv``, ``proj``,
    ``relative_position_bias_table`` (``(2wh-1)(2ww-1), H``); ``relative_position_index`` is a
    non-persistent buffer (as in timm), so drop it from official checkpoints when loading strictly.

    Args:
        window_size: window side (int) or ``(wh, ww)``.
        shift_size: cyclic shift (int or pair); 0 = W-MSA, ``window_size // 2`` = SW-MSA.
        scale: logit scale, ``head_dims ** -0.5`` by default.
    """

    def __init__(self, embed_dims: int, num_heads: int = 8, qkv_bias: bool = True, attn_drop: float = 0.,
                 proj_drop: float = 0., qkv_layout: str = 'qkv', window_size: Union[int, Sequence[int]] = 7,
                 shift_size: Union[int, Sequence[int]] = 0, scale: Optional[float] = None) -> None:
        super().__init__(embed_dims, num_heads, qkv_bias, attn_drop, proj_drop, qkv_layout)
        self.window_size = _pair(window_size)
        self.shift_size = _pair(shift_size)
        for s, w in zip(self.shift_size, self.window_size):
            if not 0 <= s < w:
                raise ValueError(f'WindowAttention: shift_size {self.shift_size} must be in [0, window_size '
                                 f'{self.window_size})')
        self.scale = scale
        wh, ww = self.window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * wh - 1) * (2 * ww - 1), num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=.02)
        self.register_buffer('relative_position_index', relative_position_index(wh, ww), persistent=False)
        # shifted-window region masks by (B, Hp, Wp, shift, device), a few recent sizes: built once per size, as
        # timm keeps its ``attn_mask`` buffer (ours follows the input size). Not state: not in the state_dict.
        self._region_masks: 'OrderedDict[tuple, Tensor]' = OrderedDict()

    MASK_CACHE_SIZE = 8

    def region_mask(self, b: int, hp: int, wp: int, sh: int, sw: int, device) -> Tensor:
        """``(B * nW, 1, n, n)`` bool, True = the key lies in another Swin region than the query (masked) on the
        rolled ``Hp x Wp`` grid. Cached per size in eager mode; built in the graph when compiling or exporting
        (symbolic sizes)."""
        wh, ww = self.window_size
        cache = not (is_exporting() or torch.compiler.is_compiling())
        key = (b, hp, wp, sh, sw, device)
        if cache and key in self._region_masks:
            self._region_masks.move_to_end(key)
            return self._region_masks[key]
        ids = window_partition(shift_region_ids(hp, wp, wh, ww, sh, sw, device)[None, ..., None], wh, ww)
        other = ids[:, :, None, 0] != ids[:, None, :, 0]           # (nW, n, n) True = other region
        other = other.repeat(b, 1, 1)[:, None]                     # (B*nW, 1, n, n)
        if cache:
            self._region_masks[key] = other
            if len(self._region_masks) > self.MASK_CACHE_SIZE:   # one added at a time: one out
                self._region_masks.popitem(last=False)
        return other

    def relative_position_bias(self) -> Tensor:
        """``(H, wh*ww, wh*ww)`` bias added to every window's logits."""
        n = self.window_size[0] * self.window_size[1]
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, -1).permute(2, 0, 1)

    def forward(self, x: Tensor, hw_shape: Sequence[int], key_padding_mask: Optional[Tensor] = None) -> Tensor:
        h, w = self.check_input(x, hw_shape, key_padding_mask)
        b, n, c = x.shape
        wh, ww = self.window_size
        sh, sw = self.shift_size
        # ceil without negative operands: ONNX integer division truncates, Python's floors
        hp, wp = (h + wh - 1) // wh * wh, (w + ww - 1) // ww * ww
        # nothing to mask: keep SDPA's fast path. Exporting or compiling: always pad (maybe by 0) and mask, since
        # a branch on whether the grid fits whole windows is a guard that torch.compile re-specialises at every
        # size (one graph per size) and torch.export freezes
        symbolic = is_exporting() or torch.compiler.is_compiling()
        padded = symbolic or hp != h or wp != w
        use_mask = padded or key_padding_mask is not None
        pad = None
        if use_mask:
            # padding map: user padding + the window padding, rolled and partitioned exactly like the tokens
            pad = torch.zeros(b, h, w, dtype=torch.bool, device=x.device) if key_padding_mask is None \
                else key_padding_mask.view(b, h, w)
            pad = F.pad(pad, (0, wp - w, 0, hp - h), value=True)
        # one fused projection when the layout has it (no split + concatenate)
        qkv = (self.qkv(x) if self.qkv_layout == 'qkv' else torch.cat(self.project_qkv(x), -1)).view(b, h, w, 3 * c)
        if padded:
            qkv = F.pad(qkv, (0, 0, 0, wp - w, 0, hp - h))
        if (sh or sw) and is_exporting():
            # whether the grid fits one window (then no shift, as Swin does) depends on the size: compute both
            # and select, so the exported graph follows the eager rule at every size
            fits = (torch.ones((), device=x.device) * h <= wh) & (torch.ones((), device=x.device) * w <= ww)
            out = torch.where(fits, self._attend(qkv, pad, 0, 0, use_mask),
                              self._attend(qkv, pad, sh, sw, use_mask))
        else:
            if (sh or sw) and h <= wh and w <= ww:
                # one window holds the whole grid: shifting would only cut it apart (as Swin does). Compiled,
                # this is one guard (h <= wh) for shifted blocks only: a graph per side of it, not per size
                sh = sw = 0
            out = self._attend(qkv, pad, sh, sw, use_mask)
        out = crop_hw(out, h, w, dims=(1, 2), gather=symbolic).reshape(b, n, c)
        return self.project_out(out)

    def _attend(self, qkv: Tensor, pad: Optional[Tensor], sh: int, sw: int, use_mask: bool) -> Tensor:
        """Window softmax on the padded grid: qkv ``(B, Hp, Wp, 3C)``, pad ``(B, Hp, Wp)`` (None: nothing to
        mask) -> ``(B, Hp, Wp, C)``."""
        b, hp, wp, c3 = qkv.shape
        c = c3 // 3
        wh, ww = self.window_size
        if sh or sw:
            qkv = torch.roll(qkv, (-sh, -sw), dims=(1, 2))
            if pad is not None:
                pad = torch.roll(pad, (-sh, -sw), dims=(1, 2))
        windows = window_partition(qkv, wh, ww)                        # (B*nW, wh*ww, 3C)
        kpm = window_partition(pad[..., None], wh, ww)[..., 0] if pad is not None else None  # (B*nW, wh*ww)
        q, k, v = (self.heads(t) for t in windows.chunk(3, dim=-1))     # (B*nW, H, wh*ww, D)
        attn_mask = self.relative_position_bias().unsqueeze(0).to(q.dtype)  # (1, H, n, n)
        if sh or sw:
            attn_mask = attn_mask.masked_fill(self.region_mask(b, hp, wp, sh, sw, qkv.device), float('-inf'))
        p = self.attn_drop.p if self.training else 0.
        out = softmax_attention(q, k, v, key_padding_mask=kpm, attn_mask=attn_mask, scale=self.scale,
                                dropout_p=p)
        out = out.transpose(1, 2).reshape(-1, wh * ww, c)
        out = window_reverse(out, wh, ww, hp, wp)
        if sh or sw:
            out = torch.roll(out, (sh, sw), dims=(1, 2))
        return out

    def extra_repr(self) -> str:
        return super().extra_repr() + f', window_size={self.window_size}, shift_size={self.shift_size}'
