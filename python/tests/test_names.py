"""Parameters are matched by canonical name, so a wrapped model (DDP's `module.`,
torch.compile's `_orig_mod.`) joins the run of the plain one."""

import pytest

import meridian
from conftest import RUNS, assert_same_rounds


@pytest.mark.parametrize(
    "name, canonical",
    [
        ("module._orig_mod.layer.0.weight", "layer.0.weight"),
        ("module.encoder.bias", "encoder.bias"),
        ("_orig_mod.lm_head.weight", "lm_head.weight"),
        ("_fsdp_wrapped_module._checkpoint_wrapped_module.mlp.weight", "mlp.weight"),
        ("layer.0.weight", "layer.0.weight"),
        # Only whole parts are wrappers: a layer merely named like one keeps its name.
        ("modules.0.weight", "modules.0.weight"),
    ],
)
def test_canonical_name_drops_the_parts_wrappers_add(name, canonical):
    assert meridian.canonical_name(name) == canonical


def test_a_ddp_style_wrapped_model_and_a_plain_one_train_as_one_run(two_worker_run):
    # The DDP run's second worker holds its model as `.module` (see conftest.RUNS).
    plain, wrapped = two_worker_run("ddp")
    assert plain["param_names"][0] == "hidden.weight"
    assert wrapped["param_names"][0] == "module.hidden.weight"
    assert_same_rounds([plain, wrapped], RUNS["ddp"].rounds)
    for r in (plain, wrapped):
        assert r["stats"]["rejected"] == 0 and r["stats"]["straggled"] == 0, r["stats"]
