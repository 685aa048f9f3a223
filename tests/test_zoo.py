"""The model zoo registry: the shipped registry is valid and agrees with the model, the
evaluator, the README and the recipes; a broken registry is one line naming entry and key."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from tsmcli import zoo
from tsmcli.errors import DataError, UsageError
from tsmcli.resources import recipes_dir, zoo_registry_path

README = Path(__file__).resolve().parents[1] / "README.md"


# ---------------------------------------------------------------------------------------------
# the shipped registry


def test_the_protocol_table_holds_exactly_the_named_presets():
    """The zoo, the CLI and the recipes take their vocabulary from ``tsmcli.choices``; the one
    table that must agree with it by hand is the engine's protocols."""
    from tsmcli import choices
    from tsmcli.engine import views

    assert tuple(views.PROTOCOLS) == choices.PROTOCOLS


def test_every_shipped_entry_is_consistent():
    from tsmcli.data.manifest import list_manifests, load_manifest
    from tsmcli.engine.views import resolve_protocol
    from tsmcli.model.backbones import list_backbones
    from tsmcli.recipe import load_recipe

    entries = zoo.list_entries()
    assert len(entries) == len({e.name for e in entries}) == 24
    assert "zoo" not in list_manifests()  # the model zoo registry is not a dataset manifest
    backbones = [e for e in entries if e.is_backbone]
    assert [e.name for e in backbones] == [
        "imagenet-resnet50",
        "imagenet-resnet101",
        "imagenet-mobilenet-v2",
    ]
    for entry in backbones:  # torchvision's file names carry the SHA-256 prefix too
        assert entry.arch in list_backbones() and entry.publisher == "torchvision"
        assert entry.file == f"{entry.arch}-{entry.sha256}.pth"
        assert entry.class_names() is None and entry.dataset == "imagenet" and not entry.results
    for entry in (e for e in entries if not e.is_backbone):
        assert entry.arch in list_backbones(), entry.name  # the registry reads arch as text
        manifest = load_manifest(entry.dataset)
        names = entry.class_names()
        assert len(names) == manifest.num_classes, entry.name
        assert names == manifest.classes(entry.label_order), entry.name
        assert all(url.rsplit("/", 1)[-1] == entry.file for url in entry.urls), entry.name
        if entry.publisher == "mmaction2":  # the SHA-256 prefix is in the file name
            assert (
                re.fullmatch(r"[0-9a-f]{8}", entry.sha256) and f"-{entry.sha256}.pth" in entry.file
            )
        else:  # the official files come without a hash
            assert entry.sha256 is None
        for result in entry.results:
            protocol = resolve_protocol(result.protocol.preset, **result.protocol.overrides())
            assert protocol.name.startswith(result.protocol.preset), entry.name
            assert 0 < result.top1 <= 100 and result.source.startswith(("OFFICIAL", "MMACTION2"))
        if entry.recipe is not None:
            recipe = load_recipe(entry.recipe, entry.recipe_overrides)
            m = recipe.model
            assert (m.arch, m.shift, m.shift_div, m.shift_place) == (
                entry.arch,
                entry.shift,
                entry.shift_div,
                entry.shift_place,
            ), entry.name
            assert recipe.data.dataset == entry.dataset and recipe.data.sampling == entry.sampling
            # the TSN baseline trains with 5 segments and is tested with 8
            assert m.num_segments == entry.segments or entry.shift == "none", entry.name
            # and it starts from the ImageNet backbone of its arch, by zoo name
            backbone = zoo.get_entry(m.pretrained)
            assert backbone.is_backbone and backbone.arch == entry.arch, entry.name
    assert [e.name for e in entries if not e.results and not e.is_backbone] == [
        "tsm-jester-mbv2-online"
    ]


def test_the_backbones_are_torchvisions_own_imagenet1k_v1_files():
    """The URL (and so the hash prefix) of each backbone entry is the one the installed
    torchvision downloads for ``weights=IMAGENET1K_V1``, and its note quotes that acc@1."""
    from torchvision.models import MobileNet_V2_Weights, ResNet50_Weights, ResNet101_Weights

    for name, weights in (
        ("imagenet-resnet50", ResNet50_Weights.IMAGENET1K_V1),
        ("imagenet-resnet101", ResNet101_Weights.IMAGENET1K_V1),
        ("imagenet-mobilenet-v2", MobileNet_V2_Weights.IMAGENET1K_V1),
    ):
        entry = zoo.get_entry(name)
        assert entry.urls == (weights.url,), name
        acc = weights.meta["_metrics"]["ImageNet-1K"]["acc@1"]
        assert f"acc@1 {acc:g} " in entry.note, name


def test_the_official_numbers_are_those_of_the_official_readme():
    """The numbers this project is judged by, spelled out once (OFFICIAL README tables)."""
    published = {
        (e.name, str(r.protocol)): r.top1
        for e in zoo.list_entries()
        for r in e.results
        if e.publisher == "official"
    }
    assert published[("tsm-k400-r50-8f", "single")] == 71.2
    assert published[("tsm-k400-r50-8f", "single crops=10")] == 72.8
    assert published[("tsm-k400-r50-8f-dense", "kinetics")] == 74.1
    assert published[("tsn-k400-r50", "kinetics")] == 70.6
    assert published[("tsm-sthv2-r50-8f", "sthv2")] == 61.2
    dense = zoo.get_entry("tsm-k400-r50-8f-dense")
    assert dense.file.endswith("_e100_dense.pth") and dense.sampling == "dense"
    assert dense.recipe == "kinetics_r50_dense"


def test_readme_reproduction_table_lists_every_recipe_result_of_the_registry():
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Reproducing the paper") :]
    rows = re.findall(
        r"^\| `([^`]+)` \| `([^`]+)` \| ([\d.]+) \| `([a-z0-9.-]+)` \|$", section, flags=re.M
    )
    table = {
        (name, re.sub(r" --segments \d+", "", proto), recipe): float(top1)
        for recipe, proto, top1, name in rows
    }
    expected = {}
    for entry in zoo.list_entries():
        if entry.recipe is None:
            continue
        recipe = " ".join([entry.recipe, *(f"--set {o}" for o in entry.recipe_overrides)])
        for result in entry.results:
            expected[(entry.name, result.protocol.cli_args(), recipe)] = result.top1
    assert table == expected


def test_recipe_headers_name_the_checkpoint_they_reproduce_and_its_number():
    for entry in zoo.list_entries():
        if entry.recipe is None or entry.recipe_overrides:
            continue
        text = (recipes_dir() / f"{entry.recipe}.yaml").read_text(encoding="utf-8")
        header = text[: text.index("model:")]
        assert entry.name in header, entry.recipe
        for result in entry.results:
            assert f"{result.top1:g}%" in header and result.protocol.cli_args() in header


def test_zoo_sits_at_the_bottom_of_the_package():
    import ast

    from tsmcli import zoo_cache, zoo_check

    for module, allowed in (
        (zoo_check, {"tsmcli.errors"}),
        (
            zoo,
            {
                "tsmcli.choices",
                "tsmcli.errors",
                "tsmcli.resources",
                "tsmcli.view_request",
                "tsmcli.zoo_check",
            },
        ),
        (zoo_cache, {"tsmcli.errors", "tsmcli.fileio", "tsmcli.zoo"}),
    ):
        tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
        ours = {
            f"tsmcli.{alias.name}" if node.module == "tsmcli" else node.module  # a submodule
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tsmcli")
            for alias in node.names
        }
        ours |= {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
            if alias.name.startswith("tsmcli")
        }
        assert ours <= allowed, module.__name__


def test_unknown_name_is_one_line_with_the_closest_names():
    with pytest.raises(UsageError) as info:
        zoo.get_entry("tsm-k400-r50-9f")
    assert str(info.value) == (
        "unknown model zoo name 'tsm-k400-r50-9f'; did you mean "
        "'tsm-k400-r50-8f' or 'tsm-k400-r50-16f' or 'tsn-k400-r50'?"
    )


# ---------------------------------------------------------------------------------------------
# strict reading of a registry file


def _shipped_raw() -> dict:
    return yaml.safe_load(zoo_registry_path().read_text(encoding="utf-8"))


def _broken(tmp_path: Path, change) -> str:
    raw = copy.deepcopy(_shipped_raw())
    change(raw["entries"][0])
    path = tmp_path / "zoo.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(DataError) as info:
        zoo.load_registry(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: entries[0]")
    return message


@pytest.mark.parametrize(
    "change, expected",
    [
        (
            lambda e: e.update(archh="resnet50"),
            "(tsm-k400-r50-8f).archh: unknown key; did you mean 'arch'?",
        ),
        (
            lambda e: e.update(sha256="64D69186"),
            ".sha256: '64D69186' must be 64 or 8 lower-case hex",
        ),
        (lambda e: e.update(sha256="0123abcd"), ".sha256: the prefix '0123abcd' is not the one in"),
        (
            lambda e: e.update(labels="sthv1.txt"),
            ".labels: 'sthv1.txt' is not kinetics400's class list",
        ),
        (
            lambda e: e.update(label_order="sorted"),
            ".label_order: 'sorted' is not offered for kinetics400",
        ),
        (lambda e: e.update(segments=0), ".segments: must be an integer >= 1 or null, not 0"),
        (lambda e: e.update(urls=["https://example.org/other.pth"]), ".urls[0]: does not end with"),
        (
            lambda e: e["results"][0]["protocol"].update(crops=5),
            ".results[0].protocol.crops: must be one of 1, 3, 10",
        ),
        (
            lambda e: e["results"][0]["protocol"].update(preset="ucf"),
            ".results[0].protocol.preset: 'ucf' is not one of",
        ),
        (lambda e: e["results"][0].update(top1=171.2), ".results[0].top1: must be a percentage"),
        (lambda e: e.pop("note"), "(tsm-k400-r50-8f): missing note"),
    ],
)
def test_a_broken_registry_is_one_line_naming_entry_and_key(tmp_path, change, expected):
    assert expected in _broken(tmp_path, change)


def test_a_duplicate_name_is_refused(tmp_path):
    raw = _shipped_raw()
    raw["entries"].append(raw["entries"][0])
    path = tmp_path / "zoo.yaml"
    path.write_text(yaml.safe_dump(raw))
    last = len(raw["entries"]) - 1
    with pytest.raises(
        DataError, match=rf"entries\[{last}\]\.name: 'tsm-k400-r50-8f' is used twice"
    ):
        zoo.load_registry(path)


@pytest.mark.parametrize(
    "change, expected",
    [
        (
            lambda e: e.update(labels="kinetics_k400.txt"),
            ".labels: must be null for a backbone (no video task)",
        ),
        (
            lambda e: e.update(shift="bidirectional"),
            ".shift: must be 'none' for a backbone (no video task)",
        ),
        (
            lambda e: e.update(dataset="kinetics400"),
            ".dataset: must be imagenet for a backbone (an ImageNet classifier's weights)",
        ),
        (lambda e: e.update(kind="image"), ".kind: 'image' is not one of video, backbone"),
    ],
)
def test_a_backbone_entry_has_no_video_task(tmp_path, change, expected):
    raw = _shipped_raw()
    index = next(i for i, e in enumerate(raw["entries"]) if e["name"] == "imagenet-resnet50")
    change(raw["entries"][index])
    path = tmp_path / "zoo.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(DataError) as info:
        zoo.load_registry(path)
    assert str(info.value) == f"{path}: entries[{index}] (imagenet-resnet50){expected}"


def test_an_unknown_arch_is_refused_where_the_backbones_are_known(tmp_path):
    """The registry sits below model/ and reads arch as text; building the entry's model
    names the mistake and the closest backbone."""
    from tsmcli.model.tsn import build_model

    raw = _shipped_raw()
    raw["entries"][0]["arch"] = "resnet5"
    path = tmp_path / "zoo.yaml"
    path.write_text(yaml.safe_dump(raw))
    entry = zoo.load_registry(path)["tsm-k400-r50-8f"]
    with pytest.raises(UsageError, match=r"^unknown arch 'resnet5'; did you mean 'resnet50'\?"):
        build_model(num_classes=400, **entry.model_options())
