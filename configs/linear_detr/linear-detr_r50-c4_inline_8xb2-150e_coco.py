# High-resolution Linear-DETR with InLine on stride-16 ResNet-50 C4 features (linear in the ~4200 tokens).
_base_ = ['./linear-detr_r50_inline_8xb2-150e_coco.py']
model = dict(backbone=dict(out_indices=(2, )), neck=dict(in_channels=[1024]))
