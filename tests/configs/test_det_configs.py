"""Every detection config of ours parses, its neck reads the backbone's declared channels, and the model it
builds trains one step on a tiny image."""
import copy
import glob
import os

import pytest
import torch

mmdet = pytest.importorskip('mmdet')
from mmengine.config import Config  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402

import linattn_mm  # noqa: E402,F401
from tests.configs.test_seg_configs import _declared_channels  # noqa: E402
from tests.models.test_mm_integration import _det_batch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DET_CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'configs', 'mask_rcnn', '*.py')))


def test_mask_rcnn_configs_cover_families_seeds_and_schedules():
    names = [os.path.basename(f) for f in DET_CONFIGS]
    for fam in ('linpvt', 'linswin'):
        for attn in ('inline', 'taylorshift', 'linformer'):
            for sched in ('1x', '3x'):
                assert f'mask-rcnn_{fam}-t-{attn}_fpn_{sched}_coco.py' in names


@pytest.mark.parametrize('path', DET_CONFIGS, ids=os.path.basename)
def test_config_builds_and_trains_a_step(path):
    from mmdet.registry import MODELS
    cfg = Config.fromfile(path)
    assert cfg.train_dataloader.dataset.get('data_root', cfg.get('data_root', '')).rstrip('/') in (
        'data/coco', '') or 'coco' in str(cfg.train_dataloader.dataset)
    assert list(cfg.model.neck.in_channels) == _declared_channels(cfg.model.backbone)
    init_default_scope('mmdet')
    model = MODELS.build(copy.deepcopy(cfg.model))
    model.init_weights()
    model.train()
    data = model.data_preprocessor(_det_batch(), training=True)
    losses = model.loss(data['inputs'], data['data_samples'])
    total = sum(v.sum() if isinstance(v, torch.Tensor) else sum(v) for k, v in losses.items() if 'loss' in k)
    assert torch.isfinite(total)
    total.backward()
