"""The mmsegmentation wheel installs a top-level package named ``tests``: ours must be the one imported."""
from pathlib import Path

import tests
import tests._helpers


def test_our_tests_package_is_imported():
    here = Path(__file__).resolve().parent
    assert Path(tests.__file__).resolve().parent == here
    assert Path(tests._helpers.__file__).resolve().parent == here
