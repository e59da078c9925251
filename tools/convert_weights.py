"""Convert an official classification checkpoint into a linattn_mm backbone checkpoint.

    python tools/convert_weights.py SRC DST --model inline_pvt  --arch t
    python tools/convert_weights.py SRC DST --model inline_swin --arch t --attn-type IIIS
    python tools/convert_weights.py SRC DST --model inline_deit --arch deit_t
    python tools/convert_weights.py SRC DST --model taylorshift_vit --arch taylor_t

Sources: InLine (github LeapLabTHU/InLine: inline_pvt / inline_swin / inline_deit) and TaylorShift
(github tobna/TaylorShift) ImageNet checkpoints. The mapping lives next to each backbone
(``convert_official``); this tool loads SRC safely, converts, checks that every backbone tensor is filled
(reporting what was dropped or left missing), and writes ``{'state_dict': ..., 'meta': ...}`` to DST for
``init_cfg=dict(type='Pretrained', checkpoint=DST)``.
"""
import argparse
import os.path as osp
import sys

_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import torch  # noqa: E402

MODELS = {
    'inline_pvt': ('LinPVT', dict(attn_cfg=dict(type='inline'))),
    'inline_swin': ('LinSwin', dict()),
    'inline_cswin': ('LinCSwin', dict()),
    'inline_deit': ('LinViT', dict(attn_cfg=dict(type='inline'))),
    'taylorshift_vit': ('LinViT', dict(attn_cfg=dict(type='taylorshift'))),
}


def convert(src: str, model: str, arch: str, attn_type: str = 'IIIS'):
    """Return (our state dict, the backbone it was checked against, report dict)."""
    from linattn_mm.models import backbones
    from linattn_mm.utils import safe_torch_load
    if model not in MODELS:
        raise SystemExit(f'error: unknown --model {model!r}; choose from {", ".join(MODELS)}')
    cls_name, kw = MODELS[model]
    if cls_name == 'LinSwin':
        kw = dict(kw, attn_type=attn_type)
    backbone = getattr(backbones, cls_name)(arch=arch, **kw)
    ckpt = safe_torch_load(src, map_location='cpu')
    state = ckpt
    for key in ('state_dict', 'model', 'module'):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    converted = backbone.convert_official(dict(state))
    converted = backbone._resize_position_tables(converted)
    own = backbone.state_dict()
    missing = sorted(k for k in own if k not in converted)
    unexpected = sorted(k for k in converted if k not in own)
    mismatched = sorted(k for k in converted if k in own and converted[k].shape != own[k].shape)
    if mismatched:
        raise SystemExit(f'error: shape mismatch for {mismatched[:5]}: is --arch {arch!r} the right size?')
    dropped = sorted(k for k in state if k not in converted)
    out = {k: v for k, v in converted.items() if k in own}
    return out, backbone, dict(missing=missing, unexpected=unexpected, dropped=dropped)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('src')
    p.add_argument('dst')
    p.add_argument('--model', required=True, choices=list(MODELS))
    p.add_argument('--arch', required=True, help="preset of the backbone, e.g. t / s / deit_t / taylor_t")
    p.add_argument('--attn-type', default='IIIS', help='LinSwin stage letters of the checkpoint')
    args = p.parse_args(argv)
    state, backbone, rep = convert(args.src, args.model, args.arch, args.attn_type)
    backbone.load_state_dict(state, strict=False)
    torch.save({'state_dict': state, 'meta': dict(source=osp.basename(args.src), model=args.model,
                                                  arch=args.arch)}, args.dst)
    print(f'wrote {len(state)} tensors to {args.dst}')
    print(f'dropped from the source (classifier etc.): {rep["dropped"]}')
    print(f'left at initialisation (new in the dense-prediction backbone): {rep["missing"]}')
    if rep['unexpected']:
        print(f'not used: {rep["unexpected"]}')
    return rep


if __name__ == '__main__':
    main()
