# Cityscapes: 512x1024 training crops, 2048x1024 sliding-window inference (1024x1024 windows, stride 768);
# whole-image inference with --cfg-options model.test_cfg.mode=whole. UPerNet-Swin optimiser recipe.
_base_ = ['mmseg::_base_/datasets/cityscapes.py', 'mmseg::_base_/default_runtime.py',
          'mmseg::_base_/schedules/schedule_80k.py']
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
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=80000, by_epoch=False),
]
train_dataloader = dict(batch_size=2)   # 4 GPUs x 2 images
# (no `model` here: mmengine forbids a key in two bases; the leaf configs set crop size and classes)
