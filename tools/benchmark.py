#!/bin/sh
''''test -x "$(dirname "$0")/../.venv/bin/python" && exec "$(dirname "$0")/../.venv/bin/python" "$0" "$@"; exec python3 "$0" "$@" # '''
# (the line above lets `tools/benchmark.py ...` run with the project's .venv; Python sees a string)
__doc__ = """Speed and memory of every attention of the library, with softmax (SDPA) as the baseline.

Levels:
  op        the functional op alone over token counts: q, k, v of shape (B, H, N, D)
  backbone  a whole backbone over image sizes (forward, or forward + backward)

Examples::

  tools/benchmark.py --level op --attn inline softmax --tokens 16384 --head-dim 32 --device cpu --out F.json
  tools/benchmark.py --level op --tokens 1024 4096 16384 65536 --device cuda --dtype bf16 --plot ops.png
  tools/benchmark.py --level backbone --backbone LinPVT --attn inline softmax --sizes 512 1024x2048

Each row reports the median time of ``--repeats`` runs after ``--warmup`` (CPU: wall time; CUDA: GPU time
between CUDA events, L2 flushed between calls, see ``time_fn``), throughput, peak memory
(CUDA: ``max_memory_allocated``; CPU: the resident-set high-water mark above the block's start, see
``PeakMemory``), and for softmax which SDPA backend actually ran (read from the profiler's kernel names).
Speed and memory live here, never in timed tests.
"""
import argparse
import json
import math
import os
import statistics
import sys
import time
from typing import Callable, Dict, List

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

os.environ.setdefault('KINETO_LOG_LEVEL', '5')  # keep the profiler quiet
import torch  # noqa: E402

DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16, 'fp64': torch.float64}


# ----------------------------------------------------------------------------------------- ops
def op_table(h: int, n: int, d: int, device, dtype, args) -> Dict[str, Callable]:
    """name -> f(q, k, v): each op with the extra tensors it needs built once, outside the timing."""
    from linattn_mm import ops
    g = torch.Generator().manual_seed(0)
    kp = args.proj_len
    proj = (torch.randn(kp, n, generator=g) / math.sqrt(n)).to(device, dtype)
    feats = ops.orthogonal_random_features(args.num_features, d, generator=g).to(device, dtype)
    return {
        'softmax': lambda q, k, v: ops.softmax_attention(q, k, v),
        'inline': lambda q, k, v: ops.inline_attention(q, k, v, backend=args.backend),
        'linear': lambda q, k, v: ops.linear_attention(q, k, v, backend=args.backend),
        'focused': lambda q, k, v: ops.focused_linear_attention(q, k, v, backend=args.backend),
        'relu': lambda q, k, v: ops.relu_linear_attention(q, k, v, backend=args.backend),
        'taylorshift': lambda q, k, v: ops.taylor_attention(q, k, v, mode='auto', backend=args.backend),
        'taylorshift_direct': lambda q, k, v: ops.taylor_attention(q, k, v, mode='direct'),
        'taylorshift_efficient': lambda q, k, v: ops.taylor_attention(q, k, v, mode='efficient',
                                                                      backend=args.backend),
        'linformer': lambda q, k, v: ops.linformer_attention(q, k, v, proj, proj),
        'performer': lambda q, k, v: ops.performer_attention(q, k, v, feats),
        'nystrom': lambda q, k, v: ops.nystrom_attention(q, k, v, num_landmarks=args.num_landmarks),
        **local_global_ops(h, n, d, device, dtype, args, g),
    }


def grid_shape(n: int):
    """The most square ``(H, W)`` with ``H * W = n`` (the local-global ops need a token grid)."""
    h = max(f for f in range(1, math.isqrt(n) + 1) if n % f == 0)
    return h, n // h


def local_global_ops(h: int, n: int, d: int, device, dtype, args, g) -> Dict[str, Callable]:
    """Longformer / BigBird / Long-Short / RFA rows at the layers' defaults (one global token prepended, 3
    random blocks, 16 landmarks; ``--window-size``; RFA with ``--num-features`` frequencies) on the most square
    grid of N tokens."""
    from linattn_mm import ops
    from linattn_mm.ops.bigbird import grid_blocks
    hw, w = grid_shape(n), args.window_size
    ny, nx = grid_blocks(hw, w)
    rand = ops.bigbird_random_blocks(ny * nx, 3, h, generator=g).to(device)
    logits = torch.randn(args.batch, h, 16, n, generator=g).to(device, dtype)
    omega = torch.randn(args.num_features, d, generator=g).to(device, dtype)

    def glob(t):  # one global token in front of the grid (its copy is part of what the op costs)
        return torch.cat([t[:, :, :1], t], 2)
    return {
        'longformer': lambda q, k, v: ops.longformer_attention(glob(q), glob(k), glob(v), hw, w, num_global=1),
        'bigbird': lambda q, k, v: ops.bigbird_attention(glob(q), glob(k), glob(v), hw, rand, w, num_global=1),
        'longshort': lambda q, k, v: ops.longshort_attention(q, k, v, hw, logits, w),
        'rfa': lambda q, k, v: ops.rfa_attention(q, k, v, omega),
    }


OP_NAMES = ['softmax', 'inline', 'taylorshift', 'taylorshift_direct', 'taylorshift_efficient', 'linformer',
            'performer', 'nystrom', 'linear', 'focused', 'relu', 'longformer', 'bigbird', 'longshort', 'rfa']
FUSED_OPS = ('inline', 'linear', 'relu', 'focused', 'taylorshift_efficient')  # with Triton kernels (backend=)


def _op_backend(name: str, args, *tensors) -> str:
    """The backend an op row actually ran: the fused ops resolve ``--backend``, the rest are plain torch
    ('taylorshift' in auto mode runs the efficient path, and so its kernels, above the crossover length)."""
    from linattn_mm.ops.backend import resolve_backend
    from linattn_mm.ops.taylor import taylor_crossover
    q, k = tensors[0], tensors[1]
    if name == 'taylorshift' and k.shape[2] > taylor_crossover(q.shape[-1]):
        name = 'taylorshift_efficient'
    return resolve_backend(args.backend, *tensors) if name in FUSED_OPS else 'torch'


# ------------------------------------------------------------------------------------ measuring
def _status_bytes(key: str) -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def use_exact_cpu_memory_accounting() -> bool:
    """Make the process RSS follow tensor allocations: glibc's malloc otherwise keeps freed large blocks
    (its mmap threshold grows after frees) and reuses them, so RSS says nothing about a block's peak.
    Fixing the mmap/trim thresholds at 64 KiB makes every sizeable tensor its own mapping, returned on free.
    """
    try:
        import ctypes
        libc = ctypes.CDLL('libc.so.6')
        return bool(libc.mallopt(-3, 1 << 16) and libc.mallopt(-1, 1 << 16))  # M_MMAP_/M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        return False


class PeakMemory:
    """Peak memory of a block above what was in use at its start.

    CUDA: the caching allocator's ``max_memory_allocated``. CPU (Linux): the kernel's resident-set high-water
    mark (``VmHWM``), reset at the start of the block through ``/proc/self/clear_refs``; with
    :func:`use_exact_cpu_memory_accounting` this tracks tensor allocations. NaN where neither is available.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_mb = float('nan')

    def __enter__(self):
        self._cpu = False
        if self.device.type == 'cuda':
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
        else:
            try:
                self._base = _status_bytes('VmRSS:')
                with open('/proc/self/clear_refs', 'w') as f:
                    f.write('5')  # reset VmHWM to the current RSS
                self._cpu = True
            except (OSError, KeyError):
                pass
        return self

    def __exit__(self, *exc):
        if self.device.type == 'cuda':
            torch.cuda.synchronize()
            self.peak_mb = (torch.cuda.max_memory_allocated() - self._base) / 2**20
        elif self._cpu:
            self.peak_mb = max(_status_bytes('VmHWM:') - self._base, 0) / 2**20
        return False


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()


def time_fn(fn: Callable, device, warmup: int, repeats: int) -> List[float]:
    """Per-call times in ms. CPU: wall time of each call. CUDA: GPU time between CUDA events around each of
    back-to-back calls (the host queues ahead, so Python launch overhead is excluded as in Triton's
    ``do_bench``), with L2 flushed between calls so that small inputs are not served from cache."""
    for _ in range(warmup):
        fn()
    sync(device)
    if device.type == 'cuda':
        flush = torch.empty(256 << 20, dtype=torch.uint8, device=device)
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
        for i in range(repeats):
            flush.zero_()
            starts[i].record()
            fn()
            ends[i].record()
        torch.cuda.synchronize()
        return [a.elapsed_time(b) for a, b in zip(starts, ends)]
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def sdpa_backend_used(fn: Callable) -> str:
    """Which scaled_dot_product_attention kernel ran, from the profiler's op names."""
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=acts) as prof:
        fn()
    names = {e.name for e in prof.events()}
    for key, label in (('flash_attention_for_cpu', 'flash (cpu)'), ('_flash_attention', 'flash'),
                       ('_efficient_attention', 'mem-efficient'), ('_cudnn_attention', 'cudnn'),
                       ('_scaled_dot_product_attention_math', 'math'), ('_fused_attention', 'fused')):
        if any(key in n for n in names):
            return label
    return 'math' if any('bmm' in n or 'softmax' in n for n in names) else 'unknown'


def run_one(fn_fwd: Callable, inputs: List[torch.Tensor], device, mode: str, args) -> Dict:
    def fwd():
        with torch.no_grad():
            fn_fwd()

    def fwd_bwd():
        out = fn_fwd()
        out.float().sum().backward()
        for t in inputs:
            t.grad = None

    fn = fwd if mode == 'fwd' else fwd_bwd
    if args.memory_pass:  # child process of a CPU run: memory only, see measure_cpu_memory_in_child
        return dict(ms=float('nan'), ms_min=float('nan'), peak_mem_mb=measure_memory(fn, device))
    times = time_fn(fn, device, args.warmup, args.repeats)
    row = dict(ms=statistics.median(times), ms_min=min(times), peak_mem_mb=float('nan'))
    if device.type == 'cuda':
        row['peak_mem_mb'] = measure_memory(fn, device)
    return row


def measure_memory(fn: Callable, device) -> float:
    fn()  # first call outside the window (lazy init, allocator growth)
    with PeakMemory(device) as mem:
        fn()
    return mem.peak_mb


def measure_cpu_memory_in_child(argv: List[str], rows: List[Dict]) -> None:
    """CPU peak memory needs exact allocation accounting (see :func:`use_exact_cpu_memory_accounting`), which
    slows allocation down; so the same rows are re-run for memory alone in a fresh child process."""
    import subprocess
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, 'mem.json')
        child = _drop_option_values(argv, ('--plot', '--out')) + ['--memory-pass', '--out', out]
        res = subprocess.run([sys.executable, os.path.abspath(__file__)] + child, capture_output=True, text=True)
        if res.returncode != 0 or not os.path.exists(out):
            print('memory pass failed; peak memory left as NaN:\n' + res.stderr[-2000:])
            return
        with open(out) as f:
            mems = json.load(f)
    key = lambda r: (r['attn'], r.get('size', r['tokens']), r['mode'])  # noqa: E731
    by_key = {key(m): m['peak_mem_mb'] for m in mems}
    for r in rows:
        r['peak_mem_mb'] = by_key.get(key(r), float('nan'))


def _drop_option_values(argv: List[str], options) -> List[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in options:
            skip = True
            continue
        if any(a.startswith(o + '=') for o in options):
            continue
        out.append(a)
    return out


# ---------------------------------------------------------------------------------------- levels
def bench_ops(args, device, dtype) -> List[Dict]:
    rows = []
    names = args.attn or OP_NAMES
    copy_gbps = None
    if device.type == 'cuda' and not args.memory_pass:
        copy_gbps = copy_bandwidth_gbps(device)
        print(f'device copy bandwidth (read + write): {copy_gbps:.0f} GB/s')
    for n in args.tokens:
        table = op_table(args.heads, n, args.head_dim, device, dtype, args)
        for name in names:
            if name not in table:
                raise SystemExit(f'error: unknown attention {name!r}; known: {", ".join(OP_NAMES)}')
            if name in ('softmax', 'taylorshift_direct') and n > args.max_quadratic_tokens:
                print(f'skip {name} at N={n} (> --max-quadratic-tokens {args.max_quadratic_tokens})')
                continue
            g = torch.Generator().manual_seed(1)
            shape = (args.batch, args.heads, n, args.head_dim)
            q, k, v = (torch.randn(shape, generator=g).to(device, dtype).requires_grad_() for _ in range(3))
            fn = table[name]
            variants = [(None, fn)]
            if name == 'softmax' and device.type == 'cuda' and not args.memory_pass:
                variants = sdpa_variants(fn, q, k, v)
            for sdpa, f in variants:
                for mode in args.modes:
                    try:
                        r = run_one(lambda: f(q, k, v), [q, k, v], device, mode, args)
                    except RuntimeError as err:  # e.g. CUDA out of memory for a quadratic op
                        print(f'{name} at N={n} {mode}: failed ({str(err).splitlines()[0][:80]})')
                        if device.type == 'cuda':
                            torch.cuda.empty_cache()
                        continue
                    nbytes = min_bytes(q, mode)
                    r.update(level='op', attn=name, tokens=n, batch=args.batch, heads=args.heads,
                             head_dim=args.head_dim, mode=mode, device=str(device), dtype=args.dtype,
                             backend=_op_backend(name, args, q, k, v),
                             throughput=args.batch * n / (r['ms'] / 1e3), min_bytes=nbytes,
                             gbps=nbytes / (r['ms'] / 1e3) / 1e9)
                    if copy_gbps:
                        r['copy_gbps'] = copy_gbps
                        r['pct_of_copy'] = 100. * r['gbps'] / copy_gbps
                    if name == 'softmax':
                        r['sdpa_backend'] = sdpa or sdpa_backend_used(lambda: f(q, k, v))
                    rows.append(r)
                    print_row(r)
    return rows


def min_bytes(q: torch.Tensor, mode: str) -> int:
    """The least traffic an attention op can have (self-attention, Dv = D): each tensor read or written once.

    Forward reads Q, K, V and writes O (4 tensors); forward + backward adds reading Q, K, V and dO and writing
    dQ, dK, dV (11 tensors in all). Achieved GB/s = this / time; memory-bound ops are judged against the
    device's copy bandwidth (:func:`copy_bandwidth_gbps`).
    """
    return (4 if mode == 'fwd' else 11) * q.numel() * q.element_size()


def copy_bandwidth_gbps(device, nbytes: int = 1 << 30, repeats: int = 10) -> float:
    """Device-to-device copy bandwidth, counting bytes read and written (the ceiling for memory-bound ops)."""
    x = torch.empty(nbytes, dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    y.copy_(x)
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        y.copy_(x)
        sync(device)
        times.append(time.perf_counter() - t0)
    del x, y
    return 2 * nbytes / statistics.median(times) / 1e9


def sdpa_variants(fn: Callable, q, k, v):
    """On CUDA, softmax through each SDPA backend that accepts these inputs: ``[(label, f), ...]``.

    The summary's ratio then uses the fastest one ("SDPA's best backend").
    """
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:
        return [(None, fn)]
    out = []
    for label, be in (('flash', 'FLASH_ATTENTION'), ('mem-efficient', 'EFFICIENT_ATTENTION'),
                      ('cudnn', 'CUDNN_ATTENTION')):
        be = getattr(SDPBackend, be, None)
        if be is None:
            continue

        def f(q, k, v, be=be):
            with sdpa_kernel(be):
                return fn(q, k, v)
        try:
            with torch.no_grad():
                f(q[..., :64, :], k[..., :64, :], v[..., :64, :])
        except RuntimeError:
            continue
        out.append((label, f))
    return out or [(None, fn)]


def parse_size(s: str):
    h, _, w = s.lower().partition('x')
    return int(h), int(w or h)


def build_reference(spec: str, h: int, w: int) -> torch.nn.Module:
    """A reference backbone returning a tuple of feature maps.

    ``mmdet:TYPE`` builds one of mmdet's backbones with its defaults plus the usual dense-prediction settings
    (``SwinTransformer``: Swin-T; ``PyramidVisionTransformerV2``: PVTv2-b2 depths [3, 4, 6, 3]); needs mmdet.
    ``timm:NAME`` builds a timm model with ``features_only=True`` at this image size (e.g.
    ``timm:pvt_v2_b2``, ``timm:swin_tiny_patch4_window7_224``), for machines without mmdet/mmcv.
    """
    lib, _, name = spec.partition(':')
    if lib == 'mmdet':
        import mmdet.models  # noqa: F401  (registers the backbones)
        from mmdet.registry import MODELS
        extra = {'PyramidVisionTransformerV2': dict(embed_dims=64, num_layers=[3, 4, 6, 3])}.get(name, {})
        model = MODELS.build(dict(type=name, **extra))
        model.init_weights()
        return model
    if lib == 'timm':
        import timm
        kw = dict(features_only=True, pretrained=False)
        try:
            return timm.create_model(name, img_size=(h, w), **kw)
        except TypeError:  # models without an img_size argument take any size
            return timm.create_model(name, **kw)
    raise SystemExit(f'error: unknown reference backbone {spec!r}; use mmdet:TYPE or timm:NAME')


def bench_backbones(args, device, dtype) -> List[Dict]:
    reference = ':' in args.backbone
    if not reference:
        from linattn_mm.models import backbones as bb
        cls = getattr(bb, args.backbone, None)
        if cls is None:
            raise SystemExit(f'error: unknown backbone {args.backbone!r}; known: '
                             f'{", ".join(n for n in dir(bb) if n.startswith("Lin"))}, mmdet:TYPE, timm:NAME')
    rows = []
    names = [args.backbone] if reference else (args.attn or ['inline', 'taylorshift', 'linformer', 'softmax'])
    for size in args.sizes:
        h, w = parse_size(size)
        for name in names:
            if reference:
                model = build_reference(args.backbone, h, w)
            else:
                kw = dict(attn_cfg=dict(type=name))
                if args.arch:
                    kw['arch'] = args.arch
                model = cls(**kw)
            model = model.to(device)
            model.train()  # not chained: mmdet's SwinTransformer.train() returns None
            x = torch.randn(args.batch, 3, h, w, device=device, requires_grad=False)
            params = list(model.parameters())
            for mode in args.modes:
                def fwd():
                    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                        outs = model(x)
                    return sum(o.float().mean() for o in outs)
                try:
                    r = run_one(fwd, params, device, mode, args)
                except RuntimeError as err:  # e.g. out of memory for quadratic attention at 2048²
                    print(f'{name} at {h}x{w} {mode}: failed ({str(err).splitlines()[0][:80]})')
                    if device.type == 'cuda':
                        torch.cuda.empty_cache()
                    continue
                r.update(level='backbone', backbone=args.backbone, attn=name, size=f'{h}x{w}',
                         tokens=(h // 4) * (w // 4), batch=args.batch, mode=mode, device=str(device),
                         dtype=args.dtype, img_per_s=args.batch / (r['ms'] / 1e3))
                rows.append(r)
                print_row(r)
            del model
    return rows


# ---------------------------------------------------------------------------------------- output
def print_row(r: Dict) -> None:
    what = r.get('size') or r['tokens']
    extra = f"  sdpa={r['sdpa_backend']}" if 'sdpa_backend' in r else ''
    mem = '' if r['peak_mem_mb'] != r['peak_mem_mb'] else f"{r['peak_mem_mb']:9.1f} MB"  # NaN: measured later
    print(f"{r['attn']:>22} {str(what):>10} {r['mode']:>7} {r['ms']:10.2f} ms  {mem}{extra}", flush=True)


def print_table(rows: List[Dict]) -> None:
    """Markdown summary. ``x softmax`` is the speed-up over the fastest softmax row of the same size and mode
    (on CUDA: SDPA's best backend); GB/s columns appear where rows have them (op level)."""
    if not rows:
        return
    key = 'size' if rows[0]['level'] == 'backbone' else 'tokens'
    base: Dict = {}
    for r in rows:
        if r['attn'] == 'softmax':
            k = (r[key], r['mode'])
            base[k] = min(base.get(k, float('inf')), r['ms'])
    bw = any('gbps' in r for r in rows)
    print()
    cols = ['attn', key, 'mode', 'backend', 'median ms', 'peak MB', 'x softmax']
    if bw:
        cols += ['GB/s', '% copy']
    if key == 'size':
        cols += ['img/s']
    print('| ' + ' | '.join(cols) + ' |')
    print('|' + '---|' * len(cols))
    for r in rows:
        b = base.get((r[key], r['mode']))
        ratio = f'{b / r["ms"]:.1f}' if b else '-'
        be = r.get('sdpa_backend') or r.get('backend', '-')
        cells = [r['attn'], r[key], r['mode'], be, f"{r['ms']:.3f}", f"{r['peak_mem_mb']:.1f}", ratio]
        if bw:
            cells += [f"{r['gbps']:.3g}" if 'gbps' in r else '-',
                      f"{r['pct_of_copy']:.0f}" if 'pct_of_copy' in r else '-']
        if key == 'size':
            cells += [f"{r.get('img_per_s', float('nan')):.2f}"]
        print('| ' + ' | '.join(str(c) for c in cells) + ' |')


def plot(rows: List[Dict], path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for (attn, mode) in sorted({(r['attn'], r['mode']) for r in rows}):
        pts = sorted((r['tokens'], r['ms'], r['peak_mem_mb']) for r in rows
                     if r['attn'] == attn and r['mode'] == mode)
        xs = [p[0] for p in pts]
        style = '-o' if mode == 'fwd' else '--s'
        axes[0].plot(xs, [p[1] for p in pts], style, label=f'{attn} ({mode})', ms=4)
        axes[1].plot(xs, [max(p[2], 1e-2) for p in pts], style, label=f'{attn} ({mode})', ms=4)
    for ax, title in zip(axes, ('median time [ms]', 'peak memory [MB]')):
        ax.set_xscale('log', base=2)
        ax.set_yscale('log')
        ax.set_xlabel('tokens N')
        ax.set_title(title)
        ax.grid(True, which='both', alpha=0.3)
    axes[0].legend(fontsize=7)
    r0 = rows[0]
    fig.suptitle(f"{r0['level']} level, {r0['device']}, {r0['dtype']}")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f'plot written to {path}')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--level', choices=['op', 'backbone'], default='op')
    p.add_argument('--attn', nargs='+', help=f'attentions (default: all). op level: {", ".join(OP_NAMES)}')
    p.add_argument('--tokens', nargs='+', type=int, default=[1024, 4096, 16384])
    p.add_argument('--head-dim', type=int, default=32)
    p.add_argument('--heads', type=int, default=1)
    p.add_argument('--batch', type=int, default=1)
    p.add_argument('--backbone', default='LinPVT',
                   help='backbone level: LinPVT, LinSwin, LinViT, or a reference mmdet:TYPE / timm:NAME')
    p.add_argument('--arch', help='backbone preset (default: the smallest)')
    p.add_argument('--sizes', nargs='+', default=['512', '1024'], help='backbone level: H or HxW')
    p.add_argument('--modes', nargs='+', choices=['fwd', 'fwdbwd'], default=['fwd', 'fwdbwd'])
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--dtype', choices=list(DTYPES), help='default: bf16 on CUDA, fp32 on CPU')
    p.add_argument('--warmup', type=int, default=1)
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--threads', type=int, help='torch CPU threads (default: torch default)')
    p.add_argument('--backend', choices=['auto', 'torch', 'triton'], default='auto',
                   help='ops with a fused path (inline, linear, relu, focused, taylorshift efficient): auto = Triton '
                        'on CUDA, torch otherwise')
    p.add_argument('--proj-len', type=int, default=64, help='Linformer projected length')
    p.add_argument('--num-features', type=int, default=64, help='Performer random features')
    p.add_argument('--num-landmarks', type=int, default=64, help='Nystromformer landmarks')
    p.add_argument('--window-size', type=int, default=7, help='Longformer / BigBird / Long-Short window')
    p.add_argument('--max-quadratic-tokens', type=int, default=65536,
                   help='skip O(N^2) attentions above this many tokens')
    p.add_argument('--out', help='write rows as JSON')
    p.add_argument('--memory-pass', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--plot', help='write a log-log plot of time and memory against tokens (PNG)')
    return p.parse_args(argv)


def main(argv=None) -> List[Dict]:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('error: --device cuda but no CUDA device is visible; use --device cpu')
    args.dtype = args.dtype or ('bf16' if device.type == 'cuda' else 'fp32')
    dtype = DTYPES[args.dtype]
    if args.memory_pass:
        use_exact_cpu_memory_accounting()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f'torch {torch.__version__}, device {device}, dtype {args.dtype}, threads {torch.get_num_threads()}')
    rows = bench_ops(args, device, dtype) if args.level == 'op' else bench_backbones(args, device, dtype)
    if device.type == 'cpu' and not args.memory_pass:
        measure_cpu_memory_in_child(sys.argv[1:] if argv is None else list(argv), rows)
    print_table(rows)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            json.dump(rows, f, indent=1)
        print(f'{len(rows)} rows written to {args.out}')
    if args.plot:
        plot(rows, args.plot)
    return rows


if __name__ == '__main__':
    main()
