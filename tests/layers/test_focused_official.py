"""The focused layer follows the official FLatten forward: focusing over all C channels before the head split."""
import torch
import torch.nn.functional as F

from linattn_mm.layers import build_attention


def official_flatten(layer, x, hw):
    """FLatten's forward written from the paper/official code, materialising the weights (float64)."""
    b, n, c = x.shape
    h = layer.num_heads
    q, k, v = layer.qkv(x).chunk(3, -1)
    s = F.softplus(layer.scale)
    q, k = (F.relu(q) + 1e-6) / s, (F.relu(k) + 1e-6) / s
    qn, kn = q.norm(dim=-1, keepdim=True), k.norm(dim=-1, keepdim=True)
    q, k = q ** layer.focusing_factor, k ** layer.focusing_factor
    q = q / q.norm(dim=-1, keepdim=True) * qn
    k = k / k.norm(dim=-1, keepdim=True) * kn
    q, k, v = (t.view(b, n, h, c // h).transpose(1, 2) for t in (q, k, v))
    w = q @ k.transpose(-2, -1)                                        # (B, H, N, N)
    out = (w @ v) / (w.sum(-1, keepdim=True) + 1e-6 * n)               # mean-normalised eps == ours
    vmap = v.transpose(-2, -1).reshape(b * h, c // h, *hw)          # per head: (B*H, D, H, W)
    local = layer.dwc(vmap).reshape(b, c, n).transpose(1, 2)
    out = out.transpose(1, 2).reshape(b, n, c) + local
    return layer.proj(out)


def test_focused_layer_equals_official_formula():
    torch.manual_seed(0)
    layer = build_attention(dict(type='focused', focusing_factor=3), 32, 4).double().eval()
    with torch.no_grad():
        layer.scale.normal_()
    x = torch.randn(2, 7 * 9, 32, dtype=torch.float64)
    torch.testing.assert_close(layer(x, (7, 9)), official_flatten(layer, x, (7, 9)))
