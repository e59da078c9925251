# ADE20K 512x512, 40k iterations, the Semantic-FPN recipe of PVT (AdamW 2e-4, wd 1e-4, poly 0.9).
_base_ = ['mmseg::_base_/datasets/ade20k.py', 'mmseg::_base_/default_runtime.py',
          'mmseg::_base_/schedules/schedule_40k.py']
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-4, weight_decay=1e-4),
    clip_grad=None)
param_scheduler = [dict(type='PolyLR', power=0.9, eta_min=0.0, begin=0, end=40000, by_epoch=False)]
train_dataloader = dict(batch_size=4)   # 4 GPUs x 4 images
# (no `model` here: mmengine forbids a key in two bases; the leaf configs set crop size and classes)
