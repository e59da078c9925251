"""taylor_attention (TaylorShift, Nauen et al. ICPR 2024) vs its materialised twin, both paths, masks, precision."""
import pytest
import torch

from linattn_mm.ops.taylor import taylor_attention, taylor_attention_naive, taylor_crossover
from tests._helpers import assert_match, rand_qkv, random_padding_mask, rel_rms

SHAPES = [  # (B, H, Nq, Nk, D, Dv)
    (1, 1, 1, 1, 4, 4),
    (2, 3, 7, 7, 8, 8),
    (2, 2, 13, 29, 5, 3),      # cross-attention, Dv != D; auto -> direct (29 <= n0 = 31)
    (2, 2, 77, 40, 4, 6),      # auto -> efficient (40 > 21)
]


def _temperature(h, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (0.5 + 2 * torch.rand(h, generator=g, dtype=torch.float64)).requires_grad_()


@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('mode', ['direct', 'efficient'])
@pytest.mark.parametrize('output_normalized', [False, True])
@pytest.mark.parametrize('masked', [False, True])
def test_fast_matches_naive(shape, mode, output_normalized, masked):
    b, h, nq, nk, d, dv = shape
    q, k, v = rand_qkv(b, h, nq, nk, d, dv, seed=nq + nk)
    tau = _temperature(h)
    kpm = random_padding_mask(b, nk, seed=1) if masked else None
    assert_match(taylor_attention, taylor_attention_naive, (q, k, v, tau),
                 dict(mode=mode, output_normalized=output_normalized, key_padding_mask=kpm))


@pytest.mark.parametrize('shape', SHAPES)
def test_auto_matches_naive(shape):
    b, h, nq, nk, d, dv = shape
    q, k, v = rand_qkv(b, h, nq, nk, d, dv, seed=nq + nk)
    assert_match(taylor_attention, taylor_attention_naive, (q, k, v, _temperature(h)),
                 dict(mode='auto', key_padding_mask=random_padding_mask(b, nk, seed=1)))


@pytest.mark.parametrize('temperature', [None, 0.7, torch.tensor([1.5])])
def test_scalar_temperature(temperature):
    q, k, v = rand_qkv(2, 2, 9, 11, 4)
    for mode in ('direct', 'efficient'):
        assert_match(taylor_attention, taylor_attention_naive, (q, k, v), dict(temperature=temperature, mode=mode))


@pytest.mark.parametrize('mode', ['direct', 'efficient'])
def test_fast_matches_naive_long(mode):
    q, k, v = rand_qkv(1, 2, 1000, 1000, 8, seed=5)
    kpm = torch.zeros(1, 1000, dtype=torch.bool)
    kpm[0, 611:] = True
    assert_match(taylor_attention, taylor_attention_naive, (q, k, v, _temperature(2)),
                 dict(mode=mode, key_padding_mask=kpm, output_normalized=True))


def test_direct_and_efficient_agree_and_auto_dispatch():
    q, k, v = rand_qkv(2, 2, 30, 30, 4, requires_grad=False)
    tau = _temperature(2).detach()
    direct = taylor_attention(q, k, v, tau, mode='direct')
    efficient = taylor_attention(q, k, v, tau, mode='efficient')
    torch.testing.assert_close(direct, efficient)
    assert taylor_crossover(4) == 21  # 30 keys > 21: auto takes the efficient path
    assert torch.equal(taylor_attention(q, k, v, tau), efficient)
    assert torch.equal(taylor_attention(q, k, v, tau, n0=30), direct)  # n0 overrides; Nk > n0 is strict
    assert torch.equal(taylor_attention(q, k, v, tau, n0=29), efficient)


def test_output_normalized_scale():
    q, k, v = rand_qkv(2, 2, 6, 18, 8, requires_grad=False)
    kpm = torch.zeros(2, 18, dtype=torch.bool)
    kpm[1, 2:] = True   # sample 1 has 2 valid keys
    for mode in ('direct', 'efficient'):
        base = taylor_attention(q, k, v, mode=mode, key_padding_mask=kpm)
        scaled = taylor_attention(q, k, v, mode=mode, key_padding_mask=kpm, output_normalized=True)
        torch.testing.assert_close(scaled[0], base[0] * (18 / 8) ** 0.5)
        torch.testing.assert_close(scaled[1], base[1] * (2 / 8) ** 0.5)


@pytest.mark.parametrize('mode', ['direct', 'efficient'])
def test_padding_equals_truncation_and_ignores_garbage(mode):
    b, h, nq, nk, d = 3, 2, 6, 12, 4
    q, k, v = rand_qkv(b, h, nq, nk, d, requires_grad=False)
    tau = _temperature(h).detach()
    lens = [12, 7, 1]
    kpm = torch.arange(nk)[None] >= torch.tensor(lens)[:, None]
    out = taylor_attention(q, k, v, tau, mode=mode, key_padding_mask=kpm, output_normalized=True)
    for i, n in enumerate(lens):
        ref = taylor_attention(q[i:i + 1], k[i:i + 1, :, :n], v[i:i + 1, :, :n], tau, mode=mode,
                               output_normalized=True)
        torch.testing.assert_close(out[i:i + 1], ref)
    k2, v2 = k.clone(), v.clone()
    k2[kpm[:, None, :, None].expand_as(k2)] = 1e30
    v2[kpm[:, None, :, None].expand_as(v2)] = -1e30
    out2 = taylor_attention(q, k2, v2, tau, mode=mode, key_padding_mask=kpm, output_normalized=True)
    torch.testing.assert_close(out2, out)


@pytest.mark.parametrize('mode', ['direct', 'efficient'])
def test_nan_in_padded_keys_reaches_no_gradient(mode):
    """NaN/inf in padded key slots: finite gradients everywhere, exact zeros in the padded slots."""
    q, k, v = rand_qkv(2, 2, 5, 9, 4, requires_grad=False)
    kpm = torch.zeros(2, 9, dtype=torch.bool)
    kpm[1, 4:] = True
    k[kpm[:, None, :, None].expand_as(k)] = float('nan')
    v[kpm[:, None, :, None].expand_as(v)] = float('inf')
    leaves = [t.requires_grad_() for t in (q, k, v)]
    out = taylor_attention(*leaves, mode=mode, key_padding_mask=kpm)
    grads = torch.autograd.grad(out.square().sum(), leaves)
    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads)
    assert all(torch.all(g[1, :, 4:] == 0) for g in grads[1:])


@pytest.mark.parametrize('mode', ['direct', 'efficient'])
def test_fp16_padding_stays_finite(mode):
    """fp16 with padded keys (zeroed before normalising, where F.normalize's default eps is 0 in fp16):
    finite output and gradients, close to the float64 result."""
    q, k, v = rand_qkv(2, 2, 6, 11, 8, dtype=torch.float16)
    kpm = torch.zeros(2, 11, dtype=torch.bool)
    kpm[1, 5:] = True
    out = taylor_attention(q, k, v, mode=mode, key_padding_mask=kpm)
    grads = torch.autograd.grad(out.float().square().sum(), (q, k, v))
    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads)
    ref = taylor_attention_naive(q.double(), k.double(), v.double(), key_padding_mask=kpm).detach()
    assert rel_rms(ref, out.detach()) < 2e-3


@pytest.mark.parametrize('fn', [taylor_attention, taylor_attention_naive])
@pytest.mark.parametrize('mode', ['direct', 'efficient'])
def test_all_padded_sample_gives_zeros(fn, mode):
    q, k, v = rand_qkv(2, 2, 5, 6, 4)
    tau = _temperature(2)
    kpm = torch.zeros(2, 6, dtype=torch.bool)
    kpm[1] = True
    out = fn(q, k, v, tau, mode=mode, key_padding_mask=kpm, output_normalized=True)
    assert torch.all(out[1] == 0) and out[0].abs().sum() > 0
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v, tau))


@pytest.mark.parametrize('mode', ['direct', 'efficient'])
def test_batch_independence(mode):
    q, k, v = rand_qkv(2, 2, 8, 9, 4, requires_grad=False)
    kpm = random_padding_mask(2, 9, seed=7)
    out = taylor_attention(q, k, v, mode=mode, key_padding_mask=kpm)
    q2, k2, v2 = q.clone(), k.clone(), v.clone()
    for t in (q2, k2, v2):
        t[1] = t[1] * 7 + 3
    kpm2 = kpm.clone()
    kpm2[1] = ~kpm2[1]
    torch.testing.assert_close(taylor_attention(q2, k2, v2, mode=mode, key_padding_mask=kpm2)[0], out[0],
                               atol=0, rtol=0)


@pytest.mark.parametrize('mode', ['direct', 'efficient'])
def test_trains_through_views(mode):
    """q/k/v as views of one qkv projection (as in a layer): backward works and the inputs are not modified."""
    b, n, h, d = 2, 10, 2, 4
    torch.manual_seed(0)
    proj = torch.nn.Linear(h * d, 3 * h * d)
    tau = torch.nn.Parameter(torch.ones(h))
    x = torch.randn(b, n, h * d)
    q, k, v = proj(x).view(b, n, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)
    v_before = v.detach().clone()
    out = taylor_attention(q, k, v, tau, mode=mode, output_normalized=True)
    assert torch.equal(v.detach(), v_before)
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in (*proj.parameters(), tau))
    assert tau.grad.abs().sum() > 0


@pytest.mark.parametrize('mode', ['direct', 'efficient'])
@pytest.mark.parametrize('tau', [200., 1000.])
def test_guard_keeps_fp16_accurate(mode, tau):
    """With a large temperature, f(tau) ~ 2e4..5e5 and 2,048 keys: raw row sums overflow fp16 (the naive formula
    returns zeros there); the direct row guard and the efficient head-wise guard keep the result accurate."""
    q, k, v = rand_qkv(1, 1, 256, 2048, 16, requires_grad=False, seed=2)
    q = k[:, :, :256] + 0.01 * q    # queries close to keys: cosines near 1
    t = torch.tensor([tau])
    ref = taylor_attention(q, k, v, t.double(), mode='direct')
    out = taylor_attention(q.half(), k.half(), v.half(), t, mode=mode)
    assert torch.isfinite(out).all() and rel_rms(ref, out) <= 3e-2


N_REF_ROWS = 8192


@pytest.fixture(scope='module')
def long_ref():
    """N = 65,536, D = 32 inputs and the float64 efficient-path reference (checked against naive above).

    Rows are independent given the keys, so the reference is computed for the first 8,192 queries against all
    65,536 keys (the key-side sums, where N enters, are the full-size ones); the half runs are full-size.
    """
    q, k, v = rand_qkv(1, 1, 65536, 65536, 32, requires_grad=False, seed=11)
    tau = torch.tensor([2.0])
    return q, k, v, tau, taylor_attention(q[:, :, :N_REF_ROWS], k, v, tau.double(), mode='efficient')


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_half_precision_long(long_ref, dtype):
    q, k, v, tau, ref = long_ref
    out = taylor_attention(q.to(dtype), k.to(dtype), v.to(dtype), tau)   # auto -> efficient (65,536 > 1,057)
    assert out.shape == q.shape and out.dtype == dtype and torch.isfinite(out).all()
    assert rel_rms(ref, out[:, :, :N_REF_ROWS]) <= 3e-2


@pytest.mark.parametrize('mode', ['direct', 'efficient'])
def test_autocast_bf16(mode):
    q, k, v = rand_qkv(1, 2, 1024, 1024, 16, requires_grad=False, seed=3)
    kpm = random_padding_mask(1, 1024, seed=3)
    tau = torch.nn.Parameter(torch.tensor([1., 3.]))
    ref = taylor_attention(q, k, v, tau.detach().double(), mode=mode, key_padding_mask=kpm, output_normalized=True)
    qf, kf, vf = (t.float().requires_grad_() for t in (q, k, v))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = taylor_attention(qf, kf, vf, tau, mode=mode, key_padding_mask=kpm, output_normalized=True)
    assert torch.isfinite(out).all() and rel_rms(ref, out.detach()) <= 3e-2
    out.float().sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (qf, kf, vf, tau))


def test_errors():
    q, k, v = rand_qkv(1, 2, 5, 6, 4, requires_grad=False)
    with pytest.raises(ValueError, match='mode must be one of'):
        taylor_attention(q, k, v, mode='fast')
    with pytest.raises(ValueError, match=r'temperature must have shape \(H,\) = \(2,\)'):
        taylor_attention(q, k, v, temperature=torch.ones(3))
    with pytest.raises(ValueError, match='do not agree'):
        taylor_attention(q, k, v[:, :, :5])
    with pytest.raises(ValueError, match='key_padding_mask'):
        taylor_attention(q, k, v, key_padding_mask=torch.zeros(1, 5, dtype=torch.bool))
