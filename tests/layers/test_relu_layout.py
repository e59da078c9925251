"""ReLU linear attention layer: the copy-free head layout gives what the concatenate-per-scale layout gave
(float64, outputs and gradients, against the naive op), and its op count is pinned (timm's EfficientViT
LiteMLA, NCHW in and out with a BatchNorm, runs 33 aten ops for the multi-scale case)."""
import pytest
import torch

from linattn_mm.layers.relu import ReLULinearAttention
from linattn_mm.ops._utils import merge_heads, split_heads
from linattn_mm.ops.relu.naive import relu_linear_attention_naive
from linattn_mm.utils.op_count import count_aten_ops
from tests._helpers import random_padding_mask


def reference_forward(layer: ReLULinearAttention, x, hw, kpm):
    """The layer as it was before the layout work: q/k/v split per scale, heads concatenated scale-major."""
    qkv = torch.cat(layer.project_qkv(x), -1)
    groups = [qkv]
    if layer.scales:
        fmap = layer.to_map(qkv, hw, kpm)
        groups += [op(fmap).flatten(2).transpose(1, 2) for op in layer.aggreg]
    q, k, v = (torch.cat([split_heads(g.chunk(3, -1)[i], layer.num_heads) for g in groups], 1) for i in range(3))
    return layer.project_out(merge_heads(relu_linear_attention_naive(q, k, v, key_padding_mask=kpm)))


@pytest.mark.parametrize('padded', [False, True])
@pytest.mark.parametrize('scales,layout', [((), 'qkv'), ((3,), 'qkv'), ((3, 5), 'q_kv')])
def test_layout_matches_reference_float64(scales, layout, padded):
    torch.manual_seed(0)
    hw = (5, 7)
    layer = ReLULinearAttention(16, 2, qkv_layout=layout, scales=scales).double()
    x = torch.randn(3, hw[0] * hw[1], 16, dtype=torch.float64, requires_grad=True)
    kpm = random_padding_mask(3, hw[0] * hw[1], seed=1) if padded else None
    out = layer(x, hw, kpm)
    ref = reference_forward(layer, x, hw, kpm)
    keep = slice(None) if kpm is None else ~kpm
    torch.testing.assert_close(out[keep], ref[keep], atol=1e-12, rtol=1e-10)
    g = torch.randn_like(out)
    if kpm is not None:
        g = g.masked_fill(kpm[..., None], 0.)  # outputs at padded positions are don't-cares
    params = [x] + list(layer.parameters())
    for a, b in zip(torch.autograd.grad(out, params, g), torch.autograd.grad(ref, params, g)):
        torch.testing.assert_close(a, b, atol=1e-11, rtol=1e-9)


# before the layout work: 70 ops with scales=(5,) (a cat of q/k/v per group, a transpose per head split, the
# 1/N divisions and a den == 0 guard that eps > 0 makes dead)
@pytest.mark.parametrize('scales,ceiling', [((5,), 40), ((), 36)])
def test_layer_forward_op_count(scales, ceiling):
    layer = ReLULinearAttention(32, 2, scales=scales).eval()
    with torch.no_grad():
        counts = count_aten_ops(layer, torch.randn(1, 14 * 14, 32), (14, 14))
    assert sum(counts.values()) <= ceiling, f'{sum(counts.values())} ops > {ceiling}: {dict(counts.most_common())}'
    assert counts['clone'] <= 3 and counts['cat'] <= 1, dict(counts)
