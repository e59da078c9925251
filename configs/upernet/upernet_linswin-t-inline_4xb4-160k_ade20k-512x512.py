# UPerNet + LinSwin-T with inline attention in stages 1-3 (stage 4: 7x7 shifted-window softmax), ADE20K.
_base_ = ['../_base_/models/upernet_linswin.py', '../_base_/seg_upernet_ade20k_160k.py']
model = dict(data_preprocessor=dict(size=(512, 512)),
             decode_head=dict(num_classes=150), auxiliary_head=dict(num_classes=150))
