"""Long-Short Transformer attention (Zhu et al., NeurIPS 2021): window + dynamic projection with DualLN."""
from .naive import longshort_attention_naive
from .torch_impl import longshort_attention

__all__ = ['longshort_attention', 'longshort_attention_naive']
