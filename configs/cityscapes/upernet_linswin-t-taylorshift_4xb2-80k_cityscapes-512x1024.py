# UPerNet + LinSwin-T (taylorshift in stages 1-3) on Cityscapes, sliding-window 2048x1024 inference.
_base_ = ['./upernet_linswin-t-inline_4xb2-80k_cityscapes-512x1024.py']
model = dict(backbone=dict(attn_cfg=[dict(type='taylorshift')] * 3 + [dict(type='window')]))
