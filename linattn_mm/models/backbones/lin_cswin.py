"""LinCSwin: the CSWin layout with per-stage attention (InLine-CSwin presets by default).

CSWin Transformer (X. Dong et al., CVPR 2022; github microsoft/CSWin-Transformer) as modified by InLine-CSwin
(D. Han et al., NeurIPS 2024; github LeapLabTHU/InLine, ``models/inline_cswin.py``, ``cfgs/inline_cswin_*.yaml``):
a 7x7 stride-4 conv stem + LayerNorm (``stage1_conv_embed``), stages ``stage1..stage4`` of pre-norm blocks,
3x3 stride-2 conv + LayerNorm merging (``merge1..merge3``). Stage attention is given by letters:

* 'I': InLine over the whole stage map plus LePE (the official ``la_split_size`` 56-28-14-7 is the whole map
  at 224, so the official code runs one head group, global);
* 'S': cross-shaped stripe softmax with LePE (:class:`~linattn_mm.layers.CSWinAttention`), two head groups
  (vertical / horizontal stripes) of width ``split_size[i]``, or one global group where it is None.

Dense-prediction defaults follow CSWin's own segmentation / detection backbone
(``segmentation/backbone/cswin_transformer.py``): stripe widths 1, 2, 7 in stages 1-3 at every resolution
(no resizing with the image) and a *global* last stage (its ``last_stage`` blocks use the whole H x W map,
``idx=-1``), where the classifiers' split 7 only happened to equal the 7x7 map at 224; stripes are padded
symmetrically and cropped back. Unlike that code, the padding is masked out of the softmax.

Names follow the official checkpoints; our blocks hold the attention under ``attn`` (``stage{s}.{j}.qkv`` ->
``stage{s}.{j}.attn.qkv``, likewise ``proj`` and ``attns``) and there is one LayerNorm per returned map
(``norm{i}``, as mmdet's Swin) where the official model has one final ``norm`` (converted to ``norm3``).
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Sequence, Union

from torch import Tensor, nn

from linattn_mm.layers import CSWinAttention
from linattn_mm.ops._utils import pad_amount
from linattn_mm.registry import MODELS

from ._base import LinBackboneBase, resolve_arch, stage_attn_cfgs
from ._blocks import Block, drop_path_rates, tokens_to_map

CSWIN_PRESETS: Dict[str, dict] = {
    # official inline_cswin_{tiny,small,base} (models/inline_cswin.py), letters 'IISS' (cfgs/inline_cswin_*.yaml)
    't': dict(embed_dims=64, depths=[2, 4, 18, 1], num_heads=[2, 4, 8, 16]),
    's': dict(embed_dims=64, depths=[3, 6, 29, 2], num_heads=[2, 4, 8, 16]),
    'b': dict(embed_dims=96, depths=[3, 6, 29, 2], num_heads=[4, 8, 16, 32]),
}
LETTERS = ('I', 'S')


class _Tokens(nn.Module):
    """``(B, C, H, W)`` -> ``(B, H*W, C)``: the official stem's ``Rearrange`` (slot 1 of ``stage1_conv_embed``)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(2).transpose(1, 2)


class ConvMerge(nn.Module):
    """CSWin's ``Merge_Block``: 3x3 stride-2 conv (padding 1, so ``ceil(H/2) x ceil(W/2)``) + LayerNorm."""

    def __init__(self, dim: int, dim_out: int):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim_out, 3, 2, 1)
        self.norm = nn.LayerNorm(dim_out)

    def forward(self, x: Tensor, hw):
        x = self.conv(tokens_to_map(x, hw))
        return self.norm(x.flatten(2).transpose(1, 2)), (x.shape[2], x.shape[3])


class CSWinBlock(Block):
    """:class:`Block` whose CSWin attention gets the block input (before ``norm1``) as ``kernel_source``: the
    official InLine-CSwin generates its local kernels from ``x.mean(dim=1)`` of the un-normalised tokens."""

    def _forward(self, x: Tensor, hw: Sequence[int]) -> Tensor:
        kw = dict(kernel_source=x) if isinstance(self.attn, CSWinAttention) else {}
        x = x + self.drop_path(self.attn(self.norm1(x), hw, **kw))
        return x + self.drop_path(self.mlp(self.norm2(x)))


@MODELS.register_module()
class LinCSwin(LinBackboneBase):
    """CSWin-style hierarchical backbone with any attention per stage.

    Args:
        arch: 't', 's', 'b' (InLine-CSwin T/S/B) or a dict (``embed_dims``, ``depths``, ``num_heads``).
        attn_type: official letters, one per stage ('I' global InLine + LePE, 'S' stripe softmax + LePE), used
            when ``attn_cfg`` is None. Default 'IISS' (all released InLine-CSwin models).
        attn_cfg: replaces the letters: one dict/name for all stages or a list per stage. Any attention of the
            table replaces the stripe attention of the stage's blocks; ``'cswin'`` gets ``split_size[i]``
            unless given.
        split_size: stripe width per stage for 'S' / ``'cswin'`` stages; None = the whole map (global).
            Default ``(1, 2, 7, None)``: CSWin's dense-prediction choice (see the module docstring).
        in_channels, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, drop_path_rate: as in CSWin (qkv bias on,
            stochastic depth growing linearly; the official ImageNet rates are 0.2 / 0.4 / 0.5 for T / S / B).
        out_indices: stages whose maps are returned (strides 4, 8, 16, 32; ``ceil(H / stride)`` for any H).
        frozen_stages: freeze stem + stages ``0..frozen_stages`` (stage i owns the merge before it and
            ``norm{i}``); norm_eval: LayerNorms in eval mode; with_cp: gradient checkpointing per block.
        init_cfg: ``dict(type='Pretrained', checkpoint=PATH)``: ours, or an official InLine-CSwin checkpoint.
    """

    def __init__(self, arch: Union[str, dict] = 't', attn_type: str = 'IISS', attn_cfg=None,
                 split_size: Sequence[Optional[int]] = (1, 2, 7, None), in_channels: int = 3,
                 mlp_ratio: float = 4., qkv_bias: bool = True, out_indices: Sequence[int] = (0, 1, 2, 3),
                 drop_rate: float = 0., attn_drop_rate: float = 0., drop_path_rate: float = 0.1,
                 frozen_stages: int = -1, norm_eval: bool = False, with_cp: bool = False,
                 init_cfg: Optional[dict] = None, pretrained: Optional[str] = None):
        super().__init__(out_indices, frozen_stages, norm_eval, init_cfg, pretrained)
        a = resolve_arch(arch, CSWIN_PRESETS, 'LinCSwin')
        c0, depths, heads = a['embed_dims'], a['depths'], a['num_heads']
        self.num_stages = len(depths)
        self._check_out_indices(self.num_stages)
        if len(heads) != self.num_stages or len(split_size) != self.num_stages:
            raise ValueError(f'LinCSwin: num_heads {heads} and split_size {tuple(split_size)} need one entry per '
                             f'stage ({self.num_stages})')
        if attn_cfg is None:
            if len(attn_type) != self.num_stages or set(attn_type) - set(LETTERS):
                raise ValueError(f"LinCSwin: attn_type {attn_type!r} needs one letter per stage from "
                                 f"{list(LETTERS)} ('I' InLine, 'S' stripe softmax)")
            attn_cfg = [dict(type='cswin', inner='inline', split_size=None) if ch == 'I' else dict(type='cswin')
                        for ch in attn_type]
        cfgs = stage_attn_cfgs(attn_cfg, self.num_stages, 'LinCSwin')
        dims = [c0 * 2 ** i for i in range(self.num_stages)]
        self.stage_channels = dims
        self.stage_strides = [4 * 2 ** i for i in range(self.num_stages)]
        self.stage1_conv_embed = nn.Sequential(nn.Conv2d(in_channels, c0, 7, 4, 2), _Tokens(), nn.LayerNorm(c0))
        dpr = drop_path_rates(depths, drop_path_rate)
        # stages after the last returned one are not built: they would never get a gradient
        self.num_built = max(self.out_indices) + 1
        for i in range(self.num_built):
            cfg = dict(cfgs[i])
            if cfg['type'] == 'cswin':
                cfg.setdefault('split_size', split_size[i])
            if i > 0:
                setattr(self, f'merge{i}', ConvMerge(dims[i - 1], dims[i]))
            setattr(self, f'stage{i + 1}', nn.ModuleList([
                CSWinBlock(dims[i], heads[i], cfg, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, dpr[i][j],
                           norm_eps=1e-5, with_cp=with_cp) for j in range(depths[i])]))
        for i in self.out_indices:
            self.add_module(f'norm{i}', nn.LayerNorm(dims[i]))
        self.init_weights()

    def _stage_modules(self, i: int) -> List[nn.Module]:
        if i >= self.num_built:
            return []
        mods = [getattr(self, f'stage{i + 1}'), self.stage1_conv_embed if i == 0 else getattr(self, f'merge{i}')]
        if i in self.out_indices:
            mods.append(getattr(self, f'norm{i}'))
        return mods

    def forward(self, x: Tensor):
        h, w = x.shape[-2:]
        # pad to a multiple of 4 so the 7x7/4 stem (padding 2) gives ceil(H/4) x ceil(W/4); a no-op at 224
        x = nn.functional.pad(x, (0, pad_amount(w, 4), 0, pad_amount(h, 4)))  # no `%`: see pad_amount
        x = self.stage1_conv_embed[0](x)
        hw = (x.shape[2], x.shape[3])
        x = self.stage1_conv_embed[2](self.stage1_conv_embed[1](x))
        outs = []
        for i in range(self.num_built):
            if i > 0:
                x, hw = getattr(self, f'merge{i}')(x, hw)
            for blk in getattr(self, f'stage{i + 1}'):
                x = blk(x, hw)
            if i in self.out_indices:
                outs.append(tokens_to_map(getattr(self, f'norm{i}')(x), hw))
        return tuple(outs)

    def pretrained_new_keys(self) -> List[str]:
        """Per-level norms ``norm{i}`` before the last stage (the official model has only the final ``norm``,
        converted to ``norm{last}``)."""
        last = self.num_stages - 1
        return [k for k in self.state_dict() if re.match(r'norm\d+\.', k) and not k.startswith(f'norm{last}.')]

    def convert_official(self, state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """Official InLine-CSwin keys -> ours: drop ``head``, ``stage{s}.{j}.{qkv,proj,attns}`` ->
        ``stage{s}.{j}.attn.*``, final ``norm`` -> ``norm{last}``."""
        out = {}
        last = self.num_stages - 1
        for k, v in state_dict.items():
            if k.startswith('head.'):
                continue
            if k.startswith('norm.'):
                k = f'norm{last}.' + k[len('norm.'):]
            out[re.sub(r'^(stage\d+\.\d+\.)(qkv|proj|attns)\.', r'\1attn.\2.', k)] = v
        return out
