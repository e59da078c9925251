"""TaylorShift: Taylor-softmax attention (Nauen et al., ICPR 2024) with direct, efficient and auto paths."""
from .naive import taylor_attention_naive
from .torch_impl import taylor_attention, taylor_crossover

__all__ = ['taylor_attention', 'taylor_attention_naive', 'taylor_crossover']
