"""No backbone parameter without a gradient in stock mmdet configs (mmengine's DDP stops on one: its
find_unused_parameters is off by default): one train step of RetinaNet, FCOS and DINO with C3-C5 backbones
(``out_indices=(1, 2, 3)``, as mmdet's own Swin / PVT versions of them) and of Cascade Mask R-CNN and Mask2Former
with all four levels, for every backbone family."""
import copy

import pytest

mmdet = pytest.importorskip('mmdet')
from mmengine.registry import init_default_scope  # noqa: E402

from linattn_mm.models.backbones import LinCSwin, LinPVT, LinSwin, LinViT  # noqa: E402
from tests.models.test_mm_integration import SMALL, det_train_step, stock  # noqa: E402

CLASSES = {'LinPVT': LinPVT, 'LinSwin': LinSwin, 'LinViT': LinViT, 'LinCSwin': LinCSwin}


def _c345(cfg, ch):
    cfg.neck.in_channels = ch
    cfg.neck.start_level = 0


def _dino(cfg, ch):
    cfg.neck.in_channels = ch
    cfg.num_queries = 30
    cfg.bbox_head.num_classes = 2
    cfg.dn_cfg.group_cfg = dict(dynamic=True, num_groups=None, num_dn_queries=10)


def _cascade(cfg, ch):
    cfg.neck.in_channels = ch


def _mask2former(cfg, ch):
    cfg.panoptic_head.in_channels = ch
    cfg.panoptic_head.num_queries = 20
    cfg.panoptic_head.num_things_classes = 2
    cfg.panoptic_head.num_stuff_classes = 0
    cfg.panoptic_head.loss_cls.class_weight = [1.0] * 2 + [0.1]
    cfg.panoptic_fusion_head.num_things_classes = 2
    cfg.panoptic_fusion_head.num_stuff_classes = 0
    cfg.panoptic_head.train_cfg = dict(cfg.train_cfg, num_points=256)
    cfg.train_cfg.num_points = 256
    cfg.data_preprocessor.batch_augments = None  # the LSJ recipe pads to 1024 x 1024


STOCK = {
    'retinanet': ('mmdet::retinanet/retinanet_r50_fpn_1x_coco.py', (1, 2, 3), _c345),
    'fcos': ('mmdet::fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py', (1, 2, 3), _c345),
    'dino': ('mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py', (1, 2, 3), _dino),
    'cascade_mask_rcnn': ('mmdet::cascade_rcnn/cascade-mask-rcnn_r50_fpn_1x_coco.py', (0, 1, 2, 3), _cascade),
    'mask2former': ('mmdet::mask2former/mask2former_r50_8xb2-lsj-50e_coco.py', (0, 1, 2, 3), _mask2former),
}


@pytest.mark.parametrize('family', list(SMALL))
@pytest.mark.parametrize('det', list(STOCK))
def test_stock_config_step_gives_every_backbone_parameter_a_gradient(tmp_path, det, family):
    base, out_indices, adapt = STOCK[det]
    cfg = copy.deepcopy(stock(tmp_path, base).model)
    init_default_scope('mmdet')
    bb = dict(type=f'linattn_mm.{family}', attn_cfg=dict(type='inline'), out_indices=out_indices, **SMALL[family])
    cfg.backbone = bb
    adapt(cfg, CLASSES[family](**{k: v for k, v in bb.items() if k != 'type'}).out_channels)
    model = det_train_step(cfg)
    no_grad = [n for n, p in model.backbone.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f'{family} in {det}: no gradient for {no_grad}'
