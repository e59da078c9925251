"""Every backbone family x every attention of the table: shapes, strides, gradients, freezing, checkpointing,
mixed precision, registries, timm names, pretrained loading and official-checkpoint conversion."""
import math
import os
import re
import subprocess
import sys

import pytest
import torch

from linattn_mm.layers import ATTENTIONS
from linattn_mm.models.backbones import LinCSwin, LinPVT, LinSwin, LinViT

TINY = {
    LinPVT: dict(arch=dict(embed_dims=[16, 32, 32, 48], num_heads=[1, 2, 2, 2], mlp_ratios=[2, 2, 2, 2],
                           depths=[1, 1, 1, 1]), drop_path_rate=0.),
    LinSwin: dict(arch=dict(embed_dims=16, depths=[2, 1, 1, 1], num_heads=[1, 2, 2, 4]), drop_path_rate=0.),
    LinViT: dict(arch=dict(embed_dims=32, depth=2, num_heads=2), drop_path_rate=0.),
    LinCSwin: dict(arch=dict(embed_dims=16, depths=[1, 1, 2, 1], num_heads=[2, 2, 2, 4]), drop_path_rate=0.),
}
# options that keep the random-feature / landmark methods meaningful at tiny sizes
ATTN_OPTS = {'performer': dict(num_features=16), 'nystrom': dict(num_landmarks=8),
             'linformer': dict(proj_len=8), 'longformer': dict(window_size=5), 'bigbird': dict(num_random_blocks=1),
             'longshort': dict(num_landmarks=4), 'rfa': dict(num_features=16),
             'cswin': dict(split_size=None)}  # the tiny PVT/Swin stage 1 has one head: no two stripe groups


def tiny(cls, attn=None, **kw):
    args = dict(TINY[cls], **kw)
    if attn is not None:
        args['attn_cfg'] = dict(type=attn, **ATTN_OPTS.get(attn, {}))
    torch.manual_seed(0)
    return cls(**args)


@pytest.mark.parametrize('attn', sorted(ATTENTIONS))
@pytest.mark.parametrize('cls', [LinPVT, LinSwin, LinViT, LinCSwin], ids=lambda c: c.__name__)
def test_forward_backward_odd_size(cls, attn):
    m = tiny(cls, attn).train()
    h, w = 97, 131
    outs = m(torch.randn(2, 3, h, w))
    assert len(outs) == len(m.out_indices) == len(m.out_channels) == len(m.out_strides)
    for o, c, s in zip(outs, m.out_channels, m.out_strides):
        assert o.shape == (2, c, math.ceil(h / s), math.ceil(w / s))
        assert torch.isfinite(o).all()
    sum(o.square().mean() for o in outs).backward()
    for name, p in m.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f'{name} got no gradient'
            assert torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize('kw', [dict(), dict(attn_type='SSSS'), dict(attn_cfg='cswin', split_size=(2, 3, 4, 5))],
                         ids=['IISS', 'SSSS', 'stripes2345'])
def test_cswin_stripes_odd_size(kw):
    m = tiny(LinCSwin, **kw).train()
    outs = m(torch.randn(2, 3, 97, 131))
    assert [o.shape[-2:] for o in outs] == [(25, 33), (13, 17), (7, 9), (4, 5)]
    sum(o.square().mean() for o in outs).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        assert all(torch.isfinite(o.float()).all() for o in m.eval()(torch.randn(1, 3, 64, 96)))


@pytest.mark.parametrize('cls', [LinPVT, LinSwin, LinViT, LinCSwin], ids=lambda c: c.__name__)
def test_feature_info_and_out_indices(cls):
    m = tiny(cls, out_indices=(1, 3))
    assert [f['reduction'] for f in m.feature_info] == m.out_strides == [8, 32]
    assert [f['num_chs'] for f in m.feature_info] == m.out_channels
    assert len(m(torch.randn(1, 3, 32, 32))) == 2
    with pytest.raises(ValueError, match='out_indices'):
        tiny(cls, out_indices=(4,))


@pytest.mark.parametrize('cls', [LinPVT, LinSwin, LinViT, LinCSwin], ids=lambda c: c.__name__)
def test_frozen_stages_are_frozen(cls):
    m = tiny(cls, frozen_stages=1).train()
    frozen = [mod for i in range(2) for mod in m._stage_modules(i)]
    for mod in frozen:
        assert not mod.training
        assert all(not p.requires_grad for p in mod.parameters())
    before = {k: v.clone() for k, v in m.state_dict().items()}
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
    sum(o.mean() for o in m(torch.randn(1, 3, 64, 64))).backward()
    opt.step()
    frozen_names = {n for mod in frozen for n, _ in mod.named_parameters()}
    assert frozen_names
    changed = [k for k, v in m.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, 'the unfrozen stages should train'
    for mod in frozen:
        for p in mod.parameters():
            assert p.grad is None


@pytest.mark.parametrize('cls', [LinPVT, LinSwin, LinViT, LinCSwin], ids=lambda c: c.__name__)
def test_with_cp_gives_same_output_and_grads(cls):
    x = torch.randn(1, 3, 50, 70)
    outs, grads = [], []
    for cp in (False, True):
        m = tiny(cls, with_cp=cp).train()
        o = m(x)
        sum(t.sum() for t in o).backward()
        outs.append(o)
        grads.append({n: p.grad.clone() for n, p in m.named_parameters()})
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b)
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], msg=n)


@pytest.mark.parametrize('attn', ['inline', 'taylorshift', 'linformer', 'softmax'])
@pytest.mark.parametrize('cls', [LinPVT, LinSwin, LinViT, LinCSwin], ids=lambda c: c.__name__)
def test_bf16_autocast_finite(cls, attn):
    m = tiny(cls, attn).eval()
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        outs = m(torch.randn(1, 3, 64, 96))
    assert all(torch.isfinite(o.float()).all() for o in outs)


def test_norm_eval_keeps_norms_in_eval():
    m = tiny(LinPVT, norm_eval=True).train()
    assert all(not mod.training for mod in m.modules() if isinstance(mod, torch.nn.LayerNorm))


def test_builds_through_mmdet_and_mmseg_registries():
    from mmengine.registry import MODELS, init_default_scope
    for scope in ('mmdet', 'mmseg'):
        pytest.importorskip(scope)
        init_default_scope(scope)
        reg = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
        for name in ('LinPVT', 'LinSwin', 'LinViT', 'LinCSwin'):
            m = reg.build(dict(type=f'linattn_mm.{name}', **TINY[globals()[name]]))
            assert type(m).__name__ == name
    assert MODELS.build(dict(type='linattn_mm.LinPVT', **TINY[LinPVT])).out_channels == [16, 32, 32, 48]


def test_preset_sizes_match_the_papers():
    # parameter counts without the classifier: InLine-PVT-T 12.0M and InLine-Swin-T ~30M with their heads
    n = lambda m: sum(p.numel() for p in m.parameters()) / 1e6  # noqa: E731
    assert 11.0 < n(LinPVT('t')) < 12.0
    assert 27.5 < n(LinSwin('t')) < 29.5
    assert 6.0 < n(LinViT('deit_t')) < 7.5  # DeiT-T 5.7M + InLine's local-term generators + pyramid
    # the official inline_cswin_tiny instantiates with 20.60M parameters, 0.51M of them in its head
    assert round(n(LinCSwin('t', out_indices=(3,))), 2) == 20.09
    with pytest.raises(ValueError, match='unknown arch'):
        LinPVT('xl')
    with pytest.raises(ValueError, match='attn_type'):
        LinSwin('t', attn_type='IIX')


def test_timm_names():
    timm = pytest.importorskip('timm')
    import linattn_mm.models  # noqa: F401
    m = timm.create_model('linpvt_t_inline', features_only=True, arch=TINY[LinPVT]['arch'])
    assert m.feature_info.reduction() == [4, 8, 16, 32]
    outs = m(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == m.feature_info.channels()
    clf = timm.create_model('linswin_t_inline', num_classes=7, arch=TINY[LinSwin]['arch'])
    assert clf(torch.randn(2, 3, 64, 64)).shape == (2, 7)
    feats = timm.create_model('lincswin_t_inline', features_only=True, arch=TINY[LinCSwin]['arch'])
    assert [o.shape[1:] for o in feats(torch.randn(1, 3, 50, 70))] == [(16, 13, 18), (32, 7, 9), (64, 4, 5),
                                                                       (128, 2, 3)]


def _official_like(m, model):
    """A state dict with the official key names (from the official model code) and shapes."""
    sd = dict(m.state_dict())
    if model == 'inline_pvt':
        sd['head.weight'] = torch.randn(1000, 48)
        sd['head.bias'] = torch.randn(1000)
    elif model == 'inline_swin':
        sd['norm.weight'] = sd.pop('norm3.weight')
        sd['norm.bias'] = sd.pop('norm3.bias')
        for k in [k for k in sd if k.startswith(('norm0', 'norm1', 'norm2'))]:
            del sd[k]
        sd['layers.0.blocks.0.attn.relative_position_index'] = torch.zeros(49, 49, dtype=torch.long)
        sd['head.weight'] = torch.randn(1000, 128)
    elif model == 'inline_cswin':
        sd = {re.sub(r'\.attn\.(qkv|proj|attns)\.', r'.\1.', k): v for k, v in sd.items()
              if not k.startswith(('norm0', 'norm1', 'norm2'))}
        sd['norm.weight'] = sd.pop('norm3.weight')
        sd['norm.bias'] = sd.pop('norm3.bias')
        sd['head.weight'] = torch.randn(1000, 128)
    else:  # timm ViT layout: class token and its position entry
        sd['cls_token'] = torch.randn(1, 1, 32)
        sd['pos_embed'] = torch.cat([torch.randn(1, 1, 32), sd['pos_embed']], 1)
        sd['head.weight'] = torch.randn(1000, 32)
    return sd


@pytest.mark.parametrize('model,cls', [('inline_pvt', LinPVT), ('inline_swin', LinSwin),
                                       ('inline_deit', LinViT), ('inline_cswin', LinCSwin)])
def test_convert_official_and_load_pretrained(tmp_path, model, cls):
    src_model = tiny(cls)
    torch.nn.init.normal_(next(iter(src_model.parameters())))
    official = _official_like(src_model, model)
    src = tmp_path / 'official.pth'
    torch.save({'model': official}, src)
    dst = tmp_path / 'ours.pth'
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.path.insert(0, os.path.join(root, 'tools'))
    try:
        import convert_weights
    finally:
        sys.path.pop(0)
    arch = TINY[cls]['arch']
    state, backbone, rep = convert_weights.convert.__wrapped__(str(src), model, arch) \
        if hasattr(convert_weights.convert, '__wrapped__') else convert_weights.convert(str(src), model, arch)
    assert rep['unexpected'] == []
    allowed_missing = {'norm0.weight', 'norm0.bias', 'norm1.weight', 'norm1.bias', 'norm2.weight', 'norm2.bias'}
    assert set(rep['missing']) <= allowed_missing
    torch.save({'state_dict': state}, dst)
    loaded = cls(**TINY[cls], init_cfg=dict(type='Pretrained', checkpoint=str(dst)))
    ref = src_model.state_dict()
    for k, v in loaded.state_dict().items():
        if k in ref and k not in allowed_missing:
            torch.testing.assert_close(v, ref[k], msg=k)
    # loading the official file directly through init_cfg converts on the fly
    direct = cls(**TINY[cls], init_cfg=dict(type='Pretrained', checkpoint=str(src)))
    for k, v in direct.state_dict().items():
        if k in ref and k not in allowed_missing:
            torch.testing.assert_close(v, ref[k], msg=k)


def test_convert_weights_cli(tmp_path):
    src_model = LinPVT('t')
    src = tmp_path / 'inline_pvt_tiny.pth'
    torch.save({'model': _official_like(src_model, 'inline_pvt') | {'head.weight': torch.randn(1000, 512)}}, src)
    dst = tmp_path / 'out.pth'
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    res = subprocess.run([sys.executable, os.path.join(root, 'tools', 'convert_weights.py'), str(src), str(dst),
                          '--model', 'inline_pvt', '--arch', 't'], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert 'head.weight' in res.stdout
    assert torch.load(dst, weights_only=True)['state_dict'].keys() == src_model.state_dict().keys()
