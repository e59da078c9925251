"""Fused Triton kernels of TaylorShift's efficient path vs the float64 naive twin (outputs and gradients of q,
k, v and the temperature).

How the kernels run here is explained in ``test_kernelized_triton.py``: compiled with CUDA; without it through
Triton's CPU interpreter, switched on before triton is first imported (or, if an earlier test module imported
it compiled, by ``test_interpreter_in_subprocess`` in a fresh process). Shapes are tiny and token blocks are
shrunk to 16 so that several blocks, a masked tail and several feature blocks occur.
"""
import pytest
import torch

from tests._helpers import (assert_attention_layer_compiles_fullgraph, import_kernel_modules, kernel_module_tests,
                            kernel_test_setup, padding_mask, prepare_triton_interpreter, rel_rms, requires_cuda,
                            with_garbage)

_TRITON_PREIMPORTED = prepare_triton_interpreter()   # before linattn_mm (and with it, maybe triton) is imported

from linattn_mm.ops.taylor import taylor_attention, taylor_attention_naive  # noqa: E402
from linattn_mm.ops.taylor import torch_impl as taylor_torch  # noqa: E402

pytest.importorskip('triton')

kt, tt = import_kernel_modules('linattn_mm.ops._kernelized_triton', 'linattn_mm.ops.taylor.triton_impl',
                               probe='_state_kernel')
DEV, IN_PROCESS, needs_kernels = kernel_test_setup(_TRITON_PREIMPORTED)


def _inputs(b, h, nq, nk, d, dv, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    ts = [torch.randn(b, h, n, c, generator=g, dtype=torch.float64) for n, c in ((nq, d), (nk, d), (nk, dv))]
    tau = torch.rand(h, generator=g, dtype=torch.float64) * 3. - 1.   # per head, signs and sizes vary
    return [t.to(device=DEV, dtype=dtype).requires_grad_() for t in ts] + [tau.float().to(DEV).requires_grad_()]


def _mask(b, nk, kind):
    return padding_mask(b, nk, kind, DEV)


def _run(fn, *leaves, seed=7):
    out = fn(*leaves)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(out.device)
    return out, g, torch.autograd.grad(out, leaves, g.to(out.dtype))


def _reference(q, k, v, tau, kpm, g, **kw):
    """float64 naive output and (dq, dk, dv, dtau) for the upstream gradient ``g``."""
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v, tau)]
    ref = taylor_attention_naive(*leaves[:3], temperature=leaves[3], key_padding_mask=kpm, **kw)
    return ref.detach(), torch.autograd.grad(ref, leaves, g)


def _assert_close(out, grads, ref, ref_grads, atol=2e-5, rtol=1e-4):
    torch.testing.assert_close(out.double(), ref, atol=atol, rtol=rtol)
    for name, got, want in zip(('q', 'k', 'v', 'tau'), grads, ref_grads):
        torch.testing.assert_close(got.double(), want, atol=atol * 5, rtol=rtol * 5, msg=lambda m: f'd{name}: {m}')


def _op(kpm, **kw):
    return lambda q, k, v, tau: taylor_attention(q, k, v, temperature=tau, mode='efficient', key_padding_mask=kpm,
                                                 backend='triton', **kw)


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(tt, 'BLOCK_N', 16)


# ---- the feature expansion itself (plain torch, no kernels) ----

def _features(x, d):
    """phi(x) (..., F_PAD) from the kernels' pair table, in torch: the ground truth of what they compute."""
    ia, ib, _ = tt._pair_table(d, x.device)
    xp = torch.cat([x, torch.zeros_like(x[..., :1]), torch.ones_like(x[..., :1])], -1)  # -2 -> 0, -1 -> 1
    return xp[..., ia.long() % (d + 2)] * xp[..., ib.long() % (d + 2)]


@pytest.mark.parametrize('d', [1, 5, 16, 32])
def test_pair_features_reproduce_taylor_exp(d):
    """sum_f w_f phi_f(a) phi_f(b) = 1 + tau a.b + (tau a.b)^2 / 2 for unit a, b; F = (D+1)(D+2)/2 features."""
    g = torch.Generator().manual_seed(d)
    a, b = [torch.nn.functional.normalize(torch.randn(50, d, generator=g, dtype=torch.float64), dim=-1)
            for _ in range(2)]
    tau = torch.tensor([-2.5, 0.3, 4.], dtype=torch.float64).view(1, 3, 1, 1)
    w = tt.feature_weights(tau, d)                                        # (3, F_PAD)
    got = torch.einsum('hf,if,jf->hij', w, _features(a, d), _features(b, d))
    x = tau.view(3, 1, 1) * (a @ b.T)
    torch.testing.assert_close(got, 1 + x + x * x / 2, atol=1e-12, rtol=1e-12)
    ia, ib, kind = tt._pair_table_cpu(d)
    assert int((kind != tt._PAD).sum()) == tt.num_features(d) == (d + 1) * (d + 2) // 2
    assert ia.numel() % tt.BLOCK_F == 0 and torch.all(ia[kind == tt._PAD] == tt._NONE)


# ---- kernels vs the naive twin ----

CASES = [  # (B, H, Nq, Nk, D, Dv, mask, output_normalized): odd N, cross-attention both ways, odd head dims
    (2, 2, 7, 33, 16, 16, 'all_padded', False),
    (2, 2, 33, 7, 8, 24, 'ragged', True),
    (1, 1, 20, 20, 5, 3, None, False),
]


@needs_kernels
@pytest.mark.parametrize('case', CASES, ids=lambda c: '-'.join(map(str, c)))
def test_fp32_matches_naive(case, small_blocks):
    """backend='triton' (inf/NaN in padded slots) vs float64 naive: output, dq, dk, dv and dtau."""
    *shape, kind, normalized = case
    q, k, v, tau = _inputs(*shape)
    kpm = _mask(shape[0], shape[3], kind)
    kg, vg = (with_garbage(k, kpm), with_garbage(v, kpm)) if kpm is not None else (k, v)
    out, g, grads = _run(_op(kpm, output_normalized=normalized), q, kg, vg, tau)
    assert out.dtype == torch.float32
    _assert_close(out, grads, *_reference(q, k, v, tau, kpm, g, output_normalized=normalized))
    if kpm is not None:   # padded keys: exact zero gradients, nothing leaks from the garbage
        for gr in grads[1:3]:
            assert torch.all(gr.masked_select(kpm[:, None, :, None].expand_as(gr)) == 0)
    if kind == 'all_padded':
        assert torch.all(out[0] == 0) and all(torch.all(gr[0] == 0) for gr in grads[:3])


@needs_kernels
def test_token_splits_batch1_deterministic(small_blocks):
    """Batch 1: the key reduction (6 blocks) and, in the backward, the query reduction split over 3 programs per
    feature block and summed in a fixed order: a second run is bitwise identical."""
    q, k, v, tau = _inputs(1, 2, 49, 81, 8, 8, seed=1)
    kpm = torch.zeros(1, 81, dtype=torch.bool, device=DEV)
    kpm[0, 70:] = True

    def fn(q, k, v, tau):
        qn, kn = taylor_torch.unit_qk(q, k)
        return tt.taylor_efficient_triton(qn, kn, v, tau.view(1, -1, 1, 1), kpm, num_splits=3)
    out, g, grads = _run(fn, q, k, v, tau)
    _assert_close(out, grads, *_reference(q, k, v, tau, kpm, g))
    out2, _, grads2 = _run(fn, q, k, v, tau)
    assert torch.equal(out, out2) and all(torch.equal(a, b) for a, b in zip(grads, grads2))


@needs_kernels
@pytest.mark.parametrize('dtype,tol', [(torch.bfloat16, 5e-3), (torch.float16, 8e-4)])
def test_half_precision_rel_rms(dtype, tol, small_blocks):
    """Scale-free error near the output-rounding floor (bf16 also rounds the features once). Measured under the
    interpreter: bf16 2.1e-3 (gradients <= 7.2e-3), fp16 2.5e-4 (<= 1.1e-3), about half the torch path's."""
    q, k, v, tau = _inputs(2, 1, 33, 41, 16, 16, dtype=dtype, seed=2)
    kpm = _mask(2, 41, 'ragged')
    out, g, grads = _run(_op(kpm), q, k, v, tau)
    ref, ref_grads = _reference(q, k, v, tau, kpm, g)
    assert out.dtype == dtype and rel_rms(ref, out.detach()) < tol
    for got, want in zip(grads, ref_grads):
        assert got.dtype in (dtype, torch.float32) and rel_rms(want, got) < 2 * tol


@needs_kernels
def test_fp16_large_temperature_and_many_keys():
    """tau = 30 (f up to 481) and 600 keys: fp32 states and the 1/N in the weights keep fp16 finite."""
    q, k, v, _ = _inputs(1, 2, 20, 600, 8, 8, dtype=torch.float16, seed=3)
    tau = torch.tensor([30., -30.], device=DEV, requires_grad=True)
    out, g, grads = _run(_op(None), q, k, v, tau)
    ref, ref_grads = _reference(q, k, v, tau, None, g)
    assert torch.isfinite(out).all() and all(torch.isfinite(t).all() for t in grads)
    assert rel_rms(ref, out.detach()) < 1.5e-3          # measured 5.3e-4; gradients <= 1.4e-3
    for got, want in zip(grads, ref_grads):
        assert rel_rms(want, got) < 3e-3


@needs_kernels
@pytest.mark.parametrize('which', ['q', 'kv', 'tau'])
def test_partial_requires_grad(which):
    """Only the gradients asked for are computed, and they are right."""
    q, k, v, tau = _inputs(2, 2, 5, 6, 8, 8)
    kpm = _mask(2, 6, 'ragged')
    leaves = {'q': (q,), 'kv': (k, v), 'tau': (tau,)}[which]
    for t in (q, k, v, tau):
        if all(t is not x for x in leaves):
            t.requires_grad_(False)
    out = _op(kpm)(q, k, v, tau)
    got = torch.autograd.grad(out.sum(), leaves)
    ref_leaves = [t.detach().double().requires_grad_() for t in (q, k, v, tau)]
    ref = taylor_attention_naive(*ref_leaves[:3], temperature=ref_leaves[3], key_padding_mask=kpm)
    idx = {'q': (0,), 'kv': (1, 2), 'tau': (3,)}[which]
    want = torch.autograd.grad(ref.sum(), [ref_leaves[i] for i in idx])
    for a, b_ in zip(got, want):
        torch.testing.assert_close(a.double(), b_, atol=1e-4, rtol=1e-4)


@needs_kernels
@pytest.mark.parametrize('nq,nk', [(0, 5), (4, 0)])
def test_empty_sequences(nq, nk):
    """No queries: an empty output; no keys: zeros (as an all-padded sample); gradients are zeros."""
    q, k, v, tau = _inputs(2, 2, nq, nk, 8, 8)
    out = _op(None)(q, k, v, tau)
    assert out.shape == (2, 2, nq, 8) and torch.all(out == 0)
    grads = torch.autograd.grad(out.sum(), (q, k, v), allow_unused=True)
    assert all(gr is None or torch.all(gr == 0) for gr in grads)


@needs_kernels
def test_strided_head_views():
    """q/k/v as head views of one packed (B, N, 3, H, D) tensor, the layout of an attention layer."""
    b, n, h, d = 2, 9, 2, 8
    qkv = torch.randn(b, n, 3, h, d, device=DEV).requires_grad_()
    out = taylor_attention(*qkv.permute(2, 0, 3, 1, 4).unbind(0), mode='efficient', backend='triton')
    out.square().sum().backward()
    ref_qkv = qkv.detach().double().requires_grad_()
    ref = taylor_attention_naive(*ref_qkv.permute(2, 0, 3, 1, 4).unbind(0))
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=1e-4)
    ref.square().sum().backward()
    torch.testing.assert_close(qkv.grad.double(), ref_qkv.grad, atol=1e-4, rtol=1e-4)


# ---- selection and validation (no kernel launches) ----

def test_auto_on_cpu_stays_on_torch(monkeypatch):
    """'auto' on CPU never reaches the kernels; the torch efficient path runs."""
    def boom(*a, **k):
        raise AssertionError('the Triton kernels were called')
    monkeypatch.setattr(tt, 'taylor_efficient_triton', boom)
    q, k, v = [torch.randn(1, 2, 5, 8) for _ in range(3)]
    torch.testing.assert_close(taylor_attention(q, k, v, mode='efficient'), taylor_attention_naive(q, k, v),
                               atol=1e-5, rtol=1e-5)


@requires_cuda
@pytest.mark.parametrize('nk,kernels', [(2000, True), (500, False)])
def test_auto_on_cuda_takes_the_kernels_above_the_crossover(monkeypatch, nk, kernels):
    """mode='auto' with backend='auto' on CUDA: the kernels run the efficient path (Nk > n0 = 1057 at D = 32);
    shorter sequences take the torch direct path."""
    calls = []
    real = tt.taylor_efficient_triton
    monkeypatch.setattr(tt, 'taylor_efficient_triton', lambda *a, **k: calls.append(1) or real(*a, **k))
    q, k, v = [torch.randn(1, 2, nk, 32, device='cuda', dtype=torch.bfloat16) for _ in range(3)]
    out = taylor_attention(q, k, v)
    assert bool(calls) == kernels and out.dtype == torch.bfloat16
    assert rel_rms(taylor_attention_naive(q.double(), k.double(), v.double()), out) < 8e-3


def test_backend_errors(monkeypatch):
    q = torch.randn(1, 1, 4, 8)
    with pytest.raises(ValueError, match="runs the efficient path only"):
        taylor_attention(q, q, q, mode='direct', backend='triton')
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        taylor_attention(q, q, q, mode='direct', backend='cuda')
    with pytest.raises(ValueError, match='float64'):
        taylor_attention(q.double(), q.double(), q.double(), mode='efficient', backend='triton')
    monkeypatch.setattr(taylor_torch, 'resolve_backend', lambda backend, *t, **kw: 'triton')
    with pytest.raises(ValueError, match='one dtype'):
        taylor_attention(q, q, q.half(), mode='efficient', backend='triton')
    assert not taylor_torch._triton_selected('auto', q, q, q.half(), None)   # 'auto' falls back to torch


@needs_kernels
def test_custom_op_registration(small_blocks):
    """The kernels are opaque torch.library ops: schema, fake (meta) impl, autograd registration and AOTAutograd
    with dynamic shapes all agree with the real kernels (torch.library.opcheck)."""
    q, k, v, _ = _inputs(1, 2, 9, 17, 4, 8)  # tiny: opcheck runs the interpreted kernels a dozen times
    u0 = torch.ones(1, 2, 17, device=DEV)
    torch.library.opcheck(torch.ops.linattn_mm.taylor_triton_state.default, (k, v, u0, None))
    s, s0 = (t.detach() for t in torch.ops.linattn_mm.taylor_triton_state(k, v, u0, None))
    torch.library.opcheck(torch.ops.linattn_mm.taylor_triton_apply.default, (q, s, s0, 8, None))
    dy, dy0 = torch.randn(1, 2, 9, 8, device=DEV), torch.randn(1, 2, 9, device=DEV)
    for want_y, want_dx in ((True, True), (False, True), (True, False)):
        torch.library.opcheck(torch.ops.linattn_mm.taylor_triton_grad.default,
                              (q.detach(), s, s0, dy, dy0, 8, want_y, want_dx))


@needs_kernels
def test_compiles_fullgraph_through_the_custom_op(small_blocks):
    """A layer that calls the fused op compiles with fullgraph=True (no graph break at the Triton launch) across
    sizes; outputs and gradients equal eager."""
    tau = torch.tensor([0.7, -0.3], device=DEV)
    assert_attention_layer_compiles_fullgraph(
        lambda q, k, v, key_padding_mask: taylor_attention(q, k, v, temperature=tau, mode='efficient',
                                                           key_padding_mask=key_padding_mask, backend='triton'),
        lambda b, n: _mask(b, n, 'ragged'), DEV)
    assert_attention_layer_compiles_fullgraph(
        lambda q, k, v, key_padding_mask: taylor_attention(q, k, v, temperature=tau, mode='efficient',
                                                           backend='triton'),
        lambda b, n: None, DEV)


_COMPILE_SM90 = r'''
import linattn_mm.ops.taylor.triton_impl as tt
from tests._helpers import compile_kernel_sm90
FP32 = {'s_part', 's0_part', 'm_ptr', 'm0_ptr', 'y_ptr', 'y0_ptr'}
def build(fn, dt, udt, consts):
    types = {n: '*fp32' if n in FP32 else '*i32' if n in ('ia_ptr', 'ib_ptr') else
             '*' + (udt if n in ('u_ptr', 'u0_ptr') else dt) for n in fn.arg_names if n.endswith(('_ptr', '_part'))}
    compile_kernel_sm90(fn, types, consts, tt.NUM_WARPS)
for dt, udt, mode, bd in (('bf16', 'bf16', 1, 32), ('bf16', 'fp32', 1, 64), ('fp16', 'fp16', 2, 128),
                          ('fp32', 'fp32', 0, 16)):
    c = dict(MODE=mode, PREC='ieee', UPCAST=False, U_EXACT=udt == 'bf16', BLOCK_F=tt.BLOCK_F)
    build(tt._state_kernel, dt, udt, dict(c, BLOCK_N=tt.GPU_BLOCK_N['state'], BLOCK_DV=bd))
    for wy, wdx in ((True, False), (False, True), (True, True)):
        build(tt._apply_kernel, dt, udt, dict(c, WANT_Y=wy, WANT_DX=wdx, BLOCK_D=bd, BLOCK_DV=bd,
                                              BLOCK_N=tt.GPU_BLOCK_N['grad' if wdx else 'apply']))
print('compiled')
'''
test_kernels_compile_for_sm90, test_interpreter_in_subprocess = kernel_module_tests(__file__, _COMPILE_SM90,
                                                                                    IN_PROCESS)
