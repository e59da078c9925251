"""Linformer: low-rank projection of keys and values along the token axis (Wang et al., 2020)."""
from .naive import linformer_attention_naive
from .torch_impl import linformer_attention

__all__ = ['linformer_attention', 'linformer_attention_naive']
