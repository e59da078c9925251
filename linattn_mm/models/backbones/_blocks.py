"""Building blocks shared by the backbones: padded patch embedding, the pre-norm transformer block and the
PVTv2 depthwise-conv MLP."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from timm.layers import DropPath, Mlp
from torch import Tensor, nn

from linattn_mm.layers import build_attention
from linattn_mm.ops._utils import is_exporting, pad_amount


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
            x = pad_to_multiple(x, self.stride)
        x = self.proj(x)
        hw = (x.shape[2], x.shape[3])
        return self.norm(x.flatten(2).transpose(1, 2)), hw


def pad_to_multiple(x: Tensor, s: int) -> Tensor:
    """Zero-pad ``(B, C, H, W)`` on the bottom/right to multiples of ``s`` (a named function so torch.fx can
    keep its size test as one leaf call)."""
    ph, pw = pad_amount(x.shape[-2], s), pad_amount(x.shape[-1], s)
    if is_exporting() or ph or pw:  # exporting: pad by a symbolic amount, no branch on it
        x = F.pad(x, (0, pw, 0, ph))
    return x


class _DWConv(nn.Module):
    """3x3 depthwise conv over the token map; a module of its own so keys read ``dwconv.dwconv`` (PVTv2)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, bias=True, groups=dim)

    def forward(self, x: Tensor, hw: Sequence[int]) -> Tensor:
        b, n, c = x.shape
        x = self.dwconv(x.transpose(1, 2).reshape(b, c, hw[0], hw[1]))
        return x.flatten(2).transpose(1, 2)


class DWConvMlp(nn.Module):
    """PVTv2's MLP: ``fc1 -> [ReLU] -> 3x3 depthwise conv -> GELU -> fc2`` (W. Wang et al., "PVT v2: Improved
    Baselines with Pyramid Vision Transformer", CVMJ 2022; github whai362/PVT ``classification/pvt_v2.py``).

    Keys follow the official checkpoints (``fc1``, ``dwconv.dwconv``, ``fc2``); timm's ``pvt_v2`` names the conv
    ``dwconv`` (mapped by :mod:`.softmax_ckpt`). ``extra_relu`` is the ReLU of PVTv2-li (linear SRA). The conv
    zero-pads at the map border, as the official model does.

    Args:
        dim: channels ``C``. hidden: hidden channels. drop: dropout after the activation and after ``fc2``.
        extra_relu: ReLU after ``fc1`` (PVTv2-li).
    """

    def __init__(self, dim: int, hidden: int, drop: float = 0., extra_relu: bool = False):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.relu = nn.ReLU() if extra_relu else nn.Identity()
        self.dwconv = _DWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor, hw: Sequence[int]) -> Tensor:
        """``(B, H*W, C)`` tokens of the ``hw`` grid -> ``(B, H*W, C)``."""
        x = self.act(self.dwconv(self.relu(self.fc1(x)), hw))
        return self.drop(self.fc2(self.drop(x)))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + DropPath(attn(LN(x)))``, ``x + DropPath(mlp(LN(x)))``.

    The attention comes from the plain table (:func:`linattn_mm.layers.build_attention`); its forward is
    ``attn(x, hw_shape)``. Names (``norm1``, ``attn``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``) follow PVT, Swin and
    DeiT checkpoints. ``mlp='dwconv'`` is PVTv2's :class:`DWConvMlp` (``'dwconv_relu'``: with PVTv2-li's ReLU).
    ``with_cp`` recomputes the block in backward (gradient checkpointing).
    """

    def __init__(self, dim: int, num_heads: int, attn_cfg: dict, mlp_ratio: float = 4., qkv_bias: bool = True,
                 drop: float = 0., attn_drop: float = 0., drop_path: float = 0., norm_eps: float = 1e-6,
                 with_cp: bool = False, mlp: str = 'plain'):
        super().__init__()
        if mlp not in ('plain', 'dwconv', 'dwconv_relu'):
            raise ValueError(f"Block: mlp must be 'plain', 'dwconv' or 'dwconv_relu', got {mlp!r}")
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = build_attention(attn_cfg, dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop,
                                    proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp_takes_hw = mlp != 'plain'
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop) if mlp == 'plain' else \
            DWConvMlp(dim, int(dim * mlp_ratio), drop=drop, extra_relu=mlp == 'dwconv_relu')
        if drop == 0:  # nn.Dropout(0) still dispatches an op per call (a launch per call on a GPU)
            if mlp == 'plain':
                self.mlp.drop1 = self.mlp.drop2 = nn.Identity()
            else:
                self.mlp.drop = nn.Identity()
        self.with_cp = with_cp

    def _forward(self, x: Tensor, hw: Sequence[int]) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), hw))
        y = self.norm2(x)
        return x + self.drop_path(self.mlp(y, hw) if self.mlp_takes_hw else self.mlp(y))

    def forward(self, x: Tensor, hw: Sequence[int]) -> Tensor:
        if self.with_cp and x.requires_grad:
            return cp.checkpoint(self._forward, x, tuple(hw), use_reentrant=False)
        return self._forward(x, hw)


def tokens_to_map(x: Tensor, hw: Sequence[int]) -> Tensor:
    """``(B, H*W, C)`` -> ``(B, C, H, W)``."""
    b, _, c = x.shape
    return x.transpose(1, 2).reshape(b, c, hw[0], hw[1]).contiguous()


def drop_path_rates(depths: Sequence[int], rate: float):
    n = sum(depths)  # linearly growing rates (python floats, so that models also build on the meta device)
    dpr = [rate * i / (n - 1) if n > 1 else 0. for i in range(n)]
    out, cur = [], 0
    for d in depths:
        out.append(dpr[cur:cur + d])
        cur += d
    return out


def crop_to(x: Tensor, hw: Optional[Tuple[int, int]]) -> Tensor:
    return x if hw is None else x[..., :hw[0], :hw[1]]
