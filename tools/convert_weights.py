"""Convert an official classification checkpoint into a linattn_mm backbone checkpoint.

    python tools/convert_weights.py SRC DST --model inline_pvt  --arch t          # InLine-PVT T/S/M/L: t s m l
    python tools/convert_weights.py SRC DST --model inline_swin --arch b          # InLine-Swin t s b b_384
    python tools/convert_weights.py SRC DST --model inline_deit --arch deit_s     # InLine-DeiT deit_t/s/b
    python tools/convert_weights.py SRC DST --model taylorshift_vit --arch taylor_t

Sources: InLine (github LeapLabTHU/InLine) and TaylorShift (github tobna/TaylorShift) checkpoints, in any
layout their training code writes (``model`` / ``model_state`` / ``state_dict``, DDP ``module.`` prefixes, a
yacs config entry, which is skipped and not executed); ``--ema`` takes the EMA weights. The loading path is
the one ``init_cfg=dict(type='Pretrained', ...)`` uses (``linattn_mm.models.backbones._pretrained``): the
conversion must fill every backbone tensor (the dense-prediction additions excepted, listed as "new"), or the
tool exits non-zero with the missing tensors and the ``--arch`` the checkpoint looks like. DST holds
``{'state_dict': ..., 'meta': ...}`` for ``init_cfg=dict(type='Pretrained', checkpoint=DST)``.
"""
import argparse
import os.path as osp
import sys

_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import torch  # noqa: E402

# --model -> (backbone class, constructor defaults)
MODELS = {
    'inline_pvt': ('LinPVT', dict(attn_cfg=dict(type='inline'))),
    'inline_swin': ('LinSwin', dict()),
    'inline_cswin': ('LinCSwin', dict()),
    'inline_deit': ('LinViT', dict(attn_cfg=dict(type='inline'))),
    'taylorshift_vit': ('LinViT', dict(attn_cfg=dict(type='taylorshift'))),
}


def build_backbone(model: str, arch: str, attn_type=None, window_size=None):
    from linattn_mm.models import backbones
    if model not in MODELS:
        raise SystemExit(f'error: unknown --model {model!r}; choose from {", ".join(MODELS)}')
    cls_name, kw = MODELS[model]
    kw = dict(kw)
    if attn_type is not None:  # stage letters: LinSwin ('I', 'S', 'M') and LinCSwin ('I', 'S')
        if cls_name not in ('LinSwin', 'LinCSwin'):
            raise SystemExit(f'error: --attn-type applies to --model inline_swin / inline_cswin only, not {model}')
        kw['attn_type'] = attn_type
    if window_size is not None:
        if cls_name != 'LinSwin':
            raise SystemExit(f'error: --window-size applies to --model inline_swin only, not {model}')
        kw['window_size'] = window_size
    return getattr(backbones, cls_name)(arch=arch, **kw)


def convert(src: str, model: str, arch: str, attn_type=None, window_size=None, use_ema: bool = False):
    """Return (our state dict, the backbone it was checked against, report dict).

    Raises:
        PretrainedMismatchError: the checkpoint does not fill the backbone (the message names the missing
            tensors and the likely ``--arch``).
    """
    from linattn_mm.models.backbones._pretrained import prepare_pretrained
    backbone = build_backbone(model, arch, attn_type, window_size)
    state, rep = prepare_pretrained(backbone, src, use_ema=use_ema, prefix='backbone.')
    rep = dict(rep, missing=rep['new'], unexpected=rep['unused'])  # names of the first version of this tool
    return state, backbone, rep


def main(argv=None):
    from linattn_mm.models.backbones._pretrained import PretrainedMismatchError
    from linattn_mm.utils import UnsafeCheckpointError
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('src')
    p.add_argument('dst')
    p.add_argument('--model', required=True, choices=list(MODELS))
    p.add_argument('--arch', required=True,
                   help='preset of the backbone: t s m l (PVT), t s b b_384 (Swin), deit_t deit_s deit_b, '
                        'taylor_t taylor_s')
    p.add_argument('--attn-type', default=None,
                   help="LinSwin / LinCSwin stage letters, default the preset's (InLine-Swin IIIS, IISS, "
                        "IIMS2; InLine-CSwin IISS)")
    p.add_argument('--window-size', type=int, nargs='+', default=None,
                   help="LinSwin window of 'S' blocks (one, or one per stage), default the preset's (7; 12 "
                        "for b_384)")
    p.add_argument('--ema', action='store_true', help='convert the EMA weights (state_dict_ema / model_ema)')
    args = p.parse_args(argv)
    ws = args.window_size[0] if args.window_size and len(args.window_size) == 1 else args.window_size
    try:
        state, backbone, rep = convert(args.src, args.model, args.arch, args.attn_type, ws, use_ema=args.ema)
    except (PretrainedMismatchError, UnsafeCheckpointError, ValueError) as err:
        raise SystemExit(f'error: {err}') from None
    backbone.load_state_dict(state, strict=False)
    torch.save({'state_dict': state, 'meta': dict(source=osp.basename(args.src), model=args.model,
                                                  arch=args.arch, ema=args.ema)}, args.dst)
    print(f'wrote {len(state)} of {len(backbone.state_dict())} backbone tensors to {args.dst} '
          f'(from entry {rep["where"]}, {"EMA" if args.ema else "non-EMA"} weights)')
    for note in rep['notes']:
        print(note)
    print(f'dropped from the source (classifier etc.): {rep["dropped"]}')
    print(f'new in the dense-prediction backbone (left at initialisation): {rep["new"]}')
    if rep['unused']:
        print(f'not used: {rep["unused"]}')
    return rep


if __name__ == '__main__':
    main()
