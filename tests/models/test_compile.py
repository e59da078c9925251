"""torch.compile of every backbone x seed attention across input sizes (automatic dynamic shapes).

The dynamic-shape crash ("TensorReferenceAnalysis has no attribute 'python_mod'", pytorch/pytorch#197716) lives in
AOTAutograd's tensorify pass, which every backend that goes through AOTAutograd runs, so the matrix uses
``backend='aot_eager'`` (the dynamo + AOTAutograd part of inductor, without its slow C++ code generation on CPU).
``fullgraph=True`` means no graph break (and so no ``.item()``, no host sync, no data-dependent branch in forward).
One inductor run (marked slow) checks the real backend end to end; at the second size it needs the work-around
for pytorch/pytorch#185510 (symbolic strides sorted without a ShapeEnv, see linattn_mm.utils.inductor_compat).
"""
import os

import pytest
import torch
import torch.nn.functional as F

from linattn_mm.models.backbones import LinPVT, LinSwin, LinViT
from linattn_mm.ops._utils import pad_amount

SEEDS = ['inline', 'taylorshift', 'linformer', 'softmax', 'window', 'sra']
TINY = {
    LinPVT: dict(arch=dict(embed_dims=[8, 16, 16, 16], num_heads=[1, 1, 1, 1], mlp_ratios=[1, 1, 1, 1],
                           depths=[1, 1, 1, 1])),
    LinSwin: dict(arch=dict(embed_dims=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1])),
    LinViT: dict(arch=dict(embed_dims=16, depth=1, num_heads=1)),
}
# divisible sizes (the second one makes dynamo mark H and W dynamic, the third reuses that graph); the slow
# matrix adds a ragged one (padding branches)
SIZES = [(64, 64), (96, 80), (128, 112)]
RAGGED = SIZES + [(67, 91)]
# window attention: one graph per "regime" of which stage grids fit a single window along an axis (a dimension
# that may be 1 is guarded by every broadcast, PyTorch's 0/1 specialisation), so these sizes keep stage 3 of the
# tiny Swin at one window (grid <= 7) and stages 1-2 at several, and (64, 112) has the odd/even pattern of the
# patch-merging grids of (96, 80) (an odd grid is padded: a branch of its own); within a regime one graph serves
# every size
WINDOW_SIZES = [(64, 64), (96, 80), (64, 112), (67, 91)]
FAST = [(LinViT, 'inline')]  # the rest (dynamo tracing of a pyramid takes about a minute on 2 cores) is slow
DEFAULTS = [(LinPVT, None), (LinSwin, None)]  # their default attention: InLine-PVT, InLine-Swin 'IIIS'


def _build(cls, attn, arch=None):
    torch.manual_seed(0)
    kw = dict(TINY[cls], drop_path_rate=0.)
    if arch is not None:
        kw['arch'] = arch
    if attn is not None:
        kw['attn_cfg'] = dict(type=attn, **({'proj_len': 8} if attn == 'linformer' else {}))
    return cls(**kw).train()


def _step(fn, model, x):
    model.zero_grad(set_to_none=True)
    outs = fn(x)
    sum((o * o).mean() for o in outs).backward()
    return [o.detach() for o in outs], {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def check_compiles_across_sizes(cls, attn, backend='aot_eager', sizes=SIZES, arch=None):
    """Compiled forward + backward equals eager at every size, with no graph break and no compile per size."""
    from torch._dynamo.testing import CompileCounterWithBackend
    torch._dynamo.reset()
    model = _build(cls, attn, arch)
    counter = CompileCounterWithBackend(backend)
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    for h, w in sizes:
        x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(h * w))
        ref_out, ref_grad = _step(model, model, x)
        out, grad = _step(compiled, model, x)
        for a, b in zip(out, ref_out):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        assert grad.keys() == ref_grad.keys()
        for k in ref_grad:
            torch.testing.assert_close(grad[k], ref_grad[k], rtol=1e-4, atol=1e-5, msg=lambda m: f'{k}: {m}')
    # first size static, second dynamic, the third reuses it; a ragged size may add one graph (padding)
    limit = 2 + any(h % 32 or w % 32 for h, w in sizes)
    assert counter.frame_count <= limit, f'{counter.frame_count} graphs for {len(sizes)} sizes: recompiling per size'


def test_pad_amount_matches_modulo_and_compiles():
    for n in range(1, 40):
        for s in (2, 3, 4, 7, 16):
            assert pad_amount(n, s) == (-n) % s

    def padded_scale(x):  # the pattern that crashed: padded size -> float scalar of a tensor op
        x = F.pad(x, (0, pad_amount(x.shape[-1], 4)))
        return x * (7 / x.shape[-1])
    torch._dynamo.reset()
    c = torch.compile(padded_scale, backend='aot_eager', fullgraph=True)
    for n in (9, 13, 22):
        x = torch.randn(2, n)
        torch.testing.assert_close(c(x), padded_scale(x))


@pytest.mark.parametrize('cls,attn', FAST, ids=lambda v: getattr(v, '__name__', str(v)))
def test_compile_dynamic_sizes(cls, attn):
    check_compiles_across_sizes(cls, attn)


@pytest.mark.slow
@pytest.mark.parametrize('cls,attn', DEFAULTS, ids=lambda v: getattr(v, '__name__', str(v)))
def test_compile_dynamic_sizes_defaults(cls, attn):
    check_compiles_across_sizes(cls, attn, sizes=RAGGED)


# the full matrix takes 2-3 minutes per case on a 2-core CPU (about 45 minutes in all): opt in
HEAVY = pytest.mark.skipif(not os.environ.get('LINATTN_HEAVY_TESTS'),
                           reason='full compile matrix (minutes per case); set LINATTN_HEAVY_TESTS=1 to run it')


@pytest.mark.slow
@HEAVY
@pytest.mark.parametrize('attn', SEEDS)
@pytest.mark.parametrize('cls', [LinPVT, LinSwin, LinViT], ids=lambda c: c.__name__)
def test_compile_dynamic_sizes_every_seed(cls, attn):
    if (cls, attn) in FAST:
        pytest.skip('in test_compile_dynamic_sizes')
    check_compiles_across_sizes(cls, attn, sizes=WINDOW_SIZES if attn == 'window' else RAGGED)


@pytest.mark.slow
def test_compile_dynamic_sizes_swin_shifted_windows():
    """LinSwin with window attention in every stage and a shifted block: one graph for the new sizes (the
    padding to whole windows and the shift mask are built from symbolic sizes, not re-specialised per size)."""
    arch = dict(embed_dims=8, depths=[2, 1, 1, 1], num_heads=[1, 1, 1, 1])
    check_compiles_across_sizes(LinSwin, 'window', sizes=WINDOW_SIZES, arch=arch)


@pytest.mark.slow
def test_compile_inductor_dynamic_sizes():
    """The real backend (C++ code generation on CPU: a minute or two). Without the inductor work-around the
    second (dynamic) size fails with "cannot determine truth value of Relational" (pytorch/pytorch#185510)."""
    check_compiles_across_sizes(LinPVT, 'sra', backend='inductor', sizes=[(64, 64), (96, 80)])
