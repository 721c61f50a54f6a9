"""Tiny models and data for the in-process tests (the worker subprocesses carry their own,
in scripts/train_worker.py, as a user's script would)."""

import torch


class Net(torch.nn.Module):
    """A two-layer MLP with named layers (errors name `hidden.weight`)."""

    def __init__(self, hidden: int = 16, inputs: int = 8):
        super().__init__()
        self.hidden = torch.nn.Linear(inputs, hidden)
        self.out = torch.nn.Linear(hidden, 1)

    def forward(self, x):
        return self.out(torch.tanh(self.hidden(x)))


def net(hidden: int = 16, dtype=torch.float32, device="cpu") -> Net:
    torch.manual_seed(0)
    return Net(hidden).to(dtype=dtype, device=device)


def loss_of(model: torch.nn.Module, step: int) -> torch.Tensor:
    """The regression loss of `model` on the batch of `step` (deterministic)."""
    p = next(model.parameters())
    g = torch.Generator().manual_seed(step)
    x = torch.randn(16, 8, generator=g)
    y = torch.tanh(x[:, :4].sum(dim=1, keepdim=True))
    x, y = x.to(dtype=p.dtype, device=p.device), y.to(dtype=p.dtype, device=p.device)
    return torch.nn.functional.mse_loss(model(x), y)


def train(opt, model: torch.nn.Module, steps: int) -> list:
    """`steps` ordinary steps of a user's loop; the rounds they applied."""
    rounds = []
    for _ in range(steps):
        loss = loss_of(model, opt.stats["steps"])
        loss.backward()
        opt.step()
        opt.zero_grad()
        rounds.extend(opt.last_rounds)
    return rounds
