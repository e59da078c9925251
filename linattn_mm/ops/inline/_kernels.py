"""Feature maps phi applied to q and k before the InLine formula.

They follow the official Swin variant of InLine (``kernel_func`` of ``InLineAttention``): phi is applied
elementwise to q and k, and the scale stays ``D ** -0.5`` whatever the kernel.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch.nn.functional as F
from torch import Tensor


def _exp_kernel(x: Tensor) -> Tensor:
    # the official exp kernel is exp(0.2 x): the 0.2 keeps exp(q) bounded for unit-scale activations
    return (0.2 * x).exp()


INLINE_KERNELS: Dict[str, Optional[Callable[[Tensor], Tensor]]] = {
    'identity': None,
    'relu': F.relu,
    'leakyrelu': F.leaky_relu,  # negative slope 0.01, as nn.LeakyReLU() in the official code
    'exp': _exp_kernel,
}


def apply_kernel(q: Tensor, k: Tensor, kernel: str, name: str):
    """Return ``(phi(q), phi(k))``; raise ``ValueError`` for an unknown kernel name."""
    if kernel not in INLINE_KERNELS:
        raise ValueError(f'{name}: unknown kernel {kernel!r}; valid kernels are {sorted(INLINE_KERNELS)}')
    phi = INLINE_KERNELS[kernel]
    if phi is None:
        return q, k
    return phi(q), phi(k)
