"""Run a timm script (``train.py``, ``validate.py``, ``benchmark.py`` of the timm repository) with our models
registered, so ``--model linpvt_t_inline`` etc. resolve:

    python tools/timm_train.py PATH/TO/pytorch-image-models/train.py --data-dir DATA --model linpvt_t_inline ...

Everything after the script path goes to the script unchanged (see README "Pretraining with timm").
"""
import os.path as osp
import runpy
import sys

_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)


def main() -> None:
    if len(sys.argv) < 2 or not osp.isfile(sys.argv[1]):
        raise SystemExit('usage: python tools/timm_train.py PATH/TO/pytorch-image-models/train.py [ARGS...]\n'
                         f'error: {sys.argv[1] if len(sys.argv) > 1 else "no script"!r} is not a file; clone the '
                         'timm repository at the installed release (git clone --branch v$(python -c "import '
                         'timm; print(timm.__version__)") https://github.com/huggingface/pytorch-image-models)')
    import linattn_mm  # noqa: F401  (registers the lin* timm models)
    script = osp.abspath(sys.argv[1])
    sys.argv = [script] + sys.argv[2:]
    sys.path.insert(0, osp.dirname(script))
    runpy.run_path(script, run_name='__main__')


if __name__ == '__main__':
    main()
