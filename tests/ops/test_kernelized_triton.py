"""Fused Triton kernels of the kernelized attentions (elu+1, ReLU, focused) vs their float64 naive twins.

How the kernels run here (Triton 3.8): with CUDA, compiled on the GPU. Without CUDA, through Triton's CPU
interpreter, which must be switched on by ``TRITON_INTERPRET=1`` *before triton is first imported* in the
process (``@triton.jit`` picks compiled vs interpreted when it decorates, Triton's own library kernels
included, at ``import triton``). Importing ``linattn_mm`` can itself import triton (through ``torch._dynamo``),
so this module sets the variable before its first ``linattn_mm`` import, and re-imports the kernel modules if
they were imported earlier with compiled kernels. If triton was already imported without the interpreter (by
an earlier test module), the in-process kernel tests skip and ``test_interpreter_in_subprocess`` reruns them
in a fresh interpreter with the variable set, as ``test_inline_triton.py`` does. Without triton the module is
skipped. Interpreter runs are slow: shapes are tiny, and blocks are shrunk to 16 tokens to reach multi-block
tails.
"""
import functools

import pytest
import torch

from tests._helpers import (assert_attention_layer_compiles_fullgraph, import_kernel_modules, kernel_module_tests,
                            kernel_test_setup, padding_mask, prepare_triton_interpreter, rel_rms, requires_cuda, with_garbage)

_TRITON_PREIMPORTED = prepare_triton_interpreter()   # before linattn_mm (and with it, maybe triton) is imported

from linattn_mm.ops import _kernelized  # noqa: E402
from linattn_mm.ops.focused import focused_linear_attention, focused_linear_attention_naive  # noqa: E402
from linattn_mm.ops.focused.torch_impl import KERNEL_EPS  # noqa: E402
from linattn_mm.ops.linear import linear_attention, linear_attention_naive  # noqa: E402
from linattn_mm.ops.relu import relu_linear_attention, relu_linear_attention_naive  # noqa: E402

pytest.importorskip('triton')

ti, kt = import_kernel_modules('linattn_mm.ops.inline.triton_impl', 'linattn_mm.ops._kernelized_triton',
                               probe='_fwd_reduce_kernel')
DEV, IN_PROCESS, needs_kernels = kernel_test_setup(_TRITON_PREIMPORTED)


# kernel feature map -> (op, naive twin, extra kwargs of both)
OPS = {
    'elu': (linear_attention, linear_attention_naive, {}),
    'relu': (relu_linear_attention, relu_linear_attention_naive, {}),
    'focused': (focused_linear_attention, focused_linear_attention_naive, {'focusing_factor': 3.}),
}


def _inputs(b, h, nq, nk, d, dv, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    ts = [torch.randn(b, h, n, c, generator=g, dtype=torch.float64) for n, c in ((nq, d), (nk, d), (nk, dv))]
    return [t.to(device=DEV, dtype=dtype).requires_grad_() for t in ts]


def _mask(b, nk, kind):
    return padding_mask(b, nk, kind, DEV)


def _reference(feature, q, k, v, kpm, g, **kw):
    """float64 naive output and (dq, dk, dv) for the upstream gradient ``g``."""
    _, naive, okw = OPS[feature]
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = naive(*leaves, key_padding_mask=kpm, **{**okw, **kw})
    return ref.detach(), torch.autograd.grad(ref, leaves, g)


def _run(fn, q, k, v, seed=7):
    """Output of ``fn(q, k, v)``, the upstream gradient used (float64) and (dq, dk, dv)."""
    out = fn(q, k, v)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(out.device)
    return out, g, torch.autograd.grad(out, (q, k, v), g.to(out.dtype))


def _assert_close(feature, out, grads, ref, ref_grads, atol=2e-5, rtol=1e-4):
    torch.testing.assert_close(out.double(), ref, atol=atol, rtol=rtol, msg=lambda m: f'{feature} out: {m}')
    for name, got, want in zip('qkv', grads, ref_grads):
        torch.testing.assert_close(got.double(), want, atol=atol * 5, rtol=rtol * 5,
                                   msg=lambda m: f'{feature} d{name}: {m}')


@pytest.fixture
def small_blocks(monkeypatch):
    """16-token blocks, so that tiny N already spans several blocks with a masked tail."""
    monkeypatch.setattr(kt, 'BLOCK_N', 16)


CASES = [  # (B, H, Nq, Nk, D, Dv, mask): odd N, cross-attention both ways, non-power-of-two head dims
    (2, 2, 7, 33, 16, 16, 'all_padded'),
    (2, 2, 33, 7, 32, 16, 'ragged'),
    (1, 1, 9, 20, 8, 24, None),
]


@needs_kernels
@pytest.mark.parametrize('case', CASES, ids=lambda c: '-'.join(map(str, c)))
@pytest.mark.parametrize('feature', list(OPS))
def test_fp32_matches_naive(feature, case, small_blocks):
    """The op with backend='triton' (inf/NaN in padded slots) vs its float64 naive twin: output, dq, dk, dv."""
    *shape, kind = case
    q, k, v = _inputs(*shape)
    kpm = _mask(shape[0], shape[3], kind)
    op, _, okw = OPS[feature]
    kg, vg = (with_garbage(k, kpm), with_garbage(v, kpm)) if kpm is not None else (k, v)
    out, g, grads = _run(lambda *t: op(*t, key_padding_mask=kpm, backend='triton', **okw), q, kg, vg)
    assert out.dtype == torch.float32 and out.transpose(1, 2).is_contiguous()   # the kernels' output layout
    _assert_close(feature, out, grads, *_reference(feature, q, k, v, kpm, g))
    if kpm is not None:   # padded keys: exact zero gradients, nothing leaks from the garbage
        for gr in grads[1:]:
            assert torch.all(gr.masked_select(kpm[:, None, :, None].expand_as(gr)) == 0)
    if kind == 'all_padded':
        assert torch.all(out[0] == 0) and all(torch.all(gr[0] == 0) for gr in grads)


@needs_kernels
@pytest.mark.parametrize('feature', list(OPS))
def test_token_splits_batch1(feature, small_blocks):
    """Batch 1, two heads, both reductions (6 key blocks forward, 4 query blocks backward) split over programs
    and combined in a fixed order: a second run is bitwise identical."""
    q, k, v = _inputs(1, 2, 49, 81, 16, 16, seed=1)
    kpm = torch.zeros(1, 81, dtype=torch.bool, device=DEV)
    kpm[0, 70:] = True
    fn = lambda *t: kt.kernelized_attention_triton(*t, kpm, feature=feature, num_splits=3)  # noqa: E731
    out, g, grads = _run(fn, q, k, v)
    _assert_close(feature, out, grads, *_reference(feature, q, k, v, kpm, g))
    out2, _, grads2 = _run(fn, q, k, v)
    assert torch.equal(out, out2) and all(torch.equal(a, b) for a, b in zip(grads, grads2))


def test_split_plan_of_the_reductions():
    """What the split test relies on: 6 key blocks in 3 runs of 2, 4 query blocks in 2 runs of 2."""
    cpu = torch.device('cpu')
    assert ti._split_plan(81, 2, cpu, 3, 16) == (3, 2) and ti._split_plan(49, 2, cpu, 3, 16) == (2, 2)


@needs_kernels
@pytest.mark.parametrize('dtype,tol', [(torch.bfloat16, 6e-3), (torch.float16, 1e-3)])
@pytest.mark.parametrize('feature', list(OPS))
def test_half_precision_rel_rms(feature, dtype, tol, small_blocks):
    """Scale-free error at the output-rounding floor (bf16: ~3.5e-3 with the interpreter's truncating casts,
    less with a GPU's round-to-nearest; fp16: ~3e-4)."""
    q, k, v = _inputs(2, 1, 33, 41, 32, 32, dtype=dtype, seed=2)
    kpm = _mask(2, 41, 'ragged')
    op, _, okw = OPS[feature]
    out, g, grads = _run(lambda *t: op(*t, key_padding_mask=kpm, backend='triton', **okw), q, k, v)
    ref, ref_grads = _reference(feature, q, k, v, kpm, g)
    assert out.dtype == dtype and rel_rms(ref, out.detach()) < tol
    for got, want in zip(grads, ref_grads):
        assert got.dtype == dtype and rel_rms(want, got) < 2 * tol


@needs_kernels
def test_fp16_tiny_denominators_do_not_overflow():
    """ReLU features nearly orthogonal to every key: phi(q) / den reaches ~3e6 and the dKV / N state ~5e5,
    beyond fp16's 65,504. The kernels keep such intermediates in fp32 and bf16 parts, so fp16 I/O stays finite
    and accurate."""
    g = torch.Generator().manual_seed(4)
    b, h, n, d = 1, 1, 64, 16
    q = torch.randn(b, h, n, d, generator=g)
    q[..., n // 2:, 0] = 1.                       # half the queries see only feature 0 ...
    q[..., n // 2:, 1:] = -1.
    k = torch.randn(b, h, n, d, generator=g)
    k[..., 0] = -1.                               # ... which a single key carries, weakly
    k[..., 5, 0] = 2e-5                           # an fp16 subnormal
    v = torch.randn(b, h, n, d, generator=g)
    q, k, v = [t.half().to(DEV).requires_grad_() for t in (q, k, v)]
    out, gr, grads = _run(lambda *t: relu_linear_attention(*t, backend='triton'), q, k, v)
    ref, ref_grads = _reference('relu', q, k, v, None, gr)
    assert torch.isfinite(out).all() and all(torch.isfinite(t).all() for t in grads)
    assert rel_rms(ref, out.detach()) < 1e-3
    assert rel_rms(ref_grads[2], grads[2]) < 2e-3                      # dV carries the ~5e5 state


@needs_kernels
@pytest.mark.parametrize('case', ['large', 'weak_keys'])
def test_focused_fp16_extremes(case, small_blocks):
    """Focused features in half precision at the inputs that overflowed the torch path under autocast: q, k of
    magnitude 100 (x**3 ~ 1e6) and keys shifted by -2.5 (small normalisers), with a loss scaler's 2**16 on
    a mean loss's upstream gradient. The kernels compute the map and every state in fp32 on chip (bf16 I/O
    rounds the features to bf16 by design, see the module docstring; its error is test_half_precision_rel_rms's)."""
    dtype, tol = torch.float16, 2e-3
    q, k, v = _inputs(1, 1, 40, 40, 32, 32, dtype=torch.float64, seed=5)
    with torch.no_grad():
        if case == 'large':
            q.mul_(100.)
            k.mul_(100.)
        else:
            k.sub_(2.5)
    q, k, v = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
    out = focused_linear_attention(q, k, v, backend='triton')
    scale = 2. ** 16 / out.numel()
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64).to(out.device)
    grads = torch.autograd.grad(out, (q, k, v), (g * scale).to(dtype))
    ref, ref_grads = _reference('focused', q, k, v, None, g)
    assert torch.isfinite(out).all() and rel_rms(ref, out.detach()) < tol
    for got, want in zip(grads, ref_grads):
        assert torch.isfinite(got).all() and rel_rms(want, got.double() / scale) < 2 * tol


@needs_kernels
def test_eps_zero_denominator_rows():
    """eps = 0 and a query orthogonal to every key: den == 0, output 0 and finite gradients, as the torch
    path (den == 0 -> the row's output is 0)."""
    q, k, v = _inputs(2, 1, 6, 9, 16, 16, seed=5)
    with torch.no_grad():
        q[0, 0, 2] = -1.
        q[0, 0, 2, 3] = 1.
        k[0, 0, :, 3] = -1.
    out, g, grads = _run(lambda *t: relu_linear_attention(*t, eps=0., backend='triton'), q, k, v)
    assert torch.all(out[0, 0, 2] == 0)
    _assert_close('relu', out, grads, *_reference('relu', q, k, v, None, g, eps=0.))


@needs_kernels
@pytest.mark.parametrize('p', [1.5, 5.])
def test_focusing_factor(p):
    q, k, v = _inputs(1, 2, 12, 10, 16, 8, seed=6)
    out, g, grads = _run(lambda *t: focused_linear_attention(*t, focusing_factor=p, backend='triton'), q, k, v)
    _assert_close('focused', out, grads, *_reference('focused', q, k, v, None, g, focusing_factor=p))


@needs_kernels
def test_identity_features_through_kernelized_attention():
    """Caller-made features (the FLatten layer, Performer) through ``kernelized_attention(backend='triton')``."""
    q, k, v = _inputs(2, 2, 10, 21, 16, 8, seed=8)
    kpm = _mask(2, 21, 'ragged')
    feats = lambda x: torch.nn.functional.softplus(x) ** 2  # noqa: E731  (positive features, any map)
    run = lambda *t, be: _kernelized.kernelized_attention(  # noqa: E731
        feats(t[0]), feats(t[1]), t[2], kpm, eps=1e-6, out_dtype=t[2].dtype, backend=be)
    out, g, grads = _run(lambda *t: run(*t, be='triton'), q, k, v)
    assert out.transpose(1, 2).is_contiguous()                          # took the kernels
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = _kernelized.kernelized_attention_naive(feats(leaves[0]), feats(leaves[1]), leaves[2], kpm, 1e-6)
    _assert_close('identity', out, grads, ref.detach(), torch.autograd.grad(ref, leaves, g))


@needs_kernels
def test_strided_inputs_and_output_layout():
    """q/k/v as head views of one packed (B, N, 3, H, D) tensor; O comes back in merge-heads order."""
    b, n, h, d = 2, 9, 2, 16
    qkv = torch.randn(b, n, 3, h, d, device=DEV).requires_grad_()
    out = linear_attention(*qkv.permute(2, 0, 3, 1, 4).unbind(0), backend='triton')
    assert out.shape == (b, h, n, d) and out.transpose(1, 2).is_contiguous()
    out.transpose(1, 2).reshape(b, n, h * d).square().sum().backward()
    ref_qkv = qkv.detach().double().requires_grad_()
    ref = linear_attention_naive(*ref_qkv.permute(2, 0, 3, 1, 4).unbind(0))
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=1e-4)
    ref.square().sum().backward()
    torch.testing.assert_close(qkv.grad.double(), ref_qkv.grad, atol=1e-4, rtol=1e-4)


@needs_kernels
@pytest.mark.parametrize('which', ['q', 'kv'])
def test_partial_requires_grad(which):
    """Only some inputs require a gradient: those are right (the backward op computes all three)."""
    q, k, v = _inputs(2, 2, 5, 6, 16, 16)
    kpm = _mask(2, 6, 'ragged')
    leaves = (q,) if which == 'q' else (k, v)
    for t in {'q': (k, v), 'kv': (q,)}[which]:
        t.requires_grad_(False)
    out = focused_linear_attention(q, k, v, key_padding_mask=kpm, backend='triton')
    got = torch.autograd.grad(out.sum(), leaves)
    qd, kd, vd = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = focused_linear_attention_naive(qd, kd, vd, key_padding_mask=kpm)
    want = torch.autograd.grad(ref.sum(), {'q': (qd,), 'kv': (kd, vd)}[which])
    for a, b_ in zip(got, want):
        torch.testing.assert_close(a.double(), b_, atol=1e-4, rtol=1e-4)


@needs_kernels
@pytest.mark.parametrize('nq,nk', [(0, 5), (4, 0)])
def test_empty_sequences(nq, nk):
    """No queries: an empty output; no keys: zeros (as for an all-padded sample); gradients are zeros."""
    q, k, v = _inputs(2, 2, nq, nk, 16, 16)
    out = linear_attention(q, k, v, backend='triton')
    assert out.shape == (2, 2, nq, 16) and torch.all(out == 0)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    assert all(gr.shape == t.shape and torch.all(gr == 0) for gr, t in zip(grads, (q, k, v)))


@needs_kernels
@pytest.mark.parametrize('feature', ['focused'])  # the features differ only in a constexpr of the same kernels
def test_custom_op_registration(feature, small_blocks):
    """The kernels are opaque torch.library ops: schema, fake (meta) impl, autograd registration and AOTAutograd
    with dynamic shapes agree with the real kernels (torch.library.opcheck)."""
    q, k, v = _inputs(1, 2, 9, 17, 8, 8)  # tiny: opcheck runs the interpreted kernels a dozen times
    pad = _mask(1, 17, 'ragged').view(torch.uint8)
    args = (q, k, v, pad, 1e-6, kt.FEATURES[feature], 3., None)
    torch.library.opcheck(torch.ops.linattn_mm.kernelized_triton_fwd.default, args)
    out, kv, z, inv = torch.ops.linattn_mm.kernelized_triton_fwd(*args)
    bwd = [t.detach() for t in (torch.randn_like(out), q, k, v, pad, kv, z, inv)]
    torch.library.opcheck(torch.ops.linattn_mm.kernelized_triton_bwd.default, (*bwd, *args[4:]))


@needs_kernels
def test_compiles_fullgraph_through_the_custom_op(small_blocks):
    """A layer calling the fused op compiles with fullgraph=True (no graph break at the Triton launch) across
    sizes; outputs and gradients equal eager."""
    assert_attention_layer_compiles_fullgraph(
        functools.partial(focused_linear_attention, backend='triton'), lambda b, n: _mask(b, n, 'ragged'), DEV)


# ---- selection and validation (no kernel launches) ----

def test_auto_on_cpu_stays_on_torch(monkeypatch):
    """'auto' on CPU never reaches the kernels (and so never imports the Triton module of the ops)."""
    def boom(*a, **k):
        raise AssertionError('the Triton kernels were called')
    monkeypatch.setattr(kt, 'kernelized_attention_triton', boom)
    q, k, v = [torch.randn(1, 2, 5, 8) for _ in range(3)]
    for feature, (op, naive, okw) in OPS.items():
        torch.testing.assert_close(op(q, k, v, **okw), naive(q, k, v, **okw), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(op(q, k, v, backend='torch', **okw), op(q, k, v, **okw), atol=0, rtol=0)


def test_auto_keeps_mixed_dtypes_on_torch(monkeypatch):
    """'auto' sends q, k, v of different dtypes to the torch path (its fp32 island takes them); the kernels
    need one I/O dtype, and a forced 'triton' says so."""
    monkeypatch.setattr(_kernelized, 'resolve_backend', lambda backend, *t, **kw: 'triton')
    q, k, v = torch.randn(1, 1, 4, 8), torch.randn(1, 1, 4, 8), torch.randn(1, 1, 4, 8).double()
    assert not _kernelized.triton_selected('auto', q, k, v, None)
    assert _kernelized.triton_selected('auto', q, k, v.float(), None)
    assert not _kernelized.triton_selected('torch', q, k, v, None)
    with pytest.raises(ValueError, match='one dtype'):
        relu_linear_attention(q, k, v, backend='triton')


def test_input_validation():
    q = torch.randn(1, 1, 4, 16)
    with pytest.raises(ValueError, match='float64'):
        linear_attention(q.double(), q.double(), q.double(), backend='triton')
    with pytest.raises(ValueError, match="'auto', 'torch', 'triton'"):
        linear_attention(q, q, q, backend='cuda')
    with pytest.raises(ValueError, match='<= 128'):
        w = torch.randn(1, 1, 4, 256)
        kt.kernelized_attention_triton(w, w, w)
    with pytest.raises(ValueError, match='feature'):
        kt.kernelized_attention_triton(q, q, q, feature='softmax')
    with pytest.raises(ValueError, match='focusing_factor'):
        kt.kernelized_attention_triton(q, q, q, feature='focused', focusing_factor=0.)
    assert kt.FOCUS_EPS == KERNEL_EPS


_COMPILE_SM90 = r'''
import linattn_mm.ops._kernelized_triton as kt
from tests._helpers import compile_kernel_sm90
FP32 = {'kv_ptr', 'ks_ptr', 'cnt_ptr', 'z_ptr', 'inv_ptr', 'dkv_ptr', 'dz_ptr', 'w_ptr', 'bz_ptr'}
def build(fn, dt, consts, warps):
    types = {n: ('*fp32' if n in FP32 or n.endswith('_part') else '*u8' if n == 'pad_ptr' else '*' + dt)
             for n in fn.arg_names if n.endswith(('_ptr', '_part'))}
    compile_kernel_sm90(fn, dict(types, p='fp32', eps='fp32'), consts, warps)
for dt, mode, feat, bd, blk in (('bf16', 1, 3, 64, kt.GPU_BLOCK_N), ('fp16', 2, 2, 128, None),
                                ('fp32', 0, 1, 16, None)):
    bn = lambda kind: blk[kind] if blk else kt.BLOCK_N
    c = dict(FEATURE=feat, MODE=mode, PREC='ieee', UPCAST=False, BLOCK_D=bd, BLOCK_DV=bd)
    build(kt._fwd_reduce_kernel, dt, dict(c, HAS_PAD=True, BLOCK_N=bn('fwd_reduce')), 8)
    build(kt._fwd_apply_kernel, dt, dict(c, BLOCK_N=bn('fwd_apply')), 4)
    build(kt._bwd_q_kernel, dt, dict(c, WRITE_DQ=True, ACC_KV=True, BLOCK_N=bn('bwd_q')), 8)
    build(kt._bwd_kv_kernel, dt, dict(c, HAS_PAD=True, NEED_DK=True, NEED_DV=True, BLOCK_N=bn('bwd_kv')), 8)
for fn in (kt._fwd_combine_kernel, kt._bwd_combine_kernel):
    build(fn, 'fp32', dict(BLOCK_D=128, BLOCK_DV=16), 4)
print('compiled')
'''
test_kernels_compile_for_sm90, test_interpreter_in_subprocess = kernel_module_tests(__file__, _COMPILE_SM90,
                                                                                    IN_PROCESS)


# ---- GPU only: compiled kernels at realistic sizes against the float64 torch path ----

@pytest.mark.gpu
@requires_cuda
class TestOnGPU:
    @pytest.mark.parametrize('feature', list(OPS))
    def test_auto_takes_the_kernels(self, feature):
        op, _, okw = OPS[feature]
        q, k, v = _inputs(1, 2, 64, 64, 32, 32, dtype=torch.bfloat16)
        assert op(q, k, v, **okw).transpose(1, 2).is_contiguous()           # the Triton output layout
        assert not op(q, k, v, backend='torch', **okw).transpose(1, 2).is_contiguous()

    @pytest.mark.parametrize('n,d,dtype,tol', [(16384, 64, torch.float32, 1e-5), (65536, 32, torch.bfloat16, 1e-2),
                                               (4099, 128, torch.float16, 2e-3)])
    @pytest.mark.parametrize('feature', list(OPS))
    def test_large_n(self, feature, n, d, dtype, tol):
        op, _, okw = OPS[feature]
        q, k, v = _inputs(1, 2, n, n, d, d, dtype=dtype)
        kpm = torch.zeros(1, n, dtype=torch.bool, device='cuda')
        kpm[0, n - 1000:] = True
        out, g, grads = _run(lambda *t: op(*t, key_padding_mask=kpm, backend='triton', **okw), q, k, v)
        leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
        ref = op(*leaves, key_padding_mask=kpm, backend='torch', **okw)
        assert rel_rms(ref.detach(), out.detach()) < tol
        for got, want in zip(grads, torch.autograd.grad(ref, leaves, g)):
            assert rel_rms(want, got) < 2 * tol
