"""Nystromformer attention (Xiong et al., AAAI 2021) and its materialised twin."""
from .naive import nystrom_attention_naive
from .torch_impl import nystrom_attention

__all__ = ['nystrom_attention', 'nystrom_attention_naive']
