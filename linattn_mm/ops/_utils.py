"""Shared checks and mask arithmetic for the functional attention ops.

Conventions of every op in :mod:`linattn_mm.ops`:

* ``q`` is ``(B, H, Nq, D)``, ``k`` is ``(B, H, Nk, D)``, ``v`` is ``(B, H, Nk, Dv)``.
* ``key_padding_mask`` is ``(B, Nk)`` bool, ``True`` = padding (as in ``torch.nn.MultiheadAttention``).
  Padded keys are excluded exactly: every mean, sum and normaliser runs over valid keys only.
* A query whose sample has no valid key at all gets a zero output (never NaN).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor


def check_qkv(q: Tensor, k: Tensor, v: Tensor,
              key_padding_mask: Optional[Tensor] = None, name: str = 'attention') -> None:
    """Validate shapes and dtypes; raise one ``ValueError`` that names the problem and the fix."""
    for t, n in ((q, 'q'), (k, 'k'), (v, 'v')):
        if t.dim() != 4:
            raise ValueError(f'{name}: {n} must be 4-D (B, H, N, D), got shape {tuple(t.shape)}; '
                             f'reshape tokens as x.view(B, N, H, D).transpose(1, 2)')
    if q.shape[:2] != k.shape[:2] or k.shape[:3] != v.shape[:3]:
        raise ValueError(f'{name}: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not agree; '
                         f'q/k/v need the same B and H, and k/v the same number of tokens')
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f'{name}: q and k head dims differ ({q.shape[-1]} vs {k.shape[-1]})')
    if key_padding_mask is not None:
        b, nk = k.shape[0], k.shape[2]
        if key_padding_mask.shape != (b, nk):
            raise ValueError(f'{name}: key_padding_mask must be (B, Nk) = ({b}, {nk}), '
                             f'got {tuple(key_padding_mask.shape)}')
        if key_padding_mask.dtype != torch.bool:
            raise ValueError(f'{name}: key_padding_mask must be bool (True = padding), '
                             f'got {key_padding_mask.dtype}; use mask.bool()')


def is_exporting() -> bool:
    """True while the model is traced for deployment: ``torch.export`` (and so ``torch.onnx.export(dynamo=True)``)
    or the TorchScript tracer (``torch.onnx.export(dynamo=False)``, ``torch.jit.trace``).

    Sizes are then symbolic (SymInts, or traced tensors under the tracer): code that would branch on them or
    turn them into Python numbers takes a branch-free form instead, so the exported graph works at every size.
    Eager and ``torch.compile`` runs are unaffected.
    """
    return torch.compiler.is_exporting() or torch.jit.is_tracing()


def count_tensor(n, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``max(n, 1)`` for a token count ``n`` (a size) as a 0-d tensor.

    Eager: a constant. Exporting (:func:`is_exporting`): computed from the size in the graph, so an exported
    model does not keep the count of the export size.
    """
    if is_exporting():
        return (torch.ones((), dtype=dtype, device=device) * n).clamp_min(1.)
    return torch.tensor(float(max(n, 1)), dtype=dtype, device=device)


def size_hint(n) -> int:
    """The concrete value of a size without recording a guard on it: the example's value for a SymInt under
    ``torch.export``, the traced value under the TorchScript tracer, ``n`` itself otherwise. For choices that
    change only the cost, never the result (e.g. TaylorShift's direct/efficient switch)."""
    if isinstance(n, torch.SymInt):
        hint = n.node.hint
        return int(hint) if hint is not None else int(n)
    return int(n)


def crop_hw(x: Tensor, h, w, dims: Tuple[int, int] = (-2, -1), gather: Optional[bool] = None) -> Tensor:
    """Keep the first ``h`` x ``w`` entries of the two axes ``dims`` (drop bottom/right padding).

    Eager: a slice (a view). Exporting (:func:`is_exporting`), or ``gather=True``: an ``index_select`` of
    ``arange(h)``, which records no guard on how the symbolic ``h`` compares with the padded size (a slice would
    freeze that, and so would a later ``reshape`` of the slice, which has to know whether it is contiguous).
    """
    if not (is_exporting() if gather is None else gather):
        index = [slice(None)] * x.dim()
        index[dims[0]], index[dims[1]] = slice(None, h), slice(None, w)
        return x[tuple(index)]
    x = x.index_select(dims[0], torch.arange(h, device=x.device))
    return x.index_select(dims[1], torch.arange(w, device=x.device))


def key_keep(key_padding_mask: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    """``(B, Nk)`` padding mask -> ``(B, 1, Nk, 1)`` weights, 1 for valid keys, 0 for padding."""
    if key_padding_mask is None:
        return None
    return (~key_padding_mask).to(dtype)[:, None, :, None]


def valid_count(key_padding_mask: Optional[Tensor], nk: int, dtype: torch.dtype,
                device: torch.device) -> Tensor:
    """Number of valid keys per sample as ``(B, 1, 1, 1)`` (or a scalar tensor without a mask), >= 1."""
    if key_padding_mask is None:
        return count_tensor(nk, dtype, device)
    return (~key_padding_mask).sum(-1).clamp_min(1).to(dtype)[:, None, None, None]


def has_valid(key_padding_mask: Optional[Tensor]) -> Optional[Tensor]:
    """``(B, 1, 1, 1)`` bool: does the sample have at least one valid key (None without a mask)."""
    if key_padding_mask is None:
        return None
    return (~key_padding_mask).any(-1)[:, None, None, None]


def masked_mean(x: Tensor, keep: Optional[Tensor], count: Tensor) -> Tensor:
    """Mean over the token axis (-2) of ``x`` ``(B, H, N, D)`` using valid tokens only -> ``(B, H, 1, D)``."""
    if keep is None:
        return x.mean(-2, keepdim=True)
    return (x * keep).sum(-2, keepdim=True) / count


def zero_empty_rows(out: Tensor, key_padding_mask: Optional[Tensor]) -> Tensor:
    """Zero the outputs of samples whose keys are all padding (their formula is 0/0)."""
    ok = has_valid(key_padding_mask)
    if ok is None:
        return out
    # where, not a multiply (0/0 rows may be NaN), and unconditionally: bool(ok.all()) would be a host sync
    return torch.where(ok, out, out.new_zeros(()))


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    """``(B, N, C)`` -> ``(B, H, N, C // H)``."""
    b, n, c = x.shape
    return x.view(b, n, num_heads, c // num_heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """``(B, H, N, D)`` -> ``(B, N, H * D)``."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def upcast(*ts: Tensor) -> Tuple[Tensor, ...]:
    """Cast half-precision tensors to float32 (for fp32 islands); float32/64 pass through."""
    return tuple(t.float() if t.dtype in (torch.float16, torch.bfloat16) else t for t in ts)


def pad_amount(n: int, s: int) -> int:
    """Padding that takes ``n`` to the next multiple of ``s``: ``ceil(n / s) * s - n``.

    Written with floor division only, never ``%``: under ``torch.compile`` with dynamic shapes a Python ``%`` on a
    symbolic size becomes sympy's ``PythonMod``, and once such a size reaches a float scalar of a tensor op (the
    scale factors of ``F.interpolate``, a token count) inductor's tensorify pass fails with "TensorReferenceAnalysis
    has no attribute 'python_mod'" (pytorch/pytorch#197716). Floor division is supported there. No negative
    operands either: ONNX's integer division truncates where Python's floors, so ``-(-n // s)`` would export
    wrong.
    """
    return (n + s - 1) // s * s - n
