"""Every detection config of ours parses, its neck reads the backbone's declared channels, and the model it
builds trains one step on a tiny image; the real-data configs fail clearly without their data; CocoMetric
runs on a tiny stand-in in the ``data/coco`` layout."""
import copy
import glob
import json
import os

import numpy as np
import pytest
import torch

mmdet = pytest.importorskip('mmdet')
pytest.importorskip('mmcv.ops')
from mmengine.config import Config  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402

import linattn_mm  # noqa: E402,F401
import linattn_mm.models.detectors  # noqa: E402,F401
from tests.configs.test_seg_configs import _declared_channels  # noqa: E402
from tests.models.test_mm_integration import _det_batch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DET_CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'configs', 'mask_rcnn', '*.py')))
DETR_CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'configs', 'linear_detr', '*.py')))
REAL_CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'configs', 'trees', '*.py')) +
                      glob.glob(os.path.join(ROOT, 'configs', 'nuclei_det', '*.py')))


def _train_step(model_cfg, batch):
    from mmdet.registry import MODELS
    init_default_scope('mmdet')
    model = MODELS.build(copy.deepcopy(model_cfg))
    model.init_weights()
    model.train()
    data = model.data_preprocessor(batch, training=True)
    losses = model.loss(data['inputs'], data['data_samples'])
    total = model.parse_losses(losses)[0]  # mmengine's sum of every 'loss' entry
    assert torch.isfinite(total)
    total.backward()
    return model


def test_mask_rcnn_configs_cover_families_seeds_and_schedules():
    names = [os.path.basename(f) for f in DET_CONFIGS]
    for fam in ('linpvt', 'linswin'):
        for attn in ('inline', 'taylorshift', 'linformer'):
            for sched in ('1x', '3x'):
                assert f'mask-rcnn_{fam}-t-{attn}_fpn_{sched}_coco.py' in names


@pytest.mark.parametrize('path', DET_CONFIGS, ids=os.path.basename)
def test_config_builds_and_trains_a_step(path):
    cfg = Config.fromfile(path)
    assert cfg.train_dataloader.dataset.get('data_root', cfg.get('data_root', '')).rstrip('/') in (
        'data/coco', '') or 'coco' in str(cfg.train_dataloader.dataset)
    assert list(cfg.model.neck.in_channels) == _declared_channels(cfg.model.backbone)
    _train_step(cfg.model, _det_batch())


def test_linear_detr_configs_cover_the_seeds_and_a_stride16_variant():
    names = [os.path.basename(f) for f in DETR_CONFIGS]
    for attn in ('linformer', 'inline', 'taylorshift'):
        assert f'linear-detr_r50_{attn}_8xb2-150e_coco.py' in names
    assert any('-c4_' in n for n in names)


# the stride-16 (C4) variants repeat the R-50 step on 4x the tokens: slow on 2 shared cores
@pytest.mark.parametrize('path', [pytest.param(p, marks=pytest.mark.slow) if '-c4_' in p else p
                                  for p in DETR_CONFIGS], ids=os.path.basename)
def test_linear_detr_config_builds_and_trains_a_step(path):
    cfg = Config.fromfile(path)
    m = cfg.model
    assert m.type == 'linattn_mm.LinearDETR'
    assert cfg.train_dataloader.dataset.data_root.rstrip('/') == 'data/coco'
    attn = os.path.basename(path).split('_')[2]
    for role in (m.encoder.layer_cfg.self_attn_cfg, m.decoder.layer_cfg.self_attn_cfg,
                 m.decoder.layer_cfg.cross_attn_cfg):
        assert role.attn_cfg.type == attn
        if attn != 'linformer':
            assert set(role.attn_cfg) == {'type'}          # _delete_ took the Linformer keys away
    if '-c4_' in path:   # ResNet stage 3 (C4): 1024 channels at stride 16
        assert tuple(m.backbone.out_indices) == (2, ) and list(m.neck.in_channels) == [1024]
    m.backbone.init_cfg = None                             # no torchvision download in tests
    model = _train_step(m, _det_batch(64, 96))
    grid = model.encoder.layers[0].self_attn
    assert grid.attn_type == attn and grid.grid_keys


@pytest.mark.parametrize('path', REAL_CONFIGS, ids=os.path.basename)
def test_real_data_config_builds_and_trains_a_step(path):
    cfg = Config.fromfile(path)
    assert list(cfg.model.neck.in_channels) == _declared_channels(cfg.model.backbone)
    assert cfg.default_hooks.visualization.type == 'DetVisualizationHook'
    metric = cfg.val_evaluator.metric
    assert ('segm' in metric) == ('nuclei' in path)
    batch = _det_batch(64, 96)
    batch['data_samples'][0].gt_instances.labels[:] = 0     # one class ('tree' / 'nucleus')
    _train_step(cfg.model, batch)


@pytest.mark.parametrize('path', REAL_CONFIGS, ids=os.path.basename)
def test_missing_real_data_gives_one_clear_error(tmp_path, path):
    from mmdet.registry import DATASETS
    cfg = Config.fromfile(path)
    ds = copy.deepcopy(cfg.train_dataloader.dataset)
    ds.data_root = str(tmp_path / 'nowhere')
    init_default_scope('mmdet')
    with pytest.raises(FileNotFoundError) as e:
        DATASETS.build(ds)
    msg = str(e.value)
    assert str(tmp_path / 'nowhere') in msg and 'python tools/prepare_data.py' in msg and 'expected' in msg


TREES = os.path.join(ROOT, 'configs', 'trees', 'faster-rcnn_linpvt-xt-inline_fpn_300it_trees.py')


def test_trees_tta_views_map_back_to_the_tile(tmp_path):
    """The trees config's test-time augmentation: 3 scales x 4 flips, each view carrying what DetTTAModel needs
    to map its boxes back (a box predicted where each view shows the crown merges into that one box), and the
    real detector runs through all 12 views."""
    from mmdet.registry import MODELS
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    import cv2
    from mmcv.transforms import Compose
    from mmengine.dataset import pseudo_collate
    cfg = Config.fromfile(TREES)
    h, w, box = 96, 128, (10., 20., 40., 60.)
    path = str(tmp_path / 'tile.png')
    cv2.imwrite(path, np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8))
    init_default_scope('mmdet')
    views = Compose(cfg.tta_pipeline)(dict(img_path=path, img_id=0, instances=[
        dict(bbox=list(box), bbox_label=0, ignore_flag=0)]))
    batch = pseudo_collate([views])                                       # as the test loader collates
    metas = [d.metainfo for d in views['data_samples']]
    assert len(metas) == 12
    assert {(m['img_shape'], m['flip_direction']) for m in metas} == {
        (shape, d) for shape in ((288, 384), (336, 448), (384, 512)) for d in (None, 'horizontal', 'vertical',
                                                                                'diagonal')}

    class Oracle(torch.nn.Module):
        """Predicts the crown where the view shows it (in the resized-back but still flipped frame)."""
        def test_step(self, data):
            out = []
            for ds in data['data_samples']:
                x1, y1, x2, y2 = box
                d = ds.metainfo['flip_direction']
                if d in ('horizontal', 'diagonal'):
                    x1, x2 = w - x2, w - x1
                if d in ('vertical', 'diagonal'):
                    y1, y2 = h - y2, h - y1
                pred = DetDataSample(metainfo=ds.metainfo)
                pred.pred_instances = InstanceData(bboxes=torch.tensor([[x1, y1, x2, y2]]), scores=torch.tensor([.9]),
                                                   labels=torch.tensor([0]))
                out.append(pred)
            return out

    tta = MODELS.build(dict(cfg.tta_model, module=Oracle()))
    merged = tta.test_step(batch)[0].pred_instances
    assert len(merged) == 1 and torch.allclose(merged.bboxes[0], torch.tensor(box))

    real = MODELS.build(dict(cfg.tta_model, module=cfg.model))
    real.module.init_weights()
    real.eval()
    with torch.no_grad():
        pred = real.test_step(batch)[0].pred_instances
    assert len(pred) <= cfg.tta_model.tta_cfg.max_per_img
    if len(pred):
        b = pred.bboxes
        eps = 1e-3  # clipped to each view, then scaled back to the tile in float32
        assert (b[:, :2] >= -eps).all() and (b[:, 2] <= w + eps).all() and (b[:, 3] <= h + eps).all()


def _coco_standin(root, n=2, h=48, w=64):
    """A tiny COCO in the data/coco layout: images + instances json with boxes and polygons."""
    import cv2
    os.makedirs(os.path.join(root, 'val2017'))
    os.makedirs(os.path.join(root, 'annotations'))
    images, anns = [], []
    for i in range(1, n + 1):
        cv2.imwrite(os.path.join(root, 'val2017', f'{i:012d}.jpg'), np.full((h, w, 3), 40 * i, np.uint8))
        images.append(dict(id=i, file_name=f'{i:012d}.jpg', height=h, width=w))
        x, y, bw, bh = 5. * i, 6., 20., 18.
        anns.append(dict(id=i, image_id=i, category_id=1, iscrowd=0, bbox=[x, y, bw, bh], area=bw * bh,
                         segmentation=[[x, y, x + bw, y, x + bw, y + bh, x, y + bh]]))
    json.dump(dict(images=images, annotations=anns, categories=[dict(id=1, name='person')]),
              open(os.path.join(root, 'annotations', 'instances_val2017.json'), 'w'))
    return anns


def test_coco_metric_on_a_tiny_standin(tmp_path):
    """The config's evaluator (CocoMetric, bbox + segm) scores perfect predictions 1.0 on a data/coco stand-in."""
    from mmdet.evaluation import CocoMetric
    from mmdet.datasets import CocoDataset
    root = str(tmp_path / 'data' / 'coco')
    anns = _coco_standin(root)
    cfg = Config.fromfile(DET_CONFIGS[0])
    ev = copy.deepcopy(cfg.val_evaluator)
    assert ev.type == 'CocoMetric' and set(ev.metric) == {'bbox', 'segm'}
    assert ev.ann_file == 'data/coco/annotations/instances_val2017.json'
    metric = CocoMetric(ann_file=os.path.join(root, 'annotations', 'instances_val2017.json'),
                        metric=list(ev.metric))
    metric.dataset_meta = dict(classes=CocoDataset.METAINFO['classes'])
    for a in anns:
        x, y, bw, bh = a['bbox']
        mask = np.zeros((1, 48, 64), bool)
        mask[0, int(y):int(y + bh), int(x):int(x + bw)] = True
        pred = dict(bboxes=torch.tensor([[x, y, x + bw, y + bh]]), scores=torch.tensor([0.9]),
                    labels=torch.tensor([0]), masks=torch.from_numpy(mask))
        metric.process({}, [dict(img_id=a['image_id'], ori_shape=(48, 64), pred_instances=pred)])
    res = metric.evaluate(size=len(anns))
    assert res['coco/bbox_mAP_50'] == pytest.approx(1.0) and res['coco/segm_mAP_50'] == pytest.approx(1.0)
