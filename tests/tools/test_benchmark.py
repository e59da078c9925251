"""tools/benchmark.py runs and writes what it promises (timings are printed, never asserted)."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(ROOT, 'tools', 'benchmark.py')


def test_op_level_writes_rows_and_plot(tmp_path):
    out, png = tmp_path / 'F.json', tmp_path / 'F.png'
    # the documented call shape, at a size that runs in seconds
    cmd = [BENCH, '--level', 'op', '--attn', 'inline', 'softmax', 'performer', '--tokens', '64', '257',
           '--head-dim', '32', '--device', 'cpu', '--repeats', '1', '--warmup', '0',
           '--out', str(out), '--plot', str(png)]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert {(r['attn'], r['tokens'], r['mode']) for r in rows} == {
        (a, n, m) for a in ('inline', 'softmax', 'performer') for n in (64, 257) for m in ('fwd', 'fwdbwd')}
    for r in rows:
        assert {'attn', 'tokens', 'ms', 'peak_mem_mb'} <= set(r)
        assert r['ms'] > 0 and r['peak_mem_mb'] >= 0
    assert all('sdpa_backend' in r for r in rows if r['attn'] == 'softmax')
    assert png.stat().st_size > 1000
    assert '| attn | tokens |' in res.stdout


def test_unknown_attention_is_one_clear_error(tmp_path):
    res = subprocess.run([sys.executable, BENCH, '--attn', 'nope', '--tokens', '16', '--repeats', '1'],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode != 0
    assert "unknown attention 'nope'" in res.stderr and 'inline' in res.stderr
