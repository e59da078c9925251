# UPerNet + LinViT-S (taylor_s) with taylorshift attention, ADE20K.
_base_ = ['./upernet_linvit-s-inline_4xb4-160k_ade20k-512x512.py']
model = dict(backbone=dict(arch='taylor_s', attn_cfg=dict(type='taylorshift')))
