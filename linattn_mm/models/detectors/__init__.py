"""Detector pieces on the linear-attention library: Linear-DETR and its mmcv-compatible attention.

Imports mmdet (and mmcv) — import this subpackage explicitly (configs list it in ``custom_imports``).
"""
from .attention_bridge import BRIDGE_ATTENTIONS, LinearMultiheadAttention
from .datasets import LayoutCocoDataset
from .linear_detr import (LinearDETR, LinearDetrDecoderLayer, LinearDetrEncoderLayer, LinearDetrTransformerDecoder,
                          LinearDetrTransformerEncoder)

__all__ = ['LinearDETR', 'LayoutCocoDataset', 'LinearMultiheadAttention', 'BRIDGE_ATTENTIONS', 'LinearDetrEncoderLayer',
           'LinearDetrDecoderLayer', 'LinearDetrTransformerEncoder', 'LinearDetrTransformerDecoder']
