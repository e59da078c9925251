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


def close_distributed() -> None:
    """Destroy the process group of a distributed run while the interpreter is fully alive. Left to interpreter
    finalisation, gloo's worker threads can abort the process (SIGABRT) after a successful run
    (pytorch/pytorch#179291); seen once in this project's 2-process CPU test."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _use_gloo_without_cuda(cfg) -> None:
    """Distributed runs on a machine without GPUs (torchrun, gloo).

    mmengine 0.10.7 assumes CUDA there: ``init_dist`` calls ``torch.cuda.set_device`` and the DDP wrapper
    gets ``device_ids=[LOCAL_RANK]``. So on CPU we open the gloo process group ourselves (mmengine then
    skips its own init) and wrap the model with :class:`CPUDistributedDataParallel`.
    """
    import torch
    import torch.distributed as dist
    if torch.cuda.is_available():
        return
    env = cfg.setdefault('env_cfg', {})
    env.setdefault('dist_cfg', {})['backend'] = 'gloo'
    if cfg.launcher == 'pytorch' and not dist.is_initialized():
        dist.init_process_group(backend='gloo')
    _register_cpu_ddp()
    cfg.model_wrapper_cfg = dict(type='CPUDistributedDataParallel',
                                 find_unused_parameters=cfg.get('find_unused_parameters', False))


def _register_cpu_ddp() -> None:
    from mmengine.model import MMDistributedDataParallel, revert_sync_batchnorm
    from mmengine.registry import MODEL_WRAPPERS
    if 'CPUDistributedDataParallel' in MODEL_WRAPPERS.module_dict:
        return

    @MODEL_WRAPPERS.register_module()
    class CPUDistributedDataParallel(MMDistributedDataParallel):
        """mmengine's DDP wrapper for CPU processes: no device ids, and SyncBN (CUDA-only in torch)
        reverted to per-process BN, which the log states."""

        def __init__(self, module, device_ids=None, **kwargs):
            from mmengine.logging import print_log
            has_sync = any(isinstance(m, torch.nn.SyncBatchNorm) or 'SyncBatchNorm' in type(m).__name__
                           for m in module.modules())
            if has_sync:
                print_log('SyncBN needs CUDA: using per-process BatchNorm on CPU', logger='current')
                module = revert_sync_batchnorm(module)
            kwargs.setdefault('broadcast_buffers', False)
            super().__init__(module=module, device_ids=None, **kwargs)

    import torch  # noqa: F401  (used in the class body above)


def check_data(cfg, loaders) -> None:
    """Stop with one line naming the missing dataset path, its layout and how to get it (before any model is
    built), for the dataloaders this run will use."""
    from linattn_mm.datasets.layout import check_dataset_cfg
    for name in loaders:
        loader = cfg.get(f'{name}_dataloader')
        if not loader or not loader.get('dataset'):
            continue
        try:
            check_dataset_cfg(loader['dataset'], name)
        except FileNotFoundError as err:
            raise SystemExit(f'error: {err}') from None


def build_runner(cfg):
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)
