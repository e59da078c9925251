"""Counting the aten ops a forward dispatches: the per-launch overhead a GPU pays at small batch.

Counted below autograd with a ``TorchDispatchMode``, so composite ops appear as what they decompose into and every
counted op is one kernel launch or one view/metadata op; ops that do nothing and return their input
(``dropout`` at ``p=0`` in eval, ...) are not dispatched and cost nothing here.
"""
from __future__ import annotations

from collections import Counter
from typing import Callable

from torch.utils._python_dispatch import TorchDispatchMode


class _OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def count_aten_ops(fn: Callable, *args, **kwargs) -> Counter:
    """Run ``fn(*args, **kwargs)`` once and return ``Counter({aten op name: calls})``."""
    with _OpCounter() as mode:
        fn(*args, **kwargs)
    return mode.counts
