"""Detect trees on the whole NEON images in one pass (no tiling), draw and score them.

A detector trained on 512 px tiles (e.g. ``make demo``'s trees job) runs on each whole image as it is, up to
2299 x 2472 px: no resize, no tiles, one forward pass; linear attention is what makes that affordable. The
images and their boxes come from ``python tools/prepare_data.py --only trees --trees-full`` (data/trees/full/).

Scores (COCO AP / AP50, pycocotools, up to ``--max-dets`` detections per image):

- ``whole``: every box of every whole image. The left 70% of each image is where the training tiles were
  cut from, so this number is not a held-out one.
- ``heldout``: the strip x >= 0.7 W of each image (the validation tiles' region), boxes and predictions of the
  same one pass both clipped to it by the tiles' rule (``prepare_data.clip_boxes``), so it is comparable with
  the tiles' validation AP.

Usage::

    python tools/full_res.py CONFIG CHECKPOINT [--data data/trees/full] [--out-dir work_dirs/full_res]
        [--score-thr 0.3] [--max-dets 3000] [--proposals 6000] [--device cpu]

Writes ``OUT_DIR/<image>.jpg`` (predictions above ``--score-thr`` drawn by mmdet's DetLocalVisualizer, the
held-out strip's edge as a dashed line), ``OUT_DIR/full_res.json`` and ``OUT_DIR/full_res.md``.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import os.path as osp
import sys
import time

import numpy as np

_TOOLS = osp.dirname(osp.abspath(__file__))
for _p in (_TOOLS, osp.dirname(_TOOLS)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from prepare_data import clip_boxes  # noqa: E402  (the tiles' clip rule, one definition)

PREPARE_HINT = 'python tools/prepare_data.py --only trees --trees-full'


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('config', help='the detector config the checkpoint was trained with')
    p.add_argument('checkpoint', help='checkpoint file (mmengine state_dict)')
    p.add_argument('--data', default='data/trees/full', help=f'whole images and their boxes ({PREPARE_HINT})')
    p.add_argument('--out-dir', default='work_dirs/full_res')
    p.add_argument('--score-thr', type=float, default=0.3, help='drawing threshold (scores use every detection)')
    p.add_argument('--max-dets', type=int, default=3000, help='detections kept per image (the 2299 x 2472 image '
                   'has 574 trees; 300 per 512 px tile)')
    p.add_argument('--proposals', type=int, default=6000, help='RPN proposals per image (two-stage detectors)')
    p.add_argument('--device', default='cpu')
    p.add_argument('--no-draw', action='store_true')
    return p.parse_args(argv)


def load_gt(data: str) -> tuple[dict, dict]:
    """The whole-image and held-out-strip COCO dicts, or one error saying how to prepare them."""
    out = []
    for name in ('full', 'full_heldout'):
        f = osp.join(data, 'annotations', f'instances_{name}.json')
        if not osp.isfile(f):
            raise SystemExit(f'error: {f} not found: the whole NEON images are prepared by `{PREPARE_HINT}`'
                             ' (or pass --data DIR)')
        with open(f) as fh:
            out.append(json.load(fh))
    for im in out[0]['images']:
        if not osp.isfile(osp.join(data, 'images', im['file_name'])):
            raise SystemExit(f'error: image {im["file_name"]} missing under {data}/images; run `{PREPARE_HINT}`')
    return out[0], out[1]


def one_pass_config(config: str, max_dets: int, proposals: int):
    """The detector config with a test pipeline that keeps the image size and enough detections per image."""
    from mmengine.config import Config
    cfg = Config.fromfile(config)
    # scale_factor 1: the input is the whole image at its own resolution (the tiles' Resize would shrink it)
    cfg.test_dataloader.dataset.pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='Resize', scale_factor=1.0, keep_ratio=True),
        dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))]
    tc = cfg.model.get('test_cfg') or {}
    if 'rcnn' in tc:  # two-stage: more proposals and detections than a tile needs
        tc['rpn'].update(nms_pre=proposals, max_per_img=proposals)
        tc['rcnn']['max_per_img'] = max_dets
    else:  # one-stage heads (RetinaNet / FCOS / ATSS)
        tc.update(nms_pre=max(proposals, tc.get('nms_pre', 0)), max_per_img=max_dets)
    return cfg


def coco_scores(gt: dict, dets: list[dict], max_dets: int) -> dict:
    """COCO bbox AP and AP50 of ``dets`` (COCO result dicts) against ``gt``, up to ``max_dets`` per image."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    with contextlib.redirect_stdout(io.StringIO()):
        g = COCO()
        g.dataset = json.loads(json.dumps(gt))
        g.createIndex()
        if not dets:
            return dict(AP=0.0, AP50=0.0)
        d = g.loadRes(dets)
        e = COCOeval(g, d, 'bbox')
        e.params.maxDets = [100, 1000, max_dets]  # summarize() reads AP at the last entry
        e.evaluate()
        e.accumulate()
        e.summarize()
    return dict(AP=float(max(e.stats[0], 0.0)), AP50=float(max(e.stats[1], 0.0)))


def subset(gt: dict, im: dict) -> dict:
    """The COCO dict ``gt`` reduced to image ``im`` and its boxes."""
    return dict(gt, images=[im], annotations=[a for a in gt['annotations'] if a['image_id'] == im['id']])


def to_coco(iid: int, boxes: np.ndarray, scores: np.ndarray) -> list[dict]:
    """(N, 4) x1, y1, x2, y2 boxes and (N,) scores as COCO result dicts of image ``iid``."""
    return [dict(image_id=iid, category_id=1, bbox=[float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
                 score=float(s)) for b, s in zip(boxes, scores)]


def draw(img_rgb: np.ndarray, boxes: np.ndarray, heldout_x0: int, out_file: str) -> None:
    """Boxes (N, 4) on the image with mmdet's DetLocalVisualizer, the held-out strip's edge dashed.

    Boxes only, no label text: a whole image holds hundreds of trees, and text for each would hide them (and
    take matplotlib minutes to lay out).
    """
    import mmcv
    from mmdet.visualization import DetLocalVisualizer
    img = img_rgb.copy()
    for y in range(0, img.shape[0], 24):  # dashed white line: left of it trained, right of it held out
        img[y:y + 12, max(0, heldout_x0 - 1):heldout_x0 + 2] = 255
    vis = DetLocalVisualizer(name=f'full_res_{osp.basename(out_file)}')
    vis.set_image(img)
    if len(boxes):
        vis.draw_bboxes(boxes, edge_colors=(0, 220, 0), line_widths=2)
    mmcv.imwrite(vis.get_image()[..., ::-1], out_file)


def main(argv=None) -> dict:
    args = parse_args(argv)
    gt_full, gt_held = load_gt(args.data)
    import linattn_mm  # noqa: F401  (registries, safe checkpoint loading)
    import mmcv
    import torch
    from mmdet.apis import inference_detector, init_detector
    from mmdet.utils import register_all_modules
    register_all_modules()

    cfg = one_pass_config(args.config, args.max_dets, args.proposals)
    model = init_detector(cfg, args.checkpoint, device=args.device)
    os.makedirs(args.out_dir, exist_ok=True)
    rows, dets_full, dets_held = [], [], []
    for im in gt_full['images']:
        path = osp.join(args.data, 'images', im['file_name'])
        img = mmcv.imread(path, channel_order='rgb')
        t = time.perf_counter()
        with torch.no_grad():
            result = inference_detector(model, path)
        dt = time.perf_counter() - t
        inp_hw = tuple(int(v) for v in result.metainfo['img_shape'])
        if inp_hw != (im['height'], im['width']):
            raise SystemExit(f'error: {im["file_name"]} went in at {inp_hw}, not its own {im["height"]} x '
                             f'{im["width"]}: the one-pass pipeline must not resize')
        pred = result.pred_instances
        boxes, scores = pred.bboxes.cpu().numpy().astype(np.float64), pred.scores.cpu().numpy()
        dets_full += to_coco(im['id'], boxes, scores)
        # the held-out strip: predictions of the same pass, clipped by the rule the ground truth was clipped by
        clipped, keep = clip_boxes(boxes, (im['heldout_x0'], 0, im['width'], im['height']))
        dets_held += to_coco(im['id'], clipped[keep], scores[keep])
        n_gt = sum(a['image_id'] == im['id'] for a in gt_full['annotations'])
        rows.append(dict(image=im['file_name'], height=im['height'], width=im['width'], input_hw=list(inp_hw),
                         seconds=round(dt, 2), gt=n_gt, detections=len(scores),
                         above_thr=int((scores >= args.score_thr).sum())))
        print(f'{im["file_name"]}: {im["width"]} x {im["height"]} in one pass, {dt:.1f} s, '
              f'{rows[-1]["above_thr"]} trees >= {args.score_thr} ({n_gt} annotated)', flush=True)
        if not args.no_draw:
            draw(img, boxes[scores >= args.score_thr], im['heldout_x0'],
                 osp.join(args.out_dir, osp.splitext(im['file_name'])[0] + '.jpg'))
    for r, im in zip(rows, gt_full['images']):
        for key, gt, dets in (('AP50_whole', gt_full, dets_full), ('AP50_heldout', gt_held, dets_held)):
            r[key] = coco_scores(subset(gt, im), [d for d in dets if d['image_id'] == im['id']], args.max_dets)['AP50']
    summary = dict(config=args.config, checkpoint=args.checkpoint, images=rows,
                   whole=coco_scores(gt_full, dets_full, args.max_dets),
                   heldout=coco_scores(gt_held, dets_held, args.max_dets))
    with open(osp.join(args.out_dir, 'full_res.json'), 'w') as f:
        json.dump(summary, f, indent=1)
    lines = ['| image | size (W x H) | one pass | annotated | detected >= thr | AP50 whole | AP50 held-out strip |',
             '|---|---|---|---|---|---|---|']
    lines += [f'| {r["image"]} | {r["width"]} x {r["height"]} | {r["seconds"]:.1f} s | {r["gt"]} | '
              f'{r["above_thr"]} | {r["AP50_whole"]:.3f} | {r["AP50_heldout"]:.3f} |' for r in rows]
    lines += [f'| all | | {sum(r["seconds"] for r in rows):.1f} s | {sum(r["gt"] for r in rows)} | '
              f'{sum(r["above_thr"] for r in rows)} | {summary["whole"]["AP50"]:.3f} | '
              f'{summary["heldout"]["AP50"]:.3f} |',
              '', f'AP (0.5:0.95): whole {summary["whole"]["AP"]:.3f}, held-out strip {summary["heldout"]["AP"]:.3f}. '
              'The whole images include the region the training tiles came from; the held-out strip does not.']
    md = '\n'.join(lines)
    with open(osp.join(args.out_dir, 'full_res.md'), 'w') as f:
        f.write(md + '\n')
    print(md)
    return summary


if __name__ == '__main__':
    main()
