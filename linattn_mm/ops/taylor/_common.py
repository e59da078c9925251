"""Input checks and normalisation shared by the fast and the naive TaylorShift attention."""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .._utils import count_tensor

VALID_MODES = ('auto', 'direct', 'efficient')


def taylor_exp(x: Tensor) -> Tensor:
    """Second-order Taylor expansion of exp: ``1 + x + x^2 / 2`` (>= 1/2 everywhere, so rows never sum to 0)."""
    return 1. + x + 0.5 * x * x


def check_temperature(temperature: Union[None, float, Tensor], q: Tensor, name: str) -> Tensor:
    """Return the per-head temperature as a ``(1, H|1, 1, 1)`` tensor in :func:`acc_dtype` of ``q``.

    Accepts None (= 1), a Python number, or a tensor of shape ``()``, ``(1,)`` or ``(H,)``. It is kept in
    float32 (float64 for float64 inputs) because the scalars derived from it, such as ``d * f(tau)``, can
    leave the fp16 range; callers cast what multiplies activations. Autograd carries the gradient through.
    """
    h = q.shape[1]
    acc = acc_dtype(q.dtype)
    if temperature is None:
        return torch.ones((), dtype=acc, device=q.device).view(1, 1, 1, 1)
    if not isinstance(temperature, Tensor):
        return torch.tensor(float(temperature), dtype=acc, device=q.device).view(1, 1, 1, 1)
    if temperature.dim() > 1 or temperature.numel() not in (1, h):
        raise ValueError(f'{name}: temperature must have shape (H,) = ({h},) (one per head) or be a scalar, '
                         f'got {tuple(temperature.shape)}; a (1, H, 1, 1) parameter can be passed as t.view(-1)')
    return temperature.to(device=q.device, dtype=acc).reshape(1, -1, 1, 1)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype of counts and scalar coefficients: float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_mode(mode: str, name: str) -> None:
    if mode not in VALID_MODES:
        raise ValueError(f'{name}: mode must be one of {VALID_MODES}, got {mode!r}')


def unit_qk(q: Tensor, k: Tensor) -> Tuple[Tensor, Tensor]:
    """L2-normalise q and k per head, so that q.k is a cosine; a zero row (a masked key) stays exactly zero.

    ``F.normalize``'s default eps (1e-12) is 0 in fp16, where a zero row would become 0/0 = NaN; the eps used
    here is at least the dtype's smallest normal number.
    """
    eps = max(1e-12, torch.finfo(q.dtype).tiny)
    return F.normalize(q, dim=-1, eps=eps), F.normalize(k, dim=-1, eps=eps)


def valid_count(key_padding_mask: Optional[Tensor], k: Tensor) -> Tensor:
    """Valid keys per sample as ``(B|1, 1, 1, 1)``, >= 1, in float64 for float64 inputs and float32 otherwise
    (never in half precision: N = 65,536 is past the fp16 maximum)."""
    acc = acc_dtype(k.dtype)
    if key_padding_mask is None:
        return count_tensor(k.shape[2], acc, k.device).view(1, 1, 1, 1)
    return (~key_padding_mask).sum(-1).clamp_min(1).to(acc)[:, None, None, None]


def output_scale(key_padding_mask: Optional[Tensor], k: Tensor, d: int, dtype: torch.dtype) -> Tensor:
    """``sqrt(N / D)`` of ``output_normalized`` with N the number of valid keys, ``(B|1, 1, 1, 1)``."""
    return (valid_count(key_padding_mask, k) / d).sqrt().to(dtype)
