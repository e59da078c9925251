"""softmax_attention (SDPA) vs its materialised twin, in float64, outputs and gradients."""
import pytest
import torch

from linattn_mm.ops.softmax import softmax_attention, softmax_attention_naive
from tests._helpers import assert_match, rand_qkv, random_padding_mask

SHAPES = [  # (B, H, Nq, Nk, D, Dv)
    (1, 1, 1, 1, 4, 4),
    (2, 3, 7, 7, 8, 8),
    (2, 2, 13, 29, 5, 3),
    (3, 4, 33, 17, 16, 16),
]


@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('masked', [False, True])
@pytest.mark.parametrize('scale', [None, 0.3])
def test_fast_matches_naive(shape, masked, scale):
    b, h, nq, nk, d, dv = shape
    q, k, v = rand_qkv(b, h, nq, nk, d, dv)
    kpm = random_padding_mask(b, nk, seed=1) if masked else None
    assert_match(softmax_attention, softmax_attention_naive, (q, k, v),
                 dict(key_padding_mask=kpm, scale=scale))


def test_attn_masks_bool_and_float():
    b, h, nq, nk, d = 2, 2, 9, 11, 4
    q, k, v = rand_qkv(b, h, nq, nk, d)
    g = torch.Generator().manual_seed(3)
    bool_mask = torch.rand(nq, nk, generator=g) > 0.6          # True = masked out
    bias = torch.randn(h, nq, nk, generator=g, dtype=torch.float64)
    inf_bias = bias.masked_fill(bool_mask, float('-inf'))
    kpm = random_padding_mask(b, nk, seed=2)
    for am in (bool_mask, bias, inf_bias):
        assert_match(softmax_attention, softmax_attention_naive, (q, k, v),
                     dict(key_padding_mask=kpm, attn_mask=am))
    a = softmax_attention(q, k, v, attn_mask=inf_bias)
    # ... and a float -inf mask equals bias + the equivalent bool mask
    b_ = softmax_attention_naive(q, k, v, attn_mask=bias.masked_fill(bool_mask, -1e300))
    torch.testing.assert_close(a, b_)


def test_padding_is_exact():
    """Padded keys have no influence: same result as dropping them, garbage included."""
    q, k, v = rand_qkv(2, 2, 6, 10, 4, requires_grad=False)
    kpm = torch.zeros(2, 10, dtype=torch.bool)
    kpm[1, 7:] = True
    out = softmax_attention(q, k, v, key_padding_mask=kpm)
    k2, v2 = k.clone(), v.clone()
    k2[1, :, 7:] = 1e3
    v2[1, :, 7:] = -1e3
    torch.testing.assert_close(softmax_attention(q, k2, v2, key_padding_mask=kpm), out)
    ref = softmax_attention(q[1:], k[1:, :, :7], v[1:, :, :7])
    torch.testing.assert_close(out[1:], ref)


@pytest.mark.parametrize('fn', [softmax_attention, softmax_attention_naive])
def test_all_padded_sample_gives_zeros(fn):
    q, k, v = rand_qkv(2, 2, 5, 6, 4)
    kpm = torch.zeros(2, 6, dtype=torch.bool)
    kpm[0] = True
    out = fn(q, k, v, key_padding_mask=kpm)
    assert torch.isfinite(out).all()
    assert torch.all(out[0] == 0)
    out.sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    # a fully masked query row (bool attn_mask) is zero as well
    am = torch.zeros(5, 6, dtype=torch.bool)
    am[2] = True
    out = fn(q.detach(), k.detach(), v.detach(), attn_mask=am)
    assert torch.all(out[:, :, 2] == 0) and torch.isfinite(out).all()


def test_float32_close_to_float64():
    q, k, v = rand_qkv(2, 4, 50, 70, 32, requires_grad=False)
    ref = softmax_attention_naive(q, k, v)
    out = softmax_attention(q.float(), k.float(), v.float())
    assert (out.double() - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt() < 1e-5


def test_bad_shapes_raise():
    q, k, v = rand_qkv(1, 2, 3, 4, 5, requires_grad=False)
    with pytest.raises(ValueError, match='key_padding_mask'):
        softmax_attention(q, k, v, key_padding_mask=torch.zeros(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError):
        softmax_attention(q[0], k, v)
