# Linear-DETR with TaylorShift in all three transformer attentions (direct path below N0 = d^2+d+1 = 1057 keys
# for head dim 32, efficient linear path above); DETR R-50 150e.
_base_ = ['./linear-detr_r50_linformer_8xb2-150e_coco.py']
grid_attn = dict(_delete_=True, type='taylorshift')
query_attn = dict(_delete_=True, type='taylorshift')
model = dict(
    encoder=dict(layer_cfg=dict(self_attn_cfg=dict(attn_cfg=grid_attn))),
    decoder=dict(layer_cfg=dict(self_attn_cfg=dict(attn_cfg=query_attn),
                                cross_attn_cfg=dict(attn_cfg=grid_attn))))
