"""Backbones (and detector / decoder pieces) built from :mod:`linattn_mm.layers`."""
from .backbones import LinCSwin, LinPVT, LinSwin, LinViT

try:  # timm model names (timm is a dependency; keep the backbones importable if its API moves)
    from . import timm_models  # noqa: F401
except ImportError:  # pragma: no cover
    timm_models = None

__all__ = ['LinCSwin', 'LinPVT', 'LinSwin', 'LinViT']
