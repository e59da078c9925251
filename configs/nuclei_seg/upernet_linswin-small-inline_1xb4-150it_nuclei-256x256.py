# UPerNet (stock mmseg UPerHead + FCN auxiliary head) on a small LinSwin ('IIIS': InLine in stages 1-3,
# 7x7 shifted-window softmax in stage 4) trained on the real stardist nuclei tiles on a CPU in minutes.
# Small LinSwin: embed dims 32 (stages 32/64/128/256), heads [1, 2, 4, 8], one block per stage.
_base_ = ['../_base_/models/upernet_linswin.py', '../_base_/seg_nuclei.py']
custom_imports = dict(imports=['linattn_mm', 'linattn_mm.datasets'], allow_failed_imports=False)
model = dict(
    data_preprocessor=dict(size={{_base_.crop_size}}, mean=[0., 0., 0.], std=[255., 255., 255.]),
    backbone=dict(arch=dict(_delete_=True, embed_dims=32, depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8]),
                  drop_path_rate=0.),
    decode_head=dict(in_channels=[32, 64, 128, 256], channels=64, num_classes=2, dropout_ratio=0.),
    auxiliary_head=dict(in_channels=128, channels=32, num_classes=2, dropout_ratio=0.))
