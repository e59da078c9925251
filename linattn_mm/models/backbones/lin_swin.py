"""LinSwin: the Swin layout with per-stage attention (InLine-Swin presets by default).

Swin Transformer (Z. Liu et al., ICCV 2021) as modified by InLine-Swin (D. Han et al., NeurIPS 2024; github
LeapLabTHU/InLine, ``models/inline_swin.py``): stage attention given by letters, 'I' = InLine over the whole
stage (the official code sets the window to the full 56/28/14/7 grid), 'S' = 7x7 (shifted) window softmax;
e.g. 'IIIS'. Names follow the official checkpoints (``patch_embed``, ``layers.{i}.blocks.{j}``,
``layers.{i}.downsample``); one LayerNorm per returned map (``norm{i}``, as mmdet's Swin) where the official
model has a single final ``norm`` (converted to ``norm3``).

Any H x W: patch embedding and merging pad to even sizes, window attention pads to whole windows and
crops back, global attention runs on the real grid.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from linattn_mm.registry import MODELS

from ._base import LinBackboneBase, resolve_arch, stage_attn_cfgs
from ._blocks import Block, PatchEmbed, drop_path_rates, pad_to_multiple, tokens_to_map

SWIN_PRESETS: Dict[str, dict] = {
    't': dict(embed_dims=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24]),
    's': dict(embed_dims=96, depths=[2, 2, 18, 2], num_heads=[3, 6, 12, 24]),
    'b': dict(embed_dims=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32]),
}
LETTERS = {'I': 'inline', 'S': 'window'}


class PatchMerging(nn.Module):
    """2x2 neighbourhood concat -> LayerNorm -> Linear(4C, 2C); odd sizes are zero-padded first."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor, hw):
        b, _, c = x.shape
        h, w = hw
        x = x.view(b, h, w, c)
        ph, pw = pad_to_multiple(h, 2), pad_to_multiple(w, 2)
        if ph or pw:
            x = F.pad(x, (0, 0, 0, pw, 0, ph))
        # the official concat order (x0, x1, x2, x3) so checkpoints' reduction weights apply unchanged
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x.flatten(1, 2))), (x.shape[1], x.shape[2])


class SwinStage(nn.Module):
    def __init__(self, dim, depth, num_heads, attn_cfg: dict, window_size, mlp_ratio, qkv_bias, drop, attn_drop,
                 dpr, downsample: bool, with_cp: bool):
        super().__init__()
        blocks = []
        for j in range(depth):
            cfg = dict(attn_cfg)
            if cfg['type'] == 'window':
                ws = cfg.setdefault('window_size', window_size)
                cfg.setdefault('shift_size', 0 if j % 2 == 0 else ws // 2)
            blocks.append(Block(dim, num_heads, cfg, mlp_ratio, qkv_bias, drop, attn_drop, dpr[j],
                                norm_eps=1e-5, with_cp=with_cp))
        self.blocks = nn.ModuleList(blocks)
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x, hw):
        for blk in self.blocks:
            x = blk(x, hw)
        return x, hw


@MODELS.register_module()
class LinSwin(LinBackboneBase):
    """Swin-style hierarchical backbone with any attention per stage.

    Args:
        arch: 't', 's', 'b' (InLine-Swin T/S/B = Swin T/S/B sizes) or a dict (``embed_dims``, ``depths``,
            ``num_heads``).
        attn_type: official letter string, one per stage ('I' InLine, 'S' window softmax), used when
            ``attn_cfg`` is None. Default 'IIIS'.
        attn_cfg: replaces the letters: one dict/name for all stages or a list per stage. Window attention
            gets ``window_size`` and alternating ``shift_size`` per block unless given.
        window_size: window of 'S' / window stages (7).
        mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, drop_path_rate: as in Swin.
        out_indices, frozen_stages, norm_eval, with_cp, init_cfg: see :class:`LinPVT`.
    """

    def __init__(self, arch: Union[str, dict] = 't', attn_type: str = 'IIIS', attn_cfg=None,
                 in_channels: int = 3, window_size: int = 7, mlp_ratio: float = 4., qkv_bias: bool = True,
                 out_indices: Sequence[int] = (0, 1, 2, 3), drop_rate: float = 0., attn_drop_rate: float = 0.,
                 drop_path_rate: float = 0.1, frozen_stages: int = -1, norm_eval: bool = False,
                 with_cp: bool = False, init_cfg: Optional[dict] = None,
                 pretrained: Optional[str] = None):
        super().__init__(out_indices, frozen_stages, norm_eval, init_cfg, pretrained)
        a = resolve_arch(arch, SWIN_PRESETS, 'LinSwin')
        c0, depths, heads = a['embed_dims'], a['depths'], a['num_heads']
        self.num_stages = len(depths)
        self._check_out_indices(self.num_stages)
        if attn_cfg is None:
            if len(attn_type) != self.num_stages or set(attn_type) - set(LETTERS):
                raise ValueError(f"LinSwin: attn_type {attn_type!r} needs one letter per stage from "
                                 f"{sorted(LETTERS)} ('I' InLine, 'S' window softmax)")
            attn_cfg = [dict(type=LETTERS[ch]) for ch in attn_type]
        cfgs = stage_attn_cfgs(attn_cfg, self.num_stages, 'LinSwin')
        dims = [c0 * 2 ** i for i in range(self.num_stages)]
        self.stage_channels = dims
        self.stage_strides = [4 * 2 ** i for i in range(self.num_stages)]
        self.patch_embed = PatchEmbed(in_channels, c0, 4, norm_eps=1e-5)
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = drop_path_rates(depths, drop_path_rate)
        self.layers = nn.ModuleList([
            SwinStage(dims[i], depths[i], heads[i], cfgs[i], window_size, mlp_ratio, qkv_bias, drop_rate,
                      attn_drop_rate, dpr[i], downsample=i < self.num_stages - 1, with_cp=with_cp)
            for i in range(self.num_stages)])
        for i in self.out_indices:
            self.add_module(f'norm{i}', nn.LayerNorm(dims[i]))
        self.init_weights()

    def _stage_modules(self, i: int) -> List[nn.Module]:
        mods = [self.layers[i]]
        if i == 0:
            mods.append(self.patch_embed)
        if i in self.out_indices:
            mods.append(getattr(self, f'norm{i}'))
        return mods

    def forward(self, x: Tensor):
        x, hw = self.patch_embed(x)
        x = self.pos_drop(x)
        outs = []
        for i, stage in enumerate(self.layers):
            x, hw = stage(x, hw)
            if i in self.out_indices:
                outs.append(tokens_to_map(getattr(self, f'norm{i}')(x), hw))
            if stage.downsample is not None:
                x, hw = stage.downsample(x, hw)
        return tuple(outs)

    def convert_official(self, state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """Official InLine-Swin keys -> ours: drop ``head``, buffers rebuilt here (``relative_position_index``,
        ``attn_mask``), final ``norm`` -> ``norm{last}``."""
        out = {}
        last = self.num_stages - 1
        for k, v in state_dict.items():
            if k.startswith('head.') or k.endswith(('relative_position_index', 'attn_mask')):
                continue
            if k.startswith('norm.'):
                k = f'norm{last}.' + k[len('norm.'):]
            out[k] = v
        return out
