# Mask R-CNN + LinPVT-T with taylorshift attention in all stages, COCO 3x.
_base_ = ['./mask-rcnn_linpvt-t-inline_fpn_3x_coco.py']
model = dict(backbone=dict(attn_cfg=dict(_delete_=True, type='taylorshift')))
