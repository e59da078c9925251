# ADE20K 512x512, 160k iterations, the UPerNet-Swin recipe of mmseg (AdamW 6e-5, wd 0.01, 1500-iter linear
# warm-up, then poly decay; no weight decay on norms and position tables).
_base_ = ['mmseg::_base_/datasets/ade20k.py', 'mmseg::_base_/default_runtime.py',
          'mmseg::_base_/schedules/schedule_160k.py']
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={
        'pos_embed': dict(decay_mult=0.),
        'relative_position_bias_table': dict(decay_mult=0.),
        'norm': dict(decay_mult=0.)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=160000, by_epoch=False),
]
train_dataloader = dict(batch_size=4)   # 4 GPUs x 4 images
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
# (no `model` here: mmengine forbids a key in two bases; the leaf configs set crop size and classes)
