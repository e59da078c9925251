# Mask R-CNN + LinSwin-T with linformer attention in stages 1-3 (stage 4: shifted windows), COCO 3x.
_base_ = ['./mask-rcnn_linswin-t-inline_fpn_3x_coco.py']
model = dict(backbone=dict(attn_cfg=[dict(type='linformer', proj_len=64)] * 3 + [dict(type='window')]))
