"""conftest for running timm's own ``tests/test_models.py`` on our models (copied next to that file by
``test_timm_suite.py``; not collected here).

``test_models.py`` builds its parametrised model lists at import time from timm's registry, so our models must
be registered first: this conftest imports ``linattn_mm``. It keeps only the tests parametrised with one of
our models (``LINATTN_TIMM_MODELS``: comma-separated fnmatch patterns, default ``lin*``) and skips, with the
reason, the TorchScript tests (see ``linattn_mm.models.timm_models.SCRIPT_UNSUPPORTED``).
"""
import fnmatch
import os

import pytest

import linattn_mm  # noqa: F401  (registers the lin* timm models)
from linattn_mm.models.timm_models import SCRIPT_UNSUPPORTED

PATTERNS = [p for p in os.environ.get('LINATTN_TIMM_MODELS', 'lin*').split(',') if p]
SCRIPT_TESTS = ('test_model_forward_torchscript', 'test_model_forward_fx_torchscript')


def pytest_configure(config):
    for m in ('base', 'forward', 'backward', 'cfg', 'cfg_nonstd', 'torchscript', 'features', 'fxforward',
              'fxbackward', 'timeout'):
        config.addinivalue_line('markers', f'{m}: marker of timm test_models.py')


def pytest_collection_modifyitems(config, items):
    keep, drop = [], []
    for item in items:
        cs = getattr(item, 'callspec', None)
        name = cs.params.get('model_name') if cs is not None else None
        ours = isinstance(name, str) and any(fnmatch.fnmatch(name, p) for p in PATTERNS)
        (keep if ours else drop).append(item)
        if ours and item.originalname in SCRIPT_TESTS:
            item.add_marker(pytest.mark.skip(reason=f'not scriptable: {SCRIPT_UNSUPPORTED}'))
    config.hook.pytest_deselected(items=drop)
    items[:] = keep
