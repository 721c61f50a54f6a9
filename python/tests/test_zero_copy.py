"""The tensors Meridian works on are the model's own: no copy in, no copy out."""

import torch

import meridian
from models import net, train


def test_an_outer_round_updates_the_models_parameters_in_place(coordinator_factory):
    coord = coordinator_factory(min_workers=1)
    model = net()
    params = list(model.parameters())
    ptrs = [p.data_ptr() for p in params]
    inner = torch.optim.AdamW(model.parameters(), lr=0.01)
    # What the inner step alone left, captured at the step that runs the round.
    after_inner = []
    inner.register_step_post_hook(
        lambda *_: after_inner.append([p.detach().clone() for p in params])
    )
    opt = meridian.Optimizer(
        inner, model, join=coord.join, name="solo", algorithm="diloco", inner_steps=3,
        config={"outer_lr": 0.7},
    )
    try:
        rounds = train(opt, model, 3)
        assert [r["round"] for r in rounds] == [0], rounds
        assert len(after_inner) == 3
        # The outer step wrote into the very tensors the model holds.
        assert [p.data_ptr() for p in model.parameters()] == ptrs
        assert all(a is b for a, b in zip(model.parameters(), params))
        moved = [not torch.equal(p.detach(), q) for p, q in zip(params, after_inner[-1])]
        assert all(moved), "the outer step did not change the model's parameters"
        assert opt.consensus_hash() == rounds[-1]["hash"]
    finally:
        opt.close()


def test_changes_made_in_python_are_seen_by_the_consensus_hash(coordinator_factory):
    coord = coordinator_factory(min_workers=1)
    model = net()
    opt = meridian.Optimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), model, join=coord.join, name="solo",
    )
    try:
        before = opt.consensus_hash()
        saved = model.out.bias.detach().clone()
        with torch.no_grad():
            model.out.bias.add_(1.0)
        changed = opt.consensus_hash()
        with torch.no_grad():
            model.out.bias.copy_(saved)
        assert changed != before
        assert opt.consensus_hash() == before
    finally:
        opt.close()
