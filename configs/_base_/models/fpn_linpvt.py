# Semantic FPN (mmseg) on LinPVT-T.
_base_ = ['mmseg::_base_/models/fpn_r50.py']
custom_imports = dict(imports=['linattn_mm'], allow_failed_imports=False)
model = dict(
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='linattn_mm.LinPVT',
        arch='t',                 # LinPVT.stage_channels: [64, 128, 320, 512]
        attn_cfg=dict(type='inline'),
        drop_path_rate=0.1,
        out_indices=(0, 1, 2, 3)),
    neck=dict(in_channels=[64, 128, 320, 512]))
