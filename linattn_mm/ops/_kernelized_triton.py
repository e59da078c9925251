"""Fused Triton kernels for normalised kernel (feature-map) attention, forward and backward.

Serves elu+1 linear attention (A. Katharopoulos et al., "Transformers are RNNs", ICML 2020), ReLU linear
attention (H. Cai et al., EfficientViT, ICCV 2023) and focused linear attention (D. Han et al., FLatten
Transformer, ICCV 2023). With phi the feature map, N the number of valid keys of the sample
(``key_padding_mask`` True = padding) and M = D features per head:

    o_i = phi(q_i)^T KV / (phi(q_i) . z + eps),    KV = sum_j phi(k_j) v_j^T / N  (M x Dv),   z = sum_j phi(k_j) / N

as :func:`linattn_mm.ops._kernelized.kernelized_attention`; a row with ``phi(q_i) . z + eps == 0`` (e.g. a
sample whose keys are all padding with eps = 0) gets 0, and a sample without valid keys gets zeros anyway
(KV = 0). The feature map runs inside the kernels on every tile (so phi(Q), phi(K) never reach memory):
``'relu'`` relu(x), ``'elu'`` elu(x) + 1, ``'focused'`` f_p(relu(x) + 1e-6) with the FLatten focusing function
``f_p(x) = ||x|| x**p / ||x**p||`` over the head dim (computed as ``(x / max x)**p``, scale-free), and
``'identity'`` for features computed by the caller (non-negative). The backward recomputes phi from q and k
and applies its derivative in the same kernels, so autograd sees q, k and v directly.

Passes (every pass is a Triton kernel; e = bytes per element of the I/O dtype; sizes per head):

* forward, reduction ``_fwd_reduce_kernel``: grid ``(B*H, splits)``; program (bh, j) walks its own contiguous
  run of key blocks, computes phi(K) on chip and accumulates in fp32 ``sum phi(k) v^T``, ``sum phi(k)`` and
  the valid-key count. Splitting the token axis (not only batch x heads) keeps a GPU busy at batch 1.
  Reads ``Nk (D + Dv) e`` (+ Nk mask bytes); writes ``splits (D Dv + D + 1) 4`` bytes of partials.
* forward, combine ``_fwd_combine_kernel``: grid ``(B*H,)``; sums the splits in a fixed order (deterministic,
  no atomics) and writes KV, z and 1/N (0 without valid keys).
* forward, apply ``_fwd_apply_kernel``: grid ``(B*H, cdiv(Nq, BLOCK_N))``; reads Q once, computes phi(Q), the
  numerator ``phi(Q) KV`` and the denominator ``phi(Q) z + eps`` in the same pass and writes O once:
  ``Nq (D + Dv) e``. O is written in ``(B, Nq, H, Dv)`` memory and returned as a ``(B, H, Nq, Dv)`` view.
* backward, query pass ``_bwd_q_kernel``: grid ``(B*H, splits)``; with ``g = KV dO`` and
  ``s = phi(q) . g / den`` (= dO . o): ``dphi(q) = (g - z s) / den``, chained through phi' into dQ (written),
  while ``dKV = sum phi(q) dO^T / den`` and ``dz = -sum phi(q) s / den`` are accumulated as fp32 partials.
  Reads Q and dO once, writes dQ once: ``Nq (2 D + Dv) e``.
* backward, combine ``_bwd_combine_kernel``: grid ``(B*H,)``; sums the partials, times 1/N.
* backward, key pass ``_bwd_kv_kernel``: grid ``(B*H, cdiv(Nk, BLOCK_N))``; ``dphi(k) = dKV v / N + dz / N``
  chained through phi' into dK, ``dV = dKV^T phi(k) / N``; padded keys get exact zeros. Reads K and V once,
  writes dK and dV once: ``2 Nk (D + Dv) e``.

Launches: 3 kernels forward, 3 backward. Traffic ~ ``(Nq + Nk)(D + Dv) e`` forward (each tensor touched once)
and ``Nq (2 D + Dv) e + 2 Nk (D + Dv) e`` backward. The torch path instead materialises phi(Q), phi(K) and
upcast copies of V in fp32 (and keeps them for autograd) and runs several passes over each.

Numerics: fp32 accumulation everywhere; the per-head states and every scaled operand are fp32.
fp32 I/O: fp32 dots (``'ieee'``, or TF32 when ``torch.backends.cuda.matmul.allow_tf32`` is set, as torch's
matmul). Half I/O: bf16 tensor-core dots, where an fp32 operand (a state, a feature, ``phi(q)/den``) enters as
a hi + lo pair of bf16 parts (~16 significant bits) and lo x lo is dropped (``_mma``). bf16: inputs enter as
they are, and the features are rounded to bf16 once, the same values feeding numerator, denominator and
gradients (a feature map is part of the input side, like q and k themselves). fp16: every operand, fp16 inputs
included, is split into bf16 hi + lo (exact for fp16 values), so all intermediates have fp32's range: states
or ``phi(q) / den`` above 65,504 (tiny denominators, e.g. relu features nearly orthogonal to every key) cannot
overflow, and no feature is rounded to fp16 at all; this costs 3 dots per product instead of 1-2, still far
below the memory-bound time.

Supported: CUDA (or CPU under ``TRITON_INTERPRET=1``), fp16/bf16/fp32 (q, k, v one dtype), any N (tails are
masked), head dims D, Dv <= 128 (padded on chip to a power of two >= 16).
:func:`linattn_mm.ops.backend.resolve_backend` sends everything else to the torch path.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from .backend import check_triton_inputs
from .focused.torch_impl import KERNEL_EPS as FOCUS_EPS   # FLatten's relu(x) + 1e-6
# shared launch planning of the InLine kernels: power-of-two tiles, TF32 rule, token splits per head
from .inline.triton_impl import _gpu_tuned_blocks, _pow2_block, _precision, _split_plan

FEATURES = {'identity': 0, 'relu': 1, 'elu': 2, 'focused': 3}
_FOCUS_EPS = tl.constexpr(FOCUS_EPS)

# Tokens per block. Small blocks for the CPU interpreter, fp32 and heads wider than 64; on CUDA with
# fp16/bf16 and D, Dv <= 64 the larger GPU_* blocks (the InLine sweep on an H100 found 256-token reduction
# blocks best for the same load-and-dot loop; the backward passes hold more fp32 tiles, so they stay smaller).
BLOCK_N = 64
GPU_BLOCK_N = {'fwd_reduce': 256, 'fwd_apply': 128, 'bwd_q': 128, 'bwd_kv': 64}


@triton.jit
def _bdot(a, b, acc, UPCAST: tl.constexpr):
    """``acc + a @ b`` for bf16 parts. UPCAST: the same products in fp32 (the CPU interpreter's bf16 dot is wrong)."""
    if UPCAST:
        acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision='ieee')
    else:
        acc = tl.dot(a, b, acc)
    return acc


@triton.jit
def _mma(a, b, acc, A_EXACT: tl.constexpr, B_EXACT: tl.constexpr, MODE: tl.constexpr, PREC: tl.constexpr,
         UPCAST: tl.constexpr):
    """``acc + a @ b`` with fp32 accumulation; ``a``, ``b`` are fp32 tiles or tiles of the I/O dtype.

    MODE 0 (fp32 I/O): one dot at PREC. MODE 1/2 (bf16/fp16 I/O): bf16 tensor-core dots; an operand flagged
    EXACT is a bf16 tile and enters as it is, any other (fp32, or fp16 inputs) is split ``x = hi + lo`` into
    two bf16 parts (~16 significant bits, exact for fp16 values): ``hi hi + lo hi + hi lo``, the ``lo lo``
    term (~2^-16 relative) dropped.
    """
    if MODE == 0:
        acc = tl.dot(a, b, acc, input_precision=PREC)
    else:
        a_hi = a.to(tl.bfloat16)
        b_hi = b.to(tl.bfloat16)
        if not A_EXACT:
            acc = _bdot((a - a_hi.to(tl.float32)).to(tl.bfloat16), b_hi, acc, UPCAST)
        if not B_EXACT:
            acc = _bdot(a_hi, (b - b_hi.to(tl.float32)).to(tl.bfloat16), acc, UPCAST)
        acc = _bdot(a_hi, b_hi, acc, UPCAST)
    return acc


@triton.jit
def _io_features(phi, MODE: tl.constexpr):
    """``(values, dot operand)`` of fp32 features: bf16 I/O rounds them to bf16 once (the same values then feed
    numerator, denominator and gradients, and the dots take them exactly); fp32 and fp16 I/O keep fp32."""
    if MODE == 1:
        op = phi.to(tl.bfloat16)
        val = op.to(tl.float32)
    else:
        op = phi
        val = phi
    return val, op


@triton.jit
def _focus_parts(x, cols, p):
    """FLatten's map on fp32 rows: ``x1 = relu(x) + 1e-6``, ``||x1||`` and the unit vector of ``(x1 / max x1)**p``."""
    x1 = tl.where(cols[None, :], tl.maximum(x, 0.) + _FOCUS_EPS, 0.)
    nx = tl.sqrt(tl.sum(x1 * x1, axis=1))
    r = x1 / tl.max(x1, axis=1)[:, None]                         # (0, 1]: the power cannot overflow
    y = tl.where(cols[None, :], tl.exp2(p * tl.log2(tl.where(cols[None, :], r, 1.))), 0.)
    yh = y / tl.sqrt(tl.sum(y * y, axis=1))[:, None]             # the row maximum gives y = 1: no 0/0
    return x1, nx, yh


@triton.jit
def _feature(x, rows, cols, FEATURE: tl.constexpr, p):
    """phi(x) in fp32 for a ``(BLOCK_N, BLOCK_D)`` tile of raw q or k; entries outside ``rows x cols`` are 0
    (phi(0) is not 0 for elu+1 and focused, so padded/tail rows must be masked here)."""
    x = x.to(tl.float32)
    if FEATURE == 1:
        f = tl.maximum(x, 0.)
    elif FEATURE == 2:
        f = tl.where(x > 0, x + 1., tl.exp(tl.minimum(x, 0.)))
    elif FEATURE == 3:
        _, nx, yh = _focus_parts(x, cols, p)
        f = yh * nx[:, None]
    else:
        f = x
    return tl.where(rows[:, None] & cols[None, :], f, 0.)


@triton.jit
def _feature_grad(x, g, cols, FEATURE: tl.constexpr, p):
    """dL/dx for the raw tile ``x`` given ``g = dL/dphi(x)`` (fp32), the derivatives torch's autograd takes.

    focused: with ``yh`` the unit vector of ``x1**p`` and ``phi = ||x1|| yh``,
    ``dL/dx1 = (g . yh) x1 / ||x1|| + p ||x1|| (yh / x1) (g - yh (yh . g))``, then relu's gate.
    """
    x = x.to(tl.float32)
    if FEATURE == 1:
        d = tl.where(x > 0, g, 0.)
    elif FEATURE == 2:
        d = tl.where(x > 0, g, g * tl.exp(tl.minimum(x, 0.)))
    elif FEATURE == 3:
        x1, nx, yh = _focus_parts(x, cols, p)
        gy = tl.sum(g * yh, axis=1)
        d1 = (gy / nx)[:, None] * x1 + \
            (nx * p)[:, None] * (yh / tl.where(cols[None, :], x1, 1.)) * (g - yh * gy[:, None])
        d = tl.where(x > 0, d1, 0.)
    else:
        d = g
    return d


@triton.jit
def _fwd_reduce_kernel(
        k_ptr, v_ptr, pad_ptr,            # k (B,H,N,D), v (B,H,N,DV), pad (B,N) uint8 (1 = padding)
        kv_ptr, ks_ptr, cnt_ptr,          # fp32 partials (BH,S,BD,BDV), (BH,S,BD), (BH,S)
        H, N, D, DV, blocks_per_prog, p,
        skb, skh, skn, skd, svb, svh, svn, svd, spb, spn,
        HAS_PAD: tl.constexpr, FEATURE: tl.constexpr, MODE: tl.constexpr, PREC: tl.constexpr,
        UPCAST: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """Sums over one run of key blocks (valid keys only): ``phi(k)^T v``, ``phi(k)`` and the count."""
    bh = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    nsplit = tl.num_programs(1)
    b = bh // H
    h = bh % H
    rd = tl.arange(0, BLOCK_D)
    rdv = tl.arange(0, BLOCK_DV)
    cols = rd < D
    vcols = rdv < DV
    k_base = k_ptr + b * skb + h * skh
    v_base = v_ptr + b * svb + h * svh
    kv = tl.zeros((BLOCK_D, BLOCK_DV), dtype=tl.float32)
    ks = tl.zeros((BLOCK_D,), dtype=tl.float32)
    n = tl.sum(tl.zeros((BLOCK_N,), dtype=tl.float32), axis=0)   # an fp32 scalar (loop-carried)
    n0 = split * blocks_per_prog * BLOCK_N
    for i in range(0, blocks_per_prog):
        rn = n0 + i * BLOCK_N + tl.arange(0, BLOCK_N)
        keep = rn < N
        if HAS_PAD:
            pad = tl.load(pad_ptr + b * spb + rn * spn, mask=keep, other=1)
            keep = keep & (pad == 0)
        k = tl.load(k_base + rn[:, None] * skn + rd[None, :] * skd, mask=keep[:, None] & cols[None, :], other=0.)
        v = tl.load(v_base + rn[:, None] * svn + rdv[None, :] * svd, mask=keep[:, None] & vcols[None, :], other=0.)
        phi, phi_op = _io_features(_feature(k, keep, cols, FEATURE, p), MODE)
        ks += tl.sum(phi, axis=0)
        n += tl.sum(keep.to(tl.float32), axis=0)
        kv = _mma(tl.trans(phi_op), v, kv, MODE == 1, MODE == 1, MODE, PREC, UPCAST)
    slot = bh * nsplit + split
    tl.store(kv_ptr + slot * (BLOCK_D * BLOCK_DV) + rd[:, None] * BLOCK_DV + rdv[None, :], kv)
    tl.store(ks_ptr + slot * BLOCK_D + rd, ks)
    tl.store(cnt_ptr + slot, n)


@triton.jit
def _fwd_combine_kernel(
        kv_part, ks_part, cnt_part,       # partials of the reduction
        kv_ptr, z_ptr, inv_ptr,           # out: KV (BH,BD,BDV), z (BH,BD), 1/N (BH,), all fp32
        nsplit, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """One program per head: splits summed in order; a head without valid keys gets KV = 0, z = 0, 1/N = 0."""
    bh = tl.program_id(0).to(tl.int64)
    rd = tl.arange(0, BLOCK_D)
    rdv = tl.arange(0, BLOCK_DV)
    tile = rd[:, None] * BLOCK_DV + rdv[None, :]
    kv = tl.zeros((BLOCK_D, BLOCK_DV), dtype=tl.float32)
    ks = tl.zeros((BLOCK_D,), dtype=tl.float32)
    n = tl.sum(tl.zeros((BLOCK_D,), dtype=tl.float32), axis=0)
    for j in range(0, nsplit):
        slot = bh * nsplit + j
        kv += tl.load(kv_part + slot * (BLOCK_D * BLOCK_DV) + tile)
        ks += tl.load(ks_part + slot * BLOCK_D + rd)
        n += tl.load(cnt_part + slot)
    inv = tl.where(n > 0.5, 1.0 / tl.maximum(n, 1.0), 0.0)
    tl.store(kv_ptr + bh * (BLOCK_D * BLOCK_DV) + tile, kv * inv)
    tl.store(z_ptr + bh * BLOCK_D + rd, ks * inv)
    tl.store(inv_ptr + bh, inv)


@triton.jit
def _fwd_apply_kernel(
        q_ptr, kv_ptr, z_ptr, out_ptr,    # q (B,H,N,D), KV fp32 (BH,BD,BDV), z fp32 (BH,BD), out (B,H,N,DV)
        H, N, D, DV, eps, p,
        sqb, sqh, sqn, sqd, sob, soh, son, sod,
        FEATURE: tl.constexpr, MODE: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """``o = phi(q) KV / (phi(q) . z + eps)`` for one block of queries (0 where the denominator is 0)."""
    bh = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    b = bh // H
    h = bh % H
    rn = blk * BLOCK_N + tl.arange(0, BLOCK_N)
    rd = tl.arange(0, BLOCK_D)
    rdv = tl.arange(0, BLOCK_DV)
    cols = rd < D
    in_n = rn < N
    x = tl.load(q_ptr + b * sqb + h * sqh + rn[:, None] * sqn + rd[None, :] * sqd,
                mask=in_n[:, None] & cols[None, :], other=0.)
    phi, phi_op = _io_features(_feature(x, in_n, cols, FEATURE, p), MODE)
    kv = tl.load(kv_ptr + bh * (BLOCK_D * BLOCK_DV) + rd[:, None] * BLOCK_DV + rdv[None, :])
    z = tl.load(z_ptr + bh * BLOCK_D + rd)
    num = _mma(phi_op, kv, tl.zeros((BLOCK_N, BLOCK_DV), dtype=tl.float32), MODE == 1, False, MODE, PREC, UPCAST)
    den = tl.sum(phi * z[None, :], axis=1) + eps
    den = tl.where(den == 0., 1., den)   # features >= 0: den == 0 means num == 0, so the row's output is 0
    o = num / den[:, None]
    tl.store(out_ptr + b * sob + h * soh + rn[:, None] * son + rdv[None, :] * sod, o.to(out_ptr.dtype.element_ty),
             mask=in_n[:, None] & (rdv[None, :] < DV))


@triton.jit
def _bwd_q_kernel(
        q_ptr, do_ptr, kv_ptr, z_ptr, inv_ptr,   # q (B,H,N,D), dO (B,H,N,DV); forward state (fp32)
        dq_ptr, dkv_ptr, dz_ptr,                 # out: dQ (B,H,N,D); fp32 partials (BH,S,BD,BDV), (BH,S,BD)
        H, N, D, DV, blocks_per_prog, eps, p,
        sqb, sqh, sqn, sqd, sgb, sgh, sgn, sgd, sdb, sdh, sdn, sdd,
        FEATURE: tl.constexpr, MODE: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
        WRITE_DQ: tl.constexpr, ACC_KV: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """One run of query blocks: dQ for every query and the sums behind dKV and dz (see the module docstring)."""
    bh = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    nsplit = tl.num_programs(1)
    b = bh // H
    h = bh % H
    rd = tl.arange(0, BLOCK_D)
    rdv = tl.arange(0, BLOCK_DV)
    cols = rd < D
    vcols = rdv < DV
    kv_t = tl.load(kv_ptr + bh * (BLOCK_D * BLOCK_DV) + rd[None, :] * BLOCK_DV + rdv[:, None])   # (BDV, BD)
    z = tl.load(z_ptr + bh * BLOCK_D + rd)
    has_keys = tl.load(inv_ptr + bh) > 0.
    dkv = tl.zeros((BLOCK_D, BLOCK_DV), dtype=tl.float32)
    dz = tl.zeros((BLOCK_D,), dtype=tl.float32)
    n0 = split * blocks_per_prog * BLOCK_N
    for i in range(0, blocks_per_prog):
        rn = n0 + i * BLOCK_N + tl.arange(0, BLOCK_N)
        in_n = rn < N
        x = tl.load(q_ptr + b * sqb + h * sqh + rn[:, None] * sqn + rd[None, :] * sqd,
                    mask=in_n[:, None] & cols[None, :], other=0.)
        do = tl.load(do_ptr + b * sgb + h * sgh + rn[:, None] * sgn + rdv[None, :] * sgd,
                     mask=in_n[:, None] & vcols[None, :], other=0.)
        phi, _ = _io_features(_feature(x, in_n, cols, FEATURE, p), MODE)
        den = tl.sum(phi * z[None, :], axis=1) + eps
        rden = 1. / tl.where(den == 0., 1., den)
        g = _mma(do, kv_t, tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32), MODE == 1, False, MODE, PREC, UPCAST)
        s = tl.sum(phi * g, axis=1) * rden                      # dO . o (0 on rows with den == 0: num == 0)
        if WRITE_DQ:
            dphi = (g - z[None, :] * s[:, None]) * rden[:, None]
            dq = _feature_grad(x, dphi, cols, FEATURE, p)
            tl.store(dq_ptr + b * sdb + h * sdh + rn[:, None] * sdn + rd[None, :] * sdd,
                     dq.to(dq_ptr.dtype.element_ty), mask=in_n[:, None] & cols[None, :])
        if ACC_KV:
            # phi(q) / den (0 for a head without keys: its dKV, dz are multiplied by 1/N = 0 later, and
            # phi / eps could be huge there)
            a = phi * tl.where(has_keys, rden, 0.)[:, None]
            dz -= tl.sum(a * s[:, None], axis=0)
            dkv = _mma(tl.trans(a), do, dkv, False, MODE == 1, MODE, PREC, UPCAST)
    if ACC_KV:
        slot = bh * nsplit + split
        tl.store(dkv_ptr + slot * (BLOCK_D * BLOCK_DV) + rd[:, None] * BLOCK_DV + rdv[None, :], dkv)
        tl.store(dz_ptr + slot * BLOCK_D + rd, dz)


@triton.jit
def _bwd_combine_kernel(
        dkv_part, dz_part, inv_ptr,       # partials of the query pass, 1/N of the forward
        w_ptr, bz_ptr,                    # out: dKV / N (BH,BD,BDV), dz / N (BH,BD), fp32
        nsplit, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    bh = tl.program_id(0).to(tl.int64)
    rd = tl.arange(0, BLOCK_D)
    rdv = tl.arange(0, BLOCK_DV)
    tile = rd[:, None] * BLOCK_DV + rdv[None, :]
    dkv = tl.zeros((BLOCK_D, BLOCK_DV), dtype=tl.float32)
    dz = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for j in range(0, nsplit):
        slot = bh * nsplit + j
        dkv += tl.load(dkv_part + slot * (BLOCK_D * BLOCK_DV) + tile)
        dz += tl.load(dz_part + slot * BLOCK_D + rd)
    inv = tl.load(inv_ptr + bh)
    tl.store(w_ptr + bh * (BLOCK_D * BLOCK_DV) + tile, dkv * inv)
    tl.store(bz_ptr + bh * BLOCK_D + rd, dz * inv)


@triton.jit
def _bwd_kv_kernel(
        k_ptr, v_ptr, pad_ptr, w_ptr, bz_ptr,   # k, v; pad (B,N) uint8; W = dKV / N (BH,BD,BDV), dz / N (BH,BD)
        dk_ptr, dv_ptr,                         # out: dK (B,H,N,D), dV (B,H,N,DV)
        H, N, D, DV, p,
        skb, skh, skn, skd, svb, svh, svn, svd, spb, spn,
        sgb, sgh, sgn, sgd, sub, suh, sun, sud,
        HAS_PAD: tl.constexpr, FEATURE: tl.constexpr, MODE: tl.constexpr, PREC: tl.constexpr,
        UPCAST: tl.constexpr, NEED_DK: tl.constexpr, NEED_DV: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """``dphi(k) = W v + dz / N`` chained into dK, ``dV = W^T phi(k)``; padded keys get exact zeros."""
    bh = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    b = bh // H
    h = bh % H
    rn = blk * BLOCK_N + tl.arange(0, BLOCK_N)
    rd = tl.arange(0, BLOCK_D)
    rdv = tl.arange(0, BLOCK_DV)
    cols = rd < D
    vcols = rdv < DV
    in_n = rn < N
    keep = in_n
    if HAS_PAD:
        pad = tl.load(pad_ptr + b * spb + rn * spn, mask=in_n, other=1)
        keep = in_n & (pad == 0)
    x = tl.load(k_ptr + b * skb + h * skh + rn[:, None] * skn + rd[None, :] * skd,
                mask=keep[:, None] & cols[None, :], other=0.)
    if NEED_DK:
        v = tl.load(v_ptr + b * svb + h * svh + rn[:, None] * svn + rdv[None, :] * svd,
                    mask=keep[:, None] & vcols[None, :], other=0.)
        w_t = tl.load(w_ptr + bh * (BLOCK_D * BLOCK_DV) + rd[None, :] * BLOCK_DV + rdv[:, None])   # (BDV, BD)
        dphi = _mma(v, w_t, tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32), MODE == 1, False, MODE, PREC, UPCAST)
        dphi += tl.load(bz_ptr + bh * BLOCK_D + rd)[None, :]
        dk = tl.where(keep[:, None], _feature_grad(x, dphi, cols, FEATURE, p), 0.)
        tl.store(dk_ptr + b * sgb + h * sgh + rn[:, None] * sgn + rd[None, :] * sgd, dk.to(dk_ptr.dtype.element_ty),
                 mask=in_n[:, None] & cols[None, :])
    if NEED_DV:
        _, phi_op = _io_features(_feature(x, keep, cols, FEATURE, p), MODE)   # padded rows: 0, so dV = 0 exactly
        w = tl.load(w_ptr + bh * (BLOCK_D * BLOCK_DV) + rd[:, None] * BLOCK_DV + rdv[None, :])
        dv = _mma(phi_op, w, tl.zeros((BLOCK_N, BLOCK_DV), dtype=tl.float32), MODE == 1, False, MODE, PREC, UPCAST)
        tl.store(dv_ptr + b * sub + h * suh + rn[:, None] * sun + rdv[None, :] * sud, dv.to(dv_ptr.dtype.element_ty),
                 mask=in_n[:, None] & vcols[None, :])


_MODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


def _upcast(t: Tensor) -> bool:
    # Triton 3.8's CPU interpreter computes bf16 tl.dot wrongly (~1e10 errors): there the bf16 parts are
    # widened to fp32 (after the same rounding/splitting), so the interpreter checks the same arithmetic.
    return t.device.type == 'cpu' and t.dtype != torch.float32


def _block_n(t: Tensor, bd: int, bdv: int, kind: str) -> int:
    if _gpu_tuned_blocks(t, bd, bdv):   # the same rule as InLine's kernels
        return GPU_BLOCK_N[kind]
    return BLOCK_N


def _warps(block_n: int, bd: int, bdv: int) -> int:
    return 8 if block_n * max(bd, bdv) >= 8192 or bd * bdv >= 4096 else 4


def _common(t: Tensor) -> dict:
    return dict(MODE=_MODES[t.dtype], PREC=_precision(t), UPCAST=_upcast(t))


def _kv_state(k: Tensor, v: Tensor, pad: Optional[Tensor], feature: int, p: float,
              num_splits: Optional[int]) -> Tuple[Tensor, Tensor, Tensor]:
    """Forward reduction + combine: ``(KV (BH,BD,BDV), z (BH,BD), 1/N (BH,))`` in fp32."""
    b, h, n, d = k.shape
    dv = v.shape[-1]
    bh, bd, bdv = b * h, _pow2_block(d), _pow2_block(dv)
    f32 = dict(dtype=torch.float32, device=k.device)
    kv, z, inv = torch.empty(bh, bd, bdv, **f32), torch.empty(bh, bd, **f32), torch.empty(bh, **f32)
    if bh == 0:
        return kv, z, inv
    if n == 0:  # no keys: KV = 0, z = 0, 1/N = 0
        return kv.zero_(), z.zero_(), inv.zero_()
    block_n = _block_n(k, bd, bdv, 'fwd_reduce')
    splits, per_prog = _split_plan(n, bh, k.device, num_splits, block_n)
    part_kv, part_ks, part_n = torch.empty(bh, splits, bd, bdv, **f32), torch.empty(bh, splits, bd, **f32), \
        torch.empty(bh, splits, **f32)
    has_pad = pad is not None
    _fwd_reduce_kernel[(bh, splits)](
        k, v, pad if has_pad else k, part_kv, part_ks, part_n,
        h, n, d, dv, per_prog, p,
        *k.stride(), *v.stride(), *(pad.stride() if has_pad else (0, 0)),
        HAS_PAD=has_pad, FEATURE=feature, **_common(k),
        BLOCK_N=block_n, BLOCK_D=bd, BLOCK_DV=bdv, num_warps=_warps(block_n, bd, bdv))
    _fwd_combine_kernel[(bh,)](part_kv, part_ks, part_n, kv, z, inv, splits, BLOCK_D=bd, BLOCK_DV=bdv,
                               num_warps=4)
    return kv, z, inv


# The entry point is a pair of opaque custom ops (torch.library): dynamo and inductor trace a call as one node (its
# fake impl gives the output shapes and strides) instead of breaking the graph at Triton's launcher, and
# AOTAutograd differentiates it through the registered backward op.
@torch.library.custom_op('linattn_mm::kernelized_triton_fwd', mutates_args=())
def _kernelized_fwd(q: Tensor, k: Tensor, v: Tensor, pad: Optional[Tensor], eps: float, feature: int, p: float,
                    num_splits: Optional[int]) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Forward kernels: ``out`` ``(B, H, Nq, Dv)`` (``(B, Nq, H, Dv)`` memory) and the per-head fp32 state the
    backward needs, ``KV`` ``(B*H, BD, BDv)``, ``z`` ``(B*H, BD)``, ``1/N`` ``(B*H,)``."""
    b, h, nq, d = q.shape
    dv = v.shape[-1]
    bd, bdv = _pow2_block(d), _pow2_block(dv)
    kv, z, inv = _kv_state(k, v, pad, feature, p, num_splits)
    out = torch.empty(b, nq, h, dv, dtype=q.dtype, device=q.device).transpose(1, 2)
    if b * h > 0 and nq > 0:
        block_n = _block_n(q, bd, bdv, 'fwd_apply')
        _fwd_apply_kernel[(b * h, triton.cdiv(nq, block_n))](
            q, kv, z, out, h, nq, d, dv, eps, p, *q.stride(), *out.stride(),
            FEATURE=feature, **_common(q), BLOCK_N=block_n, BLOCK_D=bd, BLOCK_DV=bdv,
            num_warps=_warps(block_n, bd, bdv))
    return out, kv, z, inv


@_kernelized_fwd.register_fake
def _kernelized_fwd_fake(q, k, v, pad, eps, feature, p, num_splits):
    b, h, nq, d = q.shape
    dv = v.shape[-1]
    bd, bdv = _pow2_block(d), _pow2_block(dv)
    f32 = dict(dtype=torch.float32, device=q.device)
    return (q.new_empty(b, nq, h, dv).transpose(1, 2), q.new_empty(b * h, bd, bdv, **f32),
            q.new_empty(b * h, bd, **f32), q.new_empty(b * h, **f32))


@torch.library.custom_op('linattn_mm::kernelized_triton_bwd', mutates_args=())
def _kernelized_bwd(do: Tensor, q: Tensor, k: Tensor, v: Tensor, pad: Optional[Tensor], kv: Tensor, z: Tensor,
                    inv: Tensor, eps: float, feature: int, p: float,
                    num_splits: Optional[int]) -> Tuple[Tensor, Tensor, Tensor]:
    """Backward kernels: ``dq, dk, dv`` (the strides of ``empty_like`` of q, k, v)."""
    do = do if do.dtype == q.dtype else do.to(q.dtype)
    b, h, nq, d = q.shape
    nk, dv_ = k.shape[2], v.shape[3]
    bh, bd, bdv = b * h, kv.shape[1], kv.shape[2]
    f32 = dict(dtype=torch.float32, device=q.device)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    if bh == 0:
        return dq, dk, dv
    block_n = _block_n(q, bd, bdv, 'bwd_q')
    splits, per_prog = (0, 1) if nq == 0 else _split_plan(nq, bh, q.device, num_splits, block_n)
    part_dkv = torch.zeros(bh, max(splits, 1), bd, bdv, **f32)
    part_dz = torch.zeros(bh, max(splits, 1), bd, **f32)
    if splits > 0:
        _bwd_q_kernel[(bh, splits)](
            q, do, kv, z, inv, dq, part_dkv, part_dz,
            h, nq, d, dv_, per_prog, eps, p,
            *q.stride(), *do.stride(), *dq.stride(),
            FEATURE=feature, **_common(q), WRITE_DQ=True, ACC_KV=True,
            BLOCK_N=block_n, BLOCK_D=bd, BLOCK_DV=bdv, num_warps=_warps(block_n, bd, bdv))
    if nk > 0:
        w, bz = torch.empty(bh, bd, bdv, **f32), torch.empty(bh, bd, **f32)
        _bwd_combine_kernel[(bh,)](part_dkv, part_dz, inv, w, bz, part_dkv.shape[1], BLOCK_D=bd, BLOCK_DV=bdv,
                                   num_warps=4)
        block_n = _block_n(k, bd, bdv, 'bwd_kv')
        has_pad = pad is not None
        _bwd_kv_kernel[(bh, triton.cdiv(nk, block_n))](
            k, v, pad if has_pad else k, w, bz, dk, dv,
            h, nk, d, dv_, p,
            *k.stride(), *v.stride(), *(pad.stride() if has_pad else (0, 0)), *dk.stride(), *dv.stride(),
            HAS_PAD=has_pad, FEATURE=feature, **_common(k), NEED_DK=True, NEED_DV=True,
            BLOCK_N=block_n, BLOCK_D=bd, BLOCK_DV=bdv, num_warps=_warps(block_n, bd, bdv))
    return dq, dk, dv


@_kernelized_bwd.register_fake
def _kernelized_bwd_fake(do, q, k, v, pad, kv, z, inv, eps, feature, p, num_splits):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _kernelized_setup_context(ctx, inputs, output) -> None:
    q, k, v, pad, eps, feature, p, num_splits = inputs
    _, kv, z, inv = output
    ctx.save_for_backward(q, k, v, pad, kv, z, inv)  # q, k, v, the mask and the per-head fp32 state only
    ctx.args = (eps, feature, p, num_splits)


def _kernelized_backward(ctx, do, *_):  # the state outputs are not differentiable
    dq, dk, dv = _kernelized_bwd(do, *ctx.saved_tensors, *ctx.args)
    return dq, dk, dv, None, None, None, None, None


_kernelized_fwd.register_autograd(_kernelized_backward, setup_context=_kernelized_setup_context)


def kernelized_attention_triton(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Optional[Tensor] = None,
                                eps: float = 1e-6, feature: str = 'identity', focusing_factor: float = 3.,
                                num_splits: Optional[int] = None) -> Tensor:
    """Normalised kernel attention through fused Triton kernels, differentiable in q, k and v.

    Args:
        q: ``(B, H, Nq, D)`` queries (raw; or the features phi(q) >= 0 for ``feature='identity'``). Any strides.
        k: ``(B, H, Nk, D)`` keys (likewise).
        v: ``(B, H, Nk, Dv)`` values. D, Dv <= 128; fp16, bf16 or fp32, all the same dtype and device.
        key_padding_mask: ``(B, Nk)`` bool, True = padding key (excluded exactly; zero gradients).
        eps: added to the mean-normalised denominator.
        feature: ``'elu'`` (elu + 1), ``'relu'``, ``'focused'`` (FLatten) or ``'identity'``.
        focusing_factor: the power p of the focusing function (``feature='focused'`` only), > 0.
        num_splits: token-axis splits of the reduction passes per head; ``None`` = fill the GPU. For tests/tuning.

    Returns:
        ``(B, H, Nq, Dv)`` in the input dtype, stored as ``(B, Nq, H, Dv)`` memory (a transposed view), so
        merging heads afterwards is free. Zeros for a sample with no valid key.

    Raises:
        ValueError: on inconsistent shapes/dtypes/devices, head dims above 128 or an unknown feature map.
    """
    name = 'kernelized_attention_triton'
    pad = check_triton_inputs(q, k, v, key_padding_mask, name)
    if feature not in FEATURES:
        raise ValueError(f'{name}: feature must be one of {sorted(FEATURES)}, got {feature!r}')
    if feature == 'focused' and not focusing_factor > 0:
        raise ValueError(f'{name}: focusing_factor must be > 0, got {focusing_factor}')
    return _kernelized_fwd(q, k, v, pad, float(eps), FEATURES[feature], float(focusing_factor), num_splits)[0]
