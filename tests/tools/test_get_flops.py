"""tools/get_flops.py counts attention (mmengine's counter alone counts SDPA as zero) and agrees with torch's."""
import os
import sys

import pytest

pytest.importorskip('mmseg')
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, 'tools'))
import get_flops  # noqa: E402

sys.path.pop(0)
CFG = os.path.join(ROOT, 'configs', 'sem_fpn', 'fpn_linpvt-t-inline_4xb4-40k_ade20k-512x512.py')


@pytest.mark.parametrize('attn', ['softmax', 'inline'])
def test_counts_agree_and_include_attention(attn, capsys):
    res = get_flops.main([CFG, '--shape', '64', '96', '--cfg-options', f'model.backbone.attn_cfg.type={attn}'])
    out = capsys.readouterr().out
    assert 'GMACs' in out and 'params' in out
    assert res['macs'] > 0 and res['params'] > 1e6
    # the two independent counters agree within 5% (they differ only in ops one of them skips)
    assert abs(res['macs'] - res['torch_flops'] / 2) / res['macs'] < 0.05
    if attn == 'softmax':
        assert res['by_operator'].get('scaled_dot_product_attention', 0) > 0
    else:  # InLine's matmuls are ordinary matmuls, counted by both
        assert res['by_operator'].get('matmul', 0) > 0


def test_softmax_costs_more_than_inline_at_high_resolution():
    soft = get_flops.main([CFG, '--shape', '256', '256', '--backbone-only',
                           '--cfg-options', 'model.backbone.attn_cfg.type=softmax'])
    lin = get_flops.main([CFG, '--shape', '256', '256', '--backbone-only'])
    assert soft['macs'] > 1.5 * lin['macs']
