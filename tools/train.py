"""Train a detector or segmentor from a config: ``python tools/train.py CONFIG [--work-dir D] [--resume]``.

One script for both tasks: the config's ``default_scope`` picks mmdet or mmseg. Distributed training:
``tools/dist_train.sh CONFIG NUM_PROCS`` (torchrun; gloo on CPU, NCCL on GPU).
"""
import argparse

from _cli import add_common_args, build_runner, check_data, close_distributed, load_config


def parse_args(argv=None):
    p = argparse.ArgumentParser(description='Train a linattn_mm detector or segmentor')
    add_common_args(p)
    p.add_argument('--resume', nargs='?', type=str, const='auto',
                   help='resume from this checkpoint, or (no value) from the latest in the work dir')
    p.add_argument('--amp', action='store_true', help='mixed-precision training (needs CUDA)')
    p.add_argument('--auto-scale-lr', action='store_true',
                   help='scale the learning rate by the actual batch size (config needs auto_scale_lr)')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args)

    if args.amp:
        import torch
        if not torch.cuda.is_available():
            raise SystemExit('error: --amp needs a CUDA device (mmengine\'s AmpOptimWrapper); '
                             'drop --amp on CPU')
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.loss_scale = 'dynamic'
    if args.auto_scale_lr:
        if 'auto_scale_lr' not in cfg or 'base_batch_size' not in cfg.auto_scale_lr:
            raise SystemExit('error: --auto-scale-lr needs auto_scale_lr=dict(base_batch_size=...) '
                             'in the config')
        cfg.auto_scale_lr.enable = True

    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        cfg.resume, cfg.load_from = True, args.resume

    check_data(cfg, ['train', 'val'] if cfg.get('val_cfg') else ['train'])
    runner = build_runner(cfg)
    try:
        runner.train()
    finally:
        close_distributed()
    return runner


if __name__ == '__main__':
    main()
