# Semantic FPN + LinPVT-T with inline attention in all stages, ADE20K.
_base_ = ['../_base_/models/fpn_linpvt.py', '../_base_/seg_semfpn_ade20k_40k.py']
model = dict(data_preprocessor=dict(size=(512, 512)), decode_head=dict(num_classes=150))
