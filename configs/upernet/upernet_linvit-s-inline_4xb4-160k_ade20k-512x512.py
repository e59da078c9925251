# UPerNet + LinViT-S (deit_s) with inline attention, ADE20K.
_base_ = ['../_base_/models/upernet_linvit.py', '../_base_/seg_upernet_ade20k_160k.py']
model = dict(data_preprocessor=dict(size=(512, 512)),
             decode_head=dict(num_classes=150), auxiliary_head=dict(num_classes=150))
