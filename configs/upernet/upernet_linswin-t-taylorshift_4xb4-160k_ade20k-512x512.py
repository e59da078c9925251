# UPerNet + LinSwin-T with taylorshift attention in stages 1-3 (stage 4: 7x7 shifted-window softmax), ADE20K.
_base_ = ['./upernet_linswin-t-inline_4xb4-160k_ade20k-512x512.py']
model = dict(backbone=dict(attn_cfg=[dict(type='taylorshift')] * 3 + [dict(type='window')]))
