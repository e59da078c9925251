"""Choosing between the plain-torch path and the fused Triton path of an op.

``backend='auto'`` picks Triton only where it is both available and worth it: Triton imports, every tensor
is on one CUDA device, and dtype/shape are in the supported set (fp16/bf16/fp32, head dims <= 128).
Everything else (CPU, float64, wide heads) runs the torch path, which is always correct.

``backend='triton'`` forces the fused kernels. On CPU that is only possible through Triton's interpreter
(``TRITON_INTERPRET=1`` set before Triton compiles the kernels, i.e. before the ``triton_impl`` modules are
imported); it is slow and meant for correctness tests, never chosen by ``'auto'``.
"""
from __future__ import annotations

import functools
import os
from typing import Optional

import torch
from torch import Tensor

from ._utils import check_qkv

BACKENDS = ('auto', 'torch', 'triton')
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 128  # the (D x Dv) state of one head lives in registers; wider heads would spill


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """True when ``import triton`` works (the kernels may still need a GPU or the interpreter)."""
    try:
        import triton  # noqa: F401
    except Exception:  # ImportError, or a broken install that fails while importing
        return False
    return True


def triton_interpret() -> bool:
    """True when ``TRITON_INTERPRET`` asks Triton to run kernels on CPU through its interpreter."""
    return os.environ.get('TRITON_INTERPRET', '0').strip().lower() not in ('', '0', 'false', 'no', 'off')


def triton_unsupported_reason(*tensors: Optional[Tensor], max_head_dim: int = MAX_HEAD_DIM) -> Optional[str]:
    """Why the Triton kernels cannot take these tensors, or ``None`` when they can.

    Devices are not checked here (see :func:`resolve_backend`). ``None`` entries (an absent mask) are skipped;
    only floating-point tensors are checked for dtype and head dim (the last axis of 4-D tensors).
    """
    ts = [t for t in tensors if t is not None]
    if len({t.device for t in ts}) > 1:
        return f'tensors are on different devices ({sorted({str(t.device) for t in ts})})'
    for t in ts:
        if not t.is_floating_point():
            continue
        if t.dtype not in TRITON_DTYPES:
            return f'dtype {t.dtype} is not one of float16/bfloat16/float32'
        if t.dim() == 4 and t.shape[-1] > max_head_dim:
            return f'head dim {t.shape[-1]} exceeds {max_head_dim}'
    return None


def resolve_backend(backend: str, *tensors: Optional[Tensor], max_head_dim: int = MAX_HEAD_DIM) -> str:
    """Turn ``'auto'|'torch'|'triton'`` into the backend that will actually run: ``'torch'`` or ``'triton'``.

    Args:
        backend: the user's choice.
        *tensors: the op's inputs (``None`` allowed, e.g. no mask).
        max_head_dim: the widest head dim the op's kernels accept.

    Returns:
        ``'torch'`` or ``'triton'``. ``'auto'`` never fails: it falls back to ``'torch'`` whenever Triton is
        missing, a tensor is not on CUDA, or dtype/shape is unsupported.

    Raises:
        ValueError: for an unknown name, or for ``'triton'`` when it cannot run (the message says why).
    """
    if backend not in BACKENDS:
        raise ValueError(f'unknown backend {backend!r}; choose one of {BACKENDS}')
    if backend == 'torch':
        return 'torch'
    ts = [t for t in tensors if t is not None]
    on_cuda = bool(ts) and all(t.is_cuda for t in ts)
    reason = triton_unsupported_reason(*ts, max_head_dim=max_head_dim)
    if backend == 'auto':
        # on_cuda first: CPU calls never import triton (an import before TRITON_INTERPRET is set would pin
        # Triton's own library kernels to compiled mode for the rest of the process)
        return 'triton' if (on_cuda and reason is None and triton_available()) else 'torch'
    # forced 'triton'
    if not triton_available():
        raise ValueError("backend='triton' but Triton cannot be imported; install triton or use backend='auto'")
    if reason is not None:
        raise ValueError(f"backend='triton' cannot run this call: {reason}; use backend='auto' or 'torch'")
    if not on_cuda and not triton_interpret():
        raise ValueError("backend='triton' needs CUDA tensors; on CPU the kernels run only under Triton's "
                         "interpreter (set TRITON_INTERPRET=1 before importing the kernels; slow, for tests)")
    return 'triton'


def check_triton_inputs(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Optional[Tensor],
                        name: str) -> Optional[Tensor]:
    """Validate what every fused kernel entry point takes; return the mask as the kernels read it.

    Checks the op contract (:func:`check_qkv`), one dtype among fp16/bf16/fp32 for q, k and v, head dims
    <= ``MAX_HEAD_DIM`` and one device, each failure as one ``ValueError`` naming ``name`` and the fix.

    Returns:
        ``key_padding_mask`` reinterpreted as uint8 (same bytes, no copy; 1 = padding), or None.
    """
    check_qkv(q, k, v, key_padding_mask, name=name)
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in TRITON_DTYPES:
        raise ValueError(f'{name}: q, k, v must share one dtype among float16/bfloat16/float32, '
                         f'got {q.dtype}, {k.dtype}, {v.dtype}')
    if max(q.shape[-1], v.shape[-1]) > MAX_HEAD_DIM:
        raise ValueError(f'{name}: head dims must be <= {MAX_HEAD_DIM}, got D={q.shape[-1]}, Dv={v.shape[-1]}; '
                         f'use the torch backend')
    devices = {q.device, k.device, v.device}
    if key_padding_mask is not None:
        devices.add(key_padding_mask.device)
    if len(devices) > 1:
        raise ValueError(f'{name}: q, k, v and key_padding_mask must be on one device')
    return key_padding_mask.view(torch.uint8) if key_padding_mask is not None else None
