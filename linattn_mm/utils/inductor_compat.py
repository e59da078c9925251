"""A work-around for an inductor bug that dynamic-shape compiles of our backbones hit.

With automatic dynamic shapes, a graph output that is a view with symbolic strides, such as q from
``x.view(b, n, heads, d).transpose(1, 2)`` saved for the backward of attention, reaches
``torch._inductor.ir.get_stride_order(strides)`` without a ``ShapeEnv``. ``get_fill_order`` then sorts the
strides with Python's ``sorted``, and SymPy cannot decide ``8*((s0//4))*((s53//4)) < 1`` on its own. The compile
fails with ``InductorError: TypeError: cannot determine truth value of Relational`` (pytorch/pytorch#185510 and
#172204; a fix is proposed in pytorch/pytorch#185871). The symbolic comparator ``argsort_sym``, which
``get_fill_order`` already uses when it is given a ShapeEnv, decides these comparisons from the shape env's value
ranges.

:func:`install` wraps ``torch._inductor.ir.get_fill_order`` so that a call without a ShapeEnv on symbolic strides
uses the ShapeEnv of the graph being lowered (or of a SymInt stride), as the upstream fix does. Calls with a
ShapeEnv, or with static strides, are passed through unchanged. The module is patched when it is imported, so
importing linattn_mm does not import inductor (about a second); if it is already imported, it is patched at once.
"""
from __future__ import annotations

import importlib.abc
import sys

_TARGET = 'torch._inductor.ir'


def _shape_env_for(seq):
    for s in seq:
        node = getattr(s, 'node', None)   # a torch.SymInt
        if node is not None and getattr(node, 'shape_env', None) is not None:
            return node.shape_env
    try:
        from torch._inductor.virtualized import V
        return V.graph.sizevars.shape_env
    except (AttributeError, AssertionError):   # no graph is being lowered
        return None


def _patch(ir_module) -> None:
    orig = ir_module.get_fill_order
    if getattr(orig, '_linattn_mm_patched', False):
        return

    def get_fill_order(seq, shape_env=None):
        if shape_env is None and not all(isinstance(s, int) or getattr(s, 'is_Integer', False) for s in seq):
            shape_env = _shape_env_for(seq)
        return orig(seq, shape_env)

    get_fill_order.__doc__ = orig.__doc__
    get_fill_order.__wrapped__ = orig
    get_fill_order._linattn_mm_patched = True
    ir_module.get_fill_order = get_fill_order   # get_stride_order looks it up in the module at call time


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Finds ``torch._inductor.ir`` through the other finders and patches it right after it executes."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, 'find_spec'):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, 'exec_module'):
            return spec
        exec_module = loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            _patch(module)
        loader.exec_module = exec_and_patch
        return spec


def install() -> None:
    """Patch ``torch._inductor.ir`` now if it is imported, else when it is (idempotent)."""
    if _TARGET in sys.modules:
        _patch(sys.modules[_TARGET])
    elif not any(isinstance(f, _PatchOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchOnImport())
