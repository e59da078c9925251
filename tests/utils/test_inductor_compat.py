"""The inductor work-around (linattn_mm.utils.inductor_compat): symbolic strides reaching ``get_stride_order``
without a ShapeEnv are sorted with the lowering graph's ShapeEnv (pytorch/pytorch#185510); importing linattn_mm
does not import inductor. End to end: tests/models/test_compile.py::test_compile_inductor_dynamic_sizes."""
import subprocess
import sys
import types

import pytest

import linattn_mm  # noqa: F401  (installs the work-around)


def _symbolic_strides():
    from torch._dynamo.source import ConstantSource
    from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv
    from torch.utils._sympy.functions import FloorDiv
    env = ShapeEnv()
    h, w = (env.create_symbol(v, ConstantSource(n), dynamic_dim=DimDynamic.DYNAMIC) for v, n in ((64, 'h'), (80, 'w')))
    # q of a (1, N, C) token map split into one head of 8, N = (H // 4) (W // 4): the strides of the crash
    return env, [8 * FloorDiv(h, 4) * FloorDiv(w, 4), 8, 8, 1]


def test_symbolic_strides_are_ordered_with_the_graphs_shape_env():
    ir = pytest.importorskip('torch._inductor.ir')
    from torch._inductor.virtualized import V
    env, strides = _symbolic_strides()
    assert ir.get_fill_order._linattn_mm_patched
    graph = types.SimpleNamespace(sizevars=types.SimpleNamespace(shape_env=env))
    with V.set_graph_handler(graph):
        assert list(ir.get_stride_order(strides)) == [3, 2, 1, 0]
    assert list(ir.get_stride_order(strides, env)) == [3, 2, 1, 0]     # an explicit ShapeEnv: unchanged
    assert list(ir.get_stride_order([32, 8, 8, 1])) == [3, 2, 1, 0]    # static strides: unchanged
    assert list(ir.get_stride_order([1, 64, 8])) == [0, 2, 1]


def test_import_does_not_pull_in_inductor_and_patches_it_when_imported():
    code = ("import sys, linattn_mm; assert 'torch._inductor.ir' not in sys.modules; "
            "import torch._inductor.ir as ir; print(ir.get_fill_order._linattn_mm_patched)")
    res = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == 'True'


def test_install_is_idempotent():
    from linattn_mm.utils import inductor_compat
    ir = pytest.importorskip('torch._inductor.ir')
    before = ir.get_fill_order
    inductor_compat.install()
    assert ir.get_fill_order is before
    assert sum(isinstance(f, inductor_compat._PatchOnImport) for f in sys.meta_path) <= 1
