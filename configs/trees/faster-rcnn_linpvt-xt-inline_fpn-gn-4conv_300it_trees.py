# The trees detector of configs/trees/faster-rcnn_linpvt-xt-inline_fpn_300it_trees.py (LinPVT-XT, InLine, from
# scratch, 300 iterations, batch 2, 512 px tiles) with a recipe for training from scratch on 32 tiles:
# - GroupNorm in the FPN and a 4-conv + 1-fc GroupNorm box head (Shared4Conv1FCBBoxHead), as in mmdet's
#   configs/scratch (Faster R-CNN GN-all from scratch; He et al., "Rethinking ImageNet Pre-training", ICCV
#   2019): normalised heads train from random initialisation without pre-trained statistics;
# - AdamW at 2e-3 with a 50-iteration linear warm-up and a cosine decay (to 1%), no weight decay on norms;
# - aerial-image augmentation: scale jitter (0.75-1.33) with a 512 px random crop, horizontal and vertical
#   flips, photometric distortion (brightness, contrast, saturation, hue).
_base_ = ['./faster-rcnn_linpvt-xt-inline_fpn_300it_trees.py']
gn = dict(type='GN', num_groups=16, requires_grad=True)  # 64-channel FPN / head: groups of 4 channels
model = dict(
    neck=dict(norm_cfg=gn),
    roi_head=dict(bbox_head=dict(type='Shared4Conv1FCBBoxHead', conv_out_channels=64, norm_cfg=gn,
                                 fc_out_channels=256)))
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomResize', scale=(512, 512), ratio_range=(0.75, 1.33), keep_ratio=True),
    dict(type='RandomCrop', crop_size=(512, 512), allow_negative_crop=False),
    dict(type='RandomFlip', prob=[0.5, 0.5], direction=['horizontal', 'vertical']),
    dict(type='PhotoMetricDistortion', brightness_delta=24, contrast_range=(0.75, 1.25),
         saturation_range=(0.75, 1.25), hue_delta=8),
    dict(type='PackDetInputs')
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=50, end=300, T_max=250, eta_min_ratio=0.01)]
optim_wrapper = dict(optimizer=dict(lr=2e-3), paramwise_cfg=dict(norm_decay_mult=0.0))
