# Mask R-CNN + FPN on LinSwin-T ('IIIS': InLine in stages 1-3, 7x7 shifted windows in stage 4), COCO 1x;
# mmdet's Swin-T recipe (AdamW, lr 1e-4, weight decay 0.05, no decay on norms and position tables).
_base_ = ['mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py']
custom_imports = dict(imports=['linattn_mm'], allow_failed_imports=False)
model = dict(
    backbone=dict(
        _delete_=True,
        type='linattn_mm.LinSwin',
        arch='t',                       # LinSwin.stage_channels: [96, 192, 384, 768]
        attn_type='IIIS',
        drop_path_rate=0.2,
        out_indices=(0, 1, 2, 3)),
    neck=dict(in_channels=[96, 192, 384, 768]))
optim_wrapper = dict(paramwise_cfg=dict(custom_keys={'pos_embed': dict(decay_mult=0.)}))
