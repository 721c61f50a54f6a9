# Two entry points: `make demo` (the main job) and `make test` (the whole suite).
# Both install what they need first (scripts/setup.sh, idempotent).
SHELL := /bin/bash
ROOT := $(CURDIR)

# torch-sys locates LibTorch through the virtualenv's Python (see scripts/setup-torch.sh);
# the built binaries carry an rpath to it, so running them needs none of this.
export LIBTORCH_USE_PYTORCH := 1
export VIRTUAL_ENV := $(ROOT)/.venv
export PATH := $(ROOT)/.venv/bin:$(PATH)
export CARGO_TERM_COLOR ?= never

.PHONY: setup demo test fmt lint build bench bench-cuda clean-venv

setup:
	@bash scripts/setup.sh

build: setup
	cargo build --release --workspace

## demo: the most complete run Meridian has today (see README): every outer algorithm
## training a small byte-level GPT side by side in one process, then what each
## compression pipeline sends.
demo: setup
	cargo build --release -p meridian-trainer --bin meridian
	target/release/meridian train --model gpt --set model.d_model=128 --set model.layers=2 \
	  --set model.heads=2 --set model.context=128 --steps 300 --inner-steps 30 --out out/demo
	target/release/meridian compress

## test: formatting, lints (warnings denied) and every test in the workspace.
test: setup
	cargo fmt --all --check
	cargo clippy --workspace --all-targets --quiet -- -D warnings
	bash scripts/run-tests.sh

fmt:
	cargo fmt --all

## bench: criterion benchmarks (long; see BENCHMARKS.md).
bench: setup
	cargo bench -p meridian-benches

## bench-cuda: the CUDA fused compress against a tch-op reference and the bandwidth floor
## (needs a GPU; see BENCHMARKS.md).
bench-cuda: setup
	cargo run --release -p meridian-benches --bin cuda_compress
