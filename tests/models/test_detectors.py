"""Linear-DETR: the mmcv-compatible attention, and batch independence under mmdet's padding masks."""
import copy

import pytest
import torch

pytest.importorskip('mmdet')
pytest.importorskip('mmcv.ops')
from mmdet.structures import DetDataSample  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402

import linattn_mm  # noqa: E402,F401
from linattn_mm.models.detectors import BRIDGE_ATTENTIONS, LinearDETR, LinearMultiheadAttention  # noqa: E402
from linattn_mm.models.detectors.attention_bridge import valid_hw  # noqa: E402

C, HEADS = 32, 4
SEEDS = ('linformer', 'inline', 'taylorshift')


def _attn_cfg(attn, grid):
    if attn != 'linformer':
        return dict(type=attn)
    return dict(type='linformer', proj_len=8, ref_shape=(4, 6)) if grid else dict(type='linformer', proj_len=4,
                                                                                   ref_len=10)


def tiny_detr_cfg(attn='linformer', dropout=0.1):
    def mha(grid):
        return dict(embed_dims=C, num_heads=HEADS, dropout=dropout, batch_first=True, attn_cfg=_attn_cfg(attn, grid))
    ffn = dict(embed_dims=C, feedforward_channels=64, num_fcs=2, ffn_drop=dropout, act_cfg=dict(type='ReLU'))
    return dict(
        type='linattn_mm.LinearDETR', num_queries=10,
        data_preprocessor=dict(type='DetDataPreprocessor', mean=[123.675, 116.28, 103.53],
                               std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_size_divisor=1),
        backbone=dict(type='ResNet', depth=18, num_stages=4, out_indices=(3, ), frozen_stages=1,
                      norm_cfg=dict(type='BN', requires_grad=False), norm_eval=True, style='pytorch'),
        neck=dict(type='ChannelMapper', in_channels=[512], kernel_size=1, out_channels=C, act_cfg=None,
                  norm_cfg=None, num_outs=1),
        encoder=dict(num_layers=2, layer_cfg=dict(self_attn_cfg=mha(True), ffn_cfg=ffn)),
        decoder=dict(num_layers=2, layer_cfg=dict(self_attn_cfg=mha(False), cross_attn_cfg=mha(True), ffn_cfg=ffn),
                     return_intermediate=True),
        positional_encoding=dict(num_feats=C // 2, normalize=True),
        bbox_head=dict(type='DETRHead', num_classes=3, embed_dims=C,
                       loss_cls=dict(type='CrossEntropyLoss', bg_cls_weight=0.1, use_sigmoid=False, loss_weight=1.0,
                                     class_weight=1.0),
                       loss_bbox=dict(type='L1Loss', loss_weight=5.0),
                       loss_iou=dict(type='GIoULoss', loss_weight=2.0)),
        train_cfg=dict(assigner=dict(type='HungarianAssigner', match_costs=[
            dict(type='ClassificationCost', weight=1.), dict(type='BBoxL1Cost', weight=5.0, box_format='xywh'),
            dict(type='IoUCost', iou_mode='giou', weight=2.0)])),
        test_cfg=dict(max_per_img=10))


def build(cfg):
    from mmdet.registry import MODELS
    init_default_scope('mmdet')
    model = MODELS.build(copy.deepcopy(cfg))
    model.init_weights()
    return model


def _samples(img_shapes, batch_shape):
    return [DetDataSample(metainfo=dict(img_shape=s, batch_input_shape=batch_shape)) for s in img_shapes]


def test_built_through_mmdet_registry_with_our_layers():
    model = build(tiny_detr_cfg('linformer'))
    assert isinstance(model, LinearDETR)
    layer = model.decoder.layers[0]
    assert isinstance(model.encoder.layers[0].self_attn, LinearMultiheadAttention)
    assert layer.self_attn.attn_type == layer.cross_attn.attn_type == 'linformer'
    assert model.encoder.layers[0].self_attn.grid_keys and layer.cross_attn.grid_keys
    assert not layer.self_attn.grid_keys


@pytest.mark.parametrize('attn', SEEDS + ('softmax', 'linear', 'relu', 'focused', 'performer'))
def test_decoder_states_do_not_depend_on_batchmates(attn):
    """An image's decoder states alone == batched with a larger image (its padding full of noise)."""
    torch.manual_seed(0)
    model = build(tiny_detr_cfg(attn)).eval()
    stride, (h, w), (H, W) = 32, (5, 7), (8, 11)
    feat = torch.randn(1, C, h, w)
    batch = torch.randn(2, C, H, W) * 3                 # noise everywhere, incl. sample 0's padding
    batch[0, :, :h, :w] = feat[0]
    with torch.no_grad():
        alone = model.forward_transformer((feat, ), _samples([(h * stride, w * stride)], (h * stride, w * stride)))
        both = model.forward_transformer(
            (batch, ), _samples([(h * stride, w * stride), (H * stride, W * stride)], (H * stride, W * stride)))
        # and the larger image is unaffected by being batched with the smaller one
        big = model.forward_transformer((batch[1:], ), _samples([(H * stride, W * stride)], (H * stride, W * stride)))
    a, b = alone['hidden_states'][:, 0], both['hidden_states'][:, 0]
    assert a.shape == b.shape == (2, 10, C)
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(both['hidden_states'][:, 1], big['hidden_states'][:, 0], rtol=1e-4, atol=1e-4)


def test_linformer_padding_test_is_not_vacuous():
    """Resizing E/F to the padded grid (instead of the valid region) would change the result."""
    torch.manual_seed(0)
    attn = LinearMultiheadAttention(C, HEADS, attn_cfg=_attn_cfg('linformer', True), grid_keys=True).eval()
    x = torch.randn(1, 35, C)
    padded = torch.randn(1, 8 * 11, C).unflatten(1, (8, 11))
    padded[0, :5, :7] = x[0].unflatten(0, (5, 7))
    mask = torch.ones(1, 8, 11, dtype=torch.bool)
    mask[0, :5, :7] = False
    q = torch.randn(1, 10, C)
    ref = attn(q, x, x, spatial_shape=(5, 7))
    out = attn(q, padded.flatten(1, 2), padded.flatten(1, 2), key_padding_mask=mask.flatten(1), spatial_shape=(8, 11))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # a non-rectangular mask falls back to the full grid (padded keys zeroed): finite, but not the same
    mask2 = mask.clone()
    mask2[0, 0, 0] = True
    assert valid_hw(mask2.flatten(1), (8, 11)) is None
    assert torch.isfinite(attn(q, padded.flatten(1, 2), padded.flatten(1, 2), key_padding_mask=mask2.flatten(1),
                               spatial_shape=(8, 11))).all()


def test_softmax_bridge_matches_mmcv_multihead_attention():
    from mmcv.cnn.bricks.transformer import MultiheadAttention
    torch.manual_seed(0)
    ref = MultiheadAttention(C, HEADS, batch_first=True).eval()
    ours = LinearMultiheadAttention(C, HEADS, batch_first=True, attn_cfg=dict(type='softmax')).eval()
    wq, wk, wv = ref.attn.in_proj_weight.chunk(3)
    bq, bk, bv = ref.attn.in_proj_bias.chunk(3)
    with torch.no_grad():
        for lin, wt, bs in ((ours.q_proj, wq, bq), (ours.k_proj, wk, bk), (ours.v_proj, wv, bv)):
            lin.weight.copy_(wt)
            lin.bias.copy_(bs)
        ours.out_proj.load_state_dict(ref.attn.out_proj.state_dict())
    q, k = torch.randn(2, 6, C), torch.randn(2, 9, C)
    qp, kp = torch.randn(2, 6, C), torch.randn(2, 9, C)
    mask = torch.zeros(2, 9, dtype=torch.bool)
    mask[1, 5:] = True
    args = dict(query=q, key=k, value=k, query_pos=qp, key_pos=kp, key_padding_mask=mask)
    torch.testing.assert_close(ours(**args), ref(**args), rtol=1e-5, atol=1e-5)


def test_unknown_attention_and_attn_mask_are_refused():
    with pytest.raises(ValueError, match='unknown attention'):
        LinearMultiheadAttention(C, HEADS, attn_cfg=dict(type='nope'))
    attn = LinearMultiheadAttention(C, HEADS, attn_cfg=dict(type='inline'))
    with pytest.raises(ValueError, match='attn_mask'):
        attn(torch.randn(1, 4, C), attn_mask=torch.zeros(4, 4, dtype=torch.bool))
    assert set(SEEDS) <= set(BRIDGE_ATTENTIONS)


@pytest.mark.parametrize('attn', SEEDS + ('softmax', ))
def test_tiny_linear_detr_trains_a_step_on_a_padded_batch(attn):
    from tests.models.test_mm_integration import _det_batch
    torch.manual_seed(0)
    model = build(tiny_detr_cfg(attn)).train()
    a, b = _det_batch(64, 96), _det_batch(80, 112)
    batch = dict(inputs=a['inputs'] + b['inputs'], data_samples=a['data_samples'] + b['data_samples'])
    data = model.data_preprocessor(batch, training=True)
    losses = model.loss(data['inputs'], data['data_samples'])
    total = sum(v for k, v in losses.items() if 'loss' in k)
    assert torch.isfinite(total)
    total.backward()
    grads = [p.grad for n, p in model.named_parameters() if p.requires_grad and 'transformer' not in n
             and ('encoder' in n or 'decoder' in n)]
    assert grads and all(g is not None for g in grads)
