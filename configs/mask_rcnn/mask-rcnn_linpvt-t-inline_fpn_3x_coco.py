# Mask R-CNN + FPN on LinPVT-T (InLine attention in all stages), COCO 3x; mmdet's Mask R-CNN 3x
# recipe with the PVT optimiser (AdamW, lr 2e-4, weight decay 1e-4).
_base_ = ['mmdet::mask_rcnn/mask-rcnn_r50_fpn_ms-poly-3x_coco.py']
custom_imports = dict(imports=['linattn_mm'], allow_failed_imports=False)
model = dict(
    backbone=dict(
        _delete_=True,
        type='linattn_mm.LinPVT',
        arch='t',                       # LinPVT.stage_channels: [64, 128, 320, 512]
        attn_cfg=dict(type='inline'),
        drop_path_rate=0.1,
        out_indices=(0, 1, 2, 3)),
    neck=dict(in_channels=[64, 128, 320, 512]))
optim_wrapper = dict(_delete_=True, type='OptimWrapper',
                     optimizer=dict(type='AdamW', lr=2e-4, weight_decay=1e-4))
