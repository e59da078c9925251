"""Softmax checkpoints (timm, mmdet, mmpretrain) mapped into our backbones: with the matching softmax attention the
features equal the source model's (float64, random weights, no download); with another attention every shared
tensor loads and the report names the rest; the real T/S/B and b0-b5 key layouts map completely."""
import os
import re
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

timm = pytest.importorskip('timm')
from linattn_mm.models.backbones import LinPVT, LinSwin, LinViT  # noqa: E402
from linattn_mm.models.backbones._base import interpolate_pos  # noqa: E402
from linattn_mm.models.backbones.softmax_ckpt import convert_softmax_checkpoint  # noqa: E402

SIZES = [(224, 224), (160, 288)]  # square, and non-square with every stage grid a multiple of the SR ratio


def _randomise(model, seed=0):
    """Random values in every parameter (zero biases and unit norms would hide mapping mistakes); float32 values,
    so that loading them into our float32 model and casting both to float64 is exact."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.2)
    return model


def _save(tmp_path, state, name='src.pth'):
    path = tmp_path / name
    torch.save(state, path)
    return str(path)


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def _assert_rel(ours, ref, tol=1e-5):
    assert ours.shape == ref.shape
    assert _rel(ours, ref) < tol, _rel(ours, ref)


# --------------------------------------------------------------------------------------------- PVTv2
PVT_TINY = dict(embed_dims=(16, 32, 48, 64), num_heads=(1, 2, 3, 4), depths=(1, 2, 1, 1), mlp_ratios=(2, 2, 2, 2),
                sr_ratios=(8, 4, 2, 1))


@pytest.mark.parametrize('linear', [False, True], ids=['sra', 'linear_sra'])
def test_linpvt_sra_equals_timm_pvt_v2(tmp_path, linear):
    from timm.models.pvt_v2 import PyramidVisionTransformerV2
    torch.manual_seed(0)
    ref = _randomise(PyramidVisionTransformerV2(**PVT_TINY, linear=linear, num_classes=10)).double().eval()
    arch = {k: list(v) for k, v in PVT_TINY.items()}
    ours = LinPVT(arch=arch, attn_cfg=dict(type='sra', linear=linear), overlap_patch_embed=True,
                  mlp='dwconv_relu' if linear else 'dwconv', stage_norm=True, drop_path_rate=0.,
                  init_cfg=dict(type='Pretrained', checkpoint=_save(tmp_path, ref.state_dict()), source='timm'))
    ours = ours.double().eval()
    own = ours.state_dict()
    for h, w in SIZES:
        x = torch.randn(1, 3, h, w, dtype=torch.float64)
        with torch.no_grad():
            want = ref.forward_intermediates(x, intermediates_only=True)
            got = ours(x)
        for o, r in zip(got, want):
            _assert_rel(o, r)
    _, rep = convert_softmax_checkpoint(ours, ref.state_dict(), 'timm', log=False)
    assert rep['new'] == [] and set(own) == set(rep['mapped'])
    assert {d.split(' ')[0] for d in rep['dropped']} == {'head.weight', 'head.bias'}


# ---------------------------------------------------------------------------------------------- Swin
SWIN_TINY = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=7)


def _timm_swin(img_size, state=None, always_partition=False):
    from timm.models.swin_transformer import SwinTransformer
    m = SwinTransformer(img_size=img_size, **SWIN_TINY, num_classes=10, always_partition=always_partition)
    if state is not None:
        m.load_state_dict(state)
    return m.eval()


def test_linswin_window_equals_timm_swin(tmp_path):
    torch.manual_seed(0)
    ref = _randomise(_timm_swin(224)).double()
    state = ref.state_dict()
    ours = LinSwin(arch=dict(embed_dims=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4]), attn_cfg='window',
                   drop_path_rate=0., init_cfg=dict(type='Pretrained', checkpoint=_save(tmp_path, state),
                                                    source='timm')).double().eval()
    torch.testing.assert_close(ours.norm3.weight, state['norm.weight'].double())
    _randomise(torch.nn.ModuleList([ours.norm0, ours.norm1, ours.norm2]), seed=1)  # ours only: random too
    # timm shifts a stage whose grid fits one window only along the dims that exceed it (7x14: shift (0, 3));
    # our window attention shifts both dims unless the whole grid is one window, which timm's
    # always_partition=True reproduces at this size (at 224 the last grid is one 7x7 window: no shift in both).
    # Both sizes give whole windows at every stage: timm lets zero padding take part in attention, ours masks it
    refs = {(224, 224): ref, (224, 448): _timm_swin((224, 448), state, always_partition=True).double()}
    for (h, w), r in refs.items():
        x = torch.randn(1, 3, h, w, dtype=torch.float64)
        with torch.no_grad():
            want = r.forward_intermediates(x, intermediates_only=True)
            got = ours(x)
        for i, (o, t) in enumerate(zip(got, want)):
            n = getattr(ours, f'norm{i}')
            t = F.layer_norm(t.permute(0, 2, 3, 1), (t.shape[1],), n.weight, n.bias, n.eps).permute(0, 3, 1, 2)
            _assert_rel(o, t)
    _, rep = convert_softmax_checkpoint(ours, state, 'timm', log=False)
    assert sorted(rep['new']) == [f'norm{i}.{p}' for i in range(3) for p in ('bias', 'weight')]
    assert {d.split(' ')[0] for d in rep['dropped']} == {'head.fc.weight', 'head.fc.bias'}


# ----------------------------------------------------------------------------------------------- ViT
def test_linvit_softmax_equals_timm_vit_without_class_token(tmp_path):
    """DeiT's blocks attend over its class token as well, so its patch features cannot equal a ViT without one.
    What must match is everything else: a timm ViT built with ``class_token=False`` (same weights) equals ours,
    from a DeiT-layout state dict (class token and its position entry, which the mapping drops)."""
    from timm.models.vision_transformer import VisionTransformer
    kw = dict(patch_size=16, embed_dim=32, depth=2, num_heads=2, class_token=False, global_pool='avg',
              fc_norm=False, num_classes=10)
    torch.manual_seed(0)
    ref = _randomise(VisionTransformer(img_size=224, **kw)).double().eval()
    state = dict(ref.state_dict())
    deit = dict(state, cls_token=torch.randn(1, 1, 32, dtype=torch.float64),
                pos_embed=torch.cat([torch.randn(1, 1, 32, dtype=torch.float64), state['pos_embed']], 1))
    ours = LinViT(arch=dict(embed_dims=32, depth=2, num_heads=2), attn_cfg='softmax', out_indices=(2,),
                  drop_path_rate=0., init_cfg=dict(type='Pretrained', checkpoint=_save(tmp_path, deit),
                                                   source='timm')).double().eval()
    for h, w in SIZES:
        r = ref
        if (h, w) != (224, 224):
            # timm resamples its table bicubically, ours bilinearly: give timm the table ours uses at this size
            r = VisionTransformer(img_size=(h, w), **kw).double().eval()
            r.load_state_dict(dict(state, pos_embed=interpolate_pos(ours.pos_embed, ours.pos_hw, (h // 16, w // 16))))
        x = torch.randn(1, 3, h, w, dtype=torch.float64)
        with torch.no_grad():
            want = r.forward_intermediates(x, indices=[1], norm=True, intermediates_only=True)[0]
            got = ours(x)[0]
        _assert_rel(got, want)
    _, rep = convert_softmax_checkpoint(ours, deit, 'timm', log=False)
    assert rep['new'] == []
    assert {d.split(' ')[0] for d in rep['dropped']} == {'cls_token', 'head.weight', 'head.bias'}


# ------------------------------------------------------------------------------- another attention
CONFIG = os.path.join(os.path.dirname(__file__), '..', '..', 'configs', 'softmax_init',
                      'mask-rcnn_linswin-t-inline-from-swin-t_fpn_1x_coco.py')


def test_linswin_t_inline_starts_from_timm_swin_t(tmp_path):
    """The README's one-line option (its config): LinSwin-T with InLine stages from a (random) timm Swin-T
    state dict loads every shared tensor and reports InLine's own parameters as new."""
    pytest.importorskip('mmdet')
    from mmengine.config import Config
    bb = Config.fromfile(CONFIG).model.backbone.to_dict()
    assert bb.pop('type') == 'linattn_mm.LinSwin' and bb['init_cfg']['source'] == 'timm'
    src = _on_meta(lambda: timm.create_model('swin_tiny_patch4_window7_224', pretrained=False))
    g = torch.Generator().manual_seed(0)
    state = {k: torch.randn(v.shape, generator=g) for k, v in src.state_dict().items()}  # timm's keys and shapes
    bb['init_cfg']['checkpoint'] = _save(tmp_path, state)
    ours = LinSwin(**bb)
    _, rep = convert_softmax_checkpoint(ours, state, 'timm', log=False)
    own = ours.state_dict()
    # every shared tensor loaded: all but the softmax-only bias tables of the InLine stages and the classifier
    dropped = {d.split(' ')[0] for d in rep['dropped']}
    assert dropped == {'head.fc.weight', 'head.fc.bias'} | {
        k for k in state if k.startswith(('layers.0.', 'layers.1.', 'layers.2.')) and 'relative_position' in k}
    assert len(rep['mapped']) == len(state) - len(dropped)
    for k in rep['mapped']:
        src_k = k.replace('norm3.', 'norm.')
        src_k = {f'layers.{i}.downsample.{p}': f'layers.{i + 1}.downsample.{p}' for i in range(3)
                 for p in ('norm.weight', 'norm.bias', 'reduction.weight')}.get(src_k, src_k)
        torch.testing.assert_close(own[k], state[src_k], msg=k)
    new = set(rep['new'])
    assert new and all('.attn.' in k for k in new - {f'norm{i}.{p}' for i in range(3) for p in ('weight', 'bias')})
    assert any('layers.0.blocks.0.attn.' in k for k in new)  # InLine's own parameters, initialised as InLine does


def test_official_swin_layout_equals_timm_layout():
    """The official microsoft/Swin-Transformer files (what mmdet's Swin configs load) merge at the end of a stage
    and keep the index / mask buffers; source='timm' reads them too."""
    state = _randomise(_timm_swin(224)).state_dict()
    official = {}
    for k, v in state.items():
        m = re.match(r'layers\.(\d+)\.downsample\.(.*)', k)
        official[f'layers.{int(m.group(1)) - 1}.downsample.{m.group(2)}' if m else k] = v
    official['layers.0.blocks.1.attn_mask'] = torch.zeros(64, 49, 49)
    official['layers.0.blocks.0.attn.relative_position_index'] = torch.zeros(49, 49, dtype=torch.long)
    ours = LinSwin(arch=dict(embed_dims=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4]), attn_cfg='window')
    a, _ = convert_softmax_checkpoint(ours, state, 'timm', log=False)
    b, rep = convert_softmax_checkpoint(ours, official, 'timm', log=False)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert len(rep['dropped']) == 4  # head weight and bias, and the two buffers


def test_qkv_split_and_concat_between_layouts():
    """PVT keeps q and kv apart, Swin/ViT fuse them: a softmax PVTv2 checkpoint into a fused-qkv attention and
    back gives the same projections."""
    from timm.models.pvt_v2 import PyramidVisionTransformerV2
    src = _randomise(PyramidVisionTransformerV2(**PVT_TINY))
    arch = {k: list(v) for k, v in PVT_TINY.items()}
    fused = LinPVT(arch=arch, attn_cfg=dict(type='inline', qkv_layout='qkv'), overlap_patch_embed=True,
                   mlp='dwconv', stage_norm=True)
    state, rep = convert_softmax_checkpoint(fused, src.state_dict(), 'timm', log=False)
    assert rep['concatenated'] and not rep['split']
    s = src.state_dict()
    torch.testing.assert_close(state['block1.0.attn.qkv.weight'],
                               torch.cat([s['stages.0.blocks.0.attn.q.weight'], s['stages.0.blocks.0.attn.kv.weight']]))
    q_kv = LinPVT(arch=arch, attn_cfg='inline', overlap_patch_embed=True, mlp='dwconv', stage_norm=True)
    back, rep2 = convert_softmax_checkpoint(q_kv, {k: v for k, v in state.items()}, 'timm', log=False)
    assert rep2['split']
    torch.testing.assert_close(back['block1.0.attn.kv.weight'], s['stages.0.blocks.0.attn.kv.weight'])


def test_rel_pos_table_resized_to_another_window():
    state = _timm_swin(224).state_dict()
    ours = LinSwin(arch=dict(embed_dims=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4]), attn_cfg='window',
                   window_size=5)
    out, rep = convert_softmax_checkpoint(ours, state, 'timm', log=False)
    assert len(rep['resized']) == 8 and out['layers.0.blocks.0.attn.relative_position_bias_table'].shape == (81, 1)


def test_bad_source_and_wrong_family_raise():
    m = LinViT(arch=dict(embed_dims=32, depth=1, num_heads=2))
    with pytest.raises(ValueError, match='source must be one of'):
        convert_softmax_checkpoint(m, {}, 'torchvision')
    with pytest.raises(ValueError, match='nothing of the checkpoint maps'):
        convert_softmax_checkpoint(m, _timm_swin(224).state_dict(), 'timm')


# ----------------------------------------------------------------- real sizes: key names and shapes
REAL = [('swin_tiny_patch4_window7_224', LinSwin, 't'), ('swin_small_patch4_window7_224', LinSwin, 's'),
        ('swin_base_patch4_window7_224', LinSwin, 'b'), *[(f'pvt_v2_b{i}', LinPVT, f'v2_b{i}') for i in range(6)],
        ('pvt_v2_b2_li', LinPVT, 'v2_b2_li'),
        ('deit_small_patch16_224', LinViT, dict(embed_dims=384, depth=12, num_heads=6)),
        ('vit_base_patch16_224', LinViT, dict(embed_dims=768, depth=12, num_heads=12))]
SLOW = {'pvt_v2_b3', 'pvt_v2_b4', 'pvt_v2_b5'}  # a few seconds each on a CI core (deep stage 3)


def _on_meta(build):
    """Build a model on the meta device (shapes only, no memory): the drop-path schedule is computed on the CPU and
    the truncated-normal init (slow there, and meaningless without values) is skipped."""
    linspace = torch.linspace
    noop = lambda t, *a, **k: t  # noqa: E731
    patches = [mock.patch('torch.linspace', lambda *a, **k: linspace(*a, **{**k, 'device': 'cpu'})),
               mock.patch('timm.layers.trunc_normal_', noop), mock.patch('torch.nn.init.trunc_normal_', noop)]
    patches += [mock.patch(f'timm.models.{m}.trunc_normal_', noop)
                for m in ('swin_transformer', 'pvt_v2', 'vision_transformer')]
    with torch.device('meta'):
        for p in patches:
            p.start()
        try:
            return build()
        finally:
            for p in patches:
                p.stop()


@pytest.mark.parametrize('name,cls,arch', [pytest.param(*r, id=r[0], marks=[pytest.mark.slow] if r[0] in SLOW else [])
                                            for r in REAL])
def test_real_size_timm_layouts_map_completely(name, cls, arch):
    """Full-size timm models and ours on the meta device: every tensor of ours with the matching softmax attention
    has its counterpart of the right shape, except what only ours has (Swin's per-level norms of levels 0-2, the
    ViTDet pyramid's convs); only the classifier (and the class token) is left over."""
    src = _on_meta(lambda: timm.create_model(name, pretrained=False))
    attn = dict(LinSwin='window', LinPVT=None, LinViT='softmax')[cls.__name__]
    ours = _on_meta(lambda: cls(arch=arch, attn_cfg=attn, drop_path_rate=0.))
    _, rep = convert_softmax_checkpoint(ours, src.state_dict(), 'timm', log=False)
    expect_new = {f'norm{i}.{p}' for i in range(3) for p in ('weight', 'bias')} if cls is LinSwin else \
        {k for k in ours.state_dict() if k.startswith('fpn')} if cls is LinViT else set()
    assert set(rep['new']) == expect_new
    assert {d.split(' ')[0] for d in rep['dropped']} <= {'head.weight', 'head.bias', 'head.fc.weight',
                                                         'head.fc.bias', 'cls_token'}
    assert len(rep['mapped']) == len(ours.state_dict()) - len(expect_new) > 0


# ---------------------------------------------------------------------------------- mmdet / mmpretrain
def _mmpretrain_vit_keys(k):
    """timm ViT key -> mmpretrain VisionTransformer key (the renames of mmpretrain's own deit converter)."""
    for a, b in (('patch_embed.proj.', 'patch_embed.projection.'), ('blocks.', 'layers.'), ('norm1.', 'ln1.'),
                 ('norm2.', 'ln2.'), ('mlp.fc1.', 'ffn.layers.0.0.'), ('mlp.fc2.', 'ffn.layers.1.')):
        k = k.replace(a, b)
    return 'ln1.' + k[len('norm.'):] if k.startswith('norm.') else 'head.layers.' + k if k.startswith('head.') else k


def test_mmpretrain_vit_layout_equals_timm_layout():
    from timm.models.vision_transformer import VisionTransformer
    state = _randomise(VisionTransformer(img_size=224, patch_size=16, embed_dim=32, depth=2, num_heads=2)).state_dict()
    mmpre = {'backbone.' + _mmpretrain_vit_keys(k) if not k.startswith('head.') else _mmpretrain_vit_keys(k): v
             for k, v in state.items()}
    assert 'backbone.layers.1.ffn.layers.0.0.weight' in mmpre and 'backbone.ln1.weight' in mmpre
    ours = LinViT(arch=dict(embed_dims=32, depth=2, num_heads=2), attn_cfg='focused', out_indices=(2, 3))
    a, _ = convert_softmax_checkpoint(ours, state, 'timm', log=False)
    stripped = {k[len('backbone.'):]: v for k, v in mmpre.items() if k.startswith('backbone.')}
    b, rep = convert_softmax_checkpoint(ours, stripped, 'mmpretrain', log=False)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert {d.split(' ')[0] for d in rep['dropped']} == {'cls_token'}
    # focused linear attention's own depthwise conv and scale are new
    assert {k.split('.', 3)[3] for k in rep['new']} == {'dwc.weight', 'dwc.bias', 'scale'}


def test_mmdet_swin_and_pvtv2_keys_map_completely():
    """mmdet's own Swin and PVTv2 (built without weights) map completely; Swin's patch-merging order is checked
    on the features of stages 0-2 (mmdet also shifts the single 7x7 window of stage 3 at 224, ours does not)."""
    mmdet_bb = pytest.importorskip('mmdet.models.backbones')
    torch.manual_seed(0)
    swin = _randomise(mmdet_bb.SwinTransformer(embed_dims=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4),
                                               window_size=7, out_indices=(0, 1, 2, 3)))
    ours = LinSwin(arch=dict(embed_dims=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4]), attn_cfg='window',
                   drop_path_rate=0.)
    state, rep = convert_softmax_checkpoint(ours, swin.state_dict(), 'mmdet', log=False)
    assert rep['new'] == [] and set(rep['mapped']) == set(ours.state_dict())
    ours.load_state_dict(state)
    swin.double()
    swin.eval()  # mmdet's SwinTransformer.train() returns None: not chained
    ours = ours.double().eval()
    x = torch.randn(1, 3, 224, 224, dtype=torch.float64)
    with torch.no_grad():
        for o, r in list(zip(ours(x), swin(x)))[:3]:
            _assert_rel(o, r)
    pvt = mmdet_bb.PyramidVisionTransformerV2(embed_dims=16, num_layers=[1, 2, 1, 1], num_heads=[1, 2, 3, 4],
                                              mlp_ratios=[2, 2, 2, 2])
    ours = LinPVT(arch=dict(embed_dims=[16, 32, 48, 64], num_heads=[1, 2, 3, 4], depths=[1, 2, 1, 1],
                            mlp_ratios=[2, 2, 2, 2]), attn_cfg='sra', overlap_patch_embed=True, mlp='dwconv',
                  stage_norm=True)
    _, rep = convert_softmax_checkpoint(ours, pvt.state_dict(), 'mmdet', log=False)
    assert rep['new'] == [] and set(rep['mapped']) == set(ours.state_dict())
