# Two entry points: `make demo` (the main job) and `make test`. Both create or reuse .venv.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DL_STAMP := $(VENV)/.installed-dl

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# The tests train and run real StarDist and Cellpose models on the CPU: torch 2.13.0 is the CPU
# build pip finds on this disk (other versions download a CUDA build of several GB), and cellpose
# stays below 4, whose torchvision does not import beside that torch.
$(DL_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[dev,stardist,cellpose]" "cellpose>=3.1,<4"
	touch $(DL_STAMP)

demo: $(STAMP)
	$(BIN)/popseg demo --out demo-output --overwrite

test: $(DL_STAMP)
	$(BIN)/python -m ruff check --select F,E9 src tests benchmarks
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache .hypothesis
