# Two commands do all the set-up on a fresh Debian machine:
#   make demo   the end-to-end demo on Fashion-MNIST (CPU, minutes), ends with the HTML report
#   make test   lint, type check (mypy on src/) + the test suite
# Both create .venv when missing and install PyTorch, the project with its extras and the data.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.pifair-installed
# torch==2.13.0 here (not in pyproject) so pip takes the CPU wheel on disk; pyproject asks for
# torch>=2.4 so that GPU users keep their own build.
TORCH_PIN ?= torch==2.13.0
# torchvision's release for torch 2.13 (the `vision` extra: torchvision:NAME and timm:NAME models);
# PyPI's wheel is built for CUDA torch, pifair.models.external imports it beside the CPU wheel.
TORCHVISION_PIN ?= torchvision==0.28.0

.PHONY: install data demo test lint format clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH_PIN)" "$(TORCHVISION_PIN)" "numpy<2"
	$(BIN)/python -m pip install --quiet -e ".[dev,dp,he,mpc,vision]"
	@touch $@

data:
	@bash scripts/install-data.sh

demo: install data
	$(BIN)/pifair demo

test: install data
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check src tests benchmarks

format: install
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
