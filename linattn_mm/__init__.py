"""linattn_mm: linear-complexity attention backbones for MMDetection 3.x and MMSegmentation 1.x.

Importing the package (configs do it through ``custom_imports=dict(imports=['linattn_mm'])``) makes
mmengine's checkpoint loading and resume safe on torch >= 2.6 (see :mod:`linattn_mm.utils.safe_checkpoint`).
"""
from .utils.safe_checkpoint import install as _install_safe_checkpoint

__version__ = '0.1.0'

_install_safe_checkpoint()
