"""Backbones build only what ``out_indices`` returns: for any subset every parameter gets a gradient (an unused
one stops mmengine's DDP), the returned maps are those of the full model, and unused stages are absent."""
import itertools

import pytest
import torch

from linattn_mm.models.backbones import LinCSwin, LinPVT, LinSwin, LinViT

TINY = {
    LinPVT: dict(arch=dict(embed_dims=[16, 32, 32, 48], num_heads=[1, 2, 2, 2], mlp_ratios=[2, 2, 2, 2],
                           depths=[1, 1, 1, 1]),
                   attn_cfg='sra', overlap_patch_embed=True, mlp='dwconv', stage_norm=True),
    LinSwin: dict(arch=dict(embed_dims=16, depths=[1, 1, 1, 1], num_heads=[1, 2, 2, 4]),
                    attn_cfg=[dict(type='inline')] * 3 + [dict(type='window')]),
    LinViT: dict(arch=dict(embed_dims=32, depth=1, num_heads=2)),
    LinCSwin: dict(arch=dict(embed_dims=16, depths=[1, 1, 1, 1], num_heads=[2, 2, 2, 4])),
}
SUBSETS = [s for r in (1, 2, 3) for s in itertools.combinations(range(4), r)]


@pytest.mark.parametrize('cls', list(TINY), ids=lambda c: c.__name__)
def test_every_parameter_gets_a_gradient_for_any_out_indices(cls):
    torch.manual_seed(0)
    full = cls(**TINY[cls], drop_path_rate=0.).eval()
    x = torch.randn(1, 3, 61, 75)
    with torch.no_grad():
        ref = full(x)
    for subset in SUBSETS:
        m = cls(**TINY[cls], drop_path_rate=0., out_indices=subset).eval()
        missing, unexpected = m.load_state_dict(full.state_dict(), strict=False)
        assert not missing, (subset, missing)
        outs = m(x)
        for o, i in zip(outs, subset):
            torch.testing.assert_close(o, ref[i])
        sum(o.square().mean() for o in outs).backward()
        no_grad = [n for n, p in m.named_parameters() if p.grad is None]
        assert not no_grad, (subset, no_grad)


def test_unused_modules_are_not_built():
    assert not hasattr(LinViT(**TINY[LinViT], out_indices=(1, 2, 3)), 'fpn1')
    swin = LinSwin(**TINY[LinSwin], out_indices=(0, 1))
    assert len(swin.layers) == 2 and swin.layers[1].downsample is None
    pvt = LinPVT(**TINY[LinPVT], out_indices=(0, 2))
    assert hasattr(pvt, 'block3') and not hasattr(pvt, 'block4') and not hasattr(pvt, 'norm4')
    assert pvt._stage_modules(3) == [] and swin._stage_modules(3) == []
