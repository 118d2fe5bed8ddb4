# Two entry points: `make demo` (the main job) and `make test`. Both create or reuse .venv.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DL_STAMP := $(VENV)/.installed-dl

.PHONY: demo test bench clean xvfb

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# The tests train and run real StarDist and Cellpose models on the CPU: torch 2.13.0 is the CPU
# build pip finds on this disk (other versions download a CUDA build of several GB), and cellpose
# stays below 4, whose torchvision does not import beside that torch. The napari tests drive a
# real viewer on a virtual X screen (pytest-xvfb starts Xvfb): napari's OpenGL canvas cannot be
# made offscreen.
$(DL_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[dev,stardist,cellpose,napari,gui-test]" "cellpose>=3.1,<4"
	touch $(DL_STAMP)

# Debian packages of the X screen and the OpenGL/Qt libraries napari needs (installed once, as root).
XVFB_DEBS := xvfb xauth libgl1-mesa-dri libglx-mesa0 libegl1 libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 \
	libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 libxcb-shape0 libxcb-cursor0 libdbus-1-3
xvfb:
	@command -v Xvfb >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(XVFB_DEBS) >/dev/null; \
	  else echo "the napari tests need Xvfb: sudo apt-get install $(XVFB_DEBS)"; exit 1; fi; }

demo: $(STAMP)
	$(BIN)/popseg demo --out demo-output --overwrite

# The napari tests run in a pytest process of their own: TensorFlow (which the model tests import)
# and Mesa's OpenGL each bring an LLVM, and a process holding both crashes when it exits.
test: $(DL_STAMP) xvfb
	$(BIN)/python -m ruff check --select F,E9 src tests benchmarks
	$(BIN)/python -m pytest --ignore=tests/test_napari.py
	$(BIN)/python -m pytest tests/test_napari.py

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache .hypothesis
