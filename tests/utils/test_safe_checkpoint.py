"""Resume on torch >= 2.6 with weights_only kept on, and refusal of pickle payloads."""
import os
import uuid

import pytest
import torch
from torch import nn

mmengine = pytest.importorskip('mmengine')
from mmengine.hooks import Hook  # noqa: E402
from mmengine.model import BaseModel  # noqa: E402
from mmengine.runner import Runner, load_checkpoint  # noqa: E402

import linattn_mm  # noqa: E402,F401  (installs the safe loader)
from linattn_mm.utils import UnsafeCheckpointError  # noqa: E402


class ToyModel(BaseModel):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))

    def forward(self, inputs, data_samples=None, mode='tensor'):
        x = torch.stack(inputs) if isinstance(inputs, (list, tuple)) else inputs
        y = torch.stack(data_samples) if isinstance(data_samples, (list, tuple)) else data_samples
        out = self.net(x)
        if mode == 'loss':
            return dict(loss=((out - y) ** 2).mean())
        return out


class ToyDataset(torch.utils.data.Dataset):
    metainfo = dict(classes=('a', 'b'))

    def __init__(self):
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(24, 4, generator=g)
        self.y = torch.randn(24, 1, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return dict(inputs=self.x[i], data_samples=self.y[i])


class _Interrupted(RuntimeError):
    pass


class InterruptAfterEpoch(Hook):
    """Simulates a killed job: raises after the checkpoint of ``epoch`` has been written."""
    priority = 'LOWEST'  # after CheckpointHook (VERY_LOW)

    def __init__(self, epoch):
        self.epoch = epoch

    def after_train_epoch(self, runner):
        if runner.epoch + 1 == self.epoch:
            raise _Interrupted


def make_runner(work_dir, max_epochs, resume_from=None, interrupt_after=None):
    return Runner(
        custom_hooks=[InterruptAfterEpoch(interrupt_after)] if interrupt_after else None,
        model=ToyModel(),
        work_dir=str(work_dir),
        experiment_name=f'toy_{uuid.uuid4().hex}',
        train_dataloader=dict(dataset=ToyDataset(), batch_size=4, num_workers=0,
                              sampler=dict(type='DefaultSampler', shuffle=True, seed=0)),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.05, momentum=0.9)),
        param_scheduler=dict(type='MultiStepLR', milestones=[2], gamma=0.1, by_epoch=True),
        train_cfg=dict(by_epoch=True, max_epochs=max_epochs),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1),
                           logger=dict(type='LoggerHook', interval=2)),
        randomness=dict(seed=0),
        load_from=resume_from,
        resume=resume_from is not None,
        default_scope='mmengine',
        log_level='ERROR',
    )


def test_resume_is_bitwise_equal_to_uninterrupted(tmp_path):
    full = make_runner(tmp_path / 'full', 3)
    full.train()
    part = make_runner(tmp_path / 'part', 3, interrupt_after=2)  # same config, killed after epoch 2
    with pytest.raises(_Interrupted):
        part.train()
    assert not (tmp_path / 'part' / 'epoch_3.pth').exists()
    ckpt = tmp_path / 'part' / 'epoch_2.pth'
    assert ckpt.is_file()
    # the checkpoint holds the message hub's HistoryBuffers and loads with weights_only=True
    raw = torch.load(ckpt, weights_only=True)
    assert raw['message_hub']['log_scalars']
    resumed = make_runner(tmp_path / 'resumed', 3, resume_from=str(ckpt))
    resumed.train()
    assert resumed.epoch == 3
    a = full.model.state_dict()
    b = resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the optimiser and scheduler state were restored too, not merely the weights
    assert resumed.optim_wrapper.get_lr()['lr'] == full.optim_wrapper.get_lr()['lr']


def test_history_buffer_pickles_as_plain_data():
    from mmengine.logging import HistoryBuffer
    hb = HistoryBuffer()
    hb.update(1.0)
    hb.update(3.0)
    state = hb.__getstate__()
    assert 'statistics_methods' not in state
    assert set(state) == {'max_length', '_log_history', '_count_history'}


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


def test_pickle_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / 'payload_ran'
    model = ToyModel()
    evil = tmp_path / 'evil.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {'x': _Payload(marker)}}, evil)
    assert not marker.exists()

    with pytest.raises(UnsafeCheckpointError, match='evil.pth'):
        load_checkpoint(model, str(evil))
    assert not marker.exists()

    runner = make_runner(tmp_path / 'r', 1, resume_from=str(evil))
    with pytest.raises(UnsafeCheckpointError):
        runner.train()
    assert not marker.exists()


def test_no_global_escape_hatch_is_set():
    assert os.environ.get('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD') in (None, '', '0')
