"""WindowAttention against a per-token reference written from Swin's definition (float64)."""
import pytest
import torch

from linattn_mm.layers import WindowAttention


def _region(r, length, ws, s):
    """Swin's shifted-window label of a coordinate in the rolled, padded grid."""
    if s == 0:
        return 0
    return 0 if r < length - ws else (1 if r < length - s else 2)


def naive_window(layer, x, hw, kpm=None):
    """Loop over query tokens; keys = valid tokens in the same (rolled) window and region."""
    h, w = hw
    (wh, ww), (sh, sw) = layer.window_size, layer.shift_size
    hp, wp = -(-h // wh) * wh, -(-w // ww) * ww
    b, n, c = x.shape
    nh, d = layer.num_heads, layer.head_dims
    q, k, v = (t.view(b, n, nh, d) for t in layer.project_qkv(x))
    table = layer.relative_position_bias_table
    scale = d ** -0.5
    # rolled coordinates of every original token
    rr = [((i - sh) % hp) for i in range(h)]
    cc = [((j - sw) % wp) for j in range(w)]
    out = torch.zeros(b, n, nh, d, dtype=x.dtype)
    for bi in range(b):
        for i in range(h):
            for j in range(w):
                keys, bias = [], []
                ri, ci = rr[i], cc[j]
                for i2 in range(h):
                    for j2 in range(w):
                        r2, c2 = rr[i2], cc[j2]
                        if kpm is not None and kpm[bi, i2 * w + j2]:
                            continue
                        if r2 // wh != ri // wh or c2 // ww != ci // ww:
                            continue
                        if _region(r2, hp, wh, sh) != _region(ri, hp, wh, sh) or \
                                _region(c2, wp, ww, sw) != _region(ci, wp, ww, sw):
                            continue
                        dr, dc = ri % wh - r2 % wh, ci % ww - c2 % ww
                        keys.append(i2 * w + j2)
                        bias.append(table[(dr + wh - 1) * (2 * ww - 1) + dc + ww - 1])
                if not keys:
                    continue
                idx = torch.tensor(keys)
                qi = q[bi, i * w + j]                          # (nh, d)
                logits = torch.einsum('hd,khd->hk', qi, k[bi, idx]) * scale + torch.stack(bias, 1)
                out[bi, i * w + j] = torch.einsum('hk,khd->hd', logits.softmax(-1), v[bi, idx])
    return layer.proj(out.reshape(b, n, c))


@pytest.mark.parametrize('hw,ws,shift', [((7, 11), 4, 0), ((7, 11), 4, 2), ((5, 6), (3, 4), (1, 2)),
                                         ((3, 5), 4, 2)])
def test_matches_naive(hw, ws, shift):
    torch.manual_seed(0)
    layer = WindowAttention(16, 2, window_size=ws, shift_size=shift).double().eval()
    torch.nn.init.normal_(layer.relative_position_bias_table)
    x = torch.randn(2, hw[0] * hw[1], 16, dtype=torch.float64)
    kpm = torch.zeros(2, hw[0] * hw[1], dtype=torch.bool)
    kpm[1].view(*hw)[hw[0] - 1:, :] = True
    kpm[1].view(*hw)[:, hw[1] - 2:] = True
    with torch.no_grad():
        for m in (None, kpm):
            out = layer(x, hw, key_padding_mask=m)
            ref = naive_window(layer, x, hw, m)
            valid = slice(None) if m is None else ~m
            torch.testing.assert_close(out[valid], ref[valid])


def test_shift_must_be_smaller_than_window():
    with pytest.raises(ValueError, match='shift_size'):
        WindowAttention(16, 2, window_size=4, shift_size=4)


def test_relative_position_index_not_in_state_dict():
    keys = set(WindowAttention(16, 2, window_size=4).state_dict())
    assert keys == {'qkv.weight', 'qkv.bias', 'proj.weight', 'proj.bias', 'relative_position_bias_table'}


def test_shift_is_skipped_when_one_window_holds_the_grid():
    """Swin's rule (and the official InLine-Swin checkpoints' behaviour at 7x7): no shift inside one window."""
    from linattn_mm.layers import build_attention
    torch.manual_seed(0)
    plain = build_attention(dict(type='window', window_size=7), 16, 2).eval()
    shifted = build_attention(dict(type='window', window_size=7, shift_size=3), 16, 2).eval()
    shifted.load_state_dict(plain.state_dict())
    x = torch.randn(2, 5 * 6, 16)
    torch.testing.assert_close(shifted(x, (5, 6)), plain(x, (5, 6)))
    y = torch.randn(1, 9 * 9, 16)
    assert not torch.allclose(shifted(y, (9, 9)), plain(y, (9, 9)))  # larger grids do shift
