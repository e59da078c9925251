"""elu+1 linear attention (Katharopoulos et al., ICML 2020) and its materialised twin."""
from .naive import linear_attention_naive
from .torch_impl import linear_attention

__all__ = ['linear_attention', 'linear_attention_naive']
