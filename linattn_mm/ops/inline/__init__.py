"""InLine: injective linear attention (Han et al., NeurIPS 2024) and its materialised twin."""
from ._kernels import INLINE_KERNELS
from .naive import inline_attention_naive
from .torch_impl import inline_attention

__all__ = ['inline_attention', 'inline_attention_naive', 'INLINE_KERNELS']
