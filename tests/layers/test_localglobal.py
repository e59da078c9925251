"""Layers of the local-global family: what each one's options mean (the shared contract is in test_layers.py)."""
import pytest
import torch

from linattn_mm.layers import (ATTENTIONS, BigBirdAttention, LongformerAttention, LongShortAttention, RFAAttention,
                               build_attention)

C, HEADS, HW = 16, 2, (6, 9)


def _x(seed=0, b=1):
    return torch.randn(b, HW[0] * HW[1], C, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _layer(name, init_seed=0, **opts):
    torch.manual_seed(init_seed)
    return build_attention(dict(type=name, **opts), C, HEADS).double().eval()


def test_names_in_the_table():
    for name, cls in (('longformer', LongformerAttention), ('bigbird', BigBirdAttention),
                      ('longshort', LongShortAttention), ('rfa', RFAAttention)):
        assert ATTENTIONS[name] is cls and type(build_attention(name, C, HEADS)) is cls


def _reach(layer, src=-1, dst=0):
    """How much output token ``dst`` moves when input token ``src`` changes."""
    x = _x()
    x2 = x.clone()
    x2[:, src] = 5 * torch.randn(C, dtype=x.dtype)
    with torch.no_grad():
        return float((layer(x, HW)[:, dst] - layer(x2, HW)[:, dst]).abs().max())


@pytest.mark.parametrize('opts,reaches', [
    (dict(num_global=0), False),                          # pure window: (5, 8) is outside (0, 0)'s 3 x 3 window
    (dict(num_global=2, global_update=False), False),     # ViL single pass: per-layer global tokens are static
    (dict(num_global=2), True),                           # global update: information crosses the image
])
def test_longformer_locality_and_global_tokens(opts, reaches):
    layer = _layer('longformer', window_size=3, **opts)
    assert (_reach(layer) > 1e-6) is reaches
    assert _reach(layer, src=1) > 1e-6                    # the neighbour always reaches


def test_longshort_and_bigbird_reach_beyond_the_window():
    assert _reach(_layer('longshort', window_size=3, num_landmarks=2)) > 1e-6
    assert _reach(_layer('longshort', window_size=3, num_landmarks=2, exact=False)) > 1e-6
    # all other blocks as random blocks: every token reaches every other even without global tokens
    assert _reach(_layer('bigbird', window_size=3, num_global=0, num_random_blocks=100)) > 1e-6
    assert _reach(_layer('bigbird', window_size=3, num_global=0, num_random_blocks=0)) == 0


def test_bigbird_pattern_is_seeded_and_redrawn_only_when_asked():
    a, b = _layer('bigbird', window_size=2, num_global=0), _layer('bigbird', window_size=2, num_global=0)
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(a(x, HW), b(x, HW))          # same seed, same weights: same output
    assert torch.equal(a.random_blocks(HW), a.random_blocks(HW))
    c = _layer('bigbird', window_size=2, num_global=0, seed=1)
    assert not torch.equal(a.random_blocks(HW), c.random_blocks(HW))
    r = _layer('bigbird', window_size=2, num_global=0, redraw=True).train()
    assert not torch.equal(r.random_blocks(HW), r.random_blocks(HW))
    r.eval()
    assert torch.equal(r.random_blocks(HW), a.random_blocks(HW))    # eval: the seeded pattern
    assert a.random_blocks(HW).shape == (HEADS, 3 * 5, 3)


def test_rfa_features_redraw_and_sigma():
    layer = _layer('rfa', num_features=8)
    assert {'sigma', 'omega'} <= set(layer.state_dict())
    assert isinstance(layer.sigma, torch.nn.Parameter) and layer.features().shape == (HEADS, 8, C // HEADS)
    before = layer.omega.clone()
    layer.train()(_x(), HW)
    assert torch.equal(layer.omega, before)                    # redraw=False keeps the features
    r = _layer('rfa', num_features=8, redraw=True)
    w0 = r.omega.clone()
    r(_x(), HW)
    assert torch.equal(r.omega, w0)                            # eval never redraws
    r.train()(_x(), HW)
    assert not torch.equal(r.omega, w0)
    assert not isinstance(_layer('rfa', learn_sigma=False).sigma, torch.nn.Parameter)


def test_parameter_names_follow_the_papers_code():
    assert {'to_dynamic_projection.weight', 'dual_ln_full.weight', 'dual_ln_dp.bias'} <= \
        set(_layer('longshort').state_dict())
    assert 'dual_ln_full.weight' not in _layer('longshort', dual_ln=False).state_dict()
    assert _layer('longformer', num_global=3).global_tokens.shape == (3, C)
    assert 'global_tokens' not in _layer('longformer', num_global=0).state_dict()


def test_option_errors():
    with pytest.raises(ValueError, match='num_global'):
        build_attention(dict(type='longformer', num_global=-1), C, HEADS)
    with pytest.raises(ValueError, match='window_size'):
        build_attention(dict(type='bigbird', window_size=(3, 0)), C, HEADS)
    with pytest.raises(ValueError, match='num_landmarks'):
        build_attention(dict(type='longshort', num_landmarks=0), C, HEADS)
    with pytest.raises(ValueError, match='kernel'):
        build_attention(dict(type='rfa', kernel='laplace'), C, HEADS)


@pytest.mark.parametrize('name', ['longformer', 'bigbird', 'longshort', 'rfa'])
def test_bf16_autocast_finite(name):
    layer = build_attention(name, C, HEADS).eval()
    x = 3 * torch.randn(2, 24 * 20, C)
    kpm = torch.zeros(2, 24 * 20, dtype=torch.bool)
    kpm[1, 300:] = True
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        y = layer(x, (24, 20), key_padding_mask=kpm)
    assert torch.isfinite(y.float()).all()


@pytest.mark.parametrize('name', ['longformer', 'bigbird', 'longshort', 'rfa'])
def test_inference_mode_then_training(name):
    """Whatever a layer caches during an inference_mode forward (masks, patterns) stays usable in training."""
    layer = build_attention(name, C, HEADS, window_size=3) if name != 'rfa' else build_attention(name, C, HEADS)
    x = torch.randn(2, 5 * 7, C)
    with torch.inference_mode():
        layer.eval()(x, (5, 7))
    layer.train()(x, (5, 7)).sum().backward()
    assert all(p.grad is not None for p in layer.parameters())
