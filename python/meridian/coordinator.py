"""An in-process coordinator, for tests and notebooks (a trial runs `meridian coordinator`)."""

from __future__ import annotations

import os
from typing import Optional

from meridian import _native


class Coordinator:
    """Admits workers that hold the run's join secret and closes rounds.

    ``with meridian.Coordinator(listen="127.0.0.1:0", min_workers=2) as coord:`` starts one
    on a background thread; ``coord.join`` is the join string workers need (it holds the
    run's secret: pass it through a file or ``MERIDIAN_JOIN``, not a command line).
    ``topology`` is ``relay``, ``all-gather`` or ``ring``; ``state_dir`` keeps the
    identity and protocol state so a restarted coordinator resumes the run.
    """

    def __init__(
        self,
        listen: str = "127.0.0.1:0",
        min_workers: int = 1,
        topology: str = "relay",
        deadline_ms: Optional[int] = None,
        state_dir: Optional[os.PathLike] = None,
    ):
        if min_workers < 1:
            raise ValueError(f"min_workers {min_workers}: a run needs at least one worker")
        self._native = _native.Coordinator(
            listen,
            min_workers=min_workers,
            topology=topology,
            deadline_ms=deadline_ms,
            state_dir=None if state_dir is None else os.fspath(state_dir),
        )
        self.min_workers = min_workers

    @property
    def join(self) -> str:
        """The join string, as ``meridian coordinator`` prints it."""
        return self._native.join

    @property
    def address(self) -> str:
        """The UDP address it listens on."""
        return self._native.address

    def close(self) -> None:
        """Stops the coordinator (idempotent)."""
        self._native.close()

    def __enter__(self) -> "Coordinator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
