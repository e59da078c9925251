"""The backbones as timm models, so they can be pretrained with timm's ImageNet tooling and used outside
OpenMMLab: ``timm.create_model('linpvt_t_inline', features_only=True)`` returns the backbone (a list of NCHW
maps, with ``feature_info``); without ``features_only`` a classifier (global average pool of the last map,
LayerNorm, linear head) on top of it.
"""
from __future__ import annotations

from typing import Callable, Dict

import torch
from timm.models import register_model
from timm.models._features import FeatureInfo
from torch import nn

from .backbones import LinCSwin, LinPVT, LinSwin, LinViT

_TIMM_KWARGS = ('pretrained_cfg', 'pretrained_cfg_overlay', 'cache_dir')


class LinClassifier(nn.Module):
    """ImageNet head on a backbone: pool the last returned map, LayerNorm, Linear."""

    def __init__(self, backbone: nn.Module, num_classes: int = 1000):
        super().__init__()
        self.backbone = backbone
        c = backbone.out_channels[-1]
        self.num_classes = num_classes
        self.norm = nn.LayerNorm(c)
        self.head = nn.Linear(c, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x):
        return self.backbone(x)[-1]

    def forward(self, x):
        return self.head(self.norm(self.forward_features(x).mean((2, 3))))


class _FeaturesBackbone(nn.Module):
    """timm's ``features_only`` contract: forward returns a list; ``feature_info`` is a timm FeatureInfo."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.feature_info = FeatureInfo(backbone.feature_info, list(range(len(backbone.out_indices))))

    def forward(self, x):
        return list(self.backbone(x))


def _make(cls, **defaults) -> Callable:
    def build(pretrained: bool = False, features_only: bool = False, num_classes: int = 1000, **kwargs):
        if pretrained:
            raise ValueError('linattn_mm timm models have no hosted weights: pass '
                             'init_cfg=dict(type="Pretrained", checkpoint=PATH) or load a state dict')
        for k in _TIMM_KWARGS:
            kwargs.pop(k, None)
        out_indices = kwargs.pop('out_indices', (0, 1, 2, 3))
        bb = cls(**{**defaults, **kwargs}, out_indices=tuple(out_indices) if features_only else (3,))
        return _FeaturesBackbone(bb) if features_only else LinClassifier(bb, num_classes)
    return build


_MODELS: Dict[str, Callable] = {}
for _size in ('t', 's', 'm', 'l'):
    for _attn in ('inline', 'taylorshift', 'linformer', 'softmax'):
        _MODELS[f'linpvt_{_size}_{_attn}'] = _make(LinPVT, arch=_size, attn_cfg=dict(type=_attn))
for _size in ('t', 's', 'b'):
    _MODELS[f'linswin_{_size}_inline'] = _make(LinSwin, arch=_size, attn_type='IIIS')
    for _attn in ('taylorshift', 'linformer'):
        _MODELS[f'linswin_{_size}_{_attn}'] = _make(
            LinSwin, arch=_size, attn_cfg=[dict(type=_attn)] * 3 + [dict(type='window')])
    _MODELS[f'lindeit_{_size}_inline'] = _make(LinViT, arch=f'deit_{_size}')
    _MODELS[f'lincswin_{_size}_inline'] = _make(LinCSwin, arch=_size, attn_type='IISS')
for _size in ('t', 's'):
    _MODELS[f'lintaylor_vit_{_size}'] = _make(LinViT, arch=f'taylor_{_size}')

for _name, _fn in _MODELS.items():
    _fn.__name__ = _name
    _fn.__qualname__ = _name
    _fn.__module__ = __name__
    globals()[_name] = register_model(_fn)

__all__ = ['LinClassifier'] + list(_MODELS)
