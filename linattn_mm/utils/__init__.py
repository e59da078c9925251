"""Small utilities that sit beside the three tiers (no model code here)."""
from .safe_checkpoint import UnsafeCheckpointError, install as install_safe_checkpoint, safe_torch_load

__all__ = ['UnsafeCheckpointError', 'install_safe_checkpoint', 'safe_torch_load']
