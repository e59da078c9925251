"""Every attention layer of the name table: one contract, gradients, padding, batch independence."""
import pytest
import torch

from linattn_mm.layers import ATTENTIONS, build_attention

C, HEADS = 32, 2
SIZES = [(7, 11), (9, 13)]

# small method options so every layer is cheap; keys are the table names
OPTIONS = {
    'softmax': {},
    'window': dict(window_size=4, shift_size=2),
    'cswin': dict(split_size=3),
    'sra': dict(sr_ratio=2),
    'inline': {},
    'taylorshift': {},
    'linformer': dict(ref_hw=(5, 6), proj_len=8),
    'performer': dict(num_features=16),
    'nystrom': dict(num_landmarks=8, conv_kernel=3),
    'linear': {},
    'focused': {},
    'relu': dict(scales=(3,)),
    'longformer': dict(window_size=3, num_global=2),
    'bigbird': dict(window_size=3, num_random_blocks=2),
    'longshort': dict(window_size=(3, 4), num_landmarks=4),
    'rfa': dict(num_features=16),
}
EXTRA = [  # further option sets worth their own forward/backward
    ('window', dict(window_size=8)),                  # window larger than the grid
    ('cswin', dict(split_size=None)),
    ('cswin', dict(split_size=None, inner='inline')),
    ('cswin', dict(split_size=2, qkv_layout='q_kv')),
    ('sra', dict(linear=True, pool_size=3)),
    ('sra', dict(sr_ratio=4, qkv_layout='qkv')),
    ('inline', dict(qkv_layout='q_kv')),
    ('taylorshift', dict(mode='efficient', output_normalized=True)),
    ('linformer', dict(ref_hw=6, proj_len=8, share='kv')),
    ('linformer', dict(ref_hw=(5, 6), proj_len=8, share='headwise')),
    ('performer', dict(num_features=16, redraw=True)),
    ('relu', {}),
    ('longformer', dict(window_size=4, block_size=(2, 3), exact=False, global_update=False)),
    ('longformer', dict(window_size=5, num_global=0)),
    ('bigbird', dict(window_size=(3, 2), block_size=2, num_random_blocks=3, redraw=True, qkv_layout='q_kv')),
    ('longshort', dict(window_size=3, num_landmarks=2, exact=False, dual_ln=False)),
    ('rfa', dict(num_features=8, kernel='arccos', redraw=True, learn_sigma=False)),
]
CASES = [(n, o) for n, o in OPTIONS.items()] + EXTRA


def _layer(name, opts, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return build_attention(dict(type=name, **opts), C, HEADS).to(dtype)


def _ids(case):
    name, opts = case
    return name + ('-' + '-'.join(f'{k}={v}' for k, v in opts.items()) if opts else '')


def test_table_is_complete():
    assert set(OPTIONS) == set(ATTENTIONS)


@pytest.mark.parametrize('case', CASES, ids=_ids)
@pytest.mark.parametrize('hw', SIZES)
def test_forward_backward(case, hw):
    name, opts = case
    layer = _layer(name, opts).train()
    x = torch.randn(2, hw[0] * hw[1], C, requires_grad=True)
    y = layer(x, hw)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()
    (y * torch.randn_like(y)).sum().backward()
    assert torch.isfinite(x.grad).all()
    for pname, p in layer.named_parameters():
        assert p.grad is not None, f'{name}: {pname} got no gradient'
        assert torch.isfinite(p.grad).all(), f'{name}: {pname} has a non-finite gradient'


def _padding_mask(b, hw, kind, seed=0):
    h, w = hw
    if kind == 'bottom_right':  # an image padded to the batch shape: valid region is a top-left box
        m = torch.ones(b, h, w, dtype=torch.bool)
        m[0] = False
        m[1, :h - 2, :w - 3] = False
        return m.flatten(1)
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(b, h * w, generator=g) < 0.3
    m[0] = False
    return m


@pytest.mark.parametrize('case', CASES, ids=_ids)
@pytest.mark.parametrize('kind', ['bottom_right', 'scattered'])
def test_padding_never_leaks(case, kind):
    name, opts = case
    hw = (7, 11)
    layer = _layer(name, opts, torch.float64).eval()
    x = torch.randn(2, hw[0] * hw[1], C, dtype=torch.float64)
    kpm = _padding_mask(2, hw, kind)
    garbage = x.masked_fill(kpm[..., None], 0.) + kpm[..., None] * 1e2 * torch.randn_like(x)
    with torch.no_grad():
        y1 = layer(x, hw, key_padding_mask=kpm)
        y2 = layer(garbage, hw, key_padding_mask=kpm)
    valid = ~kpm
    assert torch.isfinite(y1[valid]).all()
    torch.testing.assert_close(y1[valid], y2[valid], rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize('case', CASES, ids=_ids)
def test_batch_independence(case):
    name, opts = case
    hw = (9, 13)
    layer = _layer(name, opts, torch.float64).eval()
    x = torch.randn(3, hw[0] * hw[1], C, dtype=torch.float64)
    kpm = _padding_mask(3, hw, 'scattered')
    with torch.no_grad():
        y = layer(x, hw, key_padding_mask=kpm)
        for i in range(3):
            yi = layer(x[i:i + 1], hw, key_padding_mask=kpm[i:i + 1])
            torch.testing.assert_close(y[i:i + 1], yi, rtol=1e-7, atol=1e-9)


def test_unpadded_mask_is_identity():
    """An all-False mask gives the same output as no mask."""
    hw = (7, 11)
    x = torch.randn(2, 77, C, dtype=torch.float64)
    kpm = torch.zeros(2, 77, dtype=torch.bool)
    for name, opts in CASES:
        layer = _layer(name, opts, torch.float64).eval()
        with torch.no_grad():
            torch.testing.assert_close(layer(x, hw, key_padding_mask=kpm), layer(x, hw), msg=name)


def test_unknown_name_lists_known():
    with pytest.raises(ValueError) as err:
        build_attention(dict(type='nope'), C, HEADS)
    msg = str(err.value)
    assert 'nope' in msg and all(n in msg for n in ATTENTIONS)


def test_cfg_as_string_and_overrides():
    layer = build_attention('linear', C, HEADS)
    assert type(layer) is ATTENTIONS['linear'] and layer.num_heads == HEADS
    layer = build_attention(dict(type='window', window_size=5), C, HEADS, qkv_bias=True, window_size=3)
    assert layer.window_size == (5, 5)          # cfg keys win over the caller's per-stage defaults
    layer = build_attention(dict(type='softmax', qkv_bias=False), C, HEADS, qkv_bias=True)
    assert layer.qkv.bias is None
    cfg = dict(type='softmax')
    build_attention(cfg, C, HEADS)
    assert cfg == dict(type='softmax')          # the caller's cfg is not consumed
    with pytest.raises(ValueError, match='type'):
        build_attention(dict(window_size=3), C, HEADS)


@pytest.mark.parametrize('name', sorted(ATTENTIONS))
def test_wrong_token_count_raises(name):
    layer = _layer(name, OPTIONS[name])
    with pytest.raises(ValueError, match='H\\*W'):
        layer(torch.randn(1, 20, C), (4, 6))
    with pytest.raises(ValueError, match='key_padding_mask'):
        layer(torch.randn(1, 24, C), (4, 6), key_padding_mask=torch.zeros(1, 23, dtype=torch.bool))


def test_heads_must_divide_channels():
    with pytest.raises(ValueError, match='divisible'):
        build_attention('softmax', 30, 4)


@pytest.mark.parametrize('masked', [False, True])
def test_inline_local_term_matches_shifted_sum(masked):
    """InLine's local term (one grouped conv, batch folded into the groups) equals the independent shifted-sum
    form of the same dynamic depthwise conv, outputs and gradients in float64, at an odd size with padding."""
    from linattn_mm.layers.inline import InLineAttention
    torch.manual_seed(0)
    layer = InLineAttention(16, 2).double()
    b, (h, w) = 3, (5, 7)
    x = torch.randn(b, h * w, 16, dtype=torch.float64, requires_grad=True)
    v = torch.randn(b, h * w, 16, dtype=torch.float64, requires_grad=True)
    mask = torch.zeros(b, h * w, dtype=torch.bool)
    mask[1, -9:] = True
    mask = mask if masked else None

    def shifted(x, v):
        weight = layer.residual(layer.masked_token_mean(x, mask)[..., None])
        return layer._local_term_shifted(weight, layer.to_map(v, (h, w), mask))

    g = torch.randn(b, h * w, 16, dtype=torch.float64)
    got, want = layer.local_term(x, v, (h, w), mask), shifted(x, v)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    params = [x, v] + list(layer.residual.parameters())
    for a, e in zip(torch.autograd.grad(got, params, g), torch.autograd.grad(want, params, g)):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)
