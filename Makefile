# Two commands do all the set-up: `make demo` and `make test`. Both create .venv if missing and
# install the project with its pinned dependencies (constraints.txt is the lock file).
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test ui check lint typecheck docs pytest lock clean bench-features bench-registry \
        bench-training bench-serving bench-experiments bench-recsys bench-traces bench-llm

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# xgrammar requires triton for its CUDA kernel only (imported lazily, never on CPU). With triton
# installed, torch._dynamo imports it, and triton's LLVM aborts any process that has already loaded
# TensorFlow ("LLVM ERROR: inconsistency in registered CommandLine options"). On a machine without
# CUDA we remove it; a GPU machine keeps it (its torch build brings triton anyway).
DROP_TRITON = if ! command -v nvidia-smi >/dev/null 2>&1; then $(PIP) uninstall -y -q triton 2>/dev/null || true; fi

# Core dependencies: what the demo needs.
$(VENV)/.stamp-core: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) install -q -c constraints.txt -e .
	$(DROP_TRITON)
	touch $@

# Everything `make test` needs: core + TensorFlow + test tools.
$(VENV)/.stamp-all: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) install -q -c constraints.txt -e '.[tensorflow,ray,dev]'
	$(DROP_TRITON)
	touch $@ $(VENV)/.stamp-core

# The dashboard's browser libraries, from the npm registry, served by Flywheel itself.
UI_DIR    := src/flywheel/ui
UI_VENDOR := $(UI_DIR)/static/vendor/.stamp
$(UI_VENDOR): $(UI_DIR)/frontend/package.json $(UI_DIR)/frontend/package-lock.json
	cd $(UI_DIR)/frontend && npm ci --no-audit --no-fund --loglevel=error
	mkdir -p $(UI_DIR)/static/vendor
	cp $(UI_DIR)/frontend/node_modules/uplot/dist/uPlot.iife.min.js \
	   $(UI_DIR)/frontend/node_modules/uplot/dist/uPlot.min.css $(UI_DIR)/static/vendor/
	touch $@

ui: $(UI_VENDOR)

demo: $(VENV)/.stamp-core $(UI_VENDOR)
	$(BIN)/python examples/demo.py $(DEMO_ARGS)

test: $(VENV)/.stamp-all $(UI_VENDOR) check pytest

check: lint typecheck docs

lint: $(VENV)/.stamp-all
	$(BIN)/ruff check src tests benchmarks examples tools
	$(BIN)/ruff format --check src tests benchmarks examples tools
	$(BIN)/lint-imports

typecheck: $(VENV)/.stamp-all
	$(BIN)/mypy src/

# The documentation site (docs/, mkdocs.yml) into site/. Strict: a broken link or reference
# fails. Offline: the reference pages are generated from the code by tools/docs_hooks.py.
docs: $(VENV)/.stamp-all
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

pytest: $(VENV)/.stamp-all $(UI_VENDOR)
	$(BIN)/pytest $(PYTEST_ARGS)

# Regenerate the lock file from the current venv.
lock:
	$(PIP) freeze --exclude-editable | grep -v '^flywheel' > constraints.txt

bench-features bench-registry bench-training bench-serving bench-experiments bench-recsys bench-traces bench-llm: $(VENV)/.stamp-all
	@set -e; for f in benchmarks/$(subst bench-,,$@)_*.py; do \
	  if [ -f "$$f" ]; then echo "== $$f"; $(BIN)/python "$$f"; else echo "no benchmark matches $$f"; exit 1; fi; \
	done

clean:
	rm -rf $(VENV) .bench .mypy_cache .ruff_cache build site src/*.egg-info \
	  $(UI_DIR)/static/vendor $(UI_DIR)/frontend/node_modules
