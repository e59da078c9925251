# Semantic FPN (stock mmseg FPN neck + FPNHead) on a small LinPVT (InLine attention in all stages) trained on
# the real stardist nuclei tiles (nucleus vs background) on a CPU in minutes.
# Small LinPVT: embed dims [32, 64, 128, 256], heads [1, 2, 4, 8] (head dim 32), one block per stage, mlp 4.
_base_ = ['../_base_/models/fpn_linpvt.py', '../_base_/seg_nuclei.py']
custom_imports = dict(imports=['linattn_mm', 'linattn_mm.datasets'], allow_failed_imports=False)
model = dict(
    data_preprocessor=dict(size={{_base_.crop_size}}, mean=[0., 0., 0.], std=[255., 255., 255.]),
    backbone=dict(arch=dict(_delete_=True, embed_dims=[32, 64, 128, 256], num_heads=[1, 2, 4, 8],
                            mlp_ratios=[4, 4, 4, 4], depths=[1, 1, 1, 1]),
                  drop_path_rate=0.),
    neck=dict(in_channels=[32, 64, 128, 256], out_channels=64),
    decode_head=dict(in_channels=[64, 64, 64, 64], channels=64, num_classes=2, dropout_ratio=0.))
