"""One site of a Meridian run: a torchrun job whose ranks train as one worker.

Inside the site, torch.distributed does what it always does: the model is wrapped in
DistributedDataParallel (gloo on CPU, NCCL on GPUs) and gradients are averaged across the
ranks at every backward. Between sites, Meridian's outer algorithm runs:
`meridian.Optimizer(..., site_group=dist.group.WORLD)` makes the group's rank 0 the only
one that talks to the run; it shares what the run answered with the other ranks, so every
rank applies the same rounds and the site's replicas stay identical.

Run a coordinator, then one torchrun job per site (README.md beside this file):

    MERIDIAN_JOIN_FILE=join.txt .venv/bin/python -m torch.distributed.run --standalone \\
        --nproc_per_node 2 examples/python/torchrun_site.py --name site-a

The model and data are those of plain_loop.py; each site trains on its shard of the
corpus (by opt.worker_index / opt.num_workers) and each rank on its part of that shard.
--out (written by rank 0) holds the loss curve, the site's stats and the consensus hash
of every rank; all ranks of all sites end with the same hash.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import meridian

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plain_loop import DEFAULT_DATA, ByteCorpus, TinyGPT, lm_loss, settings  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--algorithm", default="diloco",
                   help="ddp, diloco, sparseloco, demo or streaming")
    p.add_argument("--steps", type=int, default=200, help="inner steps in all")
    p.add_argument("--inner-steps", type=int, default=20,
                   help="inner steps per round (DiLoCo, SparseLoCo, Streaming); "
                   "0: the algorithm's default")
    p.add_argument("--name", default=os.environ.get("MERIDIAN_NAME"),
                   help="the site's stable name, the same on all its ranks (or MERIDIAN_NAME)")
    p.add_argument("--out", type=Path, help="rank 0 writes the loss curve, stats and hashes here")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="any text file, read as bytes")
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--batch", type=int, default=8, help="windows per rank per step")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0,
                   help="the same on every site: replicas must start from the same weights")
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="an algorithm setting, as `meridian worker --set` takes it")
    args = p.parse_args(argv)
    if not args.name:
        p.error("--name (or MERIDIAN_NAME): give each site a stable name")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(minutes=5))
    rank, ranks = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    torch.manual_seed(args.seed)
    model = DistributedDataParallel(TinyGPT(args.context).to(device))
    inner = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1)
    opt = meridian.Optimizer(
        inner, model, name=args.name, algorithm=args.algorithm,
        inner_steps=args.inner_steps or None, config=settings(args.set),
        total_steps=args.steps, site_group=dist.group.WORLD,
    )
    try:
        corpus = ByteCorpus(args.data, args.context)
        # The site's shard of the run, then this rank's part of it.
        site_blocks = corpus.shard(opt.worker_index, opt.num_workers)
        blocks = site_blocks[rank::ranks]
        if rank == 0:
            print(f"{args.name}: site {opt.worker_index} of {opt.num_workers}, {ranks} ranks, "
                  f"{args.algorithm} over {'nccl' if cuda else 'gloo'}", flush=True)
        gen = torch.Generator().manual_seed((args.seed * 1000 + opt.worker_index) * 1000 + rank)
        curve, last_round = [], None
        for step in range(1, args.steps + 1):
            tokens, targets = corpus.sample(blocks, args.batch, gen)
            loss = lm_loss(model, tokens.to(device), targets.to(device))
            loss.backward()  # DDP averages the gradients across the site's ranks here
            opt.step()
            opt.zero_grad()
            curve.append([step, loss.item()])
            if rank == 0:
                for r in opt.last_rounds:
                    last_round = {"round": r["round"], "hash": r["hash"]}
                    print(f"{args.name}: round {r['round']} applied, members {r['applied']}, "
                          f"hash {r['hash']}", flush=True)
                if step % args.log_every == 0 or step == args.steps:
                    print(f"{args.name}: step {step} loss {curve[-1][1]:.4f}", flush=True)
        digest = opt.consensus_hash()
        hashes = [None] * ranks
        dist.all_gather_object(hashes, digest)
        if rank == 0:
            stats = opt.stats
            print(f"{args.name}: stats {json.dumps(stats)}")
            print(f"{args.name}: consensus hash {digest} (ranks: {' '.join(hashes)})", flush=True)
            if args.out:
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps({
                    "name": args.name, "algorithm": args.algorithm,
                    "worker_index": opt.worker_index, "num_workers": opt.num_workers,
                    "ranks": ranks, "loss": curve, "stats": stats,
                    "hash": digest, "rank_hashes": hashes, "last_round": last_round,
                }, indent=1))
    finally:
        opt.close()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
