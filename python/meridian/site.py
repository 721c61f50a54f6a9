"""Sites: one torchrun job (a process group) training as one Meridian worker.

The group's rank 0 (the leader) alone holds the QUIC connection. After each of its steps
it broadcasts what its link answered; the other ranks (followers) replay those answers,
so every rank applies the very same rounds to its (identical, DDP-synchronized) replica.
A site joins, fails and rejoins as a whole: if the leader goes, torchrun restarts the job
and the leader rejoins under the site's name.
"""

from __future__ import annotations

from typing import Any, Dict, List

import torch.distributed as dist

from meridian import _native


class Site:
    """The ranks of ``group`` as one worker (see the module's docs)."""

    def __init__(self, group: Any):
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(
                "site_group given, but torch.distributed is not initialized: call "
                "dist.init_process_group first (torchrun sets the environment for it)"
            )
        self.group = group
        self.rank = dist.get_rank(group)
        self.size = dist.get_world_size(group)
        # broadcast_object_list takes the source as a global rank.
        self.leader_global = dist.get_global_rank(group, 0) if group is not None else 0

    @property
    def leads(self) -> bool:
        return self.rank == 0

    def _share(self, payload: Any) -> Any:
        box: List[Any] = [payload if self.leads else None]
        dist.broadcast_object_list(box, src=self.leader_global, group=self.group)
        return box[0]

    def worker(self, join, name, params, bridge, algorithm, sets, native_args: Dict[str, Any]):
        role = "leader" if self.leads else "follower"
        native = _native.Worker(join, name, params, bridge, algorithm, sets, site_role=role, **native_args)
        return SiteWorker(self, native)


class SiteWorker:
    """A rank's native worker, kept in step with its site's leader."""

    def __init__(self, site: Site, native):
        self.site = site
        self.native = native
        self.joined_site = False

    def _ensure_joined(self) -> None:
        if self.joined_site:
            return
        if self.site.leads:
            # An error on the leader (refused, unreachable) still reaches the others, so
            # no rank waits for a broadcast that never comes.
            try:
                message = bytes(self.native.site_message())
                shared = ("ok", message)
            except BaseException as e:  # noqa: BLE001 - re-raised below after telling the site
                self.site._share(("error", f"{type(e).__name__}: {e}"))
                raise
            self.site._share(shared)
        else:
            status, message = self.site._share(None)
            if status != "ok":
                raise _native.MeridianError(f"the site's leader could not join: {message}")
            self.native.follow(message)
        self.joined_site = True

    @property
    def member(self) -> int:
        self._ensure_joined()
        return self.native.member

    @property
    def expected_workers(self) -> int:
        self._ensure_joined()
        return self.native.expected_workers

    def step(self, loss):
        self._ensure_joined()
        if self.site.leads:
            try:
                rounds = self.native.step(loss)
                shared = ("ok", bytes(self.native.take_site_log()))
            except BaseException as e:  # noqa: BLE001 - re-raised after telling the site
                self.site._share(("error", f"{type(e).__name__}: {e}"))
                raise
            self.site._share(shared)
            return rounds
        status, log = self.site._share(None)
        if status != "ok":
            raise _native.MeridianError(f"the site's leader failed its step: {log}")
        self.native.feed(log)
        return self.native.step(loss)

    def stats(self):
        return self.native.stats()

    def consensus_hash(self):
        return self.native.consensus_hash()

    def state(self):
        return self.native.state()

    def load_state(self, data):
        return self.native.load_state(data)

    def close(self):
        return self.native.close()
