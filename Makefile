# sslr: `make help` lists every target.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export WANDB_MODE ?= offline

.DEFAULT_GOAL := help

help:  ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed  ## create .venv with torch, torchvision and sslr (editable, with dev tools)

test: install  ## run the test suite (CPU; excludes slow and gpu tests)
	$(PY) -m pytest -q

test-fresh:  ## run `make test` in a fresh clone of the committed HEAD (a temp folder), as CI does
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	git clone -q "$(CURDIR)" "$$tmp/sslr" && echo "make test-fresh: clone of $$(git rev-parse --short HEAD) in $$tmp/sslr" && \
	$(MAKE) -C "$$tmp/sslr" test VENV=.venv

test-slow: install  ## run the slow tests too
	$(PY) -m pytest -q -m "not gpu"

test-gpu: install  ## run the GPU tests (needs CUDA)
	$(PY) -m pytest -q -m gpu

lint: install  ## ruff lint and format check
	$(VENV)/bin/ruff check sslr tests benchmarks
	$(VENV)/bin/ruff format --check sslr tests benchmarks

format: install  ## apply ruff's formatting and safe fixes
	$(VENV)/bin/ruff check --fix sslr tests benchmarks
	$(VENV)/bin/ruff format sslr tests benchmarks

bench: install  ## run every benchmark (small sizes on the CPU, full sizes on CUDA); tables to benchmarks/results/
	$(PY) benchmarks/step_time.py
	$(PY) benchmarks/epoch_time.py
	$(PY) benchmarks/attack_throughput.py
	$(PY) benchmarks/map_time.py

demo: install  ## the main job on embedded data (Digits, CPU): BP pretraining, then bp and usf fine-tuning
	$(PY) -m sslr.demo

.PHONY: help install test test-fresh test-slow test-gpu lint format bench demo
