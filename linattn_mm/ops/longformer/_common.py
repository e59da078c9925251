"""Blocked 2-D sliding-window softmax with extra keys: the engine of the local-global family.

Every grid query at ``(y, x)`` attends, in **one joint softmax**, to

* its window: the grid keys at ``(y + dy, x + dx)``, ``-ly <= dy <= ry``, ``-lx <= dx <= rx`` (``ly = wy // 2``,
  ``ry = (wy - 1) // 2``: a ``wy x wx`` neighbourhood, centred for odd sides), clipped at the borders;
* optionally random key blocks (BigBird), each key counted once even where a random block overlaps the window;
* optionally extra keys shared by all grid queries of a sample (global tokens, Long-Short landmarks).

How it stays linear without an unfold by ``w^2``: the grid is cut into ``by x bx`` query blocks; each block
attends to its key *tile*, the block plus a halo of ``ly / ry`` rows and ``lx / rx`` columns
(``(by + wy - 1) x (bx + wx - 1)`` keys), and a block-independent ``(Q, T)`` mask trims the tile to each query's
exact neighbourhood. Keys are replicated by ``T / Q`` (about 3.4 for ``w = b = 7``) instead of ``w^2`` (49), and
every block is one dense masked attention (a batch entry of ``scaled_dot_product_attention``, whose fused
kernels never hold the scores of the whole grid), as in ViL's sliding-chunk form (Zhang et al., 2021) and
Long-Short's segment tiles (Zhu et al., 2021). ``exact=False`` keeps the whole tile for every query of the block (the
block-level window of those papers).

Masks are exact: padded keys (``key_padding_mask``) and out-of-grid tile slots are masked out of the softmax
(padded keys and values are also zeroed first, so even non-finite garbage cannot reach a product), and a query
that sees no valid key at all gets zeros (never NaN, also in the gradients).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .._utils import crop_hw, is_exporting

IntPair = Union[int, Sequence[int]]


def pair(v: IntPair, name: str = 'size') -> Tuple[int, int]:
    """``7`` -> ``(7, 7)``; ``(7, 5)`` -> ``(7, 5)``; values must be >= 1."""
    p = (int(v), int(v)) if isinstance(v, (int, float)) else tuple(int(t) for t in v)
    if len(p) != 2 or min(p) < 1:
        raise ValueError(f'{name} must be a positive int or a pair of them, got {v!r}')
    return p


@dataclass(frozen=True)
class Geometry:
    """Grid, window, query blocks and key tiles of one call (all sizes in tokens)."""
    h: int
    w: int
    ly: int
    ry: int
    lx: int
    rx: int
    by: int
    bx: int

    @property
    def ny(self) -> int:
        return (self.h + self.by - 1) // self.by   # ceil without negative operands (ONNX division truncates)

    @property
    def nx(self) -> int:
        return (self.w + self.bx - 1) // self.bx

    @property
    def num_blocks(self) -> int:
        return self.ny * self.nx

    @property
    def block_tokens(self) -> int:
        return self.by * self.bx

    @property
    def tile_shape(self) -> Tuple[int, int]:
        return self.by + self.ly + self.ry, self.bx + self.lx + self.rx

    @property
    def tile_tokens(self) -> int:
        th, tw = self.tile_shape
        return th * tw


def geometry(hw: Sequence[int], window_size: IntPair, block_size: Optional[IntPair] = None) -> Geometry:
    """Geometry of an ``H x W`` grid; blocks default to the window and are clipped to the grid.

    Halo sides are clipped to ``H - 1`` / ``W - 1``: a longer reach only adds out-of-grid keys, so the
    neighbourhood is the same set and the tile is smaller on small grids. Exporting (:func:`is_exporting`),
    ``H`` and ``W`` stay symbolic and nothing is clipped (a clip is a branch on the size that the graph would
    freeze): the same key sets, so the same outputs, with out-of-grid tile slots masked.
    """
    wy, wx = pair(window_size, 'window_size')
    by, bx = pair(block_size if block_size is not None else (wy, wx), 'block_size')
    if is_exporting():
        return Geometry(h=hw[0], w=hw[1], ly=wy // 2, ry=(wy - 1) // 2, lx=wx // 2, rx=(wx - 1) // 2, by=by, bx=bx)
    h, w = int(hw[0]), int(hw[1])
    if h < 1 or w < 1:
        raise ValueError(f'hw_shape must be positive, got {tuple(hw)}')
    return Geometry(h=h, w=w, ly=min(wy // 2, h - 1), ry=min((wy - 1) // 2, h - 1),
                    lx=min(wx // 2, w - 1), rx=min((wx - 1) // 2, w - 1), by=min(by, h), bx=min(bx, w))


def check_grid(q: Tensor, k: Tensor, hw: Sequence[int], num_global: int, name: str) -> None:
    """q and k hold ``num_global`` tokens followed by the ``H * W`` grid tokens (self-attention)."""
    if len(hw) != 2:
        raise ValueError(f'{name}: hw_shape must be (H, W), got {hw!r}')
    if num_global < 0:
        raise ValueError(f'{name}: num_global must be >= 0, got {num_global}')
    if is_exporting():  # symbolic sizes: int() would freeze them (the layers have checked their input)
        return
    n = num_global + int(hw[0]) * int(hw[1])
    if q.shape[2] != n or k.shape[2] != n:
        raise ValueError(f'{name}: q has {q.shape[2]} and k has {k.shape[2]} tokens, but num_global + H*W = '
                         f'{num_global} + {hw[0]}*{hw[1]} = {n}; both must hold the global tokens followed by '
                         f'the grid flattened row-major')


# ------------------------------------------------------------------------------------------- layout
def to_blocks(x: Tensor, g: Geometry, value: float = 0.) -> Tensor:
    """Grid tokens ``(..., H*W, C)`` -> ``(..., nblk, by*bx, C)``; the grid is padded to whole blocks."""
    lead, c = x.shape[:-2], x.shape[-1]
    x = x.reshape(-1, g.h, g.w, c)
    x = F.pad(x, (0, 0, 0, g.nx * g.bx - g.w, 0, g.ny * g.by - g.h), value=value)
    x = x.view(-1, g.ny, g.by, g.nx, g.bx, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(*lead, g.num_blocks, g.block_tokens, c)


def from_blocks(x: Tensor, g: Geometry) -> Tensor:
    """Inverse of :func:`to_blocks`, cropped back to the grid: ``(..., nblk, Q, C)`` -> ``(..., H*W, C)``."""
    lead, c = x.shape[:-3], x.shape[-1]
    x = x.reshape(-1, g.ny, g.nx, g.by, g.bx, c).permute(0, 1, 3, 2, 4, 5)
    x = crop_hw(x.reshape(-1, g.ny * g.by, g.nx * g.bx, c), g.h, g.w, dims=(1, 2))
    return x.reshape(*lead, g.h * g.w, c)


def tile_index(n_blocks, block: int, tile: int, device) -> Tensor:
    """``(n_blocks * tile,)`` rows (or columns) of the halo-padded grid that make up the tiles along one axis:
    tile i covers ``[i * block, i * block + tile)``. Index arithmetic on ``arange``, so the block count may be
    symbolic (an ``unfold`` would need it as a Python int)."""
    return (torch.arange(n_blocks, device=device)[:, None] * block + torch.arange(tile, device=device)).flatten()


def to_tiles(x: Tensor, g: Geometry, value: float = 0.) -> Tensor:
    """Grid tokens ``(..., H*W, C)`` -> key tiles ``(..., nblk, T, C)``: each block plus its halo.

    One copy of ``T / Q`` times the input (the halo factor); slots outside the grid hold ``value``. The grid is
    padded by the halo (and to whole blocks); eager: two ``unfold`` views and one copy. Exporting: ``unfold``
    needs the block counts as Python ints, so two ``index_select``s of :func:`tile_index` pick every tile's rows
    and columns instead (the same tensor; on the CPU it is slower forward and faster backward).
    """
    lead, c = x.shape[:-2], x.shape[-1]
    th, tw = g.tile_shape
    x = x.reshape(-1, g.h, g.w, c)
    x = F.pad(x, (0, 0, g.lx, g.nx * g.bx - g.w + g.rx, g.ly, g.ny * g.by - g.h + g.ry), value=value)
    if not is_exporting():
        x = x.unfold(1, th, g.by).unfold(2, tw, g.bx).permute(0, 1, 2, 4, 5, 3)   # (M, ny, nx, th, tw, C)
        return x.reshape(*lead, g.num_blocks, th * tw, c)
    x = x.index_select(1, tile_index(g.ny, g.by, th, x.device))       # (M, ny*th, Wp, C)
    x = x.index_select(2, tile_index(g.nx, g.bx, tw, x.device))       # (M, ny*th, nx*tw, C)
    x = x.view(-1, g.ny, th, g.nx, tw, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(*lead, g.num_blocks, th * tw, c)


def tile_padding(key_padding_mask: Optional[Tensor], b: int, g: Geometry, device) -> Tensor:
    """``(B, nblk, T)`` bool, True where a tile slot is outside the grid or a padded key."""
    pad = torch.zeros(b, g.h * g.w, 1, dtype=torch.bool, device=device) if key_padding_mask is None \
        else key_padding_mask[..., None]
    return to_tiles(pad, g, value=True)[..., 0]


def window_offsets(g: Geometry, device) -> Tuple[Tensor, Tensor]:
    """Row / column of every query slot ``(Q,)`` and tile slot ``(T,)`` relative to the block's top-left
    query (tile slots start ``ly`` rows and ``lx`` columns before it)."""
    qy, qx = torch.meshgrid(torch.arange(g.by, device=device), torch.arange(g.bx, device=device), indexing='ij')
    th, tw = g.tile_shape
    ty, tx = torch.meshgrid(torch.arange(th, device=device) - g.ly, torch.arange(tw, device=device) - g.lx,
                            indexing='ij')
    return (qy.flatten(), qx.flatten()), (ty.flatten(), tx.flatten())


def in_window(dy: Tensor, dx: Tensor, g: Geometry) -> Tensor:
    """Is a key at offset ``(dy, dx)`` from its query inside the query's window."""
    return (dy >= -g.ly) & (dy <= g.ry) & (dx >= -g.lx) & (dx <= g.rx)


def tile_window_mask(g: Geometry, device) -> Tensor:
    """``(Q, T)`` bool: tile slot inside the exact window of query slot (the same for every block)."""
    (qy, qx), (ty, tx) = window_offsets(g, device)
    return in_window(ty[None, :] - qy[:, None], tx[None, :] - qx[:, None], g)


def static_mask(g: Geometry, exact: bool, num_extra: int, device, dtype) -> Tensor:
    """``(nblk, 1, Q, T + E)`` additive mask (0 / -inf) of everything that depends on the geometry alone: tile
    slots outside the grid, outside the exact window, and ``E`` always-visible extra keys. Without padding or
    random blocks it is the whole mask, shared by every sample and head. Cached in eager (built as a normal tensor
    even under ``torch.inference_mode`` so that a later training forward may save it for backward); exporting, it
    is computed in the graph from the symbolic grid."""
    if is_exporting():
        return _static_mask(g, exact, num_extra, device, dtype)
    with torch.inference_mode(False), torch.no_grad():
        return _cached_static_mask(g, exact, num_extra, device, dtype)


def _static_mask(g: Geometry, exact: bool, num_extra: int, device, dtype) -> Tensor:
    ok = ~tile_padding(None, 1, g, device)[0][:, None, :]             # (nblk, 1, T)
    if exact:
        ok = ok & tile_window_mask(g, device)                          # (nblk, Q, T)
    ok = ok.expand(g.num_blocks, g.block_tokens, g.tile_tokens)
    ok = torch.cat([ok, ok.new_ones(g.num_blocks, g.block_tokens, num_extra)], -1)
    return torch.zeros(ok.shape, dtype=dtype, device=device).masked_fill(~ok, float('-inf'))[:, None]


_cached_static_mask = functools.lru_cache(maxsize=16)(_static_mask)


# ------------------------------------------------------------------------------------------- random blocks
def random_key_blocks(k: Tensor, v: Tensor, pad: Tensor, rand_blocks: Tensor, g: Geometry,
                      exact: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """Gather BigBird's random key blocks for every query block.

    Args:
        k, v: grid keys / values ``(B, H, N, D)`` (padding already zeroed).
        pad: ``(B, N)`` bool key padding (True = padding).
        rand_blocks: ``(H, nblk, r)`` long indices of key blocks; ``-1`` = an empty slot.
        exact: dedupe against the exact per-query window (else against the block's whole tile).

    Returns:
        keys ``(B*H, nblk, r*Q, D)``, values ``(B*H, nblk, r*Q, Dv)`` and a ``(nblk, B, H, Q|1, r*Q)`` bool validity:
        in the grid, not padding, and not already in the query's window or tile (so a key that two parts of the
        pattern share is counted once).
    """
    b, nh = k.shape[:2]
    heads = torch.arange(nh, device=k.device)[:, None, None]
    empty = rand_blocks < 0                                            # (H, nblk, r): no block in this slot
    rand_blocks = rand_blocks.clamp_min(0)
    kr = to_blocks(k, g)[:, heads, rand_blocks]                        # (B, H, nblk, r, Q, D)
    vr = to_blocks(v, g)[:, heads, rand_blocks]
    padb = to_blocks(pad[..., None], g, value=True)[..., 0]            # (B, nblk, Q)
    valid = ~(padb[:, rand_blocks] | empty[..., None]).flatten(-2)     # (B, H, nblk, r*Q)
    # is key (ky, kx) of random block j inside the window of query (qy, qx) of block i? Rows and columns
    # separately: the offset is (j - i) * block + (k - q) along each axis.
    blk = torch.arange(g.num_blocks, device=k.device)
    iy, ix = blk // g.nx, blk % g.nx                                   # (nblk,)
    jy, jx = iy[rand_blocks], ix[rand_blocks]                          # (H, nblk, r)
    ay, ax = torch.arange(g.by, device=k.device), torch.arange(g.bx, device=k.device)
    if exact:
        dy = ((jy - iy[:, None]) * g.by)[..., None, None] + ay - ay[:, None]          # (H, nblk, r, qy, ky)
        dx = ((jx - ix[:, None]) * g.bx)[..., None, None] + ax - ax[:, None]
        row_in, col_in = (dy >= -g.ly) & (dy <= g.ry), (dx >= -g.lx) & (dx <= g.rx)
        seen = row_in[..., :, None, :, None] & col_in[..., None, :, None, :]          # (H, nblk, r, qy, qx, ky, kx)
        seen = seen.permute(0, 1, 3, 4, 2, 5, 6).reshape(nh, g.num_blocks, g.block_tokens, -1)
    else:
        dy = ((jy - iy[:, None]) * g.by)[..., None] + ay                                # key row - block top
        dx = ((jx - ix[:, None]) * g.bx)[..., None] + ax
        row_in, col_in = (dy >= -g.ly) & (dy < g.by + g.ry), (dx >= -g.lx) & (dx < g.bx + g.rx)
        seen = (row_in[..., :, None] & col_in[..., None, :]).flatten(-3)[:, :, None, :]  # (H, nblk, 1, r*Q)
    ok = valid[:, :, :, None, :] & ~seen                               # (B, H, nblk, Q|1, r*Q)
    return kr.flatten(3, 4).flatten(0, 1), vr.flatten(3, 4).flatten(0, 1), ok.permute(2, 0, 1, 3, 4)


# ------------------------------------------------------------------------------------------- the op
def window_softmax(q: Tensor, k: Tensor, v: Tensor, g: Geometry, key_padding_mask: Optional[Tensor] = None,
                   exact: bool = True, scale: Optional[float] = None, extra_k: Optional[Tensor] = None,
                   extra_v: Optional[Tensor] = None, extra_padding_mask: Optional[Tensor] = None,
                   rand_blocks: Optional[Tensor] = None, dropout_p: float = 0.) -> Tensor:
    """Grid queries attend to their window (+ random blocks) + extra keys in one softmax.

    Every query block with its key set (tile, random blocks, extra keys) is one batch entry of
    ``scaled_dot_product_attention`` under a mask, laid out ``(nblk, B*H, ...)`` so that the geometry-only mask
    (:func:`static_mask`) broadcasts over samples and heads; the fused kernel keeps a block's ``Q x L`` scores in
    its working memory (no scores tensor for the whole grid).

    Args:
        q, k: grid tokens ``(B, H, N, D)``, ``N = H*W`` row-major; v: ``(B, H, N, Dv)``.
        g: :func:`geometry` of the grid.
        key_padding_mask: ``(B, N)`` bool, True = padded grid key.
        exact: trim each block's tile to the query's own window (else the whole tile).
        scale: score scale, ``D ** -0.5`` by default.
        extra_k, extra_v: ``(B, H, E, D)`` / ``(B, H, E, Dv)`` keys every grid query also sees.
        extra_padding_mask: ``(B, E)`` bool, True = extra key excluded.
        rand_blocks: ``(H, nblk, r)`` long, random key blocks per query block (BigBird).
        dropout_p: dropout on the attention weights.

    Returns:
        ``(B, H, N, Dv)``.
    """
    b, nh, n, d = q.shape
    dv = v.shape[-1]
    nb, nq = g.num_blocks, g.block_tokens
    if key_padding_mask is not None:  # garbage (even inf) in padded tokens must not reach any product
        k = k.masked_fill(key_padding_mask[:, None, :, None], 0.)
        v = v.masked_fill(key_padding_mask[:, None, :, None], 0.)
    qb = to_blocks(q.reshape(b * nh, n, d), g).transpose(0, 1)        # (nblk, B*H, Q, D)
    keys = [to_tiles(k.reshape(b * nh, n, d), g)]                      # (B*H, nblk, T, D)
    vals = [to_tiles(v.reshape(b * nh, n, dv), g)]
    use_rand = rand_blocks is not None and rand_blocks.shape[-1] > 0
    if use_rand:
        pad = torch.zeros(b, n, dtype=torch.bool, device=q.device) if key_padding_mask is None else key_padding_mask
        kr, vr, ok_r = random_key_blocks(k, v, pad, rand_blocks.expand(nh, -1, -1), g, exact)
        keys.append(kr)
        vals.append(vr)
    e = 0 if extra_k is None else extra_k.shape[2]
    if e:
        keys.append(extra_k.reshape(b * nh, 1, e, d).expand(-1, nb, -1, -1))
        vals.append(extra_v.reshape(b * nh, 1, e, dv).expand(-1, nb, -1, -1))
    kk = torch.cat(keys, 2).transpose(0, 1)                            # (nblk, B*H, L, D)
    vv = torch.cat(vals, 2).transpose(0, 1)

    row_ok = None
    if key_padding_mask is None and extra_padding_mask is None and not use_rand:
        mask = static_mask(g, exact, e, q.device, q.dtype)            # (nblk, 1, Q, T + E): shared, cached
    else:  # bool (nblk, B, H|1, Q, L): tile part, random part, extra part
        tile_ok = ~tile_padding(key_padding_mask, b, g, q.device).transpose(0, 1)[:, :, None, None, :]
        parts: List[Tensor] = [tile_ok & tile_window_mask(g, q.device) if exact else tile_ok]
        if use_rand:
            parts.append(ok_r)
        if e:
            ok_e = torch.ones(b, e, dtype=torch.bool, device=q.device) if extra_padding_mask is None \
                else ~extra_padding_mask
            parts.append(ok_e[None, :, None, None, :])
        hm = nh if use_rand else 1
        mask = torch.cat([m.expand(nb, b, hm, nq, m.shape[-1]) for m in parts], -1)
        if hm == 1 and nh > 1:
            mask = mask.expand(nb, b, nh, nq, mask.shape[-1])
        mask = mask.reshape(nb, b * nh, nq, -1)
        if key_padding_mask is not None or extra_padding_mask is not None:
            # a query without any valid key: let it see everything (finite), zero it below; unconditionally,
            # as a branch on bool(row_ok.all()) would be a host sync
            row_ok = mask.any(-1, keepdim=True)
            mask = mask | ~row_ok
    out = F.scaled_dot_product_attention(qb, kk.to(qb.dtype), vv.to(qb.dtype), attn_mask=mask,
                                         dropout_p=dropout_p, scale=scale)          # (nblk, B*H, Q, Dv)
    if row_ok is not None:
        out = torch.where(row_ok, out, out.new_zeros(()))
    return from_blocks(out.transpose(0, 1), g).view(b, nh, n, dv).to(v.dtype)
