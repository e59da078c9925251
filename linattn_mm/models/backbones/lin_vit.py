"""LinViT: a plain ViT (DeiT / TaylorShift ViT presets) with a ViTDet simple feature pyramid.

Plain ViT (A. Dosovitskiy et al., ICLR 2021; DeiT, H. Touvron et al., ICML 2021) with InLine attention
(InLine-DeiT, D. Han et al., NeurIPS 2024) or TaylorShift attention (T. Nauen et al., ICPR 2024). For dense
prediction the stride-16 token map is turned into strides 4/8/16/32 by the simple feature pyramid of ViTDet
(Y. Li et al., "Exploring Plain Vision Transformer Backbones for Object Detection", ECCV 2022):
two / one 2x transposed convs, identity, and 2x max-pooling. The position table is defined at the preset's
pretraining size and interpolated to the actual (possibly non-square) grid.

Presets match the released models (github LeapLabTHU/InLine ``models/inline_deit.py`` + ``cfgs/inline_deit_*.yaml``;
github tobna/TaylorShift ``training/architectures/taylor_shift_vit.py``):

=========== ===== ===== ===== ============ ==========================================================
preset      C     depth heads pretrain px  attention
=========== ===== ===== ===== ============ ==========================================================
deit_t      192   12    6     224          InLine (head dim 32, as in all three)
deit_s      320   12    10    288          InLine
deit_b      384   12    12    448          InLine
taylor_t    192   12    3     224          TaylorShift, output normalisation on (all official ViTs)
taylor_s    384   12    6     224          TaylorShift, output normalisation on
=========== ===== ===== ===== ============ ==========================================================

**The one difference from the official models: no class token.** Both official ViTs prepend a class token that
takes part in attention (InLine-DeiT: in the linear term and the token means, not in the 3x3 local term;
TaylorShift: as one more key/query); a dense-prediction backbone has no use for it, so here attention runs over
the patch tokens only and the checkpoint's ``cls_token`` (and its position entry) are dropped. With that stated,
features equal the official formulas applied to the patch tokens. TaylorShift's ViT has no input-normalisation
option to mirror (its q/k are always L2-normalised inside the attention).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d, trunc_normal_
from torch import Tensor, nn

from linattn_mm.ops._utils import crop_hw, is_exporting
from linattn_mm.registry import MODELS

from ._base import LinBackboneBase, interpolate_pos, resize_pos_embed, resolve_arch
from ._blocks import Block, PatchEmbed, drop_path_rates, tokens_to_map

VIT_PRESETS: Dict[str, dict] = {
    'deit_t': dict(embed_dims=192, depth=12, num_heads=6, pretrain_img_size=224, attn=dict(type='inline')),
    'deit_s': dict(embed_dims=320, depth=12, num_heads=10, pretrain_img_size=288, attn=dict(type='inline')),
    'deit_b': dict(embed_dims=384, depth=12, num_heads=12, pretrain_img_size=448, attn=dict(type='inline')),
    'taylor_t': dict(embed_dims=192, depth=12, num_heads=3, pretrain_img_size=224,
                     attn=dict(type='taylorshift', output_normalized=True)),
    'taylor_s': dict(embed_dims=384, depth=12, num_heads=6, pretrain_img_size=224,
                     attn=dict(type='taylorshift', output_normalized=True)),
}


@MODELS.register_module()
class LinViT(LinBackboneBase):
    """Plain ViT + simple feature pyramid.

    Args:
        arch: 'deit_t', 'deit_s', 'deit_b' (InLine-DeiT), 'taylor_t', 'taylor_s' (TaylorShift ViT) or a dict
            (``embed_dims``, ``depth``, ``num_heads``, optional ``attn`` and ``pretrain_img_size``).
        attn_cfg: attention of every block (dict or name); default the preset's. Of the same type as the
            preset's, it inherits the preset's options it does not set (e.g. ``arch='taylor_s',
            attn_cfg=dict(type='taylorshift', mode='efficient')`` keeps ``output_normalized=True``).
        patch_size: 16. pretrain_img_size: size the position table is defined for; default the preset's
            (224 / 288 / 448 for InLine-DeiT T / S / B), 224 for a dict arch.
        out_indices: pyramid levels returned (0..3 = strides 4, 8, 16, 32); channels C/4, C/2, C, C. Only
            the branches of these levels are built (``fpn1`` / ``fpn2`` hold parameters).
        frozen_stages: k >= 0 freezes the patch embedding, the position table and the first (k+1)/4 of the
            blocks. Others as :class:`LinPVT`.
    """

    def __init__(self, arch: Union[str, dict] = 'deit_t', attn_cfg=None, in_channels: int = 3,
                 patch_size: int = 16, pretrain_img_size: Optional[int] = None, mlp_ratio: float = 4.,
                 qkv_bias: bool = True,
                 out_indices: Sequence[int] = (0, 1, 2, 3), drop_rate: float = 0., attn_drop_rate: float = 0.,
                 drop_path_rate: float = 0.1, frozen_stages: int = -1, norm_eval: bool = False,
                 with_cp: bool = False, init_cfg: Optional[dict] = None,
                 pretrained: Optional[str] = None):
        super().__init__(out_indices, frozen_stages, norm_eval, init_cfg, pretrained)
        a = resolve_arch(arch, VIT_PRESETS, 'LinViT')
        c, depth, heads = a['embed_dims'], a['depth'], a['num_heads']
        preset_attn = a.get('attn', 'inline')
        preset_attn = dict(type=preset_attn) if isinstance(preset_attn, str) else dict(preset_attn)
        if attn_cfg is None:
            attn_cfg = preset_attn
        if isinstance(attn_cfg, (list, tuple)):
            raise ValueError('LinViT: attn_cfg must be one dict (a plain ViT has a single stage)')
        attn_cfg = dict(type=attn_cfg) if isinstance(attn_cfg, str) else dict(attn_cfg)
        if attn_cfg.get('type') == preset_attn['type']:
            attn_cfg = {**preset_attn, **attn_cfg}
        if pretrain_img_size is None:
            pretrain_img_size = a.get('pretrain_img_size', 224)
        self.pretrain_img_size = pretrain_img_size
        self.num_stages = 4
        self._check_out_indices(4)
        self.depth = depth
        self.stage_channels = [c // 4, c // 2, c, c]
        self.stage_strides = [patch_size // 4, patch_size // 2, patch_size, patch_size * 2]
        self.patch_embed = PatchEmbed(in_channels, c, patch_size, norm=False)
        ref = pretrain_img_size // patch_size
        self.pos_hw = (ref, ref)
        self.pos_embed = nn.Parameter(torch.zeros(1, ref * ref, c))
        trunc_normal_(self.pos_embed, std=.02)
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = drop_path_rates([depth], drop_path_rate)[0]
        self.blocks = nn.ModuleList([Block(c, heads, attn_cfg, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate,
                                           dpr[j], with_cp=with_cp) for j in range(depth)])
        self.norm = nn.LayerNorm(c, eps=1e-6)
        # only the pyramid branches that out_indices returns (an unused branch would never get a gradient)
        if 0 in self.out_indices:
            self.fpn1 = nn.Sequential(nn.ConvTranspose2d(c, c // 2, 2, 2), LayerNorm2d(c // 2), nn.GELU(),
                                      nn.ConvTranspose2d(c // 2, c // 4, 2, 2))
        if 1 in self.out_indices:
            self.fpn2 = nn.ConvTranspose2d(c, c // 2, 2, 2)
        if 2 in self.out_indices:
            self.fpn3 = nn.Identity()
        if 3 in self.out_indices:
            self.fpn4 = nn.MaxPool2d(2, ceil_mode=True)
        self.init_weights()

    def _stage_modules(self, i: int) -> List[nn.Module]:
        self.pos_embed.requires_grad = False
        n = (i + 1) * self.depth // 4
        start = i * self.depth // 4
        mods = list(self.blocks[start:n])
        if i == 0:
            mods.append(self.patch_embed)
        return mods

    def forward(self, x: Tensor):
        in_h, in_w = x.shape[-2], x.shape[-1]
        x, hw = self.patch_embed(x)
        x = self.pos_drop(x + interpolate_pos(self.pos_embed, self.pos_hw, hw))
        for blk in self.blocks:
            x = blk(x, hw)
        m = tokens_to_map(self.norm(x), hw)
        outs = []
        for i in self.out_indices:
            s = self.stage_strides[i]
            # the patch embedding padded the image to a multiple of 16: crop back to ceil(H / stride)
            f = self._pool_export if i == 3 and is_exporting() else getattr(self, f'fpn{i + 1}')
            # (ceil without negative operands: ONNX integer division truncates where Python's floors)
            outs.append(crop_hw(f(m), (in_h + s - 1) // s, (in_w + s - 1) // s))
        return tuple(outs)

    def pretrained_new_keys(self) -> List[str]:
        """The ViTDet pyramid's transposed convs (``fpn1``, ``fpn2``) are not in classification checkpoints."""
        return [k for k in self.state_dict() if k.startswith(('fpn1.', 'fpn2.'))]

    @staticmethod
    def _pool_export(m: Tensor) -> Tensor:
        """``fpn4`` (2x2 max-pool, ceil mode) written as -inf padding to even sizes + floor-mode pooling: the
        same values, without ceil mode's size rule, which the exporter would freeze at the example size."""
        m = F.pad(m, (0, m.shape[-1] % 2, 0, m.shape[-2] % 2), value=float('-inf'))
        return F.max_pool2d(m, 2)

    def convert_official(self, state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """Official InLine-DeiT / TaylorShift-ViT (timm layout) -> ours: drop ``head``/``cls_token`` (and
        ``dist_token``), the class/distillation entries of ``pos_embed`` (InLine-DeiT has one; TaylorShift's
        ViT, ``no_embed_class``, none), and reshape TaylorShift's ``temperature`` ``(1, H, 1, 1)`` -> ``(H,)``."""
        out = {}
        for k, v in state_dict.items():
            if k.startswith(('head', 'cls_token', 'dist_token', 'fc_norm')):
                continue
            if k.endswith('attn.temperature') and v.dim() != 1:
                v = v.reshape(-1)
            if k == 'pos_embed' and v.dim() == 3:
                n_extra = v.shape[1] - int(round(v.shape[1] ** 0.5)) ** 2
                v = v[:, n_extra:]
                if v.shape[1] != self.pos_embed.shape[1]:
                    v = resize_pos_embed(v, self.pos_embed.shape[1])
            out[k] = v
        return out
