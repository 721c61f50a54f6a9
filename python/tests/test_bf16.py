"""A model trained in bfloat16: Meridian works on f32 masters, the model stays bf16."""

import torch

import meridian
from models import net, train


def test_a_bf16_model_trains_through_rounds_and_stays_bf16(coordinator_factory):
    coord = coordinator_factory(min_workers=1)
    model = net(dtype=torch.bfloat16)
    params = list(model.parameters())
    start = [p.detach().clone() for p in params]
    inner = torch.optim.AdamW(params, lr=0.01)
    # The model as the inner step left it, at the step that runs the round.
    after_inner = []
    inner.register_step_post_hook(
        lambda *_: after_inner.append([p.detach().clone() for p in params])
    )
    opt = meridian.Optimizer(
        inner, model, join=coord.join, name="bf16", algorithm="diloco", inner_steps=3,
    )
    try:
        rounds = train(opt, model, 3)
        assert [r["round"] for r in rounds] == [0], rounds
        assert len(after_inner) == 3
        for p, s, a in zip(model.parameters(), start, after_inner[-1]):
            assert p.dtype == torch.bfloat16
            assert torch.isfinite(p.detach()).all()
            assert not torch.equal(p.detach(), s), "training did not move the parameters"
            assert not torch.equal(p.detach(), a), "the round's outer step did not reach the model"
        more = train(opt, model, 3)
        assert [r["round"] for r in more] == [1], more
        assert all(p.dtype == torch.bfloat16 for p in model.parameters())
        assert opt.consensus_hash() == more[-1]["hash"]
    finally:
        opt.close()
