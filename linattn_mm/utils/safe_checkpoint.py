"""Safe checkpoint loading for mmengine on torch >= 2.6 (resume without ``weights_only=False``).

torch >= 2.6 loads with ``weights_only=True`` by default. mmengine 0.10.7 checkpoints then fail to load
for two reasons:

1. ``HistoryBuffer.__getstate__`` stores its class-level statistics functions (``HistoryBuffer.min`` ...),
   which pickle as ``getattr(HistoryBuffer, 'min')`` calls; ``getattr`` must never be allowlisted, since it
   reaches any attribute of any allowlisted object.
2. The message hub holds numpy arrays, dtypes and scalars, which torch does not allowlist.

:func:`install` fixes both without giving up safe loading:

* ``HistoryBuffer`` pickles as plain data (``max_length`` and two numpy arrays); the statistics
  functions are class attributes that are re-registered on import, so nothing is lost.
* exactly the types mmengine checkpoints hold are allowlisted: ``HistoryBuffer`` and the numpy
  reconstruction helpers, array and dtype classes, and scalars.
* mmengine's local-file loader passes ``weights_only=True`` explicitly (safe on torch 2.4/2.5 too) and
  turns a refusal into one error that names the checkpoint and the offending global.

Importing :mod:`linattn_mm` (every config of ours does, through ``custom_imports``) calls :func:`install`.

:func:`load_checkpoint_file` reads *foreign* training checkpoints for weight conversion: the official InLine
training code stores its yacs ``CfgNode`` under ``'config'``. The file is read with ``weights_only=True`` and the
name ``yacs.config.CfgNode`` alone is mapped to an inert stand-in (a plain ``OrderedDict`` receives the keys; no
yacs code is imported or run); entries holding such a config are dropped and reported. Every other global stays
refused, exactly as in :func:`safe_torch_load`.
"""
from __future__ import annotations

import os.path as osp
import pickle
from collections import OrderedDict
from typing import Any, Dict, List, Tuple

import numpy as np
import torch

_INSTALLED = False


def _history_buffer_getstate(self) -> Dict[str, Any]:
    # Plain data only: the statistics functions live on the class (see module docstring).
    return {k: v for k, v in self.__dict__.items() if k != 'statistics_methods'}


def _numpy_safe_globals() -> List[Any]:
    """The numpy callables and classes that pickled arrays, dtypes and scalars refer to."""
    try:  # numpy >= 2 moved the module; pickles name whichever wrote them
        from numpy._core import multiarray as ma2  # type: ignore
    except ImportError:  # pragma: no cover - numpy 1.x
        ma2 = None
    from numpy.core import multiarray as ma1  # noqa: deprecated alias on numpy 2, still importable

    out: List[Any] = [np.ndarray, np.dtype]
    for ma in (ma1, ma2):
        if ma is not None:
            out += [ma._reconstruct, ma.scalar]
    names = ('bool_', 'int8', 'int16', 'int32', 'int64', 'uint8', 'uint16', 'uint32', 'uint64',
             'float16', 'float32', 'float64', 'complex64', 'complex128', 'str_', 'bytes_')
    for name in names:
        out.append(type(np.dtype(getattr(np, name))))  # dtype classes (numpy >= 1.25)
    return list(dict.fromkeys(out))  # dedupe, keep order


class UnsafeCheckpointError(pickle.UnpicklingError):
    """Raised when a checkpoint holds objects outside the allowlist; the payload is never run."""


def safe_torch_load(filename: str, map_location=None) -> Any:
    """``torch.load(..., weights_only=True)`` with a clear error when the file holds other objects."""
    try:
        return torch.load(filename, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f'Refused to load checkpoint {filename!r}: it contains Python objects outside the safe '
            f'allowlist, so it was not unpickled (nothing in it ran). torch said: '
            f'{str(err).splitlines()[0]} ... If you wrote this file yourself and trust it, allowlist '
            f'exactly the named type with torch.serialization.add_safe_globals([...]) before loading; '
            f'checkpoints written by mmengine with linattn_mm imported need nothing extra.') from None


class _InertCfgNode:
    """Stands in for ``yacs.config.CfgNode`` while unpickling: ``__new__`` returns a plain ``OrderedDict``.

    The weights-only unpickler then fills it like any mapping (SETITEMS) and sets its attribute state (BUILD);
    nothing of yacs runs. Created mappings are recorded in ``made`` so the loader can tell where configs were.
    """

    made: List[int] = []

    def __new__(cls, *args):  # noqa: D102 - pickle calls cls.__new__(cls)
        out: OrderedDict = OrderedDict()
        cls.made.append(id(out))
        return out


_YACS_NAMES = ('yacs.config.CfgNode',)


def load_checkpoint_file(filename: str, map_location='cpu') -> Tuple[Any, List[str]]:
    """Load a training checkpoint safely for weight conversion; return ``(obj, notes)``.

    Like :func:`safe_torch_load`, plus: a yacs ``CfgNode`` (the official InLine/Swin training code stores one
    under ``'config'``) is read as inert data and its entry removed from the returned dict; ``notes`` says so.

    Raises:
        UnsafeCheckpointError: the file holds any other object outside the allowlist (nothing in it ran).
    """
    _InertCfgNode.made = []
    if hasattr(torch.serialization, 'safe_globals'):
        with torch.serialization.safe_globals([(_InertCfgNode, n) for n in _YACS_NAMES]):
            obj = safe_torch_load(filename, map_location=map_location)
    else:  # pragma: no cover - torch < 2.5 has no name-mapped allowlist: yacs files are refused
        obj = safe_torch_load(filename, map_location=map_location)
    made, notes = set(_InertCfgNode.made), []
    _InertCfgNode.made = []
    if made and isinstance(obj, dict):
        skipped = [k for k, v in obj.items() if id(v) in made]
        obj = {k: v for k, v in obj.items() if k not in skipped}
        if skipped:
            notes.append(f'skipped {", ".join(map(repr, skipped))}: a yacs CfgNode (training config), read as '
                         f'inert data and not executed')
    return obj, notes


def _load_from_local(filename: str, map_location=None) -> Any:
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    return safe_torch_load(filename, map_location=map_location)


def install() -> None:
    """Make mmengine save/load/resume work with ``weights_only=True`` (idempotent)."""
    global _INSTALLED
    if _INSTALLED:
        return
    try:
        from mmengine.logging.history_buffer import HistoryBuffer
        from mmengine.runner.checkpoint import CheckpointLoader
    except ImportError:  # mmengine absent: the ops/layers/models tiers still work
        return
    HistoryBuffer.__getstate__ = _history_buffer_getstate
    # mmengine's own __setstate__ already drops a stale 'statistics_methods' key and re-registers the
    # defaults, so checkpoints written before this patch (if they were loadable) keep working.
    if hasattr(torch.serialization, 'add_safe_globals'):
        torch.serialization.add_safe_globals([HistoryBuffer] + _numpy_safe_globals())
    CheckpointLoader.register_scheme(prefixes='', force=True)(_load_from_local)
    _INSTALLED = True
