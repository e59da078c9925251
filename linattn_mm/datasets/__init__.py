"""Datasets for the real data prepared by tools/prepare_data.py (needs mmsegmentation)."""
from .layout import check_layout

try:
    from mmseg.datasets import BaseSegDataset
except ImportError as e:  # pragma: no cover
    raise ImportError('linattn_mm.datasets needs mmsegmentation (pip install mmsegmentation==1.2.2)') from e

from ..registry import DATASETS


@DATASETS.register_module()
class NucleiSegDataset(BaseSegDataset):
    """stardist nuclei in an ADE-like layout: images/{training,validation}, annotations/... uint8 0/1."""
    METAINFO = dict(classes=('background', 'nucleus'), palette=[[0, 0, 0], [255, 0, 0]])

    def __init__(self, img_suffix='.png', seg_map_suffix='.png', reduce_zero_label=False, **kwargs):
        super().__init__(img_suffix=img_suffix, seg_map_suffix=seg_map_suffix,
                         reduce_zero_label=reduce_zero_label, **kwargs)

    def load_data_list(self):
        if self.data_root:
            check_layout(self.data_root, 'nuclei')
        return super().load_data_list()


__all__ = ['DATASETS', 'NucleiSegDataset', 'check_layout']
