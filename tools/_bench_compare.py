"""Side-by-side measurements for ``tools/benchmark.py``: interleaved timing, stock-backbone references, whole
mmdet/mmseg models with dummy data, tables with spread and plots with error bars.

Interleaving: every model of a comparison is warmed up, then measured in rounds (A B C, C B A, A B C, ...), so
that a load change on a shared machine hits all of them alike and the ratios stay fair. A round is one
``torch.utils.benchmark`` measurement on CPU (``blocked_autorange``, or ``timeit(1)`` once a call outlasts
``min_run_time``) and CUDA-event timed back-to-back calls on GPU. Rounds stop once every model's IQR is within
``rel_iqr`` of its median, or at ``max_rounds`` / after ``max_time`` seconds, and never before ``min_rounds``.
"""
from __future__ import annotations

import copy
import importlib
import math
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

# --------------------------------------------------------------------------------- stock backbones
# ``LIB:TYPE:VARIANT`` -> (constructor kwargs, channels of the four stages). The settings of the toolboxes' own
# configs: mmdet's retinanet_pvtv2-b2 / mask-rcnn_swin-t / mask-rcnn_r50 (mmseg's upernet_swin / fpn_r50 alike).
STOCK_BACKBONES: Dict[Tuple[str, str], Tuple[dict, List[int]]] = {
    ('PyramidVisionTransformerV2', 'b0'): (dict(embed_dims=32, num_layers=[2, 2, 2, 2]), [32, 64, 160, 256]),
    ('PyramidVisionTransformerV2', 'b1'): (dict(embed_dims=64, num_layers=[2, 2, 2, 2]), [64, 128, 320, 512]),
    ('PyramidVisionTransformerV2', 'b2'): (dict(embed_dims=64, num_layers=[3, 4, 6, 3]), [64, 128, 320, 512]),
    ('SwinTransformer', 't'): (dict(embed_dims=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7,
                                    drop_path_rate=0.2), [96, 192, 384, 768]),
    ('ResNet', '50'): (dict(depth=50, num_stages=4, frozen_stages=1, norm_cfg=dict(type='BN', requires_grad=True),
                            norm_eval=True, style='pytorch'), [256, 512, 1024, 2048]),
}
DEFAULT_VARIANT = {'PyramidVisionTransformerV2': 'b2', 'SwinTransformer': 't', 'ResNet': '50'}


def parse_stock(spec: str) -> Tuple[str, str, str]:
    """``'mmdet:PyramidVisionTransformerV2:b2'`` -> ``('mmdet', 'PyramidVisionTransformerV2', 'b2')``; the variant
    defaults to the one the issue compares against (PVTv2-b2, Swin-T, ResNet-50)."""
    lib, _, rest = spec.partition(':')
    name, _, variant = rest.partition(':')
    variant = variant or DEFAULT_VARIANT.get(name, '')
    if lib not in ('mmdet', 'mmseg') or (name, variant) not in STOCK_BACKBONES:
        known = ', '.join(f'mmdet:{n}:{v}' for n, v in STOCK_BACKBONES)
        raise SystemExit(f'error: unknown stock backbone {spec!r}; known: {known} (mmseg:... for mmseg\'s own '
                         f'Swin/ResNet), or timm:NAME at backbone level')
    return lib, name, variant


def stock_backbone_cfg(spec: str, out_indices: Sequence[int] = (0, 1, 2, 3)) -> Tuple[dict, List[int]]:
    """The stock backbone dict (type scoped ``mmdet.`` / ``mmseg.`` so that it builds from either toolbox's
    model) and the channels of the maps it returns for ``out_indices``."""
    lib, name, variant = parse_stock(spec)
    kwargs, channels = STOCK_BACKBONES[(name, variant)]
    cfg = dict(type=f'{lib}.{name}', out_indices=tuple(out_indices), **copy.deepcopy(kwargs))
    return cfg, [channels[i] for i in out_indices]


def _register(lib: str) -> None:
    importlib.import_module(f'{lib}.utils').register_all_modules(init_default_scope=False)


def build_stock_backbone(spec: str) -> torch.nn.Module:
    lib, _, _ = parse_stock(spec)
    _register(lib)
    from mmengine.registry import MODELS
    cfg, _ = stock_backbone_cfg(spec)
    model = MODELS.build(cfg)
    _quiet_init_weights(model)
    return model


# ------------------------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize()


def _one_measurement(fn: Callable, device: torch.device, min_run_time: float, last_ms: float) -> List[float]:
    """Per-call times (ms) of one round: on CUDA the GPU time between CUDA events of back-to-back calls (enough
    calls to fill ``min_run_time``), on CPU ``torch.utils.benchmark`` (``timeit(1)`` once a call takes longer
    than ``min_run_time``: ``blocked_autorange`` would spend a call estimating its block size)."""
    if device.type == 'cuda':
        n = max(1, min(100, int(min_run_time * 1e3 / max(last_ms, 1e-3))))
        ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
        torch.cuda.synchronize()
        for a, b in ev:
            a.record()
            fn()
            b.record()
        torch.cuda.synchronize()
        return [a.elapsed_time(b) for a, b in ev]
    from torch.utils.benchmark import Timer
    timer = Timer(stmt='fn()', globals=dict(fn=fn), num_threads=torch.get_num_threads())
    m = timer.timeit(1) if last_ms > min_run_time * 1e3 else timer.blocked_autorange(min_run_time=min_run_time)
    return [t * 1e3 for t in m.times]


def quartiles(xs: Sequence[float]) -> Tuple[float, float, float]:
    """(q1, median, q3); for one sample all three are that sample."""
    if len(xs) < 2:
        return xs[0], xs[0], xs[0]
    q1, q2, q3 = statistics.quantiles(xs, n=4, method='inclusive')
    return q1, q2, q3


def rel_iqr(xs: Sequence[float]) -> float:
    if len(xs) < 2:
        return math.inf
    q1, q2, q3 = quartiles(xs)
    return (q3 - q1) / q2


def time_interleaved(fns: Dict[str, Callable], device: torch.device, warmup: int = 1, min_rounds: int = 3,
                     max_rounds: int = 20, min_run_time: float = 0.2, max_time: float = 60.,
                     rel_iqr_target: float = 0.05, log: Callable = print) -> Dict[str, List[float]]:
    """Per-call times (ms) of every ``fns`` entry, measured in alternating rounds (see the module docstring).
    A callable that raises (e.g. out of memory) is dropped with a message; its list stays empty."""
    samples: Dict[str, List[float]] = {n: [] for n in fns}
    last: Dict[str, float] = {}
    alive = list(fns)
    for name in list(alive):
        try:
            for _ in range(max(warmup, 1)):
                t0 = time.perf_counter()
                fns[name]()
                _sync(device)
                last[name] = (time.perf_counter() - t0) * 1e3
        except (RuntimeError, MemoryError) as err:
            _dropped(name, err, device, log)
            alive.remove(name)
    t_start = time.perf_counter()
    for r in range(max_rounds):
        for name in (alive if r % 2 == 0 else alive[::-1]):
            try:
                ts = _one_measurement(fns[name], device, min_run_time, last[name])
            except (RuntimeError, MemoryError) as err:
                _dropped(name, err, device, log)
                alive.remove(name)
                samples[name] = []
                continue
            samples[name] += ts
            last[name] = statistics.median(ts)
        steady = all(rel_iqr(samples[n]) <= rel_iqr_target for n in alive)
        if r + 1 >= min_rounds and (steady or time.perf_counter() - t_start > max_time):
            break
    return samples


def _dropped(name: str, err: BaseException, device: torch.device, log: Callable) -> None:
    log(f'{name}: failed ({str(err).splitlines()[0][:120] if str(err) else type(err).__name__})')
    if device.type == 'cuda':
        torch.cuda.empty_cache()


def peak_memory_mb(fn: Callable, device: torch.device, peak_cls, exact_accounting: Callable) -> float:
    """Peak memory of one (warm) call above what was in use before it, with ``peak_cls`` (the script's
    ``PeakMemory``). CUDA: ``max_memory_allocated``. CPU: resident-set high-water mark (``VmHWM`` reset through
    ``/proc/self/clear_refs``) with glibc's allocator set to return every block >= 64 KiB to the kernel on free
    (``exact_accounting`` + ``malloc_trim``), so the mark follows tensor allocations. Call it after all timing
    of the process: that allocator setting slows allocation down."""
    if device.type == 'cpu':
        exact_accounting()
        try:
            import ctypes
            ctypes.CDLL('libc.so.6').malloc_trim(0)
        except (OSError, AttributeError):
            pass
    with peak_cls(device) as mem:
        fn()
    return mem.peak_mb


def summarise(samples: List[float], batch: int) -> Dict:
    q1, med, q3 = quartiles(samples)
    return dict(ms=med, ms_q1=q1, ms_q3=q3, iqr_ms=q3 - q1, samples=len(samples),
                img_per_s=batch / (med / 1e3), img_per_s_q1=batch / (q3 / 1e3), img_per_s_q3=batch / (q1 / 1e3))


# ------------------------------------------------------------------------------- whole models
def load_model_cfg(path: str, cfg_options: Optional[dict] = None):
    """The config (custom imports done, ``cfg_options`` merged) and its toolbox ('mmdet' / 'mmseg')."""
    from mmengine.config import Config
    from mmengine.utils import import_modules_from_strings
    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if cfg.get('custom_imports'):
        import_modules_from_strings(**cfg.custom_imports)
    lib = cfg.get('default_scope', 'mmdet')
    if lib not in ('mmdet', 'mmseg'):
        raise SystemExit(f'error: {path}: default_scope {lib!r}; --level model takes mmdet or mmseg configs')
    return cfg, lib


def swap_to_stock(model_cfg, spec: str) -> None:
    """Replace ``model_cfg.backbone`` by the stock backbone ``spec`` (same ``out_indices``) and point the next
    module (neck, or decode head and auxiliary head) at its channels, in place."""
    out_indices = tuple(model_cfg.backbone.get('out_indices', (0, 1, 2, 3)))
    bb, ch = stock_backbone_cfg(spec, out_indices)
    model_cfg.backbone = bb
    neck = model_cfg.get('neck')
    if isinstance(neck, dict) and isinstance(neck.get('in_channels'), (list, tuple)):
        neck.in_channels = ch
    elif 'decode_head' in model_cfg:
        model_cfg.decode_head.in_channels = ch if isinstance(model_cfg.decode_head.in_channels, (list, tuple)) \
            else ch[model_cfg.decode_head.get('in_index', -1)]
    else:
        raise SystemExit('error: --vs needs a config whose neck (or decode head) takes the backbone maps')
    aux = model_cfg.get('auxiliary_head')
    for a in (aux if isinstance(aux, list) else [aux] if aux else []):
        if isinstance(a.get('in_channels'), int) and 'decode_head' in model_cfg and not neck:
            a.in_channels = ch[a.get('in_index', -1)]


def _check_mmcv_ops(lib: str) -> Optional[str]:
    """Why the detector cannot run here (None if it can): mmdet's RoI heads need mmcv's compiled ops."""
    if lib != 'mmdet':
        return None
    try:
        import mmcv.ops  # noqa: F401
        from mmcv.ops import RoIAlign  # noqa: F401
    except (ImportError, OSError) as err:
        return f'mmcv.ops is not available ({str(err).splitlines()[0][:100]}): mmdet detectors need its ' \
               f'compiled ops (RoIAlign, NMS); install mmcv with ops to measure them'
    return None


def build_mm_model(cfg, lib: str, device: torch.device):
    from mmengine.registry import init_default_scope
    _register(lib)
    init_default_scope(lib)
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import MODELS
    model = revert_sync_batchnorm(MODELS.build(copy.deepcopy(cfg.model)))  # SyncBN needs a process group
    _quiet_init_weights(model)
    return model.to(device)


def _quiet_init_weights(model) -> None:
    """``model.init_weights()`` without mmengine's log line per parameter."""
    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel('WARNING')
    try:
        model.init_weights()
    finally:
        logger.setLevel(level)


def dummy_batch(lib: str, h: int, w: int, batch: int, num_classes: int, seed: int = 0) -> Dict:
    """A data batch as the dataloader gives it: uint8 images and data samples with what the losses need
    (detection: 4 boxes + masks per image; segmentation: a random label map)."""
    g = torch.Generator().manual_seed(seed)
    inputs = [torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8) for _ in range(batch)]
    meta = dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w), scale_factor=(1., 1.), flip=False)
    samples = []
    for _ in range(batch):
        if lib == 'mmdet':
            from mmdet.structures import DetDataSample
            from mmdet.structures.mask import BitmapMasks
            from mmengine.structures import InstanceData
            s = DetDataSample(metainfo=meta)
            inst = InstanceData()
            n = 4
            xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
            wh = (0.1 + 0.3 * torch.rand(n, 2, generator=g)) * torch.tensor([w, h])
            boxes = torch.cat([xy, xy + wh], 1).floor()
            inst.bboxes = boxes
            inst.labels = torch.randint(0, num_classes, (n,), generator=g)
            masks = torch.zeros(n, h, w, dtype=torch.uint8)
            for i, (x0, y0, x1, y1) in enumerate(boxes.long().tolist()):
                masks[i, y0:y1, x0:x1] = 1
            inst.masks = BitmapMasks(masks.numpy(), h, w)
            s.gt_instances = inst
        else:
            from mmengine.structures import PixelData
            from mmseg.structures import SegDataSample
            s = SegDataSample(metainfo=meta)
            s.gt_sem_seg = PixelData(data=torch.randint(0, num_classes, (1, h, w), generator=g))
        samples.append(s)
    return dict(inputs=inputs, data_samples=samples)


def _num_classes(model_cfg, lib: str) -> int:
    if lib == 'mmseg':
        return int(model_cfg.decode_head.num_classes)
    head = model_cfg.get('roi_head', {}).get('bbox_head') or model_cfg.get('bbox_head') or {}
    head = head[0] if isinstance(head, list) else head
    return int(head.get('num_classes', 80))


def model_step_fns(model, cfg, lib: str, data: Dict, device: torch.device, dtype: torch.dtype,
                   modes: Sequence[str], compile_kw: Optional[dict]) -> Dict[str, Callable]:
    """mode -> callable: 'train' = mmengine's ``train_step`` (data preprocessor, forward with losses, backward,
    optimizer step; bf16/fp16 through ``AmpOptimWrapper``), 'infer' = ``test_step`` in eval mode, no grad.
    With ``compile_kw`` the step is wrapped in ``torch.compile`` as mmengine's ``compile=`` does."""
    from mmengine.optim import build_optim_wrapper
    ow_cfg = copy.deepcopy(cfg.optim_wrapper)
    if dtype != torch.float32:
        if device.type != 'cuda':
            raise SystemExit('error: --level model with bf16/fp16 needs CUDA (mmengine\'s AmpOptimWrapper)')
        ow_cfg.type = 'AmpOptimWrapper'
        ow_cfg.dtype = 'bfloat16' if dtype == torch.bfloat16 else 'float16'
        ow_cfg.pop('loss_scale', None)
    optim = build_optim_wrapper(model, ow_cfg)
    train_step, test_step = model.train_step, model.test_step
    if compile_kw is not None:
        train_step, test_step = torch.compile(train_step, **compile_kw), torch.compile(test_step, **compile_kw)
    fns = {}
    if 'train' in modes:
        def train():
            model.train()
            train_step(data, optim)
        fns['train'] = train
    if 'infer' in modes:
        def infer():
            model.eval()
            with torch.no_grad():
                test_step(data)
        fns['infer'] = infer
    return fns


def model_label(cfg, spec: Optional[str]) -> str:
    if spec:
        return spec
    bb = cfg.model.backbone
    arch = bb.get('arch')
    arch = arch if isinstance(arch, str) else 'custom' if arch else ''
    attn = (bb.get('attn_cfg') or {}).get('type') or bb.get('attn_type') or ''
    return ' '.join(x for x in (bb.type.split('.')[-1] + (f'-{arch}' if arch else ''), attn) if x)


# ----------------------------------------------------------------------------------- output
def print_compare_table(rows: List[Dict], log: Callable = print) -> str:
    """Markdown table: median, IQR, img/s (from the quartiles), peak memory and ``x ref``, the median-time ratio
    against the reference row (the last ``--vs`` / softmax) of the same size, mode, batch and compile setting."""
    if not rows:
        return ''
    ref: Dict = {}
    for r in rows:
        if r.get('is_ref'):
            ref[_group(r)] = r['ms']
    with_cfg = any('config' in r for r in rows)
    cols = (['config'] if with_cfg else []) + ['model', 'size (HxW)', 'batch', 'mode', 'compile', 'median ms',
                                               'IQR ms', 'img/s (q1-q3)', 'peak MB', 'x ref', 'n']
    lines = ['| ' + ' | '.join(cols) + ' |', '|' + '---|' * len(cols)]
    for r in rows:
        b = ref.get(_group(r))
        ratio = f'{b / r["ms"]:.2f}' if b and not r.get('is_ref') else ('ref' if r.get('is_ref') else '-')
        cells = ([r.get('config', '')] if with_cfg else []) + [
                 r['model'], r['size'], r['batch'], r['mode'], 'yes' if r.get('compile') else 'no',
                 f"{r['ms']:.1f}", f"{r['iqr_ms']:.1f}",
                 f"{r['img_per_s']:.3g} ({r['img_per_s_q1']:.3g}-{r['img_per_s_q3']:.3g})",
                 '-' if r['peak_mem_mb'] != r['peak_mem_mb'] else f"{r['peak_mem_mb']:.0f}", ratio, r['samples']]
        lines.append('| ' + ' | '.join(str(c) for c in cells) + ' |')
    text = '\n'.join(lines)
    log('\n' + text)
    return text


def _group(r: Dict):
    return r.get('config', ''), r['size'], r['mode'], r['batch'], bool(r.get('compile'))


def save_figure(fig, path: str, title: str, dpi: int = 110) -> None:
    """Title, lay out, write ``fig`` to ``path`` (its folder created) and close it: the benchmark's plots."""
    import os

    import matplotlib.pyplot as plt
    fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def plot_compare(rows: List[Dict], path: str) -> None:
    """Grouped bars of img/s (error bars: img/s at the time quartiles) and peak memory, one group per size x mode
    x batch x compile."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    groups = list(dict.fromkeys(_group(r) for r in rows))
    models = list(dict.fromkeys(r['model'] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(groups) * len(models) / 2 + 4), 4.8))
    width = 0.8 / max(len(models), 1)
    for i, m in enumerate(models):
        xs, ys, lo, hi, mem = [], [], [], [], []
        for j, g in enumerate(groups):
            r = next((r for r in rows if r['model'] == m and _group(r) == g), None)
            if r is None:
                continue
            xs.append(j + (i - (len(models) - 1) / 2) * width)
            ys.append(r['img_per_s'])
            lo.append(r['img_per_s'] - r['img_per_s_q1'])
            hi.append(r['img_per_s_q3'] - r['img_per_s'])
            mem.append(r['peak_mem_mb'] if r['peak_mem_mb'] == r['peak_mem_mb'] else 0.)
        axes[0].bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=m)
        axes[1].bar(xs, mem, width, label=m)
    labels = [(f'{cfg[:24]}\n' if cfg else '') + f'{s}\n{mode} b{b}' + (' +compile' if c else '')
              for cfg, s, mode, b, c in groups]
    for ax, title in zip(axes, ('throughput [img/s] (error bars: IQR)', 'peak memory [MB]')):
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(labels, fontsize=7)
        ax.set_title(title)
        ax.grid(True, axis='y', alpha=0.3)
    axes[0].legend(fontsize=7)
    r0 = rows[0]
    save_figure(fig, path, f"{r0['level']} level, {r0['device']}, {r0['dtype']}, {r0.get('threads', '')} threads")
