"""Linear-DETR: mmdet's DETR with every transformer attention taken from the linear-attention library.

The seed (Linformer in DETR) replaces the encoder self-attention, the decoder self-attention and the
decoder cross-attention. mmdet builds these three directly from mmcv's ``MultiheadAttention`` inside
``DetrTransformerEncoderLayer`` / ``DetrTransformerDecoderLayer``, so the layers are subclassed here to
build :class:`LinearMultiheadAttention` (same call signature) instead; each of the three takes an
``attn_cfg`` in its ``self_attn_cfg`` / ``cross_attn_cfg``::

    encoder=dict(num_layers=6, layer_cfg=dict(
        self_attn_cfg=dict(embed_dims=256, num_heads=8, dropout=0.1,
                           attn_cfg=dict(type='linformer', proj_len=64, ref_shape=(32, 32))), ...))

The detector passes the memory's grid ``spatial_shape=(h, w)`` down through mmdet's ``**kwargs`` so that
Linformer can resize its projections to each image's valid region; together with the ops' exact handling
of ``key_padding_mask`` this makes an image's detections independent of the images it is batched with.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

from mmcv.cnn import build_norm_layer
from mmcv.cnn.bricks.transformer import FFN
from mmdet.models.detectors import DETR
from mmdet.models.layers import (DetrTransformerDecoder, DetrTransformerDecoderLayer, DetrTransformerEncoder,
                                 DetrTransformerEncoderLayer, SinePositionalEncoding)
from mmengine.model import ModuleList
from torch import Tensor, nn

from ...registry import MODELS
from .attention_bridge import LinearMultiheadAttention


class LinearDetrEncoderLayer(DetrTransformerEncoderLayer):
    """DETR encoder layer whose self-attention is a :class:`LinearMultiheadAttention` over the grid."""

    def _init_layers(self) -> None:
        self.self_attn = LinearMultiheadAttention(**self.self_attn_cfg, grid_keys=True)
        self.embed_dims = self.self_attn.embed_dims
        self.ffn = FFN(**self.ffn_cfg)
        self.norms = ModuleList([build_norm_layer(self.norm_cfg, self.embed_dims)[1] for _ in range(2)])


class LinearDetrDecoderLayer(DetrTransformerDecoderLayer):
    """DETR decoder layer: self-attention over the object queries, cross-attention into the grid."""

    def _init_layers(self) -> None:
        self.self_attn = LinearMultiheadAttention(**self.self_attn_cfg, grid_keys=False)
        self.cross_attn = LinearMultiheadAttention(**self.cross_attn_cfg, grid_keys=True)
        self.embed_dims = self.self_attn.embed_dims
        self.ffn = FFN(**self.ffn_cfg)
        self.norms = ModuleList([build_norm_layer(self.norm_cfg, self.embed_dims)[1] for _ in range(3)])


class LinearDetrTransformerEncoder(DetrTransformerEncoder):
    """:class:`DetrTransformerEncoder` made of :class:`LinearDetrEncoderLayer`."""

    def _init_layers(self) -> None:
        if self.num_cp > 0:
            raise NotImplementedError('LinearDetrTransformerEncoder: num_cp (fairscale checkpointing) is not supported')
        self.layers = ModuleList([LinearDetrEncoderLayer(**self.layer_cfg) for _ in range(self.num_layers)])
        self.embed_dims = self.layers[0].embed_dims


class LinearDetrTransformerDecoder(DetrTransformerDecoder):
    """:class:`DetrTransformerDecoder` made of :class:`LinearDetrDecoderLayer`."""

    def _init_layers(self) -> None:
        self.layers = ModuleList([LinearDetrDecoderLayer(**self.layer_cfg) for _ in range(self.num_layers)])
        self.embed_dims = self.layers[0].embed_dims
        self.post_norm = build_norm_layer(self.post_norm_cfg, self.embed_dims)[1]


@MODELS.register_module()
class LinearDETR(DETR):
    """DETR whose encoder/decoder attentions are linear attentions (``type='linattn_mm.LinearDETR'``).

    Same constructor as mmdet's :class:`~mmdet.models.detectors.DETR`; the attention of each of the three
    roles is chosen by ``attn_cfg`` inside ``encoder.layer_cfg.self_attn_cfg``,
    ``decoder.layer_cfg.self_attn_cfg`` and ``decoder.layer_cfg.cross_attn_cfg`` (default softmax).
    """

    def _init_layers(self) -> None:
        self.positional_encoding = SinePositionalEncoding(**self.positional_encoding)
        self.encoder = LinearDetrTransformerEncoder(**self.encoder)
        self.decoder = LinearDetrTransformerDecoder(**self.decoder)
        self.embed_dims = self.encoder.embed_dims
        self.query_embedding = nn.Embedding(self.num_queries, self.embed_dims)
        if self.positional_encoding.num_feats * 2 != self.embed_dims:
            raise ValueError(f'LinearDETR: embed_dims {self.embed_dims} must be 2 x positional_encoding.num_feats '
                             f'({self.positional_encoding.num_feats})')

    def pre_transformer(self, img_feats: Tuple[Tensor], batch_data_samples=None) -> Tuple[Dict, Dict]:
        enc, dec = super().pre_transformer(img_feats, batch_data_samples)
        hw = tuple(img_feats[-1].shape[-2:])  # sizes, not ints: symbolic under torch.compile
        enc['spatial_shape'] = hw
        dec['spatial_shape'] = hw
        return enc, dec

    def forward_encoder(self, feat: Tensor, feat_mask: Optional[Tensor], feat_pos: Tensor,
                        spatial_shape: Optional[Sequence[int]] = None) -> Dict:
        memory = self.encoder(query=feat, query_pos=feat_pos, key_padding_mask=feat_mask,
                              spatial_shape=spatial_shape)
        return dict(memory=memory)

    def forward_decoder(self, query: Tensor, query_pos: Tensor, memory: Tensor, memory_mask: Optional[Tensor],
                        memory_pos: Tensor, spatial_shape: Optional[Sequence[int]] = None) -> Dict:
        hidden_states = self.decoder(query=query, key=memory, value=memory, query_pos=query_pos,
                                     key_pos=memory_pos, key_padding_mask=memory_mask,
                                     spatial_shape=spatial_shape)
        return dict(hidden_states=hidden_states)
