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

.PHONY: setup setup-rust demo test python fmt lint build bench bench-cuda gpu-kit gpu-check clean-venv

setup:
	@bash scripts/setup.sh

# What the Rust binaries need (torch, the corpus), without the Python package.
setup-rust:
	@MERIDIAN_SETUP_PYTHON=0 bash scripts/setup.sh

build: setup-rust
	cargo build --release --workspace

## demo: the main job (see README): what happens if you train across continents? Every
## outer algorithm trains a small byte-level GPT over the same simulated cross-continent
## network (real QUIC over simulated links, in virtual time) and is compared on loss,
## bytes, simulated wall-clock and compute utilization.
demo: setup-rust
	cargo build --release -p meridian-trainer --bin meridian
	target/release/meridian simulate --preset cross-continent --out out/demo

## test: formatting, lints (warnings denied), every test in the workspace, then the
## Python package's pytest suite (python/tests; setup built the package).
test: setup
	cargo fmt --all --check
	cd python && cargo fmt --check
	cargo clippy --workspace --all-targets --quiet -- -D warnings
	cd python && CARGO_TARGET_DIR=$${CARGO_TARGET_DIR:-$(ROOT)/target} cargo clippy --all-targets --quiet -- -D warnings
	bash scripts/run-tests.sh

## python: rebuild the meridian Python package into .venv after changing its Rust code
## (setup does it too).
python: setup

fmt:
	cargo fmt --all
	cd python && cargo fmt

## bench: criterion benchmarks (long; see BENCHMARKS.md).
bench: setup
	cargo bench -p meridian-benches

## bench-cuda: the CUDA fused compress against a tch-op reference and the bandwidth floor
## (needs a GPU; see BENCHMARKS.md).
bench-cuda: setup
	cargo run --release -p meridian-benches --bin cuda_compress

## gpu-kit: every GPU check, prebuilt into gpu-kit/ (run gpu-kit/gpu-check.sh on a GPU
## machine with PyTorch 2.11; it needs no Rust there).
gpu-kit: setup
	bash scripts/gpu-kit.sh

## gpu-check: the GPU checks here (needs a GPU): kernel parity, the optimizers and
## `meridian train --device cuda`, then the benchmark. Logs in out/gpu-check.
gpu-check: gpu-kit
	PYTHON=$(ROOT)/.venv/bin/python gpu-kit/gpu-check.sh out/gpu-check
