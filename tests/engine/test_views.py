"""Test-time views: the protocol presets, what a user asks for, and how a checkpoint's videos
are read (from its stored recipe, or the defaults)."""

from __future__ import annotations

import pytest

from tsmcli.data.layout import FRAME_TEMPLATE
from tsmcli.data.manifest import list_manifests, load_manifest
from tsmcli.engine.views import PROTOCOLS, EvalData, resolve_protocol, resolve_views
from tsmcli.errors import UsageError
from tsmcli.recipe import DataConfig, Recipe
from tsmcli.view_request import ViewRequest


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
    assert resolve_views(ViewRequest()) is PROTOCOLS["single"]
    dense = resolve_views(ViewRequest(), dense_training=True)
    assert dense.dense and dense.name == "single (dense=True)"
    assert resolve_views(ViewRequest("single"), dense_training=True) is PROTOCOLS["single"]
    assert not resolve_views(ViewRequest(dense=False), dense_training=True).dense
    kinetics = resolve_views(ViewRequest("kinetics", clips=2))
    assert kinetics == resolve_protocol("kinetics", clips=2)
    with pytest.raises(UsageError, match="--crops must be one of 1, 3, 10, got 5"):
        resolve_views(ViewRequest(crops=5))


def test_a_request_says_which_options_ask_for_it():
    request = ViewRequest("kinetics", clips=2, full_res=False, average="prob")
    assert request.overrides() == {"clips": 2, "full_res": False, "average": "prob"}
    assert request.cli_args() == "--protocol kinetics --clips 2 --no-full-res --average prob"
    assert str(request) == "kinetics clips=2 full_res=False average=prob"


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


def test_every_manifest_names_a_preset_of_the_one_protocol_table():
    # The protocol table lives here (PROTOCOLS); a manifest only names the preset its
    # dataset's papers test with, and build-list tells the user which one.
    named = {name: load_manifest(name).test_protocol for name in list_manifests()}
    assert set(named.values()) <= set(PROTOCOLS)
    assert named["kinetics400"] == "kinetics" and named["sthv2"] == named["sthv1"] == "sthv2"
    kinetics, sthv2 = PROTOCOLS["kinetics"], PROTOCOLS["sthv2"]
    assert (kinetics.clips, kinetics.crops, kinetics.full_res, kinetics.dense) == (
        10,
        3,
        True,
        True,
    )
    assert (sthv2.crops, sthv2.full_res, sthv2.twice_sample) == (3, True, True)
