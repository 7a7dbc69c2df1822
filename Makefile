# Two commands on a fresh machine: `make run` and `make test` (each sets up .venv once).
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= config.example.yaml

SYNAPSE ?= .cache/synapse

.PHONY: run test lint check bench bench-cost bench-timers bench-ui screenshots image-test clean synapse

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	PYTHONWARNINGS=ignore $(PY) -m pip install -q -e '.[dev]'  # quiet setuptools' editable-mode notes
	touch $@

# A real Matrix homeserver for the Matrix tests, in its own virtualenv (its pins stay out of ours).
synapse: $(SYNAPSE)/.installed

$(SYNAPSE)/.installed:
	python3 -m venv $(SYNAPSE)
	$(SYNAPSE)/bin/pip install -q 'matrix-synapse>=1.100,<2'
	touch $@

run: $(VENV)/.installed
	$(VENV)/bin/kourier-relay serve -c $(CONFIG)

# -rs: why each skip; two workers per core (tests often wait on a real process); whole files,
# slowest first (tests/ordering.py), so a module fixture is built once and no long file starts last
test: $(VENV)/.installed
	$(PY) -m pytest -q -rs -n $$(( 2 * $$(nproc) )) --dist loadfile --no-loadscope-reorder

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check relay tests
	$(VENV)/bin/mypy
	$(VENV)/bin/hadolint Dockerfile

check: $(VENV)/.installed
	$(VENV)/bin/kourier-relay check --strict -c $(CONFIG)

bench: $(VENV)/.installed
	$(PY) bench/run.py
	$(PY) bench/timers.py

bench-cost: $(VENV)/.installed  # instructions per event (callgrind): what machine noise cannot move
	$(PY) bench/cost.py $(BENCH_COST_ARGS)

bench-timers: $(VENV)/.installed
	$(PY) bench/timers.py

bench-ui: $(VENV)/.installed  # the status page with 1M events in the store
	$(PY) bench/ui.py

screenshots: $(VENV)/.installed  # docs/images/ui-*.png, through the headless Chromium
	$(PY) scripts/screenshots.py

image-test:
	scripts/image-test

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache relay.db relay.db-*
