"""The backbones as timm models: ``timm.create_model('linpvt_t_inline')`` is an ImageNet classifier that
timm's training script, optimiser factory (weight decay / layer decay), feature wrappers and test suite treat
like any timm model; ``features_only=True`` returns the backbone's NCHW maps with ``feature_info``.

Built with timm's own machinery (``generate_default_cfgs``, ``build_model_with_cfg``), following the model
contract of timm's hierarchical models (``pvt_v2.py``, ``swin_transformer.py``; github
huggingface/pytorch-image-models): ``pretrained_cfg``, ``num_features`` / ``head_hidden_size``,
``forward_features`` (unpooled last map) / ``forward_head(pre_logits=...)``, ``reset_classifier`` /
``get_classifier``, ``forward_intermediates`` / ``prune_intermediate_layers`` (``features_only`` uses timm's
``FeatureGetterNet`` by default; ``feature_cls='hook'`` / ``'fx'`` work too), ``set_grad_checkpointing``
(the backbones' ``with_cp``), ``group_matcher`` / ``no_weight_decay``, ``device=`` / ``dtype=`` factory
arguments and construction on the meta device. No weights are hosted: ``pretrained=True`` needs
``pretrained_cfg_overlay=dict(file=PATH)`` (our classifier checkpoints, or the official InLine / TaylorShift
ImageNet checkpoints, converted on the fly), ``checkpoint_path=PATH`` loads our own checkpoints.

Which levels exist: a classifier builds the backbone modules of its last level only (e.g. LinSwin's
``norm3``; LinViT's ViTDet branches are not built), so every parameter takes part in ``forward`` (DDP needs
that); ``features_only=True, out_indices=...`` (negative indices count from the last level) builds the
requested levels. TorchScript is not supported (see :data:`SCRIPT_UNSUPPORTED`).
"""
from __future__ import annotations

import re
from contextlib import nullcontext
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Type, Union

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ClassifierHead, LayerNorm2d, register_notrace_function, register_notrace_module
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models._pretrained import PretrainedCfg
from timm.models._registry import get_pretrained_cfg
from torch import Tensor, nn

from linattn_mm.layers import ATTENTIONS
from linattn_mm.ops._utils import crop_hw

from .backbones import LinCSwin, LinPVT, LinSwin, LinViT
from .backbones import _base as _bb_base
from .backbones import _blocks as _bb_blocks
from .backbones import lin_swin as _bb_swin

#: why ``torch.jit.script`` cannot compile these models (timm's TorchScript tests are skipped with it)
SCRIPT_UNSUPPORTED = (
    'TorchScript cannot compile the shared attention / backbone code: the attention layers take hw_shape as '
    'typing.Sequence[int] (TorchScript knows only List / Tuple), the modules use postponed (string) '
    'annotations, and the layers are built from config dicts and pick optional Triton kernels and '
    'torch.utils.checkpoint at run time; use eager mode or torch.compile')

# torch.fx (timm's FeatureGraphNet, torchvision's feature extraction): attention layers are leaves (their
# shape-dependent control flow runs eagerly), as are the small helpers that branch on sizes.
for _attn_cls in ATTENTIONS.values():
    register_notrace_module(_attn_cls)
for _fn in (_bb_blocks.pad_to_multiple, _bb_base.interpolate_pos, _bb_swin.pad_to_even, crop_hw):
    register_notrace_function(_fn)


# ------------------------------------------------------------------------------------------------ the model
class LinClassifier(nn.Module):
    """ImageNet classifier on one of our backbones, with timm's model contract.

    ``forward_features`` returns the last built level's NCHW map (after the final norm where the backbone
    has none of its own, LinPVT: ``norm``, as the official InLine-PVT); ``forward_head`` pools it
    (``global_pool``), applies dropout and the linear ``head.fc``.

    Args:
        backbone_cls: LinPVT, LinSwin, LinViT (or any backbone with ``stage_channels`` / ``stage_strides``,
            ``out_indices`` and a forward returning one map per ``out_indices`` entry).
        num_classes: classifier outputs; 0 removes the classifier (``forward`` returns pooled features).
        in_chans: image channels (the backbone's ``in_channels``).
        global_pool: 'avg', 'max', 'avgmax' or '' (no pooling, only with ``num_classes=0``).
        drop_rate: dropout before the classifier.
        final_norm: add a LayerNorm on the last map (for backbones whose last map is not normalised).
        feature_indices: backbone levels to build (absolute or negative); default the last level only.
            ``features_only=True`` passes the requested ``out_indices`` here.
        group_matcher: ``coarse -> dict`` of timm's parameter-group regexes (layer decay).
        device, dtype: where / in which dtype parameters and buffers are created (timm factory kwargs).
        **backbone_kwargs: the backbone's own arguments (``arch``, ``attn_cfg``, ``drop_path_rate``, ...).

    Shapes: input ``(B, in_chans, H, W)``, any H x W; ``forward_features`` -> ``(B, C, ceil(H/32),
    ceil(W/32))``; ``forward`` -> ``(B, num_classes)``.
    """

    def __init__(self, backbone_cls: Type[nn.Module], num_classes: int = 1000, in_chans: int = 3,
                 global_pool: str = 'avg', drop_rate: float = 0., final_norm: bool = False,
                 feature_indices: Optional[Sequence[int]] = None,
                 group_matcher: Optional[Callable[[bool], Dict[str, Any]]] = None,
                 device: Optional[Union[str, torch.device]] = None, dtype: Optional[torch.dtype] = None,
                 **backbone_kwargs):
        super().__init__()
        if global_pool not in ('avg', 'max', 'avgmax', ''):
            raise ValueError(f"{backbone_cls.__name__} classifier: global_pool={global_pool!r} is not supported; "
                             f"use 'avg', 'max', 'avgmax' or '' (no pooling, with num_classes=0)")
        if 'out_indices' in backbone_kwargs:
            raise TypeError(f'{backbone_cls.__name__} classifier: out_indices only applies with '
                            f'features_only=True; use feature_indices=... to build more levels')
        self.num_levels = _num_levels(backbone_kwargs)
        levels = [self.num_levels - 1] if feature_indices is None else \
            sorted(set(_abs_indices(feature_indices, self.num_levels)))
        with torch.device(device) if device is not None else nullcontext():
            self.backbone = backbone_cls(in_channels=in_chans, out_indices=tuple(levels), **backbone_kwargs)
            # one Identity per built level: the modules feature_info names (FeatureHookNet, FeatureGraphNet)
            self.taps = nn.ModuleDict({str(i): nn.Identity() for i in levels})
            c = self.backbone.stage_channels[levels[-1]]
            self.norm = LayerNorm2d(c, eps=1e-6) if final_norm else nn.Identity()
            self.head = ClassifierHead(c, num_classes, pool_type=global_pool, drop_rate=drop_rate)
        if dtype is not None:
            self.to(dtype=dtype)
        self.levels: List[int] = levels
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.drop_rate = drop_rate
        self.num_features = self.head_hidden_size = c
        self._group_matcher = group_matcher
        bb = self.backbone
        self.feature_info = [dict(num_chs=bb.stage_channels[i], reduction=bb.stage_strides[i],
                                  module=f'taps.{i}', stage=i) for i in range(self.num_levels)]

    # -------------------------------------------------------------------------------------- timm API
    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        """timm's parameter groups (stem, then blocks in depth order) for layer-wise lr decay."""
        if self._group_matcher is not None:
            return self._group_matcher(coarse)
        return dict(stem=r'^backbone\.patch_embed', blocks=r'^backbone\.(?:layers|blocks?|stages?)\.?(\d+)')

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """Position tables and relative position biases (1-D params are excluded by timm anyway)."""
        keys = ('pos_embed', 'relative_position_bias_table', 'cls_token', 'global_token')
        return {n for n, _ in self.named_parameters() if any(k in n for k in keys)}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute every transformer block in backward (the backbones' ``with_cp``)."""
        for m in self.backbone.modules():
            if hasattr(m, 'with_cp'):
                m.with_cp = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """New classifier with ``num_classes`` outputs (0: none), on the model's device/dtype; pooling kept
        unless ``global_pool`` is given."""
        if global_pool is not None:
            if global_pool not in ('avg', 'max', 'avgmax', ''):
                raise ValueError(f"reset_classifier: global_pool={global_pool!r}; use 'avg', 'max', 'avgmax' or ''")
            self.global_pool = global_pool
        self.num_classes = num_classes
        ref = next(self.backbone.parameters())  # the head may have no parameters left (num_classes was 0)
        self.head.reset(num_classes, pool_type=global_pool, device=ref.device, dtype=ref.dtype)

    # ------------------------------------------------------------------------------------------ forward
    def _levels_forward(self, x: Tensor) -> List[Tensor]:
        outs = self.backbone(x)
        return [self.taps[str(i)](o) for i, o in zip(self.levels, outs)]

    def forward_features(self, x: Tensor) -> Tensor:
        """``(B, in_chans, H, W)`` -> the last built level's map ``(B, num_features, h, w)`` (unpooled)."""
        return self.norm(self._levels_forward(x)[-1])

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pool, dropout, classifier; ``pre_logits=True`` stops before the classifier (``head_hidden_size``)."""
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
            self,
            x: Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[Tensor], Tuple[Tensor, List[Tensor]]]:
        """The backbone's maps of the requested levels (and the final features).

        Args:
            x: ``(B, in_chans, H, W)``.
            indices: levels (negative from the end), an int n for the last n levels, None for all built ones.
            norm: accepted for timm's API; the maps are the backbone's own (normalised where it does so),
                the final norm applies to the final output only (as timm's hierarchical models).
            stop_early: accepted for timm's API; the backbone stops after its last built level anyway.
            output_fmt: 'NCHW' only.
            intermediates_only: return only the list of maps.

        Returns:
            ``[(B, C_i, ceil(H/s_i), ceil(W/s_i)), ...]``, or ``(final features, that list)``.
        """
        if output_fmt != 'NCHW':
            raise ValueError(f"forward_intermediates: output_fmt={output_fmt!r}; these models return 'NCHW' maps")
        take = list(self.levels) if indices is None else self._check_built(indices)
        feats = self._levels_forward(x)
        inter = [f for i, f in zip(self.levels, feats) if i in take]
        if intermediates_only:
            return inter
        return self.norm(feats[-1]), inter

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Keep what the levels ``indices`` need (the built levels; see the module docstring): drop the
        classifier (``prune_head``) and the final norm (``prune_norm``). Returns the absolute indices."""
        take = self._check_built(indices)
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, '')
        return take

    def _check_built(self, indices: Union[int, List[int]]) -> List[int]:
        take, _ = feature_take_indices(self.num_levels, indices)
        missing = [i for i in take if i not in self.levels]
        if missing:
            raise ValueError(f'levels {missing} are not built in this model (built: {self.levels}); create it '
                             f'with features_only=True, out_indices={tuple(take)} (or feature_indices=...)')
        return take


def _num_levels(backbone_kwargs: dict) -> int:
    arch = backbone_kwargs.get('arch')
    if isinstance(arch, dict) and 'depths' in arch:
        return len(arch['depths'])
    return 4


def _abs_indices(indices: Union[int, Sequence[int]], n: int) -> List[int]:
    """timm's index convention (int -> the last n levels, negative -> from the end), checked."""
    try:
        return feature_take_indices(n, indices if isinstance(indices, int) else list(indices))[0]
    except AssertionError as e:
        raise ValueError(f'out_indices {indices}: {e}; the model has levels 0..{n - 1}') from None


# ------------------------------------------------------------------------------------- pretrained weights
def checkpoint_filter_fn(state_dict: Dict[str, Tensor], model: LinClassifier) -> Dict[str, Tensor]:
    """A checkpoint -> this model's keys. Accepts ours (``backbone.*``, ``head.fc.*``), training checkpoints
    (``model`` / ``state_dict`` / ``model_state`` wrappers) and the official InLine-PVT / -Swin / -DeiT and
    TaylorShift classification checkpoints (converted by the backbone's ``convert_official``; position tables
    resized). Every backbone tensor must be found; head and final norm may be missing (adapted model)."""
    for key in ('model', 'state_dict', 'model_state', 'module'):
        if isinstance(state_dict.get(key), dict):
            state_dict = state_dict[key]
    own = model.state_dict()
    if not any(k.startswith('backbone.') for k in state_dict):
        sd = dict(state_dict)
        head = {f'head.fc.{k[5:]}': sd.pop(k) for k in list(sd) if k.startswith('head.')}
        norm = {}
        if isinstance(model.norm, nn.LayerNorm):  # official PVT: the final norm is ours
            norm = {k: sd.pop(k) for k in list(sd) if k.startswith('norm.')}
        bb = model.backbone._resize_position_tables(model.backbone.convert_official(sd))
        state_dict = {**{f'backbone.{k}': v for k, v in bb.items()}, **head, **norm}
    missing = [k for k in own if k.startswith('backbone.') and k not in state_dict]
    if missing:
        raise ValueError(f'checkpoint lacks {len(missing)} backbone tensors of this model (first: {missing[:5]}); '
                         f'is it a checkpoint of the same backbone and arch?')
    out = {k: v for k, v in state_dict.items() if k in own}
    for k in [k for k in out if k.startswith('head.fc.') and out[k].shape != own[k].shape]:
        del out[k]  # another number of classes: keep the new classifier
    return out


def _check_pretrained_source(variant: str, pretrained: bool, kwargs: dict) -> None:
    if not pretrained:
        return
    cfg = kwargs.get('pretrained_cfg') or get_pretrained_cfg(variant)
    if isinstance(cfg, dict):
        cfg = PretrainedCfg(**cfg)
    overlay = kwargs.get('pretrained_cfg_overlay') or {}
    if not any(overlay.get(k) or getattr(cfg, k, None) for k in ('file', 'url', 'hf_hub_id', 'state_dict')):
        raise ValueError(f'{variant}: no hosted weights; pass pretrained_cfg_overlay=dict(file=PATH) with '
                         f'pretrained=True (ours or an official InLine / TaylorShift checkpoint), or '
                         f'checkpoint_path=PATH for a checkpoint of this timm model')


# ------------------------------------------------------------------------------------------ the model table
def _cfg(first_conv: str = 'backbone.patch_embed.proj', **kwargs) -> Dict[str, Any]:
    return {'url': '', 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7), 'crop_pct': 0.9,
            'interpolation': 'bicubic', 'fixed_input_size': False, 'mean': IMAGENET_DEFAULT_MEAN,
            'std': IMAGENET_DEFAULT_STD, 'first_conv': first_conv, 'classifier': 'head.fc',
            'license': 'apache-2.0', **kwargs}


def _pvt_groups(coarse: bool) -> Dict[str, Any]:
    return dict(stem=r'^backbone\.(?:patch_embed1|pos_embed1)\b', blocks=r'^backbone\.(?:patch_embed|pos_embed|block)(\d+)'
                if coarse else [(r'^backbone\.block(\d+)\.(\d+)', None),
                                (r'^backbone\.(?:patch_embed|pos_embed)(\d+)', (0,)), (r'^norm', (99999,))])


def _swin_groups(coarse: bool) -> Dict[str, Any]:
    return dict(stem=r'^backbone\.patch_embed', blocks=r'^backbone\.layers\.(\d+)' if coarse else [
        (r'^backbone\.layers\.(\d+)\.downsample', (0,)), (r'^backbone\.layers\.(\d+)\.blocks\.(\d+)', None),
        (r'^backbone\.norm(\d+)', (99999,))])


def _cswin_groups(coarse: bool) -> Dict[str, Any]:
    return dict(stem=r'^backbone\.stage1_conv_embed', blocks=r'^backbone\.(?:stage|merge)(\d+)' if coarse else [
        (r'^backbone\.merge(\d+)', (0,)), (r'^backbone\.stage(\d+)\.(\d+)', None),
        (r'^backbone\.norm(\d+)', (99999,))])


def _vit_groups(coarse: bool) -> Dict[str, Any]:
    return dict(stem=r'^backbone\.(?:patch_embed|pos_embed)', blocks=[
        (r'^backbone\.blocks\.(\d+)', None), (r'^backbone\.(?:norm|fpn\d)', (99999,))])


#: timm's pretrained configs of this module (no weights hosted), read by ``register_model``
default_cfgs: Dict[str, Any] = {}
#: model name -> (backbone class, backbone kwargs, LinClassifier options); filled by :func:`add_family`
VARIANTS: Dict[str, Tuple[Type[nn.Module], dict, dict]] = {}


def add_family(name: str, backbone_cls: Type[nn.Module], sizes: Sequence[str],
               attns: Optional[Dict[str, dict]] = None, arch: str = '{size}',
               groups: Optional[Callable[[bool], Dict[str, Any]]] = None, final_norm: bool = False,
               first_conv: str = 'backbone.patch_embed.proj') -> None:
    """Register ``name.format(size=..., attn=...)`` for every size x attention as a timm model.

    Args:
        name: e.g. ``'linpvt_{size}_{attn}'``.
        backbone_cls: the backbone class.
        sizes: preset suffixes; ``arch.format(size=s)`` is the backbone's ``arch``.
        attns: attention name -> backbone kwargs that select it (None: one model per size, no ``{attn}``).
        groups: timm ``group_matcher`` (``coarse -> dict``) for layer decay.
        final_norm: the classifier adds a LayerNorm on the last map (backbones without one).
        first_conv: the patch embedding conv (pretrained_cfg, for in_chans adaptation).
    """
    for size in sizes:
        for attn, akw in (attns or {'': {}}).items():
            variant = name.format(size=size, attn=attn)
            VARIANTS[variant] = (backbone_cls, dict(arch=arch.format(size=size), **akw),
                                 dict(final_norm=final_norm, group_matcher=groups))
            default_cfgs.update(generate_default_cfgs({variant: _cfg(first_conv=first_conv)}))

            def entry(pretrained: bool = False, _variant=variant, **kwargs) -> LinClassifier:
                return _create(_variant, pretrained, **kwargs)
            entry.__name__ = entry.__qualname__ = variant
            entry.__module__ = __name__
            entry.__doc__ = f'{variant}: {backbone_cls.__name__}({VARIANTS[variant][1]}) as a timm model.'
            globals()[variant] = register_model(entry)  # reads this module's `default_cfgs`


def _create(variant: str, pretrained: bool = False, **kwargs) -> nn.Module:
    backbone_cls, bb_kwargs, clf_kwargs = VARIANTS[variant]
    _check_pretrained_source(variant, pretrained, kwargs)
    for k, v in bb_kwargs.items():
        kwargs.setdefault(k, v)
    if kwargs.get('features_only'):
        out_indices = kwargs.setdefault('out_indices', tuple(range(_num_levels(kwargs))))
        kwargs['feature_indices'] = _abs_indices(out_indices, _num_levels(kwargs))
    # 'getter' (FeatureGetterNet, forward_intermediates) by default; 'hook' / 'fx' use the `taps.{i}` modules
    feature_cfg = dict(feature_cls='getter', no_rewrite=True)
    return build_model_with_cfg(LinClassifier, variant, pretrained, feature_cfg=feature_cfg,
                                pretrained_filter_fn=checkpoint_filter_fn, pretrained_strict=False,
                                backbone_cls=backbone_cls, **clf_kwargs, **kwargs)


add_family('linpvt_{size}_{attn}', LinPVT, 'tsml', {a: dict(attn_cfg=dict(type=a)) for a in
                                                    ('inline', 'taylorshift', 'linformer', 'softmax')},
           groups=_pvt_groups, final_norm=True, first_conv='backbone.patch_embed1.proj')
add_family('linswin_{size}_{attn}', LinSwin, 'tsb', {
    'inline': dict(),  # the preset's official letters (IIIS / IISS / IIMS2)
    **{a: dict(attn_cfg=[dict(type=a)] * 3 + [dict(type='window')]) for a in ('taylorshift', 'linformer')}},
    groups=_swin_groups)
add_family('lindeit_{size}_inline', LinViT, 'tsb', arch='deit_{size}', groups=_vit_groups)
add_family('lintaylor_vit_{size}', LinViT, 'ts', arch='taylor_{size}', groups=_vit_groups)
add_family('lincswin_{size}_inline', LinCSwin, 'tsb', {'inline': dict(attn_type='IISS')}, groups=_cswin_groups,
           first_conv='backbone.stage1_conv_embed.0')

__all__ = ['LinClassifier', 'SCRIPT_UNSUPPORTED', 'VARIANTS', 'add_family', 'checkpoint_filter_fn'] + list(VARIANTS)
