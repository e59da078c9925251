"""What every backbone of ours shares: stage freezing, norm_eval, declared outputs, pretrained loading.

A backbone returns a tuple of NCHW maps for ``out_indices`` and declares them (timm's ``feature_info`` idea):
``out_channels`` and ``out_strides`` (per returned map) and ``feature_info`` (a list of dicts with
``num_chs``, ``reduction``, ``module``), so configs and tests read them instead of repeating numbers.
"""
from __future__ import annotations

import copy
import math
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from mmengine.model import BaseModule
from torch import nn

from linattn_mm.ops._utils import is_exporting


class LinBackboneBase(BaseModule):
    """Base of LinPVT / LinSwin / LinViT / LinCSwin. Subclasses fill ``self.stage_channels`` / ``self.stage_strides``
    (all stages) and implement ``_stage_modules(i)`` (the modules that stage ``i`` owns, for freezing) and
    ``convert_official(state_dict)`` (official checkpoint keys -> ours)."""

    stage_channels: List[int]
    stage_strides: List[int]

    def __init__(self, out_indices: Sequence[int], frozen_stages: int = -1, norm_eval: bool = False,
                 init_cfg: Optional[dict] = None, pretrained: Optional[str] = None):
        super().__init__(init_cfg=None)
        if pretrained is not None:
            # mmseg's EncoderDecoder hands its model-level ``pretrained`` to the backbone; stock configs point
            # it at ImageNet ResNet weights, which cannot fit ours: ignore those (with a note) so swapping the
            # backbone stays a one-line change, and treat any other path as init_cfg=Pretrained.
            if str(pretrained).startswith(('open-mmlab://', 'torchvision://', 'mmcls://')):
                print_log(f'{type(self).__name__}: ignoring pretrained={pretrained!r} (weights of another '
                          f'backbone); use init_cfg=dict(type="Pretrained", checkpoint=...)', logger='current')
            elif init_cfg is None:
                init_cfg = dict(type='Pretrained', checkpoint=pretrained)
        self._pretrained_cfg = copy.deepcopy(init_cfg)
        self.out_indices = tuple(out_indices)
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval

    # ------------------------------------------------------------------------------------- declaration
    def _check_out_indices(self, num_stages: int) -> None:
        bad = [i for i in self.out_indices if not 0 <= i < num_stages]
        if bad or not self.out_indices:
            raise ValueError(f'{type(self).__name__}: out_indices {self.out_indices} must be non-empty and in '
                             f'[0, {num_stages - 1}]')

    @property
    def out_channels(self) -> List[int]:
        return [self.stage_channels[i] for i in self.out_indices]

    @property
    def out_strides(self) -> List[int]:
        return [self.stage_strides[i] for i in self.out_indices]

    @property
    def feature_info(self) -> List[Dict]:
        return [dict(num_chs=self.stage_channels[i], reduction=self.stage_strides[i], module=f'stage{i}')
                for i in self.out_indices]

    # ----------------------------------------------------------------------------------------- freezing
    def _stage_modules(self, i: int) -> List[nn.Module]:
        raise NotImplementedError

    def _freeze_stages(self) -> None:
        for i in range(self.frozen_stages + 1):
            for m in self._stage_modules(i):
                m.eval()
                for p in m.parameters():
                    p.requires_grad = False
                if isinstance(m, nn.Parameter):  # pragma: no cover - parameters are handled by owners
                    m.requires_grad = False

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)):
                    m.eval()
        return self

    # ------------------------------------------------------------------------------ pretrained weights
    def convert_official(self, state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        return state_dict

    def pretrained_new_keys(self) -> List[str]:
        """Backbone tensors an official classification checkpoint legitimately lacks (dense-prediction additions,
        left at initialisation when loading one). Each family lists its own; none by default."""
        return []

    def init_weights(self) -> None:
        """Random init, then ``init_cfg=dict(type='Pretrained', checkpoint=PATH)`` if given.

        Optional keys: ``use_ema`` (take the checkpoint's EMA weights), ``prefix`` (entries of a whole-model
        checkpoint, ``'backbone.'``), ``source`` (naming of the checkpoint, ``'official'``: InLine /
        TaylorShift releases and ours; ``'timm'``, ``'mmdet'``, ``'mmpretrain'``: a softmax Swin / PVTv2 /
        ViT checkpoint mapped into any attention, :mod:`.softmax_ckpt`). Accepts every common layout (ours,
        mmengine, the official training checkpoints, DDP prefixes), converts with :meth:`convert_official` and resizes position tables; a
        checkpoint that does not fill every backbone tensor raises
        :class:`~linattn_mm.models.backbones._pretrained.PretrainedMismatchError`. See
        :func:`~linattn_mm.models.backbones._pretrained.load_pretrained` (shared with tools/convert_weights.py).
        """
        self._init_random()
        cfg = self._pretrained_cfg
        if not cfg:
            return
        known = {'type', 'checkpoint', 'use_ema', 'prefix', 'source'}
        if cfg.get('type') != 'Pretrained' or 'checkpoint' not in cfg or set(cfg) - known:
            raise ValueError(f"{type(self).__name__}: init_cfg must be dict(type='Pretrained', checkpoint=PATH"
                             f"[, use_ema=False, prefix='backbone.', source='official']), got {cfg}")
        from ._pretrained import load_pretrained
        load_pretrained(self, cfg['checkpoint'], use_ema=cfg.get('use_ema', False),
                        prefix=cfg.get('prefix', 'backbone.'), source=cfg.get('source', 'official'))

    def _init_random(self) -> None:
        from timm.layers import trunc_normal_
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _resize_position_tables(self, state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        own = self.state_dict()
        for k, v in list(state.items()):
            if k in own and v.shape != own[k].shape and 'pos_embed' in k and v.dim() == 3:
                state[k] = resize_pos_embed(v, own[k].shape[1])
        return state


def resize_pos_embed(pe: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """``(1, N0, C)`` square position table -> ``(1, num_tokens, C)`` by bicubic resizing (square grids)."""
    s0, s1 = int(math.isqrt(pe.shape[1])), int(math.isqrt(num_tokens))
    grid = pe.reshape(1, s0, s0, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=(s1, s1), mode='bicubic', align_corners=False).to(pe.dtype)
    return grid.flatten(2).transpose(1, 2)


def interpolate_pos(pe: torch.Tensor, ref_hw: Sequence[int], hw: Sequence[int]) -> torch.Tensor:
    """Position table defined on ``ref_hw`` -> the actual token grid ``hw`` (bilinear, non-square allowed)."""
    if not is_exporting() and tuple(ref_hw) == tuple(hw):  # exporting: always resize (no branch on sizes)
        return pe
    grid = pe.reshape(1, ref_hw[0], ref_hw[1], -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=tuple(hw), mode='bilinear', align_corners=False)
    return grid.flatten(2).transpose(1, 2)


def stage_attn_cfgs(attn_cfg, num_stages: int, name: str) -> List[dict]:
    """One attention config (dict or name) for all stages, or a list with one per stage."""
    if attn_cfg is None:
        return [None] * num_stages
    if isinstance(attn_cfg, (list, tuple)):
        if len(attn_cfg) != num_stages:
            raise ValueError(f'{name}: attn_cfg list has {len(attn_cfg)} entries, need one per stage ({num_stages})')
        return [copy.deepcopy(dict(c) if not isinstance(c, str) else dict(type=c)) for c in attn_cfg]
    cfg = dict(type=attn_cfg) if isinstance(attn_cfg, str) else dict(attn_cfg)
    return [copy.deepcopy(cfg) for _ in range(num_stages)]


def resolve_arch(arch, presets: Dict[str, dict], name: str) -> dict:
    if isinstance(arch, str):
        if arch not in presets:
            raise ValueError(f'{name}: unknown arch {arch!r}; presets: {", ".join(presets)}, or pass a dict')
        return copy.deepcopy(presets[arch])
    if isinstance(arch, dict):
        return copy.deepcopy(dict(arch))
    raise ValueError(f'{name}: arch must be a preset name or a dict, got {type(arch).__name__}')
