# UPerNet + LinViT-S (deit_s) with linformer attention, ADE20K.
_base_ = ['./upernet_linvit-s-inline_4xb4-160k_ade20k-512x512.py']
model = dict(backbone=dict(attn_cfg=dict(type='linformer', proj_len=64)))
