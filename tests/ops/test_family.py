"""The linear-transformer family: elu+1 linear, ReLU linear, focused (FLatten), Performer, Nystromformer.

Every fast op against its materialised naive twin in float64 (outputs and gradients), masks, batch
independence, half precision at N = 65,536, and errors.
"""
import functools

import pytest
import torch

from linattn_mm.ops.focused import focused_linear_attention, focused_linear_attention_naive
from linattn_mm.ops.linear import linear_attention, linear_attention_naive
from linattn_mm.ops.nystrom import nystrom_attention, nystrom_attention_naive
from linattn_mm.ops.nystrom._common import iterative_pinv, landmark_assignment, segment_means
from linattn_mm.ops.performer import (orthogonal_random_features, performer_attention,
                                      performer_attention_naive)
from linattn_mm.ops.relu import relu_linear_attention, relu_linear_attention_naive
from linattn_mm.ops.softmax import softmax_attention
from tests._helpers import assert_match, rand_qkv, random_padding_mask, rel_rms

FEATS = orthogonal_random_features(16, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def _perf(fn):
    @functools.wraps(fn)
    def call(q, k, v, **kw):
        return fn(q, k, v, FEATS.to(q.dtype) if q.shape[-1] == 8 else _feats(q.shape[-1], q.dtype), **kw)
    return call


@functools.lru_cache(maxsize=None)
def _feats_cached(d):
    return orthogonal_random_features(32, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def _feats(d, dtype):
    return _feats_cached(d).to(dtype)


# name -> (fast, naive, kwargs variants, self-attention only)
OPS = {
    'linear': (linear_attention, linear_attention_naive, [{}, {'eps': 1e-3}], False),
    'relu': (relu_linear_attention, relu_linear_attention_naive, [{}], False),
    'focused': (focused_linear_attention, focused_linear_attention_naive,
                [{}, {'focusing_factor': 2.}, {'focusing_factor': 5.}], False),
    'performer': (_perf(performer_attention), _perf(performer_attention_naive), [{}], False),
    'nystrom': (nystrom_attention, nystrom_attention_naive,
                [{'num_landmarks': 4}, {'num_landmarks': 5, 'pinv_iters': 3}, {'num_landmarks': 64}], True),
}
SHAPES = [(1, 1, 1, 1, 8), (2, 2, 7, 7, 8), (1, 2, 77, 77, 8), (2, 1, 33, 20, 16), (1, 1, 1000, 1000, 8)]


def _cases():
    for name, (_, _, variants, self_only) in OPS.items():
        for shape in SHAPES:
            b, h, nq, nk, d = shape
            if self_only and nq != nk:
                continue
            if nk == 1000 and name in ('focused', 'nystrom'):
                continue  # keep the big case to a few ops
            for kw in variants:
                yield pytest.param(name, shape, kw, id=f'{name}-{b}x{h}x{nq}x{nk}x{d}-{kw}')


@pytest.mark.parametrize('name,shape,kw', list(_cases()))
def test_fast_matches_naive_float64(name, shape, kw):
    fast, naive, _, _ = OPS[name]
    b, h, nq, nk, d = shape
    q, k, v = rand_qkv(b, h, nq, nk, d, seed=nq + nk)
    assert_match(fast, naive, (q, k, v), kw, atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize('name', list(OPS))
def test_mask_equals_truncated_sequence(name):
    fast, naive, variants, _ = OPS[name]
    kw = variants[0]
    b, h, n, d = 3, 2, 40, 8
    q, k, v = rand_qkv(b, h, n, n, d, seed=3, requires_grad=False)
    mask = random_padding_mask(b, n, seed=5, min_valid=12)
    garbage_k = k.masked_fill(mask[:, None, :, None], 1e4)
    garbage_v = v.masked_fill(mask[:, None, :, None], -3e4)
    out = fast(q, garbage_k, garbage_v, key_padding_mask=mask, **kw)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, naive(q, k, v, key_padding_mask=mask, **kw), atol=1e-9, rtol=1e-7)
    for i in range(b):
        nv = int((~mask[i]).sum())
        if OPS[name][3]:  # self-attention: queries are truncated too
            ref = fast(q[i:i + 1, :, :nv], k[i:i + 1, :, :nv], v[i:i + 1, :, :nv], **kw)
            torch.testing.assert_close(out[i:i + 1, :, :nv], ref, atol=1e-9, rtol=1e-7)
        else:
            ref = fast(q[i:i + 1], k[i:i + 1, :, :nv], v[i:i + 1, :, :nv], **kw)
            torch.testing.assert_close(out[i:i + 1], ref, atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize('name', list(OPS))
def test_all_padded_sample_gives_zeros_and_finite_grads(name):
    fast, _, variants, _ = OPS[name]
    q, k, v = rand_qkv(2, 2, 70, 70, 8, seed=2)
    mask = torch.zeros(2, 70, dtype=torch.bool)
    mask[1] = True
    out = fast(q, k, v, key_padding_mask=mask, **variants[0])
    assert torch.all(out[1] == 0)
    out.sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()


@pytest.mark.parametrize('name', list(OPS))
def test_batch_independence(name):
    fast, _, variants, _ = OPS[name]
    q, k, v = rand_qkv(2, 2, 70, 70, 8, seed=4, requires_grad=False)
    out = fast(q, k, v, **variants[0])
    k2, v2 = k.clone(), v.clone()
    k2[1] = k2[1] * 7 + 3
    v2[1] = -v2[1]
    out2 = fast(q, k2, v2, **variants[0])
    torch.testing.assert_close(out[0], out2[0], atol=0, rtol=0)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
@pytest.mark.parametrize('name', list(OPS))
def test_half_precision_large_n(name, dtype):
    fast, _, _, _ = OPS[name]
    kw = {'num_landmarks': 64} if name == 'nystrom' else {}
    n, d = 65536, 32
    q, k, v = rand_qkv(1, 1, n, n, d, seed=7, requires_grad=False, dtype=torch.float32)
    f = (lambda *a, **kk: performer_attention(*a, _feats(d, a[0].dtype), **kk)) if name == 'performer' else fast
    ref = f(q.double(), k.double(), v.double(), **kw)
    out = f(q.to(dtype), k.to(dtype), v.to(dtype), **kw)
    assert out.dtype == dtype
    assert torch.isfinite(out).all()
    assert rel_rms(ref, out) <= 3e-2


def test_autocast_bf16_focused_and_relu_finite():
    q, k, v = rand_qkv(1, 2, 4096, 4096, 32, seed=8, requires_grad=False, dtype=torch.float32)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        for fn in (focused_linear_attention, relu_linear_attention):
            out = fn((q * 30).bfloat16(), (k * 30).bfloat16(), v.bfloat16())  # x**3 of 30·N(0,1) overflows fp16
            assert torch.isfinite(out).all()
    out16 = focused_linear_attention((q * 300).half(), (k * 300).half(), v.half())
    assert torch.isfinite(out16).all()


def test_performer_approximates_softmax():
    q, k, v = rand_qkv(1, 1, 64, 64, 8, seed=9, requires_grad=False)
    q, k = q * 0.5, k * 0.5
    ref = softmax_attention(q, k, v)
    errs = []
    for m in (16, 256, 4096):
        feats = orthogonal_random_features(m, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        errs.append(rel_rms(ref, performer_attention(q, k, v, feats)))
    assert errs[-1] < errs[0]
    assert errs[-1] < 0.1  # Monte Carlo estimator: error ~ 1/sqrt(M)


def test_orthogonal_features_are_orthogonal_within_blocks():
    w = orthogonal_random_features(8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    u = w / w.norm(dim=1, keepdim=True)
    torch.testing.assert_close(u @ u.T, torch.eye(8, dtype=torch.float64), atol=1e-10, rtol=0)
    assert orthogonal_random_features(20, 8).shape == (20, 8)


def test_nystrom_is_exact_softmax_for_short_sequences_and_close_for_smooth_ones():
    q, k, v = rand_qkv(2, 2, 30, 30, 8, seed=10, requires_grad=False)
    torch.testing.assert_close(nystrom_attention(q, k, v, num_landmarks=64), softmax_attention(q, k, v))
    # low-rank-ish attention (small logits): the approximation is good with enough landmarks
    q, k, v = rand_qkv(1, 2, 256, 256, 8, seed=11, requires_grad=False)
    err = rel_rms(softmax_attention(q * 0.2, k * 0.2, v), nystrom_attention(q * 0.2, k * 0.2, v, num_landmarks=32))
    assert err < 0.05


@pytest.mark.parametrize('n', [7, 8, 9, 40])
@pytest.mark.parametrize('masked', [False, True])
def test_nystrom_exported_form_matches_eager(monkeypatch, n, masked):
    """The branch-free form an export takes (exact softmax selected in the graph when N <= m) equals eager on
    both sides of the switch; and without padding the unmasked kernels equal the masked ones under an all-valid
    mask (the masks are skipped, not the result changed)."""
    import linattn_mm.ops.nystrom.torch_impl as impl
    q, k, v = rand_qkv(2, 2, n, n, 4, seed=12, requires_grad=False)
    mask = torch.zeros(2, n, dtype=torch.bool)
    if masked:
        mask[1, ::3] = True
    kpm = mask if masked else None
    ref = nystrom_attention(q, k, v, num_landmarks=8, key_padding_mask=kpm)
    if not masked:
        torch.testing.assert_close(ref, nystrom_attention(q, k, v, num_landmarks=8, key_padding_mask=mask))
    monkeypatch.setattr(impl, 'is_exporting', lambda: True)
    out = nystrom_attention(q, k, v, num_landmarks=8, key_padding_mask=kpm)
    valid = ~mask[:, None, :, None]
    torch.testing.assert_close(out * valid, ref * valid)


@pytest.mark.parametrize('n,m', [(64, 64), (65, 64), (77, 64), (128, 64), (1000, 7), (9, 8)])
def test_nystrom_segment_means_equal_the_averaging_matrix(n, m):
    """The fast path's landmarks (one index_add) are the averaging matrix's segment means, values and
    gradients, for lengths that divide into the landmarks and lengths that do not."""
    x = torch.randn(2, 3, n, 5, dtype=torch.float64, requires_grad=True)
    avg, slot = landmark_assignment(torch.ones(2, n, dtype=torch.bool), m, x.dtype)
    assert slot.all()
    ref = avg[:, None].transpose(-2, -1) @ x
    out = segment_means(x, m)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-12)
    g = torch.randn_like(ref)
    torch.testing.assert_close(torch.autograd.grad(out, x, g)[0], torch.autograd.grad(ref, x, g)[0],
                               atol=1e-12, rtol=1e-12)


def test_iterative_pinv_converges():
    a = torch.softmax(torch.randn(3, 16, 16, dtype=torch.float64), -1)
    z = iterative_pinv(a, 20)
    torch.testing.assert_close(a @ z @ a, a, atol=1e-6, rtol=0)


def test_errors_name_the_problem():
    q, k, v = rand_qkv(1, 1, 5, 6, 8, requires_grad=False)
    with pytest.raises(ValueError, match='self-attention'):
        nystrom_attention(q, k, v, num_landmarks=2)
    with pytest.raises(ValueError, match='4-D'):
        linear_attention(q[0], k, v)
    with pytest.raises(ValueError, match='features'):
        performer_attention(q, k, v, torch.randn(4, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match='focusing_factor'):
        focused_linear_attention(q, k, v, focusing_factor=0)
    with pytest.raises(ValueError, match='key_padding_mask'):
        relu_linear_attention(q, k, v, key_padding_mask=torch.zeros(1, 6))
