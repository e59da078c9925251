# UPerNet (mmseg) on LinViT-S (plain ViT + simple feature pyramid, strides 4/8/16/32).
_base_ = ['mmseg::_base_/models/upernet_swin.py']
custom_imports = dict(imports=['linattn_mm'], allow_failed_imports=False)
model = dict(
    backbone=dict(
        _delete_=True,
        type='linattn_mm.LinViT',
        arch='deit_s',            # LinViT.stage_channels: [96, 192, 384, 384]
        drop_path_rate=0.1,
        out_indices=(0, 1, 2, 3)),
    decode_head=dict(in_channels=[96, 192, 384, 384]),
    auxiliary_head=dict(in_channels=384))
