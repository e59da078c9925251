# UPerNet (mmseg) on LinViT-S (InLine-DeiT-S: 320 wide, 10 heads; plain ViT + simple feature pyramid,
# strides 4/8/16/32).
_base_ = ['mmseg::_base_/models/upernet_swin.py']
custom_imports = dict(imports=['linattn_mm'], allow_failed_imports=False)
model = dict(
    backbone=dict(
        _delete_=True,
        type='linattn_mm.LinViT',
        arch='deit_s',            # LinViT.stage_channels: [80, 160, 320, 320]
        drop_path_rate=0.1,
        out_indices=(0, 1, 2, 3)),
    decode_head=dict(in_channels=[80, 160, 320, 320]),
    auxiliary_head=dict(in_channels=320))
