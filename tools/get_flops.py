"""FLOPs and parameters of a model config, with attention counted.

    python tools/get_flops.py CONFIG --shape H W [--backbone-only]

Two independent counts are printed side by side:

* mmengine's ``FlopAnalyzer`` (the fvcore counter that mmdet/mmseg's own get_flops use), reported as
  multiply-accumulates (1 MAC = one multiply-add; mmdet/mmseg papers call these "FLOPs"). By itself it
  counts ``scaled_dot_product_attention`` as zero: we add a handle for it (and for the few other ops our
  attentions use that it skips), so softmax baselines are not flattered.
* torch's ``torch.utils.flop_counter.FlopCounterMode``, which counts matmul/bmm/conv/SDPA as
  2 FLOPs per MAC. As a cross-check, ``torch_flops / 2`` should be close to the mmengine MACs; the remaining
  difference is ops one counter knows and the other does not (norms, upsampling).
"""
from __future__ import annotations

import argparse
import os.path as osp
import sys
from typing import Any, List

_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import torch  # noqa: E402
from torch import nn  # noqa: E402


def _shape(v) -> List[int]:
    t = v.type()
    return list(t.sizes()) if hasattr(t, 'sizes') and t.sizes() is not None else []


def sdpa_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """MACs of scaled_dot_product_attention: Q·Kᵀ (L·S·E) plus weights·V (L·S·Ev) per batch item."""
    q, k, v = (_shape(x) for x in inputs[:3])
    batch = 1
    for s in q[:-2]:
        batch *= s
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


class _Wrapped(nn.Module):
    """Makes a detector / segmentor traceable with one image tensor as input."""

    def __init__(self, model: nn.Module, samples, backbone_only: bool):
        super().__init__()
        self.model = model
        self.samples = samples
        self.backbone_only = backbone_only

    def forward(self, x):
        if self.backbone_only or self.samples is None:
            outs = self.model.extract_feat(x) if hasattr(self.model, 'extract_feat') else self.model(x)
        else:
            outs = self.model._forward(x, self.samples)
        return tuple(_flatten(outs))


def _flatten(o):
    if isinstance(o, torch.Tensor):
        yield o
    elif isinstance(o, (list, tuple)):
        for i in o:
            yield from _flatten(i)
    elif isinstance(o, dict):
        for i in o.values():
            yield from _flatten(i)
    elif hasattr(o, 'bboxes'):  # InstanceData from an RPN
        yield o.bboxes


def build_model(config: str, cfg_options=None):
    import linattn_mm  # noqa: F401
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope

    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    scope = cfg.get('default_scope', 'mmdet')
    init_default_scope(scope)
    model = MODELS.build(cfg.model)
    model.eval()
    return model, scope


def make_samples(scope: str, h: int, w: int):
    meta = dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w), batch_input_shape=(h, w),
                scale_factor=(1.0, 1.0))
    if scope == 'mmdet':
        from mmdet.structures import DetDataSample
        return [DetDataSample(metainfo=meta)]
    if scope == 'mmseg':
        from mmseg.structures import SegDataSample
        return [SegDataSample(metainfo=meta)]
    return None


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """torch's counter knows the CUDA SDPA kernels but not the CPU flash kernel: 2 FLOPs per MAC."""
    batch = 1
    for s in query_shape[:-2]:
        batch *= s
    return 2 * batch * query_shape[-2] * key_shape[-2] * (query_shape[-1] + value_shape[-1])


def _torch_custom_mapping():
    op = getattr(torch.ops.aten, '_scaled_dot_product_flash_attention_for_cpu', None)
    return {op: _cpu_sdpa_flops} if op is not None else {}


def count(model: nn.Module, x: torch.Tensor):
    from mmengine.analysis import FlopAnalyzer
    from torch.utils.flop_counter import FlopCounterMode

    fa = FlopAnalyzer(model, (x,))
    fa.set_op_handle('aten::scaled_dot_product_attention', sdpa_flop_jit)
    fa.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings('none')
    macs = fa.total()
    skipped = dict(fa.unsupported_ops())
    by_op = dict(fa.by_operator())
    with FlopCounterMode(display=False, custom_mapping=_torch_custom_mapping()) as fc:
        with torch.no_grad():
            model(x)
    return macs, fc.get_total_flops(), skipped, by_op


def main(argv=None):
    p = argparse.ArgumentParser(description='FLOPs (attention included) and parameters of a config')
    p.add_argument('config')
    p.add_argument('--shape', type=int, nargs=2, default=[512, 512], metavar=('H', 'W'))
    p.add_argument('--backbone-only', action='store_true', help='count backbone (+neck) only')
    p.add_argument('--cfg-options', nargs='+', default=None,
                   help='key=value overrides (as tools/train.py)')
    args = p.parse_args(argv)
    opts = None
    if args.cfg_options:
        from mmengine.config import DictAction
        ns = argparse.Namespace()
        DictAction(option_strings=[], dest='o')(None, ns, args.cfg_options)
        opts = ns.o
    model, scope = build_model(args.config, opts)
    h, w = args.shape
    samples = None if args.backbone_only else make_samples(scope, h, w)
    wrapped = _Wrapped(model, samples, args.backbone_only).eval()
    x = torch.randn(1, 3, h, w)
    macs, torch_flops, skipped, by_op = count(wrapped, x)
    params = sum(p.numel() for p in model.parameters())
    part = 'backbone+neck' if args.backbone_only else 'whole model (tensor mode)'
    print(f'config:       {args.config}')
    print(f'input shape:  1x3x{h}x{w}  ({part})')
    print(f'mmengine:     {macs / 1e9:.3f} GMACs (FlopAnalyzer, SDPA handle added)')
    print(f'torch:        {torch_flops / 1e9:.3f} GFLOPs = {torch_flops / 2e9:.3f} GMACs '
          f'(torch.utils.flop_counter)')
    print(f'params:       {params / 1e6:.3f} M')
    if skipped:
        print('not counted by mmengine (elementwise or unknown): ' +
              ', '.join(f'{k} x{v}' for k, v in sorted(skipped.items())))
    return dict(macs=macs, torch_flops=torch_flops, params=params, by_operator=by_op)


if __name__ == '__main__':
    main()
