"""Random Feature Attention (Peng et al., "Random Feature Attention", ICLR 2021), non-causal: random Fourier (or
arc-cosine) features of the l2-normalised queries and keys with a learned per-head scale. The paper's recency
gate is causal and sequential and is omitted for image tokens (see :mod:`linattn_mm.ops.rfa.torch_impl`)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from ..ops._utils import merge_heads
from ..ops.rfa import rfa_attention
from ..ops.rfa.torch_impl import KERNELS
from .base import BaseAttention


class RFAAttention(BaseAttention):
    """RFA with ``W_h = sigma_h * Omega``: ``Omega`` ``(M, D)`` standard normal (buffer ``omega``, shared by the
    heads), ``sigma`` ``(H,)`` the per-head scale, learned by default (the paper learns the variance of the random
    features through this reparameterisation). With unit q and k the kernel is ``exp(sigma^2 cos(q, k))``.

    ``omega`` is drawn from a private generator seeded with ``seed`` and saved in checkpoints; ``redraw=True``
    draws a fresh one at every training forward (the paper resamples during training and fixes the features at
    test time); eval uses the last draw. Keys: ``qkv``, ``proj``, ``sigma``, buffer ``omega``.

    Args:
        num_features: random frequencies ``M`` (``2M`` features for the Gaussian kernel).
        kernel: ``'gaussian'`` (sin / cos) or ``'arccos'`` (ReLU).
        sigma_init: initial scale (``1.0``: a mild softmax over cosine similarity).
        learn_sigma: learn ``sigma`` (else a buffer).
        redraw: redraw ``omega`` at every training forward.
        seed: seed of the layer's generator.
        eps: floor of the normaliser (the trigonometric estimate is not guaranteed positive).
    """

    def __init__(self, embed_dims: int, num_heads: int = 8, qkv_bias: bool = True, attn_drop: float = 0.,
                 proj_drop: float = 0., qkv_layout: str = 'qkv', num_features: int = 64, kernel: str = 'gaussian',
                 sigma_init: float = 1.0, learn_sigma: bool = True, redraw: bool = False, seed: int = 0,
                 eps: float = 1e-4) -> None:
        super().__init__(embed_dims, num_heads, qkv_bias, attn_drop, proj_drop, qkv_layout)
        if kernel not in KERNELS:
            raise ValueError(f'RFAAttention: kernel must be one of {KERNELS}, got {kernel!r}')
        if num_features < 1:
            raise ValueError(f'RFAAttention: num_features must be >= 1, got {num_features}')
        self.num_features = num_features
        self.kernel = kernel
        self.redraw = redraw
        self.seed = seed
        self.eps = eps
        sigma = torch.full((num_heads,), float(sigma_init))
        if learn_sigma:
            self.sigma = nn.Parameter(sigma)
        else:
            self.register_buffer('sigma', sigma)
        self._generator = torch.Generator().manual_seed(seed)
        self.register_buffer('omega', self._draw())

    def _draw(self, device=None, dtype=None) -> Tensor:
        omega = torch.randn(self.num_features, self.head_dims, generator=self._generator)
        return omega.to(device=device, dtype=dtype or torch.get_default_dtype())

    @torch.no_grad()
    def redraw_features(self) -> None:
        """Draw a new ``omega`` in place."""
        self.omega.copy_(self._draw(self.omega.device, self.omega.dtype))

    def features(self) -> Tensor:
        """``(H, M, D)`` frequencies ``sigma_h * omega``."""
        return self.sigma[:, None, None] * self.omega

    def forward(self, x: Tensor, hw_shape: Sequence[int], key_padding_mask: Optional[Tensor] = None) -> Tensor:
        self.check_input(x, hw_shape, key_padding_mask)
        if self.redraw and self.training:
            self.redraw_features()
        q, k, v = (self.heads(t) for t in self.project_qkv(x))
        out = rfa_attention(q, k, v, self.features(), key_padding_mask=key_padding_mask, kernel=self.kernel,
                            eps=self.eps)
        return self.project_out(merge_heads(out))

    def extra_repr(self) -> str:
        return super().extra_repr() + (f', num_features={self.num_features}, kernel={self.kernel!r}, '
                                       f'redraw={self.redraw}')
