"""Every segmentation config of ours: parses, its heads read the backbone's declared channels, and the model
it builds trains one step (tiny input); a Cityscapes config runs sliding-window inference on a full frame."""
import copy
import glob
import os
import time

import pytest
import torch

mmseg = pytest.importorskip('mmseg')
from mmengine.config import Config  # noqa: E402
from mmengine.model import revert_sync_batchnorm  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402

import linattn_mm  # noqa: E402,F401
from linattn_mm.models import backbones  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SEG_CONFIGS = sorted(f for d in ('upernet', 'sem_fpn', 'cityscapes', 'nuclei_seg')
                     for f in glob.glob(os.path.join(ROOT, 'configs', d, '*.py')))


def _declared_channels(bb_cfg):
    cfg = copy.deepcopy(dict(bb_cfg))
    cls = getattr(backbones, cfg.pop('type').split('.')[-1])
    return cls(**cfg).out_channels


def test_there_are_configs_for_each_family_and_seed():
    names = [os.path.basename(f) for f in SEG_CONFIGS]
    for fam in ('linswin', 'linpvt', 'linvit'):
        for attn in ('inline', 'taylorshift', 'linformer'):
            assert any(f'{fam}-' in n and f'-{attn}_' in n for n in names), (fam, attn)
    assert sum('cityscapes' in n for n in names) == 3


@pytest.mark.parametrize('path', SEG_CONFIGS, ids=os.path.basename)
def test_config_builds_and_trains_a_step(path):
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample
    from mmengine.structures import PixelData
    cfg = Config.fromfile(path)
    assert 'linattn_mm' in cfg.custom_imports['imports']
    assert cfg.model.backbone.type.startswith('linattn_mm.')
    channels = _declared_channels(cfg.model.backbone)
    head_in = cfg.model.neck.in_channels if 'neck' in cfg.model else cfg.model.decode_head.in_channels
    assert list(head_in) == channels
    init_default_scope('mmseg')
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.data_preprocessor.size = (64, 64)
    model = revert_sync_batchnorm(MODELS.build(model_cfg))
    model.init_weights()
    model.train()
    h = w = 64
    n_cls = cfg.model.decode_head.num_classes
    samples = []
    for i in range(2):
        s = SegDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w)))
        s.gt_sem_seg = PixelData(data=torch.randint(0, n_cls, (1, h, w)))
        samples.append(s)
    data = model.data_preprocessor(dict(inputs=[torch.randint(0, 255, (3, h, w), dtype=torch.uint8)] * 2,
                                        data_samples=samples), training=True)
    losses = model.loss(data['inputs'], data['data_samples'])
    total = sum(v for k, v in losses.items() if 'loss' in k)
    assert torch.isfinite(total)
    total.backward()


def test_cityscapes_slide_inference_on_a_full_frame():
    """The config's own test mode (slide: 1024x1024 windows, stride 768) on a full 1024x2048 frame. Widths are
    shrunk (same depth layout, attention and window machinery) so it takes seconds on 2 CPU cores; the full
    LinSwin-T timing is a benchmark, not a test."""
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample
    path = [p for p in SEG_CONFIGS if 'cityscapes' in p and '-inline_' in p][0]
    cfg = Config.fromfile(path)
    assert cfg.model.test_cfg.mode == 'slide' and tuple(cfg.model.test_cfg.crop_size) == (1024, 1024)
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.backbone.arch = dict(embed_dims=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1])
    model_cfg.decode_head.update(in_channels=[16, 32, 64, 128], channels=16)
    model_cfg.auxiliary_head.update(in_channels=64, channels=16)
    init_default_scope('mmseg')
    model = revert_sync_batchnorm(MODELS.build(model_cfg)).eval()
    h, w = 1024, 2048
    sample = SegDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w)))
    data = model.data_preprocessor(dict(inputs=[torch.randint(0, 255, (3, h, w), dtype=torch.uint8)],
                                        data_samples=[sample]), training=False)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.predict(data['inputs'], data['data_samples'])
    print(f'slide inference 1024x2048: {time.perf_counter() - t0:.1f} s')
    assert out[0].pred_sem_seg.data.shape == (1, h, w)
    assert out[0].seg_logits.data.shape == (19, h, w)
    assert torch.isfinite(out[0].seg_logits.data).all()
