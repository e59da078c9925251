"""LinSwin: the Swin layout with per-stage attention (InLine-Swin presets by default).

Swin Transformer (Z. Liu et al., ICCV 2021) as modified by InLine-Swin (D. Han et al., NeurIPS 2024; github
LeapLabTHU/InLine, ``models/inline_swin.py``): stage attention given by letters, 'I' = InLine over the whole
stage (the official code sets the window to the full 56/28/14/7 grid), 'S' = (shifted) window softmax,
'M' = mixed: the first k blocks InLine, the rest windows, with k written after the four letters (official
``cfgs/inline_swin_b.yaml``: 'IIMS2'). Window blocks use 7x7 windows, 12x12 for Swin-B-384 (the official
``max(7, WINDOW_SIZE // 8)`` with WINDOW_SIZE 56 / 96), shifted on odd blocks of a stage; a window that holds
the whole map is not shifted (as in Swin). Presets ('t', 's', 'b', 'b_384') carry the official letters and
windows. Names follow the official checkpoints (``patch_embed``, ``layers.{i}.blocks.{j}``,
``layers.{i}.downsample``); one LayerNorm per returned map (``norm{i}``, as mmdet's Swin) where the official
model has a single final ``norm`` (converted to ``norm3``).

Any H x W: patch embedding and merging pad to even sizes, window attention pads to whole windows and
crops back, global attention runs on the real grid. Only the stages up to the last of ``out_indices`` are built
(later ones, and the last one's downsampling, would never get a gradient).
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from linattn_mm.ops._utils import is_exporting
from linattn_mm.registry import MODELS

from ._base import LinBackboneBase, resolve_arch, stage_attn_cfgs
from ._blocks import Block, PatchEmbed, drop_path_rates, pad_amount, tokens_to_map

SWIN_PRESETS: Dict[str, dict] = {
    # official cfgs/inline_swin_{t,s,b,b_384}.yaml: ATTN_TYPE and the window of 'S' blocks
    't': dict(embed_dims=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], attn_type='IIIS', window_size=7),
    's': dict(embed_dims=96, depths=[2, 2, 18, 2], num_heads=[3, 6, 12, 24], attn_type='IISS', window_size=7),
    'b': dict(embed_dims=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], attn_type='IIMS2', window_size=7),
    'b_384': dict(embed_dims=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], attn_type='IIMS2',
                  window_size=12),
}
LETTERS = {'I': 'inline', 'S': 'window', 'M': 'mixed'}


def parse_attn_type(attn_type: str, depths: Sequence[int]) -> List[List[dict]]:
    """Official letters -> one attention config per block of each stage.

    'I' InLine, 'S' window softmax, 'M' the first k blocks InLine and the rest windows, k the number written
    after the letters (one per stage): 'IIMS2' = InLine, InLine, 2 InLine + 16 window blocks, window.
    """
    m = re.fullmatch(r'([A-Za-z]+)(\d*)', attn_type or '')
    letters, k = (m.group(1), m.group(2)) if m else ('', '')
    if not m or len(letters) != len(depths) or set(letters) - set(LETTERS):
        raise ValueError(f"LinSwin: attn_type {attn_type!r} needs one letter per stage ({len(depths)}) from "
                         f"{sorted(LETTERS)} ('I' InLine, 'S' window softmax, 'M' mixed), then for 'M' the "
                         f"number of leading InLine blocks, e.g. 'IIMS2'")
    if ('M' in letters) != bool(k):
        raise ValueError(f"LinSwin: attn_type {attn_type!r}: " + (
            "'M' needs the number of leading InLine blocks after the letters, e.g. 'IIMS2'" if k == '' else
            f"the trailing number {k} is the InLine block count of an 'M' stage, but there is none"))
    out = []
    for ch, d in zip(letters, depths):
        if ch == 'M' and int(k) > d:
            raise ValueError(f'LinSwin: attn_type {attn_type!r}: {k} InLine blocks in a stage of {d} blocks')
        n_inline = d if ch == 'I' else int(k) if ch == 'M' else 0
        out.append([dict(type='inline') if j < n_inline else dict(type='window') for j in range(d)])
    return out


class PatchMerging(nn.Module):
    """2x2 neighbourhood concat -> LayerNorm -> Linear(4C, 2C); odd sizes are zero-padded first."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor, hw):
        b, _, c = x.shape
        h, w = hw
        x = pad_to_even(x.view(b, h, w, c))
        # the official concat order (x0, x1, x2, x3) so checkpoints' reduction weights apply unchanged
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x.flatten(1, 2))), (x.shape[1], x.shape[2])


def pad_to_even(x: Tensor) -> Tensor:
    """Zero-pad ``(B, H, W, C)`` to even H and W (a named function: one leaf call for torch.fx)."""
    ph, pw = pad_amount(x.shape[1], 2), pad_amount(x.shape[2], 2)  # no `%` on sizes: see pad_amount
    if is_exporting() or ph or pw:  # exporting: pad by a symbolic amount, no branch on it
        x = F.pad(x, (0, 0, 0, pw, 0, ph))
    return x


class SwinStage(nn.Module):
    """``depth`` blocks (``attn_cfgs``: one config per block) then an optional patch merging."""

    def __init__(self, dim, depth, num_heads, attn_cfgs: List[dict], window_size, mlp_ratio, qkv_bias, drop,
                 attn_drop, dpr, downsample: bool, with_cp: bool):
        super().__init__()
        blocks = []
        for j in range(depth):
            cfg = dict(attn_cfgs[j])
            if cfg['type'] == 'window':
                ws = cfg.setdefault('window_size', window_size)
                cfg.setdefault('shift_size', 0 if j % 2 == 0 else ws // 2)
            blocks.append(Block(dim, num_heads, cfg, mlp_ratio, qkv_bias, drop, attn_drop, dpr[j],
                                norm_eps=1e-5, with_cp=with_cp))
        self.blocks = nn.ModuleList(blocks)
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x, hw):
        for blk in self.blocks:
            x = blk(x, hw)
        return x, hw


@MODELS.register_module()
class LinSwin(LinBackboneBase):
    """Swin-style hierarchical backbone with any attention per stage.

    Args:
        arch: 't', 's', 'b', 'b_384' (InLine-Swin T/S/B/B-384: Swin sizes with the official letters and
            windows) or a dict (``embed_dims``, ``depths``, ``num_heads``, optional ``attn_type``,
            ``window_size``).
        attn_type: official letter string, one per stage ('I' InLine, 'S' window softmax, 'M' the first k
            blocks InLine then windows, k after the letters: 'IIMS2'), used when ``attn_cfg`` is None.
            Default: the preset's ('IIIS', 'IISS', 'IIMS2', 'IIMS2'); 'IIIS' for a dict arch.
        attn_cfg: replaces the letters: one dict/name for all stages or a list per stage. Window attention
            gets ``window_size`` and alternating ``shift_size`` per block unless given.
        window_size: window of window blocks, one int or one per stage; default the preset's (7; 12 for
            'b_384').
        mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, drop_path_rate: as in Swin.
        out_indices, frozen_stages, norm_eval, with_cp, init_cfg: see :class:`LinPVT`.
    """

    def __init__(self, arch: Union[str, dict] = 't', attn_type: Optional[str] = None, attn_cfg=None,
                 in_channels: int = 3, window_size: Union[int, Sequence[int], None] = None,
                 mlp_ratio: float = 4., qkv_bias: bool = True,
                 out_indices: Sequence[int] = (0, 1, 2, 3), drop_rate: float = 0., attn_drop_rate: float = 0.,
                 drop_path_rate: float = 0.1, frozen_stages: int = -1, norm_eval: bool = False,
                 with_cp: bool = False, init_cfg: Optional[dict] = None,
                 pretrained: Optional[str] = None):
        super().__init__(out_indices, frozen_stages, norm_eval, init_cfg, pretrained)
        a = resolve_arch(arch, SWIN_PRESETS, 'LinSwin')
        c0, depths, heads = a['embed_dims'], a['depths'], a['num_heads']
        self.num_stages = len(depths)
        self._check_out_indices(self.num_stages)
        if attn_cfg is None:
            self.attn_type = attn_type if attn_type is not None else a.get('attn_type', 'IIIS')
            block_cfgs = parse_attn_type(self.attn_type, depths)
        else:
            self.attn_type = None
            block_cfgs = [[c] * d for c, d in zip(stage_attn_cfgs(attn_cfg, self.num_stages, 'LinSwin'), depths)]
        if window_size is None:
            window_size = a.get('window_size', 7)
        windows = [window_size] * self.num_stages if isinstance(window_size, int) else list(window_size)
        if len(windows) != self.num_stages:
            raise ValueError(f'LinSwin: window_size {window_size!r} must be one int or one per stage '
                             f'({self.num_stages})')
        self.window_sizes = windows
        dims = [c0 * 2 ** i for i in range(self.num_stages)]
        self.stage_channels = dims
        self.stage_strides = [4 * 2 ** i for i in range(self.num_stages)]
        self.patch_embed = PatchEmbed(in_channels, c0, 4, norm_eps=1e-5)
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = drop_path_rates(depths, drop_path_rate)
        # stages after the last returned one (and its downsample) are not built: they would get no gradient
        last = max(self.out_indices)
        self.layers = nn.ModuleList([
            SwinStage(dims[i], depths[i], heads[i], block_cfgs[i], windows[i], mlp_ratio, qkv_bias, drop_rate,
                      attn_drop_rate, dpr[i], downsample=i < last, with_cp=with_cp)
            for i in range(last + 1)])
        for i in self.out_indices:
            self.add_module(f'norm{i}', nn.LayerNorm(dims[i]))
        self.init_weights()

    def _stage_modules(self, i: int) -> List[nn.Module]:
        if i >= len(self.layers):
            return []
        mods = [self.layers[i]]
        if i == 0:
            mods.append(self.patch_embed)
        if i in self.out_indices:
            mods.append(getattr(self, f'norm{i}'))
        return mods

    def forward(self, x: Tensor):
        x, hw = self.patch_embed(x)
        x = self.pos_drop(x)
        outs = []
        for i, stage in enumerate(self.layers):
            x, hw = stage(x, hw)
            if i in self.out_indices:
                outs.append(tokens_to_map(getattr(self, f'norm{i}')(x), hw))
            if stage.downsample is not None:
                x, hw = stage.downsample(x, hw)
        return tuple(outs)

    def pretrained_new_keys(self) -> List[str]:
        """Per-level norms ``norm{i}`` of the returned maps before the last stage (the official model has only
        the final ``norm``, converted to ``norm{last}``)."""
        last = self.num_stages - 1
        return [k for k in self.state_dict() if re.match(r'norm\d+\.', k) and not k.startswith(f'norm{last}.')]

    def convert_official(self, state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """Official InLine-Swin keys -> ours: drop ``head``, buffers rebuilt here (``relative_position_index``,
        ``attn_mask``), final ``norm`` -> ``norm{last}``."""
        out = {}
        last = self.num_stages - 1
        for k, v in state_dict.items():
            if k.startswith('head.') or k.endswith(('relative_position_index', 'attn_mask')):
                continue
            if k.startswith('norm.'):
                k = f'norm{last}.' + k[len('norm.'):]
            out[k] = v
        return out
