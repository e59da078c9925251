"""timm's own model tests (``tests/test_models.py`` of the installed timm release, unmodified) on our models.

The file is taken at test time from that release's source package (``pip download --no-deps --no-binary :all:
timm==VERSION``) into a cache outside the repo (``$LINATTN_CACHE`` or ``~/.cache/linattn_mm``), never copied
into the repo; without network or pip the test is skipped with the reason. It runs in a subprocess with
``_timm_suite_conftest.py`` (imports linattn_mm first, keeps only our models, skips TorchScript with the
reason in ``SCRIPT_UNSUPPORTED``) and every selected test must pass or be skipped for that reason.

By default the smallest preset of each family with each of its attentions (9 models); set
``LINATTN_TIMM_MODELS='lin*'`` for all of them.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

timm = pytest.importorskip('timm')

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODELS = ('linpvt_t_inline,linpvt_t_taylorshift,linpvt_t_linformer,linpvt_t_softmax,linswin_t_inline,'
                  'linswin_t_taylorshift,linswin_t_linformer,lindeit_t_inline,lintaylor_vit_t,lincswin_t_inline')
# the timm tests that take a `model_name` from timm's registry, so select ours (test name -> count per model)
EXPECTED_TESTS = ('test_model_forward', 'test_model_backward', 'test_model_default_cfgs',
                  'test_model_forward_torchscript', 'test_model_forward_features', 'test_model_forward_fx',
                  'test_model_backward_fx', 'test_model_forward_fx_torchscript')


def _cache_dir() -> Path:
    base = os.environ.get('LINATTN_CACHE') or os.path.join(
        os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache'), 'linattn_mm')
    return Path(base) / f'timm-{timm.__version__}-tests'


def _timm_test_models() -> Path:
    """Path of the release's ``tests/test_models.py`` (downloaded once), or skip with the reason."""
    out = _cache_dir() / 'test_models.py'
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    dl = out.parent / 'sdist'
    try:
        r = subprocess.run([sys.executable, '-m', 'pip', 'download', '--no-deps', '--no-binary', ':all:',
                            '--quiet', f'timm=={timm.__version__}', '-d', str(dl)],
                           capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f'cannot download the timm {timm.__version__} source package: {e}')
    sdists = sorted(dl.glob('timm-*.tar.gz'))
    if r.returncode != 0 or not sdists:
        pytest.skip(f'cannot download the timm {timm.__version__} source package (pip download failed: '
                    f'{(r.stderr or r.stdout).strip().splitlines()[-1:]})')
    with tarfile.open(sdists[0]) as tf:
        member = next((m for m in tf.getmembers() if m.name.endswith('/tests/test_models.py')), None)
        if member is None:
            pytest.skip(f'{sdists[0].name} has no tests/test_models.py')
        tmp = out.with_suffix('.tmp')
        tmp.write_bytes(tf.extractfile(member).read())
        tmp.replace(out)
    shutil.rmtree(dl, ignore_errors=True)
    return out


@pytest.mark.slow
def test_timm_test_models_pass(tmp_path):
    src = _timm_test_models()
    run = tmp_path / 'timm_tests'
    run.mkdir()
    shutil.copy(src, run / 'test_models.py')
    shutil.copy(Path(__file__).with_name('_timm_suite_conftest.py'), run / 'conftest.py')
    (run / 'pytest.ini').write_text('[pytest]\n')  # keep our pyproject's options out of timm's run
    models = os.environ.get('LINATTN_TIMM_MODELS', DEFAULT_MODELS)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]),
               LINATTN_TIMM_MODELS=models, OMP_NUM_THREADS=os.environ.get('OMP_NUM_THREADS', '1'))
    env.pop('GITHUB_ACTIONS', None)  # the full (non-CI) set of timm's tests
    xml = run / 'report.xml'
    r = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', '-p', 'no:xdist',
                        '--rootdir', str(run), f'--junitxml={xml}', 'test_models.py'],
                       cwd=run, env=env, capture_output=True, text=True, timeout=3600)
    tail = '\n'.join((r.stdout + r.stderr).splitlines()[-40:])
    assert xml.exists(), f'timm test run produced no report:\n{tail}'
    from linattn_mm.models.timm_models import SCRIPT_UNSUPPORTED
    results = {}
    for case in ET.parse(xml).getroot().iter('testcase'):
        name = case.get('name')
        bad = case.find('failure') if case.find('failure') is not None else case.find('error')
        skip = case.find('skipped')
        if bad is not None:
            results[name] = 'failed: ' + (bad.get('message') or '')[:300]
        elif skip is not None:
            reason = skip.get('message') or ''
            ok = case.get('name', '').split('[')[0] in ('test_model_forward_torchscript',
                                                        'test_model_forward_fx_torchscript')
            results[name] = 'skipped' if ok and SCRIPT_UNSUPPORTED in reason else f'unexpected skip: {reason}'
        else:
            results[name] = 'passed'
    problems = {k: v for k, v in results.items() if v not in ('passed', 'skipped')}
    assert not problems, f'timm test_models.py on {models}:\n' + '\n'.join(
        f'{k}: {v}' for k, v in sorted(problems.items())) + f'\n{tail}'
    n_models = len(timm.list_models(models.split(',')))
    names = [k.split('[')[0] for k in results]
    for t in EXPECTED_TESTS:  # every test that selects models from timm's registry ran for every model
        assert names.count(t) == n_models, f'{t}: {names.count(t)} results for {n_models} models\n{tail}'
    assert sum(v == 'passed' for v in results.values()) == 6 * n_models
