"""Pretrained weights for every backbone: one path shared by ``init_cfg=Pretrained`` and the conversion tool.

    load safely -> find the state dict in any layout -> convert -> resize position tables -> check -> load + report

* **load safely**: :func:`linattn_mm.utils.safe_checkpoint.load_checkpoint_file` (``weights_only=True``; a
  yacs ``CfgNode`` training config is read as inert data, dropped and reported; any other object is refused).
* **find the state dict**: a bare state dict, or under ``state_dict`` / ``model`` / ``model_state`` /
  ``module`` (InLine and Swin save ``{'model', 'optimizer', 'lr_scheduler', 'epoch', 'config'}``, TaylorShift
  ``{'model_state', 'epoch', 'args', ...}``, mmengine ``{'state_dict', 'meta', ...}``); EMA weights
  (``state_dict_ema``, ``model_ema``) are used only when asked (``use_ema=True``); DDP's ``module.`` and
  ``torch.compile``'s ``_orig_mod.`` prefixes are removed; a whole-detector checkpoint keeps its ``backbone.``
  entries.
* **convert**: ``SOURCES[source](backbone, state)``; ``'official'`` (InLine / TaylorShift releases and our own
  files) calls the backbone's ``convert_official``. Other sources (e.g. softmax checkpoints of timm, mmdet,
  mmpretrain) are one more entry in :data:`SOURCES`.
* **check**: every backbone tensor must be filled, except those the dense-prediction backbone adds on purpose
  (``backbone.pretrained_new_keys()``: ViTDet pyramid convs, Swin's per-level norms), and shapes must agree;
  otherwise :class:`PretrainedMismatchError` names the missing / mismatched tensors and the ``--arch`` the
  checkpoint looks like (guessed from its depths and shapes).
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

STATE_KEYS = ('state_dict', 'model', 'model_state', 'module')
EMA_KEYS = ('state_dict_ema', 'model_ema')
WRAPPER_PREFIXES = ('module.', '_orig_mod.')

# source name -> (backbone, state dict in that source's names) -> state dict in ours
SOURCES: Dict[str, Callable[[nn.Module, Dict[str, Tensor]], Dict[str, Tensor]]] = {
    'official': lambda backbone, state: backbone.convert_official(state),
}


def _softmax_source(source: str) -> Callable[[nn.Module, Dict[str, Tensor]], Dict[str, Tensor]]:
    def convert(backbone: nn.Module, state: Dict[str, Tensor]) -> Dict[str, Tensor]:
        from .softmax_ckpt import convert_softmax_checkpoint
        return convert_softmax_checkpoint(backbone, state, source)[0]
    return convert


for _source in ('timm', 'mmdet', 'mmpretrain'):  # softmax Swin / PVTv2 / ViT checkpoints (softmax_ckpt.py)
    SOURCES[_source] = _softmax_source(_source)

# in a softmax checkpoint, what only another attention has: anything inside ``attn`` but the shared projections
_ATTN_ONLY = re.compile(r'\.attn\.(?!(?:qkv|q|kv|proj)\.(?:weight|bias)$)')


class PretrainedMismatchError(ValueError):
    """The checkpoint does not fill the backbone (wrong family, size or attention)."""


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and len(obj) > 0 and all(isinstance(v, Tensor) for v in obj.values())


def find_state_dict(ckpt: Any, use_ema: bool = False, prefix: Optional[str] = 'backbone.'
                    ) -> Tuple[Dict[str, Tensor], str]:
    """The weights inside a checkpoint of any common layout.

    Args:
        ckpt: what ``torch.load`` returned.
        use_ema: take the EMA weights (``state_dict_ema`` / ``model_ema``) instead of the raw ones.
        prefix: if keys start with it (a whole detector / segmentor), keep only those, without it.

    Returns:
        ``(state_dict, where)``; ``where`` says which entry was used, e.g. ``"'model'"``.
    """
    if not isinstance(ckpt, dict):
        raise PretrainedMismatchError(f'checkpoint holds a {type(ckpt).__name__}, not a dict of weights')
    state, where = None, 'top level'
    if _is_state_dict(ckpt) and not use_ema:
        state = ckpt
    else:
        names = EMA_KEYS if use_ema else STATE_KEYS
        for key in names:
            if isinstance(ckpt.get(key), dict):
                state, where = ckpt[key], repr(key)
                break
        if state is None:
            found = [k for k in ckpt if isinstance(ckpt[k], dict)]
            ema = [k for k in EMA_KEYS if k in ckpt]
            if use_ema:
                msg = f'no EMA weights in the checkpoint (looked for {", ".join(EMA_KEYS)})'
            elif ema:
                msg = (f'the checkpoint holds only EMA weights ({", ".join(ema)}); pass use_ema=True '
                       f'(tools/convert_weights.py --ema) to load them')
            else:
                msg = f'no weights found (looked for a state dict or one of {", ".join(STATE_KEYS)})'
            raise PretrainedMismatchError(f'{msg}; its entries: {sorted(map(str, ckpt))[:12]} (dicts: {found})')
        # nested layouts such as {'model': {'state_dict': ...}}
        for key in STATE_KEYS:
            if not _is_state_dict(state) and isinstance(state.get(key), dict):
                state, where = state[key], f'{where}[{key!r}]'
    state = {k: v for k, v in state.items() if isinstance(v, Tensor)}
    out = {}
    for k, v in state.items():
        while k.startswith(WRAPPER_PREFIXES):
            k = k.split('.', 1)[1]
        out[k] = v
    if prefix and any(k.startswith(prefix) for k in out):
        out = {k[len(prefix):]: v for k, v in out.items() if k.startswith(prefix)}
    return out, where


# ------------------------------------------------------------------------------------------ arch guessing
def _count(state, pattern: str) -> Dict[int, int]:
    """Blocks per stage: ``pattern`` has two groups (stage, block)."""
    per: Dict[int, set] = {}
    for k in state:
        m = re.match(pattern, k)
        if m:
            per.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    return {s: len(b) for s, b in sorted(per.items())}


def _heads(state, prefix: str, dim: int) -> Optional[int]:
    t = state.get(prefix + 'attn.temperature')
    if t is not None:
        return int(t.numel())
    t = state.get(prefix + 'attn.relative_position_bias_table')
    if t is not None:
        return int(t.shape[1])
    t = state.get(prefix + 'attn.residual.0.weight')  # Conv1d(C, C, 1, groups=H): (C, C / H, 1)
    if t is not None:
        return dim // int(t.shape[1])
    return None


def guess_arch(state: Dict[str, Tensor]) -> str:
    """Describe the architecture a state dict (official or ours) comes from, as convert_weights arguments."""
    from .lin_pvt import PVT_PRESETS
    from .lin_swin import SWIN_PRESETS
    from .lin_vit import VIT_PRESETS
    if any(k.startswith('layers.') for k in state):  # Swin layout
        depths = list(_count(state, r'layers\.(\d+)\.blocks\.(\d+)\.').values())
        w = state.get('patch_embed.proj.weight')
        c0 = int(w.shape[0]) if w is not None else None
        letters, k_mixed, windows = '', None, []
        heads = []
        for i, d in enumerate(depths):
            kinds = ['S' if f'layers.{i}.blocks.{j}.attn.relative_position_bias_table' in state else
                     'I' if f'layers.{i}.blocks.{j}.attn.residual.0.weight' in state else '?' for j in range(d)]
            heads.append(_heads(state, f'layers.{i}.blocks.0.', c0 * 2 ** i) if c0 else None)
            n_i = kinds.count('I')
            if n_i == d:
                letters += 'I'
            elif n_i and kinds[:n_i] == ['I'] * n_i:
                letters, k_mixed = letters + 'M', n_i
            else:
                letters += 'S' if kinds.count('S') == d else '?'
            tables = [state[f'layers.{i}.blocks.{j}.attn.relative_position_bias_table'] for j in range(d)
                      if kinds[j] == 'S']
            if tables:
                windows.append((int(round(tables[0].shape[0] ** 0.5)) + 1) // 2)
        attn_type = letters + (str(k_mixed) if k_mixed else '')
        window = windows[0] if windows else 7
        arch = next((n for n, p in SWIN_PRESETS.items() if p['embed_dims'] == c0 and p['depths'] == depths and
                     p['num_heads'] == heads and p.get('window_size', 7) == window and
                     p.get('attn_type') == attn_type), None)
        if arch is None:
            arch = next((n for n, p in SWIN_PRESETS.items() if p['embed_dims'] == c0 and p['depths'] == depths
                         and p['num_heads'] == heads), None)
        desc = (f"--model inline_swin --arch {arch or '<dict>'} --attn-type {attn_type}"
                + (f' --window-size {window}' if window != 7 else ''))
        return desc + ('' if arch else f' (embed_dims={c0}, depths={depths}, num_heads={heads})')
    if any(k.startswith('block1.') for k in state):  # PVT layout
        depths = list(_count(state, r'block(\d+)\.(\d+)\.').values())
        dims = [int(state[f'patch_embed{i + 1}.proj.weight'].shape[0]) for i in range(len(depths))
                if f'patch_embed{i + 1}.proj.weight' in state]
        arch = next((n for n, p in PVT_PRESETS.items() if p['depths'] == depths and p['embed_dims'] == dims), None)
        return f"--model inline_pvt --arch {arch or '<dict>'}" + ('' if arch else f' (embed_dims={dims}, '
                                                                              f'depths={depths})')
    if any(k.startswith('blocks.') for k in state):  # plain ViT layout
        depth = len({int(m.group(1)) for k in state for m in [re.match(r'blocks\.(\d+)\.', k)] if m})
        w = state.get('patch_embed.proj.weight')
        c = int(w.shape[0]) if w is not None else None
        heads = _heads(state, 'blocks.0.', c) if c else None
        attn = ('taylorshift' if 'blocks.0.attn.temperature' in state else
                'inline' if 'blocks.0.attn.residual.0.weight' in state else 'softmax')
        model = {'taylorshift': 'taylorshift_vit', 'inline': 'inline_deit'}.get(attn, 'inline_deit')
        arch = next((n for n, p in VIT_PRESETS.items() if p['embed_dims'] == c and p['depth'] == depth and
                     p['num_heads'] == heads and p['attn']['type'] == attn), None)
        pe = state.get('pos_embed')
        size = ''
        if pe is not None and w is not None:
            side = int(pe.shape[1] ** 0.5)
            size = f', position table {side}x{side} = {side * int(w.shape[-1])} px'
        return (f"--model {model} --arch {arch or '<dict>'}" +
                ('' if arch else f' (embed_dims={c}, depth={depth}, num_heads={heads}, {attn} attention{size})'))
    if any(k.startswith(('stage1.', 'stage1_conv_embed')) for k in state):  # CSwin layout
        from .lin_cswin import CSWIN_PRESETS
        depths = list(_count(state, r'stage(\d+)\.(\d+)\.').values())
        w = state.get('stage1_conv_embed.0.weight')
        c0 = int(w.shape[0]) if w is not None else None
        arch = next((n for n, p in CSWIN_PRESETS.items() if p['embed_dims'] == c0 and p['depths'] == depths), None)
        return f"--model inline_cswin --arch {arch or '<dict>'}" + (
            '' if arch else f' (embed_dims={c0}, depths={depths})')
    top = Counter(k.split('.')[0] for k in state).most_common(6)
    return f'an unknown layout (top-level names: {[n for n, _ in top]})'


# ------------------------------------------------------------------------------------------- main path
def prepare_pretrained(backbone: nn.Module, checkpoint: str, use_ema: bool = False,
                       prefix: Optional[str] = 'backbone.', source: str = 'official'
                       ) -> Tuple[Dict[str, Tensor], Dict[str, Any]]:
    """Read ``checkpoint`` and convert it for ``backbone``; raise unless every backbone tensor is filled.

    Args:
        backbone: a built LinPVT / LinSwin / LinViT (or any backbone with ``convert_official``,
            ``pretrained_new_keys`` and ``_resize_position_tables``).
        checkpoint: local path.
        use_ema: use the EMA weights of the checkpoint.
        prefix: entries to keep from a whole-model checkpoint (``'backbone.'``).
        source: key of :data:`SOURCES` (how the checkpoint names its tensors).

    Returns:
        ``(state, report)``: the tensors to load (our names and shapes) and a report dict with ``where``
        (the entry used), ``notes`` (e.g. a skipped yacs config), ``new`` (backbone tensors
        left at initialisation on purpose), ``unused`` (converted names the backbone does not have) and
        ``dropped`` (checkpoint names the conversion removed: classifier, class token, ...).

    Raises:
        PretrainedMismatchError: tensors missing or of the wrong shape (one message, with the likely arch).
    """
    from linattn_mm.utils.safe_checkpoint import load_checkpoint_file
    name = type(backbone).__name__
    if source not in SOURCES:
        raise ValueError(f'{name}: unknown pretrained source {source!r}; choose from {", ".join(SOURCES)}')
    ckpt, notes = load_checkpoint_file(checkpoint, map_location='cpu')
    try:
        raw, where = find_state_dict(ckpt, use_ema=use_ema, prefix=prefix)
    except PretrainedMismatchError as err:
        raise PretrainedMismatchError(f'{name}: {checkpoint}: {err}') from None
    try:
        return match_state(backbone, raw, source=source, where=where, notes=notes)
    except PretrainedMismatchError as err:
        raise PretrainedMismatchError(f'{name}: {checkpoint} {err}') from None


def match_state(backbone: nn.Module, raw: Dict[str, Tensor], source: str = 'official', where: str = 'top level',
                notes: Optional[List[str]] = None) -> Tuple[Dict[str, Tensor], Dict[str, Any]]:
    """Convert a found state dict and check it fills ``backbone``; the part of :func:`prepare_pretrained`
    after reading the file (also usable on meta tensors: only names and shapes are looked at).

    Raises:
        PretrainedMismatchError: tensors missing or of the wrong shape.
    """
    state = SOURCES[source](backbone, dict(raw))
    state = backbone._resize_position_tables(state)
    own = backbone.state_dict()
    new = set(backbone.pretrained_new_keys())
    if source != 'official':  # a softmax checkpoint: the new attention's own parameters keep their init
        new |= {k for k in own if _ATTN_ONLY.search(k)}
    missing = [k for k in own if k not in state and k not in new]
    unused = [k for k in state if k not in own]
    mismatched = [k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or mismatched:
        filled = sum(1 for k in own if k in state and k not in mismatched)
        parts = [f'({where}) fills {filled} of {len(own)} backbone tensors']
        if missing:
            parts.append(f'missing {len(missing)}: {missing[:8]}' + (' ...' if len(missing) > 8 else ''))
        if mismatched:
            parts.append('shape mismatch: ' + ', '.join(f'{k} {tuple(state[k].shape)} vs ours {tuple(own[k].shape)}'
                                                        for k in mismatched[:4]) + (' ...' if len(mismatched) > 4
                                                                                    else ''))
        if unused:
            parts.append(f'not used {len(unused)}: {unused[:4]}' + (' ...' if len(unused) > 4 else ''))
        parts.append(f'the checkpoint looks like {guess_arch(raw)}')
        parts.append(f'this backbone is {guess_arch(own)}')
        raise PretrainedMismatchError('; '.join(parts))
    out = {k: v for k, v in state.items() if k in own}
    # what the conversion removed: neither kept under its name nor passed on (renamed, or as a view)
    kept = {id(v) for v in state.values()} | {id(v._base) for v in state.values() if v._base is not None}
    report = dict(where=where, notes=list(notes or []), loaded=len(out),
                  new=sorted(k for k in own if k not in state), unused=sorted(k for k in state if k not in own),
                  dropped=sorted(k for k, v in raw.items() if k not in state and id(v) not in kept))
    return out, report


def load_pretrained(backbone: nn.Module, checkpoint: str, use_ema: bool = False,
                    prefix: Optional[str] = 'backbone.', source: str = 'official') -> Dict[str, Any]:
    """:func:`prepare_pretrained` + ``load_state_dict`` + one log line; returns the report.

    ``checkpoint`` may be any path mmengine's ``get_local_path`` resolves (local file, URL, backend).
    """
    from mmengine.fileio import get_local_path
    from mmengine.logging import print_log
    with get_local_path(checkpoint) as path:
        state, rep = prepare_pretrained(backbone, path, use_ema=use_ema, prefix=prefix, source=source)
    backbone.load_state_dict(state, strict=False)
    print_log(f'{type(backbone).__name__}: loaded {rep["loaded"]} tensors from {checkpoint} '
              f'(entry {rep["where"]}{", EMA weights" if use_ema else ""}); '
              f'new in the dense-prediction backbone (initialised here): {len(rep["new"])} {rep["new"][:6]}'
              + ''.join(f'; {n}' for n in rep['notes']), logger='current')
    return rep
