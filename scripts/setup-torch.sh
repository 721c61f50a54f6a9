#!/usr/bin/env bash
# Installs LibTorch (via the torch==2.11.0 wheel from PyPI) into a virtualenv and links it
# as the project-local `.venv`. Idempotent: a second run is a couple of file checks.
#
# The venv lives in a per-user cache keyed by torch and Python versions, so a fresh clone
# (as CI makes every run) reuses the 4.7 GB install instead of downloading it again.
# Set MERIDIAN_VENV to put it elsewhere; `.venv` is always a link to (or is) the one used.
set -euo pipefail

TORCH_VERSION=2.11.0
root=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python3}
pyver=$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
venv=${MERIDIAN_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/meridian/venv-torch-$TORCH_VERSION-py$pyver}
stamp="$venv/.meridian-torch-$TORCH_VERSION"

if [ ! -f "$stamp" ]; then
  echo "setup: installing torch==$TORCH_VERSION into $venv (first time only, a few minutes)" >&2
  mkdir -p "$(dirname "$venv")"
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "torch==$TORCH_VERSION" numpy
  "$venv/bin/python" - <<'PY'
import torch, sys
assert torch.__version__.split("+")[0] == "2.11.0", torch.__version__
PY
  touch "$stamp"
fi

# Point the project-local .venv at it, unless .venv already is a real install.
if [ -L "$root/.venv" ] || [ ! -e "$root/.venv" ]; then
  ln -sfn "$venv" "$root/.venv"
fi
