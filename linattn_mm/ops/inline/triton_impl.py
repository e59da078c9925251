"""Fused Triton kernels for non-causal InLine attention (identity kernel), forward and backward.

Reference: D. Han et al., "Bridging the Divide: Reconsidering Softmax and Linear Attention", NeurIPS 2024.
With s = D ** -0.5 and N the number of valid keys of the sample (``key_padding_mask`` True = padding):

    o_i = mean(V) + q_i^T S,     S = s * (K^T V / N - mean(K)^T mean(V))          (D x Dv per head)

which is the materialised ``w_ij = 1/N + (s/N)(q_i . k_j - q_i . mean(K))`` of ``naive.py``. A sample with no
valid key has S = 0 and mean(V) = 0, hence a zero output (and zero gradients), without a special case.
Other feature maps (relu, exp, ...) are applied by the caller before this op.

Passes (every pass is a Triton kernel; e = bytes per element of the I/O dtype; sizes per head):

* forward, reduction ``_reduce_kernel(x=K, y=V)``: grid ``(B*H, splits)``; program (bh, j) walks its own
  contiguous run of ``REDUCE_BLOCK_N``-token blocks and accumulates, in fp32 over valid keys, the count,
  mean(K), mean(V) and the co-moment of K and V (centred ``K^T V``, see Numerics). Splitting the token axis
  (not only batch x heads, as fla's bidirectional kernels do) keeps a GPU busy at batch 1 with 2-16 heads.
  Reads ``Nk (D + Dv) e`` (+ Nk mask bytes); writes ``splits (D Dv + D + Dv + 1) 4`` bytes of partials.
* forward, combine ``_combine_fwd_kernel``: grid ``(B*H,)``; merges the per-split statistics (deterministic,
  no atomics) and writes S, mean(K), mean(V), 1/N. Reads the partials once; cheap because ``splits`` is
  capped so that each reduction program covers >= ``MIN_TOKENS_PER_SPLIT`` tokens.
* forward, apply ``_affine_kernel(x=Q, W=S, bias=mean(V))``: grid ``(B*H, cdiv(Nq, BLOCK_N))``; reads Q once,
  writes O once: ``Nq (D + Dv) e``. O is written in ``(B, Nq, H, Dv)`` memory and returned as a
  ``(B, H, Nq, Dv)`` view, so merging heads afterwards is free.
* backward, one fused pass over queries ``_reduce_kernel(x=Q, y=dO, W=S^T)``: reads Q and dO once, writes
  ``dQ = dO S^T`` and accumulates ``dS = sum q^T dO`` and ``sum dO``: ``Nq (2 D + Dv) e``.
* backward, combine ``_combine_bwd_kernel``: grid ``(B*H,)``; the chain rule through the means gives
  ``dK = V A + a`` and ``dV = K B + b`` with ``A = (s/N) dS^T``, ``B = (s/N) dS``,
  ``a = -(s/N) dS mean(V)``, ``b = (sum dO - s mean(K) dS) / N``.
* backward, two apply passes ``_affine_kernel(x=V, W=A, bias=a)`` and ``(x=K, W=B, bias=b)``: read K and V
  once, write dK and dV once, padded keys get exact zeros: ``2 Nk (D + Dv) e``.

Launches: 3 kernels forward, 4 backward (plus allocations). Traffic ~ ``(Nq + Nk)(D + Dv) e`` forward (the
minimum: each tensor touched once) and ``Nq (2D + Dv) e + 2 Nk (D + Dv) e`` backward, versus several full
passes per tensor in plain torch.

Numerics: fp16/bf16/fp32 I/O, fp32 accumulation. The K/V reduction never forms the raw K^T V: each token
block's co-moment is taken about its own means (see ``_reduce_kernel``), and blocks, then splits, are merged
with Chan et al.'s parallel co-moment update: ``S = s M2 / N``, ``M2 = sum (k - mean K)^T (v - mean V)``.
This is the matrix ``s (K^T V / N - mean(K)^T mean(V))`` without its cancellation when the means dominate
the spread (positive feature maps, un-normalised activations); the torch path gets the same by centring K.
fp32 accumulators cannot overflow, so the 1/sqrt(N) pre-scaling of the half-precision torch path is not
needed. Half inputs enter the dots as they are (each block's mean product is removed in fp32), and the fp32
S is split into hi + lo parts in the input dtype for the apply passes (two tensor-core dots, see
``_dot_state``), so S is not rounded to 8 bits. fp32 inputs use ``'ieee'`` dots unless
``torch.backends.cuda.matmul.allow_tf32`` is set (same rule as torch's matmul).

Supported: CUDA (or CPU under ``TRITON_INTERPRET=1``), fp16/bf16/fp32, any N (tails are masked), any
head dims D, Dv <= 128 (padded on chip to a power of two >= 16; 16..128 powers of two waste nothing).
:func:`linattn_mm.ops.backend.resolve_backend` sends everything else to the torch path.
"""
from __future__ import annotations

import functools
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..backend import check_triton_inputs

# Tuning constants. The GPU_* block sizes come from a sweep on an H100 (bf16, 65,536 tokens, 128 heads, D 32/64:
# reduction blocks of 256 tokens took the forward from ~1.5 to 2.2 (D 32) and 2.7 TB/s (D 64) against a
# measured 2.95 TB/s copy); they apply on CUDA to fp16/bf16 with both head dims <= 64. Wider heads and fp32
# (tiles too big for registers/shared memory at 256 tokens) and the CPU interpreter use the small blocks.
REDUCE_BLOCK_N = 64         # tokens per tl.dot step in the reduction passes
APPLY_BLOCK_N = 64          # tokens per program in the apply passes
GPU_REDUCE_BLOCK_N = 256
GPU_APPLY_BLOCK_N = 128
MIN_TOKENS_PER_SPLIT = 512  # keeps fp32 partial traffic <~ 10% of the K/V reads at D = Dv = 64
PROGRAMS_PER_SM = 2         # reduction grid target: B*H*splits ~ PROGRAMS_PER_SM * SM count


@triton.jit
def _dot_state(x, w, PREC: tl.constexpr, UPCAST: tl.constexpr):
    """``x @ w`` for tokens ``x`` in the I/O dtype and a per-head fp32 state ``w``, fp32 result.

    Half precision: ``w = w_hi + w_lo`` (both in the I/O dtype) and two tensor-core dots, so the state keeps
    ~16 mantissa bits instead of bf16's 8; the passes stay memory-bound (2 D Dv FLOP/token x 2 is far below
    the ridge point for D, Dv <= 128). fp32: one dot at ``PREC``.
    """
    if x.dtype == tl.float32:
        acc = tl.dot(x, w, input_precision=PREC)
    else:
        w_hi = w.to(x.dtype)
        w_lo = (w - w_hi.to(tl.float32)).to(x.dtype)
        if UPCAST:
            xf = x.to(tl.float32)
            acc = tl.dot(xf, w_hi.to(tl.float32), input_precision='ieee')
            acc = tl.dot(xf, w_lo.to(tl.float32), acc, input_precision='ieee')
        else:
            acc = tl.dot(x, w_hi)
            acc = tl.dot(x, w_lo, acc)
    return acc


@triton.jit
def _reduce_kernel(
        x_ptr, y_ptr, pad_ptr,          # x (B,H,N,DX), y (B,H,N,DY), pad (B,N) uint8 (1 = padding)
        xy_ptr, sx_ptr, sy_ptr, cnt_ptr,  # fp32 partials (BH,S,BDX,BDY), (BH,S,BDX), (BH,S,BDY), (BH,S)
        w_ptr, out_ptr,                 # optional fused out = y @ w^T; w fp32 (BH,BDX,BDY), out (B,H,N,DX)
        H, N, DX, DY, blocks_per_prog,
        sxb, sxh, sxn, sxd, syb, syh, syn, syd, spb, spn, sob, soh, son, sod,
        HAS_PAD: tl.constexpr, CENTRED: tl.constexpr, WRITE_YW: tl.constexpr,
        PREC: tl.constexpr, UPCAST: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_DX: tl.constexpr, BLOCK_DY: tl.constexpr):
    """Statistics of one run of token blocks (valid rows only).

    ``CENTRED`` (forward, x = K, y = V): count n, means of x and y, and the co-moment
    ``M2 = sum (x - mean x)^T (y - mean y)``. Each block's co-moment is taken about its own means (fp32: centred
    before the dot; fp16/bf16: exact inputs in the dot, minus ``n m_x m_y^T`` in fp32) and merged into the
    running result with Chan et al.'s update, so ``K^T V / N - mean(K)^T mean(V)`` does not cancel at the scale
    of N, however large the means are relative to the spread (positive feature maps, raw activations).
    Otherwise (backward, x = Q, y = dO): raw ``sum x^T y`` and ``sum y`` (nothing is subtracted there).
    """
    bh = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    nsplit = tl.num_programs(1)
    b = bh // H
    h = bh % H
    rdx = tl.arange(0, BLOCK_DX)
    rdy = tl.arange(0, BLOCK_DY)
    x_base = x_ptr + b * sxb + h * sxh
    y_base = y_ptr + b * syb + h * syh
    acc = tl.zeros((BLOCK_DX, BLOCK_DY), dtype=tl.float32)
    acc_x = tl.zeros((BLOCK_DX,), dtype=tl.float32)
    acc_y = tl.zeros((BLOCK_DY,), dtype=tl.float32)
    n_run = tl.sum(tl.zeros((BLOCK_N,), dtype=tl.float32), axis=0)   # an fp32 scalar (loop-carried)
    if WRITE_YW:  # the (BDY, BDX) transpose of the stored (BDX, BDY) state: a tiny strided load
        w = tl.load(w_ptr + bh * (BLOCK_DX * BLOCK_DY) + rdx[None, :] * BLOCK_DY + rdy[:, None])
        o_base = out_ptr + b * sob + h * soh
    n0 = split * blocks_per_prog * BLOCK_N
    for i in range(0, blocks_per_prog):
        rn = n0 + i * BLOCK_N + tl.arange(0, BLOCK_N)
        keep = rn < N
        if HAS_PAD:
            pad = tl.load(pad_ptr + b * spb + rn * spn, mask=keep, other=1)
            keep = keep & (pad == 0)
        x = tl.load(x_base + rn[:, None] * sxn + rdx[None, :] * sxd,
                    mask=keep[:, None] & (rdx[None, :] < DX), other=0.)
        y = tl.load(y_base + rn[:, None] * syn + rdy[None, :] * syd,
                    mask=keep[:, None] & (rdy[None, :] < DY), other=0.)
        if CENTRED:
            n_blk = tl.sum(keep.to(tl.float32), axis=0)
            m_x = tl.sum(x.to(tl.float32), axis=0) / tl.maximum(n_blk, 1.0)
            m_y = tl.sum(y.to(tl.float32), axis=0) / tl.maximum(n_blk, 1.0)
            if x.dtype == tl.float32:
                # centre before the dot (where, not a multiply: padded rows stay exactly zero)
                x = tl.where(keep[:, None], x - m_x[None, :], 0.)
                y = tl.where(keep[:, None], y - m_y[None, :], 0.)
            else:
                # half inputs: rounding centred values back to 8/11 bits would cost more than it saves, so
                # the dot below takes the exact inputs and the block's mean product is removed in fp32
                acc -= n_blk * (m_x[:, None] * m_y[None, :])
            # Chan's merge of (n_run, acc_x, acc_y, acc) with this block's (n_blk, m_x, m_y, M2_blk)
            n_new = n_run + n_blk
            r = n_blk / tl.maximum(n_new, 1.0)
            d_x = m_x - acc_x
            d_y = m_y - acc_y
            acc += (n_run * r) * (d_x[:, None] * d_y[None, :])
            acc_x += d_x * r
            acc_y += d_y * r
            n_run = n_new
        if UPCAST:
            acc = tl.dot(tl.trans(x).to(tl.float32), y.to(tl.float32), acc, input_precision='ieee')
        else:
            acc = tl.dot(tl.trans(x), y, acc, input_precision=PREC)
        if not CENTRED:
            acc_y += tl.sum(y.to(tl.float32), axis=0)
        if WRITE_YW:
            o = _dot_state(y, w, PREC, UPCAST)
            tl.store(o_base + rn[:, None] * son + rdx[None, :] * sod, o.to(out_ptr.dtype.element_ty),
                     mask=(rn[:, None] < N) & (rdx[None, :] < DX))
    p = bh * nsplit + split
    tl.store(xy_ptr + p * (BLOCK_DX * BLOCK_DY) + rdx[:, None] * BLOCK_DY + rdy[None, :], acc)
    tl.store(sy_ptr + p * BLOCK_DY + rdy, acc_y)
    if CENTRED:
        tl.store(sx_ptr + p * BLOCK_DX + rdx, acc_x)
        tl.store(cnt_ptr + p, n_run)


@triton.jit
def _combine_fwd_kernel(
        xy_ptr, mx_ptr, my_ptr, cnt_ptr,     # per-split (M2, mean K, mean V, count) of the K/V reduction
        state_ptr, mk_ptr, mv_ptr, inv_ptr,  # out: S (BH,BDX,BDY), mean K (BH,BDX), mean V (BH,BDY), 1/N (BH,)
        nsplit, scale,
        BLOCK_DX: tl.constexpr, BLOCK_DY: tl.constexpr):
    """One program per head: Chan-merge the splits; S = s M2 / N = s (K^T V / N - mean(K)^T mean(V)).

    A head without valid keys (N = 0) gets S = 0, zero means and 1/N = 0, hence zero outputs and gradients.
    """
    bh = tl.program_id(0).to(tl.int64)
    rdx = tl.arange(0, BLOCK_DX)
    rdy = tl.arange(0, BLOCK_DY)
    tile = rdx[:, None] * BLOCK_DY + rdy[None, :]
    m2 = tl.zeros((BLOCK_DX, BLOCK_DY), dtype=tl.float32)
    mk = tl.zeros((BLOCK_DX,), dtype=tl.float32)
    mv = tl.zeros((BLOCK_DY,), dtype=tl.float32)
    n = tl.sum(tl.zeros((BLOCK_DY,), dtype=tl.float32), axis=0)
    for j in range(0, nsplit):
        p = bh * nsplit + j
        n_j = tl.load(cnt_ptr + p)
        n_new = n + n_j
        r = n_j / tl.maximum(n_new, 1.0)
        d_k = tl.load(mx_ptr + p * BLOCK_DX + rdx) - mk
        d_v = tl.load(my_ptr + p * BLOCK_DY + rdy) - mv
        m2 += tl.load(xy_ptr + p * (BLOCK_DX * BLOCK_DY) + tile) + (n * r) * (d_k[:, None] * d_v[None, :])
        mk += d_k * r
        mv += d_v * r
        n = n_new
    inv = tl.where(n > 0.5, 1.0 / tl.maximum(n, 1.0), 0.0)
    tl.store(state_ptr + bh * (BLOCK_DX * BLOCK_DY) + tile, (scale * inv) * m2)
    tl.store(mk_ptr + bh * BLOCK_DX + rdx, mk)
    tl.store(mv_ptr + bh * BLOCK_DY + rdy, mv)
    tl.store(inv_ptr + bh, inv)


@triton.jit
def _combine_bwd_kernel(
        ds_ptr, dosum_ptr,                  # partials of the (Q, dO) reduction: (BH,S,BDX,BDY), (BH,S,BDY)
        mk_ptr, mv_ptr, inv_ptr,            # saved by the forward
        wk_ptr, bk_ptr, wv_ptr, bv_ptr,     # out: dK = V wk + bk, wk (BH,BDY,BDX); dV = K wv + bv, wv (BH,BDX,BDY)
        nsplit, scale,
        BLOCK_DX: tl.constexpr, BLOCK_DY: tl.constexpr):
    """One program per head: the chain rule through S and the two means, (D x Dv)-sized."""
    bh = tl.program_id(0).to(tl.int64)
    rdx = tl.arange(0, BLOCK_DX)
    rdy = tl.arange(0, BLOCK_DY)
    tile = rdx[:, None] * BLOCK_DY + rdy[None, :]
    ds = tl.zeros((BLOCK_DX, BLOCK_DY), dtype=tl.float32)
    gsum = tl.zeros((BLOCK_DY,), dtype=tl.float32)
    for j in range(0, nsplit):
        p = bh * nsplit + j
        ds += tl.load(ds_ptr + p * (BLOCK_DX * BLOCK_DY) + tile)
        gsum += tl.load(dosum_ptr + p * BLOCK_DY + rdy)
    mk = tl.load(mk_ptr + bh * BLOCK_DX + rdx)
    mv = tl.load(mv_ptr + bh * BLOCK_DY + rdy)
    inv = tl.load(inv_ptr + bh)
    g_mv = gsum - scale * tl.sum(mk[:, None] * ds, axis=0)     # dL/d mean(V) (direct + through S)
    g_mk = -scale * tl.sum(ds * mv[None, :], axis=1)           # dL/d mean(K)
    w = (scale * inv) * ds                                     # (s/N) dS
    tl.store(wv_ptr + bh * (BLOCK_DX * BLOCK_DY) + tile, w)
    tl.store(wk_ptr + bh * (BLOCK_DX * BLOCK_DY) + rdy[None, :] * BLOCK_DX + rdx[:, None], w)  # transposed
    tl.store(bk_ptr + bh * BLOCK_DX + rdx, g_mk * inv)
    tl.store(bv_ptr + bh * BLOCK_DY + rdy, g_mv * inv)


@triton.jit
def _affine_kernel(
        x_ptr, w_ptr, bias_ptr, pad_ptr, out_ptr,   # x (B,H,N,DIN), w fp32 (BH,BDIN,BDOUT), bias fp32 (BH,BDOUT)
        H, N, DIN, DOUT,
        sxb, sxh, sxn, sxd, sob, soh, son, sod, spb, spn,
        HAS_BIAS: tl.constexpr, HAS_PAD: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_DIN: tl.constexpr, BLOCK_DOUT: tl.constexpr):
    """out = x @ w + bias per token block; padded rows get exact zeros."""
    bh = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    b = bh // H
    h = bh % H
    rn = blk * BLOCK_N + tl.arange(0, BLOCK_N)
    rin = tl.arange(0, BLOCK_DIN)
    rout = tl.arange(0, BLOCK_DOUT)
    in_n = rn < N
    keep = in_n
    if HAS_PAD:
        pad = tl.load(pad_ptr + b * spb + rn * spn, mask=in_n, other=1)
        keep = in_n & (pad == 0)
    x = tl.load(x_ptr + b * sxb + h * sxh + rn[:, None] * sxn + rin[None, :] * sxd,
                mask=keep[:, None] & (rin[None, :] < DIN), other=0.)
    w = tl.load(w_ptr + bh * (BLOCK_DIN * BLOCK_DOUT) + rin[:, None] * BLOCK_DOUT + rout[None, :])
    acc = _dot_state(x, w, PREC, UPCAST)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + bh * BLOCK_DOUT + rout)[None, :]
        if HAS_PAD:
            acc = tl.where(keep[:, None], acc, 0.)
    tl.store(out_ptr + b * sob + h * soh + rn[:, None] * son + rout[None, :] * sod,
             acc.to(out_ptr.dtype.element_ty), mask=in_n[:, None] & (rout[None, :] < DOUT))


def _pow2_block(d: int) -> int:
    return max(16, triton.next_power_of_2(d))


def _precision(t: Tensor) -> str:
    if t.dtype == torch.float32 and t.is_cuda and torch.backends.cuda.matmul.allow_tf32:
        return 'tf32'
    return 'ieee'


def _upcast(t: Tensor) -> bool:
    # Triton 3.8's CPU interpreter computes bf16 tl.dot wrongly (~1e10 errors), so there the bf16 operands are
    # widened to fp32 (after the same bf16 rounding of S's hi/lo parts). Compiled GPU kernels never do this.
    return t.device.type == 'cpu' and t.dtype == torch.bfloat16


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _gpu_tuned_blocks(x: Tensor, bdx: int, bdy: int) -> bool:
    """Whether the H100-tuned (large) token blocks apply: fp16/bf16 on CUDA with head dims <= 64 (wider heads
    and fp32 would not fit registers / shared memory; the interpreter keeps the small blocks)."""
    return x.device.type == 'cuda' and x.element_size() == 2 and max(bdx, bdy) <= 64


def _block_n(x: Tensor, bdx: int, bdy: int, apply: bool) -> int:
    """Tokens per block: the tuned GPU sizes where :func:`_gpu_tuned_blocks`, else the small ones."""
    if _gpu_tuned_blocks(x, bdx, bdy):
        return GPU_APPLY_BLOCK_N if apply else GPU_REDUCE_BLOCK_N
    return APPLY_BLOCK_N if apply else REDUCE_BLOCK_N


def _split_plan(n: int, bh: int, device: torch.device, num_splits: Optional[int],
                block_n: Optional[int] = None) -> Tuple[int, int]:
    """(splits, blocks per program) for a reduction over ``n`` tokens and ``bh`` heads."""
    n_blocks = triton.cdiv(n, block_n or REDUCE_BLOCK_N)
    if num_splits is None:
        sms = _sm_count(device.index if device.index is not None else torch.cuda.current_device()) \
            if device.type == 'cuda' else 1
        num_splits = min(triton.cdiv(PROGRAMS_PER_SM * sms, bh), triton.cdiv(n, MIN_TOKENS_PER_SPLIT))
    num_splits = max(1, min(num_splits, n_blocks))
    per_prog = triton.cdiv(n_blocks, num_splits)
    return triton.cdiv(n_blocks, per_prog), per_prog


def _reduce(x: Tensor, y: Tensor, pad: Optional[Tensor], centred: bool, num_splits: Optional[int],
            w: Optional[Tensor] = None, out: Optional[Tensor] = None) -> Tuple[Optional[Tensor], ...]:
    """fp32 per-split statistics (see ``_reduce_kernel``), combined later by a second kernel (deterministic).

    Returns ``(xy (BH,S,BDX,BDY), x-means (BH,S,BDX) | None, y (BH,S,BDY), counts (BH,S) | None)``: with
    ``centred`` the co-moment, means and counts; otherwise raw ``sum x^T y`` and ``sum y``. With ``w``, also
    writes ``out = y @ w^T`` for every token (the fused dQ of the backward).
    """
    b, h, n, dx = x.shape
    dy = y.shape[-1]
    bdx, bdy = _pow2_block(dx), _pow2_block(dy)
    f32 = dict(dtype=torch.float32, device=x.device)
    if n == 0:  # nothing to read: one all-zero split (and no grid to launch)
        return (torch.zeros(b * h, 1, bdx, bdy, **f32), torch.zeros(b * h, 1, bdx, **f32) if centred else None,
                torch.zeros(b * h, 1, bdy, **f32), torch.zeros(b * h, 1, **f32) if centred else None)
    block_n = _block_n(x, bdx, bdy, apply=False)
    splits, per_prog = _split_plan(n, b * h, x.device, num_splits, block_n)
    part_xy = torch.empty(b * h, splits, bdx, bdy, **f32)
    part_x = torch.empty(b * h, splits, bdx, **f32) if centred else None
    part_y = torch.empty(b * h, splits, bdy, **f32)
    part_n = torch.empty(b * h, splits, **f32) if centred else None
    has_pad = pad is not None
    write = w is not None
    out_ = out if write else x
    _reduce_kernel[(b * h, splits)](
        x, y, pad if has_pad else x, part_xy, part_x if centred else part_y, part_y,
        part_n if centred else part_y, w if write else part_xy, out_,
        h, n, dx, dy, per_prog,
        *x.stride(), *y.stride(), *(pad.stride() if has_pad else (0, 0)), *out_.stride(),
        HAS_PAD=has_pad, CENTRED=centred, WRITE_YW=write, PREC=_precision(x), UPCAST=_upcast(x),
        BLOCK_N=block_n, BLOCK_DX=bdx, BLOCK_DY=bdy, num_warps=8 if bdx * bdy >= 4096 else 4)
    return part_xy, part_x, part_y, part_n


def _affine(x: Tensor, w: Tensor, bias: Optional[Tensor], pad: Optional[Tensor], out: Tensor) -> Tensor:
    """``out = x @ w + bias`` per head (``w`` fp32 ``(BH, BDIN, BDOUT)``), zero rows where ``pad``."""
    b, h, n, din = x.shape
    dout = out.shape[-1]
    if n == 0:
        return out
    has_pad = pad is not None
    block_n = _block_n(x, w.shape[1], w.shape[2], apply=True)
    _affine_kernel[(b * h, triton.cdiv(n, block_n))](
        x, w, bias if bias is not None else w, pad if has_pad else x, out,
        h, n, din, dout,
        *x.stride(), *out.stride(), *(pad.stride() if has_pad else (0, 0)),
        HAS_BIAS=bias is not None, HAS_PAD=has_pad, PREC=_precision(x), UPCAST=_upcast(x),
        BLOCK_N=block_n, BLOCK_DIN=w.shape[1], BLOCK_DOUT=w.shape[2], num_warps=4)
    return out


# The entry point is a pair of opaque custom ops (torch.library): dynamo and inductor trace a call as one node (its
# fake impl gives the output shapes and strides) instead of breaking the graph at Triton's launcher, and
# AOTAutograd differentiates it through the registered backward op.
@torch.library.custom_op('linattn_mm::inline_triton_fwd', mutates_args=())
def _inline_fwd(q: Tensor, k: Tensor, v: Tensor, pad: Optional[Tensor],
                num_splits: Optional[int]) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Forward kernels: ``out`` ``(B, H, Nq, Dv)`` (``(B, Nq, H, Dv)`` memory) and what the backward needs, the
    per-head state ``(B*H, BD, BDv)``, ``mean(K)`` ``(B*H, BD)``, ``mean(V)`` ``(B*H, BDv)``, ``1/N`` ``(B*H,)``."""
    b, h, nq, d = q.shape
    nk, dv = k.shape[2], v.shape[3]
    bd, bdv = _pow2_block(d), _pow2_block(dv)
    f32 = dict(dtype=torch.float32, device=q.device)
    part_m2, part_mk, part_mv, part_n = _reduce(k, v, pad, True, num_splits)
    state = torch.empty(b * h, bd, bdv, **f32)
    mk, mv, inv = torch.empty(b * h, bd, **f32), torch.empty(b * h, bdv, **f32), torch.empty(b * h, **f32)
    _combine_fwd_kernel[(b * h,)](
        part_m2, part_mk, part_mv, part_n, state, mk, mv, inv, part_m2.shape[1], d ** -0.5,
        BLOCK_DX=bd, BLOCK_DY=bdv, num_warps=4)
    out = torch.empty(b, nq, h, dv, dtype=q.dtype, device=q.device).transpose(1, 2)
    _affine(q, state, mv, None, out)
    return out, state, mk, mv, inv


@_inline_fwd.register_fake
def _inline_fwd_fake(q, k, v, pad, num_splits):
    b, h, nq, d = q.shape
    dv = v.shape[3]
    bd, bdv = _pow2_block(d), _pow2_block(dv)
    f32 = dict(dtype=torch.float32, device=q.device)
    out = q.new_empty(b, nq, h, dv).transpose(1, 2)
    return (out, q.new_empty(b * h, bd, bdv, **f32), q.new_empty(b * h, bd, **f32), q.new_empty(b * h, bdv, **f32),
            q.new_empty(b * h, **f32))


@torch.library.custom_op('linattn_mm::inline_triton_bwd', mutates_args=())
def _inline_bwd(do: Tensor, q: Tensor, k: Tensor, v: Tensor, pad: Optional[Tensor], state: Tensor, mk: Tensor,
                mv: Tensor, inv: Tensor, num_splits: Optional[int]) -> Tuple[Tensor, Tensor, Tensor]:
    """Backward kernels: ``dq, dk, dv`` (the strides of ``empty_like`` of q, k, v)."""
    do = do if do.dtype == q.dtype else do.to(q.dtype)  # the dots need one operand dtype
    bh, bd, bdv = state.shape
    dq = torch.empty_like(q)
    part_ds, _, part_do, _ = _reduce(q, do, None, False, num_splits, w=state, out=dq)
    f32 = dict(dtype=torch.float32, device=q.device)
    wk, wv = torch.empty(bh, bdv, bd, **f32), torch.empty(bh, bd, bdv, **f32)
    bk, bv = torch.empty(bh, bd, **f32), torch.empty(bh, bdv, **f32)
    _combine_bwd_kernel[(bh,)](
        part_ds, part_do, mk, mv, inv, wk, bk, wv, bv, part_ds.shape[1], q.shape[-1] ** -0.5,
        BLOCK_DX=bd, BLOCK_DY=bdv, num_warps=4)
    return dq, _affine(v, wk, bk, pad, torch.empty_like(k)), _affine(k, wv, bv, pad, torch.empty_like(v))


@_inline_bwd.register_fake
def _inline_bwd_fake(do, q, k, v, pad, state, mk, mv, inv, num_splits):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _inline_setup_context(ctx, inputs, output) -> None:
    q, k, v, pad, num_splits = inputs
    _, state, mk, mv, inv = output
    ctx.save_for_backward(q, k, v, pad, state, mk, mv, inv)  # q, k, v, the mask and the (D x Dv) state only
    ctx.num_splits = num_splits


def _inline_backward(ctx, do, *_):  # the state outputs are not differentiable
    dq, dk, dv = _inline_bwd(do, *ctx.saved_tensors, ctx.num_splits)
    return dq, dk, dv, None, None


_inline_fwd.register_autograd(_inline_backward, setup_context=_inline_setup_context)


def inline_attention_triton(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Optional[Tensor] = None,
                            num_splits: Optional[int] = None) -> Tensor:
    """InLine attention (identity kernel) through fused Triton kernels, differentiable in q, k and v.

    Args:
        q: ``(B, H, Nq, D)`` queries (any strides; e.g. the ``view(B, N, H, D).transpose(1, 2)`` of a layer).
        k: ``(B, H, Nk, D)`` keys.
        v: ``(B, H, Nk, Dv)`` values. D, Dv <= 128; fp16, bf16 or fp32, all the same dtype and device.
        key_padding_mask: ``(B, Nk)`` bool, True = padding key (excluded exactly; zero gradients).
        num_splits: token-axis splits of the reduction passes per head; ``None`` = fill the GPU
            (``PROGRAMS_PER_SM`` x SMs programs, each >= ``MIN_TOKENS_PER_SPLIT`` tokens). For tests/tuning.

    Returns:
        ``(B, H, Nq, Dv)`` in the input dtype, stored as ``(B, Nq, H, Dv)`` memory (a transposed view), so
        ``out.transpose(1, 2).reshape(B, Nq, H * Dv)`` is free. Zeros for a sample with no valid key.

    Raises:
        ValueError: on inconsistent shapes/dtypes/devices, or head dims above 128.
    """
    pad = check_triton_inputs(q, k, v, key_padding_mask, 'inline_attention_triton')
    return _inline_fwd(q, k, v, pad, num_splits)[0]
