"""Shared test utilities (imported as ``tests._helpers``)."""
from __future__ import annotations

import importlib
import os
import sys
from typing import Callable, Dict, Optional, Sequence

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason='needs a CUDA device')


def rel_rms(ref: torch.Tensor, out: torch.Tensor) -> float:
    """Scale-free error rms(ref - out) / rms(ref), computed in float64."""
    ref = ref.double()
    out = out.double()
    return float((ref - out).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt().clamp_min(1e-300))


def rand_qkv(b: int, h: int, nq: int, nk: int, d: int, dv: Optional[int] = None,
             dtype: torch.dtype = torch.float64, seed: int = 0, requires_grad: bool = True,
             device: str = 'cpu'):
    """Random q (B,H,Nq,D), k (B,H,Nk,D), v (B,H,Nk,Dv) leaf tensors."""
    g = torch.Generator().manual_seed(seed)
    dv = d if dv is None else dv
    q = torch.randn(b, h, nq, d, generator=g, dtype=torch.float64)
    k = torch.randn(b, h, nk, d, generator=g, dtype=torch.float64)
    v = torch.randn(b, h, nk, dv, generator=g, dtype=torch.float64)
    return tuple(t.to(device=device, dtype=dtype).requires_grad_(requires_grad) for t in (q, k, v))


def random_padding_mask(b: int, n: int, seed: int = 0, min_valid: int = 1) -> torch.Tensor:
    """(B, N) bool mask, True = padding; sample i keeps a random prefix of >= min_valid tokens."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(min(min_valid, n), n + 1, (b,), generator=g)
    lens[0] = n  # one sample without padding
    return torch.arange(n)[None, :] >= lens[:, None]


def assert_match(fast: Callable, naive: Callable, inputs: Sequence[torch.Tensor],
                 kwargs: Optional[Dict] = None, atol: float = 1e-8, rtol: float = 1e-6) -> None:
    """Outputs and gradients (w.r.t. every input that requires grad) of ``fast`` equal ``naive``."""
    kwargs = kwargs or {}
    out_f = fast(*inputs, **kwargs)
    out_n = naive(*inputs, **kwargs)
    torch.testing.assert_close(out_f, out_n, atol=atol, rtol=rtol)
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    if not leaves:
        return
    g = torch.randn_like(out_n)
    grads_f = torch.autograd.grad(out_f, leaves, g, allow_unused=True)
    grads_n = torch.autograd.grad(out_n, leaves, g, allow_unused=True)
    for gf, gn in zip(grads_f, grads_n):
        if gn is None:
            assert gf is None or torch.all(gf == 0)
            continue
        torch.testing.assert_close(gf, gn, atol=atol * 10, rtol=rtol * 10)


def triton_library_interpreted() -> bool:
    """True when Triton's own library kernels (``tl.sum``'s combine function, ...) were decorated for the CPU
    interpreter, i.e. ``TRITON_INTERPRET=1`` was set before triton was first imported in this process.
    Whatever the environment says now, kernels cannot run in-process under the interpreter otherwise."""
    import triton.language.standard as standard
    return type(standard._sum_combine).__name__ == 'InterpretedFunction'


# ---- Triton kernel test modules (see tests/ops/test_kernelized_triton.py for how the kernels run) ----

def prepare_triton_interpreter() -> bool:
    """Call first in a Triton kernel test module, before it imports linattn_mm: without CUDA, switch on Triton's
    CPU interpreter (``TRITON_INTERPRET=1`` unless set). Returns whether triton had already been imported with
    compiled kernels, in which case nothing can be interpreted in this process."""
    preimported = 'triton' in sys.modules and \
        os.environ.get('TRITON_INTERPRET', '0').strip().lower() in ('', '0', 'false', 'no', 'off')
    if not HAS_CUDA:
        os.environ.setdefault('TRITON_INTERPRET', '1')
    return preimported


def import_kernel_modules(*names: str, probe: str) -> list:
    """Import the kernel modules ``names`` (dependencies first). Without CUDA and with the interpreter on,
    reload them all, in order, if the last one's ``probe`` kernel was decorated compiled by an earlier import
    (compiled kernels cannot take CPU tensors)."""
    from linattn_mm.ops import backend as bk
    mods = [importlib.import_module(n) for n in names]
    if not HAS_CUDA and bk.triton_interpret() and type(getattr(mods[-1], probe)).__name__ != 'InterpretedFunction':
        mods = [importlib.reload(m) for m in mods]
    return mods


def kernel_test_setup(preimported: bool):
    """``(DEV, IN_PROCESS, needs_kernels)`` of a Triton kernel test module: the device its tensors live on,
    whether this process can run the kernels (on CUDA, or interpreted with Triton's library kernels interpreted
    too) and the skip mark for the kernel tests otherwise (the module's subprocess test then runs them)."""
    from linattn_mm.ops import backend as bk
    in_process = HAS_CUDA or (bk.triton_interpret() and not preimported and triton_library_interpreted())
    mark = pytest.mark.skipif(
        not in_process, reason='triton was imported before TRITON_INTERPRET=1 was set (or it is forced off); '
                               'test_interpreter_in_subprocess runs these tests instead')
    return ('cuda' if HAS_CUDA else 'cpu'), in_process, mark


def kernel_module_tests(test_file: str, compile_script: str, in_process: bool):
    """The two tests every Triton kernel test module has, bound to that module: compiling its kernels for an
    H100 (``compile_script``, see :func:`compile_for_sm90`) and rerunning it under the interpreter in a fresh
    process when this one cannot. Assign the pair to module-level ``test_*`` names so that pytest collects it."""
    @pytest.mark.slow
    def test_kernels_compile_for_sm90():
        """The interpreter skips Triton's type checks: compile the real kernels for an H100 (sm_90) without a
        GPU (Triton ships LLVM and ptxas), in a subprocess so that TRITON_INTERPRET is off there."""
        r = compile_for_sm90(compile_script)
        assert r.returncode == 0 and 'compiled' in r.stdout, r.stderr[-3000:]

    @pytest.mark.skipif(in_process, reason='the kernel tests run in this process')
    def test_interpreter_in_subprocess():
        """Fallback when this process cannot interpret: rerun the module's kernel tests in a fresh interpreter."""
        r = run_in_interpreter(test_file)
        assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]

    return test_kernels_compile_for_sm90, test_interpreter_in_subprocess


def compile_kernel_sm90(fn, types: Dict[str, str], consts: Dict, num_warps: int):
    """Compile the ``@triton.jit`` kernel ``fn`` for sm_90 (inside a :func:`compile_for_sm90` script). ``types``
    gives every pointer argument (``'*bf16'``, ...) and any float scalar; other arguments are i32 and
    ``consts`` are the constexprs."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    untyped = [n for n in fn.arg_names if n.endswith(('_ptr', '_part')) and n not in types and n not in consts]
    assert not untyped, f'pointer arguments without a type: {untyped}'
    sig = {n: 'constexpr' if n in consts else types.get(n, 'i32') for n in fn.arg_names}
    return triton.compile(ASTSource(fn, sig, constexprs=consts), target=GPUTarget('cuda', 90, 32),
                          options=dict(num_warps=num_warps))


def padding_mask(b: int, nk: int, kind: Optional[str], device) -> Optional[torch.Tensor]:
    """(B, Nk) masks of the kernel tests: None; ``'all_padded'`` (sample 0 has no valid key, the others keep a
    prefix of half); ``'ragged'`` (sample 0 unpadded, later samples keep shorter prefixes of >= 1 key)."""
    if kind is None:
        return None
    m = torch.zeros(b, nk, dtype=torch.bool)
    if kind == 'all_padded':
        m[0] = True
        m[1:, (nk + 1) // 2:] = True
    elif kind == 'ragged':
        for i in range(1, b):
            m[i, max(1, nk - 3 * i):] = True
    else:
        raise ValueError(f'unknown mask kind {kind!r}')
    return m.to(device)


def with_garbage(t: torch.Tensor, kpm: torch.Tensor) -> torch.Tensor:
    """A leaf copy of ``t`` (B, H, N, C) with inf (even C) or NaN (odd C) in the padded key slots."""
    t = t.detach().clone()
    t[kpm[:, None, :].expand(t.shape[:3])] = float('nan') if t.shape[-1] % 2 else float('inf')
    return t.requires_grad_()


def compile_for_sm90(script: str):
    """Run ``script`` (which compiles kernels for an H100 and prints 'compiled') in a subprocess with the
    interpreter off; skips the calling test when this Triton build has no ptxas."""
    import subprocess
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, TRITON_INTERPRET='0', PYTHONPATH=root + os.pathsep + os.environ.get('PYTHONPATH', ''))
    r = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True, text=True, timeout=300)
    if r.returncode != 0 and ('ptxas' in r.stderr and 'not found' in r.stderr.lower()):
        pytest.skip('no ptxas available to this Triton build')
    return r


def run_in_interpreter(test_file: str):
    """Rerun a test file's non-slow tests in a fresh process with ``TRITON_INTERPRET=1`` (for when this process
    imported triton before the variable was set)."""
    import subprocess
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, TRITON_INTERPRET='1', PYTHONPATH=root + os.pathsep + os.environ.get('PYTHONPATH', ''))
    return subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', '-m', 'not slow',
                           os.path.abspath(test_file)], cwd=root, env=env, capture_output=True, text=True,
                          timeout=600)


def assert_attention_layer_compiles_fullgraph(attention: Callable, mask: Callable, device) -> None:
    """A tiny layer around ``attention(q, k, v, key_padding_mask=...)`` (a fused op with ``backend='triton'``)
    compiles with ``fullgraph=True`` (no graph break at the kernel launch) across two sizes, and its outputs and
    parameter gradients equal eager. ``mask(b, n)``: the padding mask of a batch."""

    class Layer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv, self.proj = torch.nn.Linear(16, 48), torch.nn.Linear(16, 16)

        def forward(self, x, kpm):
            q, k, v = (t.unflatten(-1, (2, 8)).transpose(1, 2) for t in self.qkv(x).chunk(3, -1))
            return self.proj(attention(q, k, v, key_padding_mask=kpm).transpose(1, 2).flatten(2))

    torch.manual_seed(0)
    layer = Layer().to(device)
    compiled = torch.compile(layer, backend='aot_eager', fullgraph=True)
    for n in (20, 33):
        x = torch.randn(2, n, 16, device=device)
        kpm = mask(2, n)
        results = []
        for f in (layer, compiled):
            layer.zero_grad(set_to_none=True)
            f(x, kpm).square().mean().backward()
            results.append([f(x, kpm).detach()] + [p.grad.clone() for p in layer.parameters()])
        for a, b in zip(*results):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
