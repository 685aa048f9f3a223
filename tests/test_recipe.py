"""Recipes: strict loading, helpful errors, overrides, round trips, every shipped recipe builds."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from tsmcli.errors import RecipeError
from tsmcli.recipe import Recipe, apply_overrides, load_recipe, shipped_recipes
from tsmcli.resources import recipes_dir

SHIPPED = [
    "demo",
    "kinetics_r50",
    "kinetics_r50_dense",
    "kinetics_r50_flow",
    "kinetics_r50_online",
    "sthv2_r50",
    "ucf101_r50_finetune",
]


def _write(tmp_path: Path, text: str, name: str = "mine.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _error(path_or_name, overrides=()) -> str:
    with pytest.raises(RecipeError) as info:
        load_recipe(path_or_name, overrides)
    message = str(info.value)
    assert "\n" not in message  # the CLI prints it as one line
    return message


def test_shipped_recipes_are_listed():
    assert shipped_recipes() == SHIPPED
    assert not (recipes_dir() / ".keep").exists()


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_recipe_loads_round_trips_and_builds(name):
    from tsmcli.model.tsn import TSN

    recipe = load_recipe(name)
    assert recipe.name == name
    assert Recipe.from_dict(recipe.to_dict()) == recipe
    m = recipe.model
    model = TSN(m.spec(m.num_classes or 7))
    assert model.new_fc.out_features == (m.num_classes or 7)
    assert model.config()["arch"] == m.arch


def test_official_hyperparameters_are_what_the_papers_scripts_use():
    k400 = load_recipe("kinetics_r50")
    assert (k400.optim.lr, k400.optim.reference_batch_size, k400.optim.weight_decay) == (
        0.02,
        128,
        1e-4,
    )
    assert (k400.train.epochs, k400.optim.lr_steps, k400.optim.clip_grad) == (
        50,
        (20.0, 40.0),
        20.0,
    )
    assert (k400.model.dropout, k400.model.partial_bn, k400.data.flip) == (0.5, False, "on")
    assert k400.model.pretrained and k400.model.init_from is None
    online = load_recipe("kinetics_r50_online")
    assert online.model.shift == "unidirectional"
    assert dataclasses.replace(online, name="x", model=k400.model) == dataclasses.replace(
        k400, name="x"
    )
    ssv2 = load_recipe("sthv2_r50")
    assert (ssv2.optim.lr, ssv2.optim.reference_batch_size, ssv2.optim.weight_decay) == (
        0.01,
        64,
        5e-4,
    )
    assert ssv2.data.flip == "off"
    ucf = load_recipe("ucf101_r50_finetune")
    assert ucf.model.init_from and ucf.optim.fc_lr5 is True
    assert ucf.optim.lr < k400.optim.lr and ucf.train.epochs < k400.train.epochs
    demo = load_recipe("demo")
    assert (demo.model.arch, demo.data.flip, demo.model.pretrained, demo.model.init_from) == (
        "resnet18_narrow",
        "swap",  # mirrored with the label swapped: moving right <-> left
        None,
        None,
    )
    assert demo.data.dataset == "synth" and demo.train.steps > 0


def test_every_shipped_recipe_spells_out_every_key():
    """The shipped recipes are the documentation of their runs: each names every key."""
    for name in shipped_recipes():
        raw = yaml.safe_load((recipes_dir() / f"{name}.yaml").read_text(encoding="utf-8"))
        for section, config in load_recipe(name).to_dict().items():
            if section != "name":
                assert set(raw[section]) == set(config), (name, section)


def test_name_with_or_without_yaml_and_path_give_the_same_recipe(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # shipped names work from any directory
    assert (
        load_recipe("demo") == load_recipe("demo.yaml") == load_recipe(recipes_dir() / "demo.yaml")
    )


def test_unknown_recipe_name_suggests_the_closest():
    message = _error("kinetics_r5")
    assert "kinetics_r5" in message and "did you mean 'kinetics_r50'" in message


def test_unknown_key_names_dotted_key_and_closest(tmp_path):
    path = _write(tmp_path, "optim:\n  lrr: 0.1\n")
    message = _error(path)
    assert str(path) in message
    assert "'optim.lrr'" in message and "did you mean 'optim.lr'?" in message


def test_key_in_wrong_place_points_to_its_section(tmp_path):
    message = _error(_write(tmp_path, "epochs: 3\n"))
    assert "'epochs'" in message and "'train.epochs'" in message


def test_wrong_type_names_key_type_and_value(tmp_path):
    message = _error(_write(tmp_path, "train:\n  epochs: ten\n"))
    assert "train.epochs must be an integer, got 'ten'" in message
    message = _error(_write(tmp_path, "model:\n  partial_bn: 1\n"))
    assert "model.partial_bn must be true or false, got 1" in message


def test_enums_are_checked(tmp_path):
    message = _error(_write(tmp_path, "model:\n  shift: both\n"))
    assert "model.shift must be one of none, bidirectional, unidirectional, got 'both'" in message
    for key, bad in [
        ("model.shift_place", "stage"),
        ("optim.schedule", "poly"),
        ("data.flip", "maybe"),
        ("data.source", "audio"),
        ("data.backend", "opencv"),
        ("train.amp", "fp8"),
        ("data.sampling", "random"),
    ]:
        assert key in _error("demo", [f"{key}={bad}"])


def test_yaml_quirks_are_read_as_meant(tmp_path):
    recipe = load_recipe(
        _write(tmp_path, "data:\n  flip: off\noptim:\n  weight_decay: 1e-4\n  lr_steps: [3, 5]\n")
    )
    assert recipe.data.flip == "off"  # YAML 1.1 reads off as false
    assert recipe.optim.weight_decay == 1e-4  # and 1e-4 as a string
    assert recipe.optim.lr_steps == (3.0, 5.0)
    assert recipe.name == "mine"  # the file's stem


def test_overrides_go_through_the_same_checks():
    recipe = load_recipe(
        "demo",
        [
            "optim.lr=0.5",
            "model.shift=none",
            "data.scales=[1, 0.5]",
            "train.out_dir=elsewhere",
            "model.pretrained=",
            "name=other",
        ],
    )
    assert (recipe.optim.lr, recipe.model.shift, recipe.data.scales) == (0.5, "none", (1.0, 0.5))
    assert (recipe.train.out_dir, recipe.model.pretrained, recipe.name) == (
        "elsewhere",
        None,
        "other",
    )
    message = _error("demo", ["optim.lrr=1"])
    assert message.startswith("--set optim.lrr=1:") and "did you mean 'optim.lr'?" in message
    assert "train.epochs must be an integer, got 2.5" in _error("demo", ["train.epochs=2.5"])
    assert "expected KEY=VALUE" in _error("demo", ["optim.lr"])
    assert "name a key inside model" in _error("demo", ["model=3"])


def test_ranges_are_checked():
    assert "model.num_segments must be at least 1" in _error("demo", ["model.num_segments=0"])
    assert "data.scale_size must be at least data.input_size" in _error(
        "demo", ["data.scale_size=16"]
    )
    assert "optim.lr_steps must be in increasing order" in _error("demo", ["optim.lr_steps=[5, 2]"])
    assert "data.flip" in _error("demo", ["data.dataset=", "data.flip=swap"])  # needs a manifest
    assert "train.steps must be 0 (use train.epochs) or more, got -1" in _error(
        "demo", ["train.steps=-1"]
    )
    assert "optim.warmup_epochs must not exceed train.epochs" in _error(
        "demo", ["train.epochs=1", "optim.warmup_epochs=2", "train.steps=0"]
    )
    assert "train.save_every must be at least 1, got 0" in _error("demo", ["train.save_every=0"])
    assert "data.colour_jitter must be in [0, 1) (0: off), got 1.0" in _error(
        "demo", ["data.colour_jitter=1"]
    )
    assert "data.frame_cache_mb must be >= 0 (0: off), got -1" in _error(
        "demo", ["data.frame_cache_mb=-1"]
    )
    assert "train.label_smoothing must be in [0, 1), got 1.0" in _error(
        "demo", ["train.label_smoothing=1"]
    )
    # with train.steps the number of epochs is known only from the list: not checked here
    steps = ["train.epochs=1", "optim.warmup_epochs=2", "train.steps=100"]
    assert load_recipe("demo", steps).train.steps == 100


@pytest.mark.parametrize(
    ("template", "problem"),
    [("00001.jpg", "no {} field for the frame number"), ("img_{}_{}.jpg", "2 fields")],
)
def test_a_frame_template_without_one_integer_field_names_the_key(template, problem):
    # the check build-list's --template uses, reported as the recipe key
    assert _error("demo", [f"data.frame_template={template}"]).endswith(
        f"data.frame_template {template!r} is not a frame file name with one integer field "
        f"({problem}); use e.g. 'img_{{:05d}}.jpg'"
    )


def test_recipe_is_frozen_and_yaml_round_trips(tmp_path):
    recipe = load_recipe("kinetics_r50", ["optim.fc_lr5=false"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        recipe.optim.lr = 1.0  # type: ignore[misc]
    saved = _write(tmp_path, recipe.to_yaml(), "recipe.yaml")
    assert load_recipe(saved) == recipe  # the run dir's recipe.yaml rebuilds the same recipe
    assert apply_overrides(recipe, ["train.epochs=3"]).train.epochs == 3
    assert recipe.to_dict()["data"]["scales"] == [1.0, 0.875, 0.75, 0.66]  # plain builtins


def test_set_errors_blame_the_set_and_file_errors_the_file(tmp_path):
    demo = recipes_dir() / "demo.yaml"
    assert _error("demo", ["model.num_segments=0"]) == (
        "--set model.num_segments=0: model.num_segments must be at least 1, got 0"
    )
    # a range error that only the combination makes: the --set that made it is named
    path = _write(tmp_path, "optim:\n  warmup_epochs: 5\ntrain:\n  epochs: 10\n")
    assert _error(path, ["optim.lr=0.1", "train.epochs=2"]) == (
        "--set train.epochs=2: optim.warmup_epochs must not exceed train.epochs, got 5.0"
    )
    # a file wrong on its own is the file's fault, whatever is set after it
    bad = _write(tmp_path, "model:\n  dropout: 1.5\n", "bad.yaml")
    assert _error(bad, ["optim.lr=0.1"]) == f"{bad}: model.dropout must be in [0, 1), got 1.5"
    # a file only the overrides complete is fine
    swap = _write(tmp_path, "data:\n  flip: swap\n", "swap.yaml")
    assert load_recipe(swap, ["data.dataset=sthv2"]).data.flip == "swap"
    assert _error(demo, ["data.dataset="]).startswith("--set data.dataset=: data.flip swap")


def test_text_keys_keep_the_text_as_typed():
    recipe = load_recipe(
        "demo",
        [
            "data.root=2024",
            "data.val_list=0123",
            "name=2024",
            "model.init_from=1.50",
            "data.train_list=true",
        ],
    )
    assert (recipe.data.root, recipe.data.val_list, recipe.name) == ("2024", "0123", "2024")
    assert (recipe.model.init_from, recipe.data.train_list) == ("1.50", "true")
    recipe = load_recipe("demo", ["data.val_list=", "train.epochs=3", "train.steps=0"])
    assert recipe.data.val_list is None and recipe.train.epochs == 3  # typed keys stay typed
    assert "train.epochs must be an integer" in _error("demo", ["train.epochs=three"])


@pytest.mark.parametrize("name", ["..", ".", "a/b", "../up", "back\\slash", "/abs"])
def test_recipe_name_is_one_folder_name(tmp_path, name):
    message = _error("demo", [f"name={name}"])
    assert message.startswith(f"--set name={name}: name must be a single folder name")
    path = _write(tmp_path, f"name: '{name}'\n")
    assert _error(path).startswith(f"{path}: name must be a single folder name")


def test_non_utf8_recipe_is_named(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("model:\n  arch: résnet50\n".encode("latin-1"))
    assert _error(path) == f"{path}: not UTF-8 text (byte 16); save the recipe as UTF-8"


def test_a_stored_recipe_reads_back_typed_and_older_ones_take_the_new_defaults():
    recipe = load_recipe("demo")
    assert Recipe.from_stored(recipe.to_dict(), "last.pt") == recipe
    older = {
        "name": "old",
        "model": {"arch": "resnet18"},
        "data": {"input_size": 112, "scale_size": 128},
    }
    typed = Recipe.from_stored(older, "old.pt")
    assert typed == Recipe(
        name="old",
        model=dataclasses.replace(Recipe().model, arch="resnet18"),
        data=dataclasses.replace(Recipe().data, input_size=112, scale_size=128),
    )
    assert Recipe.from_stored(None, "official.pth") is None
    with pytest.raises(RecipeError, match=r"^bad.pt \(stored recipe\): unknown key 'data.sise'"):
        Recipe.from_stored({"data": {"sise": 1}}, "bad.pt")


def test_a_folder_given_as_the_recipe_is_named_as_a_folder(tmp_path):
    (tmp_path / "demo").mkdir()
    assert _error(tmp_path / "demo") == (
        f"{tmp_path / 'demo'}: is a folder, not a recipe file; give a .yaml file or a shipped "
        f"recipe name ({', '.join(SHIPPED)})"
    )
    assert _error(tmp_path / "gone.yaml").startswith(f"{tmp_path / 'gone.yaml'}: no such recipe")


def test_epochs_set_on_a_recipe_whose_length_is_in_steps_is_refused():
    """The demo recipe counts steps (train.steps: 600): train.epochs alone would be ignored."""
    assert load_recipe("demo").train.steps == 600
    assert _error("demo", ["train.epochs=1"]) == (
        "--set train.epochs=1: the recipe sets train.steps=600, which decides the run's "
        "length; add --set train.steps=0 to train by epochs"
    )
    with pytest.raises(RecipeError, match=r"^--set train.epochs=2: the recipe sets train.steps"):
        apply_overrides(load_recipe("demo"), ["train.epochs=2"])
    by_epochs = load_recipe("demo", ["train.epochs=1", "train.steps=0"])
    assert (by_epochs.train.epochs, by_epochs.train.steps) == (1, 0)
    by_steps = load_recipe("demo", ["train.steps=50", "train.epochs=1"])  # both said: steps
    assert (by_steps.train.epochs, by_steps.train.steps) == (1, 50)
    assert load_recipe("kinetics_r50", ["train.epochs=1"]).train.epochs == 1  # counts epochs
