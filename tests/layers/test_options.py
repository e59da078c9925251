"""Method options of the layers and the parameter names that official checkpoints use."""
import pytest
import torch
import torch.nn.functional as F

from linattn_mm.layers import (FocusedLinearAttention, InLineAttention, LinformerAttention, LinformerProjection,
                               NystromAttention, PerformerAttention, ReLULinearAttention, SRAttention,
                               TaylorShiftAttention, build_attention)

C, HEADS = 32, 2


def _keys(m):
    return set(m.state_dict())


# ----------------------------------------------------------------------------------------------- InLine
def _official_inline(layer, x, hw):
    """The official InLine forward (LeapLabTHU/InLine, Swin/PVT variants with sr_ratio=1), identity kernel."""
    b, n, c = x.shape
    h = layer.num_heads
    d = c // h
    s = d ** -0.5
    if layer.qkv_layout == 'qkv':
        q, k, v = layer.qkv(x).chunk(3, -1)
    else:
        q = layer.q(x)
        k, v = layer.kv(x).chunk(2, -1)
    res_weight = layer.residual(x.mean(dim=1).unsqueeze(-1)).reshape(b * c, 1, 3, 3)
    q, k, v = (t.reshape(b, n, h, d).permute(0, 2, 1, 3) for t in (q, k, v))
    kv = (k.transpose(-2, -1) * (s / n) ** 0.5) @ (v * (s / n) ** 0.5)
    out = q @ kv + (1 - q @ k.mean(2, keepdim=True).transpose(-2, -1) * s) * v.mean(2, keepdim=True)
    out = out.transpose(1, 2).reshape(b, n, c)
    vmap = v.transpose(1, 2).reshape(b, hw[0], hw[1], c).permute(0, 3, 1, 2).reshape(1, b * c, *hw)
    out = out + F.conv2d(vmap, res_weight, None, padding=1, groups=b * c).reshape(b, c, n).permute(0, 2, 1)
    return layer.proj(out)


@pytest.mark.parametrize('layout', ['qkv', 'q_kv'])
def test_inline_matches_official_formula_and_keys(layout):
    torch.manual_seed(0)
    layer = InLineAttention(C, HEADS, qkv_layout=layout).double().eval()
    proj_keys = {'qkv.weight', 'qkv.bias'} if layout == 'qkv' else {'q.weight', 'q.bias', 'kv.weight', 'kv.bias'}
    assert _keys(layer) == proj_keys | {'proj.weight', 'proj.bias', 'residual.0.weight', 'residual.0.bias',
                                        'residual.2.weight', 'residual.2.bias'}
    assert layer.residual[2].weight.shape == (9 * C, C // HEADS, 1)
    hw = (5, 7)
    x = torch.randn(2, 35, C, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(layer(x, hw), _official_inline(layer, x, hw))


# -------------------------------------------------------------------------------------------- TaylorShift
def test_taylor_keys_official_temperature_and_modes():
    torch.manual_seed(0)
    layer = TaylorShiftAttention(C, HEADS).double().eval()
    assert _keys(layer) == {'qkv.weight', 'qkv.bias', 'proj.weight', 'proj.bias', 'temperature'}
    sd = layer.state_dict()
    sd['temperature'] = torch.tensor([0.5, 2.0], dtype=torch.float64).view(1, HEADS, 1, 1)  # official shape
    layer.load_state_dict(sd)
    assert layer.temperature.shape == (HEADS,) and layer.temperature[1] == 2.0
    hw = (5, 7)
    x = torch.randn(2, 35, C, dtype=torch.float64)
    with torch.no_grad():
        for normed in (False, True):
            layer.output_normalized = normed
            outs = []
            for mode, n0 in (('direct', None), ('efficient', None), ('auto', 1), ('auto', 10 ** 6)):
                layer.mode, layer.n0 = mode, n0        # plain attributes, settable on a built model
                outs.append(layer(x, hw))
            for o in outs[1:]:
                torch.testing.assert_close(o, outs[0])


def test_taylor_bad_mode():
    with pytest.raises(ValueError, match='mode'):
        TaylorShiftAttention(C, HEADS, mode='fast')


# ---------------------------------------------------------------------------------------------- Linformer
def test_linformer_resize_preserves_row_mass():
    proj = LinformerProjection(ref_hw=(4, 6), proj_len=3, num_heads=HEADS)
    with torch.no_grad():
        proj.proj_k.fill_(1.)
    pk, pv = proj((4, 6))
    assert pk.shape == (HEADS, 3, 24) and torch.equal(pk, proj.proj_k)
    for hw in ((9, 13), (3, 2), (14, 14)):
        pk, pv = proj(hw)
        assert pk.shape == (HEADS, 3, hw[0] * hw[1]) and pv.shape == pk.shape
        torch.testing.assert_close(pk.sum(-1), torch.full((HEADS, 3), 24.))   # mass of a row is kept


def test_linformer_sharing():
    none = LinformerAttention(C, HEADS, ref_hw=6, proj_len=8)
    head = LinformerAttention(C, HEADS, ref_hw=6, proj_len=8, share='headwise')
    kv = LinformerAttention(C, HEADS, ref_hw=6, proj_len=8, share='kv')
    assert none.projection.proj_k.shape == (HEADS, 8, 36) and none.projection.proj_v.shape == (HEADS, 8, 36)
    assert head.projection.proj_k.shape == (8, 36) and head.projection.proj_v is not None
    assert kv.projection.proj_v is None and 'projection.proj_v' not in kv.state_dict()
    shared = LinformerProjection(6, 8, HEADS, share='kv')
    a = LinformerAttention(C, HEADS, shared_proj=shared)
    b = LinformerAttention(C, HEADS, shared_proj=shared)
    assert a.projection.proj_k is b.projection.proj_k
    model = torch.nn.ModuleList([a, b])
    assert sum(p is shared.proj_k for p in model.parameters()) == 1      # counted once
    with pytest.raises(ValueError, match='share'):
        LinformerProjection(6, 8, HEADS, share='layerwise')


# ---------------------------------------------------------------------------------------------- Performer
def test_performer_features_fixed_seeded_and_redrawn():
    a = PerformerAttention(C, HEADS, num_features=12, seed=3)
    b = PerformerAttention(C, HEADS, num_features=12, seed=3)
    assert a.features.shape[0] == 12 and torch.equal(a.features, b.features)
    assert 'features' in a.state_dict()
    x = torch.randn(1, 20, C)
    f0 = a.features.clone()
    a.train()(x, (4, 5))
    assert torch.equal(a.features, f0)                      # redraw=False: fixed
    r = PerformerAttention(C, HEADS, num_features=12, redraw=True).train()
    f0 = r.features.clone()
    r(x, (4, 5))
    assert not torch.equal(r.features, f0)                  # redrawn in training
    f1 = r.features.clone()
    r.eval()(x, (4, 5))
    assert torch.equal(r.features, f1)                      # never in eval
    assert PerformerAttention(C, HEADS).num_features >= C // HEADS


# ------------------------------------------------------------------------------------------ SRA / others
def test_sra_keys_and_reduction():
    assert _keys(SRAttention(C, HEADS)) == {'q.weight', 'q.bias', 'kv.weight', 'kv.bias', 'proj.weight',
                                            'proj.bias'}
    sr = SRAttention(C, HEADS, sr_ratio=4)
    assert {'sr.weight', 'sr.bias', 'norm.weight', 'norm.bias'} <= _keys(sr)
    x = torch.randn(2, 7 * 11, C)
    kv, mask = sr.reduce(x, (7, 11), None)
    assert kv.shape == (2, 2 * 3, C) and mask is None          # ceil(7/4) x ceil(11/4)
    kpm = torch.zeros(2, 77, dtype=torch.bool)
    kpm[1].view(7, 11)[:, 4:] = True                          # only the first column of cells stays valid
    _, mask = sr.reduce(x, (7, 11), kpm)
    assert mask[0].sum() == 0 and mask[1].view(2, 3)[:, 1:].all() and not mask[1].view(2, 3)[:, 0].any()
    lin = SRAttention(C, HEADS, linear=True, pool_size=3)
    assert lin.reduce(x, (7, 11), None)[0].shape == (2, 9, C)
    # sr_ratio=1 is global softmax attention
    torch.manual_seed(0)
    g = SRAttention(C, HEADS, qkv_layout='qkv').double().eval()
    s = build_attention('softmax', C, HEADS).double().eval()
    s.load_state_dict(g.state_dict())
    xd = x.double()
    torch.testing.assert_close(g(xd, (7, 11)), s(xd, (7, 11)))


def test_focused_keys():
    m = FocusedLinearAttention(C, HEADS)
    assert _keys(m) == {'qkv.weight', 'qkv.bias', 'proj.weight', 'proj.bias', 'dwc.weight', 'dwc.bias', 'scale'}
    assert m.dwc.weight.shape == (C // HEADS, 1, 5, 5) and m.scale.shape == (1, 1, C)
    p = FocusedLinearAttention(C, HEADS, qkv_layout='q_kv', pos_hw=(4, 5))
    assert p.positional_encoding.shape == (1, 20, C) and 'kv.weight' in p.state_dict()
    y = p(torch.randn(1, 42, C), (6, 7))                     # positional encoding resized to 6 x 7
    assert y.shape == (1, 42, C)


def test_nystrom_and_relu_keys():
    n = NystromAttention(C, HEADS, conv_kernel=3)
    assert n.conv.weight.shape == (HEADS, 1, 3, 3) and 'conv.weight' in n.state_dict()
    assert 'conv.weight' not in NystromAttention(C, HEADS).state_dict()
    r = ReLULinearAttention(C, HEADS, scales=(3, 5))
    assert r.proj.in_features == 3 * C and len(r.aggreg) == 2
    assert {'aggreg.0.0.weight', 'aggreg.0.1.weight', 'aggreg.1.0.weight'} <= _keys(r)
