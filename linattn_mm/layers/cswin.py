"""Cross-shaped window attention with locally-enhanced positional encoding (CSWin; X. Dong et al., "CSWin
Transformer: A General Vision Transformer Backbone with Cross-Shaped Windows", CVPR 2022; github
microsoft/CSWin-Transformer), and its InLine variant (D. Han et al., NeurIPS 2024; github LeapLabTHU/InLine,
``models/inline_cswin.py``).

The channels (and heads) are split into two groups: the first attends inside vertical stripes (full height,
``split_size`` columns), the second inside horizontal stripes (``split_size`` rows, full width); their
outputs are concatenated before the output projection. With ``split_size=None`` a single group of all heads
attends over the whole map (the official last stage, and the official 'I' stages). Each group adds LePE, a
3x3 depthwise conv of V computed inside each stripe (``attns.{g}.get_v``):

    out_g = softmax(scale * Q_s K_s^T) V_s + DWConv3x3(V_s)        for every stripe s of group g

``inner='inline'`` replaces the stripe softmax by global InLine attention plus InLine's dynamic local term
(``attns.{g}.residual``, kernels generated from a token mean), exactly the official ``InLineAttention`` of
InLine-CSwin, whose ``la_split_size`` is always the whole map (its code only runs with one stripe).

Any ``H x W``: the map is zero-padded to whole stripes *symmetrically* (as CSWin's own detection /
segmentation backbone does) and cropped back. Unlike that code, padded tokens (and tokens flagged by
``key_padding_mask``) are masked out of the softmax, so they never change valid outputs; their values are
zero before the LePE conv, the same zeros the conv sees at a stripe border.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..ops._utils import is_exporting, merge_heads, split_heads
from ..ops.inline import inline_attention
from ..ops.softmax import softmax_attention
from .base import BaseAttention
from .window import window_partition, window_reverse

INNER = ('softmax', 'inline')


def shifted_local_term(weight: Tensor, vmap: Tensor) -> Tensor:
    """InLine's per-sample 3x3 depthwise conv as nine shifted products (the export form of
    :meth:`InLineAttention._local_term_shifted <linattn_mm.layers.inline.InLineAttention._local_term_shifted>`: a
    conv with a computed kernel and ``groups = B * C`` is refused by the TorchScript exporter and would fix B).

    Args:
        weight: ``(B, 9 C, 1)`` kernels ordered ``(C, 3, 3)``; vmap: ``(B, C, H, W)``.

    Returns:
        ``(B, H*W, C)``.
    """
    b, c, h, w = vmap.shape
    weight = weight.reshape(b, c, 9, 1, 1)
    vpad = F.pad(vmap, (1, 1, 1, 1))
    out = sum(weight[:, :, 3 * i + j] * vpad[:, :, i:i + h, j:j + w] for i in range(3) for j in range(3))
    return out.flatten(2).transpose(1, 2)


class _StripeGroup(nn.Module):
    """Parameters of one head group (official ``LePEAttention`` / ``InLineAttention``): ``get_v`` (LePE) and,
    for InLine, the kernel generator ``residual`` (``C_g -> C_g -> 9 C_g``, grouped by heads)."""

    def __init__(self, dims: int, num_heads: int, inner: str):
        super().__init__()
        self.get_v = nn.Conv2d(dims, dims, kernel_size=3, padding=1, groups=dims)
        if inner == 'inline':
            self.residual = nn.Sequential(nn.Conv1d(dims, dims, kernel_size=1, groups=num_heads), nn.GELU(),
                                          nn.Conv1d(dims, dims * 9, kernel_size=1, groups=num_heads))


class CSWinAttention(BaseAttention):
    """Cross-shaped stripe softmax (or global InLine) attention with LePE.

    Args:
        embed_dims, num_heads, qkv_bias, attn_drop, proj_drop, qkv_layout: the layer core (see
            :class:`BaseAttention`); keys ``qkv`` and ``proj`` as in CSWin's blocks.
        split_size: stripe width; None = one group over the whole map. Two groups need even ``num_heads``.
        inner: ``'softmax'`` (CSWin's ``LePEAttention``) or ``'inline'`` (InLine-CSwin's
            ``InLineAttention``; needs ``split_size=None``).
        scale: softmax logit scale, ``head_dims ** -0.5`` by default.

    ``forward(x, hw_shape, key_padding_mask=None, kernel_source=None)``: ``x`` ``(B, H*W, C)``;
    ``kernel_source`` ``(B, H*W, C)`` are the tokens whose (valid-token) mean generates the InLine local kernels,
    ``x`` by default; InLine-CSwin feeds the block input before ``norm1``.
    """

    def __init__(self, embed_dims: int, num_heads: int = 8, qkv_bias: bool = True, attn_drop: float = 0.,
                 proj_drop: float = 0., qkv_layout: str = 'qkv', split_size: Optional[int] = 7,
                 inner: str = 'softmax', scale: Optional[float] = None) -> None:
        super().__init__(embed_dims, num_heads, qkv_bias, attn_drop, proj_drop, qkv_layout)
        if inner not in INNER:
            raise ValueError(f'CSWinAttention: inner must be one of {INNER}, got {inner!r}')
        if split_size is not None:
            if int(split_size) < 1:
                raise ValueError(f'CSWinAttention: split_size must be >= 1 or None (whole map), got {split_size}')
            if inner == 'inline':
                raise ValueError("CSWinAttention: inner='inline' attends over the whole map (as InLine-CSwin); "
                                 'pass split_size=None')
            if num_heads % 2:
                raise ValueError(f'CSWinAttention: stripes split the heads into two groups, so num_heads '
                                 f'({num_heads}) must be even; or pass split_size=None (one global group)')
        self.split_size = None if split_size is None else int(split_size)
        self.inner = inner
        self.scale = scale
        groups = 1 if split_size is None else 2
        self.attns = nn.ModuleList([_StripeGroup(embed_dims // groups, num_heads // groups, inner)
                                    for _ in range(groups)])

    def stripe_shape(self, group: int, hw: Tuple[int, int]) -> Tuple[int, int]:
        """``(sh, sw)`` of the stripes of ``group`` on an ``H x W`` map (0: vertical, 1: horizontal)."""
        h, w = hw
        if self.split_size is None:
            return h, w
        if is_exporting():  # no clip (a branch on the symbolic size): padding to the stripe gives the same result
            return (h, self.split_size) if group == 0 else (self.split_size, w)
        # a stripe wider than the map is the whole map (same result as padding it, without the padding)
        return (h, min(self.split_size, w)) if group == 0 else (min(self.split_size, h), w)

    def forward(self, x: Tensor, hw_shape: Sequence[int], key_padding_mask: Optional[Tensor] = None,
                kernel_source: Optional[Tensor] = None) -> Tensor:
        hw = self.check_input(x, hw_shape, key_padding_mask)
        if kernel_source is not None and kernel_source.shape != x.shape:
            raise ValueError(f'CSWinAttention: kernel_source must have the shape of x {tuple(x.shape)}, '
                             f'got {tuple(kernel_source.shape)}')
        q, k, v = self.project_qkv(x)
        if key_padding_mask is not None:
            v = v.masked_fill(key_padding_mask[..., None], 0.)  # padded values never reach the convs
        src = x if kernel_source is None else kernel_source
        cg = self.embed_dims // len(self.attns)
        outs = []
        for g, group in enumerate(self.attns):
            sl = slice(g * cg, (g + 1) * cg)
            if self.inner == 'inline':
                outs.append(self._inline(group, q[..., sl], k[..., sl], v[..., sl], src[..., sl], hw,
                                         key_padding_mask))
            else:
                outs.append(self._stripes(group, q[..., sl], k[..., sl], v[..., sl], self.stripe_shape(g, hw),
                                          hw, key_padding_mask))
        return self.project_out(torch.cat(outs, -1) if len(outs) > 1 else outs[0])

    def _stripes(self, group: _StripeGroup, q: Tensor, k: Tensor, v: Tensor, stripe: Tuple[int, int],
                 hw: Tuple[int, int], key_padding_mask: Optional[Tensor]) -> Tensor:
        """Softmax + LePE inside ``(sh, sw)`` stripes of one group; ``(B, N, Cg)`` each -> ``(B, N, Cg)``."""
        (h, w), (sh, sw) = hw, stripe
        b, n, c = q.shape
        hp, wp = (h + sh - 1) // sh * sh, (w + sw - 1) // sw * sw  # ceil, no negative operands (ONNX)
        top, left = (hp - h) // 2, (wp - w) // 2           # symmetric padding, as CSWin's dense backbones
        pads = (left, wp - w - left, top, hp - h - top)
        qkv = F.pad(torch.cat([q, k, v], -1).view(b, h, w, 3 * c), (0, 0) + pads)
        windows = window_partition(qkv, sh, sw)            # (B*nS, sh*sw, 3Cg)
        kpm = None
        if key_padding_mask is not None or is_exporting() or hp != h or wp != w:  # exporting: always mask
            pad = torch.zeros(b, h, w, dtype=torch.bool, device=q.device) if key_padding_mask is None \
                else key_padding_mask.view(b, h, w)
            kpm = window_partition(F.pad(pad, pads, value=True)[..., None], sh, sw)[..., 0]
        heads = self.num_heads // len(self.attns)
        qs, ks, vs = (split_heads(t, heads) for t in windows.chunk(3, dim=-1))
        p = self.attn_drop.p if self.training else 0.
        out = merge_heads(softmax_attention(qs, ks, vs, key_padding_mask=kpm, scale=self.scale, dropout_p=p))
        vmap = windows[..., 2 * c:].transpose(1, 2).reshape(-1, c, sh, sw)
        out = out + group.get_v(vmap).flatten(2).transpose(1, 2)
        out = window_reverse(out, sh, sw, hp, wp)
        if is_exporting():  # index_select: a slice would record guards on the symbolic offsets
            out = out.index_select(1, torch.arange(h, device=out.device) + top)
            out = out.index_select(2, torch.arange(w, device=out.device) + left)
        else:
            out = out[:, top:top + h, left:left + w]
        return out.reshape(b, n, c)

    def _inline(self, group: _StripeGroup, q: Tensor, k: Tensor, v: Tensor, src: Tensor, hw: Tuple[int, int],
                key_padding_mask: Optional[Tensor]) -> Tensor:
        """Global InLine + its dynamic local term + LePE for one group; ``(B, N, Cg)`` -> ``(B, N, Cg)``."""
        b, n, c = v.shape
        heads = self.num_heads // len(self.attns)
        out = merge_heads(inline_attention(split_heads(q, heads), split_heads(k, heads), split_heads(v, heads),
                                           key_padding_mask=key_padding_mask))
        weight = group.residual(self.masked_token_mean(src, key_padding_mask)[..., None])  # (B, 9Cg, 1)
        vmap = v.transpose(1, 2).reshape(b, c, hw[0], hw[1])
        if is_exporting():
            out = out + shifted_local_term(weight, vmap)
        else:
            local = F.conv2d(vmap.reshape(1, b * c, hw[0], hw[1]), weight.reshape(b * c, 1, 3, 3), None, padding=1,
                             groups=b * c)
            out = out + local.reshape(b, c, n).transpose(1, 2)
        return out + group.get_v(vmap).flatten(2).transpose(1, 2)

    def extra_repr(self) -> str:
        return super().extra_repr() + f', split_size={self.split_size}, inner={self.inner!r}'
