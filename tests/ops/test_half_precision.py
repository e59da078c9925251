"""Focused and RFA attention under autocast (fp16 / bf16), torch path, against float64 naive twins.

Autocast recasts every matmul to the low dtype whatever its operands are, so an "fp32 island" of ``.float()``
casts followed by ``@`` silently ran in fp16 / bf16: fp16 states and products overflowed (focused, inputs of
large magnitude; the backward with a loss scaler's 2**16 on the upstream gradient), and RFA's random-feature
phases ``W x`` were rounded before ``sin`` / ``cos``. The references are the float64 naive ops on the *same*
rounded inputs, so only the op's own error is measured (rel-rms, scale-free).
"""
import pytest
import torch

from linattn_mm.ops.focused import focused_linear_attention, focused_linear_attention_naive
from linattn_mm.ops.rfa import rfa_attention, rfa_attention_naive
from tests._helpers import rel_rms

LOSS_SCALE = 2. ** 16   # torch.amp.GradScaler's initial scale


def _leaves(dtype, b=2, h=2, n=96, d=32, scales=(1., 1., 1.), shift=(0., 0., 0.), seed=0):
    """q, k, v ``(B, H, N, D)`` leaves in ``dtype``: N(shift, scale^2) each."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(b, h, n, d, generator=g, dtype=torch.float64) * s + m).to(dtype).requires_grad_()
            for s, m in zip(scales, shift)]


def _compare(fast, naive, leaves, dtype, tol):
    """Output and loss-scaled gradients of ``fast`` under autocast vs ``naive`` in float64 on the same values."""
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    ref = naive(*ref_leaves)
    g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref_grads = torch.autograd.grad(ref, ref_leaves, g)
    with torch.autocast('cpu', dtype=dtype):
        out = fast(*leaves)
    # the upstream gradient of a mean-reduced loss, times the loss scale
    scale = LOSS_SCALE / out.numel()
    grads = torch.autograd.grad(out, leaves, (g * scale).to(out.dtype))
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert rel_rms(ref, out.detach()) < tol, rel_rms(ref, out.detach())
    for name, got, want in zip('qkv', grads, ref_grads):
        assert got.dtype == dtype and torch.isfinite(got).all(), f'd{name} not finite'
        assert rel_rms(want, got.double() / scale) < 2 * tol, (name, rel_rms(want, got.double() / scale))


@pytest.mark.parametrize('dtype,tol', [(torch.float16, 3e-3), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize('case', ['large', 'weak_keys'])
def test_focused_autocast_matches_float64(dtype, tol, case):
    """'large': q, k of magnitude 100 (an fp16 ``x**3`` would be 1e6). 'weak_keys': keys shifted by -2.5, so
    relu leaves few features on and the normaliser is small: the backward's ``out / den`` terms, summed over
    Dv in fp16, overflowed before (NaN gradients; what made the loss scale collapse in training). Features,
    states and ``phi(q) / den`` now stay in float32 under autocast."""
    q, k, v = _leaves(dtype, scales=(100., 100., 1.) if case == 'large' else (1., 1., 1.),
                      shift=(0., -2.5 if case == 'weak_keys' else 0., 0.))
    op = lambda q_, k_, v_: focused_linear_attention(q_, k_, v_, backend='torch')      # noqa: E731
    _compare(op, focused_linear_attention_naive, [q, k, v], dtype, tol)


@pytest.mark.parametrize('dtype,tol', [(torch.float16, 1e-3), (torch.bfloat16, 5e-3)])
def test_rfa_autocast_matches_float64(dtype, tol):
    """sigma = 1.5: phases ``W x`` of |.| up to ~20, where bf16 resolves 2**-3 and fp16 2**-6; sin / cos of a
    rounded phase are wrong by that much (before: bf16 rel-rms ~1e-2, fp16 NaN gradients, as a few normalisers
    sit on the floor), so the projection and the reductions run in float32 (now ~2e-3 / ~3e-4)."""
    q, k, v = _leaves(dtype, scales=(1., 1., 1.))
    w = torch.randn(2, 32, 32, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 1.5
    _compare(lambda *t: rfa_attention(*t, w.float()), lambda *t: rfa_attention_naive(*t, w), [q, k, v], dtype, tol)
