"""A plain PyTorch training loop wrapped with `meridian.Optimizer`.

A small GPT-like model (byte-level vocabulary of 256, causal self-attention) trains on the
shipped corpus (data/corpus.txt, read as bytes) with AdamW; Meridian runs the outer
algorithm around it and exchanges with the other workers of the run. Compared with the
loop it was before, the script changes in five places, marked `# meridian (N)`.

Run a coordinator, then one of these per worker (README.md beside this file):

    MERIDIAN_JOIN_FILE=join.txt .venv/bin/python examples/python/plain_loop.py --name w0

The join string comes from MERIDIAN_JOIN_FILE (a file `meridian coordinator --join-file`
wrote) or MERIDIAN_JOIN, never from the command line: it admits its holder to the run.
--out writes a JSON file with the loss curve, the worker's stats and its final consensus
hash; every worker of a run ends with the same hash.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import meridian  # meridian (1): the package

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA = ROOT / "data" / "corpus.txt"

# As the trainer's data module does: the corpus is cut into blocks and every 20th one is
# held out, so the validation text is spread over the whole corpus.
VAL_EVERY = 20
TARGET_BLOCKS = 200


class ByteCorpus:
    """A text file as byte tokens (vocabulary 256), cut into training and held-out blocks."""

    def __init__(self, path: Path, context: int):
        data = Path(path).read_bytes()
        self.tokens = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        self.context = context
        window = context + 1
        block = max(len(data) // TARGET_BLOCKS, 2 * window)
        blocks = len(data) // block
        if blocks < 2:
            raise SystemExit(f"{path}: {len(data)} bytes, too few for windows of {window}")
        self.train, self.val = [], []
        for b in range(blocks):
            end = len(data) if b + 1 == blocks else (b + 1) * block
            (self.val if b % VAL_EVERY == VAL_EVERY // 2 else self.train).append((b * block, end))

    def shard(self, worker: int, workers: int) -> list:
        """Worker `worker`'s training blocks of `workers`: disjoint, dealt in turn."""
        blocks = self.train[worker::workers]
        if not blocks:
            raise SystemExit(f"{len(self.train)} training blocks for {workers} workers")
        return blocks

    def windows(self, starts: list) -> tuple:
        """(tokens, targets), each (len(starts), context) int64, targets shifted by one."""
        rows = torch.stack([self.tokens[s : s + self.context + 1] for s in starts]).long()
        return rows[:, :-1], rows[:, 1:]

    def sample(self, blocks: list, batch: int, gen: torch.Generator) -> tuple:
        """`batch` windows drawn uniformly from `blocks` with `gen`."""
        sizes = torch.tensor([e - s - self.context for s, e in blocks])
        which = torch.multinomial(sizes.double(), batch, replacement=True, generator=gen)
        starts = [
            blocks[b][0] + int(torch.randint(int(sizes[b]), (1,), generator=gen))
            for b in which.tolist()
        ]
        return self.windows(starts)

    def validation(self, batch: int, count: int) -> list:
        """Fixed held-out batches, the same on every worker."""
        per_block = -(-batch * count // len(self.val))
        starts = [
            s + j * (e - s - self.context) // per_block
            for s, e in self.val
            for j in range(per_block)
        ][: batch * count]
        return [self.windows(starts[i : i + batch]) for i in range(0, len(starts), batch)]


class Block(nn.Module):
    """Pre-norm transformer block with causal self-attention."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        qkv = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    """Token ids (B, T) -> logits (B, T, 256); stands in for your own model."""

    def __init__(self, context: int, dim: int = 64, layers: int = 2, heads: int = 4):
        super().__init__()
        self.tok, self.pos = nn.Embedding(256, dim), nn.Embedding(context, dim)
        nn.init.normal_(self.tok.weight, std=0.02)  # small logits: loss starts near ln(256)
        self.blocks = nn.ModuleList([Block(dim, heads) for _ in range(layers)])
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 256, bias=False)
        self.head.weight = self.tok.weight  # tied: one tensor, exchanged once

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.tok(tokens) + self.pos(torch.arange(tokens.shape[1], device=tokens.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))


def lm_loss(model: nn.Module, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = model(tokens)
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


@torch.no_grad()
def evaluate(model: nn.Module, batches: list) -> float:
    model.eval()
    loss = sum(float(lm_loss(model, x, y)) for x, y in batches) / len(batches)
    model.train()
    return loss


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--algorithm", default="diloco",
                   help="ddp, diloco, sparseloco, demo or streaming")
    p.add_argument("--steps", type=int, default=300, help="inner steps in all")
    p.add_argument("--inner-steps", type=int, default=20,
                   help="inner steps per round (DiLoCo, SparseLoCo, Streaming); "
                   "0: the algorithm's default")
    p.add_argument("--name", default=os.environ.get("MERIDIAN_NAME"),
                   help="this worker's stable name (or MERIDIAN_NAME)")
    p.add_argument("--out", type=Path,
                   help="write the loss curve, stats and final hash here (JSON)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="any text file, read as bytes")
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0,
                   help="the same on every worker: replicas must start from the same weights")
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="an algorithm setting, as `meridian worker --set` takes it")
    args = p.parse_args(argv)
    if not args.name:
        p.error("--name (or MERIDIAN_NAME): give each worker a stable name")
    return args


def settings(pairs: list) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set {pair}: expected KEY=VALUE")
        out[key] = value
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = TinyGPT(args.context, args.dim, args.layers)
    corpus = ByteCorpus(args.data, args.context)
    inner = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1)

    # meridian (2): wrap the optimizer. (3) The join string comes from MERIDIAN_JOIN or
    # MERIDIAN_JOIN_FILE, so it never shows in `ps`.
    opt = meridian.Optimizer(
        inner, model, name=args.name, algorithm=args.algorithm,
        inner_steps=args.inner_steps or None, config=settings(args.set),
        total_steps=args.steps,
    )
    try:
        # meridian (4): each worker trains on its own shard (this joins the run).
        shard = corpus.shard(opt.worker_index, opt.num_workers)
        print(f"{args.name}: worker {opt.worker_index} of {opt.num_workers}, "
              f"{sum(e - s for s, e in shard)} training bytes, {args.algorithm}", flush=True)
        gen = torch.Generator().manual_seed(args.seed * 1000 + opt.worker_index)
        val = corpus.validation(args.batch, 4)
        val_before = evaluate(model, val)
        curve, last_round = [], None
        for step in range(1, args.steps + 1):
            tokens, targets = corpus.sample(shard, args.batch, gen)
            loss = lm_loss(model, tokens, targets)
            loss.backward()
            opt.step()
            opt.zero_grad()
            curve.append([step, loss.item()])
            for r in opt.last_rounds:
                last_round = {"round": r["round"], "hash": r["hash"]}
                print(f"{args.name}: round {r['round']} applied, members {r['applied']}, "
                      f"hash {r['hash']}", flush=True)
            if step % args.log_every == 0 or step == args.steps:
                print(f"{args.name}: step {step} loss {curve[-1][1]:.4f}", flush=True)
        val_after = evaluate(model, val)
        stats = opt.stats
        digest = opt.consensus_hash()
        print(f"{args.name}: validation loss {val_before:.4f} -> {val_after:.4f} "
              f"(ln 256 = {math.log(256):.4f})")
        print(f"{args.name}: stats {json.dumps(stats)}")
        print(f"{args.name}: consensus hash {digest}", flush=True)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({
                "name": args.name, "algorithm": args.algorithm,
                "worker_index": opt.worker_index, "num_workers": opt.num_workers,
                "loss": curve, "val_loss_before": val_before, "val_loss_after": val_after,
                "stats": stats, "hash": digest, "last_round": last_round,
            }, indent=1))
    finally:
        opt.close()  # meridian (5): leave the run
    return 0


if __name__ == "__main__":
    sys.exit(main())
