"""Sites: one torchrun job (a process group) training as one Meridian worker.

The group's rank 0 (the leader) alone holds the QUIC connection. The ranks step
together: whenever Meridian asks its link what the network said, the leader asks its
connection and broadcasts the answer, and every other rank waits for it at the same call,
so every rank applies the very same rounds to its (identical, DDP-synchronized) replica.
A site joins, fails and rejoins as a whole: if the leader goes, torchrun restarts the job
and the leader rejoins under the site's name.

The site's outer state is sharded: each rank runs the outer algorithm on its own run of
the model's tensors (canonical order, balanced by elements) and keeps the outer state
(DiLoCo's and Streaming DiLoCo's global copy and momentum, SparseLoCo's error feedback,
DeMo's momentum) of those alone. The leader sends the ranks' payloads merged as one;
whenever a round (or a peer's state) moved the parameters, each rank broadcasts its
tensors to the others. DDP keeps no outer state, and the robust aggregations judge each
member's whole update: those run unsharded, every rank holding the whole outer state.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist

from meridian import _native


# The fixed-size first tensor of a broadcast: a 4-byte length, then up to 60 bytes inline.
_HEAD = 64


def _tensor(data: bytes) -> torch.Tensor:
    """``data`` as a CPU uint8 tensor (a copy: the bytes object stays immutable)."""
    return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)


class Site:
    """The ranks of ``group`` as one worker (see the module's docs). It is also the channel
    Meridian's ranks talk through: ``broadcast`` and ``gather`` over the group."""

    def __init__(self, group: Any):
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(
                "site_group given, but torch.distributed is not initialized: call "
                "dist.init_process_group first (torchrun sets the environment for it)"
            )
        self.group = group
        self.rank = dist.get_rank(group)
        self.size = dist.get_world_size(group)
        self.leader_global = self.global_rank(0)
        # Collectives on NCCL take CUDA tensors; gloo takes CPU ones.
        nccl = "nccl" in str(dist.get_backend(group)).lower()
        self.device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")

    def global_rank(self, rank: int) -> int:
        """The global rank of the group's ``rank`` (collectives take global ranks)."""
        return dist.get_global_rank(self.group, rank) if self.group is not None else rank

    @property
    def leads(self) -> bool:
        return self.rank == 0

    def broadcast(self, message: Optional[bytes]) -> bytes:
        """The leader's ``message`` on every rank (the others pass ``None``).

        Meridian's ranks exchange one such message per inner step (what the leader's
        connection answered), most of them a few bytes: those travel inside one 64-byte
        tensor, a single collective (a third of what broadcasting a pickled object costs on
        gloo); longer ones follow in a second tensor of their exact length."""
        head = torch.zeros(_HEAD, dtype=torch.uint8)
        if self.leads:
            inline = message[:_HEAD - 4]
            head[:4 + len(inline)] = _tensor(len(message).to_bytes(4, "little") + inline)
        head = head.to(self.device)
        dist.broadcast(head, src=self.leader_global, group=self.group)
        head_bytes = head.cpu().numpy().tobytes()
        length = int.from_bytes(head_bytes[:4], "little")
        if length <= _HEAD - 4:
            return head_bytes[4:4 + length]
        body = _tensor(message) if self.leads else torch.empty(length, dtype=torch.uint8)
        body = body.to(self.device)
        dist.broadcast(body, src=self.leader_global, group=self.group)
        return message if self.leads else body.cpu().numpy().tobytes()

    def gather(self, message: bytes) -> Optional[List[bytes]]:
        """Every rank's ``message`` in rank order on the leader, ``None`` elsewhere."""
        out: List[Any] = [None] * self.size
        dist.all_gather_object(out, message, group=self.group)
        return out if self.leads else None

    def worker(self, join, name, params, bridge, algorithm, sets, native_args: Dict[str, Any],
               shard_outer_state: Optional[bool]):
        order = sorted(params, key=lambda p: p[0])
        bounds = self._bounds(order, algorithm, sets, shard_outer_state)
        if bounds is None:
            native = _native.Worker(join, name, params, bridge, algorithm, sets, site=self,
                                    **native_args)
            return SiteWorker(self, native, order, None)
        shard = ([n for n, _ in order], [list(t.shape) for _, t in order], bounds, self.rank)
        mine = order[bounds[self.rank]:bounds[self.rank + 1]]
        native = _native.Worker(join, name, mine, bridge, algorithm, sets, site=self,
                                shard=shard, **native_args)
        return SiteWorker(self, native, order, bounds)

    def _bounds(self, order, algorithm, sets, wanted: Optional[bool]) -> Optional[List[int]]:
        """Where each rank's run of tensors starts, or ``None`` to run unsharded."""
        if wanted is False or self.size == 1:
            return None
        why = _native.shard_refusal(algorithm, sets, len(order))
        bounds = _native.shard_bounds([t.numel() for _, t in order], self.size)
        if why is None and bounds is None:
            why = f"the model has {len(order)} tensors for {self.size} ranks"
        if why is not None:
            if wanted:
                raise ValueError(f"shard_outer_state=True, but {why}")
            return None
        return bounds


class SiteWorker:
    """A rank's native worker, stepping with the site's other ranks."""

    def __init__(self, site: Site, native, order: List[Tuple[str, torch.Tensor]],
                 bounds: Optional[List[int]]):
        self.site = site
        self.native = native
        self.order = order
        self.bounds = bounds
        self.joined_site = False
        # What had moved the parameters when the parts were last shared (see _moves).
        self.shared_at = (0, 0, 0)

    @property
    def sharded(self) -> bool:
        return self.bounds is not None

    def part(self) -> Optional[dict]:
        """Which part of the model this rank holds (for its checkpoint), or ``None``."""
        if not self.sharded:
            return None
        lo, hi = self.bounds[self.site.rank], self.bounds[self.site.rank + 1]
        return {"rank": self.site.rank, "ranks": self.site.size,
                "names": [n for n, _ in self.order[lo:hi]]}

    @torch.no_grad()
    def share_parts(self) -> None:
        """Every rank's tensors from the rank that updated them (a collective)."""
        if not self.sharded:
            return
        for r in range(self.site.size):
            part = [t for _, t in self.order[self.bounds[r]:self.bounds[r + 1]]]
            flat = torch.cat([t.reshape(-1) for t in part])
            dist.broadcast(flat, src=self.site.global_rank(r), group=self.site.group)
            if r != self.site.rank:
                at = 0
                for t in part:
                    t.copy_(flat[at:at + t.numel()].view_as(t))
                    at += t.numel()

    def _ensure_joined(self) -> None:
        if self.joined_site:
            return
        self.native.join()
        self.joined_site = True
        # Joining may have taken a peer's state or replayed rounds, each rank its part.
        self._after()

    def _moves(self):
        """What has moved the parameters so far: rounds applied (an overlapped round when
        it lands) and peers' states taken."""
        return (self.native.progress()[1], self.native.stats()["states_taken"])

    def _after(self) -> None:
        """Shares the parts if a round or a peer's state changed them (on every rank
        alike: the ranks applied the same rounds)."""
        now = self._moves()
        if now != self.shared_at:
            self.share_parts()
        self.shared_at = now

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
        rounds = self.native.step(loss)
        self._after()
        return rounds

    def stats(self):
        return self.native.stats()

    def consensus_hash(self):
        # On a sharded site, a collective: the whole model's hash from every rank's part.
        self._ensure_joined()
        return self.native.consensus_hash()

    def state(self):
        return self.native.state()

    def load_state(self, data):
        self.native.load_state(data)
        # Each rank loaded its own part: the others learn it (every rank loads together).
        self.share_parts()
        self.shared_at = self._moves()

    def close(self):
        return self.native.close()
