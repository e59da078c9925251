#!/usr/bin/env bash
# One-command set-up of the pinned OpenMMLab stack in ./.venv (idempotent).
#
#   bash tools/setup.sh            # or: make setup
#
# What it does, and why (see README "Set-up"):
#   * creates .venv with the Python found as $PYTHON (default python3, >= 3.10)
#   * torch/torchvision from the package registry (pinned below)
#   * mmcv 2.1.0 WITH compiled ops, built from its source package: its setup.py asks for
#     -std=c++14/-std=c++17, torch >= 2.10 headers need C++20, so the flag is raised before
#     building. The build (~13 min on 2 cores) is cached as a wheel outside the repo, keyed by
#     the mmcv, torch and Python versions, so a second set-up reuses it.
#   * mmengine, mmdet, mmsegmentation (+ ftfy, regex), timm, pycocotools, pytest, onnx + onnxruntime and this
#     package (editable).
# A second run on a set-up machine checks the stamp and exits in seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PYTHON="${PYTHON:-python3}"
VENV="${VENV:-$ROOT/.venv}"
TORCH_VERSION="${TORCH_VERSION:-2.14.1}"
TORCHVISION_VERSION="${TORCHVISION_VERSION:-0.29.1}"
MMCV_VERSION="2.1.0"
CACHE_DIR="${LINATTN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/linattn_mm}"
JOBS="${MAX_JOBS:-$(nproc 2>/dev/null || echo 2)}"

# Pinned pure-Python / binary packages that install from the registry as wheels.
PINNED=(
  "numpy>=1.24,<2"
  "setuptools>=77.0.3,<81"        # torch needs >=77; <81 still ships pkg_resources (mmcv's setup.py)
  "mmengine==0.10.7"
  "mmdet==3.3.0"
  "mmsegmentation==1.2.2"
  "ftfy" "regex"                  # imported unconditionally by mmseg 1.2.2
  "timm>=1.0,<2"
  "pycocotools"
  "opencv-python-headless<5"
  "matplotlib"
  "scipy"
  "shapely"
  "terminaltables"
  "prettytable"
  "pytest"
  "pytest-xdist"                 # the suite runs on both cores (make test)
  # ONNX export and its tests (tools/export_onnx.py); ml_dtypes >= 0.6 needs numpy 2, the OpenMMLab pin is < 2
  "onnx==1.23.2"
  "onnxruntime==1.32.0"
  "onnxscript==0.7.2"             # torch.onnx.export(dynamo=True)
  "ml_dtypes>=0.5,<0.6"
)

say()  { printf '[setup] %s\n' "$*"; }
fail() { printf '\n[setup] ERROR: %s\n[setup] FIX:   %s\n' "$1" "$2" >&2; exit 1; }

# Run a command quietly, keeping its log; on failure show the tail and one clear message.
LOG_DIR="$CACHE_DIR/logs"; mkdir -p "$LOG_DIR" 2>/dev/null || fail "cannot create $LOG_DIR" "set LINATTN_CACHE to a writable folder"
run_logged() {  # run_logged <what> <fix> -- cmd...
  local what="$1" fix="$2"; shift 3
  local log="$LOG_DIR/$(echo "$what" | tr -c 'a-zA-Z0-9' '_').log"
  if ! "$@" >"$log" 2>&1; then
    echo "----- last lines of $log -----" >&2; tail -n 15 "$log" >&2
    if grep -qiE 'no space left' "$log"; then fix="free disk space (df -h), then run again"; fi
    if grep -qiE 'connection|timed out|network is unreachable|No matching distribution' "$log"; then
      fix="check that the package registry is reachable (pip config, proxy), then run again"; fi
    if grep -qiE 'ResolutionImpossible|conflicting dependencies' "$log"; then
      fix="the pinned versions conflict (see the log); adjust the pins at the top of tools/setup.sh"; fi
    fail "$what failed (full log: $log)" "$fix"
  fi
}

# ---- 0. preconditions -------------------------------------------------------------------------
command -v "$PYTHON" >/dev/null || fail "no '$PYTHON' on PATH" "install Python >= 3.10 or set PYTHON=/path/to/python3"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || fail "$PYTHON is older than 3.10" "use Python 3.10-3.12 (set PYTHON=...)"
PYV="$("$PYTHON" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"

STAMP_KEY="torch=$TORCH_VERSION tv=$TORCHVISION_VERSION mmcv=$MMCV_VERSION py=$PYV pins=$(printf '%s,' "${PINNED[@]}") pyproject=$(cksum < pyproject.toml | cut -d' ' -f1)"
STAMP="$VENV/.linattn_setup_stamp"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$STAMP_KEY" ] \
   && "$VENV/bin/python" -c 'import mmcv.ops, mmdet, mmseg, timm, linattn_mm' >/dev/null 2>&1; then
  say "environment in $VENV is up to date (delete $STAMP to force a re-install)"
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  say "creating virtual environment $VENV"
  run_logged "creating the venv" "install the venv module (Debian: apt-get install python3-venv)" -- "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)

# ---- 1. torch ---------------------------------------------------------------------------------
have_ver() { "$PY" - "$1" "$2" <<'PYEOF' 2>/dev/null
import sys, importlib.metadata as m
try:
    v = m.version(sys.argv[1])
except m.PackageNotFoundError:
    sys.exit(1)
sys.exit(0 if v.split('+')[0] == sys.argv[2] else 1)
PYEOF
}
if ! have_ver torch "$TORCH_VERSION" || ! have_ver torchvision "$TORCHVISION_VERSION"; then
  say "installing torch $TORCH_VERSION + torchvision $TORCHVISION_VERSION (large download the first time)"
  run_logged "installing torch" "check registry access and disk space (torch needs ~6 GB)" -- \
    "${PIP[@]}" install "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
fi

# ---- 2. pinned registry packages (no mmcv yet: mmdet/mmseg do not require it to install) ------
say "installing pinned packages"
run_logged "installing pinned packages" "check registry access; the pins are in tools/setup.sh" -- \
  "${PIP[@]}" install "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION" "${PINNED[@]}" wheel ninja

# ---- 3. mmcv with ops, built once and cached --------------------------------------------------
TORCH_TAG="$("$PY" -c 'import torch; print(torch.__version__.replace("+", "_"))')"
CUDA_TAG="cpu"
if command -v nvcc >/dev/null 2>&1 && "$PY" -c 'import torch,sys; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
  CUDA_TAG="cuda"
fi
WHEEL_DIR="$CACHE_DIR/wheels/mmcv-$MMCV_VERSION-torch$TORCH_TAG-$PYV-$CUDA_TAG"
if ! "$PY" -c "import mmcv, mmcv.ops, sys; sys.exit(mmcv.__version__ != '$MMCV_VERSION')" >/dev/null 2>&1; then
  if ! ls "$WHEEL_DIR"/mmcv-*.whl >/dev/null 2>&1; then
    command -v "${CXX:-g++}" >/dev/null || fail "no C++ compiler found for building mmcv's ops" "install one (Debian: apt-get install g++), then run again"
    say "building mmcv $MMCV_VERSION with ops from source ($CUDA_TAG, $JOBS jobs; ~13 min on 2 cores, once per machine)"
    BUILD="$(mktemp -d)"
    trap 'rm -rf "$BUILD"' EXIT
    run_logged "downloading the mmcv source package" "check registry access" -- \
      "${PIP[@]}" download --no-deps --no-binary :all: "mmcv==$MMCV_VERSION" -d "$BUILD"
    tar -xzf "$BUILD"/mmcv-"$MMCV_VERSION".tar.gz -C "$BUILD"
    SRC="$BUILD/mmcv-$MMCV_VERSION"
    # torch >= 2.10 headers use C++20 features; mmcv 2.1.0 hard-codes older standards.
    sed -i -E 's/-std=c\+\+1[47]/-std=c++20/g' "$SRC/setup.py"
    grep -q 'c++20' "$SRC/setup.py" || fail "could not raise mmcv's C++ standard flag" "report this: mmcv's setup.py changed"
    [ "$CUDA_TAG" = cuda ] && export FORCE_CUDA=1 || export FORCE_CUDA=0
    mkdir -p "$WHEEL_DIR"
    export MMCV_WITH_OPS=1 MAX_JOBS="$JOBS"
    (cd "$SRC" && run_logged "building mmcv" \
        "read the log; a compiler >= gcc 10 is needed for C++20" -- \
        "${PIP[@]}" wheel --no-build-isolation --no-deps -w "$WHEEL_DIR" .)
  else
    say "reusing cached mmcv wheel from $WHEEL_DIR"
  fi
  run_logged "installing mmcv" "delete $WHEEL_DIR and run again" -- \
    "${PIP[@]}" install --no-deps "$WHEEL_DIR"/mmcv-*.whl
  run_logged "installing mmcv's dependencies" "check registry access" -- \
    "${PIP[@]}" install addict packaging Pillow pyyaml yapf "numpy>=1.24,<2" "opencv-python-headless<5"
fi

# ---- 4. this package --------------------------------------------------------------------------
say "installing linattn_mm (editable)"
run_logged "installing linattn_mm" "read the log" -- "${PIP[@]}" install --no-deps --no-build-isolation -e "$ROOT"

run_logged "checking the stack" "read the log; delete $VENV and run again" -- \
  "$PY" -c 'import torch, torchvision, mmcv, mmcv.ops, mmengine, mmdet, mmseg, timm, linattn_mm; print(torch.__version__, mmcv.__version__, mmdet.__version__, mmseg.__version__)'
echo "$STAMP_KEY" > "$STAMP"
say "done: $("$PY" -c 'import torch, mmcv, mmdet, mmseg; print(f"torch {torch.__version__}, mmcv {mmcv.__version__} (ops), mmdet {mmdet.__version__}, mmseg {mmseg.__version__}")')"
