#!/bin/sh
''''test -x "$(dirname "$0")/../.venv/bin/python" && exec "$(dirname "$0")/../.venv/bin/python" "$0" "$@"; exec python3 "$0" "$@" # '''
# (the line above lets `tools/amp_check.py ...` run with the project's .venv; Python sees a string)
__doc__ = """Mixed-precision training check: every attention of the table trains a small LinPVT under fp16 autocast
with a dynamic loss scaler (``torch.amp.GradScaler``, what mmengine's ``AmpOptimWrapper`` uses), under bf16
autocast, and in fp32, on one fixed batch; prints per attention the skipped steps, the final loss scale and the
loss after N steps next to fp32's after the same N steps.

The task: a dense 4-class labelling of each output map (a 1x1 conv head per stage, cross-entropy against fixed
random labels, summed over the stages), so the loss falls only as fast as the backbone can fit the batch.

Examples::

  tools/amp_check.py                                   # CPU, the whole table, 40 fp16 / 20 bf16 steps
  tools/amp_check.py --attn focused rfa inline --fp16-steps 40 --bf16-steps 20
  tools/amp_check.py --device cuda --json amp.json     # on a GPU (fused Triton kernels under backend 'auto')
"""
import argparse
import json
import math
import os
import sys
import time
from typing import Dict, List, Optional, Sequence

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

# options that keep the random-feature / landmark / local methods meaningful at small grids
ATTN_OPTS: Dict[str, dict] = {'performer': dict(num_features=32), 'nystrom': dict(num_landmarks=16),
                              'linformer': dict(proj_len=16), 'longformer': dict(window_size=5),
                              'bigbird': dict(num_random_blocks=1), 'longshort': dict(num_landmarks=8),
                              'rfa': dict(num_features=32)}
SMALL = dict(embed_dims=[32, 64, 128, 128], num_heads=[1, 2, 4, 4], mlp_ratios=[4, 4, 4, 4], depths=[1, 1, 1, 1])
DTYPES = {'fp16': torch.float16, 'bf16': torch.bfloat16, 'fp32': torch.float32}


class DenseTask(nn.Module):
    """A LinPVT with one 1x1 conv classifier per output map."""

    def __init__(self, attn: str, arch: dict, num_classes: int = 4, attn_opts: Optional[dict] = None):
        super().__init__()
        from linattn_mm.models.backbones import LinPVT
        opts = (ATTN_OPTS if attn_opts is None else attn_opts).get(attn, {})
        self.backbone = LinPVT(arch=arch, attn_cfg=dict(type=attn, **opts), drop_path_rate=0.)
        self.heads = nn.ModuleList(nn.Conv2d(c, num_classes, 1) for c in self.backbone.out_channels)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return [h(o) for h, o in zip(self.heads, self.backbone(x))]


def make_batch(arch: dict, batch: int, hw: Sequence[int], in_scale: float, num_classes: int = 4, seed: int = 0):
    """Fixed inputs ``(B, 3, H, W) * in_scale`` and label maps at strides 4, 8, 16, 32."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, *hw, generator=g) * in_scale
    labels = [torch.randint(0, num_classes, (batch, math.ceil(hw[0] / s), math.ceil(hw[1] / s)), generator=g)
              for s in (4, 8, 16, 32)[:len(arch['depths'])]]
    return x, labels


def train(attn: str, precision: str, steps: int, device: str = 'cpu', arch: Optional[dict] = None, batch: int = 2,
          hw: Sequence[int] = (96, 128), in_scale: float = 3., lr: float = 1e-3, seed: int = 0,
          attn_opts: Optional[Dict[str, dict]] = None) -> dict:
    """Train ``steps`` AdamW steps on one fixed batch; returns losses, scales and skipped steps.

    ``precision``: ``'fp16'`` (autocast + ``GradScaler``), ``'bf16'`` (autocast, no scaler) or ``'fp32'``.
    A step is *skipped* when the scaler found non-finite gradients (its scale went down). ``attn_opts``: options
    per attention name (default ``ATTN_OPTS``).
    """
    arch = arch or SMALL
    torch.manual_seed(seed)
    model = DenseTask(attn, arch, attn_opts=attn_opts).to(device).train()
    x, labels = make_batch(arch, batch, hw, in_scale, seed=seed)
    x, labels = x.to(device), [t.to(device) for t in labels]
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    dtype = DTYPES[precision]
    scaler = torch.amp.GradScaler(device, enabled=precision == 'fp16')
    losses, scales, skipped = [], [], []
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=dtype, enabled=precision != 'fp32'):
            logits = model(x)
        loss = sum(F.cross_entropy(o.float(), t) for o, t in zip(logits, labels))
        before = scaler.get_scale() if scaler.is_enabled() else 1.
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        after = scaler.get_scale() if scaler.is_enabled() else 1.
        if after < before:
            skipped.append(step)
        losses.append(float(loss.detach()))
        scales.append(after)
    return dict(attn=attn, precision=precision, steps=steps, losses=losses, scales=scales, skipped=skipped)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from linattn_mm.layers import ATTENTIONS
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--attn', nargs='+', default=sorted(ATTENTIONS), help='attentions (default: the whole table)')
    p.add_argument('--device', default='cpu')
    p.add_argument('--fp16-steps', type=int, default=40)
    p.add_argument('--bf16-steps', type=int, default=20)
    p.add_argument('--size', type=int, nargs=2, default=(96, 128), metavar=('H', 'W'))
    p.add_argument('--json', help='write the rows here')
    args = p.parse_args(argv)
    unknown = [a for a in args.attn if a not in ATTENTIONS]
    if unknown:
        p.error(f'unknown attention(s) {unknown}; known: {", ".join(sorted(ATTENTIONS))}')
    rows = []
    n16, nbf = args.fp16_steps, args.bf16_steps
    print(f'| attn | fp16 skipped (steps) | fp16 final scale | loss first | fp16 @{n16} | fp32 @{n16} | '
          f'bf16 @{nbf} | fp32 @{nbf} | s |')
    print('|---|---|---:|---:|---:|---:|---:|---:|---:|')
    for attn in args.attn:
        t0 = time.perf_counter()
        res = {prec: train(attn, prec, steps, device=args.device, hw=args.size)
               for prec, steps in (('fp16', n16), ('bf16', nbf), ('fp32', max(n16, nbf)))}
        row = dict(attn=attn, runs=res, seconds=time.perf_counter() - t0)
        rows.append(row)
        f16, bf, f32 = res['fp16'], res['bf16'], res['fp32']['losses']
        print(f'| {attn} | {len(f16["skipped"])} {f16["skipped"]} | {f16["scales"][-1]:.3g} | {f32[0]:.3f} | '
              f'{f16["losses"][-1]:.3f} | {f32[n16 - 1]:.3f} | {bf["losses"][-1]:.3f} | {f32[nbf - 1]:.3f} | '
              f'{row["seconds"]:.0f} |', flush=True)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
