# Mask R-CNN + LinSwin-T with taylorshift attention in stages 1-3 (stage 4: shifted windows), COCO 3x.
_base_ = ['./mask-rcnn_linswin-t-inline_fpn_3x_coco.py']
model = dict(backbone=dict(attn_cfg=[dict(type='taylorshift')] * 3 + [dict(type='window')]))
