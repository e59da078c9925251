"""Performer FAVOR+ attention (Choromanski et al., ICLR 2021) and its materialised twin."""
from .naive import performer_attention_naive
from .torch_impl import orthogonal_random_features, performer_attention

__all__ = ['performer_attention', 'performer_attention_naive', 'orthogonal_random_features']
