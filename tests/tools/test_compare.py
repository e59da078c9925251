"""tools/compare.py: attention specs, schedule scaling, the report, and a tiny end-to-end compare that resumes."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest
from mmengine.config import Config

from tests.tools.test_prepare_data import wheels  # noqa: F401  (fixture: synthetic registry wheels)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_spec = importlib.util.spec_from_file_location('compare', os.path.join(ROOT, 'tools', 'compare.py'))
compare = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compare)


def test_attention_specs():
    assert compare.parse_attn('inline') == ('inline', dict(type='inline'))
    assert compare.parse_attn('linformer:proj_len=32,share=True') == (
        'linformer:proj_len=32,share=True', dict(type='linformer', proj_len=32, share=True))
    with pytest.raises(SystemExit, match='not an attention of the layer table'):
        compare.parse_attn('flash')
    with pytest.raises(SystemExit, match='key=value'):
        compare.parse_attn('linformer:32')


def test_schedule_scaled_to_the_iterations():
    cfg = Config(dict(train_cfg=dict(max_iters=150, val_interval=150), param_scheduler=[
        dict(type='LinearLR', begin=0, end=15), dict(type='PolyLR', begin=15, end=150),
        dict(type='MultiStepLR', begin=0, end=150, milestones=[120])]))
    compare._schedule_opts(cfg, 60)
    assert cfg.train_cfg.max_iters == 60 and cfg.train_cfg.val_interval == 61
    s = cfg.param_scheduler
    assert (s[0]['begin'], s[0]['end'], s[1]['begin'], s[1]['end']) == (0, 6, 6, 60)
    assert s[2]['milestones'] == [48]


def test_table_rows_for_failed_and_unbuilt_attentions():
    ok = dict(seed=0, status='ok', metric=80.0, train_s=10.0, train_img_s=4.0, test_img_s=2.0,
              train_peak_mib=50.0, test_peak_mib=5.0)
    rows = [dict(attention='inline', seeds_failed=[], errors=[], flops=dict(params=2e6, macs=7.6e8),
                 **{k: compare._stats([ok[k], ok[k] + 2]) for k in ok if k not in ('seed', 'status')}),
            dict(attention='relu', seeds_failed=[0], errors=['FloatingPointError: training loss is nan'],
                 flops={}, **{k: compare._stats([]) for k in ok if k not in ('seed', 'status')})]
    md = compare.table(rows, 'mIoU', {'cswin': 'ValueError: num_heads (1) must be even'})
    assert '| inline | 81.00 ± 1.41 | 80.00..82.00 | 2 |' in md
    assert '| relu | failed: FloatingPointError: training loss is nan |' in md
    assert '| cswin | does not build in this backbone: ValueError' in md


@pytest.mark.slow
def test_tiny_compare_writes_the_report_and_resumes(wheels, tmp_path):  # noqa: F811
    wd = tmp_path / 'wd'
    # 'inline:bogus=1' fails in its worker (unknown option): a row with the error, not a crash of the compare
    cmd = [sys.executable, os.path.join(ROOT, 'tools', 'compare.py'), '--attn', 'inline', 'softmax',
           'inline:bogus=1', '--seeds', '1', '--iters', '5', '--jobs', '2', '--work-dir', str(wd),
           '--data-dir', str(tmp_path / 'data'), '--wheel-dir', str(wheels)]
    env = dict(os.environ, OMP_NUM_THREADS='1')
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert '3 runs to do, 0 finished before' in r.stdout
    report = json.loads((wd / 'compare.json').read_text())
    rows = {a['attention']: a for a in report['attentions']}
    for name in ('inline', 'softmax'):
        assert rows[name]['metric']['n'] == 1 and 0 <= rows[name]['metric']['mean'] <= 100
        assert rows[name]['train_img_s']['mean'] > 0 and rows[name]['test_img_s']['mean'] > 0
        assert rows[name]['flops']['params'] > 0 and rows[name]['flops']['macs'] > 0
        assert rows[name]['train_peak_mib']['n'] == 1 and rows[name]['train_peak_mib']['mean'] >= 0
    assert rows['inline:bogus=1']['seeds_failed'] == [0] and 'bogus' in rows['inline:bogus=1']['errors'][0]
    md = (wd / 'compare.md').read_text()
    assert '| inline |' in md and '| softmax |' in md and '| inline:bogus=1 | failed:' in md
    png = (wd / 'compare.png').read_bytes()
    assert png[:8] == b'\x89PNG\r\n\x1a\n' and len(png) > 10_000

    results = sorted(wd.glob('runs/*/seed0/result.json'))
    assert len(results) == 3
    stamps = [p.stat().st_mtime_ns for p in results]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert '0 runs to do, 3 finished before (not redone)' in r.stdout
    assert [p.stat().st_mtime_ns for p in results] == stamps
