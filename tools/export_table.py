"""The ONNX export table: every backbone family x every attention, exported with dynamic batch / H / W, checked
against PyTorch in onnxruntime at three sizes, and timed.

    python tools/export_table.py [--families pvt swin vit cswin] [--attentions inline ...]
                                 [--exporter torchscript|dynamo|auto] [--threads 2] [--runs 5] [--out TABLE.md]

Models: the tiny configurations of the test suite (``tests/models/test_backbones.py``), random weights (seeded).
Export at ``2 x 3 x 96 x 96``; parity ``rms(onnxruntime - torch) / rms(torch)`` (largest over the four maps,
fp32) there and at ``1 x 97 x 131`` and ``3 x 75 x 67``; latency at ``1 x 3 x 128 x 128`` with ``--threads``
threads on both sides (``torch.set_num_threads``, onnxruntime ``intra_op_num_threads``), the mean of ``--runs``
runs after one warm-up. Prints one markdown row per pair as it goes (a failure is a row too, with the error).
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
import sys
import tempfile
import time
from typing import List, Optional, Sequence

_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
for p in (_ROOT, osp.join(_ROOT, 'tools')):
    if p not in sys.path:
        sys.path.insert(0, p)

import torch  # noqa: E402

import export_onnx as eo  # noqa: E402

EXPORT_SIZE = (2, 96, 96)
CHECK_SIZES = (EXPORT_SIZE, (1, 97, 131), (3, 75, 67))
TIME_SIZE = (1, 128, 128)
HEADER = ('| family | attention | exporter | export (s) | rel. error 2×96×96 | 1×97×131 | 3×75×67 | onnxruntime | '
          'PyTorch |\n|---|---|---|---|---|---|---|---|---|')


def families():
    from linattn_mm.models.backbones import LinCSwin, LinPVT, LinSwin, LinViT
    return {'pvt': LinPVT, 'swin': LinSwin, 'vit': LinViT, 'cswin': LinCSwin}


def tiny_model(fam: str, attn: str) -> torch.nn.Module:
    """The test suite's tiny backbone of ``fam`` with ``attn`` (seeded random weights), eval mode; ``'default'``:
    the family's own attention (LinCSwin: the official 'IISS', InLine + LePE then stripe softmax + LePE)."""
    from tests.models.test_backbones import tiny
    return tiny(families()[fam], None if attn == 'default' else attn).eval()


def _mean_time(fn, runs: int) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(runs):
        fn()
    return (time.perf_counter() - t) / runs


def table_row(fam: str, attn: str, exporter: str = 'torchscript', threads: int = 2, runs: int = 5,
              workdir: Optional[str] = None) -> dict:
    """Export one pair, check it at :data:`CHECK_SIZES`, time it at :data:`TIME_SIZE`; returns the row's values
    (``error`` holds the exception text when the export or a check failed)."""
    row = dict(family=families()[fam].__name__, attention=attn, exporter=exporter)
    module = eo.Backbone(tiny_model(fam, attn)).eval()
    workdir = workdir or tempfile.mkdtemp()
    path = osp.join(workdir, f'{fam}_{attn}.onnx')
    g = torch.Generator().manual_seed(0)
    try:
        t = time.perf_counter()
        b, h, w = EXPORT_SIZE
        row['exporter'] = eo.export_onnx(module, torch.randn(b, 3, h, w, generator=g), path, dynamic=True,
                                         exporter=exporter, input_name='x')
        row['export_s'] = time.perf_counter() - t
        sess = eo.ort_session(path, threads=threads)
        row['errors'] = [eo.parity(module, sess, torch.randn(b, 3, h, w, generator=g)) for b, h, w in CHECK_SIZES]
        x = torch.randn(TIME_SIZE[0], 3, *TIME_SIZE[1:], generator=g)
        feed = {sess.get_inputs()[0].name: x.numpy()}
        saved = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            with torch.no_grad():
                row['torch_ms'] = 1e3 * _mean_time(lambda: module(x), runs)
        finally:
            torch.set_num_threads(saved)
        row['ort_ms'] = 1e3 * _mean_time(lambda: sess.run(None, feed), runs)
    except Exception as e:  # noqa: BLE001 - a failing pair is a row of the table
        row['error'] = f'{type(e).__name__}: {str(e).splitlines()[0][:200]}'
    finally:
        if osp.exists(path):
            os.remove(path)
    return row


def format_row(row: dict) -> str:
    if 'error' in row:
        return f'| {row["family"]} | `{row["attention"]}` | {row["exporter"]} | — | {row["error"]} | | | | |'
    errs = ' | '.join(f'{e:.1e}' for e in row['errors'])
    return (f'| {row["family"]} | `{row["attention"]}` | {row["exporter"]} | {row["export_s"]:.0f} | {errs} | '
            f'{row["ort_ms"]:.1f} ms | {row["torch_ms"]:.1f} ms |')


def main(argv: Optional[Sequence[str]] = None) -> int:
    from linattn_mm.layers import ATTENTIONS
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--families', nargs='+', default=sorted(families()), choices=sorted(families()))
    p.add_argument('--attentions', nargs='+', default=None, choices=sorted(ATTENTIONS) + ['default'],
                   help="default: every attention of the table, and 'default' (the family's own) for cswin")
    p.add_argument('--exporter', default='torchscript', choices=['auto', 'dynamo', 'torchscript'])
    p.add_argument('--threads', type=int, default=2, help='threads of PyTorch and onnxruntime (default 2)')
    p.add_argument('--runs', type=int, default=5, help='timed runs after one warm-up (default 5)')
    p.add_argument('--out', default=None, help='also write the table (markdown) to this file')
    args = p.parse_args(argv)
    lines: List[str] = [HEADER]
    print(HEADER, flush=True)
    worst, failed = 0., 0
    with tempfile.TemporaryDirectory() as tmp:
        for fam in args.families:
            attns = args.attentions or (['default'] if fam == 'cswin' else []) + sorted(ATTENTIONS)
            for attn in attns:
                row = table_row(fam, attn, args.exporter, args.threads, args.runs, tmp)
                lines.append(format_row(row))
                print(lines[-1], flush=True)
                if 'error' in row:
                    failed += 1
                else:
                    worst = max(worst, *row['errors'])
    if args.out:
        with open(args.out, 'w') as f:
            f.write('\n'.join(lines) + '\n')
    print(f'[export_table] {len(lines) - 1 - failed} pairs exported, {failed} failed; worst rel. error {worst:.1e} '
          f'(tolerance 1e-4)')
    return 0 if not failed and worst < 1e-4 else 1


if __name__ == '__main__':
    sys.exit(main())
