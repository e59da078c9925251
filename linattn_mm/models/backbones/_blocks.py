"""Building blocks shared by the backbones: padded patch embedding and the pre-norm transformer block."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from timm.layers import DropPath, Mlp
from torch import Tensor, nn

from linattn_mm.layers import build_attention


def pad_to_multiple(n: int, s: int) -> int:
    """Padding that takes ``n`` to the next multiple of ``s``: ``ceil(n / s) * s - n``.

    Written with floor division only, never ``%``: under ``torch.compile`` with dynamic shapes a Python ``%`` on a
    symbolic size becomes sympy's ``PythonMod``, and once such a size reaches a float scalar of a tensor op (the
    scale factors of ``F.interpolate``, a token count) inductor's tensorify pass fails with "TensorReferenceAnalysis
    has no attribute 'python_mod'" (pytorch/pytorch#197716). Floor division is supported there.
    """
    return -(-n // s) * s - n


class PatchEmbed(nn.Module):
    """Conv patch embedding + LayerNorm that takes any H x W.

    Non-overlapping (``overlap=False``, kernel = stride = patch): the input is zero-padded on the bottom/right
    to a multiple of the stride, so no pixel is dropped. Overlapping (PVTv2): kernel ``2*stride - 1``,
    padding ``kernel // 2``. Parameter names ``proj`` / ``norm`` match PVT / Swin checkpoints.
    """

    def __init__(self, in_chans: int, embed_dims: int, patch_size: int, overlap: bool = False,
                 norm: bool = True, norm_eps: float = 1e-5):
        super().__init__()
        self.stride = patch_size
        self.overlap = overlap
        k = 2 * patch_size - 1 if overlap else patch_size
        self.proj = nn.Conv2d(in_chans, embed_dims, kernel_size=k, stride=patch_size,
                              padding=k // 2 if overlap else 0)
        self.norm = nn.LayerNorm(embed_dims, eps=norm_eps) if norm else nn.Identity()

    def forward(self, x: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        if not self.overlap:
            ph, pw = pad_to_multiple(x.shape[-2], self.stride), pad_to_multiple(x.shape[-1], self.stride)
            if ph or pw:
                x = F.pad(x, (0, pw, 0, ph))
        x = self.proj(x)
        hw = (x.shape[2], x.shape[3])
        return self.norm(x.flatten(2).transpose(1, 2)), hw


class Block(nn.Module):
    """Pre-norm transformer block: ``x + DropPath(attn(LN(x)))``, ``x + DropPath(mlp(LN(x)))``.

    The attention comes from the plain table (:func:`linattn_mm.layers.build_attention`); its forward is
    ``attn(x, hw_shape)``. Names (``norm1``, ``attn``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``) follow PVT, Swin and
    DeiT checkpoints. ``with_cp`` recomputes the block in backward (gradient checkpointing).
    """

    def __init__(self, dim: int, num_heads: int, attn_cfg: dict, mlp_ratio: float = 4., qkv_bias: bool = True,
                 drop: float = 0., attn_drop: float = 0., drop_path: float = 0., norm_eps: float = 1e-6,
                 with_cp: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = build_attention(attn_cfg, dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop,
                                    proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        if drop == 0:  # nn.Dropout(0) still dispatches an op per call (a launch per call on a GPU)
            self.mlp.drop1 = self.mlp.drop2 = nn.Identity()
        self.with_cp = with_cp

    def _forward(self, x: Tensor, hw: Sequence[int]) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), hw))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def forward(self, x: Tensor, hw: Sequence[int]) -> Tensor:
        if self.with_cp and x.requires_grad:
            return cp.checkpoint(self._forward, x, tuple(hw), use_reentrant=False)
        return self._forward(x, hw)


def tokens_to_map(x: Tensor, hw: Sequence[int]) -> Tensor:
    """``(B, H*W, C)`` -> ``(B, C, H, W)``."""
    b, _, c = x.shape
    return x.transpose(1, 2).reshape(b, c, hw[0], hw[1]).contiguous()


def drop_path_rates(depths: Sequence[int], rate: float):
    dpr = torch.linspace(0, rate, sum(depths)).tolist()
    out, cur = [], 0
    for d in depths:
        out.append(dpr[cur:cur + d])
        cur += d
    return out


def crop_to(x: Tensor, hw: Optional[Tuple[int, int]]) -> Tensor:
    return x if hw is None else x[..., :hw[0], :hw[1]]
