# Linear-DETR with InLine (injective linear attention) in all three transformer attentions; DETR R-50 150e.
_base_ = ['./linear-detr_r50_linformer_8xb2-150e_coco.py']
grid_attn = dict(_delete_=True, type='inline')
query_attn = dict(_delete_=True, type='inline')
model = dict(
    encoder=dict(layer_cfg=dict(self_attn_cfg=dict(attn_cfg=grid_attn))),
    decoder=dict(layer_cfg=dict(self_attn_cfg=dict(attn_cfg=query_attn),
                                cross_attn_cfg=dict(attn_cfg=grid_attn))))
