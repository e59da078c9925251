"""Our timm models as timm models (tiny archs, fast): feature wrappers and indices, intermediates and pruning,
factory kwargs and the meta device, gradient checkpointing, optimiser groups, checkpoints, bad input.
timm's own test_models.py runs on the real presets in test_timm_suite.py."""
import pytest
import torch

timm = pytest.importorskip('timm')
import linattn_mm.models  # noqa: E402,F401  (registers the models)
from linattn_mm.models.backbones import LinCSwin, LinPVT, LinSwin, LinViT  # noqa: E402
from tests.models.test_backbones import TINY as BACKBONE_TINY  # noqa: E402

# the backbone test suite's tiny archs, by timm model name
TINY = {name: dict(arch=BACKBONE_TINY[cls]['arch']) for name, cls in (
    ('linpvt_t_inline', LinPVT), ('linswin_t_inline', LinSwin), ('lindeit_t_inline', LinViT),
    ('lincswin_t_inline', LinCSwin))}
NAMES = list(TINY)


def create(name, **kw):
    torch.manual_seed(0)
    return timm.create_model(name, drop_path_rate=0., **TINY[name], **kw).eval()


@pytest.mark.parametrize('name', NAMES)
def test_feature_classes_and_negative_indices(name):
    x = torch.randn(2, 3, 67, 45)
    ref = create(name, features_only=True, out_indices=(1, 3))
    assert ref.feature_info.reduction() == [8, 32]
    want = ref(x)
    for cls in ('getter', 'hook', 'fx'):
        m = create(name, features_only=True, out_indices=(-3, -1), feature_cls=cls)
        assert m.feature_info.channels() == ref.feature_info.channels()
        got = m(x)
        got = list(got.values()) if isinstance(got, dict) else got
        assert len(got) == 2
        for g, w, s in zip(got, want, (8, 32)):
            assert g.shape[-2:] == (-(-67 // s), -(-45 // s))
            torch.testing.assert_close(g, w)


@pytest.mark.parametrize('name', NAMES)
def test_intermediates_prune_and_unbuilt_levels(name):
    m = create(name, num_classes=5, feature_indices=(0, 1, 2, 3))
    x = torch.randn(1, 3, 64, 64)
    final, inter = m.forward_intermediates(x)
    torch.testing.assert_close(final, m.forward_features(x))
    assert [t.shape[1] for t in inter] == [f['num_chs'] for f in m.feature_info]
    assert m.forward_intermediates(x, indices=[-1], intermediates_only=True)[0].shape == inter[-1].shape
    clf = create(name)  # a classifier builds its last level only
    with pytest.raises(ValueError, match='not built'):
        clf.forward_intermediates(x, indices=[0])
    assert clf.prune_intermediate_layers([-1]) == [3]
    assert clf(x).ndim == 4 and clf.num_classes == 0  # head and pooling removed


@pytest.mark.parametrize('name', NAMES)
def test_classifier_every_parameter_trains(name):
    m = create(name, num_classes=3).train()
    m(torch.randn(2, 3, 40, 56)).square().mean().backward()
    assert [n for n, p in m.named_parameters() if p.grad is None] == []


@pytest.mark.parametrize('name', NAMES)
def test_meta_device_dtype_and_grad_checkpointing(name):
    m = create(name, device='meta', dtype=torch.bfloat16)
    assert {t.device.type for t in [*m.parameters(), *m.buffers()]} == {'meta'}
    assert {p.dtype for p in m.parameters()} == {torch.bfloat16}
    assert m(torch.randn(1, 3, 50, 70, device='meta', dtype=torch.bfloat16)).shape == (1, 1000)
    m = create(name, num_classes=4).train()
    x = torch.randn(2, 3, 48, 48)
    m(x).sum().backward()
    g0 = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    m.set_grad_checkpointing(True)
    assert all(b.with_cp for b in m.backbone.modules() if hasattr(b, 'with_cp'))
    m(x).sum().backward()
    for a, b in zip(g0, [p.grad for p in m.parameters()]):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize('name', NAMES)
def test_optimizer_groups(name):
    from timm.optim import create_optimizer_v2
    m = create(name)
    names = {n for n, _ in m.named_parameters()}
    assert m.no_weight_decay() <= names
    opt = create_optimizer_v2(m, 'adamw', lr=1e-3, weight_decay=0.05, layer_decay=0.7)
    scales = {g['lr_scale'] for g in opt.param_groups}
    assert len(scales) > 2  # stem, blocks, head get different learning rates


def test_checkpoints(tmp_path):
    name = 'linpvt_t_inline'
    src = create(name, num_classes=10)
    torch.save(src.state_dict(), tmp_path / 'ours.pth')
    x = torch.randn(1, 3, 64, 64)
    m = create(name, num_classes=10, checkpoint_path=str(tmp_path / 'ours.pth'))
    torch.testing.assert_close(m(x), src(x))
    m = create(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / 'ours.pth')))
    torch.testing.assert_close(m.forward_features(x), src.forward_features(x))  # 1000 classes: new head
    # official InLine-PVT layout: backbone keys at the top level, final `norm`, `head` (1000 classes)
    official = {k[len('backbone.'):]: v for k, v in src.state_dict().items() if k.startswith('backbone.')}
    official.update({'norm.weight': src.norm.weight, 'norm.bias': src.norm.bias,
                     'head.weight': torch.randn(1000, 48), 'head.bias': torch.randn(1000)})
    torch.save({'model': official}, tmp_path / 'official.pth')
    m = create(name, pretrained=True, num_classes=10, pretrained_cfg_overlay=dict(file=str(tmp_path / 'official.pth')))
    torch.testing.assert_close(m.forward_features(x), src.forward_features(x))
    feats = create(name, pretrained=True, features_only=True,
                   pretrained_cfg_overlay=dict(file=str(tmp_path / 'official.pth')))
    torch.testing.assert_close(feats(x)[-1], src.backbone(x)[-1])
    torch.save({'model': {'patch_embed1.proj.weight': official['patch_embed1.proj.weight']}}, tmp_path / 'bad.pth')
    with pytest.raises(ValueError, match='lacks'):
        create(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / 'bad.pth')))


def test_bad_input():
    with pytest.raises(ValueError, match='no hosted weights'):
        create('linpvt_t_inline', pretrained=True)
    with pytest.raises(ValueError, match='out_indices'):
        create('linpvt_t_inline', features_only=True, out_indices=(4,))
    with pytest.raises(TypeError, match='features_only'):
        create('linpvt_t_inline', out_indices=(1,))
    with pytest.raises(ValueError, match='global_pool'):
        create('linpvt_t_inline', global_pool='catavgmax')
    with pytest.raises(TypeError):
        create('linpvt_t_inline', not_a_model_arg=1)


def test_in_chans_and_pool():
    m = create('linswin_t_inline', in_chans=1, num_classes=0, global_pool='')
    assert m.in_chans == 1 and m.default_cfg['input_size'] == (3, 224, 224)
    assert m(torch.randn(1, 1, 64, 64)).shape == (1, m.num_features, 2, 2)
    m.reset_classifier(7, 'avg')
    assert m(torch.randn(1, 1, 64, 64)).shape == (1, 7) and m.get_classifier().out_features == 7
