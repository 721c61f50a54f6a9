"""An FSDP2 rank's `state_dict()` round trip, in a process group of one: a fresh model and
optimizer that load it hold the same parameters and the same inner optimizer moments
(sharded DTensors) as the ones that saved it. Prints `SAME` on success.

Run with MERIDIAN_JOIN set to a run of one worker: the first optimizer trains three
steps (one round); the second loads its state and never joins."""

import io
import os
import sys
import tempfile

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

import meridian

sys.path.insert(0, os.path.dirname(__file__))
from train_worker import Net  # noqa: E402


def build(seed: int):
    torch.manual_seed(seed)
    model = Net(16)
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            fully_shard(module)
    fully_shard(model)
    inner = torch.optim.AdamW(model.parameters(), lr=0.02)
    opt = meridian.Optimizer(inner, model, name=f"fsdp2-{seed}", algorithm="diloco",
                             inner_steps=2, site_group=dist.group.WORLD)
    return model, inner, opt


def local(t):
    return t.to_local() if hasattr(t, "to_local") else t


def main() -> int:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        store = f"file://{folder}/store"
        dist.init_process_group("gloo", init_method=store, rank=0, world_size=1)
        return check()


def check() -> int:
    model, inner, opt = build(0)
    for step in range(3):
        x = torch.randn(8, 8, generator=torch.Generator().manual_seed(step))
        model(x).square().mean().backward()
        opt.step()
        opt.zero_grad()
    assert opt.stats["rounds"] == 1, opt.stats
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=False)

    model2, inner2, opt2 = build(1)
    opt2.load_state_dict(saved)
    for (name, a), b in zip(model.named_parameters(), model2.parameters()):
        assert torch.equal(local(a), local(b)), f"parameter {name} differs"
    moments = 0
    for p, q in zip(model.parameters(), model2.parameters()):
        for key in ("exp_avg", "exp_avg_sq"):
            a, b = inner.state[p][key], inner2.state[q][key]
            assert torch.equal(local(a), local(b)), f"{key} differs"
            moments += 1
    assert moments == 8, moments
    print("SAME", flush=True)
    opt.close()
    opt2.close()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
