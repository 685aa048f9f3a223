"""The model spec: one typed description of a network, one validator, a partial spec."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from tsmcli.errors import RecipeError, UsageError
from tsmcli.model.spec import SPEC_KEYS, ArchOverrides, ModelSpec, as_overrides, check_model
from tsmcli.recipe import ModelConfig


def test_the_spec_is_torch_free():
    code = "import sys, tsmcli.model.spec; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


def test_the_recipe_section_is_the_spec_and_the_weights_to_start_from():
    names = [f.name for f in dataclasses.fields(ModelConfig)]
    assert names == [*SPEC_KEYS, "pretrained", "init_from"]
    section = ModelConfig(arch="resnet18", num_segments=4, shift="none")
    spec = section.spec(num_classes=7)
    assert spec == ModelSpec("resnet18", 7, num_segments=4, shift="none")
    assert spec.as_dict() == {**{k: getattr(section, k) for k in SPEC_KEYS}, "num_classes": 7}


def test_one_validator_names_the_key_as_its_caller_spells_it():
    """The API and the recipe break the same rules with the same words: the prefix and the
    error type are the caller's; the recipe's num_classes may be 0 (from classes.txt)."""
    cases = [
        ({"num_segments": 0}, "num_segments must be at least 1, got 0"),
        ({"shift_div": 1}, "shift_div must be at least 2, got 1"),
        ({"dropout": 1.0}, "dropout must be in [0, 1), got 1.0"),
        ({"shift": "both"}, "shift must be one of none, bidirectional, unidirectional, got 'both'"),
        ({"shift_place": "res"}, "shift_place must be one of blockres, block, got 'res'"),
        ({"num_segments": True}, "num_segments must be at least 1, got True"),
    ]
    for values, message in cases:
        with pytest.raises(UsageError) as api:
            ModelSpec("resnet18", 3, **values)
        assert str(api.value) == f"model {message}"
        with pytest.raises(RecipeError) as recipe:
            check_model(values, prefix="model.", error=RecipeError, classes_from_list=True)
        assert str(recipe.value) == f"model.{message}"
    with pytest.raises(UsageError, match=r"^model num_classes must be at least 1, got 0$"):
        ModelSpec("resnet18", 0)
    check_model({"num_classes": 0}, prefix="model.", error=RecipeError, classes_from_list=True)
    with pytest.raises(RecipeError, match=r"^model.num_classes must be 0 \(from classes.txt\)"):
        ModelConfig(num_classes=-1)


def test_arch_overrides_are_a_partial_spec():
    given = ArchOverrides(arch="resnet50", num_segments=8, shift=None)
    assert given.given() == {"arch": "resnet50", "num_segments": 8}  # None: not given
    assert given == ArchOverrides(num_segments=8, arch="resnet50")
    assert not ArchOverrides() and ArchOverrides(dropout=0.0)
    with pytest.raises(UsageError) as info:
        ArchOverrides(segments=8)
    assert str(info.value) == (
        f"unknown model option(s) segments; choose from {', '.join(SPEC_KEYS)}"
    )
    with pytest.raises(UsageError, match=r"^model shift_div must be at least 2, got 1$"):
        ArchOverrides(shift_div=1)  # checked as the spec checks it, before any file is read


def test_keywords_build_the_partial_spec_but_not_beside_one():
    assert as_overrides("resnet18", {"num_segments": 4}) == ArchOverrides(
        arch="resnet18", num_segments=4
    )
    given = ArchOverrides(num_segments=4)
    assert as_overrides(given, {}) is given
    with pytest.raises(UsageError, match="not both"):
        as_overrides(given, {"shift": "none"})
