"""torch.compile of the mm models: an mmdet Faster R-CNN and an mmseg Semantic FPN on a tiny LinPVT, and Linear-DETR.

Our code (backbone, Linear-DETR layers and attention bridge) and the mm pieces in front of the losses (FPN neck,
Semantic FPN head) compile with ``fullgraph=True`` (no graph break, no host sync) at changing input sizes, forward
and backward equal to eager, one graph for the new sizes (automatic dynamic shapes). mmdet's heads, assigners,
samplers and losses graph-break (data-dependent shapes, ``.item()``, mmcv's RoIAlign): the whole detector's
``loss`` is checked with the default ``fullgraph=False`` in a slow test. ``backend='aot_eager'`` (dynamo +
AOTAutograd without inductor's C++ code generation, which takes minutes on a 2-core CPU).
"""
import copy
import os

import pytest
import torch

pytest.importorskip('mmdet')
pytest.importorskip('mmseg')
pytest.importorskip('mmcv.ops')
from mmengine.config import Config  # noqa: E402
from mmengine.model import revert_sync_batchnorm  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402

import linattn_mm  # noqa: E402,F401
from tests.models.test_detectors import _samples, build, tiny_detr_cfg  # noqa: E402
from tests.models.test_mm_integration import _det_batch  # noqa: E402

BACKBONE = dict(type='linattn_mm.LinPVT', drop_path_rate=0.,
                arch=dict(embed_dims=[8, 16, 16, 16], num_heads=[1, 1, 1, 1], mlp_ratios=[1, 1, 1, 1],
                          depths=[1, 1, 1, 1]))
# The second size marks H, W dynamic, the third reuses that graph. Two rules of dynamo's automatic dynamic shapes
# shape these lists: a size of 1 is specialised (so no feature map, P6 included, may be 1 pixel wide: at W = 64 the
# FPN's P6 is, and the third size would need a third graph), and a dimension only turns dynamic once it changes
# (so the token count must change at the second size as well as H and W: 8 x 12 and 12 x 8 are the same 96).
SIZES = [(64, 96), (96, 64), (128, 96)]
FASTER_RCNN_SIZES = [(128, 192), (192, 128), (256, 192)]
DETR_SIZES = [(64, 96), (96, 128), (128, 160)]  # feature maps 8 x 12, 12 x 16, 16 x 20


def _stock(tmp_path, base):
    f = tmp_path / 'cfg.py'
    f.write_text(f"_base_ = ['{base}']\n")
    return copy.deepcopy(Config.fromfile(str(f)).model)


def faster_rcnn(tmp_path):
    from mmdet.registry import MODELS
    init_default_scope('mmdet')
    m = _stock(tmp_path, 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py')
    m.backbone = copy.deepcopy(BACKBONE)
    m.neck.update(in_channels=[8, 16, 16, 16], out_channels=16)
    m.rpn_head.update(in_channels=16, feat_channels=16)
    m.roi_head.bbox_roi_extractor.out_channels = 16
    m.roi_head.bbox_head.update(in_channels=16, fc_out_channels=32)
    torch.manual_seed(0)
    model = MODELS.build(m)
    model.init_weights()
    return model.train()


def semantic_fpn(tmp_path):
    from mmseg.registry import MODELS
    init_default_scope('mmseg')
    m = _stock(tmp_path, 'mmseg::sem_fpn/fpn_r50_4xb4-160k_ade20k-512x512.py')
    m.backbone = copy.deepcopy(BACKBONE)
    m.neck.update(in_channels=[8, 16, 16, 16], out_channels=16)
    m.decode_head.update(in_channels=[16, 16, 16, 16], channels=16, dropout_ratio=0.)
    torch.manual_seed(0)
    model = revert_sync_batchnorm(MODELS.build(m))
    model.init_weights()
    return model.train()


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def check_fullgraph_across_sizes(model, fn, make_inputs, sizes=SIZES, limit=2):
    """``fn(*make_inputs(h, w))`` -> tensors: compiled with ``fullgraph=True`` equals eager (outputs and the
    gradients of ``model``) at every size, in at most ``limit`` graphs."""
    from torch._dynamo.testing import CompileCounterWithBackend
    torch._dynamo.reset()
    counter = CompileCounterWithBackend('aot_eager')
    compiled = torch.compile(fn, backend=counter, fullgraph=True)
    for h, w in sizes:
        torch.manual_seed(h * w)
        args = make_inputs(h, w)
        results = []
        for f in (fn, compiled):
            model.zero_grad(set_to_none=True)
            outs = f(*args)
            outs = [outs] if isinstance(outs, torch.Tensor) else list(outs)
            sum((o.float() ** 2).mean() for o in outs).backward()
            results.append(([o.detach() for o in outs], _grads(model)))
        (ref, ref_g), (out, g) = results
        for a, b in zip(out, ref):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        assert g.keys() == ref_g.keys() and g
        for k in ref_g:
            torch.testing.assert_close(g[k], ref_g[k], rtol=1e-4, atol=1e-5, msg=lambda m: f'{k}: {m}')
    assert counter.frame_count <= limit, f'{counter.frame_count} graphs for {len(sizes)} sizes'


def test_faster_rcnn_backbone_and_neck_compile_without_graph_break(tmp_path):
    model = faster_rcnn(tmp_path)
    check_fullgraph_across_sizes(model, model.extract_feat, lambda h, w: (torch.randn(2, 3, h, w), ),
                                 sizes=FASTER_RCNN_SIZES)


def test_semantic_fpn_compiles_without_graph_break(tmp_path):
    """Backbone, FPN neck and mmseg's Semantic FPN head (``EncoderDecoder._forward``: the logits)."""
    model = semantic_fpn(tmp_path)
    check_fullgraph_across_sizes(model, model._forward, lambda h, w: (torch.randn(2, 3, h, w), ))


@pytest.mark.parametrize('attn', ['linformer', 'inline', 'taylorshift'])
def test_linear_detr_transformer_compiles_without_graph_break_or_host_sync(attn):
    """Encoder and decoder of Linear-DETR (our layers and the attention bridge) on padded batches of changing
    size: no ``.tolist()`` / ``bool(tensor)`` left (fullgraph), equal to eager, one graph for the new sizes."""
    torch.manual_seed(0)
    model = build(tiny_detr_cfg(attn, dropout=0.)).train()
    stride = 32

    def transformer(feat, mask, pos, hw):
        memory = model.forward_encoder(feat, mask, pos, spatial_shape=hw)['memory']
        query_pos = model.query_embedding.weight.unsqueeze(0).repeat(feat.shape[0], 1, 1)
        return model.forward_decoder(torch.zeros_like(query_pos), query_pos, memory, mask, pos,
                                     spatial_shape=hw)['hidden_states']

    def inputs(h, w):
        feats = (torch.randn(2, model.embed_dims, h // 8, w // 8), )
        samples = _samples([(h // 8 * stride, w // 8 * stride), (h // 16 * stride, w // 16 * stride + stride)],
                           (h // 8 * stride, w // 8 * stride))
        enc, _ = model.pre_transformer(feats, samples)  # mmdet's mask building: Python ints from the metainfo
        return enc['feat'], enc['feat_mask'], enc['feat_pos'], enc['spatial_shape']

    check_fullgraph_across_sizes(model, transformer, inputs, sizes=DETR_SIZES)


def _det_loss(model, batch):
    losses = model.loss(batch['inputs'], batch['data_samples'])
    return model.parse_losses(losses)[0]  # mmengine's sum of every 'loss' entry


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get('LINATTN_HEAVY_TESTS'),
                    reason='the whole detector under dynamo (about 70 graphs, minutes on 2 cores); '
                           'set LINATTN_HEAVY_TESTS=1 to run it')
def test_faster_rcnn_loss_compiles_with_default_settings(tmp_path):
    """The whole detector's ``loss`` under ``torch.compile`` (default: graph breaks allowed, in mmdet's heads),
    two sizes, forward and backward equal to eager (same seed: the samplers draw the same proposals)."""
    model = faster_rcnn(tmp_path)
    torch._dynamo.reset()
    compiled = torch.compile(lambda b: _det_loss(model, b), backend='aot_eager')
    for h, w in [(64, 96), (96, 128)]:
        batch = model.data_preprocessor(_det_batch(h, w), training=True)
        results = []
        for f in (lambda b: _det_loss(model, b), compiled):
            model.zero_grad(set_to_none=True)
            torch.manual_seed(0)
            loss = f(batch)
            loss.backward()
            results.append((loss.detach(), _grads(model)))
        (ref, ref_g), (out, g) = results
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
        for k in ref_g:
            torch.testing.assert_close(g[k], ref_g[k], rtol=1e-3, atol=1e-5, msg=lambda m: f'{k}: {m}')
