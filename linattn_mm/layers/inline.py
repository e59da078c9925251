"""InLine attention (Han et al., "Bridging the Divide: Reconsidering Softmax and Linear Attention", NeurIPS 2024).

Injective linear attention plus the paper's local modelling term:

    out = InL(Q, K, V) + DWConv3x3_{w(x)}(V),   w(x) = Conv1x1_g(GELU(Conv1x1_g(mean_tokens(x))))

where the depthwise kernels (one 3x3 kernel per sample and channel) are generated from the token mean of the
layer input by two grouped (``groups=num_heads``) 1x1 convs, ``C -> C -> 9C``; the term is added before the
output projection. Parameter names follow the official code (LeapLabTHU/InLine): ``qkv`` (Swin, DeiT) or
``q`` + ``kv`` (PVT, ``qkv_layout='q_kv'``), ``proj``, and the local branch ``residual.0`` / ``residual.2``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..ops._utils import is_exporting, merge_heads
from ..ops.inline import inline_attention
from .base import BaseAttention


class InLineAttention(BaseAttention):
    """Injective linear attention with the dynamic depthwise local term.

    With a ``key_padding_mask`` the kernel generator sees the mean of valid tokens only and padded values are
    zeroed before the 3x3 conv, so padding never reaches valid outputs.

    Args:
        kernel: feature map of q/k passed to the op (``'identity'`` as in the paper's main models).
        local_kernel_size: side of the dynamic depthwise kernel (3 in the paper and checkpoints).

    The q.k scale ``head_dims ** -0.5`` of the official code is applied inside the op.
    """

    def __init__(self, embed_dims: int, num_heads: int = 8, qkv_bias: bool = True, attn_drop: float = 0.,
                 proj_drop: float = 0., qkv_layout: str = 'qkv', kernel: str = 'identity',
                 local_kernel_size: int = 3) -> None:
        super().__init__(embed_dims, num_heads, qkv_bias, attn_drop, proj_drop, qkv_layout)
        self.kernel = kernel
        self.local_kernel_size = local_kernel_size
        self.residual = nn.Sequential(
            nn.Conv1d(embed_dims, embed_dims, kernel_size=1, groups=num_heads),
            nn.GELU(),
            nn.Conv1d(embed_dims, embed_dims * local_kernel_size ** 2, kernel_size=1, groups=num_heads))

    def local_term(self, x: Tensor, v: Tensor, hw, key_padding_mask: Optional[Tensor]) -> Tensor:
        """Dynamic depthwise conv of ``v`` ``(B, N, C)`` with kernels generated from ``x``; -> ``(B, N, C)``.

        Five kernels: token mean, the two grouped 1x1 convs (+ GELU) that generate the kernels, and one grouped
        conv with the batch folded into the groups (``(1, B*C, H, W)``, a per-sample kernel); the rest are views
        and the one layout copy of ``v`` into a map.
        """
        b, n, c = v.shape
        ks = self.local_kernel_size
        weight = self.residual(self.masked_token_mean(x, key_padding_mask)[..., None])  # (B, ks*ks*C, 1)
        if key_padding_mask is not None:
            v = v.masked_fill(key_padding_mask[..., None], 0.)  # padding never reaches the conv
        if is_exporting():
            return self._local_term_shifted(weight, v.transpose(1, 2).reshape(b, c, hw[0], hw[1]))
        vmap = v.transpose(1, 2).reshape(1, b * c, hw[0], hw[1])
        out = F.conv2d(vmap, weight.view(b * c, 1, ks, ks), None, padding=ks // 2, groups=b * c)
        return out.view(b, c, n).transpose(1, 2)

    def _local_term_shifted(self, weight: Tensor, vmap: Tensor) -> Tensor:
        """The same depthwise conv as a sum of ``ks * ks`` shifted maps times per-sample weights.

        Used while exporting: a conv whose kernel is computed from the input (``groups = B * C``) has no
        fixed weight shape, which the TorchScript exporter refuses ("kernel of unknown shape") and which would
        tie an exported graph to the export batch; this form is plain elementwise ops at any B, H, W.

        Args:
            weight: ``(B, ks*ks*C, 1)`` generated kernels, ordered ``(C, ks, ks)`` as the conv's weight.
            vmap: ``(B, C, H, W)`` values (padding zeroed).

        Returns:
            ``(B, H*W, C)``, equal to the grouped conv up to float rounding.
        """
        b, c, h, w = vmap.shape
        ks = self.local_kernel_size
        weight = weight.reshape(b, c, ks * ks, 1, 1)
        p = ks // 2
        vpad = F.pad(vmap, (p, p, p, p))
        out = None
        for i in range(ks):
            for j in range(ks):
                term = weight[:, :, i * ks + j] * vpad[:, :, i:i + h, j:j + w]
                out = term if out is None else out + term
        return out.flatten(2).transpose(1, 2)

    def forward(self, x: Tensor, hw_shape: Sequence[int], key_padding_mask: Optional[Tensor] = None) -> Tensor:
        hw = self.check_input(x, hw_shape, key_padding_mask)
        q, k, v = self.project_qkv(x)
        out = inline_attention(self.heads(q), self.heads(k), self.heads(v),
                               key_padding_mask=key_padding_mask, kernel=self.kernel)
        out = merge_heads(out) + self.local_term(x, v, hw, key_padding_mask)
        return self.project_out(out)

    def extra_repr(self) -> str:
        return super().extra_repr() + f', kernel={self.kernel!r}, local_kernel_size={self.local_kernel_size}'
