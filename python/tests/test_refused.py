"""Joins that cannot work fail at once with `MeridianError`, saying why."""

import pytest
import torch

import meridian
from models import net


def optimizer(model, join, name, **kwargs):
    return meridian.Optimizer(torch.optim.AdamW(model.parameters(), lr=0.01), model,
                              join=join, name=name, **kwargs)


@pytest.fixture
def run(coordinator_factory):
    """A run whose first worker (hidden width 16, outer_lr 0.7) has joined: the run's
    model and settings are that worker's."""
    coord = coordinator_factory(min_workers=1)
    first = optimizer(net(), coord.join, "first", config={"outer_lr": 0.7})
    assert first.worker_index == 0  # joins
    yield coord
    first.close()


def test_a_worker_with_another_model_shape_is_refused_naming_the_parameter(run):
    other = optimizer(net(hidden=12), run.join, "narrow", config={"outer_lr": 0.7})
    with pytest.raises(meridian.MeridianError) as e:
        other.worker_index
    text = str(e.value)
    assert "refused" in text, text
    assert "hidden.weight" in text and "[16, 8]" in text and "[12, 8]" in text, text
    other.close()


def test_a_worker_with_other_settings_is_refused_naming_the_setting(run):
    other = optimizer(net(), run.join, "slow", config={"outer_lr": 0.5})
    with pytest.raises(meridian.MeridianError) as e:
        other.step()
    text = str(e.value)
    assert "outer_lr" in text and "0.7" in text and "0.5" in text, text
    other.close()


def test_balancing_is_refused_for_a_wrapped_program_saying_why(run):
    # A wrapped script computes each step before handing it over: skipping it saves nothing.
    with pytest.raises(meridian.MeridianError) as e:
        optimizer(net(), run.join, "balanced", config={"outer_lr": 0.7, "balance": True})
    text = str(e.value)
    assert "balance = true" in text and "wrapped program" in text, text


def test_a_wrong_secret_is_refused(run):
    join = run.join
    secret = join[join.index("secret=") + len("secret="):][:64]
    forged = join.replace(secret, ("0" if secret[0] != "0" else "1") + secret[1:])
    other = optimizer(net(), forged, "intruder", config={"outer_lr": 0.7}, connect_timeout=10)
    with pytest.raises(meridian.MeridianError) as e:
        other.worker_index
    assert "secret" in str(e.value), str(e.value)


def test_an_unreachable_coordinator_fails_within_the_connect_timeout(coordinator_factory):
    gone = coordinator_factory(min_workers=1)
    join = gone.join
    gone.close()  # nobody listens at that address any more
    w = optimizer(net(), join, "lonely", connect_timeout=3)
    with pytest.raises(meridian.MeridianError) as e:
        w.worker_index
    text = str(e.value)
    assert "could not join the run within 3 s" in text, text
    assert gone.address in text, text


@pytest.mark.parametrize(
    "join, why",
    [
        ("not-a-join-string", "meridian://"),
        ("meridian://127.0.0.1:1/?fp=abc", "fp"),
    ],
)
def test_a_malformed_join_string_fails_at_construction(join, why):
    with pytest.raises(meridian.MeridianError) as e:
        optimizer(net(), join, "w")
    assert "join string" in str(e.value) and why in str(e.value), str(e.value)


def test_an_unknown_algorithm_or_a_missing_join_or_name_is_a_value_error(monkeypatch):
    monkeypatch.delenv("MERIDIAN_JOIN", raising=False)
    monkeypatch.delenv("MERIDIAN_JOIN_FILE", raising=False)
    monkeypatch.delenv("MERIDIAN_NAME", raising=False)
    with pytest.raises(ValueError, match="algorithm 'adam'"):
        optimizer(net(), "x", "w", algorithm="adam")
    with pytest.raises(ValueError, match="MERIDIAN_JOIN"):
        optimizer(net(), None, "w")
    with pytest.raises(ValueError, match="name"):
        optimizer(net(), "meridian://x", None)
