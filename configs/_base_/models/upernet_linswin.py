# UPerNet (mmseg) on LinSwin-T: only the backbone differs from mmseg's upernet_swin.py.
_base_ = ['mmseg::_base_/models/upernet_swin.py']
custom_imports = dict(imports=['linattn_mm'], allow_failed_imports=False)
model = dict(
    backbone=dict(
        _delete_=True,
        type='linattn_mm.LinSwin',
        arch='t',                 # LinSwin.stage_channels: [96, 192, 384, 768]
        attn_type='IIIS',         # InLine in stages 1-3, 7x7 shifted-window softmax in stage 4
        window_size=7,
        drop_path_rate=0.3,
        out_indices=(0, 1, 2, 3)),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))
