"""The one-line backbone swap: stock mmdet / mmseg configs (from the installed packages) train a step with
only ``model.backbone`` replaced by ours and the neck / head input channels read from the backbone."""
import copy

import pytest
import torch

mmdet = pytest.importorskip('mmdet')
mmseg = pytest.importorskip('mmseg')
from mmengine.config import Config  # noqa: E402
from mmengine.model import revert_sync_batchnorm  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402

import linattn_mm  # noqa: E402,F401
from linattn_mm.models.backbones import LinCSwin, LinPVT, LinSwin, LinViT  # noqa: E402

# small variants of each family so a Mask R-CNN / UPerNet step stays ~1 s on a CPU
SMALL = {
    'LinPVT': dict(arch=dict(embed_dims=[32, 64, 64, 64], num_heads=[1, 2, 2, 2], mlp_ratios=[2, 2, 2, 2],
                             depths=[1, 1, 1, 1])),
    'LinSwin': dict(arch=dict(embed_dims=32, depths=[1, 1, 1, 1], num_heads=[1, 2, 2, 4])),
    'LinViT': dict(arch=dict(embed_dims=64, depth=2, num_heads=2)),
    'LinCSwin': dict(arch=dict(embed_dims=32, depths=[1, 1, 1, 1], num_heads=[2, 2, 4, 4])),
}
SEEDS = ['inline', 'taylorshift', 'linformer']
CLASSES = {'LinPVT': LinPVT, 'LinSwin': LinSwin, 'LinViT': LinViT, 'LinCSwin': LinCSwin}


def stock(tmp_path, base):
    """A user's config file that inherits a stock config from the installed package."""
    f = tmp_path / 'cfg.py'
    f.write_text(f"_base_ = ['{base}']\n")
    return Config.fromfile(str(f))


def swap_backbone(model_cfg, family, attn, neck_key):
    """What a user writes: the backbone dict, and the next module's in_channels from the declaration."""
    bb = dict(type=f'linattn_mm.{family}', attn_cfg=dict(type=attn), **SMALL[family])
    if attn == 'linformer':
        bb['attn_cfg']['proj_len'] = 16
    model_cfg.backbone = bb
    channels = CLASSES[family](**{k: v for k, v in bb.items() if k != 'type'}).out_channels
    model_cfg[neck_key].in_channels = channels
    return model_cfg


def _det_batch(h=64, w=96):
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData
    sample = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w),
                                         batch_input_shape=(h, w), scale_factor=(1., 1.)))
    inst = InstanceData()
    inst.bboxes = torch.tensor([[8., 10., 40., 50.], [50., 5., 90., 30.]])
    inst.labels = torch.tensor([0, 1])
    masks = torch.zeros(2, h, w, dtype=torch.uint8)
    masks[0, 10:50, 8:40] = 1
    masks[1, 5:30, 50:90] = 1
    inst.masks = BitmapMasks(masks.numpy(), h, w)
    sample.gt_instances = inst
    return dict(inputs=[torch.randint(0, 255, (3, h, w), dtype=torch.uint8)], data_samples=[sample])


def det_train_step(model_cfg):
    """Build an mmdet detector (default scope mmdet), one loss + backward on :func:`_det_batch`; the model."""
    from mmdet.registry import MODELS
    model = MODELS.build(model_cfg)
    model.init_weights()
    model.train()
    data = model.data_preprocessor(_det_batch(), training=True)
    losses = model.loss(data['inputs'], data['data_samples'])
    total = model.parse_losses(losses)[0]  # mmengine's sum of every 'loss' entry
    assert torch.isfinite(total)
    total.backward()
    return model


@pytest.mark.parametrize('attn', SEEDS)
@pytest.mark.parametrize('family', list(SMALL))
def test_stock_mask_rcnn_trains_a_step_with_our_backbone(tmp_path, family, attn):
    cfg = stock(tmp_path, 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py')
    init_default_scope('mmdet')
    model_cfg = swap_backbone(copy.deepcopy(cfg.model), family, attn, 'neck')
    model = det_train_step(model_cfg)
    assert all(p.grad is not None for p in model.backbone.parameters() if p.requires_grad)


@pytest.mark.parametrize('attn', SEEDS)
@pytest.mark.parametrize('family', list(SMALL))
def test_stock_upernet_trains_a_step_with_our_backbone(tmp_path, family, attn):
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample
    from mmengine.structures import PixelData
    cfg = stock(tmp_path, 'mmseg::upernet/upernet_r50_4xb4-80k_ade20k-512x512.py')
    init_default_scope('mmseg')
    model_cfg = swap_backbone(copy.deepcopy(cfg.model), family, attn, 'decode_head')
    model_cfg.auxiliary_head.in_channels = model_cfg.decode_head.in_channels[2]
    model_cfg.decode_head.channels = 32
    model_cfg.auxiliary_head.channels = 16
    model_cfg.data_preprocessor.size = (64, 64)
    model = revert_sync_batchnorm(MODELS.build(model_cfg))  # SyncBN needs a process group
    model.init_weights()
    model.train()
    h = w = 64
    sample = SegDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w)))
    sample.gt_sem_seg = PixelData(data=torch.randint(0, 150, (1, h, w)))
    data = model.data_preprocessor(dict(inputs=[torch.randint(0, 255, (3, h, w), dtype=torch.uint8)] * 2,
                                        data_samples=[sample, copy.deepcopy(sample)]), training=True)
    losses = model.loss(data["inputs"], data["data_samples"])
    total = sum(v for k, v in losses.items() if 'loss' in k)
    assert torch.isfinite(total)
    total.backward()
    assert all(p.grad is not None for p in model.backbone.parameters() if p.requires_grad)
