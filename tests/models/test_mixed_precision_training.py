"""Every attention of the table trains a tiny LinPVT under fp16 autocast + a dynamic loss scaler
(``torch.amp.GradScaler``, as mmengine's ``AmpOptimWrapper``) and under bf16 autocast, about as it does in fp32.

The training loop is ``tools/amp_check.py``'s (the script prints the same table at a larger size); here the
backbone is tiny and the steps few, so the whole table stays within CI's budget. The inputs are N(0, 3^2) and
the learning rate is 3e-3, which drives the features to large magnitudes within the few steps.
"""
import importlib.util
import math
import os

import pytest

from linattn_mm.layers import ATTENTIONS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_spec = importlib.util.spec_from_file_location('amp_check', os.path.join(ROOT, 'tools', 'amp_check.py'))
amp_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(amp_check)

TINY = dict(embed_dims=[16, 32, 32, 48], num_heads=[1, 2, 2, 2], mlp_ratios=[2, 2, 2, 2], depths=[1, 1, 1, 1])
# options that keep the random-feature / landmark methods meaningful at tiny sizes (as tests/models/test_backbones.py)
ATTN_OPTS = {'performer': dict(num_features=16), 'nystrom': dict(num_landmarks=8), 'linformer': dict(proj_len=8),
             'longformer': dict(window_size=5), 'bigbird': dict(num_random_blocks=1),
             'longshort': dict(num_landmarks=4), 'rfa': dict(num_features=16),
             'cswin': dict(split_size=None)}  # stripes need an even head count; stage 1 here has one head
FP16_STEPS, BF16_STEPS = 16, 8


def _run(attn, precision, steps):
    return amp_check.train(attn, precision, steps, arch=TINY, hw=(48, 64), lr=3e-3, attn_opts=ATTN_OPTS)


def _skipped_after_first_adjustment(skipped):
    """Skipped steps after the first run of consecutive skips (the scaler finding its scale)."""
    i = 1
    while i < len(skipped) and skipped[i] == skipped[i - 1] + 1:
        i += 1
    return list(skipped[i:])


def test_skip_counting():
    assert _skipped_after_first_adjustment([]) == []
    assert _skipped_after_first_adjustment([3, 4, 5]) == []
    assert _skipped_after_first_adjustment([3, 4, 9, 12]) == [9, 12]
    assert _skipped_after_first_adjustment([7]) == []


@pytest.mark.parametrize('attn', sorted(ATTENTIONS))
def test_trains_under_fp16_gradscaler_and_bf16(attn):
    fp32 = _run(attn, 'fp32', FP16_STEPS)['losses']
    fp16 = _run(attn, 'fp16', FP16_STEPS)
    bf16 = _run(attn, 'bf16', BF16_STEPS)['losses']
    assert all(math.isfinite(x) for x in fp16['losses'] + bf16), (fp16['losses'], bf16)
    late = _skipped_after_first_adjustment(fp16['skipped'])
    assert len(late) <= 2, f'{attn}: fp16 skipped steps {fp16["skipped"]} (scales {fp16["scales"]})'
    assert fp16['scales'][-1] >= 1., f'{attn}: the loss scale fell to {fp16["scales"][-1]}'
    # the loss falls about as much as in fp32 on the same data (a skipped step is a step lost)
    drop32, drop16 = fp32[0] - fp32[-1], fp16['losses'][0] - fp16['losses'][-1]
    assert drop32 > 0 and drop16 >= 0.8 * drop32, (attn, fp32, fp16['losses'])
    drop32_bf, drop_bf = fp32[0] - fp32[BF16_STEPS - 1], bf16[0] - bf16[-1]
    assert drop_bf >= 0.8 * drop32_bf, (attn, fp32[:BF16_STEPS], bf16)
