"""Start any attention from a softmax checkpoint: Swin, PVTv2 and DeiT/ViT weights of timm, mmdet and mmpretrain
mapped into :class:`LinSwin`, :class:`LinPVT` and :class:`LinViT`.

``init_cfg=dict(type='Pretrained', checkpoint=PATH, source='timm'|'mmdet'|'mmpretrain')`` on any of our backbones
calls :func:`convert_softmax_checkpoint`. Whatever attention the backbone uses, every tensor the two models share
is mapped: patch embeddings, norms, MLPs, q/k/v (split or concatenated between a fused ``qkv`` and PVT's
``q`` + ``kv``), output projections, and position tables (ViT ``pos_embed`` without its class/distillation
entries, resized; Swin relative position bias tables resized to another window). Parameters that exist only for
the new attention (InLine's local term, Linformer's projections, TaylorShift's temperature, ...) keep the
initialisation the backbone gave them, which is the method's own (its layer's constructor, and the
truncated-normal Linear / unit LayerNorm init of DeiT, PVT and Swin). The report (logged, and returned) lists
what was mapped, resized, new and dropped.

Key layouts read (the models were read for names only):

- timm ``swin_transformer`` (>= 0.9: ``layers.{i}.downsample`` merges at the *start* of stage ``i``; the
  official microsoft/Swin-Transformer layout, merging at the end, is recognised too), ``pvt_v2`` (``stages.{i}``;
  the official whai362/PVT layout is ours already) and ``vision_transformer`` / ``deit``.
- mmdet 3.x ``SwinTransformer`` and ``PyramidVisionTransformerV2``, mmpretrain 1.x ``SwinTransformer`` and
  ``VisionTransformer`` / ``DistilledVisionTransformer``. Their patch merging unfolds 2x2 neighbourhoods in
  (channel, kh, kw) order; the official order (the ``x0, x1, x2, x3`` concat of Swin) is restored here, the
  inverse of mmdet's ``swin_converter``.
"""
from __future__ import annotations

import math
import re
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from torch import Tensor, nn

from ._base import resize_pos_embed

SOURCES = ('timm', 'mmdet', 'mmpretrain')
Report = Dict[str, List[str]]


# ------------------------------------------------------------------------------------------------ helpers
def _sub(rules: List[Tuple[str, str]], k: str) -> str:
    for pat, rep in rules:
        k = re.sub(pat, rep, k)
    return k


def _unfold_to_official_reduction(w: Tensor) -> Tensor:
    """``(out, 4C)`` patch-merging weight in unfold order (c, kh, kw) -> the official concat order."""
    out, c4 = w.shape
    return w.reshape(out, c4 // 4, 4).transpose(1, 2)[:, [0, 2, 1, 3]].reshape(out, c4)


def _unfold_to_official_norm(v: Tensor) -> Tensor:
    """``(4C,)`` patch-merging norm parameter in unfold order -> the official concat order."""
    c4 = v.shape[0]
    return v.reshape(c4 // 4, 4).t()[[0, 2, 1, 3]].reshape(c4)


def resize_rel_pos_table(table: Tensor, window: Tuple[int, int]) -> Tensor:
    """``((2a-1)(2b-1), H)`` relative position bias table -> ``((2wh-1)(2ww-1), H)`` (bicubic, as Swin's
    fine-tuning at larger windows). Source tables are square (``a == b``)."""
    n, heads = table.shape
    s = int(math.isqrt(n))
    grid = table.t().reshape(1, heads, s, s)
    grid = F.interpolate(grid.float(), size=(2 * window[0] - 1, 2 * window[1] - 1), mode='bicubic',
                         align_corners=False).to(table.dtype)
    return grid.reshape(heads, -1).t().contiguous()


# ------------------------------------------------------------------------------------------ key renaming
def _swin_keys(state: Dict[str, Tensor], source: str) -> Dict[str, Tensor]:
    out = {}
    if source == 'timm':
        # timm >= 0.9 merges at the start of stage i (layers.{i}.downsample, i >= 1); the official layout
        # (and older timm) at the end of stage i, as ours
        starts = not any(k.startswith('layers.0.downsample.') for k in state)
        last = max((int(m.group(1)) for k in state for m in [re.match(r'layers\.(\d+)\.', k)] if m), default=0)
        for k, v in state.items():
            m = re.match(r'layers\.(\d+)\.downsample\.(.*)', k)
            if m and starts:
                k = f'layers.{int(m.group(1)) - 1}.downsample.{m.group(2)}'
            elif k.startswith('norm.'):
                k = f'norm{last}.' + k[len('norm.'):]
            out[k] = v
        return out
    rules = [(r'^patch_embed\.projection\.', 'patch_embed.proj.'), (r'^stages\.', 'layers.'),
             (r'\.attn\.w_msa\.', '.attn.'), (r'\.ffn\.layers\.0\.0\.', '.mlp.fc1.'),
             (r'\.ffn\.layers\.1\.', '.mlp.fc2.')]
    for k, v in state.items():
        k = _sub(rules, k)
        if re.match(r'layers\.\d+\.downsample\.reduction\.weight$', k):
            v = _unfold_to_official_reduction(v)
        elif re.match(r'layers\.\d+\.downsample\.norm\.(weight|bias)$', k):
            v = _unfold_to_official_norm(v)
        out[k] = v
    return out


def _pvt_keys(state: Dict[str, Tensor], source: str) -> Dict[str, Tensor]:
    out = {}
    if source == 'timm':
        if 'patch_embed1.proj.weight' in state:  # the official whai362/PVT layout is ours
            return dict(state)
        rules = [(r'^patch_embed\.', 'patch_embed1.'),
                 (r'^stages\.(\d+)\.downsample\.', lambda m: f'patch_embed{int(m.group(1)) + 1}.'),
                 (r'^stages\.(\d+)\.blocks\.(\d+)\.', lambda m: f'block{int(m.group(1)) + 1}.{m.group(2)}.'),
                 (r'^stages\.(\d+)\.norm\.', lambda m: f'norm{int(m.group(1)) + 1}.'),
                 (r'\.mlp\.dwconv\.(weight|bias)$', r'.mlp.dwconv.dwconv.\1')]
        return {_sub(rules, k): v for k, v in state.items()}
    # mmdet PyramidVisionTransformerV2: layers.{i} = [patch embed, encoder layers, norm]; q/k/v packed in an
    # nn.MultiheadAttention (in_proj), the MLP as 1x1 convs (ffn.layers.0 / .1 depthwise / .4)
    rules = [(r'^layers\.(\d+)\.0\.projection\.', lambda m: f'patch_embed{int(m.group(1)) + 1}.proj.'),
             (r'^layers\.(\d+)\.0\.norm\.', lambda m: f'patch_embed{int(m.group(1)) + 1}.norm.'),
             (r'^layers\.(\d+)\.1\.(\d+)\.', lambda m: f'block{int(m.group(1)) + 1}.{m.group(2)}.'),
             (r'^layers\.(\d+)\.2\.', lambda m: f'norm{int(m.group(1)) + 1}.'),
             (r'\.attn\.attn\.out_proj\.', '.attn.proj.'), (r'\.ffn\.layers\.0\.', '.mlp.fc1.'),
             (r'\.ffn\.layers\.1\.', '.mlp.dwconv.dwconv.'), (r'\.ffn\.layers\.4\.', '.mlp.fc2.')]
    for k, v in state.items():
        k = _sub(rules, k)
        m = re.match(r'(.*\.attn\.)attn\.in_proj_(weight|bias)$', k)
        if m:
            k = f'{m.group(1)}qkv.{m.group(2)}'  # q, k, v stacked as in a fused qkv; split below if needed
        if re.search(r'\.mlp\.fc[12]\.weight$', k) and v.dim() == 4:
            v = v.flatten(1)  # 1x1 conv -> Linear
        out[k] = v
    return out


def _vit_keys(state: Dict[str, Tensor], source: str) -> Dict[str, Tensor]:
    if source == 'timm':
        out = dict(state)
        if 'norm.weight' not in out and 'fc_norm.weight' in out:  # global-pool ViTs keep their norm in fc_norm
            out['norm.weight'], out['norm.bias'] = out.pop('fc_norm.weight'), out.pop('fc_norm.bias')
        return out
    rules = [(r'^patch_embed\.projection\.', 'patch_embed.proj.'), (r'^layers\.', 'blocks.'),
             (r'\.ln1\.', '.norm1.'), (r'\.ln2\.', '.norm2.'), (r'\.ffn\.layers\.0\.0\.', '.mlp.fc1.'),
             (r'\.ffn\.layers\.1\.', '.mlp.fc2.'), (r'^ln1\.', 'norm.')]
    return {_sub(rules, k): v for k, v in state.items()}


# ----------------------------------------------------------------------------------- layout adaptation
def _adapt_qkv(state: Dict[str, Tensor], own: Dict[str, Tensor], report: Report) -> None:
    """Fused ``qkv`` <-> PVT's ``q`` + ``kv``, wherever the checkpoint and our attention differ."""
    for key in [k for k in state if re.search(r'\.attn\.qkv\.(weight|bias)$', k)]:
        base, kind = key.rsplit('.qkv.', 1)
        if key not in own and f'{base}.q.{kind}' in own:
            v = state.pop(key)
            c = v.shape[0] // 3
            state[f'{base}.q.{kind}'], state[f'{base}.kv.{kind}'] = v[:c], v[c:]
            report['split'].append(key)
    for key in [k for k in state if re.search(r'\.attn\.q\.(weight|bias)$', k)]:
        base, kind = key.rsplit('.q.', 1)
        kv = f'{base}.kv.{kind}'
        if key not in own and f'{base}.qkv.{kind}' in own and kv in state:
            state[f'{base}.qkv.{kind}'] = torch.cat([state.pop(key), state.pop(kv)], 0)
            report['concatenated'].append(key)


def _resize(state: Dict[str, Tensor], own: Dict[str, Tensor], model: nn.Module, report: Report) -> None:
    for k, v in list(state.items()):
        if k not in own or v.shape == own[k].shape:
            continue
        target = own[k].shape
        if k == 'pos_embed' or re.match(r'pos_embed\d+$', k):
            n_extra = v.shape[1] - int(math.isqrt(v.shape[1])) ** 2  # class / distillation entries
            v = v[:, n_extra:]
            state[k] = v if v.shape[1] == target[1] else resize_pos_embed(v, target[1])
        elif k.endswith('relative_position_bias_table') and v.shape[1] == target[1]:
            attn = model.get_submodule(k.rsplit('.', 1)[0])
            state[k] = resize_rel_pos_table(v, attn.window_size)
        else:
            continue
        report['resized'].append(f'{k} {tuple(v.shape)} -> {tuple(target)}')


# ------------------------------------------------------------------------------------------------- entry
def _family(model: nn.Module) -> Callable:
    from .lin_pvt import LinPVT
    from .lin_swin import LinSwin
    from .lin_vit import LinViT
    for cls, fn in ((LinSwin, _swin_keys), (LinPVT, _pvt_keys), (LinViT, _vit_keys)):
        if isinstance(model, cls):
            return fn
    raise ValueError(f'convert_softmax_checkpoint: {type(model).__name__} is not LinSwin, LinPVT or LinViT')


def _pattern(keys: List[str]) -> List[str]:
    """Collapse block/stage numbers so the report stays short: ``layers.*.blocks.*.attn.x (12)``."""
    counts: Dict[str, int] = {}
    for k in keys:
        p = re.sub(r'(?<=\.)\d+(?=\.)', '*', k.split(' ')[0])
        counts[p] = counts.get(p, 0) + 1
    return [p if n == 1 else f'{p} ({n})' for p, n in counts.items()]


def convert_softmax_checkpoint(model: nn.Module, state: Dict[str, Tensor], source: str,
                               log: bool = True) -> Tuple[Dict[str, Tensor], Report]:
    """Map a softmax Swin / PVTv2 / ViT state dict of ``source`` into ``model`` (any attention).

    Args:
        model: a :class:`LinSwin`, :class:`LinPVT` or :class:`LinViT`.
        state: the checkpoint's state dict, already without a ``backbone.`` prefix.
        source: 'timm', 'mmdet' or 'mmpretrain' (the key layout of ``state``).
        log: log the report.

    Returns:
        ``(state, report)``: the tensors that fit ``model`` under its own names (load with ``strict=False``), and
        ``report`` with lists ``mapped``, ``resized``, ``split`` / ``concatenated`` (q/k/v layouts), ``new``
        (ours, not in the checkpoint: the new attention's parameters keep their init) and ``dropped``
        (checkpoint tensors with no place here: the classifier, the softmax-only parameters, shape mismatches).

    Raises:
        ValueError: an unknown ``source``, or a checkpoint of which nothing maps (wrong family or source).
    """
    if source not in SOURCES:
        raise ValueError(f'convert_softmax_checkpoint: source must be one of {SOURCES}, got {source!r}')
    fn = _family(model)
    own = model.state_dict()
    report: Report = {k: [] for k in ('mapped', 'resized', 'split', 'concatenated', 'new', 'dropped')}
    renamed = fn(dict(state), source)
    _adapt_qkv(renamed, own, report)
    _resize(renamed, own, model, report)
    out = {}
    for k, v in renamed.items():
        if k in own and v.shape == own[k].shape:
            out[k] = v
            report['mapped'].append(k)
        else:
            why = 'no such tensor here' if k not in own else f'shape {tuple(v.shape)} vs ours {tuple(own[k].shape)}'
            report['dropped'].append(f'{k} ({why})')
    report['new'] = [k for k in own if k not in out]
    if not out:
        raise ValueError(f'convert_softmax_checkpoint: nothing of the checkpoint maps into {type(model).__name__} '
                         f'with source={source!r}; is it a {type(model).__name__[3:]} checkpoint of {source}? '
                         f'(first keys: {list(state)[:5]})')
    if log:
        print_log(format_report(type(model).__name__, source, report), logger='current')
    return out, report


def format_report(name: str, source: str, report: Report) -> str:
    """A few lines: counts, then the grouped keys that were resized, new and dropped."""
    lines = [f'{name}: softmax checkpoint ({source}) mapped {len(report["mapped"])} tensors, '
             f'resized {len(report["resized"])}, q/k/v split {len(report["split"])} / concatenated '
             f'{len(report["concatenated"])}, new {len(report["new"])}, dropped {len(report["dropped"])}']
    for what in ('resized', 'new', 'dropped'):
        if report[what]:
            lines.append(f'  {what}: ' + ', '.join(_pattern(report[what]) if what != 'resized' else report[what]))
    return '\n'.join(lines)
