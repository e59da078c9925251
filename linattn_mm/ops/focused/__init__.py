"""Focused linear attention (FLatten, Han et al., ICCV 2023) and its materialised twin."""
from .naive import focused_linear_attention_naive
from .torch_impl import focused_feature_map, focused_linear_attention, focusing_function

__all__ = ['focused_linear_attention', 'focused_linear_attention_naive', 'focused_feature_map',
           'focusing_function']
