"""Scoped DATASETS registry (child of mmengine's); the lead merges it with linattn_mm.registry later."""
from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import Registry

DATASETS = Registry('dataset', parent=MMENGINE_DATASETS, scope='linattn_mm',
                    locations=['linattn_mm.datasets'])
