# High-resolution Linear-DETR: the transformer runs on stride-16 ResNet-50 C4 features (4x the tokens of C5,
# ~4200 for 800x1333) where softmax attention's memory would grow 16x; Linformer keeps it linear (keys are
# projected to 64). E/F are defined on the C4 grid of an 800x1333 image (50x84).
_base_ = ['./linear-detr_r50_linformer_8xb2-150e_coco.py']
grid_attn = dict(type='linformer', proj_len=64, ref_shape=(50, 84))
model = dict(
    backbone=dict(out_indices=(2, )),                       # C4: 1024 channels, stride 16
    neck=dict(in_channels=[1024]),
    encoder=dict(layer_cfg=dict(self_attn_cfg=dict(attn_cfg=grid_attn))),
    decoder=dict(layer_cfg=dict(cross_attn_cfg=dict(attn_cfg=grid_attn))))
