"""tools/benchmark.py runs and writes what it promises (timings are printed, never asserted)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(ROOT, 'tools', 'benchmark.py')


def test_op_level_writes_rows_and_plot(tmp_path):
    out, png = tmp_path / 'F.json', tmp_path / 'F.png'
    # the documented call shape, at a size that runs in seconds
    cmd = [BENCH, '--level', 'op', '--attn', 'inline', 'softmax', 'performer', '--tokens', '64', '257',
           '--head-dim', '32', '--device', 'cpu', '--repeats', '1', '--warmup', '0', '--max-time', '0.2',
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


# ---- backbone / model level comparisons and the GPU suite (in-process: tiny models, one or two rounds) ----
FAST = ['--device', 'cpu', '--threads', '1', '--warmup', '0', '--min-rounds', '2', '--max-rounds', '2',
        '--min-run-time', '0.001', '--max-time', '1']


def _bench_module():
    import importlib.util
    spec = importlib.util.spec_from_file_location('benchmark_under_test', BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_backbone_level_vs_stock_interleaved(tmp_path):
    """--vs adds the stock backbone to the same interleaved rounds; x ref is against it; spread is reported."""
    bench = _bench_module()
    png = tmp_path / 'bb.png'
    rows = bench.main(['--level', 'backbone', '--backbone', 'LinPVT', '--attn', 'inline', 'softmax',
                       '--vs', 'mmdet:PyramidVisionTransformerV2:b0', '--sizes', '32x48', '--modes', 'fwdbwd',
                       '--no-memory', '--plot', str(png)] + FAST)
    assert [r['model'] for r in rows] == ['LinPVT inline', 'LinPVT softmax', 'mmdet:PyramidVisionTransformerV2:b0']
    assert [r['is_ref'] for r in rows] == [False, False, True]
    for r in rows:
        assert r['samples'] >= 2 and r['ms_q1'] <= r['ms'] <= r['ms_q3'] and r['img_per_s'] > 0
        assert r['size'] == '32x48' and r['mode'] == 'fwdbwd'
    table = bench.print_table(rows)
    assert '| model | size (HxW) |' in table and '| ref |' in table and 'IQR ms' in table
    assert png.stat().st_size > 1000


def test_stock_backbone_swap_points_the_neck_at_its_channels():
    import _bench_compare as cmp  # noqa: E402  (tools/ is on sys.path once the benchmark module is loaded)
    from mmengine.config import ConfigDict
    det = ConfigDict(backbone=dict(type='linattn_mm.LinPVT', out_indices=(0, 1, 2, 3)),
                     neck=dict(type='FPN', in_channels=[1, 2, 3, 4]))
    cmp.swap_to_stock(det, 'mmdet:SwinTransformer:t')
    assert det.backbone.type == 'mmdet.SwinTransformer' and det.neck.in_channels == [96, 192, 384, 768]
    seg = ConfigDict(backbone=dict(type='linattn_mm.LinSwin', out_indices=(0, 1, 2, 3)),
                     decode_head=dict(in_channels=[1, 2, 3, 4]), auxiliary_head=dict(in_channels=3, in_index=2))
    cmp.swap_to_stock(seg, 'mmseg:ResNet:50')
    assert seg.decode_head.in_channels == [256, 512, 1024, 2048] and seg.auxiliary_head.in_channels == 1024
    with pytest.raises(SystemExit, match='unknown stock backbone'):
        cmp.swap_to_stock(det, 'mmdet:PyramidVisionTransformerV2:b9')


NUCLEI_DET = os.path.join(ROOT, 'configs/nuclei_det/mask-rcnn_linpvt-xt-inline_fpn_150it_nuclei.py')
NUCLEI_SEG = os.path.join(ROOT, 'configs/nuclei_seg/fpn_linpvt-small-inline_1xb4-150it_nuclei-256x256.py')


@pytest.mark.parametrize('config', [NUCLEI_DET, NUCLEI_SEG], ids=['mask_rcnn', 'semantic_fpn'])
def test_model_level_train_step_and_inference(tmp_path, config):
    """A whole detector / segmenter (mmengine's train_step and test_step on dummy boxes + masks / label maps)
    against the same config with mmdet's PVTv2-b0, interleaved."""
    bench = _bench_module()
    out = tmp_path / 'm.json'
    opts = ['--cfg-options', 'model.train_cfg.rcnn.sampler.num=16'] if config == NUCLEI_DET else []
    rows = bench.main(['--level', 'model', config, '--vs', 'mmdet:PyramidVisionTransformerV2:b0',
                       '--sizes', '64x96', '--no-memory', '--out', str(out)] + opts + FAST)
    assert {(r['model'], r['mode']) for r in rows} == {
        (m, mode) for m in ('LinPVT-custom inline', 'mmdet:PyramidVisionTransformerV2:b0')
        for mode in ('train', 'infer')}
    assert all(r['samples'] >= 2 and r['ms'] > 0 and r['config'] == os.path.basename(config) for r in rows)
    assert len(json.loads(out.read_text())) == 4


def test_model_level_skips_detectors_without_mmcv_ops(monkeypatch, capsys):
    bench = _bench_module()
    monkeypatch.setitem(sys.modules, 'mmcv.ops', None)  # `import mmcv.ops` raises ImportError
    rows = bench.main(['--level', 'model', NUCLEI_DET, '--sizes', '64', '--no-memory'] + FAST)
    assert rows == []
    assert 'mmcv.ops is not available' in capsys.readouterr().out


def test_layer_level_against_the_references(capsys):
    """--level layer: each layer and its reference in one group (x ref against the reference); lucidrains'
    Nystrom (optional) is skipped with a message naming the package when it is not installed, and otherwise
    runs with our weights (outputs close at N a multiple of the landmarks: the same approximation up to the
    pseudo-inverse's starting scale)."""
    pytest.importorskip('timm.models.efficientvit_mit')
    bench = _bench_module()
    rows = bench.main(['--level', 'layer', '--dims', '32', '--sizes', '8x16', '--modes', 'fwd', 'fwdbwd',
                       '--no-memory'] + FAST)
    relu = [r for r in rows if r['config'].startswith('relu')]
    assert [(r['model'], r['mode'], r['is_ref']) for r in relu] == [
        ('linattn_mm', 'fwd', False), ('timm LiteMLA', 'fwd', True),
        ('linattn_mm', 'fwdbwd', False), ('timm LiteMLA', 'fwdbwd', True)]
    assert all(r['config'] == 'relu C32 4h' and r['size'] == '8x16' and r['samples'] >= 2 for r in relu)
    out = capsys.readouterr().out
    try:
        import nystrom_attention  # noqa: F401
    except ImportError:
        assert 'pip install nystrom-attention' in out
    else:
        nys = [r for r in rows if r['config'].startswith('nystrom')]
        assert len(nys) == 4 and all(r['max_abs_diff'] < 1e-5 for r in nys)  # one head: rounding only
    assert '| relu C32 4h | linattn_mm | 8x16 |' in bench.print_table(rows)
    with pytest.raises(SystemExit, match='multiple of the head width'):
        bench.main(['--level', 'layer', '--layer', 'relu', '--dims', '20', '--no-memory'] + FAST)


def test_bad_mode_for_level_is_one_clear_error():
    bench = _bench_module()
    with pytest.raises(SystemExit):
        bench.parse_args(['--level', 'model', NUCLEI_DET, '--modes', 'fwdbwd'])


def test_gpu_suite_covers_the_issue_and_dry_runs_on_cpu(tmp_path):
    """The GPU script's job list holds every goal measurement; its CPU dry run (--smoke) writes tables, rows,
    plots and the summary with the goals table."""
    bench = _bench_module()
    args = bench.parse_args(['--suite', 'gpu', '--device', 'cuda'])
    jobs = dict(bench.suite_jobs(args, have_mmdet=True))
    for pair in ('pvt', 'swin', 'vit'):
        for batch in (1, 8):
            argv = jobs[f'{pair}_b{batch}']
            assert argv[argv.index('--sizes') + 1:argv.index('--sizes') + 4] == ['1024', '1024x2048', '2048']
        assert '--compile' in jobs[f'{pair}_b1_compile']
    mr = jobs['maskrcnn_b2']
    assert mr[mr.index('--sizes') + 1] == '800x1333' and mr[mr.index('--batch') + 1] == '2'
    assert 'mmdet:PyramidVisionTransformerV2:b2' in mr and 'bf16' in mr
    out = tmp_path / 'suite'
    env = dict(os.environ, DEVICE='cpu', PYTHON=sys.executable, OMP_NUM_THREADS='1')
    res = subprocess.run([os.path.join(ROOT, 'tools', 'gpu_bench.sh'), str(out), '--smoke', '--threads', '1',
                          '--only', 'pvt_b1', 'maskrcnn_b2'], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    summary = (out / 'summary.md').read_text()
    assert '## pvt_b1' in summary and '## maskrcnn_b2' in summary and '## goals' in summary
    assert (out / 'pvt_b1.png').stat().st_size > 1000 and json.loads((out / 'maskrcnn_b2.json').read_text())
    with pytest.raises(SystemExit, match='no such job'):
        bench.main(['--suite', 'gpu', '--smoke', '--device', 'cpu', '--out-dir', str(out), '--only', 'nope'])
