"""COCO datasets of the shipped real data (tools/prepare_data.py) that fail with one clear message.

mmdet's ``CocoDataset`` on a missing folder raises deep inside pycocotools with only a json path; these
check the whole layout first (:func:`linattn_mm.datasets.layout.check_layout`) and name the path, the
expected layout and the command that prepares it.
"""
from mmdet.datasets import CocoDataset

from ...datasets.layout import check_layout
from ...registry import DATASETS


@DATASETS.register_module()
class LayoutCocoDataset(CocoDataset):
    """``CocoDataset`` that checks a known layout under ``data_root`` before loading.

    Args:
        layout: a key of :data:`linattn_mm.datasets.layout.LAYOUTS` (``'trees'``, ``'nuclei'``); None skips the
            check (plain ``CocoDataset``).
        **kwargs: ``CocoDataset`` arguments.
    """

    def __init__(self, *args, layout=None, **kwargs):
        self.layout = layout
        super().__init__(*args, **kwargs)

    def load_data_list(self):
        if self.layout is not None:
            check_layout(self.data_root or '.', self.layout)
        return super().load_data_list()
