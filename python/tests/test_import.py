"""`import meridian` works with the torch it was built against and refuses another one."""

import pytest
import torch

import meridian


def test_the_package_imports_with_its_torch():
    assert meridian._native.__name__ == "meridian._native"
    assert issubclass(meridian.MeridianError, RuntimeError)
    meridian._check_torch(torch.__version__)  # the running torch passes its own check
    assert {"Coordinator", "Optimizer", "MeridianError", "canonical_name"} <= set(meridian.__all__)


def test_another_torch_release_is_refused_naming_both_versions():
    with pytest.raises(ImportError) as e:
        meridian._check_torch("2.10.1")
    text = str(e.value)
    assert "2.10.1" in text, text
    assert f"torch {meridian.TORCH_SERIES}" in text, text


def test_a_local_build_suffix_of_the_same_release_is_accepted():
    meridian._check_torch(f"{meridian.TORCH_SERIES}.3+cu128")
