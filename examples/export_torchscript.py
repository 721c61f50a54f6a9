"""Export a small byte-level language model as TorchScript for `meridian train`.

Meridian trains any scripted module whose forward(tokens, targets) returns the mean
cross-entropy loss (see README.md next to this file). Usage:

    .venv/bin/python examples/export_torchscript.py --out model.pt
"""

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F


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
    """Stands in for your existing model: token ids (B, T) -> logits (B, T, vocab)."""
    def __init__(self, vocab: int, context: int, dim: int = 64, layers: int = 2, heads: int = 4):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, dim), nn.Embedding(context, dim)
        nn.init.normal_(self.tok.weight, std=0.02)  # small logits: loss starts near ln(vocab)
        self.blocks = nn.ModuleList([Block(dim, heads) for _ in range(layers)])
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.tok.weight  # tied; Meridian trains the shared tensor once

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.tok(tokens) + self.pos(torch.arange(tokens.shape[1], device=tokens.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))


class ForMeridian(nn.Module):
    """The contract: forward(tokens, targets) -> scalar loss, plus context() and vocab()."""
    def __init__(self, model: nn.Module, context: int, vocab: int):
        super().__init__()
        self.model, self.context_len, self.vocab_size = model, context, vocab

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self.model(tokens)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())

    @torch.jit.export
    def context(self) -> int:
        return self.context_len

    @torch.jit.export
    def vocab(self) -> int:
        return self.vocab_size


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="model.pt")
    args = parser.parse_args()
    context, vocab = 64, 256
    torch.manual_seed(0)  # the same weights on every run
    wrapped = ForMeridian(TinyGPT(vocab, context), context, vocab)
    # torch.jit.trace(wrapped, (tokens, targets)) works too, for models without
    # data-dependent control flow: it records the operations run on that one example
    # batch, so train with windows of the example's length.
    torch.jit.script(wrapped).save(args.out)
    params = list(wrapped.parameters())  # shared (tied) tensors are listed once
    print(f"wrote {args.out}: {len(params)} parameter tensors, "
          f"{sum(p.numel() for p in params)} parameters, context {context}, vocab {vocab}")
