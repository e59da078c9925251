"""Official checkpoints load and reproduce the official forward formulas; every checkpoint layout; clear errors.

The state dicts below are built from the official model code (names and shapes of LeapLabTHU/InLine
``models/inline_deit.py`` / ``inline_swin.py`` and tobna/TaylorShift ``training/architectures/
taylor_shift_vit.py`` on timm's VisionTransformer), not from our own ``state_dict()``; the reference forwards are
the official formulas written out here in float64 (InLine-DeiT and TaylorShift without their class token, the
one accepted difference; Swin's 'I' blocks over the whole map, as the official full-map window does).
"""
import math
import os
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from linattn_mm.models.backbones import LinSwin, LinViT
from linattn_mm.models.backbones._pretrained import (PretrainedMismatchError, find_state_dict, guess_arch,
                                                     match_state)
from linattn_mm.models.backbones.lin_swin import SWIN_PRESETS
from linattn_mm.models.backbones.lin_vit import VIT_PRESETS
from linattn_mm.utils import UnsafeCheckpointError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# --------------------------------------------------------------------- official key / shape tables
def _t(shape, device, gen):
    """Random float64 values that float32 holds exactly (the backbone loads them in float32 before ``.double()``,
    so the comparison stays at float64 precision)."""
    if device == 'meta':
        return torch.empty(shape, device='meta')
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * 0.2).float().double()


def _f32_exact(sd):
    return {k: v.float().double() if v.is_floating_point() and v.device.type != 'meta' else v for k, v in sd.items()}


def _norm(sd, name, c, device, gen):
    sd[f'{name}.weight'] = 1 + _t((c,), device, gen) if device != 'meta' else _t((c,), device, gen)
    sd[f'{name}.bias'] = _t((c,), device, gen)


def _linear(sd, name, out, inp, device, gen, bias=True):
    sd[f'{name}.weight'] = _t((out, inp), device, gen)
    if bias:
        sd[f'{name}.bias'] = _t((out,), device, gen)


def _mlp_block(sd, p, c, device, gen, mlp_ratio=4):
    _norm(sd, p + 'norm2', c, device, gen)
    _linear(sd, p + 'mlp.fc1', int(c * mlp_ratio), c, device, gen)
    _linear(sd, p + 'mlp.fc2', c, int(c * mlp_ratio), device, gen)


def _inline_residual(sd, p, c, heads, device, gen):
    # nn.Sequential(Conv1d(C, C, 1, groups=H), GELU, Conv1d(C, 9C, 1, groups=H))
    sd[p + 'attn.residual.0.weight'] = _t((c, c // heads, 1), device, gen)
    sd[p + 'attn.residual.0.bias'] = _t((c,), device, gen)
    sd[p + 'attn.residual.2.weight'] = _t((9 * c, c // heads, 1), device, gen)
    sd[p + 'attn.residual.2.bias'] = _t((9 * c,), device, gen)


def official_vit_sd(kind, c, depth, heads, img, patch=16, num_classes=10, device='cpu', seed=0):
    """InLine-DeiT (timm 0.4.12 VisionTransformer, class token with a position entry) or TaylorShift's ViT
    (timm VisionTransformer, ``no_embed_class=True``: no position entry for the class token)."""
    gen = torch.Generator().manual_seed(seed)
    n = (img // patch) ** 2
    sd = {'cls_token': _t((1, 1, c), device, gen),
          'pos_embed': _t((1, n + (1 if kind == 'inline' else 0), c), device, gen),
          'patch_embed.proj.weight': _t((c, 3, patch, patch), device, gen) * (0.3 if device != 'meta' else 1),
          'patch_embed.proj.bias': _t((c,), device, gen)}
    for i in range(depth):
        p = f'blocks.{i}.'
        _norm(sd, p + 'norm1', c, device, gen)
        _linear(sd, p + 'attn.qkv', 3 * c, c, device, gen)
        _linear(sd, p + 'attn.proj', c, c, device, gen)
        if kind == 'inline':
            _inline_residual(sd, p, c, heads, device, gen)
        else:
            t = _t((1, heads, 1, 1), device, gen)
            sd[p + 'attn.temperature'] = (1 + t.abs()) if device != 'meta' else t
        _mlp_block(sd, p, c, device, gen)
    _norm(sd, 'norm', c, device, gen)
    _linear(sd, 'head', num_classes, c, device, gen)
    return _f32_exact(sd)


def swin_block_kinds(attn_type, depths):
    letters = attn_type.rstrip('0123456789')
    k = int(attn_type[len(letters):] or 0)
    return [['I' if ch == 'I' or (ch == 'M' and j < k) else 'S' for j in range(d)] for ch, d in zip(letters, depths)]


def official_swin_sd(c0, depths, heads, attn_type, window, img, num_classes=10, device='cpu', seed=0):
    """InLineSwin: 'I' blocks (window = the whole map) have ``attn.residual``, 'S' blocks a relative position
    table of ``min(window, map side)`` and the buffers ``relative_position_index`` / ``attn_mask``."""
    gen = torch.Generator().manual_seed(seed)
    sd = {'patch_embed.proj.weight': _t((c0, 3, 4, 4), device, gen), 'patch_embed.proj.bias': _t((c0,), device, gen)}
    _norm(sd, 'patch_embed.norm', c0, device, gen)
    res = img // 4
    for i, kinds in enumerate(swin_block_kinds(attn_type, depths)):
        c = c0 * 2 ** i
        for j, kind in enumerate(kinds):
            p = f'layers.{i}.blocks.{j}.'
            _norm(sd, p + 'norm1', c, device, gen)
            _linear(sd, p + 'attn.qkv', 3 * c, c, device, gen)
            _linear(sd, p + 'attn.proj', c, c, device, gen)
            if kind == 'I':
                _inline_residual(sd, p, c, heads[i], device, gen)
            else:
                ws = min(window, res)
                sd[p + 'attn.relative_position_bias_table'] = _t(((2 * ws - 1) ** 2, heads[i]), device, gen)
                sd[p + 'attn.relative_position_index'] = torch.zeros(ws * ws, ws * ws, dtype=torch.long,
                                                                     device=device)
                if j % 2 and res > ws:
                    sd[p + 'attn_mask'] = torch.zeros((res // ws) ** 2, ws * ws, ws * ws, device=device)
            _mlp_block(sd, p, c, device, gen)
        if i < len(depths) - 1:
            _norm(sd, f'layers.{i}.downsample.norm', 4 * c, device, gen)
            _linear(sd, f'layers.{i}.downsample.reduction', 2 * c, 4 * c, device, gen, bias=False)
            res //= 2
    _norm(sd, 'norm', c0 * 2 ** (len(depths) - 1), device, gen)
    _linear(sd, 'head', num_classes, c0 * 2 ** (len(depths) - 1), device, gen)
    return _f32_exact(sd)


# ------------------------------------------------------------------- official formulas (float64)
def _ln(x, p, name, eps):
    return F.layer_norm(x, x.shape[-1:], p[f'{name}.weight'], p[f'{name}.bias'], eps)


def _mlp(x, p, pre):
    return F.linear(F.gelu(F.linear(x, p[pre + 'mlp.fc1.weight'], p[pre + 'mlp.fc1.bias'])),
                    p[pre + 'mlp.fc2.weight'], p[pre + 'mlp.fc2.bias'])


def ref_inline(x, p, pre, heads, hw):
    """Official InLineAttention.forward (inline_swin.py), the token grid given as (h, w)."""
    b, n, c = x.shape
    h, w = hw
    d = c // heads
    scale = d ** -0.5
    qkv = F.linear(x, p[pre + 'qkv.weight'], p[pre + 'qkv.bias']).reshape(b, n, 3, c).permute(2, 0, 1, 3)
    q, k, v = (t.reshape(b, n, heads, d).permute(0, 2, 1, 3) for t in qkv)
    r = F.conv1d(x.mean(dim=1).unsqueeze(-1), p[pre + 'residual.0.weight'], p[pre + 'residual.0.bias'],
                 groups=heads)
    r = F.conv1d(F.gelu(r), p[pre + 'residual.2.weight'], p[pre + 'residual.2.bias'], groups=heads)
    r = r.reshape(b * c, 1, 3, 3)
    kv = (k.transpose(-2, -1) * (scale / n) ** 0.5) @ (v * (scale / n) ** 0.5)
    out = q @ kv + (1 - q @ k.mean(dim=2, keepdim=True).transpose(-2, -1) * scale) * v.mean(dim=2, keepdim=True)
    out = out.transpose(1, 2).reshape(b, n, c)
    vm = v.transpose(1, 2).reshape(b, h, w, c).permute(0, 3, 1, 2).reshape(1, b * c, h, w)
    out = out + F.conv2d(vm, r, None, padding=1, groups=b * c).reshape(b, c, n).permute(0, 2, 1)
    return F.linear(out, p[pre + 'proj.weight'], p[pre + 'proj.bias'])


def ref_taylor(x, p, pre, heads):
    """Official TaylorSoftmaxAttention (xcit_version, output_normalized), direct form."""
    b, n, c = x.shape
    d = c // heads
    qkv = F.linear(x, p[pre + 'qkv.weight'], p[pre + 'qkv.bias']).reshape(b, n, 3, heads, d).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q = q * d ** 0.25
    q = F.normalize(q, dim=-1) * p[pre + 'temperature']
    k = F.normalize(k, dim=-1)
    attn = q @ k.transpose(-2, -1)
    amax = attn.abs().max(dim=-1).values[..., None]
    mv = 0.5 * amax ** 2 + amax + 1
    attn = 0.5 * (attn / mv.sqrt()) ** 2 + attn / mv + 1 / mv
    attn = attn / attn.sum(-1, keepdim=True)
    out = (attn @ (math.sqrt(n / d) * v)).transpose(1, 2).reshape(b, n, c)
    return F.linear(out, p[pre + 'proj.weight'], p[pre + 'proj.bias'])


def ref_window(x, p, pre, heads, hw, window):
    """Official WindowAttention inside SwinTransformerBlock (roll, partition, bias, -100 mask, reverse)."""
    b, n, c = x.shape
    h, w = hw
    ws, shift = window
    d = c // heads
    xm = x.view(b, h, w, c)
    if shift:
        xm = torch.roll(xm, (-shift, -shift), dims=(1, 2))
    win = xm.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, c)
    bn, m, _ = win.shape
    qkv = F.linear(win, p[pre + 'qkv.weight'], p[pre + 'qkv.bias']).reshape(bn, m, 3, heads, d).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    attn = (q * d ** -0.5) @ k.transpose(-2, -1)
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing='ij')).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
    rel[:, :, 0] += ws - 1
    rel[:, :, 1] += ws - 1
    rel[:, :, 0] *= 2 * ws - 1
    bias = p[pre + 'relative_position_bias_table'][rel.sum(-1).view(-1)].view(m, m, -1).permute(2, 0, 1)
    attn = attn + bias[None]
    if shift:
        img_mask = torch.zeros(1, h, w, 1, dtype=x.dtype)
        cnt = 0
        for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            for wsl in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
                img_mask[:, hs, wsl, :] = cnt
                cnt += 1
        mw = img_mask.view(1, h // ws, ws, w // ws, ws, 1).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws)
        mask = (mw[:, None, :] - mw[:, :, None])
        mask = mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)
        nw = mask.shape[0]
        attn = (attn.view(b, nw, heads, m, m) + mask[None, :, None]).view(-1, heads, m, m)
    out = (attn.softmax(-1) @ v).transpose(1, 2).reshape(bn, m, c)
    out = F.linear(out, p[pre + 'proj.weight'], p[pre + 'proj.bias'])
    out = out.view(b, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)
    if shift:
        out = torch.roll(out, (shift, shift), dims=(1, 2))
    return out.reshape(b, n, c)


def ref_vit(img, p, kind, heads, depth, patch=16):
    """Official ViT forward features on the patch tokens (no class token), position table resized bilinearly
    to the token grid when the input is not the pretraining size (as LinViT documents)."""
    x = F.conv2d(img, p['patch_embed.proj.weight'], p['patch_embed.proj.bias'], stride=patch)
    b, c, h, w = x.shape
    x = x.flatten(2).transpose(1, 2)
    pe = p['pos_embed'][:, 1:] if kind == 'inline' else p['pos_embed']
    s = int(round(pe.shape[1] ** 0.5))
    if (s, s) != (h, w):
        pe = F.interpolate(pe.reshape(1, s, s, c).permute(0, 3, 1, 2), size=(h, w), mode='bilinear',
                           align_corners=False).flatten(2).transpose(1, 2)
    x = x + pe
    for i in range(depth):
        pre = f'blocks.{i}.'
        y = _ln(x, p, pre + 'norm1', 1e-6)
        x = x + (ref_inline(y, p, pre + 'attn.', heads, (h, w)) if kind == 'inline'
                 else ref_taylor(y, p, pre + 'attn.', heads))
        x = x + _mlp(_ln(x, p, pre + 'norm2', 1e-6), p, pre)
    return _ln(x, p, 'norm', 1e-6).transpose(1, 2).reshape(b, c, h, w)


def ref_swin(img, p, heads, attn_type, depths, window):
    x = F.conv2d(img, p['patch_embed.proj.weight'], p['patch_embed.proj.bias'], stride=4)
    b, c, h, w = x.shape
    x = _ln(x.flatten(2).transpose(1, 2), p, 'patch_embed.norm', 1e-5)
    for i, kinds in enumerate(swin_block_kinds(attn_type, depths)):
        for j, kind in enumerate(kinds):
            pre = f'layers.{i}.blocks.{j}.'
            y = _ln(x, p, pre + 'norm1', 1e-5)
            if kind == 'I':
                y = ref_inline(y, p, pre + 'attn.', heads[i], (h, w))
            else:
                ws, shift = window, (0 if j % 2 == 0 else window // 2)
                if min(h, w) <= ws:  # official: a window as large as the map is the map, unshifted
                    ws, shift = min(h, w), 0
                y = ref_window(y, p, pre + 'attn.', heads[i], (h, w), (ws, shift))
            x = x + y
            x = x + _mlp(_ln(x, p, pre + 'norm2', 1e-5), p, pre)
        if i < len(depths) - 1:
            c = x.shape[-1]
            xm = x.view(b, h, w, c)
            xm = torch.cat([xm[:, 0::2, 0::2], xm[:, 1::2, 0::2], xm[:, 0::2, 1::2], xm[:, 1::2, 1::2]], -1)
            h, w = h // 2, w // 2
            x = F.linear(_ln(xm.reshape(b, h * w, 4 * c), p, f'layers.{i}.downsample.norm', 1e-5),
                         p[f'layers.{i}.downsample.reduction.weight'])
    return _ln(x, p, 'norm', 1e-5).transpose(1, 2).reshape(b, -1, h, w)


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


# --------------------------------------------------------------------------- fake yacs CfgNode
@pytest.fixture
def yacs_cfg(tmp_path):
    """A yacs-like ``CfgNode`` (dict subclass with attribute state, pickled under ``yacs.config.CfgNode``) whose
    construction or state-setting would leave a marker file: loading must never run it."""
    marker = tmp_path / 'yacs_code_ran'
    mod_yacs, mod_cfg = types.ModuleType('yacs'), types.ModuleType('yacs.config')

    class CfgNode(dict):
        def __init__(self, init=None):
            super().__init__(init or {})
            self.__dict__['__immutable__'] = False
            self.__dict__['__new_allowed__'] = False

        def __setstate__(self, state):  # would run on an unsafe load
            marker.write_text('ran')
            self.__dict__.update(state)

    CfgNode.__module__, CfgNode.__qualname__ = 'yacs.config', 'CfgNode'
    mod_cfg.CfgNode = CfgNode
    mod_yacs.config = mod_cfg
    sys.modules['yacs'], sys.modules['yacs.config'] = mod_yacs, mod_cfg
    try:
        yield CfgNode(dict(MODEL=CfgNode(dict(TYPE='inline_deit_tiny', NAME='x')), TRAIN=CfgNode(dict(EPOCHS=300)))), \
            marker
    finally:
        del sys.modules['yacs'], sys.modules['yacs.config']


def _convert_tool():
    sys.path.insert(0, os.path.join(ROOT, 'tools'))
    try:
        import convert_weights
    finally:
        sys.path.pop(0)
    return convert_weights


# ------------------------------------------------------------------------- the three families
VIT_TINY = {'inline': dict(embed_dims=64, depth=2, num_heads=2, pretrain_img_size=64, attn=dict(type='inline')),
            'taylorshift': dict(embed_dims=32, depth=2, num_heads=2, pretrain_img_size=64,
                                attn=dict(type='taylorshift', output_normalized=True))}


@pytest.mark.parametrize('kind,mode', [('inline', None), ('taylorshift', 'direct'), ('taylorshift', 'efficient')])
def test_official_vit_loads_and_matches_the_official_formula(tmp_path, yacs_cfg, kind, mode):
    a = VIT_TINY[kind]
    official = official_vit_sd(kind, a['embed_dims'], a['depth'], a['num_heads'], img=64)
    cfg, marker = yacs_cfg
    src = tmp_path / 'official.pth'
    if kind == 'inline':  # InLine main.py: model, optimizer, lr_scheduler, max_accuracy, epoch, yacs config
        torch.save({'model': official, 'optimizer': {'state': {}, 'param_groups': [{'lr': 1e-3}]},
                    'lr_scheduler': {'t_initial': 300}, 'max_accuracy': torch.tensor(74.5), 'epoch': 299,
                    'config': cfg}, src)
    else:  # TaylorShift train.py: model_state (DDP-wrapped model), epoch, run_name, args
        torch.save({'epoch': 300, 'model_state': {'module.' + k: v for k, v in official.items()},
                    'run_name': 'ts', 'args': {'model': 'taylor_shift_triv_vit_ti_p16', 'lr': 3e-3}}, src)
    attn_cfg = None if mode is None else dict(type='taylorshift', mode=mode)  # keeps output_normalized
    m = LinViT(a, attn_cfg=attn_cfg, out_indices=(2,), drop_path_rate=0.,
               init_cfg=dict(type='Pretrained', checkpoint=str(src))).double().eval()
    assert not marker.exists()
    own = m.state_dict()
    for k, v in own.items():
        if not k.startswith(('fpn1', 'fpn2')):
            src_v = official[k] if k != 'pos_embed' or kind != 'inline' else official[k][:, 1:]
            torch.testing.assert_close(v, src_v.reshape(v.shape), msg=k)
    if kind == 'taylorshift':
        assert m.blocks[0].attn.output_normalized and (mode is None or m.blocks[0].attn.mode == mode)
    for hw in [(64, 64), (48, 96)]:
        img = torch.randn(2, 3, *hw, dtype=torch.float64)
        with torch.no_grad():
            out = m(img)[0]
            ref = ref_vit(img, official, kind, a['num_heads'], a['depth'])
        assert out.shape == ref.shape
        assert rel_err(out, ref) < 1e-6, (hw, rel_err(out, ref))


@pytest.mark.parametrize('hw', [(128, 128), (128, 256)])
def test_official_swin_with_mixed_stage_loads_and_matches(tmp_path, hw):
    arch = dict(embed_dims=16, depths=[1, 1, 4, 1], num_heads=[1, 2, 2, 4])
    attn_type, window = 'IIMS2', 4
    official = official_swin_sd(16, arch['depths'], arch['num_heads'], attn_type, window, img=128)
    src = tmp_path / 'swin.pth'
    torch.save({'model': official, 'epoch': 1}, src)
    m = LinSwin(arch, attn_type=attn_type, window_size=window, out_indices=(3,), drop_path_rate=0.,
                init_cfg=dict(type='Pretrained', checkpoint=str(src))).double().eval()
    kinds = [type(b.attn).__name__ for b in m.layers[2].blocks]
    assert kinds == ['InLineAttention'] * 2 + ['WindowAttention'] * 2
    assert m.layers[2].blocks[3].attn.shift_size == (2, 2)
    img = torch.randn(1, 3, *hw, dtype=torch.float64)
    with torch.no_grad():
        out = m(img)[0]
        ref = ref_swin(img, official, arch['num_heads'], attn_type, arch['depths'], window)
    assert out.shape == ref.shape
    assert rel_err(out, ref) < 1e-6, rel_err(out, ref)


# ------------------------------------------------------------- every preset: official shapes
OFFICIAL_VIT = {  # cfgs/inline_deit_*.yaml (IMG_SIZE) + inline_deit.py; taylor_shift_vit.py (vit_sizes Ti / S)
    'deit_t': ('inline', 192, 12, 6, 224), 'deit_s': ('inline', 320, 12, 10, 288),
    'deit_b': ('inline', 384, 12, 12, 448), 'taylor_t': ('taylorshift', 192, 12, 3, 224),
    'taylor_s': ('taylorshift', 384, 12, 6, 224)}
OFFICIAL_SWIN = {  # cfgs/inline_swin_*.yaml: EMBED_DIM, DEPTHS, NUM_HEADS, ATTN_TYPE, 'S' window, IMG_SIZE
    't': (96, [2, 2, 6, 2], [3, 6, 12, 24], 'IIIS', 7, 224), 's': (96, [2, 2, 18, 2], [3, 6, 12, 24], 'IISS', 7, 224),
    'b': (128, [2, 2, 18, 2], [4, 8, 16, 32], 'IIMS2', 7, 224),
    'b_384': (128, [2, 2, 18, 2], [4, 8, 16, 32], 'IIMS2', 12, 384)}


@pytest.mark.parametrize('arch', sorted(OFFICIAL_VIT) + [f'swin_{a}' for a in sorted(OFFICIAL_SWIN)])
def test_every_preset_has_the_official_shapes(arch):
    if arch.startswith('swin_'):
        a = arch[5:]
        official = official_swin_sd(*OFFICIAL_SWIN[a], num_classes=1000, device='meta')
        with torch.device('meta'):
            m = LinSwin(a)
        assert m.attn_type == OFFICIAL_SWIN[a][3]
    else:
        kind, c, depth, heads, img = OFFICIAL_VIT[arch]
        official = official_vit_sd(kind, c, depth, heads, img, num_classes=1000, device='meta')
        with torch.device('meta'):
            m = LinViT(arch)
    state, rep = match_state(m, official)  # raises if any tensor is missing or of another shape
    assert rep['new'] == sorted(m.pretrained_new_keys())
    assert set(rep['dropped']) <= {'head.weight', 'head.bias', 'cls_token'} | {
        k for k in official if k.endswith(('relative_position_index', 'attn_mask'))}
    assert rep['unused'] == []
    guess = guess_arch(official)
    assert f'--arch {arch[5:] if arch.startswith("swin_") else arch}' in guess, guess


# ------------------------------------------------------------------------------------ layouts
def _tiny_vit(**kw):
    torch.manual_seed(0)
    return LinViT(VIT_TINY['taylorshift'], drop_path_rate=0., **kw)


LAYOUTS = {
    'bare': lambda sd: sd,
    'state_dict': lambda sd: {'state_dict': sd, 'meta': {'epoch': 3}},
    'model+optimizer': lambda sd: {'model': sd, 'optimizer': {'state': {}, 'param_groups': []}, 'epoch': 3},
    'model_state+ddp': lambda sd: {'model_state': {'module.' + k: v for k, v in sd.items()}, 'epoch': 3},
    'compiled': lambda sd: {'model': {'_orig_mod.' + k: v for k, v in sd.items()}},
    'detector': lambda sd: {'state_dict': {**{'backbone.' + k: v for k, v in sd.items()},
                                           'neck.conv.weight': torch.zeros(1)}},
}


@pytest.mark.parametrize('layout', sorted(LAYOUTS))
def test_every_layout_loads(tmp_path, layout):
    official = official_vit_sd('taylorshift', 32, 2, 2, 64, seed=1)
    src = tmp_path / 'ckpt.pth'
    torch.save(LAYOUTS[layout](official), src)
    m = _tiny_vit(init_cfg=dict(type='Pretrained', checkpoint=str(src)))
    torch.testing.assert_close(m.blocks[1].attn.qkv.weight.double(), official['blocks.1.attn.qkv.weight'])


@pytest.mark.parametrize('ema_key', ['model_ema', 'state_dict_ema'])
def test_ema_only_when_asked(tmp_path, ema_key):
    raw = official_vit_sd('taylorshift', 32, 2, 2, 64, seed=1)
    ema = official_vit_sd('taylorshift', 32, 2, 2, 64, seed=2)
    src = tmp_path / 'ckpt.pth'
    torch.save({'model': raw, ema_key: ema, 'optimizer': {}, 'epoch': 3}, src)
    w = 'blocks.0.attn.proj.weight'
    plain = _tiny_vit(init_cfg=dict(type='Pretrained', checkpoint=str(src)))
    torch.testing.assert_close(plain.state_dict()[w].double(), raw[w])
    with_ema = _tiny_vit(init_cfg=dict(type='Pretrained', checkpoint=str(src), use_ema=True))
    torch.testing.assert_close(with_ema.state_dict()[w].double(), ema[w])
    # EMA-only file: one message that says how to take it; use_ema on a file without EMA: says so
    torch.save({ema_key: ema}, src)
    with pytest.raises(PretrainedMismatchError, match='only EMA weights.*use_ema=True'):
        _tiny_vit(init_cfg=dict(type='Pretrained', checkpoint=str(src)))
    torch.save({'model': raw}, src)
    with pytest.raises(PretrainedMismatchError, match='no EMA weights'):
        _tiny_vit(init_cfg=dict(type='Pretrained', checkpoint=str(src), use_ema=True))


def test_yacs_config_is_skipped_and_reported(tmp_path, yacs_cfg):
    from linattn_mm.utils import safe_torch_load
    from linattn_mm.utils.safe_checkpoint import load_checkpoint_file
    cfg, marker = yacs_cfg
    official = official_vit_sd('inline', 64, 2, 2, 64)
    src = tmp_path / 'inline.pth'
    torch.save({'model': official, 'config': cfg, 'epoch': 3}, src)
    obj, notes = load_checkpoint_file(str(src))
    assert set(obj) == {'model', 'epoch'} and len(notes) == 1 and "'config'" in notes[0] and 'yacs' in notes[0]
    assert not marker.exists()
    with pytest.raises(UnsafeCheckpointError):  # the generic loader (mmengine resume) still refuses it
        safe_torch_load(str(src))

    class Payload:
        def __reduce__(self):
            return (os.system, (f'touch {marker}',))

    torch.save({'model': official, 'config': cfg, 'meta': Payload()}, src)
    with pytest.raises(UnsafeCheckpointError):  # a real payload next to a config is still refused
        load_checkpoint_file(str(src))
    assert not marker.exists()


def test_wrong_checkpoint_gives_one_message_with_the_likely_arch(tmp_path):
    # a TaylorShift training file converted as InLine-DeiT: 0 tensors would fit; never a silent success
    official = official_vit_sd('taylorshift', 192, 12, 3, 224, device='meta')
    src = tmp_path / 'taylor.pth'
    torch.save({'model_state': {'module.' + k: torch.zeros(v.shape) for k, v in official.items()}}, src)
    with torch.device('meta'):
        deit = LinViT('deit_t')
    with pytest.raises(PretrainedMismatchError) as err:
        from linattn_mm.models.backbones._pretrained import prepare_pretrained
        prepare_pretrained(deit, str(src))
    msg = str(err.value)
    assert 'missing' in msg and 'blocks.0.attn.residual.0.weight' in msg
    assert '--model taylorshift_vit --arch taylor_t' in msg
    # the tool: exits non-zero (SystemExit with the message, printed by Python on stderr), writes nothing
    with pytest.raises(SystemExit) as ex:
        _convert_tool().main([str(src), str(tmp_path / 'out.pth'), '--model', 'inline_deit', '--arch', 'deit_t'])
    assert isinstance(ex.value.code, str) and ex.value.code.startswith('error: LinViT')
    assert '--model taylorshift_vit --arch taylor_t' in ex.value.code
    assert not (tmp_path / 'out.pth').exists()


def test_wrong_swin_variant_names_the_right_one(tmp_path):
    a = 'b'
    official = official_swin_sd(*OFFICIAL_SWIN[a], num_classes=1000, device='meta')
    with torch.device('meta'):
        m = LinSwin('b', attn_type='IIIS')  # the letters of Swin-T on Swin-B weights
    with pytest.raises(PretrainedMismatchError) as err:
        match_state(m, official)
    assert '--arch b --attn-type IIMS2' in str(err.value)
    assert 'not used' in str(err.value) and 'layers.2.blocks.2.attn.relative_position_bias_table' in str(err.value)


def test_nothing_filled_is_an_error_not_a_silent_zero():
    official = official_swin_sd(16, [1, 1, 4, 1], [1, 2, 2, 4], 'IIMS2', 4, img=128, device='meta')
    with torch.device('meta'):
        vit = LinViT(VIT_TINY['taylorshift'])
    with pytest.raises(PretrainedMismatchError, match=r'fills 0 of \d+ backbone tensors.*missing.*'
                                                      r'--model inline_swin --arch <dict> --attn-type IIMS2'):
        match_state(vit, official)


@pytest.mark.parametrize('shape', [(2,), (1, 2, 1, 1)])
def test_taylor_temperature_in_either_shape(shape):
    official = official_vit_sd('taylorshift', 32, 2, 2, 64)
    official = {k: v.reshape(shape) if k.endswith('temperature') else v for k, v in official.items()}
    m = _tiny_vit()
    state, _ = match_state(m, official)
    m.load_state_dict(state, strict=False)
    torch.testing.assert_close(m.blocks[0].attn.temperature.double(), official['blocks.0.attn.temperature'].reshape(-1))
    m.blocks[0].attn.load_state_dict({k[len('blocks.0.attn.'):]: v.float() for k, v in official.items()
                                      if k.startswith('blocks.0.attn.')})  # the layer alone, strict


def test_layout_helpers():
    sd = {'a.weight': torch.zeros(1)}
    assert find_state_dict({'model': {'state_dict': sd}})[0] == sd
    with pytest.raises(PretrainedMismatchError, match='no weights found'):
        find_state_dict({'epoch': 3, 'optimizer': {}})


def test_convert_tool_writes_every_tensor(tmp_path, yacs_cfg):
    cfg, _ = yacs_cfg
    official = official_swin_sd(16, [1, 1, 4, 1], [1, 2, 2, 4], 'IIMS2', 4, img=128)
    src = tmp_path / 'swin.pth'
    torch.save({'model': {k: v.float() for k, v in official.items()}, 'config': cfg}, src)
    dst = tmp_path / 'ours.pth'
    conv = _convert_tool()
    arch = dict(embed_dims=16, depths=[1, 1, 4, 1], num_heads=[1, 2, 2, 4])
    state, backbone, rep = conv.convert(str(src), 'inline_swin', arch, attn_type='IIMS2', window_size=4)
    assert set(state) | set(rep['new']) == set(backbone.state_dict())
    assert sorted(rep['new']) == sorted(f'norm{i}.{p}' for i in range(3) for p in ('weight', 'bias'))
    assert any('yacs' in n for n in rep['notes'])
