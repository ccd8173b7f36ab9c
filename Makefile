# Two commands for a fresh machine (see README):
#   make demo   set up .venv, then run the main job end to end on embedded defaults
#   make test   set up .venv, then run the test suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench peer-tools gpu-kit clean

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# CPU torch first: any other torch request would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev,bench]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/gigaseg demo --workdir demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n 2 --dist loadfile --durations=25

bench: $(STAMP)
	$(BIN)/python -m bench.engine_bench
	$(BIN)/python -m bench.models_bench
	$(BIN)/python -m bench.ray_bench

# nnU-Net for the peer bench (bench/nnunet-requirements.txt says why it has a folder of its own).
peer-tools: $(STAMP)
	$(BIN)/python -m pip install -q --no-deps --upgrade --target $(VENV)/nnunet -r bench/nnunet-requirements.txt

# The wheels a lent GPU machine lacks for bench/gpu_check.sh (docs/operations.md, "Measuring on a GPU machine").
gpu-kit: $(STAMP)
	$(BIN)/python -m bench.gpu_kit

clean:
	rm -rf demo .pytest_cache .ruff_cache
