"""Pins the number of aten ops one block's forward dispatches (per attention family), so per-launch overhead
cannot creep back. The numbers are ceilings measured on a (1, 14x14, 32) input; lower them when a change cuts ops.
Speed itself lives in tools/benchmark.py, never here."""
import pytest
import torch

from linattn_mm.models.backbones._blocks import Block
from linattn_mm.utils.op_count import count_aten_ops

# attention -> (options, ceiling); before the overhead cuts of the model-speed work: window 122 (9 slice-fills
# per forward for the shift mask, a padding mask built with nothing padded, two host syncs); inline 68 (the local
# term's map reshaped twice)
CASES = {
    'inline': ({}, 67),
    'taylorshift': ({}, 71),
    'linformer': (dict(proj_len=8), 45),
    'softmax': ({}, 31),
    'window': (dict(window_size=7, shift_size=3), 89),
    'sra': (dict(sr_ratio=2, qkv_layout='q_kv'), 41),
}


@pytest.mark.parametrize('attn', sorted(CASES))
def test_block_forward_op_count(attn):
    opts, ceiling = CASES[attn]
    torch.manual_seed(0)
    block = Block(32, 2, dict(type=attn, **opts), mlp_ratio=2.).eval()
    with torch.no_grad():
        counts = count_aten_ops(block, torch.randn(1, 14 * 14, 32), (14, 14))
    assert '_local_scalar_dense' not in counts, 'a host sync (.item()/bool(tensor)) in forward'
    assert 'dropout' not in counts and 'native_dropout' not in counts
    assert sum(counts.values()) <= ceiling, f'{sum(counts.values())} ops > {ceiling}: {dict(counts.most_common())}'
