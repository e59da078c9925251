"""Export a backbone, an mmseg segmenter or an mmdet detector's backbone + neck to ONNX, and check it.

    python tools/export_onnx.py CONFIG CHECKPOINT OUT.onnx [--shape H W] [--dynamic]
                                [--exporter auto|dynamo|torchscript] [--image PATH]

CHECKPOINT may be ``none`` (random weights). What is exported depends on the config's ``model``:

* a segmenter (``EncoderDecoder`` with one of our backbones; UPerNet, Semantic FPN, ...): whole-image inference,
  ``image (B, 3, H, W)`` float32 pixels in the model's channel order, *not* normalised (the graph applies the
  data preprocessor's mean/std) -> ``seg_logits (B, num_classes, H, W)`` (mmseg's logits at the input size,
  before the resize to the original image and the argmax). A config whose ``test_cfg.mode`` is ``'slide'``
  gets the same graph, which is then the per-crop network: slide inference is a Python loop over crops in
  mmseg as well, so the caller runs it (:func:`slide_inference_onnx` below mirrors mmseg's loop; mmdeploy
  likewise exports whole-image inference and leaves sliding to the caller);
* a detector: backbone + neck (the part this library provides), ``image`` as above -> ``out{i}``, the neck's
  maps. The heads, box decoding and NMS are mmdet's; deploy a whole detector with mmdeploy (README);
* a backbone config (``model = dict(type='linattn_mm.LinPVT', ...)``): the backbone on normalised input.

``--dynamic`` makes batch, H and W dynamic (H, W >= 64: below that the stride-32 map has a single cell, which
the exporter treats as a broadcast dimension). The dynamo exporter (``torch.export``) is tried first; where
it cannot trace the model, the TorchScript exporter is used (``--exporter auto``, said in the output).

The parity check runs onnxruntime (CPU) and PyTorch on a real image from the shipped data
(``tools/prepare_data.py`` prepares ``data/nuclei`` and ``data/trees``) at the export size and at two other
sizes (crops with odd sides when ``--dynamic``) and prints ``rms(ort - torch) / rms(torch)`` per output.
"""
from __future__ import annotations

import argparse
import glob
import os
import os.path as osp
import sys
import time
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor, nn  # noqa: E402

MIN_SIDE = 64
MAX_SIDE = 8192
REAL_IMAGES = ('data/nuclei/images/validation/*.png', 'data/nuclei/images/training/*.png',
               'data/trees/images/*.png', 'data/trees/images/*.jpg')


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel (the data preprocessor's normalisation, inside the graph)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer('mean', torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer('std', torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class SegmentorLogits(nn.Module):
    """mmseg ``EncoderDecoder`` whole-image inference: pixels ``(B, 3, H, W)`` -> logits ``(B, K, H, W)``."""

    def __init__(self, segmentor: nn.Module, norm: nn.Module):
        super().__init__()
        self.segmentor, self.norm = segmentor, norm
        symbolic_upsample(segmentor)
        symbolic_adaptive_pool(segmentor)

    def forward(self, image: Tensor) -> Tensor:
        seg = self.segmentor
        logits = seg.decode_head(seg.extract_feat(self.norm(image)))
        return F.interpolate(logits, size=image.shape[2:], mode='bilinear',
                             align_corners=seg.decode_head.align_corners)


def _upsample_forward(self, x: Tensor) -> Tensor:
    s = int(self.scale_factor)
    return F.interpolate(x, size=(x.shape[-2] * s, x.shape[-1] * s), mode=self.mode,
                         align_corners=self.align_corners)


def symbolic_upsample(model: nn.Module) -> None:
    """mmseg's ``Upsample`` (Semantic FPN's scale heads) computes its output size as ``int(side * scale)``,
    which an exporter freezes at the example size; for integer scales use ``side * scale`` (the same sizes,
    the same ``F.interpolate`` call in eager)."""
    try:
        from mmseg.models.utils import Upsample
    except ImportError:  # pragma: no cover - mmseg absent: nothing to patch
        return
    import types
    for m in model.modules():
        if isinstance(m, Upsample) and not m.size and m.scale_factor and float(m.scale_factor).is_integer():
            m.forward = types.MethodType(_upsample_forward, m)


def _bin_matrix(size, bins: int, like: Tensor) -> Tensor:
    """``(bins, size)`` averaging matrix of adaptive pooling: bin i covers ``[floor(i*size/bins),
    ceil((i+1)*size/bins))`` (PyTorch's rule), computed from the symbolic ``size``."""
    i = torch.arange(bins, device=like.device)[:, None]
    start = i * size // bins
    end = ((i + 1) * size + bins - 1) // bins
    pos = torch.arange(size, device=like.device)[None, :]
    inside = ((pos >= start) & (pos < end)).to(like.dtype)
    return inside / inside.sum(-1, keepdim=True)


def _adaptive_pool_forward(self, x: Tensor) -> Tensor:
    bh, bw = (self.output_size, self.output_size) if isinstance(self.output_size, int) else self.output_size
    bh, bw = bh or x.shape[-2], bw or x.shape[-1]
    ah, aw = _bin_matrix(x.shape[-2], bh, x), _bin_matrix(x.shape[-1], bw, x)
    return ah @ x @ aw.transpose(0, 1)


def symbolic_adaptive_pool(model: nn.Module) -> None:
    """ONNX has no adaptive average pooling and the exporters cannot lower it for a symbolic input size
    (UPerNet's pyramid pooling): write it as ``A_h @ x @ A_w^T`` with averaging matrices built from the size
    (equal to ``adaptive_avg_pool2d`` up to float rounding)."""
    import types
    for m in model.modules():
        if isinstance(m, nn.AdaptiveAvgPool2d):
            m.forward = types.MethodType(_adaptive_pool_forward, m)


class BackboneNeck(nn.Module):
    """mmdet detector's backbone + neck: pixels ``(B, 3, H, W)`` -> the neck's maps."""

    def __init__(self, detector: nn.Module, norm: nn.Module):
        super().__init__()
        self.backbone, self.neck, self.norm = detector.backbone, getattr(detector, 'neck', None), norm

    def forward(self, image: Tensor):
        x = self.backbone(self.norm(image))
        return tuple(self.neck(x)) if self.neck is not None else tuple(x)


class Backbone(nn.Module):
    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: Tensor):
        return tuple(self.backbone(x))


# --------------------------------------------------------------------------------------------- building
def build_exportable(cfg, checkpoint: str = 'none') -> Tuple[nn.Module, str, dict]:
    """Build the config's model without a runner and wrap the part that is exported.

    Returns:
        ``(module, kind, info)``: kind is ``'segmentor'``, ``'detector'`` or ``'backbone'``; info holds the
        channel order (``bgr_to_rgb``), the segmenter's ``test_cfg`` and the number of classes.
    """
    import linattn_mm  # noqa: F401  (registers our backbones, safe checkpoint loading)
    from mmengine.registry import init_default_scope

    model_cfg = cfg.model
    kind = 'segmentor' if 'decode_head' in model_cfg else \
        'detector' if any(k in model_cfg for k in ('neck', 'rpn_head', 'roi_head', 'bbox_head')) else 'backbone'
    scope = cfg.get('default_scope', None) or {'segmentor': 'mmseg', 'detector': 'mmdet'}.get(kind, 'mmengine')
    if kind == 'segmentor':
        import mmseg.models  # noqa: F401
    elif kind == 'detector':
        import mmdet.models  # noqa: F401
    init_default_scope(scope)
    from mmengine.registry import MODELS
    model = MODELS.build(model_cfg)
    if checkpoint and checkpoint.lower() != 'none':
        from mmengine.runner import load_checkpoint
        load_checkpoint(model, checkpoint, map_location='cpu')
    model.eval()
    info: Dict = dict(bgr_to_rgb=False)
    if kind == 'backbone':
        return Backbone(model).eval(), kind, info
    pre = model_cfg.get('data_preprocessor', None) or {}
    mean = pre.get('mean', None) or [0., 0., 0.]
    std = pre.get('std', None) or [1., 1., 1.]
    info['bgr_to_rgb'] = bool(pre.get('bgr_to_rgb', False) or pre.get('rgb_to_bgr', False))
    norm = Normalize(mean, std)
    if kind == 'segmentor':
        info['test_cfg'] = dict(model.test_cfg) if model.test_cfg is not None else dict(mode='whole')
        info['num_classes'] = model.decode_head.num_classes
        return SegmentorLogits(model, norm).eval(), kind, info
    return BackboneNeck(model, norm).eval(), kind, info


# -------------------------------------------------------------------------------------------- exporting
def export_onnx(module: nn.Module, example: Tensor, path: str, dynamic: bool = True, exporter: str = 'auto',
                input_name: str = 'image', output_names: Optional[List[str]] = None) -> str:
    """Export ``module(example)`` to ``path``; returns the exporter used (``'dynamo'`` or ``'torchscript'``).

    Dynamic: batch, H, W (H, W in [64, 8192]). ``exporter='auto'`` tries ``torch.export`` (strict=False) and
    falls back to the TorchScript exporter only if the model cannot be traced by it; a shape that the dynamo
    path would freeze is an error there (never a silent specialisation).
    """
    if exporter not in ('auto', 'dynamo', 'torchscript'):
        raise ValueError(f"export_onnx: exporter must be 'auto', 'dynamo' or 'torchscript', got {exporter!r}")
    if dynamic and min(example.shape[-2:]) < MIN_SIDE:
        raise ValueError(f'export_onnx: dynamic export needs an example of at least {MIN_SIDE} x {MIN_SIDE} '
                         f'pixels, got {tuple(example.shape[-2:])}; pass --shape with larger sides')
    if dynamic and example.shape[0] == 1:
        example = example.expand(2, *example.shape[1:]).contiguous()  # batch 1 would be frozen (0/1 rule)
    with torch.no_grad():
        outs = module(example)
    n_out = 1 if isinstance(outs, Tensor) else len(outs)
    output_names = output_names or [f'out{i}' for i in range(n_out)]
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    error = None
    if exporter in ('auto', 'dynamo'):
        try:
            dyn = None
            if dynamic:
                dims = dict(batch=torch.export.Dim('batch', min=1, max=1024),
                            h=torch.export.Dim('height', min=MIN_SIDE, max=MAX_SIDE),
                            w=torch.export.Dim('width', min=MIN_SIDE, max=MAX_SIDE))
                dyn = {_forward_arg(module): {0: dims['batch'], 2: dims['h'], 3: dims['w']}}
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                ep = torch.export.export(module, (example,), dynamic_shapes=dyn, strict=False)
                torch.onnx.export(ep, (example,), path, dynamo=True, input_names=[input_name],
                                  output_names=output_names, external_data=False)
            return 'dynamo'
        except Exception as e:  # noqa: BLE001 - reported, then the fallback (or re-raised)
            if exporter == 'dynamo':
                raise
            error = e
            print(f'[export_onnx] dynamo exporter failed ({type(e).__name__}: {str(e).splitlines()[0][:300]}); '
                  f'falling back to the TorchScript exporter')
    axes = None
    if dynamic:
        axes = {input_name: {0: 'batch', 2: 'height', 3: 'width'}}
        axes.update({n: {0: 'batch', 2: f'{n}_h', 3: f'{n}_w'} for n in output_names})
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.onnx.export(module, (example,), path, dynamo=False, opset_version=17, input_names=[input_name],
                          output_names=output_names, dynamic_axes=axes)
    del error
    return 'torchscript'


def _forward_arg(module: nn.Module) -> str:
    import inspect
    return next(iter(inspect.signature(module.forward).parameters))


# ------------------------------------------------------------------------------------------- checking
def ort_session(path: str, threads: int = 0):
    import onnxruntime as ort
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(path, so, providers=['CPUExecutionProvider'])


def rel_rms(ref: np.ndarray, out: np.ndarray) -> float:
    """rms(out - ref) / rms(ref), in float64."""
    ref, out = ref.astype(np.float64), out.astype(np.float64)
    if ref.shape != out.shape:
        raise ValueError(f'shape mismatch: onnxruntime gave {out.shape}, PyTorch {ref.shape}')
    return float(np.sqrt(((out - ref) ** 2).mean() / max((ref ** 2).mean(), 1e-300)))


def parity(module: nn.Module, sess, x: Tensor) -> float:
    """Largest rel_rms over the outputs of onnxruntime vs PyTorch for input ``x``."""
    with torch.no_grad():
        ref = module(x)
    ref = [ref] if isinstance(ref, Tensor) else list(ref)
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    return max(rel_rms(r.numpy(), o) for r, o in zip(ref, out))


def slide_inference_onnx(sess, image: np.ndarray, crop_size: Sequence[int], stride: Sequence[int],
                         num_classes: int) -> np.ndarray:
    """mmseg's ``EncoderDecoder.slide_inference`` around the exported per-crop graph.

    Args:
        sess: onnxruntime session of the segmenter graph.
        image: ``(B, 3, H, W)`` float32 pixels (as the graph takes them).
        crop_size, stride: ``test_cfg.crop_size`` / ``test_cfg.stride`` ``(h, w)``.
        num_classes: K.

    Returns:
        ``(B, K, H, W)`` logits averaged over the overlapping crops.
    """
    b, _, h_img, w_img = image.shape
    (h_crop, w_crop), (h_stride, w_stride) = crop_size, stride
    h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
    preds = np.zeros((b, num_classes, h_img, w_img), np.float32)
    count = np.zeros((b, 1, h_img, w_img), np.float32)
    name = sess.get_inputs()[0].name
    for hi in range(h_grids):
        for wi in range(w_grids):
            y1, x1 = hi * h_stride, wi * w_stride
            y2, x2 = min(y1 + h_crop, h_img), min(x1 + w_crop, w_img)
            y1, x1 = max(y2 - h_crop, 0), max(x2 - w_crop, 0)
            preds[:, :, y1:y2, x1:x2] += sess.run(None, {name: np.ascontiguousarray(image[:, :, y1:y2, x1:x2])})[0]
            count[:, :, y1:y2, x1:x2] += 1
    return preds / count


def find_real_image(path: Optional[str] = None) -> str:
    if path:
        if not osp.isfile(path):
            raise SystemExit(f'error: --image {path!r} does not exist')
        return path
    for pattern in REAL_IMAGES:
        hits = sorted(glob.glob(osp.join(_ROOT, pattern))) or sorted(glob.glob(pattern))
        if hits:
            return hits[0]
    raise SystemExit('error: no shipped image found under data/; run `python tools/prepare_data.py` '
                     '(nuclei and trees images) or pass --image PATH')


def load_image(path: str, bgr_to_rgb: bool) -> Tensor:
    """``(1, 3, H, W)`` float32 pixels in the order the model sees them after its data preprocessor: mmseg /
    mmdet load BGR and ``bgr_to_rgb`` flips to RGB, so RGB if ``bgr_to_rgb`` else BGR."""
    from PIL import Image
    img = np.asarray(Image.open(path).convert('RGB'))
    if not bgr_to_rgb:
        img = img[..., ::-1]
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float()[None]


def fit(img: Tensor, h: int, w: int) -> Tensor:
    """Crop (or reflect-pad) the image to ``h x w``."""
    img = img[..., :h, :w]
    ph, pw = h - img.shape[-2], w - img.shape[-1]
    if ph > 0 or pw > 0:
        img = F.pad(img, (0, max(pw, 0), 0, max(ph, 0)), mode='replicate')
    return img.contiguous()


def check_sizes(h: int, w: int, dynamic: bool) -> List[Tuple[int, int]]:
    """The export size, then two others with odd sides (dynamic), or the export size alone."""
    if not dynamic:
        return [(h, w)]
    return [(h, w), (h + 31, w + 47), (max(MIN_SIDE + 1, h - 29) | 1, max(MIN_SIDE + 1, w - 3) | 1)]


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('config')
    p.add_argument('checkpoint', help="checkpoint path, or 'none' for random weights")
    p.add_argument('out', help='output .onnx file')
    p.add_argument('--shape', nargs=2, type=int, default=None, metavar=('H', 'W'),
                   help='export size (default: the real image size, at most 512)')
    p.add_argument('--dynamic', action='store_true', help='dynamic batch, H and W')
    p.add_argument('--exporter', default='auto', choices=['auto', 'dynamo', 'torchscript'])
    p.add_argument('--image', default=None, help='image for the parity check (default: the shipped data)')
    from mmengine.config import Config, DictAction
    p.add_argument('--cfg-options', nargs='+', action=DictAction,
                   help='override config settings, key=value (e.g. model.test_cfg.mode=whole)')
    args = p.parse_args(argv)
    if not osp.isfile(args.config):
        raise SystemExit(f'error: config file {args.config!r} does not exist')
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    module, kind, info = build_exportable(cfg, args.checkpoint)
    image_path = find_real_image(args.image)
    img = load_image(image_path, info['bgr_to_rgb'])
    h, w = args.shape or (min(img.shape[-2], 512), min(img.shape[-1], 512))
    if kind == 'backbone':
        img = (img - img.mean()) / img.std().clamp_min(1e-6)  # a backbone takes normalised input
    t0 = time.time()
    used = export_onnx(module, fit(img, h, w), args.out, dynamic=args.dynamic, exporter=args.exporter,
                       input_name='image' if kind != 'backbone' else 'x',
                       output_names=['seg_logits'] if kind == 'segmentor' else None)
    print(f'[export_onnx] {kind} -> {args.out} ({osp.getsize(args.out) / 2 ** 20:.1f} MiB) with the {used} '
          f'exporter in {time.time() - t0:.1f} s; dynamic={args.dynamic}')
    sess = ort_session(args.out)
    print(f'[export_onnx] parity on {osp.relpath(image_path)}: rms(onnxruntime - torch) / rms(torch)')
    worst = 0.
    for hh, ww in check_sizes(h, w, args.dynamic):
        err = parity(module, sess, fit(img, hh, ww))
        worst = max(worst, err)
        print(f'  {hh:5d} x {ww:<5d} {err:.2e}')
    test_cfg = info.get('test_cfg') or {}
    if kind == 'segmentor' and test_cfg.get('mode') == 'slide':
        if not args.dynamic:
            print('[export_onnx] test_cfg.mode is slide: export with --dynamic to run crops of any size')
        else:
            x = fit(img, h, w)
            seg = module.segmentor
            with torch.no_grad():
                ref = seg.slide_inference(module.norm(x), [dict(img_shape=(h, w), ori_shape=(h, w),
                                                                pad_shape=(h, w))])
            out = slide_inference_onnx(sess, x.numpy(), test_cfg['crop_size'], test_cfg['stride'],
                                       info['num_classes'])
            err = rel_rms(ref.numpy(), out)
            worst = max(worst, err)
            print(f'  slide {h} x {w} (crop {tuple(test_cfg["crop_size"])}, stride {tuple(test_cfg["stride"])}, '
                  f'slide_inference_onnx vs mmseg slide_inference): {err:.2e}')
    ok = worst < 1e-4
    print(f'[export_onnx] {"OK" if ok else "MISMATCH"}: worst {worst:.2e} (tolerance 1e-4)')
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
