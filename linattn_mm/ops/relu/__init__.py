"""ReLU linear attention (EfficientViT, Cai et al., ICCV 2023) and its materialised twin."""
from .naive import relu_linear_attention_naive
from .torch_impl import relu_linear_attention

__all__ = ['relu_linear_attention', 'relu_linear_attention_naive']
