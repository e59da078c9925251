"""Attention layers (nn.Modules) with one contract, chosen by name from :data:`ATTENTIONS`.

``layer = build_attention(dict(type='inline'), embed_dims=64, num_heads=2)``;
``y = layer(x, (H, W), key_padding_mask=None)`` with ``x`` ``(B, H*W, C)`` -> ``(B, H*W, C)``.

Every layer takes ``embed_dims, num_heads=8, qkv_bias=True, attn_drop=0., proj_drop=0., qkv_layout='qkv'``
(``'q_kv'``: separate ``q`` and ``kv`` Linears as in PVT checkpoints) plus its method options:

===============  ===========================  ====================================================================
name             class                        method options (defaults)
===============  ===========================  ====================================================================
``softmax``      SoftmaxAttention             scale=None
``window``       WindowAttention              window_size=7, shift_size=0, scale=None
``cswin``        CSWinAttention               split_size=7 (None: whole map), inner='softmax' ('inline'), scale=None
``sra``          SRAttention                  sr_ratio=1, linear=False, pool_size=7, scale=None (qkv_layout='q_kv')
``inline``       InLineAttention              kernel='identity', local_kernel_size=3
``taylorshift``  TaylorShiftAttention         mode='auto', n0=None, output_normalized=False
``linformer``    LinformerAttention           ref_hw=(14, 14), proj_len=64, share='none', shared_proj=None
``performer``    PerformerAttention           num_features=None (D ln D), redraw=False, seed=0
``nystrom``      NystromAttention             num_landmarks=64, pinv_iters=6, conv_kernel=None
``linear``       LinearAttention              eps=1e-6
``focused``      FocusedLinearAttention       focusing_factor=3, kernel_size=5, pos_hw=None
``relu``         ReLULinearAttention          scales=()
``longformer``   LongformerAttention          window_size=7, num_global=1, block_size=None, exact=True,
                                              global_update=True
``bigbird``      BigBirdAttention             as longformer + num_random_blocks=3, seed=0, redraw=False
``longshort``    LongShortAttention           window_size=7, num_landmarks=16, block_size=None, exact=True,
                                              dual_ln=True
``rfa``          RFAAttention                 num_features=64, kernel='gaussian', sigma_init=1.0, learn_sigma=True,
                                              redraw=False, seed=0
===============  ===========================  ====================================================================
"""
from .base import BaseAttention
from .bigbird import BigBirdAttention
from .cswin import CSWinAttention
from .builder import ATTENTIONS, build_attention
from .focused import FocusedLinearAttention
from .inline import InLineAttention
from .linear import LinearAttention
from .linformer import LinformerAttention, LinformerProjection
from .longformer import LongformerAttention
from .longshort import LongShortAttention
from .nystrom import NystromAttention
from .performer import PerformerAttention
from .relu import ReLULinearAttention
from .rfa import RFAAttention
from .softmax import SoftmaxAttention
from .sra import SRAttention
from .taylor import TaylorShiftAttention
from .window import WindowAttention

__all__ = [
    'ATTENTIONS', 'build_attention', 'BaseAttention', 'SoftmaxAttention', 'WindowAttention', 'CSWinAttention', 'SRAttention',
    'InLineAttention', 'TaylorShiftAttention', 'LinformerAttention', 'LinformerProjection', 'PerformerAttention',
    'NystromAttention', 'LinearAttention', 'FocusedLinearAttention', 'ReLULinearAttention', 'LongformerAttention',
    'BigBirdAttention', 'LongShortAttention', 'RFAAttention',
]
