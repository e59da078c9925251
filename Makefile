# Two commands a newcomer needs are `make test` and `make demo`; see README.md.
PY := .venv/bin/python

.PHONY: setup test test-fast demo compare clean-venv

setup:            ## create .venv with the pinned OpenMMLab stack (idempotent; mmcv built once, cached)
	bash tools/setup.sh

# Two single-threaded pytest workers use both cores without oversubscribing them (torch would start
# two threads per process); set PYTEST_WORKERS=0 to run in one process.
PYTEST_WORKERS ?= 2
PYTEST := OMP_NUM_THREADS=1 $(PY) -m pytest -q $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS))

test: setup       ## set up if needed, then run the whole suite
	$(PYTEST)

test-fast:        ## the suite without set-up checks and without the slow end-to-end tests
	$(PYTEST) -m "not slow"

demo: setup       ## the main job: shipped real data, train + evaluate on CPU, benchmark (work_dirs/demo/)
	$(PY) tools/demo.py $(DEMO_ARGS)

compare: setup    ## every attention on the demo's nuclei segmenter, 3 seeds (work_dirs/compare/); COMPARE_ARGS="--quick"
	$(PY) tools/compare.py $(COMPARE_ARGS)

clean-venv:
	rm -rf .venv
