"""The plain name table of attention layers and its builder.

A plain dict rather than an mmengine registry on purpose: nested registry builds resolve in the caller's
scope (mmdet / mmseg) and would not find our classes (see DESIGN.md). Backbones take ``attn_cfg`` and call
:func:`build_attention`.
"""
from __future__ import annotations

import copy
from typing import Dict, Type, Union

import torch.nn as nn

from .base import BaseAttention
from .bigbird import BigBirdAttention
from .cswin import CSWinAttention
from .focused import FocusedLinearAttention
from .inline import InLineAttention
from .linear import LinearAttention
from .linformer import LinformerAttention
from .longformer import LongformerAttention
from .longshort import LongShortAttention
from .nystrom import NystromAttention
from .performer import PerformerAttention
from .relu import ReLULinearAttention
from .rfa import RFAAttention
from .softmax import SoftmaxAttention
from .sra import SRAttention
from .taylor import TaylorShiftAttention
from .window import WindowAttention

ATTENTIONS: Dict[str, Type[BaseAttention]] = {
    'softmax': SoftmaxAttention,
    'window': WindowAttention,
    'cswin': CSWinAttention,
    'sra': SRAttention,
    'inline': InLineAttention,
    'taylorshift': TaylorShiftAttention,
    'linformer': LinformerAttention,
    'performer': PerformerAttention,
    'nystrom': NystromAttention,
    'linear': LinearAttention,
    'focused': FocusedLinearAttention,
    'relu': ReLULinearAttention,
    'longformer': LongformerAttention,
    'bigbird': BigBirdAttention,
    'longshort': LongShortAttention,
    'rfa': RFAAttention,
}


def build_attention(cfg: Union[str, dict], embed_dims: int, num_heads: int = 8, **core_kwargs) -> nn.Module:
    """Build an attention layer from ``cfg``.

    Args:
        cfg: a name (``'inline'``) or a dict ``dict(type='inline', **method_options)``; the extra keys go to the
            constructor and win over ``core_kwargs`` (so a config can override e.g. ``qkv_bias``).
        embed_dims: channels ``C``.
        num_heads: heads.
        **core_kwargs: the rest of the constructor core from the caller (``qkv_bias``, ``attn_drop``,
            ``proj_drop``) and per-stage options (``window_size``, ``sr_ratio``, ...).

    Raises:
        ValueError: unknown name (the message lists the known ones) or a cfg without ``type``.
    """
    if isinstance(cfg, str):
        cfg = dict(type=cfg)
    elif isinstance(cfg, dict) or hasattr(cfg, 'keys'):
        cfg = copy.deepcopy(dict(cfg))
    else:
        raise ValueError(f'build_attention: cfg must be a name or a dict with "type", got {type(cfg).__name__}')
    if 'type' not in cfg:
        raise ValueError(f'build_attention: cfg {cfg} has no "type"; known: {sorted(ATTENTIONS)}')
    name = cfg.pop('type')
    if name not in ATTENTIONS:
        raise ValueError(f'build_attention: unknown attention {name!r}; known: {", ".join(sorted(ATTENTIONS))}')
    kwargs = {**core_kwargs, **cfg}
    return ATTENTIONS[name](embed_dims, num_heads, **kwargs)
