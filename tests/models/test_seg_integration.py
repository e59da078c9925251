"""Segmentation data side of our configs: IoUMetric over datasets built from the configs' own dataset
settings on tiny stand-ins in the ADE20K and Cityscapes directory layouts, the nuclei dataset's
missing-data error, and the Runner reverting SyncBN on a single CPU process."""
import copy
import glob
import os

import numpy as np
import pytest
import torch

pytest.importorskip('mmseg')
cv2 = pytest.importorskip('cv2')
from mmengine.config import Config  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402

import linattn_mm  # noqa: E402,F401

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ADE_CFG = os.path.join(ROOT, 'configs', 'upernet', 'upernet_linswin-t-inline_4xb4-160k_ade20k-512x512.py')
CITY_CFG = glob.glob(os.path.join(ROOT, 'configs', 'cityscapes', '*-inline_*.py'))[0]
NUCLEI_CFGS = sorted(glob.glob(os.path.join(ROOT, 'configs', 'nuclei_seg', '*.py')))


def _ade_standin(root, h=24, w=32):
    """ADEChallengeData2016/{images,annotations}/validation: label 0 = 'other' (ignored), 1..150 classes."""
    for sub in ('images', 'annotations'):
        os.makedirs(os.path.join(root, sub, 'validation'), exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        seg = np.full((h, w), 1 + i, np.uint8)
        seg[:, w // 2:] = 10
        seg[0] = 0                                      # unlabelled row -> 255 after reduce_zero_label
        name = f'ADE_val_{i:08d}'
        cv2.imwrite(os.path.join(root, 'images', 'validation', name + '.jpg'),
                    rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        cv2.imwrite(os.path.join(root, 'annotations', 'validation', name + '.png'), seg)


def _cityscapes_standin(root, h=16, w=32):
    """leftImg8bit/val/<city>/*_leftImg8bit.png and gtFine/val/<city>/*_gtFine_labelTrainIds.png."""
    city = 'frankfurt'
    os.makedirs(os.path.join(root, 'leftImg8bit', 'val', city), exist_ok=True)
    os.makedirs(os.path.join(root, 'gtFine', 'val', city), exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        seg = np.zeros((h, w), np.uint8)               # road
        seg[:, w // 2:] = 13                            # car
        seg[0] = 255                                    # ignore
        stem = f'{city}_000000_{i:06d}'
        cv2.imwrite(os.path.join(root, 'leftImg8bit', 'val', city, stem + '_leftImg8bit.png'),
                    rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        cv2.imwrite(os.path.join(root, 'gtFine', 'val', city, stem + '_gtFine_labelTrainIds.png'), seg)


def _iou_on_standin(cfg_path, data_root, corrupt):
    """Build the config's val dataset and evaluator on the stand-in; predict gt (or a corrupted gt)."""
    from mmseg.registry import DATASETS, METRICS
    from mmseg.structures import SegDataSample
    from mmengine.structures import PixelData
    cfg = Config.fromfile(cfg_path)
    init_default_scope('mmseg')
    ds_cfg = copy.deepcopy(cfg.val_dataloader.dataset)
    ds_cfg.data_root = str(data_root)
    ds_cfg.pipeline = [p for p in ds_cfg.pipeline if p['type'] != 'Resize']   # keep stand-ins tiny
    dataset = DATASETS.build(ds_cfg)
    assert len(dataset) == 2
    metric = METRICS.build(cfg.val_evaluator)
    metric.dataset_meta = dataset.metainfo
    n_cls = len(dataset.metainfo['classes'])
    for item in dataset:
        gt = item['data_samples'].gt_sem_seg.data
        pred = gt.clone()
        pred[pred == 255] = 0
        if corrupt:
            pred[..., : pred.shape[-1] // 4] = n_cls - 1   # a class absent from gt
        s = SegDataSample()
        s.set_metainfo(item['data_samples'].metainfo)
        s.gt_sem_seg = PixelData(data=gt)
        s.pred_sem_seg = PixelData(data=pred)
        metric.process([], [s.to_dict()])
    return metric.compute_metrics(metric.results), n_cls


@pytest.mark.parametrize('layout', ['ade', 'cityscapes'])
def test_iou_metric_on_layout_standins(tmp_path, layout):
    if layout == 'ade':
        _ade_standin(tmp_path)
        cfg_path, n_expected = ADE_CFG, 150
    else:
        _cityscapes_standin(tmp_path)
        cfg_path, n_expected = CITY_CFG, 19
    perfect, n_cls = _iou_on_standin(cfg_path, tmp_path, corrupt=False)
    assert n_cls == n_expected
    assert perfect['mIoU'] == pytest.approx(100.0)   # classes absent from gt and pred are NaN, not counted
    worse, _ = _iou_on_standin(cfg_path, tmp_path, corrupt=True)
    assert 0 < worse['mIoU'] < 100.0


@pytest.mark.parametrize('path', NUCLEI_CFGS, ids=os.path.basename)
def test_nuclei_missing_data_is_one_clear_error(tmp_path, path):
    from mmseg.registry import DATASETS
    cfg = Config.fromfile(path)
    assert cfg.val_evaluator.type == 'IoUMetric'
    assert cfg.default_hooks.visualization.type == 'SegVisualizationHook'
    init_default_scope('mmseg')
    import linattn_mm.datasets  # noqa: F401  (what custom_imports does in the Runner)
    ds_cfg = copy.deepcopy(cfg.train_dataloader.dataset)
    ds_cfg.data_root = str(tmp_path / 'nuclei')
    with pytest.raises(FileNotFoundError, match='prepare_data.py'):
        DATASETS.build(ds_cfg)


def test_runner_reverts_syncbn_on_one_cpu_process(tmp_path):
    """Our configs keep mmseg's SyncBN; a non-distributed Runner must hold plain BN."""
    from mmengine.runner import Runner
    cfg = Config.fromfile(NUCLEI_CFGS[0] if NUCLEI_CFGS else ADE_CFG)
    model_cfg = copy.deepcopy(cfg.model)
    assert model_cfg.decode_head.norm_cfg.type == 'SyncBN'
    if not NUCLEI_CFGS:      # keep the build small
        model_cfg.backbone.arch = dict(embed_dims=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1])
    runner = Runner(model=model_cfg, work_dir=str(tmp_path), default_scope='mmseg')
    mods = list(runner.model.modules())
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in mods)
    assert any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in mods)   # _BatchNormXd
    assert torch.isfinite(next(runner.model.parameters())).all()
