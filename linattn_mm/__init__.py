"""linattn_mm: linear-complexity attention backbones for MMDetection 3.x and MMSegmentation 1.x.

Importing the package (configs do it through ``custom_imports=dict(imports=['linattn_mm'])``):

* makes mmengine's checkpoint loading and resume safe on torch >= 2.6
  (see :mod:`linattn_mm.utils.safe_checkpoint`);
* works around an inductor bug that dynamic-shape compiles hit (see :mod:`linattn_mm.utils.inductor_compat`;
  inductor itself is not imported);
* registers the backbones in the ``linattn_mm`` registry scope (``type='linattn_mm.LinPVT'``) and as timm
  models.

``linattn_mm.ops`` and ``linattn_mm.layers`` need only torch; the models need mmengine and timm, never
mmcv's compiled ops.
"""
import importlib.util as _ilu

from .utils.inductor_compat import install as _install_inductor_compat
from .utils.safe_checkpoint import install as _install_safe_checkpoint

__version__ = '0.1.0'

_install_safe_checkpoint()
_install_inductor_compat()

if _ilu.find_spec('mmengine') is not None and _ilu.find_spec('timm') is not None:
    from . import models  # noqa: F401,E402  (registers backbones)
