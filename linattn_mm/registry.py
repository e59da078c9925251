"""The one place that touches mmengine registries.

``MODELS`` is a scoped child of mmengine's root ``MODELS`` (the pattern mmpretrain uses), so a config
of mmdet or mmseg can name ``type='linattn_mm.LinPVT'``: the prefix sends the look-up to this scope
whatever the caller's default scope is. Attention layers are *not* registered here: backbones build
them from the plain table in :mod:`linattn_mm.layers` (a nested registry build would resolve in the
caller's scope and fail).
"""
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry

MODELS = Registry('model', parent=MMENGINE_MODELS, scope='linattn_mm',
                  locations=['linattn_mm.models'])

from mmengine.registry import DATASETS as MMENGINE_DATASETS  # noqa: E402

DATASETS = Registry('dataset', parent=MMENGINE_DATASETS, scope='linattn_mm',
                    locations=['linattn_mm.datasets'])
