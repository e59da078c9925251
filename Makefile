# Two commands a newcomer needs are `make test` and (once the demo lands) `make demo`; see README.md.
PY := .venv/bin/python

.PHONY: setup test test-fast clean-venv

setup:            ## create .venv with the pinned OpenMMLab stack (idempotent; mmcv built once, cached)
	bash tools/setup.sh

test: setup       ## set up if needed, then run the whole suite
	$(PY) -m pytest -q

test-fast:        ## the suite without set-up checks and without the slow end-to-end tests
	$(PY) -m pytest -q -m "not slow"

clean-venv:
	rm -rf .venv
