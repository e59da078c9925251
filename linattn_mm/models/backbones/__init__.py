"""Backbones for MMDetection / MMSegmentation, registered in the ``linattn_mm`` scope."""
from .lin_cswin import CSWIN_PRESETS, LinCSwin
from .lin_pvt import PVT_PRESETS, LinPVT
from .lin_swin import SWIN_PRESETS, LinSwin
from .lin_vit import VIT_PRESETS, LinViT

__all__ = ['LinCSwin', 'LinPVT', 'LinSwin', 'LinViT', 'CSWIN_PRESETS', 'PVT_PRESETS', 'SWIN_PRESETS', 'VIT_PRESETS']
