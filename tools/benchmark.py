#!/bin/sh
''''test -x "$(dirname "$0")/../.venv/bin/python" && exec "$(dirname "$0")/../.venv/bin/python" "$0" "$@"; exec python3 "$0" "$@" # '''
# (the line above lets `tools/benchmark.py ...` run with the project's .venv; Python sees a string)
__doc__ = """Speed and memory of our attention ops, backbones and whole models against the ones they replace.

Ops against softmax (SDPA); backbones and mmdet / mmseg detectors and segmenters against the stock ones.

Levels:
  op        the functional op alone over token counts: q, k, v of shape (B, H, N, D)
  backbone  a whole backbone over image sizes (forward, or forward + backward), ours with each --attn and the
            --vs references (mmdet:PyramidVisionTransformerV2:b2, mmdet:SwinTransformer:t, timm:NAME) interleaved
  model     a whole mmdet / mmseg model from CONFIG: mmengine's train_step (forward, losses, backward, optimizer
            step) and test_step on a dummy batch (boxes + masks / label maps), against the same config with the
            --vs stock backbone (its neck / head in_channels adjusted), interleaved
  layer     one attention layer against the implementation it follows (--layer nystrom: lucidrains'
            nystrom-attention, same weights; --layer relu: timm's EfficientViT LiteMLA), interleaved, over
            --sizes maps and --dims channels

Examples::

  tools/benchmark.py --level op --attn inline softmax --tokens 16384 --head-dim 32 --device cpu --out F.json
  tools/benchmark.py --level op --tokens 1024 4096 16384 65536 --device cuda --dtype bf16 --plot ops.png
  tools/benchmark.py --level backbone --backbone LinPVT --arch s --attn inline \\
      --vs mmdet:PyramidVisionTransformerV2:b2 --sizes 1024 1024x2048 --modes fwdbwd --plot pvt.png
  tools/benchmark.py --level model configs/mask_rcnn/mask-rcnn_linpvt-t-inline_fpn_1x_coco.py \\
      --cfg-options model.backbone.arch=s --vs mmdet:PyramidVisionTransformerV2:b2 --sizes 800x1333 --compile
  tools/benchmark.py --level layer --layer nystrom relu --dims 64 128 --sizes 64 128 --threads 1
  tools/benchmark.py --suite gpu --out-dir work_dirs/gpu_bench      # every GPU measurement (tools/gpu_bench.sh)

Sizes are HxW (the detection default 800x1333 is mmdet's 1333x800 W x H). Timing: on CPU torch.utils.benchmark
(op level: ``adaptive_autorange`` per row, until IQR / median <= --rel-iqr or --max-time; backbone / model
level: interleaved rounds, see ``_bench_compare``), on CUDA GPU time between CUDA events (op level: L2 flushed
between calls, see ``time_fn``). Rows give the median, quartiles / IQR, throughput, peak memory (CUDA:
``max_memory_allocated``; CPU: the resident-set high-water mark above the call's start, measured in a child
process with exact allocator accounting, see ``PeakMemory``), and for softmax which SDPA backend ran (read
from the profiler's kernel names). Speed and memory live here, never in timed tests.
"""
import argparse
import copy
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

_TOOLS = os.path.dirname(os.path.abspath(__file__))
if _TOOLS not in sys.path:
    sys.path.insert(0, _TOOLS)

os.environ.setdefault('KINETO_LOG_LEVEL', '5')  # keep the profiler quiet
import torch  # noqa: E402

import _bench_compare as cmp  # noqa: E402

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


def time_fn(fn: Callable, device, warmup: int, repeats: int, rel_iqr: float = 0.05,
            max_time: float = 10.) -> List[float]:
    """Per-call times in ms. CPU: ``torch.utils.benchmark.Timer.adaptive_autorange`` (blocks of calls, each
    sample the mean call time of a block, repeated until IQR / median <= ``rel_iqr`` or ``max_time`` seconds;
    ``repeats`` is not used). CUDA: GPU time between CUDA events around each of ``repeats`` back-to-back calls
    (the host queues ahead, so Python launch overhead is excluded as in Triton's ``do_bench``), with L2 flushed
    between calls so that small inputs are not served from cache."""
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
    # CPU: torch.utils.benchmark's adaptive measurement, blocks until IQR / median <= rel_iqr or max_time seconds
    from torch.utils.benchmark import Timer
    timer = Timer(stmt='fn()', globals=dict(fn=fn), num_threads=torch.get_num_threads())
    m = timer.adaptive_autorange(threshold=rel_iqr, min_run_time=0.05, max_run_time=max_time)
    return [t * 1e3 for t in m.times]


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
    times = time_fn(fn, device, args.warmup, args.repeats, args.rel_iqr, args.max_time)
    q1, med, q3 = cmp.quartiles(times)
    row = dict(ms=med, ms_min=min(times), ms_q1=q1, ms_q3=q3, iqr_ms=q3 - q1, samples=len(times),
               peak_mem_mb=float('nan'))
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
    key = lambda r: (r['attn'], r.get('size', r.get('tokens')), r['mode'], r.get('batch'),  # noqa: E731
                     bool(r.get('compile')), r.get('config'))
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

    ``mmdet:TYPE[:VARIANT]`` (or ``mmseg:``) builds a toolbox backbone with the settings of its own configs
    (``_bench_compare.STOCK_BACKBONES``: PVTv2-b0/b1/b2, Swin-T, ResNet-50; the variant defaults to b2 / t / 50).
    ``timm:NAME`` builds a timm model with ``features_only=True`` at this image size (e.g.
    ``timm:pvt_v2_b2``, ``timm:swin_tiny_patch4_window7_224``), for machines without mmdet/mmcv.
    """
    lib, _, name = spec.partition(':')
    if lib in ('mmdet', 'mmseg'):
        return cmp.build_stock_backbone(spec)
    if lib == 'timm':
        import timm
        kw = dict(features_only=True, pretrained=False)
        try:
            return timm.create_model(name, img_size=(h, w), **kw)
        except TypeError:  # models without an img_size argument take any size
            return timm.create_model(name, **kw)
    raise SystemExit(f'error: unknown reference backbone {spec!r}; use mmdet:TYPE[:VARIANT] or timm:NAME')


def _our_backbone(name: str, attn: str, arch):
    from linattn_mm.models import backbones as bb
    cls = getattr(bb, name, None)
    if cls is None:
        raise SystemExit(f'error: unknown backbone {name!r}; known: '
                         f'{", ".join(n for n in dir(bb) if n.startswith("Lin"))}, mmdet:TYPE[:VARIANT], timm:NAME')
    kw = {} if attn == 'preset' else dict(attn_cfg=dict(type=attn))
    if arch:
        kw['arch'] = arch
    return cls(**kw)


def _compile_kw(args):
    return dict(backend=args.compile_backend) if args.compile else None


def _variants(args) -> List[bool]:
    """compile settings to measure: eager, and compiled too with ``--compile`` (only with ``--compiled-only``)."""
    return ([] if args.compiled_only else [False]) + ([True] if args.compile else [])


def bench_backbones(args, device, dtype) -> List[Dict]:
    """Each size: our backbone with every ``--attn`` and each ``--vs`` reference, measured interleaved (see
    ``_bench_compare``); the last reference (or else softmax) is the ``x ref`` baseline."""
    reference = ':' in args.backbone
    ours = [] if reference else [(f'{args.backbone}{"-" + args.arch if args.arch else ""} {a}', a)
                                 for a in (args.attn or ['inline', 'taylorshift', 'linformer', 'softmax'])]
    refs = ([args.backbone] if reference else []) + list(args.vs or [])
    ref_label = refs[-1] if refs else next((lab for lab, a in ours if a == 'softmax'), None)
    rows = []
    for size in args.sizes:
        h, w = parse_size(size)
        models = {}
        for label, attn in ours:
            models[label] = _our_backbone(args.backbone, attn, args.arch)
        for spec in refs:
            models[spec] = build_reference(spec, h, w)
        x = torch.randn(args.batch, 3, h, w, device=device)
        for compiled in _variants(args):
            if compiled:
                torch._dynamo.reset()  # each size compiles afresh: steady-state speed, not recompile behaviour
            for mode in args.modes:
                fns = {}
                for label, model in models.items():
                    model = model.to(device)
                    model.train()  # not chained: mmdet's SwinTransformer.train() returns None
                    run = torch.compile(model, **_compile_kw(args)) if compiled else model
                    fns[label] = _step(lambda run=run: run(x), list(model.parameters()), dtype, mode, device)
                rows += _measure_group(fns, args, device, dict(
                    level='backbone', size=f'{h}x{w}', batch=args.batch, mode=mode, compile=compiled,
                    tokens=(h // 4) * (w // 4)), ref_label)
        del models
    return rows


def _step(forward: Callable, params, dtype, mode: str, device) -> Callable:
    """One timed call: ``forward()`` (a tensor or a tuple of them, e.g. a backbone's feature maps) under autocast,
    without grad for ``fwd``; for ``fwdbwd`` also the backward of the outputs' means, gradients dropped."""
    def fwd():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            outs = forward()
        return sum(o.float().mean() for o in (outs if isinstance(outs, (tuple, list)) else (outs,)))

    def step():
        if mode == 'fwd':
            with torch.no_grad():
                fwd()
            return
        fwd().backward()
        for p in params:
            p.grad = None
    return step


def _measure_group(fns: Dict[str, Callable], args, device, common: Dict, ref_label) -> List[Dict]:
    """Time ``fns`` interleaved, then (CUDA) their peak memory one by one; one row per entry. On CPU peak memory
    comes from the ``--memory-pass`` child (one warm call per entry), see :func:`measure_cpu_memory_in_child`."""
    if args.memory_pass:
        samples = {}
        for label, fn in fns.items():
            try:
                fn()
                samples[label] = [float('nan')]
            except (RuntimeError, MemoryError):
                samples[label] = []
    else:
        samples = cmp.time_interleaved(fns, device, warmup=args.warmup + (2 if common.get('compile') else 0),
                                       min_rounds=args.min_rounds, max_rounds=args.max_rounds,
                                       min_run_time=args.min_run_time, max_time=args.max_time,
                                       rel_iqr_target=args.rel_iqr)
    rows = []
    for label, fn in fns.items():
        if not samples[label]:
            continue
        r = dict(common, model=label, attn=label, is_ref=label == ref_label, device=str(device), dtype=args.dtype,
                 threads=torch.get_num_threads(), **cmp.summarise(samples[label], common['batch']))
        r['peak_mem_mb'] = float('nan')
        if args.memory_pass or device.type == 'cuda':
            r['peak_mem_mb'] = cmp.peak_memory_mb(fn, device, PeakMemory, use_exact_cpu_memory_accounting)
        rows.append(r)
        if not args.memory_pass:
            print(f"{label:>40} {r['size']:>10} b{r['batch']} {r['mode']:>6}{' +compile' if r['compile'] else ''}"
                  f" {r['ms']:10.1f} ms (IQR {r['iqr_ms']:.1f}, n={r['samples']})", flush=True)
    return rows


def bench_models(args, device, dtype) -> List[Dict]:
    """Each config (and its ``--vs`` stock-backbone twins): mmengine's train step and/or inference on a dummy
    batch of each size, interleaved."""
    if not args.configs:
        raise SystemExit('error: --level model needs one or more CONFIG files')
    rows = []
    for path in args.configs:
        base, lib = cmp.load_model_cfg(path, args.cfg_options)
        why = cmp._check_mmcv_ops(lib)
        if why:
            print(f'skip {path}: {why}')
            continue
        cfgs = {cmp.model_label(base, None): base}
        for spec in args.vs or []:
            c = copy.deepcopy(base)
            cmp.swap_to_stock(c.model, spec)
            cfgs[spec] = c
        ref_label = list(cfgs)[-1] if len(cfgs) > 1 else None
        nc = cmp._num_classes(base.model, lib)
        for size in args.sizes or (['800x1333'] if lib == 'mmdet' else ['1024x2048']):
            h, w = parse_size(size)
            data = cmp.dummy_batch(lib, h, w, args.batch, nc)
            for compiled in _variants(args):
                if compiled:
                    torch._dynamo.reset()
                models = {label: cmp.build_mm_model(c, lib, device) for label, c in cfgs.items()}
                for mode in args.modes:
                    fns = {label: cmp.model_step_fns(m, cfgs[label], lib, data, device, dtype, [mode],
                                                     _compile_kw(args) if compiled else None)[mode]
                           for label, m in models.items()}
                    rows += _measure_group(fns, args, device, dict(
                        level='model', config=os.path.basename(path), size=f'{h}x{w}', batch=args.batch,
                        mode=mode, compile=compiled), ref_label)
                del models
    return rows


# Layer level: the channels per head each reference uses by default (Nystromformer's experiments, EfficientViT).
LAYER_HEAD_DIMS = {'nystrom': 32, 'relu': 8}


def _nystrom_pair(c: int, heads: int, args):
    """Ours (no qkv bias, no conv skip) and lucidrains' ``nystrom_attention.NystromAttention`` (no residual conv)
    with the same q/k/v and output weights: the same function up to the pseudo-inverse's starting scale (ours per
    head, see ``iterative_pinv``) and, when N is not a multiple of the landmarks, the reference's zero padding.
    Both take ``(B, N, C)`` tokens."""
    from nystrom_attention import NystromAttention as Lucid
    from linattn_mm.layers.nystrom import NystromAttention
    ours = NystromAttention(c, heads, qkv_bias=False, num_landmarks=args.num_landmarks, pinv_iters=6)
    ref = Lucid(dim=c, dim_head=c // heads, heads=heads, num_landmarks=args.num_landmarks, pinv_iterations=6,
                residual=False, dropout=0.)
    with torch.no_grad():
        ref.to_qkv.weight.copy_(ours.qkv.weight)
        ref.to_out[0].weight.copy_(ours.proj.weight)
        ref.to_out[0].bias.copy_(ours.proj.bias)
    return ours, ref, lambda x, hw: x


def _relu_pair(c: int, heads: int, args):
    """Ours with EfficientViT's multi-scale aggregation (``scales=(5,)``) on ``(B, N, C)`` tokens and timm's
    ``LiteMLA`` (heads of ``c // heads`` channels, its own weights: same shapes and FLOPs) on ``(B, C, H, W)``."""
    from timm.models.efficientvit_mit import LiteMLA
    from linattn_mm.layers.relu import ReLULinearAttention
    ours = ReLULinearAttention(c, heads, scales=(5,))
    ref = LiteMLA(c, c, dim=c // heads, scales=(5,))
    return ours, ref, lambda x, hw: x.transpose(1, 2).reshape(x.shape[0], c, *hw).contiguous()


# layer -> (builder of (ours, reference, our tokens -> the reference's input), the reference's label, the module
# and pip package it needs, whether the two share weights (then their outputs are compared))
LAYER_PAIRS = {
    'nystrom': (_nystrom_pair, 'lucidrains NystromAttention', ('nystrom_attention', 'nystrom-attention'), True),
    'relu': (_relu_pair, 'timm LiteMLA', ('timm', 'timm'), False),
}


def bench_layers(args, device, dtype) -> List[Dict]:
    """Each --layer x --dims x --sizes map: our layer and its reference, interleaved; ``x ref`` against it. Where
    the two share weights (Nystrom), the largest output difference is printed and kept in the rows."""
    import importlib.util
    rows = []
    for name in args.layer:
        build, ref_label, (module, package), same_weights = LAYER_PAIRS[name]
        if importlib.util.find_spec(module) is None:
            print(f'skip layer {name}: {ref_label} needs {module} (pip install {package})')
            continue
        for c in args.dims:
            hd = args.head_dim or LAYER_HEAD_DIMS[name]
            if c % hd:
                raise SystemExit(f'error: --dims {c} is not a multiple of the head width {hd}; set --head-dim')
            heads = c // hd
            ours, ref, to_ref_input = build(c, heads, args)
            ours, ref = ours.to(device), ref.to(device)
            label = f'{name} C{c} {heads}h'
            for size in args.sizes:
                h, w = parse_size(size)
                x = torch.randn(args.batch, h * w, c, generator=torch.Generator().manual_seed(0)).to(device)
                x_ref = to_ref_input(x, (h, w))
                run_ours, run_ref = (lambda: ours(x, (h, w))), (lambda: ref(x_ref))
                common = dict(level='layer', config=label, size=f'{h}x{w}', batch=args.batch, tokens=h * w)
                if same_weights:
                    with torch.no_grad():
                        common['max_abs_diff'] = (run_ours() - run_ref()).abs().max().item()
                    why = (['our pseudo-inverse starts from a per-head scale, the reference from one over all heads']
                           if args.batch * heads > 1 else [])
                    if (h * w) % args.num_landmarks:
                        why.append('the reference front-pads N with zero tokens to a multiple of the landmarks')
                    print(f'{label} {h}x{w}: max |ours - {ref_label}| = {common["max_abs_diff"]:.2e}'
                          + (f' (not rounding, by design: {"; ".join(why)})' if why else ''))
                for compiled in _variants(args):
                    if compiled:
                        torch._dynamo.reset()
                    for mode in args.modes:
                        fns = {lab: _step(torch.compile(run, **_compile_kw(args)) if compiled else run,
                                          list(mod.parameters()), dtype, mode, device)
                               for lab, mod, run in (('linattn_mm', ours, run_ours), (ref_label, ref, run_ref))}
                        rows += _measure_group(fns, args, device, dict(common, mode=mode, compile=compiled),
                                               ref_label)
    return rows


# ---------------------------------------------------------------------------------------- output
def print_row(r: Dict) -> None:
    what = r.get('size') or r['tokens']
    extra = f"  sdpa={r['sdpa_backend']}" if 'sdpa_backend' in r else ''
    mem = '' if r['peak_mem_mb'] != r['peak_mem_mb'] else f"{r['peak_mem_mb']:9.1f} MB"  # NaN: measured later
    iqr = f" (IQR {r['iqr_ms']:.2f})" if 'iqr_ms' in r else ''
    print(f"{r['attn']:>22} {str(what):>10} {r['mode']:>7} {r['ms']:10.2f} ms{iqr}  {mem}{extra}", flush=True)


def print_table(rows: List[Dict]) -> str:
    """Markdown summary (returned too). Op level: ``x softmax`` is the speed-up over the fastest softmax row of
    the same size and mode (on CUDA: SDPA's best backend); GB/s columns appear where rows have them. Backbone and
    model levels: see :func:`_bench_compare.print_compare_table`."""
    if not rows:
        return ''
    if rows[0]['level'] != 'op':
        return cmp.print_compare_table(rows)
    key = 'tokens'
    base: Dict = {}
    for r in rows:
        if r['attn'] == 'softmax':
            k = (r[key], r['mode'])
            base[k] = min(base.get(k, float('inf')), r['ms'])
    bw = any('gbps' in r for r in rows)
    cols = ['attn', key, 'mode', 'backend', 'median ms', 'IQR ms', 'peak MB', 'x softmax']
    if bw:
        cols += ['GB/s', '% copy']
    lines = ['| ' + ' | '.join(cols) + ' |', '|' + '---|' * len(cols)]
    for r in rows:
        b = base.get((r[key], r['mode']))
        ratio = f'{b / r["ms"]:.1f}' if b else '-'
        be = r.get('sdpa_backend') or r.get('backend', '-')
        cells = [r['attn'], r[key], r['mode'], be, f"{r['ms']:.3f}", f"{r.get('iqr_ms', float('nan')):.3f}",
                 f"{r['peak_mem_mb']:.1f}", ratio]
        if bw:
            cells += [f"{r['gbps']:.3g}" if 'gbps' in r else '-',
                      f"{r['pct_of_copy']:.0f}" if 'pct_of_copy' in r else '-']
        lines.append('| ' + ' | '.join(str(c) for c in cells) + ' |')
    text = '\n'.join(lines)
    print('\n' + text)
    return text


def plot(rows: List[Dict], path: str) -> None:
    """Op level: log-log time (error bars: the quartiles of the samples) and memory against tokens. Backbone and
    model levels: bars with error bars, see :func:`_bench_compare.plot_compare`."""
    if rows[0]['level'] != 'op':
        cmp.plot_compare(rows, path)
        print(f'plot written to {path}')
        return
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for (attn, mode) in sorted({(r['attn'], r['mode']) for r in rows}):
        pts = sorted((r['tokens'], r['ms'], r['peak_mem_mb'], r.get('ms_q1', r['ms']), r.get('ms_q3', r['ms']))
                     for r in rows if r['attn'] == attn and r['mode'] == mode)
        xs = [p[0] for p in pts]
        style = '-o' if mode == 'fwd' else '--s'
        err = [[p[1] - p[3] for p in pts], [p[4] - p[1] for p in pts]]
        axes[0].errorbar(xs, [p[1] for p in pts], yerr=err, fmt=style, label=f'{attn} ({mode})', ms=4, capsize=3)
        axes[1].plot(xs, [max(p[2], 1e-2) for p in pts], style, label=f'{attn} ({mode})', ms=4)
    for ax, title in zip(axes, ('median time [ms] (error bars: IQR)', 'peak memory [MB]')):
        ax.set_xscale('log', base=2)
        ax.set_yscale('log')
        ax.set_xlabel('tokens N')
        ax.set_title(title)
        ax.grid(True, which='both', alpha=0.3)
    axes[0].legend(fontsize=7)
    r0 = rows[0]
    cmp.save_figure(fig, path, f"{r0['level']} level, {r0['device']}, {r0['dtype']}", dpi=120)
    print(f'plot written to {path}')


# ------------------------------------------------------------------------------------ GPU suite
# Issue 16's goals: (job, size, batch, compile, ours, reference, least img/s ratio). Ratios are median-time ratios.
GOALS = [
    ('pvt', '1024x1024', 1, '>= 1.2x'), ('pvt', '2048x2048', 1, '>= 1.8x'),
    ('swin', '1024x1024', 1, '>= 1.0x'), ('vit', '2048x2048', 1, '>= 4x'), ('maskrcnn', '800x1333', 2, '>= 1.0x'),
]


COMPILE_RESERVE_S = 120.


def suite_jobs(args, have_mmdet: bool) -> List[tuple]:
    """(name, argv) of every GPU measurement of issue 16, most important first (the budget may cut the tail)."""
    smoke = args.smoke
    sizes = ['64', '64x96'] if smoke else ['1024', '1024x2048', '2048']
    det_size = '64x96' if smoke else '800x1333'
    timing = ['--min-rounds', '1', '--max-rounds', '2', '--min-run-time', '0.001', '--max-time', '1'] if smoke \
        else ['--min-rounds', '3', '--max-rounds', '10', '--min-run-time', '0.1', '--max-time', '8']
    common = ['--device', args.device, '--dtype', args.dtype or ('bf16' if args.device == 'cuda' else 'fp32')] + \
        timing + (['--no-memory'] if smoke else []) + (['--threads', str(args.threads)] if args.threads else [])
    pvt_ref = 'mmdet:PyramidVisionTransformerV2:b2' if have_mmdet else 'timm:pvt_v2_b2'
    swin_ref = 'mmdet:SwinTransformer:t' if have_mmdet else 'timm:swin_tiny_patch4_window7_224'
    pvt_arch = 's'
    if smoke:  # the smallest PVT pair (the other pairs have no smaller stock twin)
        pvt_ref, pvt_arch = ('mmdet:PyramidVisionTransformerV2:b0' if have_mmdet else 'timm:pvt_v2_b0'), 't'
    pairs = {
        'pvt': ['--backbone', 'LinPVT', '--arch', pvt_arch, '--attn', 'inline', '--vs', pvt_ref],
        'swin': ['--backbone', 'LinSwin', '--arch', 't', '--attn', 'preset', '--vs', swin_ref],
        'vit': ['--backbone', 'LinViT', '--arch', 'deit_s', '--attn', 'inline', 'softmax'],
    }
    jobs = []
    for batch in ([1, 2] if smoke else [1, 8]):
        for name, a in pairs.items():
            jobs.append((f'{name}_b{batch}', ['--level', 'backbone', '--modes', 'fwdbwd', '--batch', str(batch),
                                              '--sizes'] + sizes + a + common))
    maskrcnn = ['--level', 'model', os.path.join(_ROOT, 'configs/mask_rcnn/mask-rcnn_linpvt-t-inline_fpn_1x_coco.py'),
                '--cfg-options', f'model.backbone.arch={pvt_arch}',
                '--vs', 'mmdet:PyramidVisionTransformerV2:' + ('b0' if smoke else 'b2'),
                '--sizes', det_size, '--batch', '2', '--modes', 'train'] + common
    if smoke:  # the RoI heads' fixed cost (512 sampled RoIs per image) dominates a tiny image on a CPU
        maskrcnn[maskrcnn.index('--cfg-options') + 1:maskrcnn.index('--cfg-options') + 1] = [
            'model.train_cfg.rcnn.sampler.num=16', 'model.train_cfg.rpn_proposal.max_per_img=32']
    jobs.append(('maskrcnn_b2', maskrcnn))
    if not smoke:  # compiled: batch 1 at the smallest and largest size (compiling is most of the cost)
        for name, a in pairs.items():
            jobs.append((f'{name}_b1_compile', ['--level', 'backbone', '--modes', 'fwdbwd', '--batch', '1',
                                                '--sizes', sizes[0], sizes[-1], '--compile', '--compiled-only']
                         + a + common))
        jobs.append(('maskrcnn_b2_compile', maskrcnn + ['--compile', '--compiled-only']))
    return jobs


def run_suite(args) -> None:
    """``--suite gpu``: all GPU measurements of issue 16 in one process, tables (.md), rows (.json) and plots
    (.png) per job under ``--out-dir``, plus summary.md with the goals; jobs that would start after ``--budget``
    seconds are skipped (listed in the summary). Without mmcv's compiled ops the detector jobs are skipped with
    a message; without mmdet the backbone references come from timm."""
    t0 = time.perf_counter()
    out = args.out_dir or os.path.join('work_dirs', 'gpu_bench')
    os.makedirs(out, exist_ok=True)
    try:
        import mmdet.models  # noqa: F401
        have_mmdet = True
    except Exception as err:  # noqa: BLE001  (any import failure: fall back to timm references)
        print(f'mmdet not importable ({type(err).__name__}: {str(err)[:100]}): timm references, no model level')
        have_mmdet = False
    summary, skipped, results = [f'# issue 16 measurements ({args.device})', ''], [], {}
    jobs = suite_jobs(args, have_mmdet)
    unknown = set(args.only or []) - {n for n, _ in jobs}
    if unknown:
        raise SystemExit(f'error: --only {" ".join(sorted(unknown))}: no such job; '
                         f'jobs: {", ".join(n for n, _ in jobs)}')
    for name, job in jobs:
        if args.only and name not in args.only:
            continue
        # compiling takes minutes: a compiled job starts only with COMPILE_RESERVE_S of the budget left
        reserve = COMPILE_RESERVE_S if name.endswith('_compile') and not args.smoke else 0.
        if time.perf_counter() - t0 > args.budget - reserve:
            skipped.append(name)
            continue
        why = 'mmdet is not importable' if not have_mmdet else cmp._check_mmcv_ops('mmdet')
        if name.startswith('maskrcnn') and why:
            print(f'skip {name}: {why}')
            summary += [f'## {name}', '', f'skipped: {why}', '']
            continue
        print(f'\n===== {name} ({time.perf_counter() - t0:.0f} s)', flush=True)
        tj = time.perf_counter()
        try:
            rows = main(job + ['--out', os.path.join(out, f'{name}.json'), '--plot', os.path.join(out, f'{name}.png')])
        except (SystemExit, Exception) as err:  # noqa: BLE001  (one failing job must not lose the others)
            summary += [f'## {name}', '', f'failed: {type(err).__name__}: {str(err)[:300]}', '']
            continue
        results[name] = rows
        table = print_table(rows) if rows else 'no rows (see the log: skipped or failed)'
        summary += [f'## {name} ({time.perf_counter() - tj:.0f} s)', '', table, '']
    summary += ['## goals (img/s ratio, ours / reference)', '', '| job | size | batch | compile | ratio | goal |',
                '|---|---|---|---|---|---|']
    for job, size, batch, goal in GOALS:
        for suffix in ('', '_compile'):
            rows = results.get(f'{job}_b{batch}{suffix}', [])
            ref = {(r['size'], r['compile']): r for r in rows if r.get('is_ref')}
            for r in rows:
                k = (r['size'], r['compile'])
                if not r.get('is_ref') and k in ref and (r['size'] == size or args.smoke):
                    summary.append(f"| {job} ({r['model']} vs {ref[k]['model']}) | {r['size']} | {batch} | "
                                   f"{'yes' if r['compile'] else 'no'} | {ref[k]['ms'] / r['ms']:.2f} | {goal} |")
    if skipped:
        summary += ['', f'skipped (budget of {args.budget:.0f} s spent): {", ".join(skipped)}']
    summary += ['', f'total {time.perf_counter() - t0:.0f} s']
    with open(os.path.join(out, 'summary.md'), 'w') as f:
        f.write('\n'.join(summary) + '\n')
    print('\n'.join(summary))
    print(f'summary written to {os.path.join(out, "summary.md")}')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--level', choices=['op', 'backbone', 'model', 'layer'], default='op')
    p.add_argument('configs', nargs='*', metavar='CONFIG', help='model level: mmdet / mmseg config files')
    p.add_argument('--attn', nargs='+', help=f'attentions (default: all). op level: {", ".join(OP_NAMES)}; '
                                             f'backbone level: also "preset" (the arch\'s own, e.g. LinSwin IIIS)')
    p.add_argument('--tokens', nargs='+', type=int, default=[1024, 4096, 16384])
    p.add_argument('--head-dim', type=int, help='op level: head width (default 32); layer level: channels per head '
                                              '(default: nystrom 32, relu 8, as the references use)')
    p.add_argument('--layer', nargs='+', choices=sorted(LAYER_PAIRS), default=sorted(LAYER_PAIRS),
                   help='layer level: which layers to compare with their references')
    p.add_argument('--dims', nargs='+', type=int, default=[64, 128], help='layer level: channels C')
    p.add_argument('--heads', type=int, default=1)
    p.add_argument('--batch', type=int, default=1)
    p.add_argument('--backbone', default='LinPVT',
                   help='backbone level: LinPVT, LinSwin, LinViT, or a reference mmdet:TYPE[:VARIANT] / timm:NAME')
    p.add_argument('--arch', help='backbone preset (default: the smallest)')
    p.add_argument('--vs', nargs='+', metavar='SPEC',
                   help='stock references measured interleaved with ours: mmdet:PyramidVisionTransformerV2:b2, '
                        'mmdet:SwinTransformer:t, mmdet:ResNet:50 (mmseg:... alike); backbone level also timm:NAME. '
                        'Model level: the config with its backbone swapped for this one')
    p.add_argument('--cfg-options', nargs='+', action=_DictAction, help='model level: override config keys')
    p.add_argument('--sizes', nargs='+', help='backbone / model / layer level: H or HxW (default: backbone 512 '
                                              '1024; model: 800x1333 for mmdet configs, 1024x2048 for mmseg; '
                                              'layer: 64 128, the token map)')
    p.add_argument('--modes', nargs='+', choices=['fwd', 'fwdbwd', 'train', 'infer'],
                   help='op / backbone level: fwd, fwdbwd (default both); model level: train (mmengine\'s '
                        'train_step: forward, backward, optimizer step), infer (test_step) (default both)')
    p.add_argument('--compile', action='store_true', help='also measure under torch.compile (default settings)')
    p.add_argument('--compiled-only', action='store_true', help='with --compile: skip the eager rows')
    p.add_argument('--compile-backend', default='inductor')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--dtype', choices=list(DTYPES), help='default: bf16 on CUDA, fp32 on CPU')
    p.add_argument('--warmup', type=int, default=1)
    p.add_argument('--repeats', type=int, default=5, help='op level on CUDA: timed calls')
    p.add_argument('--min-rounds', type=int, default=3, help='backbone / model level: least interleaved rounds')
    p.add_argument('--max-rounds', type=int, default=20)
    p.add_argument('--min-run-time', type=float, default=0.2, help='seconds per measurement of one round')
    p.add_argument('--max-time', type=float, default=10.,
                   help='seconds: op level (CPU) per row, backbone / model level per group of rounds')
    p.add_argument('--rel-iqr', type=float, default=0.05, help='stop measuring once IQR / median is below this')
    p.add_argument('--no-memory', action='store_true', help='skip peak memory (CPU: its child process)')
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
    p.add_argument('--plot', help='write a plot (PNG): op level time and memory against tokens, else bars')
    p.add_argument('--suite', choices=['gpu'], help='run every GPU measurement of issue 16 (see run_suite)')
    p.add_argument('--out-dir', help='--suite: where tables, rows and plots go (default work_dirs/gpu_bench)')
    p.add_argument('--budget', type=float, default=450., help='--suite: seconds after which no job starts')
    p.add_argument('--smoke', action='store_true', help='--suite: tiny sizes, a round each (a CPU dry run)')
    p.add_argument('--only', nargs='+', metavar='JOB', help='--suite: run only these jobs (e.g. pvt_b1 maskrcnn_b2)')
    args = p.parse_args(argv)
    if args.compiled_only and not args.compile:
        p.error('--compiled-only needs --compile')
    model_modes, other_modes = {'train', 'infer'}, {'fwd', 'fwdbwd'}
    if args.modes:
        wrong = set(args.modes) - (model_modes if args.level == 'model' else other_modes)
        if wrong:
            p.error(f'--modes {" ".join(sorted(wrong))} do not apply at --level {args.level}; use '
                    f'{" / ".join(sorted(model_modes if args.level == "model" else other_modes))}')
    else:
        args.modes = ['train', 'infer'] if args.level == 'model' else ['fwd', 'fwdbwd']
    if args.configs and args.level != 'model':
        p.error(f'CONFIG files are for --level model (got {args.configs[0]!r} at --level {args.level})')
    return args


class _DictAction(argparse.Action):
    """``key=value`` pairs (mmengine's DictAction when it is installed)."""

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            from mmengine.config import DictAction
        except ImportError:
            parser.error('--cfg-options needs mmengine')
        DictAction(self.option_strings, self.dest)(parser, namespace, values, option_string)


def main(argv=None) -> List[Dict]:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('error: --device cuda but no CUDA device is visible; use --device cpu')
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.suite:
        run_suite(args)
        return []
    args.dtype = args.dtype or ('bf16' if device.type == 'cuda' else 'fp32')
    dtype = DTYPES[args.dtype]
    if args.memory_pass:
        use_exact_cpu_memory_accounting()
    print(f'torch {torch.__version__}, device {device}, dtype {args.dtype}, threads {torch.get_num_threads()}')
    if args.level == 'op':
        args.head_dim = args.head_dim or 32
        rows = bench_ops(args, device, dtype)
    elif args.level == 'layer':
        args.sizes = args.sizes or ['64', '128']
        rows = bench_layers(args, device, dtype)
    elif args.level == 'backbone':
        args.sizes = args.sizes or ['512', '1024']
        rows = bench_backbones(args, device, dtype)
    else:
        rows = bench_models(args, device, dtype)
    if device.type == 'cpu' and not args.memory_pass and not args.no_memory:
        measure_cpu_memory_in_child(sys.argv[1:] if argv is None else list(argv), rows)
    print_table(rows)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            json.dump(rows, f, indent=1)
        print(f'{len(rows)} rows written to {args.out}')
    if args.plot and rows:
        plot(rows, args.plot)
    return rows


if __name__ == '__main__':
    main()
