"""Where a worker finds its join string: the argument, MERIDIAN_JOIN or MERIDIAN_JOIN_FILE."""

import pytest
import torch

import meridian
from models import net, train


def test_the_join_string_can_come_from_a_file(coordinator_factory, tmp_path, monkeypatch):
    coord = coordinator_factory(min_workers=1)
    path = tmp_path / "join"
    path.write_text(coord.join + "\n")
    monkeypatch.delenv("MERIDIAN_JOIN", raising=False)
    monkeypatch.setenv("MERIDIAN_JOIN_FILE", str(path))
    monkeypatch.setenv("MERIDIAN_NAME", "from-file")
    model = net()
    opt = meridian.Optimizer(torch.optim.SGD(model.parameters(), lr=0.1), model, algorithm="ddp")
    try:
        assert (opt.worker_index, opt.num_workers) == (0, 1)
        rounds = train(opt, model, 2)
        assert [r["round"] for r in rounds] == [0, 1]  # DDP: a round every step
    finally:
        opt.close()


def test_a_missing_join_file_is_named(tmp_path, monkeypatch):
    monkeypatch.delenv("MERIDIAN_JOIN", raising=False)
    monkeypatch.setenv("MERIDIAN_JOIN_FILE", str(tmp_path / "nowhere"))
    model = net()
    with pytest.raises(ValueError, match="nowhere"):
        meridian.Optimizer(torch.optim.SGD(model.parameters(), lr=0.1), model, name="w")
