"""Fused Triton InLine kernels vs a float64 materialised reference: outputs and dq, dk, dv.

How the kernels run here (Triton 3.8): with CUDA, compiled on the GPU. Without CUDA, through Triton's CPU
interpreter, which must be switched on by ``TRITON_INTERPRET=1`` *before triton is first imported* in the
process: ``@triton.jit`` picks compiled vs interpreted when it decorates a function, and that includes
Triton's own library kernels (e.g. the combine function behind ``tl.sum``) decorated at ``import triton``.
So this module sets the variable before importing triton (harmless on a CPU-only machine, where nothing
else can run Triton) and re-imports ``triton_impl`` if it was imported earlier. If triton itself was
already imported without the interpreter (by an earlier test module), the in-process kernel tests skip and
``test_interpreter_in_subprocess`` reruns them in a fresh interpreter with the variable set.
Without triton the module is skipped.
Interpreter runs are slow: shapes are tiny, and blocks are shrunk to 16 to reach multi-block tails.
"""
import functools

import pytest
import torch

from tests._helpers import (assert_attention_layer_compiles_fullgraph, import_kernel_modules, kernel_module_tests,
                            kernel_test_setup, padding_mask, prepare_triton_interpreter, rel_rms, requires_cuda)

_TRITON_PREIMPORTED = prepare_triton_interpreter()   # before linattn_mm (and with it, maybe triton) is imported

from linattn_mm.ops import backend as bk  # noqa: E402

pytest.importorskip('triton')

ti, = import_kernel_modules('linattn_mm.ops.inline.triton_impl', probe='_reduce_kernel')
DEV, IN_PROCESS, needs_kernels = kernel_test_setup(_TRITON_PREIMPORTED)


try:
    from linattn_mm.ops.inline.naive import inline_attention_naive
except ImportError:  # the naive twin is written separately; the local reference below suffices
    inline_attention_naive = None


def inline_ref(q, k, v, kpm=None):
    """float64 InLine with the (B, H, Nq, Nk) weights materialised: 1/N + (s/N)(q.k_j - q.mean(K))."""
    q, k, v = q.double(), k.double(), v.double()
    b, nk = k.shape[0], k.shape[2]
    keep = torch.ones(b, nk, dtype=torch.bool, device=k.device) if kpm is None else ~kpm
    n = keep.sum(-1).double()[:, None, None, None]                        # (B, 1, 1, 1)
    keep_k = keep[:, None, :, None].double()
    k = torch.where(keep_k > 0, k, 0.)                                    # garbage in padding never enters
    v = torch.where(keep_k > 0, v, 0.)
    k_mean = k.sum(-2, keepdim=True) / n.clamp_min(1)
    s = q.shape[-1] ** -0.5
    w = (1 + s * (q @ k.transpose(-1, -2) - q @ k_mean.transpose(-1, -2))) / n.clamp_min(1)
    w = w * keep[:, None, None, :].double() * (n > 0).double()
    return w @ v


def _inputs(b, h, nq, nk, d, dv, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    ts = [torch.randn(b, h, n, c, generator=g, dtype=torch.float64) for n, c in ((nq, d), (nk, d), (nk, dv))]
    return [t.to(device=DEV, dtype=dtype).requires_grad_() for t in ts]


def _mask(b, nk, kind):
    return padding_mask(b, nk, kind, DEV)


def _check(q, k, v, kpm, num_splits=None, atol=2e-5, rtol=1e-4):
    out = ti.inline_attention_triton(q, k, v, kpm, num_splits=num_splits)
    refs = [inline_ref]
    if inline_attention_naive is not None:
        refs.append(lambda *a: inline_attention_naive(*[t.double() for t in a[:3]], key_padding_mask=a[3]))
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64).to(DEV)
    grads = torch.autograd.grad(out, (q, k, v), g.to(out.dtype))
    for ref_fn in refs:
        qd, kd, vd = [t.detach().double().requires_grad_() for t in (q, k, v)]
        ref = ref_fn(qd, kd, vd, kpm)
        torch.testing.assert_close(out.double(), ref, atol=atol, rtol=rtol)
        for name, got, want in zip('qkv', grads, torch.autograd.grad(ref, (qd, kd, vd), g)):
            torch.testing.assert_close(got.double(), want, atol=atol * 5, rtol=rtol * 5, msg=lambda m: f'd{name}: {m}')
    return out, grads


@pytest.fixture
def small_blocks(monkeypatch):
    """16-token blocks, so that tiny N already spans several blocks with a masked tail."""
    monkeypatch.setattr(ti, 'REDUCE_BLOCK_N', 16)
    monkeypatch.setattr(ti, 'APPLY_BLOCK_N', 16)


CASES = [  # (B, H, Nq, Nk, D, Dv, mask)
    (2, 2, 1, 1, 16, 16, 'all_padded'),
    (2, 2, 7, 33, 16, 16, 'all_padded'),
    (2, 2, 33, 7, 32, 32, 'ragged'),
    (2, 2, 33, 33, 32, 16, None),
    (1, 1, 9, 7, 8, 24, 'ragged'),       # head dims that are not powers of two (padded on chip)
]


@needs_kernels
@pytest.mark.parametrize('case', CASES, ids=lambda c: '-'.join(map(str, c)))
def test_fp32_matches_reference(case, small_blocks):
    *shape, kind = case
    q, k, v = _inputs(*shape)
    kpm = _mask(shape[0], shape[3], kind)
    out, grads = _check(q, k, v, kpm)
    if kind == 'all_padded':
        assert torch.all(out[0] == 0)
        assert all(torch.all(gr[0] == 0) for gr in grads)
    if kpm is not None:  # padded keys get exact zero gradients
        for gr in grads[1:]:
            assert torch.all(gr.masked_select(kpm[:, None, :, None].expand_as(gr)) == 0)


@needs_kernels
@pytest.mark.parametrize('num_splits', [1, 2, 3])
def test_token_splits_batch1(num_splits, small_blocks):
    """Batch 1, two heads, the token axis split over programs (partials combined over splits)."""
    q, k, v = _inputs(1, 2, 70, 101, 16, 16)
    kpm = torch.zeros(1, 101, dtype=torch.bool, device=DEV)
    kpm[0, 90:] = True
    _check(q, k, v, kpm, num_splits=num_splits)


@needs_kernels
@pytest.mark.parametrize('dtype,tol', [(torch.bfloat16, 6e-3), (torch.float16, 1e-3)])
def test_half_precision_rel_rms(dtype, tol, small_blocks):
    """Scale-free error at the output-rounding floor (bf16: ~1.7e-3 round-to-nearest on GPU, ~3.3e-3 with
    the interpreter's truncating casts)."""
    q, k, v = _inputs(2, 2, 33, 65, 32, 32, dtype=dtype)
    kpm = _mask(2, 65, 'ragged')
    out = ti.inline_attention_triton(q, k, v, kpm, num_splits=2)
    assert out.dtype == dtype
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(DEV)
    grads = torch.autograd.grad(out, (q, k, v), g.to(dtype))
    qd, kd, vd = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = inline_ref(qd, kd, vd, kpm)
    assert rel_rms(ref.detach(), out.detach()) < tol
    for got, want in zip(grads, torch.autograd.grad(ref, (qd, kd, vd), g)):
        assert got.dtype == dtype and rel_rms(want, got) < 2 * tol


@needs_kernels
@pytest.mark.parametrize('offset', [0., 100.])
def test_large_means_do_not_cancel(offset):
    """Keys/values whose means dwarf their spread: K^T V / N and mean(K)^T mean(V) nearly cancel. The
    attention term (output minus mean(V)) keeps ~2.5e-4 at offset 100, where raw fp32 moments lose ~5%."""
    g = torch.Generator().manual_seed(3)
    q = torch.randn(1, 1, 16, 16, generator=g)
    k = torch.randn(1, 1, 2048, 16, generator=g) + offset
    v = torch.randn(1, 1, 2048, 16, generator=g) + offset
    q, k, v = q.to(DEV), k.to(DEV), v.to(DEV)
    out = ti.inline_attention_triton(q, k, v).double()
    ref = inline_ref(q, k, v)
    mean_v = v.double().mean(2, keepdim=True)
    assert rel_rms(ref - mean_v, out - mean_v) < 2e-3


@needs_kernels
def test_strided_inputs_and_output_layout():
    """q/k/v as head views of one packed (B, N, 3, H, D) tensor; O comes back in merge-heads order."""
    b, n, h, d = 2, 9, 2, 16
    qkv = torch.randn(b, n, 3, h, d, device=DEV).requires_grad_()
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)                        # non-contiguous (B, H, N, D) views
    out = ti.inline_attention_triton(q, k, v)
    assert out.shape == (b, h, n, d) and out.transpose(1, 2).is_contiguous()
    torch.testing.assert_close(out.double(), inline_ref(q, k, v), atol=2e-5, rtol=1e-4)
    out.transpose(1, 2).reshape(b, n, h * d).square().sum().backward()
    ref_q = qkv.detach().double().requires_grad_()
    qr, kr, vr = ref_q.permute(2, 0, 3, 1, 4).unbind(0)
    inline_ref(qr, kr, vr).square().sum().backward()
    torch.testing.assert_close(qkv.grad.double(), ref_q.grad, atol=1e-4, rtol=1e-4)


@needs_kernels
@pytest.mark.parametrize('which', ['q', 'kv'])
def test_partial_requires_grad(which):
    """Only the gradients asked for are computed (dq alone takes the apply-only path)."""
    q, k, v = _inputs(2, 2, 5, 6, 16, 16)
    kpm = _mask(2, 6, 'ragged')
    leaves = (q,) if which == 'q' else (k, v)
    for t in {'q': (k, v), 'kv': (q,)}[which]:
        t.requires_grad_(False)
    out = ti.inline_attention_triton(q, k, v, kpm)
    got = torch.autograd.grad(out.sum(), leaves)
    qd, kd, vd = [t.detach().double().requires_grad_() for t in (q, k, v)]
    want = torch.autograd.grad(inline_ref(qd, kd, vd, kpm).sum(), {'q': (qd,), 'kv': (kd, vd)}[which])
    for a, b_ in zip(got, want):
        torch.testing.assert_close(a.double(), b_, atol=1e-4, rtol=1e-4)


@needs_kernels
@pytest.mark.parametrize('nq,nk', [(0, 5), (4, 0)])
def test_empty_sequences(nq, nk):
    """No queries: an empty output; no keys: zeros (as for an all-padded sample); gradients stay finite."""
    q, k, v = _inputs(2, 2, nq, nk, 16, 16)
    out = ti.inline_attention_triton(q, k, v)
    assert out.shape == (2, 2, nq, 16) and torch.all(out == 0)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    assert all(gr.shape == t.shape and torch.all(gr == 0) for gr, t in zip(grads, (q, k, v)))


@needs_kernels
def test_padding_garbage_never_read():
    """NaN/inf in padded key slots changes nothing: masked loads never touch them."""
    q, k, v = _inputs(2, 2, 4, 9, 16, 16)
    kpm = _mask(2, 9, 'all_padded')
    out = ti.inline_attention_triton(q, k, v, kpm)
    k2, v2 = k.detach().clone(), v.detach().clone()
    k2[kpm[:, None, :].expand(2, 2, 9)] = float('nan')
    v2[kpm[:, None, :].expand(2, 2, 9)] = float('inf')
    out2 = ti.inline_attention_triton(q, k2, v2, kpm)
    assert torch.isfinite(out2).all()
    torch.testing.assert_close(out2, out)


def test_split_plan_fills_gpu_at_batch1(monkeypatch):
    """Batch 1 with 2 heads still gets ~2 programs per SM; many heads fall back to ~1 split."""
    monkeypatch.setattr(ti, '_sm_count', lambda index: 132)
    cuda0 = torch.device('cuda', 0)
    splits, per_prog = ti._split_plan(65536, 2, cuda0, None)
    assert splits * 2 >= 132 and per_prog * ti.REDUCE_BLOCK_N >= ti.MIN_TOKENS_PER_SPLIT
    assert ti._split_plan(65536, 256, cuda0, None)[0] == 2
    assert ti._split_plan(100, 2, cuda0, None) == (1, 2)           # short sequences: one program per head
    assert ti._split_plan(65536, 2, torch.device('cpu'), None) == (1, 1024)


def test_input_validation():
    q = torch.randn(1, 1, 4, 16)
    with pytest.raises(ValueError, match='dtype'):
        ti.inline_attention_triton(q.double(), q.double(), q.double())
    with pytest.raises(ValueError, match='<= 128'):
        w = torch.randn(1, 1, 4, 256)
        ti.inline_attention_triton(w, w, w)


_COMPILE_SM90 = r'''
import linattn_mm.ops.inline.triton_impl as ti
from tests._helpers import compile_kernel_sm90 as build
for dt, bd, rb, ab in (('bf16', 128, ti.REDUCE_BLOCK_N, ti.APPLY_BLOCK_N), ('fp32', 16, ti.REDUCE_BLOCK_N,
                        ti.APPLY_BLOCK_N), ('bf16', 64, ti.GPU_REDUCE_BLOCK_N, ti.GPU_APPLY_BLOCK_N)):
    for write in (False, True):
        ptrs = dict(x_ptr='*' + dt, y_ptr='*' + dt, pad_ptr='*u8', xy_ptr='*fp32', sx_ptr='*fp32',
                    sy_ptr='*fp32', cnt_ptr='*fp32', w_ptr='*fp32', out_ptr='*' + dt)
        c = dict(HAS_PAD=not write, CENTRED=not write, WRITE_YW=write, PREC='ieee', UPCAST=False,
                 BLOCK_N=rb, BLOCK_DX=bd, BLOCK_DY=bd)
        build(ti._reduce_kernel, ptrs, c, 8)
    ptrs = dict(x_ptr='*' + dt, w_ptr='*fp32', bias_ptr='*fp32', pad_ptr='*u8', out_ptr='*' + dt)
    build(ti._affine_kernel, ptrs, dict(HAS_BIAS=True, HAS_PAD=True, PREC='ieee', UPCAST=False, BLOCK_N=ab,
                                        BLOCK_DIN=bd, BLOCK_DOUT=bd), 4)
for fn, c in ((ti._combine_fwd_kernel, dict(BLOCK_DX=16, BLOCK_DY=128)),
              (ti._combine_bwd_kernel, dict(BLOCK_DX=128, BLOCK_DY=16))):
    build(fn, dict({n: '*fp32' for n in fn.arg_names if n.endswith('_ptr')}, scale='fp32'), c, 4)
print('compiled')
'''
test_kernels_compile_for_sm90, test_interpreter_in_subprocess = kernel_module_tests(__file__, _COMPILE_SM90,
                                                                                    IN_PROCESS)


# ---- backend selection (no kernel launches) ----

def test_resolve_backend_choices(monkeypatch):
    t = torch.randn(1, 2, 8, 16)
    assert bk.resolve_backend('torch', t) == 'torch'
    assert bk.resolve_backend('auto', t, t, None) == 'torch'                 # CPU: never the interpreter
    with pytest.raises(ValueError, match="'auto', 'torch', 'triton'"):
        bk.resolve_backend('cuda', t)
    monkeypatch.setenv('TRITON_INTERPRET', '0')
    with pytest.raises(ValueError, match='needs CUDA tensors'):
        bk.resolve_backend('triton', t)
    monkeypatch.setenv('TRITON_INTERPRET', '1')
    assert bk.resolve_backend('triton', t, None) == 'triton'
    with pytest.raises(ValueError, match='float64'):
        bk.resolve_backend('triton', t.double())
    with pytest.raises(ValueError, match='head dim 256'):
        bk.resolve_backend('triton', torch.randn(1, 1, 4, 256))
    monkeypatch.setattr(bk, 'triton_available', lambda: False)
    assert bk.resolve_backend('auto', t) == 'torch'
    with pytest.raises(ValueError, match='cannot be imported'):
        bk.resolve_backend('triton', t)


@requires_cuda
def test_resolve_backend_auto_on_cuda():
    t = torch.randn(1, 2, 8, 16, device='cuda')
    assert bk.resolve_backend('auto', t, t, t) == 'triton'
    assert bk.resolve_backend('auto', t.double()) == 'torch'
    assert bk.resolve_backend('auto', torch.randn(1, 1, 8, 256, device='cuda')) == 'torch'
    assert bk.resolve_backend('auto', t, t.cpu()) == 'torch'


# ---- GPU only: large N against the O(N D Dv) torch formula in float64 ----

def _torch_ref(q, k, v, kpm=None):
    from linattn_mm.ops.inline import inline_attention
    return inline_attention(q.double(), k.double(), v.double(), key_padding_mask=kpm)


@requires_cuda
@pytest.mark.parametrize('n,d,dtype,tol', [(16384, 64, torch.float32, 1e-5), (65536, 32, torch.bfloat16, 1e-2)])
def test_large_n_on_gpu(n, d, dtype, tol):
    q, k, v = _inputs(1, 2, n, n, d, d, dtype=dtype)
    kpm = torch.zeros(1, n, dtype=torch.bool, device='cuda')
    kpm[0, n - 1000:] = True
    out = ti.inline_attention_triton(q, k, v, kpm)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), g)
    qd, kd, vd = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = _torch_ref(qd, kd, vd, kpm)
    assert rel_rms(ref.detach(), out.detach()) < tol
    for got, want in zip(grads, torch.autograd.grad(ref, (qd, kd, vd), g.double())):
        assert rel_rms(want, got) < 2 * tol


@needs_kernels
def test_custom_op_registration(small_blocks):
    """The kernels are opaque torch.library ops: schema, fake (meta) impl, autograd registration and AOTAutograd
    with dynamic shapes all agree with the real kernels (torch.library.opcheck)."""
    q, k, v = _inputs(1, 2, 9, 17, 8, 8)  # tiny: opcheck runs the interpreted kernels a dozen times
    pad = _mask(1, 17, 'ragged').view(torch.uint8)
    torch.library.opcheck(torch.ops.linattn_mm.inline_triton_fwd.default, (q, k, v, pad, None))
    out, state, mk, mv, inv = torch.ops.linattn_mm.inline_triton_fwd(q, k, v, pad, None)
    do = torch.randn_like(out)
    args = [t.detach() for t in (do, q, k, v, pad, state, mk, mv, inv)]
    torch.library.opcheck(torch.ops.linattn_mm.inline_triton_bwd.default, (*args, None))


@needs_kernels
def test_compiles_fullgraph_through_the_custom_op(small_blocks):
    """A layer that calls the fused op compiles with fullgraph=True (no graph break at the Triton launch) across
    sizes; outputs and gradients equal eager."""
    from linattn_mm.ops import inline_attention
    assert_attention_layer_compiles_fullgraph(
        functools.partial(inline_attention, backend='triton'), lambda b, n: _mask(b, n, 'ragged'), DEV)
