"""A Hugging Face `transformers.Trainer` run with `meridian.Optimizer` as its optimizer.

A GPT-2 model built from a config (nothing downloaded: 2 layers, width 64, byte-level
vocabulary of 256) trains on the shipped corpus (data/corpus.txt, read as bytes). The
Trainer keeps its loop, its accelerate wrapping and its LR scheduler; Meridian's outer
algorithm runs inside the optimizer it was given:

    trainer = Trainer(model, args, train_dataset=..., optimizers=(meridian_opt, scheduler))

Run a coordinator, then one of these per worker (README.md beside this file):

    MERIDIAN_JOIN_FILE=join.txt .venv/bin/python examples/python/hf_trainer.py --name w0

--out writes the loss curve, the worker's stats and its final consensus hash (JSON);
every worker of a run ends with the same hash.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    get_linear_schedule_with_warmup,
)

import meridian

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plain_loop import DEFAULT_DATA, ByteCorpus, settings  # noqa: E402  (the same byte data)


class ShardWindows(torch.utils.data.Dataset):
    """`count` training windows from one worker's shard, drawn once with `seed`."""

    def __init__(self, corpus: ByteCorpus, blocks: list, count: int, seed: int):
        gen = torch.Generator().manual_seed(seed)
        tokens, _ = corpus.sample(blocks, count, gen)
        self.windows = tokens

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict:
        # GPT2LMHeadModel shifts the labels itself.
        return {"input_ids": self.windows[i], "labels": self.windows[i]}


class Rounds(TrainerCallback):
    """Prints the rounds Meridian applied, from the optimizer's last step."""

    def __init__(self, opt: meridian.Optimizer, name: str):
        self.opt, self.name = opt, name
        self.last = None

    def on_step_end(self, args, state, control, **kwargs):
        for r in self.opt.last_rounds:
            self.last = {"round": r["round"], "hash": r["hash"]}
            print(f"{self.name}: round {r['round']} applied at step {state.global_step}, "
                  f"members {r['applied']}, hash {r['hash']}", flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--algorithm", default="diloco",
                   help="ddp, diloco, sparseloco, demo or streaming")
    p.add_argument("--steps", type=int, default=100, help="optimizer steps (Trainer max_steps)")
    p.add_argument("--inner-steps", type=int, default=10,
                   help="inner steps per round (DiLoCo, SparseLoCo, Streaming); "
                   "0: the algorithm's default")
    p.add_argument("--name", default=os.environ.get("MERIDIAN_NAME"),
                   help="this worker's stable name (or MERIDIAN_NAME)")
    p.add_argument("--out", type=Path,
                   help="write the loss curve, stats and final hash here (JSON)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="any text file, read as bytes")
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=10, help="LR warmup steps")
    p.add_argument("--seed", type=int, default=0,
                   help="the same on every worker: replicas must start from the same weights")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="an algorithm setting, as `meridian worker --set` takes it")
    args = p.parse_args(argv)
    if not args.name:
        p.error("--name (or MERIDIAN_NAME): give each worker a stable name")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=256,
                        n_positions=args.context, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config)
    inner = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1)
    opt = meridian.Optimizer(
        inner, model, name=args.name, algorithm=args.algorithm,
        inner_steps=args.inner_steps or None, config=settings(args.set),
        total_steps=args.steps,
    )
    # The scheduler drives the shared param_groups: the inner AdamW sees its LR.
    scheduler = get_linear_schedule_with_warmup(opt, args.warmup, args.steps)
    try:
        corpus = ByteCorpus(args.data, args.context)
        shard = corpus.shard(opt.worker_index, opt.num_workers)
        print(f"{args.name}: worker {opt.worker_index} of {opt.num_workers}, {args.algorithm}",
              flush=True)
        data = ShardWindows(corpus, shard, args.steps * args.batch,
                            seed=args.seed * 1000 + opt.worker_index)
        with tempfile.TemporaryDirectory() as scratch:
            training = TrainingArguments(
                output_dir=scratch,
                max_steps=args.steps,
                per_device_train_batch_size=args.batch,
                logging_steps=args.log_every,
                save_strategy="no",
                report_to="none",
                use_cpu=True,
                seed=args.seed,
                dataloader_num_workers=0,
                disable_tqdm=True,
            )
            rounds = Rounds(opt, args.name)
            trainer = Trainer(
                model=model, args=training, train_dataset=data,
                optimizers=(opt, scheduler), callbacks=[rounds],
            )
            result = trainer.train()
        logged = [e for e in trainer.state.log_history if "loss" in e]
        curve = [[e["step"], e["loss"]] for e in logged]
        stats = opt.stats
        digest = opt.consensus_hash()
        print(f"{args.name}: train loss {result.training_loss:.4f}")
        print(f"{args.name}: stats {json.dumps(stats)}")
        print(f"{args.name}: consensus hash {digest}", flush=True)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({
                "name": args.name, "algorithm": args.algorithm,
                "worker_index": opt.worker_index, "num_workers": opt.num_workers,
                "loss": curve, "learning_rate": [[e["step"], e["learning_rate"]] for e in logged],
                "inner_lr_last": inner.param_groups[0]["lr"],
                "stats": stats, "hash": digest, "last_round": rounds.last,
            }, indent=1))
    finally:
        opt.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
