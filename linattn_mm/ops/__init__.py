"""Functional attention: tensors in, tensors out; no parameters, no OpenMMLab imports.

Conventions: q ``(B, H, Nq, D)``, k ``(B, H, Nk, D)``, v ``(B, H, Nk, Dv)``; ``key_padding_mask`` ``(B, Nk)``
bool with True = padding (as ``torch.nn.MultiheadAttention``), excluded exactly; a sample without valid
keys gets zeros. Each method's folder holds ``naive.py`` (the materialised O(N^2) formula, ground truth for
tests) and ``torch_impl.py`` (the fast path); InLine also has a fused Triton path behind ``backend=``.
The local-global ops (longformer, bigbird, longshort) also take the token grid ``hw_shape``.
"""
from .bigbird import bigbird_attention, bigbird_random_blocks
from .focused import focused_linear_attention
from .inline import inline_attention
from .linear import linear_attention
from .linformer import linformer_attention
from .longformer import longformer_attention
from .longshort import longshort_attention
from .nystrom import nystrom_attention
from .performer import orthogonal_random_features, performer_attention
from .relu import relu_linear_attention
from .rfa import rfa_attention
from .softmax import softmax_attention
from .taylor import taylor_attention

__all__ = [
    'inline_attention', 'taylor_attention', 'linformer_attention', 'softmax_attention', 'linear_attention',
    'performer_attention', 'orthogonal_random_features', 'nystrom_attention', 'focused_linear_attention',
    'relu_linear_attention', 'longformer_attention', 'bigbird_attention', 'bigbird_random_blocks',
    'longshort_attention', 'rfa_attention',
]
