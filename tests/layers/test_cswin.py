"""CSWin stripe attention vs a materialised reference: the full (N x N) softmax with a same-stripe mask and LePE
as an explicit 3x3 neighbour sum restricted to the stripe (float64, odd H x W, padding masks, gradients)."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from linattn_mm.layers import CSWinAttention, build_attention
from linattn_mm.ops.inline import inline_attention_naive

C, HEADS = 16, 4


def _stripe_ids(layer, g, hw):
    """Stripe index of every token of group ``g`` on the symmetrically padded grid, ``(N,)``."""
    h, w = hw
    sh, sw = layer.stripe_shape(g, hw)
    top, left = ((-h) % sh) // 2, ((-w) % sw) // 2
    ii, jj = torch.meshgrid(torch.arange(h), torch.arange(w), indexing='ij')
    return (((ii + top) // sh) * 10_000 + (jj + left) // sw).flatten()


def _neighbour_sum(vmap, kernel, same):
    """sum_d kernel[..., d] * v(p + d) over the 3x3 neighbours inside the map where ``same(p, p + d)``.

    vmap ``(B, C, H, W)``; kernel ``(B|1, C, 3, 3)``; same: function of two ``(H, W)`` index grids -> bool.
    """
    b, c, h, w = vmap.shape
    ii, jj = torch.meshgrid(torch.arange(h), torch.arange(w), indexing='ij')
    out = torch.zeros_like(vmap)
    for dy, dx in itertools.product((-1, 0, 1), repeat=2):
        ni, nj = ii + dy, jj + dx
        ok = (ni >= 0) & (ni < h) & (nj >= 0) & (nj < w)
        ni, nj = ni.clamp(0, h - 1), nj.clamp(0, w - 1)
        ok = ok & same(ii * w + jj, ni * w + nj)
        out = out + kernel[:, :, dy + 1, dx + 1, None, None] * vmap[:, :, ni, nj] * ok
    return out


def naive_cswin(layer, x, hw, kpm=None, kernel_source=None):
    h, w = hw
    b, n, c = x.shape
    q, k, v = F.linear(x, layer.qkv.weight, layer.qkv.bias).chunk(3, -1)
    pad = torch.zeros(b, n, dtype=torch.bool) if kpm is None else kpm
    v = v.masked_fill(pad[..., None], 0.)
    groups = len(layer.attns)
    cg, hg = c // groups, layer.num_heads // groups
    outs = []
    for g, grp in enumerate(layer.attns):
        sl = slice(g * cg, (g + 1) * cg)
        qh, kh, vh = (t[..., sl].reshape(b, n, hg, -1).transpose(1, 2) for t in (q, k, v))
        vmap = v[..., sl].transpose(1, 2).reshape(b, cg, h, w)
        if layer.inner == 'inline':
            o = inline_attention_naive(qh, kh, vh, key_padding_mask=kpm)
            src = (x if kernel_source is None else kernel_source)[..., sl]
            keep = (~pad).double()[..., None]
            mean = (src * keep).sum(1) / keep.sum(1).clamp_min(1)
            dyn = grp.residual(mean[..., None]).reshape(b, cg, 3, 3)
            local = _neighbour_sum(vmap, dyn, lambda p, q_: torch.ones_like(p, dtype=torch.bool))
            sid = torch.zeros(n, dtype=torch.long)
        else:
            sid = _stripe_ids(layer, g, hw)
            allowed = (sid[:, None] == sid[None, :])[None] & ~pad[:, None, :]             # (B, N, N)
            logits = (qh @ kh.transpose(-2, -1)) * qh.shape[-1] ** -0.5
            attn = logits.masked_fill(~allowed[:, None], float('-inf')).softmax(-1).nan_to_num(0.)
            o = attn @ vh
            local = 0.
        o = o.transpose(1, 2).reshape(b, n, cg)
        lepe = _neighbour_sum(vmap, grp.get_v.weight[None, :, 0], lambda p, q_: sid[p] == sid[q_])
        lepe = lepe + grp.get_v.bias[None, :, None, None]
        outs.append(o + (local + lepe).flatten(2).transpose(1, 2))
    return F.linear(torch.cat(outs, -1), layer.proj.weight, layer.proj.bias)


CASES = [((7, 11), dict(split_size=3)), ((9, 13), dict(split_size=2)), ((9, 13), dict(split_size=4)),
         ((5, 6), dict(split_size=20)), ((7, 11), dict(split_size=1)), ((7, 11), dict(split_size=None)),
         ((7, 11), dict(split_size=None, inner='inline'))]


@pytest.mark.parametrize('masked', [False, True])
@pytest.mark.parametrize('hw,opts', CASES, ids=[f'{hw[0]}x{hw[1]}-{o}' for hw, o in CASES])
def test_matches_materialised_stripe_softmax(hw, opts, masked):
    torch.manual_seed(0)
    layer = build_attention(dict(type='cswin', **opts), C, HEADS).double()
    for p in layer.parameters():  # non-trivial LePE and kernel generators
        torch.nn.init.normal_(p, std=0.3)
    n = hw[0] * hw[1]
    x = torch.randn(2, n, C, dtype=torch.float64, requires_grad=True)
    src = torch.randn(2, n, C, dtype=torch.float64) if opts.get('inner') == 'inline' else None
    kpm = None
    if masked:
        kpm = torch.rand(2, n, generator=torch.Generator().manual_seed(1)) < 0.3
        kpm[0] = False
    out = layer(x, hw, key_padding_mask=kpm, kernel_source=src)
    ref = naive_cswin(layer, x, hw, kpm, src)
    valid = torch.ones(2, n, dtype=torch.bool) if kpm is None else ~kpm
    torch.testing.assert_close(out[valid], ref[valid], rtol=1e-10, atol=1e-12)
    g = torch.randn_like(out) * valid[..., None]
    leaves = [x] + list(layer.parameters())
    for a, b_, name in zip(torch.autograd.grad(out, leaves, g), torch.autograd.grad(ref, leaves, g),
                           ['x'] + [nm for nm, _ in layer.named_parameters()]):
        torch.testing.assert_close(a, b_, rtol=1e-9, atol=1e-11, msg=name)


def test_bad_options_name_the_fix():
    with pytest.raises(ValueError, match='even'):
        CSWinAttention(18, 3, split_size=2)
    with pytest.raises(ValueError, match='split_size=None'):
        CSWinAttention(C, 4, split_size=2, inner='inline')
    with pytest.raises(ValueError, match='inner'):
        CSWinAttention(C, 4, inner='taylor')
    layer = CSWinAttention(C, 4)
    with pytest.raises(ValueError, match='kernel_source'):
        layer(torch.randn(1, 12, C), (3, 4), kernel_source=torch.randn(1, 11, C))
