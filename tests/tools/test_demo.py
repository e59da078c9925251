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


@pytest.mark.slow
def test_demo_trees_job_with_the_full_resolution_pass(wheels, tmp_path):  # noqa: F811
    wd = tmp_path / 'wd'
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'demo.py'), '--only', 'trees_det',
                        '--iters-scale', '0.01', '--threads', '1', '--work-dir', str(wd),
                        '--data-dir', str(tmp_path / 'data'), '--wheel-dir', str(wheels)],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads((wd / 'summary.json').read_text())
    got = {(x['job'], x['metric']) for x in summary['results']}
    assert {('trees_det', 'coco/bbox_mAP_50'), ('trees_full_res', 'box AP50 heldout'),
            ('trees_full_res', 'box AP50 whole')} <= got
    full = json.loads((wd / 'trees_det' / 'full_res' / 'full_res.json').read_text())
    assert [[i['height'], i['width']] for i in full['images']] == [i['input_hw'] for i in full['images']]
    assert (wd / 'trees_det' / 'full_res' / 'OSBS_029.jpg').exists()
