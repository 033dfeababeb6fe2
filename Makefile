# Two commands: `make demo` and `make test`. Both do all set-up on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.microturn-installed
DEMO := demo

.PHONY: setup demo test test-fast bench-deps clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(PY) -m microturn.cli synth --out $(DEMO)/media --sessions 8 --seed 0 --duration 30
	rm -rf $(DEMO)/corpus
	$(PY) -m microturn.cli build --input $(DEMO)/media/sessions.jsonl --out $(DEMO)/corpus --config configs/demo.yaml
	$(PY) -m microturn.cli validate $(DEMO)/corpus

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

# The FFmpeg CLI, the decode benchmark's baseline only (the project never needs it); Debian/Ubuntu.
bench-deps:
	apt-get update && apt-get install -y ffmpeg

clean:
	rm -rf $(DEMO) .pytest_cache .hypothesis
