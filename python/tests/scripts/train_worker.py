"""One worker of a test run: a tiny MLP on a synthetic regression task, trained through
`meridian.Optimizer` as a user's script would, joining the run named by MERIDIAN_JOIN.

The test suite starts it as a subprocess (or, with --site, under torchrun) and reads back
the JSON it writes: the loss of every step, the hash every applied round left, and the
worker's stats. Everything is deterministic given the worker's shard and step, so two runs
with the same settings train on the same data.

Besides the JSON it prints `JOINED <member>` once it has joined and one line per applied
round (`ROUND <n> <hash>`) on stdout, so a test can follow its progress as it happens;
with --hold it waits for a line on stdin after joining.
"""

import argparse
import json
import os
import sys
import time

import torch

import meridian

IN, OUT, BATCH = 8, 1, 64


class Net(torch.nn.Module):
    """Named layers, so errors name `hidden.weight` rather than `0.weight`."""

    def __init__(self, hidden: int):
        super().__init__()
        self.hidden = torch.nn.Linear(IN, hidden)
        self.out = torch.nn.Linear(hidden, OUT)

    def forward(self, x):
        return self.out(torch.tanh(self.hidden(x)))


class Wrapped(torch.nn.Module):
    """Holds the model as `.module`, as DistributedDataParallel does, so its parameter
    names gain a `module.` prefix."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module(x)


def teacher():
    """The fixed function every worker learns (the same on every machine)."""
    g = torch.Generator().manual_seed(1234)
    w1 = torch.randn(IN, 16, generator=g)
    w2 = torch.randn(16, OUT, generator=g) / 4
    return lambda x: torch.tanh(x @ w1) @ w2 + 0.1 * x[:, :1]


def batch(target, shard: int, step: int, dtype):
    """The batch of `shard` at `step`: a function of both alone."""
    g = torch.Generator().manual_seed(100_003 * (shard + 1) + step)
    x = torch.randn(BATCH, IN, generator=g)
    return x.to(dtype), target(x).to(dtype)


def number(text: str):
    """A setting's value: an int where it reads as one (counts), else a float."""
    try:
        return int(text)
    except ValueError:
        return float(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--algorithm", default="diloco")
    ap.add_argument("--steps", type=int, required=True, help="the run's last inner step")
    ap.add_argument("--stop-after", type=int, help="stop (and save) after this many steps")
    ap.add_argument("--save", help="torch.save the optimizer's state_dict here on stopping")
    ap.add_argument("--load", help="load_state_dict from this file before the first step")
    ap.add_argument("--inner-steps", type=int, default=5)
    ap.add_argument("--hidden", type=int, default=16)
    ap.add_argument("--lr", type=float, default=0.02, help="the inner AdamW's learning rate")
    ap.add_argument("--set", action="append", default=[], help="config KEY=VALUE (a number)")
    ap.add_argument("--wrap", action="store_true", help="hold the model as .module")
    ap.add_argument("--site", action="store_true", help="a torchrun rank: DDP within a site")
    ap.add_argument("--fsdp2", action="store_true",
                    help="with --site: FSDP2 (fully_shard) within the site instead of DDP")
    ap.add_argument("--step-seconds", type=float, default=0.0,
                    help="sleep this long after each step (a slower machine's pace)")
    ap.add_argument("--hold", action="store_true",
                    help="once joined, wait for a line on stdin before the first step")
    ap.add_argument("--out", required=True,
                    help="where the JSON goes (a site's rank R writes OUT.rankR instead)")
    args = ap.parse_args()

    # The test machine is small and runs several workers at once.
    torch.set_num_threads(1)
    rank, ranks, group = 0, 1, None
    if args.site:
        import torch.distributed as dist

        dist.init_process_group("gloo")
        rank, ranks, group = dist.get_rank(), dist.get_world_size(), dist.group.WORLD

    torch.manual_seed(0)  # every worker starts from the same parameters
    model = Net(args.hidden)
    if args.site and args.fsdp2:
        from torch.distributed.fsdp import fully_shard

        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                fully_shard(module)
        fully_shard(model)
    elif args.site:
        model = torch.nn.parallel.DistributedDataParallel(model)
    elif args.wrap:
        model = Wrapped(model)
    inner = torch.optim.AdamW(model.parameters(), lr=args.lr)
    config = {k: number(v) for k, v in (s.split("=", 1) for s in args.set)}
    opt = meridian.Optimizer(
        inner,
        model,
        name=os.environ.get("MERIDIAN_NAME"),
        algorithm=args.algorithm,
        inner_steps=args.inner_steps,
        config=config,
        site_group=group,
        total_steps=args.steps,
    )
    if args.load:
        opt.load_state_dict(torch.load(args.load, weights_only=True))

    target = teacher()
    stop = args.stop_after if args.stop_after is not None else args.steps
    losses, rounds, first_step = [], [], None
    shard = None
    while opt.stats["steps"] < stop:
        if shard is None:
            # Joins the run; within a site each rank has its own share of the site's data.
            shard = opt.worker_index * ranks + rank
            print(f"JOINED {opt.worker_index}", flush=True)
            if args.hold:
                sys.stdin.readline()
        step = opt.stats["steps"]
        x, y = batch(target, shard, step, torch.float32)
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        if args.step_seconds:
            time.sleep(args.step_seconds)
        if first_step is None:
            first_step = opt.stats["steps"]
        losses.append([step, loss.item()])
        applied = opt.last_rounds
        for i, r in enumerate(applied):
            # The replica hash as the script sees it once the step's last round is applied.
            r = dict(r, consensus=opt.consensus_hash() if i == len(applied) - 1 else None)
            rounds.append(r)
            print(f"ROUND {r['round']} {r['hash']}", flush=True)

    if args.save:
        torch.save(opt.state_dict(), args.save)
    result = {
        "name": os.environ.get("MERIDIAN_NAME"),
        "rank": rank,
        "worker_index": opt.worker_index,
        "num_workers": opt.num_workers,
        "losses": losses,
        "rounds": rounds,
        "steps_after_first_step": first_step,
        "stats": opt.stats,
        "final_hash": opt.consensus_hash(),
        "param_names": [n for n, _ in model.named_parameters()],
    }
    opt.close()
    out = f"{args.out}.rank{rank}" if args.site else args.out
    with open(out, "w", encoding="utf-8") as f:
        json.dump(result, f)
    if args.site:
        # Tear the process group down with every rank done: exiting with gloo's threads
        # still running can abort the process ("terminate called without an active
        # exception") after the run itself succeeded.
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
