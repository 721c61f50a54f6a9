"""CUDA tensors go through `meridian.Optimizer` as they are (needs a GPU)."""

import pytest
import torch

import meridian
from models import net, train


@pytest.mark.skipif(not torch.cuda.is_available(), reason="skipped: no CUDA device")
def test_a_cuda_model_trains_through_a_round_in_place(coordinator_factory):
    coord = coordinator_factory(min_workers=1)
    model = net(device="cuda")
    params = list(model.parameters())
    ptrs = [p.data_ptr() for p in params]
    start = [p.detach().clone() for p in params]
    opt = meridian.Optimizer(
        torch.optim.AdamW(params, lr=0.01), model, join=coord.join, name="gpu",
        algorithm="diloco", inner_steps=2,
    )
    try:
        rounds = train(opt, model, 2)
        assert [r["round"] for r in rounds] == [0], rounds
        for p, ptr, s in zip(model.parameters(), ptrs, start):
            assert p.is_cuda and p.data_ptr() == ptr
            assert not torch.equal(p.detach(), s)
        assert opt.consensus_hash() == rounds[-1]["hash"]
    finally:
        opt.close()
