"""Evaluate a checkpoint: ``python tools/test.py CONFIG CHECKPOINT [--show-dir DIR]``.

Prints the config's metrics (COCO bbox/segm mAP for detection, mIoU for segmentation) and, with
``--show-dir``, draws predictions with the toolbox's own visualisation hook.
"""
import argparse
import os.path as osp

from _cli import add_common_args, build_runner, check_data, close_distributed, load_config


def parse_args(argv=None):
    p = argparse.ArgumentParser(description='Test (evaluate) a linattn_mm detector or segmentor')
    add_common_args(p)
    p.add_argument('checkpoint', help='checkpoint file')
    p.add_argument('--show-dir', help='save drawn predictions under WORK_DIR/TIMESTAMP/SHOW_DIR')
    p.add_argument('--out', help='dump raw predictions to this pickle file (detection: CocoMetric format)')
    p.add_argument('--tta', action='store_true', help='test-time augmentation (config needs tta_model)')
    return p.parse_args(argv)


def _enable_visualisation(cfg, show_dir: str) -> None:
    hooks = cfg.get('default_hooks', {})
    vis = hooks.get('visualization')
    if vis is None:
        raise SystemExit('error: --show-dir needs default_hooks.visualization in the config '
                         '(mmdet: DetVisualizationHook, mmseg: SegVisualizationHook)')
    vis['draw'] = True
    vis['interval'] = 1
    if 'Det' in vis.get('type', ''):
        vis['test_out_dir'] = show_dir       # mmdet's hook writes under work_dir/timestamp/show_dir
    else:
        cfg.visualizer['save_dir'] = osp.join(cfg.work_dir, show_dir)  # mmseg's hook uses the visualizer


def main(argv=None):
    args = parse_args(argv)
    # --checkpoint is positional after config; add_common_args declared config first.
    cfg = load_config(args)
    cfg.load_from = args.checkpoint
    if args.show_dir:
        _enable_visualisation(cfg, args.show_dir)
    if args.tta:
        if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
            raise SystemExit('error: --tta needs tta_model and tta_pipeline in the config')
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model
    if args.out:
        dump = dict(type='DumpResults', out_file_path=args.out)
        if isinstance(cfg.test_evaluator, (list, tuple)):
            cfg.test_evaluator = list(cfg.test_evaluator) + [dump]
        else:
            cfg.test_evaluator = [cfg.test_evaluator, dump]
    check_data(cfg, ['test'])
    runner = build_runner(cfg)
    try:
        return runner.test()
    finally:
        close_distributed()


if __name__ == '__main__':
    main()
