"""linformer_attention (Wang et al. 2020) vs its materialised twin, masks, precision, errors."""
import pytest
import torch

from linattn_mm.ops.linformer import linformer_attention, linformer_attention_naive
from linattn_mm.ops.softmax import softmax_attention
from tests._helpers import assert_match, rand_qkv, random_padding_mask, rel_rms

SHAPES = [  # (B, H, Nq, Nk, D, Dv, Kp)
    (1, 1, 1, 1, 4, 4, 1),
    (2, 3, 7, 7, 8, 8, 3),
    (2, 2, 13, 29, 5, 3, 8),     # cross-attention, Nq != Nk, Dv != D
    (3, 2, 77, 40, 16, 16, 50),  # Kp > Nk is allowed
]


def _proj(shape, seed=0, dtype=torch.float64, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(*shape, generator=g, dtype=torch.float64) / shape[-1] ** 0.5
    return p.to(dtype).requires_grad_(requires_grad)


@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('per_head', [False, True])
@pytest.mark.parametrize('masked', [False, True])
def test_fast_matches_naive(shape, per_head, masked):
    b, h, nq, nk, d, dv, kp = shape
    q, k, v = rand_qkv(b, h, nq, nk, d, dv, seed=nq + nk)
    lead = (h,) if per_head else ()
    e, f = _proj((*lead, kp, nk), seed=1), _proj((*lead, kp, nk), seed=2)
    kpm = random_padding_mask(b, nk, seed=1) if masked else None
    assert_match(linformer_attention, linformer_attention_naive, (q, k, v, e, f), dict(key_padding_mask=kpm))


def test_fast_matches_naive_long():
    q, k, v = rand_qkv(2, 2, 1000, 1000, 8, seed=5)
    kpm = random_padding_mask(2, 1000, seed=2)
    e, f = _proj((64, 1000), seed=1), _proj((2, 64, 1000), seed=2)
    assert_match(linformer_attention, linformer_attention_naive, (q, k, v, e, f), dict(key_padding_mask=kpm))


def test_identity_projection_is_softmax_attention():
    q, k, v = rand_qkv(2, 2, 9, 11, 4, requires_grad=False)
    eye = torch.eye(11, dtype=torch.float64)
    torch.testing.assert_close(linformer_attention(q, k, v, eye, eye), softmax_attention(q, k, v))


@pytest.mark.parametrize('per_head', [False, True])
def test_padding_equals_truncation_and_ignores_garbage(per_head):
    """Definition: padded rows of K and V contribute nothing, i.e. the op on the valid prefix with E[..., :n]."""
    b, h, nq, nk, d, kp = 3, 2, 6, 12, 4, 5
    q, k, v = rand_qkv(b, h, nq, nk, d, requires_grad=False)
    lead = (h,) if per_head else ()
    e, f = _proj((*lead, kp, nk), 1, requires_grad=False), _proj((*lead, kp, nk), 2, requires_grad=False)
    lens = [12, 7, 1]
    kpm = torch.arange(nk)[None] >= torch.tensor(lens)[:, None]
    out = linformer_attention(q, k, v, e, f, key_padding_mask=kpm)
    for i, n in enumerate(lens):
        ref = linformer_attention(q[i:i + 1], k[i:i + 1, :, :n], v[i:i + 1, :, :n], e[..., :n], f[..., :n])
        torch.testing.assert_close(out[i:i + 1], ref)
    k2, v2 = k.clone(), v.clone()
    k2[kpm[:, None, :, None].expand_as(k2)] = 1e30
    v2[kpm[:, None, :, None].expand_as(v2)] = -1e30
    torch.testing.assert_close(linformer_attention(q, k2, v2, e, f, key_padding_mask=kpm), out)


@pytest.mark.parametrize('fn', [linformer_attention, linformer_attention_naive])
def test_all_padded_sample_gives_zeros(fn):
    q, k, v = rand_qkv(2, 2, 5, 6, 4)
    e, f = _proj((3, 6), 1), _proj((3, 6), 2)
    kpm = torch.zeros(2, 6, dtype=torch.bool)
    kpm[1] = True
    out = fn(q, k, v, e, f, key_padding_mask=kpm)
    assert torch.all(out[1] == 0) and out[0].abs().sum() > 0
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v, e, f))


def test_batch_independence():
    q, k, v = rand_qkv(2, 2, 8, 9, 4, requires_grad=False)
    e, f = _proj((2, 4, 9), 1, requires_grad=False), _proj((2, 4, 9), 2, requires_grad=False)
    kpm = random_padding_mask(2, 9, seed=7)
    out = linformer_attention(q, k, v, e, f, key_padding_mask=kpm)
    q2, k2, v2 = q.clone(), k.clone(), v.clone()
    for t in (q2, k2, v2):
        t[1] = t[1] * 7 + 3
    kpm2 = kpm.clone()
    kpm2[1] = ~kpm2[1]
    torch.testing.assert_close(linformer_attention(q2, k2, v2, e, f, key_padding_mask=kpm2)[0], out[0],
                               atol=0, rtol=0)


@pytest.fixture(scope='module')
def long_ref():
    """N = 65,536, D = 32, Kp = 256 inputs and the float64 fast-path reference (checked against naive above)."""
    q, k, v = rand_qkv(1, 1, 65536, 65536, 32, requires_grad=False, seed=11)
    e, f = _proj((256, 65536), 1, requires_grad=False), _proj((256, 65536), 2, requires_grad=False)
    return q, k, v, e, f, linformer_attention(q, k, v, e, f)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_half_precision_long(long_ref, dtype):
    q, k, v, e, f, ref = long_ref
    out = linformer_attention(q.to(dtype), k.to(dtype), v.to(dtype), e.to(dtype), f.to(dtype))
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert rel_rms(ref, out) <= 3e-2


def test_fp32_projection_with_bf16_activations_and_autocast():
    q, k, v = rand_qkv(2, 2, 2048, 2048, 16, requires_grad=False, seed=3)
    kpm = random_padding_mask(2, 2048, seed=3)
    e64, f64 = _proj((2, 64, 2048), 1, requires_grad=False), _proj((2, 64, 2048), 2, requires_grad=False)
    ref = linformer_attention(q, k, v, e64, f64, key_padding_mask=kpm)
    e, f = (torch.nn.Parameter(t.float()) for t in (e64, f64))
    out = linformer_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), e, f, key_padding_mask=kpm)
    assert out.dtype == torch.bfloat16 and rel_rms(ref, out.detach()) <= 3e-2
    out.float().sum().backward()
    assert e.grad.dtype == torch.float32 and torch.isfinite(e.grad).all() and torch.isfinite(f.grad).all()
    qf, kf, vf = (t.float().requires_grad_() for t in (q, k, v))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = linformer_attention(qf, kf, vf, e, f, key_padding_mask=kpm)
    assert torch.isfinite(out).all() and rel_rms(ref, out.detach()) <= 3e-2
    out.float().sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (qf, kf, vf))


def test_errors():
    q, k, v = rand_qkv(1, 2, 5, 6, 4, requires_grad=False)
    e = _proj((3, 6), requires_grad=False)
    with pytest.raises(ValueError, match=r'last dim 7 but there are Nk = 6 keys.*resize E/F'):
        linformer_attention(q, k, v, _proj((3, 7)), e)
    with pytest.raises(ValueError, match=r'\(H, Kp, Nk\) with H = 2'):
        linformer_attention(q, k, v, e, _proj((3, 3, 6)))
    with pytest.raises(ValueError, match='different lengths'):
        linformer_attention(q, k, v, e, _proj((4, 6)))
    with pytest.raises(ValueError, match=r'\(Kp, Nk\) or \(H, Kp, Nk\)'):
        linformer_attention(q, k, v, e[0], e)
    with pytest.raises(ValueError, match='floating point'):
        linformer_attention(q, k, v, e, torch.ones(3, 6, dtype=torch.long))
    with pytest.raises(ValueError, match='do not agree'):
        linformer_attention(q, k, v[:, :, :5], e, e)
