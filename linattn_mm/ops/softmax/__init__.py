"""Softmax attention: the quadratic baseline (SDPA) and its materialised twin."""
from .naive import softmax_attention_naive
from .torch_impl import softmax_attention

__all__ = ['softmax_attention', 'softmax_attention_naive']
