# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

RUN_STAMP := $(VENV)/.installed-run

# torch and torchvision are pinned first so no other dependency can pull a different torch build.
# The demo needs only the library; the tests also the optional runtimes (onnx, OpenVINO) and
# the dev tools, installed on top.
$(RUN_STAMP): $(BIN)/python setup.py
	$(BIN)/pip install "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/pip install -e .
	touch $(RUN_STAMP)

$(STAMP): $(RUN_STAMP)
	$(BIN)/pip install -e ".[dev,onnx,openvino]"
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check resdet resdet_apps tools tests
	$(BIN)/ruff format --check resdet resdet_apps tools tests

# pytest exits 5 when it collected no tests; that must fail, and it does (non-zero).
test: $(STAMP) lint
	$(BIN)/python -m pytest -q tests

demo: $(RUN_STAMP)
	$(BIN)/python tools/demo.py --output output/demo

clean:
	rm -rf output
