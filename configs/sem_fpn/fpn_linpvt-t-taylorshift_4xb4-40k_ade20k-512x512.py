# Semantic FPN + LinPVT-T with taylorshift attention in all stages, ADE20K.
_base_ = ['./fpn_linpvt-t-inline_4xb4-40k_ade20k-512x512.py']
model = dict(backbone=dict(attn_cfg=dict(_delete_=True, type='taylorshift')))
