# Linear-DETR (the seed's choice): mmdet's DETR R-50 150e recipe with Linformer (projection length 64) in the
# encoder self-attention, the decoder self-attention and the decoder cross-attention. Linformer's E/F live on a
# reference grid (the C5 grid of an 800x1333 image: 25x42) and are resized bilinearly to each image's valid
# feature region, so any input size works and padding never leaks into an image's outputs.
_base_ = ['mmdet::detr/detr_r50_8xb2-150e_coco.py']
custom_imports = dict(imports=['linattn_mm', 'linattn_mm.models.detectors'], allow_failed_imports=False)
grid_attn = dict(type='linformer', proj_len=64, ref_shape=(25, 42))   # encoder self / decoder cross
query_attn = dict(type='linformer', proj_len=64, ref_len=100)         # decoder self over the 100 queries
model = dict(
    type='linattn_mm.LinearDETR',
    encoder=dict(layer_cfg=dict(self_attn_cfg=dict(attn_cfg=grid_attn))),
    decoder=dict(layer_cfg=dict(self_attn_cfg=dict(attn_cfg=query_attn),
                                cross_attn_cfg=dict(attn_cfg=grid_attn))))
