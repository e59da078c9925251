"""tools/mem_scaling.py: sizes, the growth exponent, the image input and the backbone it measures (no timing)."""
import importlib.util
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = os.path.join(os.path.dirname(__file__), '..', '..')
_spec = importlib.util.spec_from_file_location('mem_scaling', os.path.join(ROOT, 'tools', 'mem_scaling.py'))
ms = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ms)


def test_scaled_sizes_multiply_the_pixels():
    assert ms.scaled_size((256, 256), 1) == (256, 256)
    assert ms.scaled_size((256, 256), 4) == (512, 512)
    h, w = ms.scaled_size((2472, 2299), 2)
    assert abs(h * w / (2472 * 2299) - 2) < 2e-3


def test_growth_exponent_tells_linear_from_quadratic():
    rows = [dict(attn='a', pixels=p, peak_mb=3 * p) for p in (1e4, 2e4, 4e4)]
    rows += [dict(attn='b', pixels=p, peak_mb=p * p / 1e6) for p in (1e4, 2e4, 4e4)]
    rows += [dict(attn='c', pixels=1e4, failed='out of memory')]
    assert ms.growth_exponent(rows, 'a') == pytest.approx(1.0)
    assert ms.growth_exponent(rows, 'b') == pytest.approx(2.0)
    assert math.isnan(ms.growth_exponent(rows, 'c'))
    rows = [dict(r, height=int(r['pixels'] ** .5), width=int(r['pixels'] ** .5), seconds=0.1) for r in rows]
    md = ms.table(rows, [1, 2, 4])
    assert '| a |' in md and '1.00 |' in md and '2.00 |' in md and 'failed' in md


def test_image_is_cropped_then_resized(tmp_path):
    img = np.zeros((60, 80, 3), np.uint8)
    img[:, 40:] = 255
    p = tmp_path / 'x.png'
    Image.fromarray(img).save(p)
    x1 = ms.load_image(str(p), (32, 32), (32, 32))
    x4 = ms.load_image(str(p), (32, 32), (64, 64))
    assert x1.shape == (1, 3, 32, 32) and x4.shape == (1, 3, 64, 64)
    assert x1[0, 0, 0, 0] < 0 < x1[0, 0, 0, -1]  # the centre crop holds both halves, normalised
    assert ms.load_image(str(p), (100, 100), (60, 80)).shape == (1, 3, 60, 80)  # no larger than the image


def test_backbone_is_the_configs_with_the_attention_swapped():
    for attn, kind in (('inline', 'inline'), ('softmax_math', 'softmax'), ('linformer', 'linformer')):
        m = ms.build_backbone(os.path.join(ROOT, ms.DEFAULT_CONFIG), attn)
        assert not m.training and m.stage_channels == [32, 64, 160, 256]
        assert type(m.block1[0].attn).__name__.lower().startswith(kind[:5])
    with torch.no_grad():
        outs = m(torch.randn(1, 3, 67, 45))
    assert [tuple(o.shape[-2:]) for o in outs] == [(17, 12), (9, 6), (5, 3), (3, 2)]


def test_missing_image_error(tmp_path):
    with pytest.raises(SystemExit, match='--trees-full'):
        ms.main(['--image', str(tmp_path / 'none.png')])
