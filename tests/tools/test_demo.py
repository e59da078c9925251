"""tools/demo.py end to end on tiny synthetic wheels (prepare -> train -> test with drawings -> summary)."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.tools.test_prepare_data import wheels  # noqa: F401  (fixture: synthetic registry wheels)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_spec = importlib.util.spec_from_file_location('demo', os.path.join(ROOT, 'tools', 'demo.py'))
demo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo)


def test_metrics_parsed_from_the_final_test_line():
    out = ('11/23 05:24:54 - mmengine - INFO - Iter(val) [1/1]    coco/bbox_mAP: 0.1000\n'
           '11/23 05:25:54 - mmengine - INFO - Iter(test) [1/1]    coco/bbox_mAP: 0.4860  coco/bbox_mAP_50: 0.8710'
           '  coco/segm_mAP_50: -1.0000  data_time: 0.0300  time: 0.6243\n')
    m = demo.test_metrics(out)
    assert m == {'coco/bbox_mAP': 0.486, 'coco/bbox_mAP_50': 0.871, 'coco/segm_mAP_50': -1.0}
    seg = demo.test_metrics('x - Iter(test) [1/1]    aAcc: 97.5000  mIoU: 91.6300  mAcc: 95.0000  data_time: 0.01')
    assert seg == {'aAcc': 97.5, 'mIoU': 91.63, 'mAcc': 95.0}
    assert demo.test_metrics('no test line') == {}


@pytest.mark.slow
def test_demo_runs_nuclei_jobs_on_synthetic_data(wheels, tmp_path):  # noqa: F811
    wd = tmp_path / 'wd'
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'demo.py'), '--only', 'nuclei_seg', 'nuclei_det',
                        '--iters-scale', '0.02', '--threads', '1', '--work-dir', str(wd),
                        '--data-dir', str(tmp_path / 'data'), '--wheel-dir', str(wheels)],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads((wd / 'summary.json').read_text())
    got = {(x['job'], x['metric']) for x in summary['results']}
    assert {('nuclei_seg', 'mIoU'), ('nuclei_det', 'coco/segm_mAP_50')} <= got
    assert not summary['failures']
    drawn = [f for d, _, fs in os.walk(wd) if 'predictions' in d for f in fs if f.endswith('.png')]
    assert drawn, 'no prediction images were drawn'
    assert not (tmp_path / 'data' / 'trees').exists()  # only the data the chosen jobs need


def _fake_commands(calls):
    """A stand-in for demo.run: records each command, answers like train/test/full_res would."""
    def fake_run(cmd, log_path, env=None):
        calls.append(cmd)
        if cmd[1] == 'tools/test.py' and '--tta' in cmd:
            return 0, 'x - Iter(test) [17/17]    coco/bbox_mAP: 0.1200  coco/bbox_mAP_50: 0.3400  time: 4.0', 1.0
        if cmd[1] == 'tools/test.py':
            return 0, 'x - Iter(test) [17/17]    coco/bbox_mAP: 0.1000  coco/bbox_mAP_50: 0.3100  time: 1.0', 1.0
        if cmd[1] == 'tools/full_res.py':
            out = cmd[cmd.index('--out-dir') + 1]
            os.makedirs(out)
            with open(os.path.join(out, 'full_res.json'), 'w') as f:
                json.dump(dict(heldout=dict(AP=0.1, AP50=0.25), whole=dict(AP=0.2, AP50=0.4)), f)
        return 0, '', 1.0
    return fake_run


def test_trees_job_runs_the_full_resolution_pass(tmp_path, monkeypatch):
    """The demo's wiring with the commands faked: whole images prepared, the trees checkpoint tested in one pass
    (drawn) and with the config's test-time augmentation (the target is on that one), full_res.py run on the
    same checkpoint, its held-out and whole-image AP50 in the summary."""
    calls = []
    monkeypatch.setattr(demo, 'run', _fake_commands(calls))
    wd = tmp_path / 'wd'
    demo.main(['--only', 'trees_det', '--iters-scale', '0.01', '--work-dir', str(wd), '--data-dir', str(tmp_path)])
    prep, train, test, test_tta, full = calls
    assert prep[1] == 'tools/prepare_data.py' and '--trees-full' in prep and prep[prep.index('--only') + 1] == 'trees'
    assert train[1] == 'tools/train.py' and 'param_scheduler.1.milestones=[2]' in train
    assert '--show-dir' in test and '--tta' not in test
    assert '--tta' in test_tta and test_tta[2:4] == test[2:4]      # the same config and checkpoint
    assert test_tta[test_tta.index('--cfg-options') + 1:] == test[test.index('--cfg-options') + 1:]  # data roots
    assert full[2] == train[2] and full[3] == os.path.join(str(wd), 'trees_det', 'iter_3.pth')
    assert full[full.index('--data') + 1] == os.path.join(str(tmp_path), 'trees', 'full')
    got = {(r['job'], r['metric']): r['value'] for r in json.loads((wd / 'summary.json').read_text())['results']}
    assert got == {('trees_det', 'coco/bbox_mAP'): 0.1, ('trees_det', 'coco/bbox_mAP_50'): 0.31,
                   ('trees_det', 'tta/coco/bbox_mAP'): 0.12, ('trees_det', 'tta/coco/bbox_mAP_50'): 0.34,
                   ('trees_full_res', 'box AP50 heldout'): 0.25, ('trees_full_res', 'box AP50 whole'): 0.4}
    md = (wd / 'summary.md').read_text()
    assert 'trees_full_res' in md and '| trees_det | tta/coco/bbox_mAP_50 | 0.34 | >= 0.3 | yes |' in md
    assert '| trees_det | coco/bbox_mAP_50 | 0.31 |  |  |' in md   # the one-pass row carries no target

