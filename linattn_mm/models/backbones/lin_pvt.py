"""LinPVT: the PVT pyramid with pluggable attention (InLine-PVT presets by default).

Layout of PVT (W. Wang et al., "Pyramid Vision Transformer", ICCV 2021) as used by InLine-PVT (D. Han et al.,
"Bridging the Divide: Reconsidering Softmax and Linear Attention", NeurIPS 2024; github LeapLabTHU/InLine,
``models/inline_pvt.py``): four stages, patch sizes 4/2/2/2, learned position tables per stage (defined
at 224 px and interpolated to the actual grid), attention in every stage with no spatial reduction, and
the official parameter names (``patch_embed{i}``, ``pos_embed{i}``, ``block{i}.{j}.attn.q/kv/proj/residual``),
so official checkpoints load with only the classifier dropped.

PVTv2 (W. Wang et al., "PVT v2: Improved Baselines with Pyramid Vision Transformer", CVMJ 2022; github
whai362/PVT, ``classification/pvt_v2.py``; timm ``pvt_v2``) is three options of the same layout, set by the
``v2_b0`` ... ``v2_b5`` / ``v2_b2_li`` presets: overlapping patch embedding without position tables, the
depthwise-conv MLP (``mlp.dwconv.dwconv``) and a LayerNorm at the end of every stage (``norm{i}``); their
default attention is PVTv2's spatial-reduction attention (``sra``, linear SRA for ``v2_b2_li``).

Only the stages up to the last of ``out_indices`` are built: later ones would never get a gradient.
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
# PVTv2 b0-b5 (official / timm sizes): heads 1/2/5/8 (head dim 64; b0: 32), sr ratios 8/4/2/1, mlp ratios
# 8/8/4/4 (b5: 4)
_V2 = dict(overlap_patch_embed=True, mlp='dwconv', stage_norm=True, attn='sra', sr_ratios=[8, 4, 2, 1])
_V2_DIMS, _V2_HEADS = [64, 128, 320, 512], [1, 2, 5, 8]
PVT_PRESETS.update({
    'v2_b0': dict(_V2, embed_dims=[32, 64, 160, 256], num_heads=_V2_HEADS, mlp_ratios=[8, 8, 4, 4],
                  depths=[2, 2, 2, 2]),
    'v2_b1': dict(_V2, embed_dims=_V2_DIMS, num_heads=_V2_HEADS, mlp_ratios=[8, 8, 4, 4], depths=[2, 2, 2, 2]),
    'v2_b2': dict(_V2, embed_dims=_V2_DIMS, num_heads=_V2_HEADS, mlp_ratios=[8, 8, 4, 4], depths=[3, 4, 6, 3]),
    'v2_b3': dict(_V2, embed_dims=_V2_DIMS, num_heads=_V2_HEADS, mlp_ratios=[8, 8, 4, 4], depths=[3, 4, 18, 3]),
    'v2_b4': dict(_V2, embed_dims=_V2_DIMS, num_heads=_V2_HEADS, mlp_ratios=[8, 8, 4, 4], depths=[3, 8, 27, 3]),
    'v2_b5': dict(_V2, embed_dims=_V2_DIMS, num_heads=_V2_HEADS, mlp_ratios=[4, 4, 4, 4], depths=[3, 6, 40, 3]),
    'v2_b2_li': dict(_V2, embed_dims=_V2_DIMS, num_heads=_V2_HEADS, mlp_ratios=[8, 8, 4, 4], depths=[3, 4, 6, 3],
                     mlp='dwconv_relu', attn=dict(type='sra', linear=True)),
})


@MODELS.register_module()
class LinPVT(LinBackboneBase):
    """Pyramid vision transformer with any attention of the library.

    Args:
        arch: preset name ('t', 's', 'm', 'l': InLine-PVT T/S/M/L; 'v2_b0' ... 'v2_b5', 'v2_b2_li': PVTv2) or a
            dict with ``embed_dims``, ``num_heads``, ``mlp_ratios``, ``depths`` (and ``sr_ratios`` used by
            ``attn_cfg`` type 'sra'; optional ``overlap_patch_embed``, ``mlp``, ``stage_norm``, ``attn``: the
            defaults of those arguments).
        attn_cfg: attention for all stages (dict or name) or a list, one per stage; default the preset's
            (InLine for PVTv1 layouts, SRA for PVTv2). PVT checkpoints keep ``q`` and ``kv`` apart, so
            ``qkv_layout='q_kv'`` is the default here.
        in_channels: image channels.
        out_indices: stages whose maps are returned (strides 4, 8, 16, 32).
        overlap_patch_embed: PVTv2 overlapping patch embedding (kernel 7/3, no position tables) instead of
            PVTv1's (default: the arch's, else False).
        mlp: 'plain' (PVTv1), 'dwconv' (PVTv2's depthwise-conv MLP) or 'dwconv_relu' (PVTv2-li); default the arch's.
        stage_norm: a LayerNorm (``norm{i}``) at the end of every stage, as PVTv2 (default: the arch's, else False).
        pretrain_img_size: the size the position tables are defined for (224 for ImageNet checkpoints).
        qkv_bias, drop_rate, attn_drop_rate, drop_path_rate: as in PVT (stochastic depth grows linearly).
        frozen_stages: freeze stages ``0..frozen_stages`` (-1: none); norm_eval: LayerNorms in eval mode.
        with_cp: gradient checkpointing of every block.
        init_cfg: ``dict(type='Pretrained', checkpoint=PATH)`` (ours or the official InLine-PVT's), or with
            ``source='timm'|'mmdet'|'mmpretrain'`` a softmax PVTv2 checkpoint (see :mod:`.softmax_ckpt`).
    """

    def __init__(self, arch: Union[str, dict] = 't', attn_cfg=None, in_channels: int = 3,
                 out_indices: Sequence[int] = (0, 1, 2, 3), overlap_patch_embed: Optional[bool] = None,
                 mlp: Optional[str] = None, stage_norm: Optional[bool] = None,
                 pretrain_img_size: int = 224, qkv_bias: bool = True, drop_rate: float = 0.,
                 attn_drop_rate: float = 0., drop_path_rate: float = 0.1, frozen_stages: int = -1,
                 norm_eval: bool = False, with_cp: bool = False, init_cfg: Optional[dict] = None,
                 pretrained: Optional[str] = None):
        super().__init__(out_indices, frozen_stages, norm_eval, init_cfg, pretrained)
        a = resolve_arch(arch, PVT_PRESETS, 'LinPVT')
        dims, heads, depths = a['embed_dims'], a['num_heads'], a['depths']
        mlp_ratios = a.get('mlp_ratios', [4] * len(depths))
        sr_ratios = a.get('sr_ratios', [8, 4, 2, 1][:len(depths)])
        overlap_patch_embed = a.get('overlap_patch_embed', False) if overlap_patch_embed is None \
            else overlap_patch_embed
        mlp = a.get('mlp', 'plain') if mlp is None else mlp
        self.stage_norm = a.get('stage_norm', False) if stage_norm is None else stage_norm
        self.num_stages = len(depths)
        self._check_out_indices(self.num_stages)
        cfgs = stage_attn_cfgs(attn_cfg if attn_cfg is not None else a.get('attn', dict(type='inline')),
                               self.num_stages, 'LinPVT')
        dpr = drop_path_rates(depths, drop_path_rate)
        self.stage_channels = list(dims)
        self.stage_strides = [4 * 2 ** i for i in range(self.num_stages)]
        self.use_pos_embed = not overlap_patch_embed
        self.pos_hw = []
        # stages after the last returned one are not built (their parameters could never get a gradient)
        self.num_built = max(self.out_indices) + 1
        for i in range(self.num_built):
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
                      with_cp=with_cp, mlp=mlp) for j in range(depths[i])]))
            if self.stage_norm:
                setattr(self, f'norm{i + 1}', nn.LayerNorm(dims[i], eps=1e-6))
        self.init_weights()

    def _stage_modules(self, i: int) -> List[nn.Module]:
        if i >= self.num_built:
            return []
        mods = [getattr(self, f'patch_embed{i + 1}'), getattr(self, f'block{i + 1}')]
        if self.stage_norm:
            mods.append(getattr(self, f'norm{i + 1}'))
        if self.use_pos_embed:
            getattr(self, f'pos_embed{i + 1}').requires_grad = False
        return mods

    def forward(self, x: Tensor):
        outs = []
        for i in range(self.num_built):
            x, hw = getattr(self, f'patch_embed{i + 1}')(x)
            if self.use_pos_embed:
                x = x + interpolate_pos(getattr(self, f'pos_embed{i + 1}'), self.pos_hw[i], hw)
            x = getattr(self, f'pos_drop{i + 1}')(x)
            for blk in getattr(self, f'block{i + 1}'):
                x = blk(x, hw)
            if self.stage_norm:
                x = getattr(self, f'norm{i + 1}')(x)
            x = tokens_to_map(x, hw)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)

    def convert_official(self, state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """Official InLine-PVT keys are ours already; drop the classifier (and a cls token if present)."""
        return {k: v for k, v in state_dict.items() if not k.startswith(('head.', 'cls_token'))}
