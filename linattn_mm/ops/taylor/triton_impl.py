"""Fused Triton kernels for TaylorShift's efficient path, forward and backward.

Reference: T. C. Nauen, S. Palacio, A. Dengel, "TaylorShift: Shifting the Complexity of Self-Attention from
Squared to Linear (and Back) using Taylor-softmax", ICPR 2024, arXiv 2403.02920 (the efficient path).

With unit vectors q̂, k̂ per head (the caller normalises), tau the head's temperature and f(x) = 1 + x + x²/2,

    f(tau q̂·k̂) = sum_f w_f phi_f(q̂) phi_f(k̂),    phi_f(x) = x'_a x'_b  for pairs a <= b of x' = [1, x]

with ``w = 1`` for the pair (0, 0), ``tau`` for (0, b), ``tau²/2`` for (a, a) and ``tau²`` for a < b: the
paper's ``1 + a.b + (a ⊗ a).(b ⊗ b) / 2`` over the symmetric half of the D² outer product, each
off-diagonal product once with weight 2, so F = (D + 1)(D + 2) / 2 features (561 at D = 32, 2,145 at D = 64)
instead of 1 + D + D². Then, over the N valid keys of the sample,

    o_i = (phi(q̂_i)^T M) / (phi(q̂_i)^T m0),
    M = diag(w / N) sum_j phi(k̂_j) v_j^T,   m0 = diag(w / N) sum_j phi(k̂_j)

The features never reach memory: the kernels gather the two factors of each feature from the token's row
(L1-resident) and form the products on chip. The op is split into two differentiable primitives, each a
Triton kernel (e = bytes per element of the I/O dtype; sizes per head):

* ``taylor_triton_state(x=K, u=V, u0=valid)``: ``S = sum_j phi(x_j) u_j^T`` (F x Dv) and ``s0 = sum_j phi(x_j) u0_j``.
  ``_state_kernel``, grid ``(B*H, feature blocks, token splits)``: each program walks its run of token
  blocks for ``BLOCK_F`` features and writes fp32 partials, summed over splits by torch (a fixed-order
  reduction, deterministic). Splitting tokens as well as features keeps a GPU busy at batch 1.
* ``taylor_triton_apply(x=Q, M, m0)``: ``y_i = phi(x_i)^T M`` (Dv) and ``y0_i = phi(x_i)^T m0``. ``_apply_kernel``,
  grid ``(B*H, token blocks)``: each program loops over all feature blocks of the state for its tokens; reads
  Q once, writes y, y0 once (fp32).

Backward: ``dM = S(x=Q, u=dy, u0=dy0)`` is the state kernel again; ``dQ`` comes from the apply kernel in its
gradient mode, ``g = M u + m0 u0`` per token and feature, chained through ``phi_f = x'_a x'_b`` as
``dx'_a += g x'_b``, ``dx'_b += g x'_a`` (two selection dots: exact 0/1 matrices map features to columns);
``dK`` and ``dV`` (= ``phi(k) dS``) come from one apply-kernel pass over the keys with ``M = dS``. The weights
w(tau) / N and the final division ``y / y0`` are plain torch on small or (N x Dv) tensors, so autograd
carries the temperature's gradient.

Cost per token and head: ~2 F Dv multiply-adds each way (a compute-bound op at D = 32, unlike InLine), and
O(N (D + Dv)) memory, against the torch path's (N x D²) feature tensors that autograd also keeps.

Numerics: fp32 accumulation; unit-vector features are bounded by 1, and with the 1/N in w the state is a mean,
so ``y0 = mean_j f(.) >= 1/2`` for any sample with a valid key (f >= 1/2 everywhere): ``dy = dO / y0`` stays
bounded and the outputs y, y0 are fp32. Half I/O uses the bf16 tensor-core scheme of the kernelized ops
(``_mma``): bf16 features are rounded once and feed numerator and denominator alike; fp32 operands and fp16
inputs enter as bf16 hi + lo parts. fp32 I/O: ``'ieee'`` dots unless ``torch.backends.cuda.matmul.allow_tf32``.

Supported: CUDA (or CPU under ``TRITON_INTERPRET=1``), fp16/bf16/fp32 (q, k, v one dtype), any N, head dims
D, Dv <= 128. :func:`linattn_mm.ops.taylor.taylor_attention` chooses this path for ``mode='efficient'``
through ``backend``.
"""
from __future__ import annotations

import functools
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._kernelized_triton import _MODES, _io_features, _mma, _upcast
from ..inline.triton_impl import _pow2_block, _precision, _split_plan

BLOCK_F = 64        # features per block (the pair table is padded to a multiple of it)
BLOCK_N = 64        # tokens per block (the CPU interpreter; tests shrink it)
# Tokens per block on CUDA, per pass. Not timed on a GPU yet: chosen so that ptxas (sm_90, bf16, 8 warps)
# reports no register spills in the state pass, the forward apply pass and the dQ pass for D = Dv in
# {32, 64, 128} (the gradient passes hold dx, u and the feature gradients as well, so they take half the
# tokens); the fused dK + dV pass still spills 316 bytes at 32-wide heads and 104 at 128, none at 64.
GPU_BLOCK_N = {'state': 64, 'apply': 64, 'grad': 32}
NUM_WARPS = 8

# feature kinds of the pair table, indexing the per-head weight vector (1, tau, tau²/2, tau², 0)
_CONST, _LINEAR, _SQUARE, _CROSS, _PAD = range(5)
# factor indices: >= 0 a column of x; -1 the constant 1 of x' = [1, x]; -2 padding (the factor is 0)
_ONE, _NONE = -1, -2


@triton.jit
def _factors(x_base, rn, keep, sxn, sxd, ia, ib):
    """The two fp32 factors ``(x'_a, x'_b)`` of features ``(ia, ib)`` for tokens ``rn``: (BLOCK_N, BLOCK_F) each."""
    ma = keep[:, None] & (ia[None, :] >= 0)
    mb = keep[:, None] & (ib[None, :] >= 0)
    xa = tl.load(x_base + rn[:, None] * sxn + tl.maximum(ia, 0)[None, :] * sxd, mask=ma, other=0.).to(tl.float32)
    xb = tl.load(x_base + rn[:, None] * sxn + tl.maximum(ib, 0)[None, :] * sxd, mask=mb, other=0.).to(tl.float32)
    xa = tl.where(ia[None, :] == -1, 1.0, xa)
    xb = tl.where(ib[None, :] == -1, 1.0, xb)
    return xa, xb


@triton.jit
def _state_kernel(
        x_ptr, u_ptr, u0_ptr, ia_ptr, ib_ptr,   # x (B,H,N,D), u (B,H,N,DV), u0 (B,H,N); pair table (F_PAD,)
        s_part, s0_part,                        # fp32 partials (BH, S, F_PAD, BDV), (BH, S, F_PAD)
        H, N, DV, F_PAD, blocks_per_prog,
        sxb, sxh, sxn, sxd, sub, suh, sun, sud, s0b, s0h, s0n,
        U_EXACT: tl.constexpr, MODE: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_DV: tl.constexpr):
    """``sum_n phi(x_n) u_n^T`` and ``sum_n phi(x_n) u0_n`` over one run of token blocks, one feature block."""
    bh = tl.program_id(0).to(tl.int64)
    fb = tl.program_id(1)
    split = tl.program_id(2)
    nsplit = tl.num_programs(2)
    b = bh // H
    h = bh % H
    rf = fb * BLOCK_F + tl.arange(0, BLOCK_F)
    ia = tl.load(ia_ptr + rf)
    ib = tl.load(ib_ptr + rf)
    rdv = tl.arange(0, BLOCK_DV)
    x_base = x_ptr + b * sxb + h * sxh
    u_base = u_ptr + b * sub + h * suh
    u0_base = u0_ptr + b * s0b + h * s0h
    acc = tl.zeros((BLOCK_F, BLOCK_DV), dtype=tl.float32)
    acc0 = tl.zeros((BLOCK_F,), dtype=tl.float32)
    n0 = split * blocks_per_prog * BLOCK_N
    for i in range(0, blocks_per_prog):
        rn = n0 + i * BLOCK_N + tl.arange(0, BLOCK_N)
        keep = rn < N
        xa, xb = _factors(x_base, rn, keep, sxn, sxd, ia, ib)
        # rows past N have phi = 1 on the constant feature, but u and u0 are 0 there
        phi, phi_op = _io_features(xa * xb, MODE)
        u = tl.load(u_base + rn[:, None] * sun + rdv[None, :] * sud, mask=keep[:, None] & (rdv[None, :] < DV),
                    other=0.)
        u0 = tl.load(u0_base + rn * s0n, mask=keep, other=0.).to(tl.float32)
        acc = _mma(tl.trans(phi_op), u, acc, MODE == 1, U_EXACT, MODE, PREC, UPCAST)
        acc0 += tl.sum(phi * u0[:, None], axis=0)
    p = bh * nsplit + split
    tl.store(s_part + (p * F_PAD + rf[:, None]) * BLOCK_DV + rdv[None, :], acc)
    tl.store(s0_part + p * F_PAD + rf, acc0)


@triton.jit
def _apply_kernel(
        x_ptr, m_ptr, m0_ptr, u_ptr, u0_ptr, ia_ptr, ib_ptr,   # m fp32 (BH,F_PAD,BDV), m0 fp32 (BH,F_PAD)
        y_ptr, y0_ptr, dx_ptr,                              # y fp32 (B,H,N,DV), y0 fp32 (B,H,N), dx like x
        H, N, D, DV, F_PAD,
        sxb, sxh, sxn, sxd, sub, suh, sun, sud, s0b, s0h, s0n,
        syb, syh, syn, syd, sy0b, sy0h, sy0n, sdb, sdh, sdn, sdd,
        WANT_Y: tl.constexpr, WANT_DX: tl.constexpr, U_EXACT: tl.constexpr,
        MODE: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """Per token block, over every feature block: ``y = phi(x) M``, ``y0 = phi(x) m0`` (WANT_Y) and/or
    ``dx = J_phi(x)^T (M u + m0 u0)`` (WANT_DX), with u, u0 the per-token vectors of the gradient."""
    bh = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    b = bh // H
    h = bh % H
    rn = blk * BLOCK_N + tl.arange(0, BLOCK_N)
    keep = rn < N
    rd = tl.arange(0, BLOCK_D)
    rdv = tl.arange(0, BLOCK_DV)
    x_base = x_ptr + b * sxb + h * sxh
    m_base = m_ptr + bh * F_PAD * BLOCK_DV
    y = tl.zeros((BLOCK_N, BLOCK_DV), dtype=tl.float32)
    y0 = tl.zeros((BLOCK_N,), dtype=tl.float32)
    dx = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    if WANT_DX:
        u = tl.load(u_ptr + b * sub + h * suh + rn[:, None] * sun + rdv[None, :] * sud,
                    mask=keep[:, None] & (rdv[None, :] < DV), other=0.)
        u0 = tl.load(u0_ptr + b * s0b + h * s0h + rn * s0n, mask=keep, other=0.).to(tl.float32)
    for f0 in range(0, F_PAD, BLOCK_F):
        rf = f0 + tl.arange(0, BLOCK_F)
        ia = tl.load(ia_ptr + rf)
        ib = tl.load(ib_ptr + rf)
        xa, xb = _factors(x_base, rn, keep, sxn, sxd, ia, ib)
        m = tl.load(m_base + rf[:, None] * BLOCK_DV + rdv[None, :])
        m0 = tl.load(m0_ptr + bh * F_PAD + rf)
        if WANT_Y:
            phi, phi_op = _io_features(xa * xb, MODE)
            y = _mma(phi_op, m, y, MODE == 1, False, MODE, PREC, UPCAST)
            y0 += tl.sum(phi * m0[None, :], axis=1)
        if WANT_DX:
            g = _mma(u, tl.trans(m), u0[:, None] * m0[None, :], U_EXACT, False, MODE, PREC, UPCAST)
            # exact 0/1 matrices scatter the feature gradients onto the columns of x (pads and the
            # constant factor select no column)
            sel_a = tl.where(ia[:, None] == rd[None, :], 1.0, 0.0)
            sel_b = tl.where(ib[:, None] == rd[None, :], 1.0, 0.0)
            dx = _mma(g * xb, sel_a, dx, False, True, MODE, PREC, UPCAST)
            dx = _mma(g * xa, sel_b, dx, False, True, MODE, PREC, UPCAST)
    if WANT_Y:
        tl.store(y_ptr + b * syb + h * syh + rn[:, None] * syn + rdv[None, :] * syd, y,
                 mask=keep[:, None] & (rdv[None, :] < DV))
        tl.store(y0_ptr + b * sy0b + h * sy0h + rn * sy0n, y0, mask=keep)
    if WANT_DX:
        tl.store(dx_ptr + b * sdb + h * sdh + rn[:, None] * sdn + rd[None, :] * sdd,
                 dx.to(dx_ptr.dtype.element_ty), mask=keep[:, None] & (rd[None, :] < D))


# ------------------------------------------------------------------------------------------ host side

def num_features(d: int) -> int:
    """F = (D + 1)(D + 2) / 2: the pairs a <= b of x' = [1, x]."""
    return (d + 1) * (d + 2) // 2


@functools.lru_cache(maxsize=None)
def _pair_table_cpu(d: int) -> Tuple[Tensor, Tensor, Tensor]:
    """``(ia, ib, kind)`` int32/int64 of the F features, padded to a multiple of BLOCK_F with empty features."""
    ia, ib, kind = [], [], []
    for a in range(-1, d):            # -1 is the constant 1 of x'
        for b in range(a, d):
            ia.append(a)
            ib.append(b)
            kind.append(_CONST if b == -1 else _LINEAR if a == -1 else _SQUARE if a == b else _CROSS)
    n_pad = triton.cdiv(len(ia), BLOCK_F) * BLOCK_F - len(ia)
    ia += [_NONE] * n_pad
    ib += [_NONE] * n_pad
    kind += [_PAD] * n_pad
    return (torch.tensor(ia, dtype=torch.int32), torch.tensor(ib, dtype=torch.int32),
            torch.tensor(kind, dtype=torch.int64))


@functools.lru_cache(maxsize=64)
def _pair_table(d: int, device: torch.device) -> Tuple[Tensor, Tensor, Tensor]:
    return tuple(t.to(device) for t in _pair_table_cpu(d))


def feature_weights(tau: Tensor, d: int) -> Tensor:
    """``(H|1, F_PAD)`` weights ``(1, tau, tau²/2, tau², 0)`` by feature kind, differentiable in ``tau``
    (``(1, H|1, 1, 1)``, fp32 or fp64)."""
    t = tau.reshape(-1, 1)
    coeff = torch.cat([torch.ones_like(t), t, 0.5 * t * t, t * t, torch.zeros_like(t)], dim=1)   # (H|1, 5)
    return coeff[:, _pair_table(d, tau.device)[2]]  # compiled: dynamo traces through the cache (a constant)


def _block_n(x: Tensor, kind: str) -> int:
    return GPU_BLOCK_N[kind] if x.is_cuda else BLOCK_N


def _common(x: Tensor, u: Optional[Tensor]) -> dict:
    mode = _MODES[x.dtype]
    # a bf16 per-token operand enters the bf16 dots as it is; fp32 (gradients) and fp16 ones are split
    return dict(MODE=mode, PREC=_precision(x), UPCAST=_upcast(x),
                U_EXACT=u is not None and mode == 1 and u.dtype == torch.bfloat16)


def _state(x: Tensor, u: Tensor, u0: Tensor, num_splits: Optional[int]) -> Tuple[Tensor, Tensor]:
    """``(S (B,H,F_PAD,BDV), s0 (B,H,F_PAD))`` in fp32: ``sum_n phi(x_n) u_n^T`` and ``sum_n phi(x_n) u0_n``."""
    b, h, n, d = x.shape
    dv = u.shape[-1]
    bdv = _pow2_block(dv)
    ia, ib, _ = _pair_table(d, x.device)
    f_pad = ia.numel()
    f32 = dict(dtype=torch.float32, device=x.device)
    if b * h == 0 or n == 0:
        return torch.zeros(b, h, f_pad, bdv, **f32), torch.zeros(b, h, f_pad, **f32)
    block_n = _block_n(x, 'state')
    n_fb = f_pad // BLOCK_F
    splits, per_prog = _split_plan(n, b * h * n_fb, x.device, num_splits, block_n)
    part = torch.empty(b * h, splits, f_pad, bdv, **f32)
    part0 = torch.empty(b * h, splits, f_pad, **f32)
    _state_kernel[(b * h, n_fb, splits)](
        x, u, u0, ia, ib, part, part0,
        h, n, dv, f_pad, per_prog,
        *x.stride(), *u.stride(), *u0.stride(),
        **_common(x, u), BLOCK_N=block_n, BLOCK_F=BLOCK_F, BLOCK_DV=bdv, num_warps=NUM_WARPS)
    if splits == 1:
        return part.view(b, h, f_pad, bdv), part0.view(b, h, f_pad)
    return part.sum(1).view(b, h, f_pad, bdv), part0.sum(1).view(b, h, f_pad)


def _apply(x: Tensor, m: Tensor, m0: Tensor, dv: int, want_y: bool, u: Optional[Tensor] = None,
           u0: Optional[Tensor] = None) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """``(y (B,H,N,Dv) fp32, y0 (B,H,N) fp32)`` if ``want_y`` and ``dx`` (like x) if ``u`` is given."""
    b, h, n, d = x.shape
    want_dx = u is not None
    m, m0 = m.float().contiguous(), m0.float().contiguous()
    ia, ib, _ = _pair_table(d, x.device)
    f32 = dict(dtype=torch.float32, device=x.device)
    y = torch.empty(b, h, n, dv, **f32) if want_y else None
    y0 = torch.empty(b, h, n, **f32) if want_y else None
    dx = torch.empty_like(x) if want_dx else None
    if b * h == 0 or n == 0 or not (want_y or want_dx):
        return y, y0, dx
    bd, bdv = _pow2_block(d), m.shape[-1]
    block_n = _block_n(x, 'grad' if want_dx else 'apply')
    y_, y0_, dx_ = (y if want_y else m), (y0 if want_y else m0), (dx if want_dx else x)
    u_, u0_ = (u if want_dx else x), (u0 if want_dx else m0)
    _apply_kernel[(b * h, triton.cdiv(n, block_n))](
        x, m, m0, u_, u0_, ia, ib, y_, y0_, dx_,
        h, n, d, dv, ia.numel(),
        *x.stride(), *u_.stride(), *(u0_.stride() if want_dx else (0, 0, 0)),
        *(y.stride() if want_y else (0,) * 4), *(y0.stride() if want_y else (0,) * 3), *dx_.stride(),
        WANT_Y=want_y, WANT_DX=want_dx, **_common(x, u), BLOCK_N=block_n, BLOCK_F=BLOCK_F, BLOCK_D=bd,
        BLOCK_DV=bdv, num_warps=NUM_WARPS)
    return y, y0, dx


# The two primitives are opaque custom ops (torch.library), like the InLine and kernelized kernels: dynamo and
# inductor trace a call as one node (the fake impls give shapes and strides) instead of breaking the graph at
# Triton's launcher, and AOTAutograd differentiates them through the registered backward, which calls the
# third op (the apply kernel in its gradient mode). Each saves only its inputs.
_F32 = torch.float32


def _f_pad(d: int) -> int:
    """Rows of the pair table (F padded to a multiple of BLOCK_F); arithmetic, so a symbolic D works too."""
    return -(-num_features(d) // BLOCK_F) * BLOCK_F


def _fake_state(x: Tensor, dv: int) -> Tuple[Tensor, Tensor]:
    b, h, _, d = x.shape
    f_pad = _f_pad(d)
    return x.new_empty(b, h, f_pad, _pow2_block(dv), dtype=_F32), x.new_empty(b, h, f_pad, dtype=_F32)


@torch.library.custom_op('linattn_mm::taylor_triton_state', mutates_args=())
def _state_op(x: Tensor, u: Tensor, u0: Tensor, num_splits: Optional[int]) -> Tuple[Tensor, Tensor]:
    """``(S, s0) = (sum_n phi(x_n) u_n^T, sum_n phi(x_n) u0_n)``, fp32 ``(B, H, F_PAD, BDV)`` and ``(B, H, F_PAD)``."""
    return _state(x, u, u0, num_splits)


@_state_op.register_fake
def _state_op_fake(x, u, u0, num_splits):
    return _fake_state(x, u.shape[-1])


@torch.library.custom_op('linattn_mm::taylor_triton_apply', mutates_args=())
def _apply_op(x: Tensor, m: Tensor, m0: Tensor, dv: int, num_splits: Optional[int]) -> Tuple[Tensor, Tensor]:
    """``(y, y0) = (phi(x) M, phi(x) m0)`` per token, fp32 ``(B, H, N, Dv)`` and ``(B, H, N)``.
    ``num_splits`` is the state reduction's, for the backward."""
    y, y0, _ = _apply(x, m, m0, dv, want_y=True)
    return y, y0


@_apply_op.register_fake
def _apply_op_fake(x, m, m0, dv, num_splits):
    b, h, n, _ = x.shape
    return x.new_empty(b, h, n, dv, dtype=_F32), x.new_empty(b, h, n, dtype=_F32)


@torch.library.custom_op('linattn_mm::taylor_triton_grad', mutates_args=())
def _grad_op(x: Tensor, m: Tensor, m0: Tensor, u: Tensor, u0: Tensor, dv: int, want_y: bool,
             want_dx: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """The apply kernel's gradient mode, one pass over the tokens: if ``want_dx``, ``dx = J_phi(x)^T (M u + m0 u0)``
    (like x), if ``want_y``, ``(phi(x) M, phi(x) m0)``; what is not wanted comes back as an empty tensor."""
    y, y0, dx = _apply(x, m, m0, dv, want_y=want_y, u=u if want_dx else None, u0=u0 if want_dx else None)
    if not want_y:
        y, y0 = x.new_empty(0, dtype=_F32), x.new_empty(0, dtype=_F32)
    return y, y0, (dx if want_dx else x.new_empty(0))


@_grad_op.register_fake
def _grad_op_fake(x, m, m0, u, u0, dv, want_y, want_dx):
    b, h, n, _ = x.shape
    y_shape = ((b, h, n, dv), (b, h, n)) if want_y else ((0,), (0,))
    return (x.new_empty(y_shape[0], dtype=_F32), x.new_empty(y_shape[1], dtype=_F32),
            torch.empty_like(x) if want_dx else x.new_empty(0))


def _zeros_if_none(g: Optional[Tensor], shape, device) -> Tensor:
    return torch.zeros(shape, dtype=_F32, device=device) if g is None else g.float().contiguous()


def _save_inputs(ctx, inputs, output) -> None:
    x, a, b = inputs[:3]
    ctx.save_for_backward(x, a, b)
    ctx.args = inputs[3:]


def _state_backward(ctx, ds: Optional[Tensor], ds0: Optional[Tensor]):
    x, u, u0 = ctx.saved_tensors
    need_x, need_u, need_u0 = ctx.needs_input_grad[:3]
    b, h, n, d = x.shape
    dv = u.shape[-1]
    shape = (b, h, _f_pad(d), _pow2_block(dv))
    ds, ds0 = _zeros_if_none(ds, shape, x.device), _zeros_if_none(ds0, shape[:3], x.device)
    # du = phi(x) dS, du0 = phi(x) ds0 and dx = J_phi^T (dS u + ds0 u0): one pass over the tokens
    du, du0, dx = _grad_op(x, ds, ds0, u, u0, dv, need_u or need_u0, need_x)
    return (dx if need_x else None, du.to(u.dtype) if need_u else None, du0.to(u0.dtype) if need_u0 else None,
            None)


def _apply_backward(ctx, dy: Optional[Tensor], dy0: Optional[Tensor]):
    x, m, m0 = ctx.saved_tensors
    dv, num_splits = ctx.args
    need_x, need_m, need_m0 = ctx.needs_input_grad[:3]
    b, h, n, _ = x.shape
    dy, dy0 = _zeros_if_none(dy, (b, h, n, dv), x.device), _zeros_if_none(dy0, (b, h, n), x.device)
    dx = _grad_op(x, m, m0, dy, dy0, dv, False, True)[2] if need_x else None
    dm = dm0 = None
    if need_m or need_m0:
        dm, dm0 = _state_op(x, dy, dy0, num_splits)
    return dx, dm, dm0, None, None


_state_op.register_autograd(_state_backward, setup_context=_save_inputs)
_apply_op.register_autograd(_apply_backward, setup_context=_save_inputs)


def taylor_efficient_triton(qn: Tensor, kn: Tensor, v: Tensor, tau: Tensor, key_padding_mask: Optional[Tensor],
                            num_splits: Optional[int] = None) -> Tensor:
    """TaylorShift's efficient path through the fused kernels (same function as the torch ``_efficient``).

    Args:
        qn: ``(B, H, Nq, D)`` unit queries (L2-normalised per head). Any strides.
        kn: ``(B, H, Nk, D)`` unit keys, finite in padded slots (:func:`taylor_attention` zeroes them before
            normalising); they meet zero weights there.
        v: ``(B, H, Nk, Dv)`` values; fp16, bf16 or fp32, the dtype of qn and kn; D, Dv <= 128.
        tau: ``(1, H|1, 1, 1)`` temperature in fp32 (or fp64), differentiable.
        key_padding_mask: ``(B, Nk)`` bool, True = padding key (excluded exactly, whatever ``v`` holds there).
        num_splits: token-axis splits of the state reduction; ``None`` = fill the GPU. For tests/tuning.

    Returns:
        ``(B, H, Nq, Dv)`` in the input dtype; zeros for a sample without valid keys.
    """
    b, h, nk, d = kn.shape
    dv = v.shape[-1]
    if key_padding_mask is not None:
        v = v.masked_fill(key_padding_mask[:, None, :, None], 0.)   # masked_fill: inf/NaN cannot leak
        valid = ~key_padding_mask
        u0 = valid.to(v.dtype)[:, None, :].expand(b, h, nk)
        n = valid.sum(-1).clamp_min(1).to(tau.dtype).view(b, 1, 1)
    else:
        u0 = v.new_ones(()).expand(b, h, nk)            # stride 0: no memory
        n = max(nk, 1)                                  # a Python (or symbolic) int: no host sync
    s, s0 = _state_op(kn, v, u0, num_splits)
    w = (feature_weights(tau, d)[None] / n).float()    # (B|1, H|1, F_PAD): w(tau) / N
    y, y0 = _apply_op(qn, s * w[..., None], s0 * w, dv, num_splits)
    # y0 = mean_j f(.) >= 1/2 with a valid key; 0 (and y = 0) without one: the output is then 0
    return (y / y0.masked_fill(y0 == 0, 1.)[..., None]).to(v.dtype)
