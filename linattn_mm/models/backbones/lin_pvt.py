"""LinPVT: the PVT pyramid with pluggable attention (InLine-PVT presets by default).

Layout of PVT (W. Wang et al., "Pyramid Vision Transformer", ICCV 2021) as used by InLine-PVT (D. Han et al.,
"Bridging the Divide: Reconsidering Softmax and Linear Attention", NeurIPS 2024; github LeapLabTHU/InLine,
``models/inline_pvt.py``): four stages, patch sizes 4/2/2/2, learned position tables per stage (defined
at 224 px and interpolated to the actual grid), attention in every stage with no spatial reduction, and
the official parameter names (``patch_embed{i}``, ``pos_embed{i}``, ``block{i}.{j}.attn.q/kv/proj/residual``),
so official checkpoints load with only the classifier dropped.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Union

import torch
from timm.layers import trunc_normal_
from torch import Tensor, nn

from linattn_mm.registry import MODELS

from ._base import LinBackboneBase, interpolate_pos, resolve_arch, stage_attn_cfgs
from ._blocks import Block, PatchEmbed, drop_path_rates, tokens_to_map

PVT_PRESETS: Dict[str, dict] = {
    # official InLine-PVT: embed [64,128,320,512], heads [2,4,10,16] (head dim 32), mlp [8,8,4,4]
    't': dict(embed_dims=[64, 128, 320, 512], num_heads=[2, 4, 10, 16], mlp_ratios=[8, 8, 4, 4],
              depths=[2, 2, 2, 2], sr_ratios=[8, 4, 2, 1]),
    's': dict(embed_dims=[64, 128, 320, 512], num_heads=[2, 4, 10, 16], mlp_ratios=[8, 8, 4, 4],
              depths=[3, 4, 6, 3], sr_ratios=[8, 4, 2, 1]),
    'm': dict(embed_dims=[64, 128, 320, 512], num_heads=[2, 4, 10, 16], mlp_ratios=[8, 8, 4, 4],
              depths=[3, 4, 18, 3], sr_ratios=[8, 4, 2, 1]),
    'l': dict(embed_dims=[64, 128, 320, 512], num_heads=[2, 4, 10, 16], mlp_ratios=[8, 8, 4, 4],
              depths=[3, 8, 27, 3], sr_ratios=[8, 4, 2, 1]),
}


@MODELS.register_module()
class LinPVT(LinBackboneBase):
    """Pyramid vision transformer with any attention of the library.

    Args:
        arch: preset name ('t', 's', 'm', 'l': InLine-PVT T/S/M/L) or a dict with ``embed_dims``,
            ``num_heads``, ``mlp_ratios``, ``depths`` (and ``sr_ratios`` used by ``attn_cfg`` type 'sra').
        attn_cfg: attention for all stages (dict or name) or a list, one per stage; default InLine. PVT
            checkpoints keep ``q`` and ``kv`` apart, so ``qkv_layout='q_kv'`` is the default here.
        in_channels: image channels.
        out_indices: stages whose maps are returned (strides 4, 8, 16, 32).
        overlap_patch_embed: PVTv2 overlapping patch embedding (kernel 7/3) instead of PVTv1's.
        pretrain_img_size: the size the position tables are defined for (224 for ImageNet checkpoints).
        qkv_bias, drop_rate, attn_drop_rate, drop_path_rate: as in PVT (stochastic depth grows linearly).
        frozen_stages: freeze stages ``0..frozen_stages`` (-1: none); norm_eval: LayerNorms in eval mode.
        with_cp: gradient checkpointing of every block.
        init_cfg: ``dict(type='Pretrained', checkpoint=PATH)`` (ours or the official InLine-PVT's).
    """

    def __init__(self, arch: Union[str, dict] = 't', attn_cfg=None, in_channels: int = 3,
                 out_indices: Sequence[int] = (0, 1, 2, 3), overlap_patch_embed: bool = False,
                 pretrain_img_size: int = 224, qkv_bias: bool = True, drop_rate: float = 0.,
                 attn_drop_rate: float = 0., drop_path_rate: float = 0.1, frozen_stages: int = -1,
                 norm_eval: bool = False, with_cp: bool = False, init_cfg: Optional[dict] = None,
                 pretrained: Optional[str] = None):
        super().__init__(out_indices, frozen_stages, norm_eval, init_cfg, pretrained)
        a = resolve_arch(arch, PVT_PRESETS, 'LinPVT')
        dims, heads, depths = a['embed_dims'], a['num_heads'], a['depths']
        mlp_ratios = a.get('mlp_ratios', [4] * len(depths))
        sr_ratios = a.get('sr_ratios', [8, 4, 2, 1][:len(depths)])
        self.num_stages = len(depths)
        self._check_out_indices(self.num_stages)
        cfgs = stage_attn_cfgs(attn_cfg if attn_cfg is not None else dict(type='inline'),
                               self.num_stages, 'LinPVT')
        dpr = drop_path_rates(depths, drop_path_rate)
        self.stage_channels = list(dims)
        self.stage_strides = [4 * 2 ** i for i in range(self.num_stages)]
        self.use_pos_embed = not overlap_patch_embed
        self.pos_hw = []
        for i in range(self.num_stages):
            cfg = dict(cfgs[i])
            cfg.setdefault('qkv_layout', 'q_kv')
            if cfg['type'] == 'sra':
                cfg.setdefault('sr_ratio', sr_ratios[i])
            setattr(self, f'patch_embed{i + 1}',
                    PatchEmbed(in_channels if i == 0 else dims[i - 1], dims[i], 4 if i == 0 else 2,
                               overlap=overlap_patch_embed))
            ref = pretrain_img_size // self.stage_strides[i]
            self.pos_hw.append((ref, ref))
            if self.use_pos_embed:
                pe = nn.Parameter(torch.zeros(1, ref * ref, dims[i]))
                trunc_normal_(pe, std=.02)
                setattr(self, f'pos_embed{i + 1}', pe)
            setattr(self, f'pos_drop{i + 1}', nn.Dropout(drop_rate))
            setattr(self, f'block{i + 1}', nn.ModuleList([
                Block(dims[i], heads[i], cfg, mlp_ratios[i], qkv_bias, drop_rate, attn_drop_rate, dpr[i][j],
                      with_cp=with_cp) for j in range(depths[i])]))
        self.init_weights()

    def _stage_modules(self, i: int) -> List[nn.Module]:
        mods = [getattr(self, f'patch_embed{i + 1}'), getattr(self, f'block{i + 1}')]
        if self.use_pos_embed:
            getattr(self, f'pos_embed{i + 1}').requires_grad = False
        return mods

    def forward(self, x: Tensor):
        outs = []
        for i in range(self.num_stages):
            x, hw = getattr(self, f'patch_embed{i + 1}')(x)
            if self.use_pos_embed:
                x = x + interpolate_pos(getattr(self, f'pos_embed{i + 1}'), self.pos_hw[i], hw)
            x = getattr(self, f'pos_drop{i + 1}')(x)
            for blk in getattr(self, f'block{i + 1}'):
                x = blk(x, hw)
            x = tokens_to_map(x, hw)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)

    def convert_official(self, state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """Official InLine-PVT keys are ours already; drop the classifier (and a cls token if present)."""
        return {k: v for k, v in state_dict.items() if not k.startswith(('head.', 'cls_token'))}
