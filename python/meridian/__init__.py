"""Meridian: train one network across continents from your own PyTorch script.

Wrap the script's optimizer; the rest of the loop stays as it is::

    import meridian
    opt = meridian.Optimizer(inner, model, join=JOIN, name="eu-1", algorithm="diloco")
    for batch in loader:                       # shard by opt.worker_index / opt.num_workers
        loss = model(batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()

The outer optimizer, the compression and the QUIC transport are Meridian's Rust crates,
running in this process on the script's own tensors (no copies, no daemon).
"""

import torch as _torch

TORCH_SERIES = "2.11"


def _check_torch(version: str) -> None:
    base = version.split("+")[0]
    if base.split(".")[:2] != TORCH_SERIES.split("."):
        raise ImportError(
            f"meridian was built against torch {TORCH_SERIES}.x, but this Python has torch "
            f"{version}: the native module shares LibTorch with torch and needs the same "
            f"release (install torch=={TORCH_SERIES}.0, or rebuild meridian against "
            f"torch {base})"
        )


_check_torch(_torch.__version__)

from meridian._native import MeridianError, init_logging as _init_logging  # noqa: E402
from meridian.coordinator import Coordinator  # noqa: E402
from meridian.optimizer import Optimizer, canonical_name  # noqa: E402

_init_logging("warn")

__all__ = ["Coordinator", "MeridianError", "Optimizer", "canonical_name"]
