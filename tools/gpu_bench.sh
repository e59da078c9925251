#!/usr/bin/env bash
# Every GPU measurement of issue 16 in one run, within 8 minutes on one GPU: bf16 AMP train steps of the backbone
# pairs (LinPVT-S InLine vs PVTv2-b2, LinSwin-T vs Swin-T, LinViT-S InLine vs softmax) at 1024^2, 1024x2048 and
# 2048^2, batch 1 and 8; the Mask R-CNN pair at 800x1333 batch 2; then the same under torch.compile while the
# budget lasts. Tables (.md in summary.md), rows (.json) and plots (.png) go under OUT_DIR.
#
#   tools/gpu_bench.sh [OUT_DIR] [more tools/benchmark.py options]
#   DEVICE=cpu tools/gpu_bench.sh DRY_DIR --smoke          # the CPU dry run (tiny sizes, one round each)
#
# Needs torch, triton and timm. mmengine / mmdet / mmsegmentation may come as pure-Python wheels in $WHEELS
# (installed with --no-deps into a temporary directory); without mmdet the backbone references come from timm.
# mmdet's detectors need mmcv with its compiled ops (RoIAlign, NMS): without them the Mask R-CNN jobs are
# skipped with a message and everything else runs.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-work_dirs/gpu_bench}
[ $# -gt 0 ] && shift
PY=${PYTHON:-python3}
if [ -n "${WHEELS:-}" ]; then
  SITE=$(mktemp -d)
  "$PY" -m pip install --quiet --no-deps --no-index --target "$SITE" "$WHEELS"/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" tools/benchmark.py --suite gpu --device "${DEVICE:-cuda}" --out-dir "$OUT_DIR" --budget "${BUDGET:-450}" "$@"
