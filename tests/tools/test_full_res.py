"""tools/full_res.py and prepare_data's --trees-full on synthetic wheels with an untrained tiny detector."""
import importlib.util
import json
import os

import numpy as np
import pytest
from PIL import Image

from tests.tools.test_prepare_data import pd, wheels  # noqa: F401  (module under test, fixture: synthetic wheels)

ROOT = os.path.join(os.path.dirname(__file__), '..', '..')
CONFIG = os.path.join(ROOT, 'configs', 'trees', 'faster-rcnn_linpvt-xt-inline_fpn_300it_trees.py')
_spec = importlib.util.spec_from_file_location('full_res', os.path.join(ROOT, 'tools', 'full_res.py'))
fr = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fr)


def _load(p):
    with open(p) as f:
        return json.load(f)


@pytest.fixture
def full_data(wheels, tmp_path):  # noqa: F811
    out = tmp_path / 'data'
    pd.main(['--out', str(out), '--wheel-dir', str(wheels), '--only', 'trees', '--trees-full'])
    return out / 'trees' / 'full'


def test_trees_full_images_and_strip(full_data, wheels, capsys):  # noqa: F811
    whole, held = (_load(full_data / f'annotations/instances_{n}.json') for n in ('full', 'full_heldout'))
    assert [i['file_name'] for i in whole['images']] == [f'{s}.png' for s in pd.TREE_FILES]
    assert whole['images'] == held['images']
    for im in whole['images']:
        assert Image.open(full_data / 'images' / im['file_name']).size == (im['width'], im['height'])
        assert im['heldout_x0'] == round(0.7 * im['width'])
    big = whole['images'][0]  # 700 x 600 with boxes (10, 10, 60, 50), (470, 100, 520, 150), (660, 560, 699, 599)
    assert [a['bbox'] for a in whole['annotations'] if a['image_id'] == big['id']] == [
        [10.0, 10.0, 50.0, 40.0], [470.0, 100.0, 50.0, 50.0], [660.0, 560.0, 39.0, 39.0]]
    # the strip starts at x = 490: the middle box keeps 30 of its 50 px (60% >= 30%), the left one is gone
    assert [a['bbox'] for a in held['annotations'] if a['image_id'] == big['id']] == [
        [490.0, 100.0, 30.0, 50.0], [660.0, 560.0, 39.0, 39.0]]
    # the 200 x 180 images: the box at x 470 lies outside them and is not kept
    small = whole['images'][1]
    assert len([a for a in whole['annotations'] if a['image_id'] == small['id']]) == 2
    pd.main(['--out', str(full_data.parent.parent), '--wheel-dir', str(wheels), '--only', 'trees', '--trees-full'])
    assert capsys.readouterr().out.count('skipping') == 2
    with pytest.raises(SystemExit, match='--trees-full needs trees'):
        pd.main(['--out', str(full_data.parent.parent), '--wheel-dir', str(wheels), '--only', 'voc', '--trees-full'])


def test_scores_of_perfect_predictions(full_data):
    """Ground truth as predictions scores 1 on the whole images and, clipped by the same rule, on the strip."""
    whole, held = (_load(full_data / f'annotations/instances_{n}.json') for n in ('full', 'full_heldout'))
    dets_w, dets_h = [], []
    for im in whole['images']:
        b = np.array([a['bbox'] for a in whole['annotations'] if a['image_id'] == im['id']]).reshape(-1, 4)
        b[:, 2:] += b[:, :2]
        s = np.linspace(1, 0.5, len(b))
        dets_w += fr.to_coco(im['id'], b, s)
        c, keep = pd.clip_boxes(b, (im['heldout_x0'], 0, im['width'], im['height']))
        dets_h += fr.to_coco(im['id'], c[keep], s[keep])
    assert fr.coco_scores(whole, dets_w, 100)['AP50'] == pytest.approx(1.0)
    assert fr.coco_scores(held, dets_h, 100)['AP50'] == pytest.approx(1.0)
    # unclipped predictions do not match the clipped strip boxes of the middle tree
    shifted = [dict(d, bbox=[d['bbox'][0] - 40] + d['bbox'][1:]) for d in dets_h]
    assert fr.coco_scores(held, shifted, 100)['AP50'] < 1.0


def test_one_pass_on_whole_images(full_data, tmp_path):
    import torch

    import linattn_mm  # noqa: F401
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    register_all_modules()
    torch.manual_seed(0)
    model = MODELS.build(Config.fromfile(CONFIG).model)
    ckpt = str(tmp_path / 'tiny.pth')
    torch.save(dict(state_dict=model.state_dict(),
                    meta=dict(dataset_meta=dict(classes=('tree',), palette=[(0, 220, 0)]))), ckpt)
    out = tmp_path / 'out'
    s = fr.main([CONFIG, ckpt, '--data', str(full_data), '--out-dir', str(out), '--score-thr', '0.0',
                 '--max-dets', '50', '--proposals', '100'])
    whole = _load(full_data / 'annotations/instances_full.json')
    assert [r['input_hw'] for r in s['images']] == [[im['height'], im['width']] for im in whole['images']]
    for r in s['images']:
        assert r['detections'] <= 50 and 0 <= r['AP50_whole'] <= 1 and 0 <= r['AP50_heldout'] <= 1
        drawn = Image.open(out / (os.path.splitext(r['image'])[0] + '.jpg'))
        assert drawn.size == (r['width'], r['height'])
    assert _load(out / 'full_res.json')['heldout'].keys() == {'AP', 'AP50'}
    assert 'held-out strip' in (out / 'full_res.md').read_text()


def test_missing_data_error(tmp_path):
    with pytest.raises(SystemExit, match='prepare_data.py --only trees --trees-full'):
        fr.main([CONFIG, 'x.pth', '--data', str(tmp_path)])
