# The README's two commands: `make demo` and `make test`. Both build .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test bench clean

venv: $(STAMP)

# torch is pinned to the CPU build on this machine's disk; an unpinned torch pulls several GB of CUDA.
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/medunet demo --out runs/demo --overwrite

# The report's browser test needs a Chromium; finding or installing one is test set-up only.
test: $(STAMP)
	sh scripts/install-browser.sh $(BIN)/python
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs
