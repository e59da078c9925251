"""inline_attention (InLine, Han et al. NeurIPS 2024) vs its materialised twin, masks, precision, errors."""
import pytest
import torch

from linattn_mm.ops.inline import INLINE_KERNELS, inline_attention, inline_attention_naive
from tests._helpers import assert_match, rand_qkv, random_padding_mask, rel_rms

KERNELS = sorted(INLINE_KERNELS)
SHAPES = [  # (B, H, Nq, Nk, D, Dv)
    (1, 1, 1, 1, 4, 4),
    (2, 3, 7, 7, 8, 8),
    (2, 2, 13, 29, 5, 3),      # cross-attention, Nq != Nk, Dv != D
    (3, 2, 77, 40, 7, 9),
]


@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('kernel', KERNELS)
@pytest.mark.parametrize('masked', [False, True])
def test_fast_matches_naive(shape, kernel, masked):
    b, h, nq, nk, d, dv = shape
    q, k, v = rand_qkv(b, h, nq, nk, d, dv, seed=nq + nk)
    kpm = random_padding_mask(b, nk, seed=1) if masked else None
    assert_match(inline_attention, inline_attention_naive, (q, k, v), dict(key_padding_mask=kpm, kernel=kernel))


@pytest.mark.parametrize('masked', [False, True])
def test_fast_matches_naive_long(masked):
    q, k, v = rand_qkv(2, 1, 1000, 1000, 8, seed=5)
    kpm = random_padding_mask(2, 1000, seed=2) if masked else None
    assert_match(inline_attention, inline_attention_naive, (q, k, v), dict(key_padding_mask=kpm))


@pytest.mark.parametrize('fn', [inline_attention, inline_attention_naive])
@pytest.mark.parametrize('kernel', KERNELS)
def test_weights_sum_to_one(fn, kernel):
    """InLine's defining property: every row of weights sums to 1, so constant values pass through."""
    q, k, _ = rand_qkv(2, 2, 9, 11, 4, requires_grad=False)
    v = torch.full((2, 2, 11, 3), 2.5, dtype=torch.float64)
    kpm = random_padding_mask(2, 11, seed=4)
    torch.testing.assert_close(fn(q, k, v, key_padding_mask=kpm, kernel=kernel), torch.full((2, 2, 9, 3), 2.5,
                                                                                          dtype=torch.float64))


def test_matches_official_form():
    """Unmasked identity kernel equals the official expression q KV*s/N + (1 - s q.mean(K)) mean(V)."""
    q, k, v = rand_qkv(2, 3, 10, 10, 8, requires_grad=False)
    s, n = 8 ** -0.5, 10
    kv = (k.transpose(-2, -1) * (s / n) ** 0.5) @ (v * (s / n) ** 0.5)
    ref = q @ kv + (1 - q @ k.mean(2, keepdim=True).transpose(-2, -1) * s) * v.mean(2, keepdim=True)
    torch.testing.assert_close(inline_attention(q, k, v), ref)


@pytest.mark.parametrize('kernel', KERNELS)
def test_padding_equals_truncation_and_ignores_garbage(kernel):
    b, h, nq, nk, d = 3, 2, 6, 12, 4
    q, k, v = rand_qkv(b, h, nq, nk, d, requires_grad=False)
    lens = [12, 7, 1]
    kpm = torch.arange(nk)[None] >= torch.tensor(lens)[:, None]
    out = inline_attention(q, k, v, key_padding_mask=kpm, kernel=kernel)
    for i, n in enumerate(lens):
        ref = inline_attention(q[i:i + 1], k[i:i + 1, :, :n], v[i:i + 1, :, :n], kernel=kernel)
        torch.testing.assert_close(out[i:i + 1], ref)
    k2, v2 = k.clone(), v.clone()
    k2[kpm[:, None, :, None].expand_as(k2)] = 1e30
    v2[kpm[:, None, :, None].expand_as(v2)] = -1e30
    torch.testing.assert_close(inline_attention(q, k2, v2, key_padding_mask=kpm, kernel=kernel), out)


@pytest.mark.parametrize('fn', [inline_attention, inline_attention_naive])
@pytest.mark.parametrize('kernel', ['identity', 'exp'])
def test_all_padded_sample_gives_zeros(fn, kernel):
    q, k, v = rand_qkv(2, 2, 5, 6, 4)
    kpm = torch.zeros(2, 6, dtype=torch.bool)
    kpm[1] = True
    out = fn(q, k, v, key_padding_mask=kpm, kernel=kernel)
    assert torch.all(out[1] == 0) and out[0].abs().sum() > 0
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def test_batch_independence():
    q, k, v = rand_qkv(2, 2, 8, 9, 4, requires_grad=False)
    kpm = random_padding_mask(2, 9, seed=7)
    out = inline_attention(q, k, v, key_padding_mask=kpm)
    q2, k2, v2 = q.clone(), k.clone(), v.clone()
    for t in (q2, k2, v2):
        t[1] = t[1] * 7 + 3
    kpm2 = kpm.clone()
    kpm2[1] = ~kpm2[1]
    torch.testing.assert_close(inline_attention(q2, k2, v2, key_padding_mask=kpm2)[0], out[0], atol=0, rtol=0)


@pytest.fixture(scope='module')
def long_qkv():
    """N = 65,536, D = 32 inputs with their float64 fast-path references (checked against naive above)."""
    q, k, v = rand_qkv(1, 2, 65536, 65536, 32, requires_grad=False, seed=11)
    refs = {kern: inline_attention(q, k, v, kernel=kern) for kern in ('identity', 'exp')}
    return q, k, v, refs


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
@pytest.mark.parametrize('kernel', ['identity', 'exp'])
def test_half_precision_long(long_qkv, dtype, kernel):
    q, k, v, refs = long_qkv
    out = inline_attention(q.to(dtype), k.to(dtype), v.to(dtype), kernel=kernel)
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert rel_rms(refs[kernel], out) <= 3e-2


def test_autocast_bf16():
    q, k, v = rand_qkv(2, 2, 4096, 4096, 32, requires_grad=False, seed=3)
    kpm = random_padding_mask(2, 4096, seed=3)
    ref = inline_attention(q, k, v, key_padding_mask=kpm)
    qf, kf, vf = (t.float().requires_grad_() for t in (q, k, v))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = inline_attention(qf, kf, vf, key_padding_mask=kpm)
    assert torch.isfinite(out).all() and rel_rms(ref, out.detach()) <= 3e-2
    out.float().sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (qf, kf, vf))


def test_errors():
    q, k, v = rand_qkv(1, 2, 5, 6, 4, requires_grad=False)
    with pytest.raises(ValueError, match="valid kernels are \\['exp', 'identity', 'leakyrelu', 'relu'\\]"):
        inline_attention(q, k, v, kernel='elu')
    with pytest.raises(ValueError, match='4-D'):
        inline_attention(q[0], k, v)
    with pytest.raises(ValueError, match='do not agree'):
        inline_attention(q, k, v[:, :, :5])
    with pytest.raises(ValueError, match='head dims'):
        inline_attention(q[..., :3], k, v)
    with pytest.raises(ValueError, match='key_padding_mask'):
        inline_attention(q, k, v, key_padding_mask=torch.zeros(1, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match='bool'):
        inline_attention(q, k, v, key_padding_mask=torch.zeros(1, 6))


def test_backend_argument_dispatches_and_validates():
    from linattn_mm.ops.backend import triton_interpret
    q, k, v = rand_qkv(1, 2, 5, 6, 8, dtype=torch.float32, requires_grad=False)
    ref = inline_attention(q, k, v, backend='torch')
    torch.testing.assert_close(inline_attention(q, k, v, backend='auto'), ref)  # CPU: auto = torch
    with pytest.raises(ValueError, match='auto'):
        inline_attention(q, k, v, backend='fastest')
    if not triton_interpret():
        with pytest.raises(ValueError):
            inline_attention(q, k, v, backend='triton')  # CPU tensors, no interpreter: one clear error
