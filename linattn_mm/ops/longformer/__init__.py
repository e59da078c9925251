"""Vision Longformer attention (2-D sliding window + global tokens; Zhang et al., ICCV 2021) and its twin."""
from .naive import longformer_attention_naive
from .torch_impl import longformer_attention

__all__ = ['longformer_attention', 'longformer_attention_naive']
