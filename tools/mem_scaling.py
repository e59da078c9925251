"""Peak memory and time of a backbone on the same image at 1x, 2x, 4x pixels, per attention.

Shows how memory grows with the number of pixels: linearly for linear attention (InLine, Linformer), and
quadratically for softmax once the N x N score matrix is materialised. Two softmax rows, because they differ:

- ``softmax``: ``scaled_dot_product_attention`` as the library calls it. Its CPU kernel (flash attention for
  CPU) works in key blocks and never stores the N x N matrix, so its memory also grows linearly, while its time
  grows quadratically.
- ``softmax_math``: the same attention under SDPA's math backend (``sdpa_kernel(SDPBackend.MATH)``), the
  textbook formula that stores the N x N scores and probabilities.

The backbone is the trees detector's (``--config``; LinPVT-XT with its attention replaced); the image is one
NEON image (``--image``) cut to ``--base-size`` and resized (bilinear) to sqrt(s) times each side for each
scale s. Every (attention, scale) runs in a fresh child process, one forward pass without autograd (inference,
as in tools/full_res.py) after one warm-up pass; peak memory is the resident-set high-water mark above the
pass's start (``/proc/self/status`` VmHWM, reset through ``/proc/self/clear_refs``) with glibc's malloc set to
give every sizeable block back to the kernel (``benchmark.PeakMemory``, ``use_exact_cpu_memory_accounting``),
i.e. the activations of the pass, weights and input excluded. Linux only.

Usage::

    python tools/mem_scaling.py [--image data/trees/full/images/X.png] [--base-size 256] [--scales 1 2 4]
        [--attn inline linformer softmax softmax_math] [--out F.json] [--md F.md] [--plot F.png]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import os.path as osp
import subprocess
import sys
import time

_TOOLS = osp.dirname(osp.abspath(__file__))
for _p in (_TOOLS, osp.dirname(_TOOLS)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

DEFAULT_CONFIG = 'configs/trees/faster-rcnn_linpvt-xt-inline_fpn_300it_trees.py'
DEFAULT_IMAGE = 'data/trees/full/images/2019_YELL_2_528000_4978000_image_crop2.png'
ATTNS = ('inline', 'linformer', 'softmax', 'softmax_math')


def parse_size(s: str) -> tuple[int, int]:
    h, _, w = s.lower().partition('x')
    return int(h), int(w or h)


def scaled_size(base: tuple[int, int], s: float) -> tuple[int, int]:
    """(H, W) with ``s`` times the pixels of ``base`` (each side times sqrt(s), rounded)."""
    return tuple(max(1, round(v * math.sqrt(s))) for v in base)


def load_image(path: str, base: tuple[int, int], hw: tuple[int, int]):
    """The image's centre ``base`` crop (the whole image if it is no larger), resized to ``hw``: (1, 3, H, W)."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image
    Image.MAX_IMAGE_PIXELS = None
    img = np.asarray(Image.open(path).convert('RGB'), dtype=np.float32)
    H, W = img.shape[:2]
    bh, bw = min(base[0], H), min(base[1], W)
    y0, x0 = (H - bh) // 2, (W - bw) // 2
    x = torch.from_numpy(img[y0:y0 + bh, x0:x0 + bw].copy()).permute(2, 0, 1)[None]
    x = (x - x.mean()) / x.std().clamp_min(1e-6)
    return x if (bh, bw) == tuple(hw) else F.interpolate(x, size=hw, mode='bilinear', align_corners=False)


def build_backbone(config: str, attn: str):
    """The config's backbone (a linattn_mm class) with attention ``attn`` in every stage."""
    from mmengine.config import Config

    from linattn_mm.models import backbones as bb
    cfg = dict(Config.fromfile(config).model.backbone)
    cls = getattr(bb, cfg.pop('type').split('.')[-1])
    cfg.pop('init_cfg', None)
    cfg['attn_cfg'] = dict(type='softmax' if attn == 'softmax_math' else attn)
    return cls(**cfg).eval()


def measure(config: str, image: str, base: tuple[int, int], hw: tuple[int, int], attn: str) -> dict:
    """Peak activation memory (MB) and time (s) of one forward pass; call in a fresh process."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from benchmark import PeakMemory, use_exact_cpu_memory_accounting
    exact = use_exact_cpu_memory_accounting()
    model = build_backbone(config, attn)
    x = load_image(image, base, hw)
    ctx = (lambda: sdpa_kernel(SDPBackend.MATH)) if attn == 'softmax_math' else contextlib.nullcontext
    with torch.no_grad(), ctx():
        model(x)  # warm-up: one-time allocations and kernel selection stay out of the measured pass
        with PeakMemory(torch.device('cpu')) as mem:
            t = time.perf_counter()
            outs = model(x)
            dt = time.perf_counter() - t
    tokens = (-(-hw[0] // 4)) * (-(-hw[1] // 4))
    return dict(attn=attn, height=hw[0], width=hw[1], pixels=hw[0] * hw[1], stage1_tokens=tokens,
                peak_mb=mem.peak_mb, seconds=dt, exact_accounting=exact, out_shapes=[list(o.shape) for o in outs])


def run_child(args, attn: str, hw: tuple[int, int]) -> dict:
    cmd = [sys.executable, osp.abspath(__file__), '--child', attn, f'{hw[0]}x{hw[1]}', '--config', args.config,
           '--image', args.image, '--base-size', f'{args.base[0]}x{args.base[1]}']
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
    if r.returncode:
        tail = (r.stderr.strip().splitlines() or ['?'])[-1]
        print(f'{attn} at {hw[0]}x{hw[1]}: failed ({tail[:120]})', flush=True)
        return dict(attn=attn, height=hw[0], width=hw[1], pixels=hw[0] * hw[1], failed=tail[:200])
    return json.loads(r.stdout.strip().splitlines()[-1])


def growth_exponent(rows: list[dict], attn: str) -> float:
    """Slope of log(peak memory) over log(pixels) between the smallest and largest scale (1 linear, 2 quadratic)."""
    pts = sorted((r['pixels'], r['peak_mb']) for r in rows if r['attn'] == attn and 'peak_mb' in r)
    if len(pts) < 2 or pts[0][1] <= 0:
        return float('nan')
    return math.log(pts[-1][1] / pts[0][1]) / math.log(pts[-1][0] / pts[0][0])


def table(rows: list[dict], scales: list[float]) -> str:
    attns = list(dict.fromkeys(r['attn'] for r in rows))
    head = ['attention'] + [f'{s:g}x: MB (s)' for s in scales] + ['memory exponent (1 linear, 2 quadratic)']
    sizes = sorted({(r['pixels'], r['height'], r['width']) for r in rows})
    lines = ['image sizes: ' + ', '.join(f'{s:g}x = {h} x {w} ({-(-h // 4) * -(-w // 4)} stage-1 tokens)'
                                         for s, (_, h, w) in zip(scales, sizes)), '',
             '| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for a in attns:
        cells = [a]
        for _, h, w in sizes:
            r = next((r for r in rows if r['attn'] == a and (r['height'], r['width']) == (h, w)), None)
            cells.append('–' if r is None else 'failed' if 'failed' in r
                         else f"{r['peak_mb']:.0f} ({r['seconds']:.2f})")
        e = growth_exponent(rows, a)
        cells.append('–' if e != e else f'{e:.2f}')
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def plot(rows: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for a in dict.fromkeys(r['attn'] for r in rows):
        pts = sorted((r['pixels'] / 1e6, r['peak_mb'], r['seconds']) for r in rows if r['attn'] == a and 'peak_mb' in r)
        if pts:
            px, mb, s = zip(*pts)
            axes[0].plot(px, mb, 'o-', label=a)
            axes[1].plot(px, s, 'o-', label=a)
    if rows:
        ok = sorted((r['pixels'] / 1e6, r['peak_mb']) for r in rows if 'peak_mb' in r and r['attn'] == 'inline')
        if ok:
            p0, m0 = ok[0]
            xs = [p for p, _ in ok]
            axes[0].plot(xs, [m0 * p / p0 for p in xs], 'k:', lw=1, label='linear from inline 1x')
    for ax, what in zip(axes, ('peak memory [MB]', 'forward time [s]')):
        ax.set_xscale('log')
        ax.set_yscale('log')
        ax.set_xlabel('megapixels')
        ax.set_title(what)
        ax.grid(True, which='both', alpha=.3)
    axes[0].legend(fontsize=8)
    fig.suptitle('LinPVT-XT backbone, one NEON image at 1x / 2x / 4x pixels (CPU, fp32, inference)')
    fig.tight_layout()
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--config', default=DEFAULT_CONFIG, help='detector config whose backbone is measured')
    p.add_argument('--image', default=DEFAULT_IMAGE,
                   help='one NEON image (python tools/prepare_data.py --only trees --trees-full)')
    p.add_argument('--base-size', default='256', help='1x size, H or HxW (centre crop of the image)')
    p.add_argument('--scales', nargs='+', type=float, default=[1, 2, 4], help='pixel multiples of the base size')
    p.add_argument('--attn', nargs='+', default=list(ATTNS), choices=list(ATTNS))
    p.add_argument('--threads', type=int, default=1, help='torch threads of each child')
    p.add_argument('--out', help='rows as JSON')
    p.add_argument('--md', help='the table as markdown')
    p.add_argument('--plot', help='memory and time against pixels (PNG)')
    p.add_argument('--child', nargs=2, metavar=('ATTN', 'HxW'), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.base = parse_size(a.base_size)
    return a


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if not osp.isfile(args.image):
        raise SystemExit(f'error: image {args.image} not found; the whole NEON images are prepared by '
                         '`python tools/prepare_data.py --only trees --trees-full` (or pass --image)')
    if args.child:
        print(json.dumps(measure(args.config, args.image, args.base, parse_size(args.child[1]), args.child[0])))
        return []
    rows = []
    for s in args.scales:
        hw = scaled_size(args.base, s)
        for attn in args.attn:
            r = run_child(args, attn, hw)
            rows.append(r)
            if 'peak_mb' in r:
                print(f"{attn:13s} {hw[0]}x{hw[1]}: {r['peak_mb']:9.1f} MB  {r['seconds']:7.2f} s", flush=True)
    md = table(rows, args.scales)
    print(md)
    for path, text in ((args.out, json.dumps(rows, indent=1)), (args.md, md + '\n')):
        if path:
            os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
            with open(path, 'w') as f:
                f.write(text)
    if args.plot:
        plot(rows, args.plot)
    return rows


if __name__ == '__main__':
    main()
