# UPerNet + LinSwin-T (inline in stages 1-3) on Cityscapes, sliding-window 2048x1024 inference.
_base_ = ['../_base_/models/upernet_linswin.py', '../_base_/seg_upernet_cityscapes_80k.py']
model = dict(data_preprocessor=dict(size=(512, 1024)),
             decode_head=dict(num_classes=19), auxiliary_head=dict(num_classes=19),
             test_cfg=dict(mode='slide', crop_size=(1024, 1024), stride=(768, 768)))
