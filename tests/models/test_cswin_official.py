"""An InLine-CSwin state dict with the official key names and shapes (LeapLabTHU/InLine,
``models/inline_cswin.py``) loads into LinCSwin through ``tools/convert_weights.py`` and ``init_cfg``, and the
features equal the official forward formula, written out here on the raw tensors (float64)."""
import os
import sys

import pytest
import torch
import torch.nn.functional as F

from linattn_mm.models.backbones import LinCSwin

ARCH = dict(embed_dims=16, depths=[1, 2, 1, 1], num_heads=[2, 2, 4, 4])
SPLIT = [1, 2, 7]       # official split_size of stages 1-3 ('S' blocks); the last stage is global


def _branches(letter, stage):
    return 1 if letter == 'I' or stage == 3 else 2   # 'I': la_split = whole map; last stage: idx=-1


def official_state_dict(letters, arch=ARCH, num_classes=10, seed=0):
    """Keys and shapes of the official CSWinTransformer(attn_type=letters), random float64 values."""
    g = torch.Generator().manual_seed(seed)
    sd = {}

    def lin(name, out, inp, *k):
        w = torch.randn(out, inp, *k, generator=g, dtype=torch.float64)
        sd[name + '.weight'] = w / w[0].numel() ** 0.5
        sd[name + '.bias'] = 0.1 * torch.randn(out, generator=g, dtype=torch.float64)

    def norm(name, dim):
        sd[name + '.weight'] = 1 + 0.1 * torch.randn(dim, generator=g, dtype=torch.float64)
        sd[name + '.bias'] = 0.1 * torch.randn(dim, generator=g, dtype=torch.float64)

    c = arch['embed_dims']
    lin('stage1_conv_embed.0', c, 3, 7, 7)
    norm('stage1_conv_embed.2', c)
    for s, (depth, heads) in enumerate(zip(arch['depths'], arch['num_heads'])):
        dim = c * 2 ** s
        if s:
            lin(f'merge{s}.conv', dim, dim // 2, 3, 3)
            norm(f'merge{s}.norm', dim)
        for j in range(depth):
            p = f'stage{s + 1}.{j}.'
            norm(p + 'norm1', dim)
            lin(p + 'qkv', 3 * dim, dim)
            lin(p + 'proj', dim, dim)
            nb = _branches(letters[s], s)
            d, h = dim // nb, heads // nb
            for b in range(nb):
                lin(p + f'attns.{b}.get_v', d, 1, 3, 3)
                if letters[s] == 'I':
                    lin(p + f'attns.{b}.residual.0', d, d // h, 1)
                    lin(p + f'attns.{b}.residual.2', 9 * d, d // h, 1)
            norm(p + 'norm2', dim)
            lin(p + 'mlp.fc1', 4 * dim, dim)
            lin(p + 'mlp.fc2', dim, 4 * dim)
    norm('norm', c * 8)
    lin('head', num_classes, c * 8)
    return {k: v.float().double() for k, v in sd.items()}  # float32 values: the backbone is built in float32


def _ln(x, sd, name):
    return F.layer_norm(x, x.shape[-1:], sd[name + '.weight'], sd[name + '.bias'])


def _lepe_and_local(sd, p, v, x_mean, heads, letter):
    """v: one window (B', c, h, w). LePE (+ for 'I' the dynamic 3x3 kernels from x_mean (B', c))."""
    b, c = v.shape[:2]
    out = F.conv2d(v, sd[p + 'get_v.weight'], sd[p + 'get_v.bias'], padding=1, groups=c)
    if letter == 'I':
        w = F.conv1d(x_mean[..., None], sd[p + 'residual.0.weight'], sd[p + 'residual.0.bias'], groups=heads)
        w = F.conv1d(F.gelu(w), sd[p + 'residual.2.weight'], sd[p + 'residual.2.bias'], groups=heads)
        out = out + F.conv2d(v.reshape(1, b * c, *v.shape[2:]), w.reshape(b * c, 1, 3, 3), padding=1,
                             groups=b * c).reshape(v.shape)
    return out


def _window_attention(sd, p, q, k, v, x_mean, heads, letter):
    """Official LePEAttention / InLineAttention on one window; q, k, v (B, c, h, w) -> (B, c, h, w)."""
    b, c, h, w = q.shape
    n, hd = h * w, c // heads
    qh, kh, vh = (t.reshape(b, heads, hd, n).transpose(-2, -1) for t in (q, k, v))
    scale = hd ** -0.5
    if letter == 'I':
        kv = (kh.transpose(-2, -1) * (scale / n) ** 0.5) @ (vh * (scale / n) ** 0.5)
        o = qh @ kv + (1 - qh @ kh.mean(2, keepdim=True).transpose(-2, -1) * scale) * vh.mean(2, keepdim=True)
    else:
        o = ((qh * scale) @ kh.transpose(-2, -1)).softmax(-1) @ vh
    return o.transpose(-2, -1).reshape(b, c, h, w) + _lepe_and_local(sd, p, v, x_mean, heads, letter)


def official_forward(sd, letters, x, arch=ARCH):
    """The official forward (stem, blocks, merges; features before pooling) on the raw tensors.

    Returns the four stage maps, normalised with the final ``norm`` for the last one and with a unit LayerNorm
    (what an un-trained ``norm{i}`` of ours is) for the others."""
    y = F.conv2d(x, sd['stage1_conv_embed.0.weight'], sd['stage1_conv_embed.0.bias'], stride=4, padding=2)
    hh, ww = y.shape[2:]
    t = _ln(y.flatten(2).transpose(1, 2), sd, 'stage1_conv_embed.2')
    outs = []
    for s, (depth, heads) in enumerate(zip(arch['depths'], arch['num_heads'])):
        if s:
            y = F.conv2d(t.transpose(1, 2).reshape(t.shape[0], -1, hh, ww), sd[f'merge{s}.conv.weight'],
                         sd[f'merge{s}.conv.bias'], stride=2, padding=1)
            hh, ww = y.shape[2:]
            t = _ln(y.flatten(2).transpose(1, 2), sd, f'merge{s}.norm')
        for j in range(depth):
            p = f'stage{s + 1}.{j}.'
            b, n, c = t.shape
            qkv = F.linear(_ln(t, sd, p + 'norm1'), sd[p + 'qkv.weight'], sd[p + 'qkv.bias'])
            q, k, v = (m.transpose(1, 2).reshape(b, c, hh, ww) for m in qkv.chunk(3, -1))
            nb = _branches(letters[s], s)
            d = c // nb
            x_mean = t.mean(1)                          # the block input, before norm1
            res = []
            for br in range(nb):
                cs = slice(br * d, (br + 1) * d)
                qb, kb, vb = q[:, cs], k[:, cs], v[:, cs]
                o = torch.zeros_like(qb)
                sw = ww if nb == 1 or br == 1 else SPLIT[s]   # branch 0: vertical stripes, 1: horizontal
                sh = hh if nb == 1 or br == 0 else SPLIT[s]
                for i0 in range(0, hh, sh):
                    for j0 in range(0, ww, sw):
                        win = (slice(None), slice(None), slice(i0, i0 + sh), slice(j0, j0 + sw))
                        o[win] = _window_attention(sd, p + f'attns.{br}.', qb[win], kb[win], vb[win],
                                                   x_mean[:, cs], heads // nb, letters[s])
                res.append(o)
            att = torch.cat(res, 1).flatten(2).transpose(1, 2)
            t = t + F.linear(att, sd[p + 'proj.weight'], sd[p + 'proj.bias'])
            hid = F.gelu(F.linear(_ln(t, sd, p + 'norm2'), sd[p + 'mlp.fc1.weight'], sd[p + 'mlp.fc1.bias']))
            t = t + F.linear(hid, sd[p + 'mlp.fc2.weight'], sd[p + 'mlp.fc2.bias'])
        o = _ln(t, sd, 'norm') if s == 3 else F.layer_norm(t, t.shape[-1:])
        outs.append(o.transpose(1, 2).reshape(b, -1, hh, ww))
    return outs


def _convert_weights():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.path.insert(0, os.path.join(root, 'tools'))
    try:
        import convert_weights
    finally:
        sys.path.pop(0)
    return convert_weights


@pytest.mark.parametrize('letters', ['IISS', 'SSSS'])
def test_official_checkpoint_reproduces_official_features(tmp_path, letters):
    sd = official_state_dict(letters)
    src = tmp_path / 'inline_cswin.pth'
    torch.save({'model': sd, 'epoch': 300}, src)
    if letters == 'IISS':  # the tool builds the released letters
        # every backbone tensor filled but the norms of the extra returned maps; only the head dropped
        state, _, rep = _convert_weights().convert(str(src), 'inline_cswin', ARCH)
        assert rep['missing'] == [f'norm{i}.{w}' for i in range(3) for w in ('bias', 'weight')]
        assert rep['unexpected'] == [] and len(state) == len(sd) - 2   # all official tensors but the head
    else:
        state = LinCSwin(ARCH, attn_type=letters).convert_official(sd)
    dst = tmp_path / 'ours.pth'
    torch.save({'state_dict': state}, dst)
    # init_cfg with only the last map returned: every tensor of the backbone comes from the checkpoint
    last = LinCSwin(ARCH, attn_type=letters, out_indices=(3,), init_cfg=dict(type='Pretrained', checkpoint=str(dst)))
    conv = last.convert_official(sd)
    assert set(last.state_dict()) <= set(conv)
    for key, val in last.state_dict().items():
        assert torch.equal(val.double(), conv[key]), key
    # the official file itself through init_cfg; features vs the official formula, square and non-square
    model = LinCSwin(ARCH, attn_type=letters, init_cfg=dict(type='Pretrained', checkpoint=str(src))).double().eval()
    for hw in ((224, 224), (112, 224)):
        x = torch.randn(2, 3, *hw, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            ours = model(x)
        ref = official_forward(sd, letters, x)
        for i, (a, r) in enumerate(zip(ours, ref)):
            assert a.shape == r.shape
            rel = float((a - r).norm() / r.norm())
            assert rel < 1e-6, (hw, i, rel)
