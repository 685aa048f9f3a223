"""Test-time views: the protocol presets, what a user asks for, and how a checkpoint's videos
are read (from its stored recipe, or the defaults)."""

from __future__ import annotations

import pytest

from tsmcli.data.layout import FRAME_TEMPLATE
from tsmcli.engine.views import PROTOCOLS, EvalData, ViewRequest, resolve_protocol
from tsmcli.errors import UsageError
from tsmcli.recipe import DataConfig, Recipe


def test_resolve_protocol_validates():
    assert resolve_protocol() == PROTOCOLS["single"]
    assert resolve_protocol("sthv2", twice_sample=True) is PROTOCOLS["sthv2"]  # no change
    assert resolve_protocol(average="prob").name == "single (average=prob)"
    for bad, match in [
        ({"name": "ucf"}, "unknown protocol 'ucf'"),
        ({"crops": 5}, "--crops"),
        ({"clips": 0}, "--clips"),
        ({"average": "max"}, "--average"),
    ]:
        with pytest.raises(UsageError, match=match):
            resolve_protocol(**bad)


def test_a_request_without_a_preset_follows_the_checkpoints_sampling():
    assert ViewRequest().resolve() is PROTOCOLS["single"]
    dense = ViewRequest().resolve(dense_training=True)
    assert dense.dense and dense.name == "single (dense=True)"
    assert ViewRequest("single").resolve(dense_training=True) is PROTOCOLS["single"]
    assert not ViewRequest(dense=False).resolve(dense_training=True).dense
    assert ViewRequest("kinetics", clips=2).resolve() == resolve_protocol("kinetics", clips=2)
    with pytest.raises(UsageError, match="--crops must be one of 1, 3, 10, got 5"):
        ViewRequest(crops=5).resolve()


def test_eval_data_comes_from_the_stored_recipe_or_the_defaults():
    none = EvalData.from_recipe(None)
    defaults = DataConfig()
    assert none == EvalData(
        source=None,
        backend=defaults.backend,
        frame_template=FRAME_TEMPLATE,
        input_size=defaults.input_size,
        scale_size=defaults.scale_size,
        dense_training=False,
    )
    recipe = Recipe(
        data=DataConfig(
            source="videos",
            input_size=112,
            scale_size=128,
            sampling="dense",
            frame_template="{:06d}.jpg",
        )
    )
    stored = EvalData.from_recipe(recipe, backend="pyav")
    assert stored == EvalData(
        source="videos",
        backend="pyav",
        frame_template="{:06d}.jpg",
        input_size=112,
        scale_size=128,
        dense_training=True,
    )
    assert EvalData.from_recipe(recipe, source="frames").source == "frames"
