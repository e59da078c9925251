# UPerNet + LinViT-S (taylor_s) with taylorshift attention, ADE20K.
_base_ = ['./upernet_linvit-s-inline_4xb4-160k_ade20k-512x512.py']
# taylor_s is 384 wide (InLine-DeiT-S, the base, is 320); the preset turns output normalisation on.
model = dict(backbone=dict(arch='taylor_s', attn_cfg=dict(type='taylorshift')),
             decode_head=dict(in_channels=[96, 192, 384, 384]), auxiliary_head=dict(in_channels=384))
