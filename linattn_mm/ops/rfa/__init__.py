"""Random Feature Attention (Peng et al., ICLR 2021), non-causal, and its materialised twin."""
from .naive import rfa_attention_naive
from .torch_impl import rfa_attention, rfa_features

__all__ = ['rfa_attention', 'rfa_attention_naive', 'rfa_features']
