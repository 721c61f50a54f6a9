"""`meridian.Optimizer`: the script's optimizer, wrapped with one of Meridian's outer
algorithms and the network between workers."""

from __future__ import annotations

import collections
import io
import os
import re
from typing import Any, Callable, Dict, Iterable, List, Optional

import torch

from meridian import _native

ALGORITHMS = ("ddp", "diloco", "sparseloco", "demo", "streaming")

# Module names that wrappers put in front of a parameter's name: DataParallel and
# DistributedDataParallel (`module.`), torch.compile (`_orig_mod.`), activation
# checkpointing (`_checkpoint_wrapped_module.`), FSDP1 (`_fsdp_wrapped_module.`).
_WRAPPER_PARTS = {"module", "_orig_mod", "_checkpoint_wrapped_module", "_fsdp_wrapped_module"}


def canonical_name(name: str) -> str:
    """``name`` without the parts that wrappers add (``module.``, ``_orig_mod.``, ...), so
    a compiled, DDP-wrapped or checkpointed model matches the plain one."""
    parts = [p for p in name.split(".") if p not in _WRAPPER_PARTS]
    return ".".join(parts) if parts else name


def _setting(key: str, value: Any) -> str:
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (int, float)):
        text = repr(value)
    elif isinstance(value, str):
        text = value
    else:
        raise TypeError(f"config[{key!r}] = {value!r}: give a number, a bool or a string")
    return f"{key}={text}"


class _Bridge:
    """What the Rust side calls back: the script's optimizer step and its state.

    These run inside Meridian's step, which keeps the site's collectives its own. So the
    algorithms that exchange after the inner step (DiLoCo, SparseLoCo, Streaming DiLoCo)
    take it in ``Optimizer.step`` before Meridian's step (``taken``), where refreshing the
    gathered copies (for FSDP2, a collective) is safe; after an inner step taken here (DDP)
    the copies are refreshed once Meridian's step has returned."""

    def __init__(self, inner: torch.optim.Optimizer, masters: "_Masters"):
        self.inner = inner
        self.masters = masters
        self.taken = False
        self.stepped = False

    def step(self) -> None:
        if self.taken:
            return
        self.masters.grads_to_model()
        self.inner.step()
        self.stepped = True

    def state_parts(self):
        """The inner optimizer's state as (structure, f32 tensors): the structure is
        serialized with a marker where each f32 tensor was; the tensors are the
        optimizer's own (Meridian copies them once, only when it sends a state), so
        taking the state costs no serialization of the moments."""
        # A sharded (FSDP2) optimizer's state is this rank's shard only, which no other
        # rank or site could use: a newcomer's inner optimizer then starts afresh.
        if self.masters.sharded:
            return b"", []
        tensors: List[torch.Tensor] = []

        def strip(obj):
            if isinstance(obj, torch.Tensor) and obj.dtype == torch.float32 and obj.dim() > 0:
                tensors.append(obj.detach().contiguous())
                return {_TENSOR_MARK: len(tensors) - 1}
            if isinstance(obj, dict):
                return {k: strip(v) for k, v in obj.items()}
            if isinstance(obj, (list, tuple)):
                return type(obj)(strip(v) for v in obj)
            return obj

        buf = io.BytesIO()
        torch.save(strip(self.inner.state_dict()), buf)
        return buf.getvalue(), tensors

    def load_state_parts(self, meta: bytes, tensors: List[torch.Tensor]) -> None:
        if not meta or self.masters.sharded:
            return

        def fill(obj):
            if isinstance(obj, dict):
                if set(obj) == {_TENSOR_MARK}:
                    i = obj[_TENSOR_MARK]
                    if not isinstance(i, int) or not 0 <= i < len(tensors):
                        raise ValueError(f"optimizer state names tensor {i!r} of {len(tensors)}")
                    return tensors[i]
                return {k: fill(v) for k, v in obj.items()}
            if isinstance(obj, (list, tuple)):
                return type(obj)(fill(v) for v in obj)
            return obj

        self.inner.load_state_dict(fill(torch.load(io.BytesIO(meta), weights_only=True)))


# Where an f32 tensor was in the inner optimizer's serialized state (see state_parts).
_TENSOR_MARK = "__meridian_tensor__"


def _is_dtensor(t: Any) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch built without distributed
        return False
    return isinstance(t, DTensor)


def _full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor: a DTensor is gathered (a collective: every rank of its mesh calls
    this for the same tensors in the same order), anything else is itself."""
    return t.full_tensor() if _is_dtensor(t) else t


def _local_part(p: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """The part of ``full`` that DTensor ``p`` holds on this rank (torch.chunk's split, as
    DTensor's Shard placement uses)."""
    from torch.distributed.tensor import Replicate, Shard

    part = full
    for mesh_dim, placement in enumerate(p.placements):
        if isinstance(placement, Replicate):
            continue
        if not isinstance(placement, Shard):
            raise NotImplementedError(
                f"parameter placement {placement}: Meridian reads Shard and Replicate "
                f"placements (FSDP2's fully_shard, tensor parallel row/column sharding)"
            )
        chunks = torch.chunk(part, p.device_mesh.size(mesh_dim), dim=placement.dim)
        rank = p.device_mesh.get_local_rank(mesh_dim)
        part = chunks[rank] if rank < len(chunks) else part.narrow(placement.dim, 0, 0)
    return part


class _Masters:
    """Whole f32 copies of the parameters Meridian cannot work on in place: those trained
    in another dtype (bf16, fp16; the outer state stays f32) and those sharded across the
    ranks of a site (FSDP2's DTensors, gathered on every rank in parameter order). The
    outer optimizer and the exchange work on these; the model's own tensors (or shards)
    follow them after each step."""

    def __init__(self, params: List[torch.nn.Parameter]):
        self.pairs = []
        self.sharded = False
        for p in params:
            dtensor = _is_dtensor(p)
            self.sharded |= dtensor
            if p.dtype == torch.float32 and not dtensor:
                continue
            full = _full(p.detach())
            master = torch.nn.Parameter(full.to(torch.float32).clone().contiguous())
            self.pairs.append((p, master))
        self.by_param = {id(p): m for p, m in self.pairs}

    def tensor_for(self, p: torch.nn.Parameter) -> torch.Tensor:
        return self.by_param.get(id(p), p)

    @torch.no_grad()
    def from_model(self) -> None:
        for p, m in self.pairs:
            m.copy_(_full(p.detach()))

    @torch.no_grad()
    def grads_from_model(self) -> None:
        for p, m in self.pairs:
            m.grad = None if p.grad is None else _full(p.grad).to(torch.float32)

    @torch.no_grad()
    def grads_to_model(self) -> None:
        for p, m in self.pairs:
            if m.grad is None:
                continue
            if _is_dtensor(p):
                if p.grad is not None:
                    p.grad.to_local().copy_(_local_part(p, m.grad))
            elif p.grad is None:
                p.grad = m.grad.to(p.dtype)
            else:
                p.grad.copy_(m.grad)

    @torch.no_grad()
    def to_model(self) -> None:
        for p, m in self.pairs:
            if _is_dtensor(p):
                p.to_local().copy_(_local_part(p, m))
            else:
                p.copy_(m)


class Optimizer(torch.optim.Optimizer):
    """The script's optimizer ``inner``, run as the inner optimizer of a Meridian outer
    algorithm, with ``model``'s parameters exchanged through the run at ``join``.

    It shares ``inner``'s ``param_groups`` and ``state``, so LR schedulers and
    ``transformers.Trainer(optimizers=(opt, sched))`` work unchanged. ``step()`` goes after
    ``backward()``: DDP and DeMo exchange gradients there (DeMo replaces the inner step);
    DiLoCo and SparseLoCo take the inner step and exchange every ``inner_steps`` steps.

    ``config`` holds the algorithm's settings by name (``{"outer_lr": 0.7}``), as
    ``meridian worker --set`` takes them; ``transport.KEY`` tunes QUIC. ``{"overlap": N}``
    keeps training while a round is on the wire: its result lands N steps later (Streaming
    DiLoCo's τ, 5 by default, is its overlap); give ``total_steps`` so that the round the
    last step launches lands before ``step()`` returns. ``join`` may be
    omitted when ``MERIDIAN_JOIN`` holds the join string, or ``MERIDIAN_JOIN_FILE`` names a
    file holding it. ``name`` identifies the worker: a restarted worker with the same name
    takes its place (and catches up). ``total_steps`` (optional) is the run's last inner
    step. ``connect_timeout`` bounds joining; ``reconnect_timeout`` is how long a worker
    that lost the coordinator keeps trying before ``step()`` raises. The worker joins at
    the first ``step()`` (or ``worker_index``), so a checkpoint
    loaded with ``load_state_dict`` first resumes where it stopped.

    With ``site_group`` (a ``torch.distributed`` group, e.g. ``dist.group.WORLD`` under
    torchrun) the group's ranks train as one worker (``meridian.site``): every rank calls
    ``step()``, ``load_state_dict`` and ``state_dict`` together. ``shard_outer_state``
    splits the outer algorithm's state across the ranks (each holds its part, not the
    whole); by default it does where the algorithm allows (all but DDP, which has no outer
    state, under the mean aggregation); ``True`` insists, ``False`` keeps a whole copy per
    rank.
    A sharded rank's ``state_dict`` holds its own part.
    """

    def __init__(
        self,
        inner: torch.optim.Optimizer,
        model: torch.nn.Module,
        join: Optional[str] = None,
        name: Optional[str] = None,
        algorithm: str = "diloco",
        inner_steps: Optional[int] = None,
        config: Optional[Dict[str, Any]] = None,
        site_group: Any = None,
        total_steps: Optional[int] = None,
        connect_timeout: float = 60.0,
        reconnect_timeout: float = 600.0,
        shard_outer_state: Optional[bool] = None,
    ):
        if not isinstance(inner, torch.optim.Optimizer):
            raise TypeError(f"inner must be a torch.optim.Optimizer, got {type(inner).__name__}")
        if isinstance(inner, Optimizer):
            raise TypeError("inner is already a meridian.Optimizer")
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm {algorithm!r}: use one of {', '.join(ALGORITHMS)}")
        join = _resolve_join(join)
        if name is None:
            name = os.environ.get("MERIDIAN_NAME")
        if not name:
            raise ValueError("name: give each worker a stable name (or set MERIDIAN_NAME)")
        named = _named_parameters(inner, model)
        # torch.optim.Optimizer's own set-up (hooks, step patching) on inner's groups; then
        # share inner's lists and state so schedulers see one optimizer.
        super().__init__([{"params": g["params"]} for g in inner.param_groups], dict(inner.defaults))
        self.param_groups = inner.param_groups
        self.state = inner.state
        self.defaults = inner.defaults
        self.inner = inner
        self.model = model
        self.algorithm = algorithm
        self._masters = _Masters([p for _, p in named])
        devices = {p.device for _, p in named}
        if len(devices) > 1:
            raise ValueError(
                f"the parameters live on {len(devices)} devices ({sorted(map(str, devices))}); "
                "Meridian needs one device per worker (use a site of one rank per device)"
            )
        device = devices.pop()
        self._cuda = device if device.type == "cuda" else None
        sets = [_setting(k, v) for k, v in (config or {}).items()]
        params = [(n, self._masters.tensor_for(p)) for n, p in named]
        self._site = _site(site_group)
        native_args = dict(
            inner_steps=inner_steps,
            total_steps=total_steps,
            connect_timeout=connect_timeout,
            reconnect_timeout=reconnect_timeout,
        )
        bridge = _Bridge(inner, self._masters)
        self._bridge = bridge
        # The algorithms whose exchange follows the inner step (DDP and DeMo exchange the
        # gradient before it).
        self._step_first = algorithm in ("diloco", "sparseloco", "streaming")
        if self._site is None:
            self._native = _native.Worker(join, name, params, bridge, algorithm, sets, **native_args)
        else:
            self._native = self._site.worker(join, name, params, bridge, algorithm, sets,
                                             native_args, shard_outer_state)
        self._last_rounds: List[dict] = []

    # -- the run --------------------------------------------------------------------------

    @property
    def worker_index(self) -> int:
        """This worker's member id in the run (0-based, in join order); joins first."""
        return self._native.member

    @property
    def num_workers(self) -> int:
        """The number of workers the run was started for (the coordinator's
        ``min_workers``); joins first."""
        return self._native.expected_workers

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None):
        """One inner step (and the round's exchange when one falls due). Call it after
        ``backward()``. With ``closure``, it is called first (with grad enabled) for the
        loss, which then guards against divergence."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        value = None
        if loss is not None:
            value = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
        masters, bridge = self._masters, self._bridge
        masters.grads_from_model()
        if self._step_first:
            # Nothing happens between this step and the exchange after it (see _Bridge).
            self.inner.step()
            masters.from_model()
        bridge.taken, bridge.stepped = self._step_first, False
        self._cuda_before()
        try:
            self._last_rounds = self._native.step(value)
        finally:
            bridge.taken = False
        self._cuda_after()
        if bridge.stepped:
            # DDP: the inner step ran inside, on the averaged gradient.
            masters.from_model()
        masters.to_model()
        return loss

    def _cuda_before(self) -> None:
        # Meridian's CUDA kernels run on the legacy default stream, which LibTorch's
        # default stream is: work the script queued there is ordered already. Work on a
        # side stream (the script's `torch.cuda.stream(...)`) is not: finish it first.
        if self._cuda is not None:
            current = torch.cuda.current_stream(self._cuda)
            if current != torch.cuda.default_stream(self._cuda):
                current.synchronize()

    def _cuda_after(self) -> None:
        # ...and the script's side stream waits for what Meridian queued.
        if self._cuda is not None:
            current = torch.cuda.current_stream(self._cuda)
            default = torch.cuda.default_stream(self._cuda)
            if current != default:
                current.wait_stream(default)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)
        for _, m in self._masters.pairs:
            m.grad = None

    @property
    def last_rounds(self) -> List[dict]:
        """The rounds the last ``step()`` applied (round, replayed, bytes, members, hash)."""
        return list(self._last_rounds)

    @property
    def stats(self) -> dict:
        """Counters so far: steps, rounds, rounds_replayed, bytes_sent, bytes_received,
        straggled, rejected, last_rejection, last_round_seconds, waiting_seconds, rtt_ms,
        states_taken (peers' states this worker caught up from) and outer_elements (the
        parameter elements this process's outer state covers: on a rank of a sharded
        site, its part)."""
        return self._native.stats()

    def consensus_hash(self) -> str:
        """The replica hash (hex) every worker of the run shares after the same round. On a
        site whose outer state is sharded, every rank calls it together (it combines the
        ranks' parts)."""
        return self._native.consensus_hash()

    # -- state ----------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Everything needed to resume: parameters, outer and inner optimizer state, step
        and round counters (the inner optimizer's own ``state_dict`` inside)."""
        state = {"meridian_state": bytes(self._native.state()), "algorithm": self.algorithm}
        part = self._part()
        if part is not None:
            state["site_part"] = part
        if self._masters.sharded:
            # A sharded (FSDP2) inner optimizer's state is this rank's shard: no peer could
            # use it, so Meridian's own state leaves it out, but this rank's resume needs it.
            state["inner_shard"] = self.inner.state_dict()
        return state

    def _part(self) -> Optional[dict]:
        """On a rank of a sharded site, which part of the model it holds."""
        return self._native.part() if self._site is not None else None

    def load_state_dict(self, state_dict: dict) -> None:
        """Resumes from ``state_dict()`` (before the first ``step()``): the worker rejoins
        where that state stood and replays the rounds it missed."""
        if not isinstance(state_dict, dict) or "meridian_state" not in state_dict:
            raise ValueError(
                "not a meridian.Optimizer state_dict (no 'meridian_state'); to load the "
                "inner optimizer's own state, call load_state_dict on it before wrapping"
            )
        mine, theirs = self._part(), state_dict.get("site_part")
        if mine != theirs:
            raise ValueError(
                f"this state_dict holds {_describe_part(theirs)}, but this rank holds "
                f"{_describe_part(mine)}: a sharded site resumes from the states its own "
                "ranks saved, with as many ranks"
            )
        data = bytes(state_dict["meridian_state"])
        # accelerate's AcceleratedOptimizer (transformers.Trainer prepares the optimizer
        # with it) moves the state to its device by a state_dict()/load_state_dict() round
        # trip, possibly after the worker joined: the state it already holds loads as a no-op.
        if data == bytes(self._native.state()):
            return
        self._native.load_state(data)
        self._masters.to_model()
        if "inner_shard" in state_dict:
            self.inner.load_state_dict(state_dict["inner_shard"])

    def close(self) -> None:
        """Leaves the run (idempotent)."""
        self._native.close()

    def __enter__(self) -> "Optimizer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"meridian.Optimizer({self.algorithm}, inner={type(self.inner).__name__})"


def _describe_part(part: Optional[dict]) -> str:
    if part is None:
        return "the whole model"
    return f"rank {part['rank']} of {part['ranks']}'s part ({len(part['names'])} tensors)"


def _resolve_join(join: Optional[str]) -> str:
    if join:
        return join
    if os.environ.get("MERIDIAN_JOIN"):
        return os.environ["MERIDIAN_JOIN"]
    path = os.environ.get("MERIDIAN_JOIN_FILE")
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                return f.read().strip()
        except OSError as e:
            raise ValueError(f"MERIDIAN_JOIN_FILE {path}: {e.strerror}") from None
    raise ValueError(
        "join: pass the join string the coordinator printed, or set MERIDIAN_JOIN (or "
        "MERIDIAN_JOIN_FILE to the file `meridian coordinator --join-file` wrote)"
    )


def _named_parameters(inner: torch.optim.Optimizer, model: torch.nn.Module):
    """The parameters ``inner`` trains, with ``model``'s canonical names."""
    names = {}
    for name, p in model.named_parameters():
        names.setdefault(id(p), canonical_name(name))
    out, seen = [], set()
    for group in inner.param_groups:
        for p in group["params"]:
            if id(p) in seen:
                continue
            seen.add(id(p))
            if id(p) not in names:
                raise ValueError(
                    f"the optimizer trains a parameter of shape {tuple(p.shape)} that is not "
                    f"in the model: pass the model whose parameters it was built with"
                )
            if not p.is_contiguous():
                raise ValueError(f"parameter {names[id(p)]} is not contiguous")
            out.append((names[id(p)], p))
    if not out:
        raise ValueError("the optimizer trains no parameters")
    counts = collections.Counter(n for n, _ in out)
    dup = {n for n, c in counts.items() if c > 1}
    if dup:
        raise ValueError(f"parameter names collide after canonicalization: {sorted(dup)}")
    return out


def _site(group):
    if group is None:
        return None
    from meridian.site import Site

    return Site(group)
