"""A drop-in for mmcv's ``MultiheadAttention`` whose attention is any op of :mod:`linattn_mm.ops`.

mmdet's DETR layers build ``mmcv.cnn.bricks.transformer.MultiheadAttention`` directly (not through a
registry) and call it as ``attn(query, key, value, identity, query_pos, key_pos, attn_mask,
key_padding_mask, **kwargs)`` with batch-first ``(B, N, C)`` tensors and a residual added inside. This
module keeps that signature and that residual, and replaces ``nn.MultiheadAttention`` by separate q/k/v
projections, a functional attention op and an output projection.

Padding: ``key_padding_mask`` ``(B, Nk)`` (True = padding) is handed to the op, which excludes padded
keys exactly, so an image's outputs do not depend on what it is batched with. Linformer needs more: its
projections E, F mix *all* key positions, so they are defined on a reference grid and resized
bilinearly, per sample, to that sample's valid ``(h_i, w_i)`` region of the ``(h, w)`` key grid (passed
down as ``spatial_shape`` by :class:`~linattn_mm.models.detectors.LinearDETR`). Padded keys are then
not merely zeroed but absent, and the projection an image sees is the same alone or batched.
"""
from __future__ import annotations

import copy
import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ...ops import (focused_linear_attention, inline_attention, linear_attention, linformer_attention,
                    nystrom_attention, orthogonal_random_features, performer_attention,
                    relu_linear_attention, softmax_attention, taylor_attention)

#: attention names accepted in ``attn_cfg=dict(type=...)`` (the layer table's names).
BRIDGE_ATTENTIONS = ('softmax', 'inline', 'taylorshift', 'linformer', 'linear', 'relu', 'focused',
                     'performer', 'nystrom')


def valid_rect(key_padding_mask: Tensor, h, w) -> Tuple[Tensor, Tensor, Tensor]:
    """Per-sample valid height/width of a top-left-aligned padded grid, computed on the device (no host sync).

    Args:
        key_padding_mask: ``(B, h*w)`` bool, True = padding.
        h, w: the grid (ints or symbolic sizes).

    Returns:
        ``(vh, vw, is_rect)``, each ``(B,)``: the valid rows and columns counted along the first column and
        row, and whether the valid region is exactly the top-left ``vh x vw`` rectangle (mmdet pads
        bottom/right, so this is the normal case).
    """
    m = key_padding_mask.view(-1, h, w)
    vh = (~m[:, :, 0]).sum(1)
    vw = (~m[:, 0, :]).sum(1)
    rows = torch.arange(h, device=m.device)[None, :, None] < vh[:, None, None]
    cols = torch.arange(w, device=m.device)[None, None, :] < vw[:, None, None]
    return vh, vw, ((~(rows & cols)) == m).flatten(1).all(1)


def valid_hw(key_padding_mask: Tensor, hw: Sequence[int]) -> Optional[Tuple[Tensor, Tensor]]:
    """:func:`valid_rect` as ``(vh, vw)``, or None when some sample's valid region is not the top-left
    rectangle. Reads the answer on the host: for inspection and tests; the layer uses :func:`valid_rect`."""
    vh, vw, is_rect = valid_rect(key_padding_mask, hw[0], hw[1])
    return (vh, vw) if bool(is_rect.all()) else None


def resize_to_valid(p: Tensor, h, w, vh: Tensor, vw: Tensor) -> Tensor:
    """Resize a ``(Kp, rh, rw)`` projection to each sample's valid ``vh x vw`` region of the ``(h, w)`` grid.

    Equal to ``F.interpolate(p[None], size=(vh_b, vw_b), mode='bilinear', align_corners=False)`` placed in the
    top-left corner of a zero ``(h, w)`` map, for every sample at once: the sampling positions
    ``(i + 0.5) * rh / vh_b - 0.5`` (clamped to the map, as interpolate does) are one ``grid_sample`` with
    border padding, so the sizes never leave the device (no ``.tolist()``, no per-sample loop).

    Args:
        p: ``(Kp, rh, rw)``.
        h, w: the key grid.
        vh, vw: ``(B,)`` int, valid rows / columns per sample (0 allowed: an all-zero projection).

    Returns:
        ``(B, Kp, h, w)``, zero outside each sample's valid rectangle.
    """
    b, dev, dt = vh.shape[0], p.device, p.dtype

    def coords(n, valid: Tensor) -> Tensor:  # (B, n) normalised sampling positions, align_corners=False
        i = torch.arange(n, device=dev, dtype=dt)[None]
        return 2 * (i + 0.5) / valid.clamp_min(1).to(dt)[:, None] - 1

    ys, xs = coords(h, vh), coords(w, vw)
    grid = torch.stack(torch.broadcast_tensors(xs[:, None, :], ys[:, :, None]), -1)   # (B, h, w, 2), x first
    out = F.grid_sample(p[None].expand(b, -1, -1, -1), grid, mode='bilinear', padding_mode='border',
                        align_corners=False)
    inside = ((torch.arange(h, device=dev)[None] < vh[:, None])[:, :, None]
              & (torch.arange(w, device=dev)[None] < vw[:, None])[:, None, :])          # (B, h, w)
    return out * inside[:, None].to(dt)


class LinearMultiheadAttention(nn.Module):
    """mmcv-``MultiheadAttention``-compatible attention on a functional op.

    Args:
        embed_dims: channels ``C``.
        num_heads: heads ``H`` (head dim ``C / H``).
        attn_drop: dropout on the attention weights; only the softmax op has weights to drop, the
            linear ops ignore it.
        proj_drop: dropout after the output projection.
        dropout_layer: mmcv's residual-branch dropout config (``Dropout`` or ``DropPath``).
        batch_first: must be True (every DETR in mmdet 3.x is batch-first).
        attn_cfg: ``dict(type=name, **options)``; names in :data:`BRIDGE_ATTENTIONS`. Options:
            inline ``kernel``; taylorshift ``mode``, ``n0``, ``output_normalized`` (a learnable per-head
            temperature is created); linformer ``proj_len`` (64), ``ref_shape`` (reference key grid, for
            grid keys) or ``ref_len`` (reference key count, for a token sequence such as DETR's queries);
            performer ``num_features``; nystrom ``num_landmarks``, ``pinv_iters``; linear/relu/focused
            their op's keywords.
        grid_keys: the keys are an ``(h, w)`` feature grid (encoder self-attention, decoder
            cross-attention) given at call time as ``spatial_shape``; False for a plain token sequence
            (decoder self-attention over the object queries).
        qkv_bias: bias of the q/k/v projections.
        init_cfg: unused (kept for the mmcv signature); DETR re-initialises its transformers anyway.
        dropout: mmcv's deprecated alias, sets both ``attn_drop`` and the residual dropout.
    """

    def __init__(self, embed_dims: int, num_heads: int, attn_drop: float = 0., proj_drop: float = 0.,
                 dropout_layer: Optional[dict] = dict(type='Dropout', drop_prob=0.), batch_first: bool = True,
                 attn_cfg: Optional[dict] = None, grid_keys: bool = False, qkv_bias: bool = True,
                 init_cfg: Optional[dict] = None, dropout: Optional[float] = None) -> None:
        super().__init__()
        if not batch_first:
            raise ValueError('LinearMultiheadAttention: only batch_first=True is supported (as in mmdet 3.x DETRs)')
        if embed_dims % num_heads:
            raise ValueError(f'LinearMultiheadAttention: embed_dims {embed_dims} not divisible by {num_heads} heads')
        dropout_layer = copy.deepcopy(dict(dropout_layer)) if dropout_layer else None
        if dropout is not None:  # mmcv's behaviour for the deprecated argument
            attn_drop = dropout
            if dropout_layer is not None:
                dropout_layer['drop_prob'] = dropout
        self.embed_dims, self.num_heads, self.head_dims = embed_dims, num_heads, embed_dims // num_heads
        self.batch_first, self.grid_keys = True, grid_keys
        cfg = dict(copy.deepcopy(dict(attn_cfg)) if attn_cfg else dict(type='softmax'))
        self.attn_type = cfg.pop('type')
        if self.attn_type not in BRIDGE_ATTENTIONS:
            raise ValueError(f'LinearMultiheadAttention: unknown attention {self.attn_type!r}; '
                             f'known: {", ".join(BRIDGE_ATTENTIONS)}')
        self.q_proj = nn.Linear(embed_dims, embed_dims, bias=qkv_bias)
        self.k_proj = nn.Linear(embed_dims, embed_dims, bias=qkv_bias)
        self.v_proj = nn.Linear(embed_dims, embed_dims, bias=qkv_bias)
        self.out_proj = nn.Linear(embed_dims, embed_dims)
        self.attn_drop = float(attn_drop)
        self.proj_drop = nn.Dropout(proj_drop)
        if dropout_layer is None:
            self.dropout_layer = nn.Identity()
        else:
            from mmcv.cnn.bricks.drop import build_dropout  # mmcv is present wherever this is used
            self.dropout_layer = build_dropout(dropout_layer)
        self._setup_method(cfg)

    def _setup_method(self, cfg: dict) -> None:
        t = self.attn_type
        self.op_kwargs = {}
        if t == 'linformer':
            self.proj_len = int(cfg.pop('proj_len', 64))
            if self.grid_keys:
                rh, rw = cfg.pop('ref_shape', (32, 32))
                shape = (self.proj_len, int(rh), int(rw))
            else:
                shape = (self.proj_len, int(cfg.pop('ref_len', 100)))
            self.ref_tokens = math.prod(shape[1:])
            # official Linformer init: N(0, 1/k); DETR.init_weights re-initialises (xavier) anyway
            self.proj_k = nn.Parameter(torch.randn(shape) / math.sqrt(self.proj_len))
            self.proj_v = nn.Parameter(torch.randn(shape) / math.sqrt(self.proj_len))
        elif t == 'taylorshift':
            self.temperature = nn.Parameter(torch.ones(self.num_heads))
            self.op_kwargs = dict(mode=cfg.pop('mode', 'auto'), n0=cfg.pop('n0', None),
                                  output_normalized=cfg.pop('output_normalized', False))
        elif t == 'performer':
            m = cfg.pop('num_features', None) or max(self.head_dims,
                                                     int(self.head_dims * math.log(max(self.head_dims, 2))))
            self.register_buffer('features', orthogonal_random_features(int(m), self.head_dims))
        elif t == 'nystrom':
            self.op_kwargs = dict(num_landmarks=cfg.pop('num_landmarks', 64),
                                  pinv_iters=cfg.pop('pinv_iters', 6))
        self.op_kwargs.update(cfg)  # the op's own keywords (kernel=, eps=, focusing_factor=, ...)

    # ------------------------------------------------------------------ Linformer projections
    def _resized(self, p: Tensor, size: Sequence[int]) -> Tensor:
        """E or F resized to ``size`` ((h, w) or (n,)) and flattened to ``(Kp, prod(size))``.

        Scaled by ``ref_tokens / n`` so that a projected key stays a weighted *average* whatever the
        number of keys (the reference grid keeps its own weights).
        """
        n = math.prod(size)
        if tuple(p.shape[1:]) != tuple(size):
            mode = 'bilinear' if p.dim() == 3 else 'linear'
            p = F.interpolate(p[None], size=tuple(size), mode=mode, align_corners=False)[0]
        return p.reshape(p.shape[0], n) * (self.ref_tokens / n)

    def _linformer(self, q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor],
                   spatial_shape: Optional[Sequence[int]]) -> Tensor:
        nk = k.shape[2]
        if not self.grid_keys:
            e, f = self._resized(self.proj_k, (nk,)), self._resized(self.proj_v, (nk,))
            return linformer_attention(q, k, v, e, f, key_padding_mask=mask)
        if spatial_shape is None:
            raise ValueError('LinearMultiheadAttention(linformer, grid_keys=True) needs spatial_shape=(h, w) '
                             '(LinearDETR passes it down to its layers)')
        h, w = spatial_shape[0], spatial_shape[1]  # no int(): symbolic sizes stay symbolic under torch.compile
        if h * w != nk:
            raise ValueError(f'LinearMultiheadAttention: spatial_shape {(h, w)} does not match {nk} keys')
        e, f = self._resized(self.proj_k, (h, w)), self._resized(self.proj_v, (h, w))
        if mask is None:
            return linformer_attention(q, k, v, e, f)
        # per sample: E / F resized to its valid rectangle (exactly the projection it gets when alone); a sample
        # whose valid region is not a top-left rectangle keeps the full-grid one (its padded keys zeroed by the
        # op). Branch-free over the batch, so nothing waits on the device.
        vh, vw, is_rect = valid_rect(mask, h, w)
        scale = (self.ref_tokens / (vh * vw).clamp_min(1).to(e.dtype))[:, None, None]      # (B, 1, 1)
        is_rect = is_rect[:, None, None]
        e = torch.where(is_rect, resize_to_valid(self.proj_k, h, w, vh, vw).flatten(2) * scale, e)
        f = torch.where(is_rect, resize_to_valid(self.proj_v, h, w, vh, vw).flatten(2) * scale, f)
        return linformer_attention(q, k, v, e[:, None], f[:, None], key_padding_mask=mask)  # (B, 1, Kp, Nk)

    # ------------------------------------------------------------------ forward
    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor], attn_mask: Optional[Tensor],
                spatial_shape: Optional[Sequence[int]]) -> Tensor:
        t = self.attn_type
        if attn_mask is not None and t != 'softmax':
            raise ValueError(f'LinearMultiheadAttention: attn_mask is only supported by softmax, not {t!r}')
        if t == 'softmax':
            return softmax_attention(q, k, v, key_padding_mask=mask, attn_mask=attn_mask,
                                     dropout_p=self.attn_drop if self.training else 0.)
        if t == 'inline':
            return inline_attention(q, k, v, key_padding_mask=mask, **self.op_kwargs)
        if t == 'taylorshift':
            return taylor_attention(q, k, v, temperature=self.temperature, key_padding_mask=mask, **self.op_kwargs)
        if t == 'linformer':
            return self._linformer(q, k, v, mask, spatial_shape)
        if t == 'performer':
            return performer_attention(q, k, v, self.features.to(q.dtype), key_padding_mask=mask, **self.op_kwargs)
        fn = dict(linear=linear_attention, relu=relu_linear_attention, focused=focused_linear_attention,
                  nystrom=nystrom_attention)[t]
        return fn(q, k, v, key_padding_mask=mask, **self.op_kwargs)

    def forward(self, query: Tensor, key: Optional[Tensor] = None, value: Optional[Tensor] = None,
                identity: Optional[Tensor] = None, query_pos: Optional[Tensor] = None,
                key_pos: Optional[Tensor] = None, attn_mask: Optional[Tensor] = None,
                key_padding_mask: Optional[Tensor] = None, spatial_shape: Optional[Sequence[int]] = None,
                **kwargs) -> Tensor:
        """mmcv ``MultiheadAttention.forward`` semantics (batch-first).

        Args:
            query: ``(B, Nq, C)``.
            key, value: ``(B, Nk, C)``; default to ``query`` / ``key``.
            identity: residual, default ``query``.
            query_pos, key_pos: added to query / key (``key_pos`` defaults to ``query_pos`` when the shapes
                match, as in mmcv).
            attn_mask: ``(Nq, Nk)`` or broadcastable, softmax only (bool True = masked out).
            key_padding_mask: ``(B, Nk)`` bool, True = padding.
            spatial_shape: ``(h, w)`` of the key grid when ``grid_keys`` (Linformer uses it).

        Returns:
            ``identity + dropout_layer(proj_drop(out_proj(attention)))``, ``(B, Nq, C)``.
        """
        if key is None:
            key = query
        if value is None:
            value = key
        if identity is None:
            identity = query
        if key_pos is None and query_pos is not None and query_pos.shape == key.shape:
            key_pos = query_pos
        if query_pos is not None:
            query = query + query_pos
        if key_pos is not None:
            key = key + key_pos
        if key_padding_mask is not None:
            key_padding_mask = key_padding_mask.bool()
        heads = lambda x: x.unflatten(-1, (self.num_heads, self.head_dims)).transpose(1, 2)  # noqa: E731
        q, k, v = heads(self.q_proj(query)), heads(self.k_proj(key)), heads(self.v_proj(value))
        out = self._attend(q, k, v, key_padding_mask, attn_mask, spatial_shape)
        out = self.out_proj(out.transpose(1, 2).flatten(2))
        return identity + self.dropout_layer(self.proj_drop(out))

    def extra_repr(self) -> str:
        return (f'embed_dims={self.embed_dims}, num_heads={self.num_heads}, attn={self.attn_type}, '
                f'grid_keys={self.grid_keys}')
