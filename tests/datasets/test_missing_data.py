"""A missing dataset stops train/test with one line naming the path, the layout and how to get it."""
import os
import subprocess
import sys

import pytest

from linattn_mm.datasets.layout import check_dataset_cfg

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _ade(root):
    return dict(type='ADE20KDataset', data_root=root,
                data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'))


def test_ade_missing_names_layout_and_download(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        check_dataset_cfg(_ade(str(tmp_path / 'ade')), 'train')
    msg = str(err.value)
    assert 'ade' in msg and 'ADEChallengeData2016' in msg and 'images,annotations' in msg
    assert 'train_dataloader.dataset.data_root' in msg


def test_partial_layout_names_the_first_missing_path(tmp_path):
    (tmp_path / 'images' / 'training').mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match='seg_map_path .*annotations/training'):
        check_dataset_cfg(_ade(str(tmp_path)), 'val')
    (tmp_path / 'annotations' / 'training').mkdir(parents=True)
    check_dataset_cfg(_ade(str(tmp_path)), 'val')  # complete: no error


def test_wrapped_coco_and_our_layouts(tmp_path):
    coco = dict(type='RepeatDataset', times=2, dataset=dict(
        type='CocoDataset', data_root=str(tmp_path) + '/', ann_file='annotations/instances_train2017.json',
        data_prefix=dict(img='train2017/')))
    with pytest.raises(FileNotFoundError, match='cocodataset.org'):
        check_dataset_cfg(coco, 'train')
    ours = dict(type='linattn_mm.NucleiSegDataset', data_root=str(tmp_path / 'nuclei'),
                data_prefix=dict(img_path='images/training'))
    with pytest.raises(FileNotFoundError, match='prepare_data.py --only nuclei'):
        check_dataset_cfg(ours, 'train')


@pytest.mark.slow
def test_train_cli_stops_with_one_line(tmp_path):
    cfg = os.path.join(ROOT, 'configs', 'cityscapes', sorted(os.listdir(os.path.join(ROOT, 'configs', 'cityscapes')))[0])
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'test.py'), cfg, str(tmp_path / 'x.pth'),
                        '--cfg-options', f'test_dataloader.dataset.data_root={tmp_path}/cs'],
                       capture_output=True, text=True, cwd=str(tmp_path), timeout=300)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith('error: CityscapesDataset (test)') and 'cityscapes-dataset.com' in last
    assert 'Traceback' not in r.stderr
