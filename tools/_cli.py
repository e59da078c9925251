"""Shared argument handling of tools/train.py and tools/test.py (OpenMMLab shape, one pair for both tasks).

The config's ``default_scope`` ('mmdet' or 'mmseg') decides which toolbox's registries the runner uses;
importing :mod:`linattn_mm` registers our backbones and makes checkpoint loading safe on torch >= 2.6.
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
import sys

# Running `python tools/train.py` puts tools/ on sys.path, not the repository root.
_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('config', help='config file path')
    parser.add_argument('--work-dir', help='where logs, checkpoints and visualisations go')
    parser.add_argument('--cfg-options', nargs='+', action=_dict_action(),
                        help='override config settings, key=value (e.g. train_cfg.max_iters=100)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='job launcher (tools/dist_train.sh uses pytorch = torchrun)')
    # torch.distributed.launch passes --local-rank; torchrun sets LOCAL_RANK.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def _dict_action():
    from mmengine.config import DictAction
    return DictAction


def load_config(args: argparse.Namespace):
    """Read the config, apply CLI overrides and the work_dir rule (CLI > config > configs' file name)."""
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    if not osp.isfile(args.config):
        raise SystemExit(f'error: config file {args.config!r} does not exist '
                         f'(configs live under configs/, e.g. configs/nuclei/...)')
    import linattn_mm  # noqa: F401  (safe checkpoint loading, registries)
    from mmengine.config import Config

    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    if args.launcher != 'none':
        _use_gloo_without_cuda(cfg)
    return cfg


def _use_gloo_without_cuda(cfg) -> None:
    """NCCL needs GPUs: on a CPU machine the distributed runner talks over gloo."""
    import torch
    if torch.cuda.is_available():
        return
    env = cfg.setdefault('env_cfg', {})
    dist_cfg = env.setdefault('dist_cfg', {})
    dist_cfg['backend'] = 'gloo'


def build_runner(cfg):
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)
