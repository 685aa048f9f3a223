"""Dataset manifests: every shipped one loads, unknown names and malformed files are one line."""

from __future__ import annotations

import pytest

import tsmcli.data.manifest as manifest_module
from tsmcli.data.manifest import list_manifests, load_manifest
from tsmcli.errors import DataError, UsageError
from tsmcli.resources import datasets_dir

_GOOD = """\
description: two classes
adapter: folder
num_classes: null
labels: null
label_orders: [official]
annotations: {}
frame_template: img_{:05d}.jpg
flip: "on"
flip_pairs: []
test_protocol: kinetics
"""


def test_every_yaml_in_datasets_is_a_manifest_that_loads():
    names = list_manifests()
    assert names == sorted(p.stem for p in datasets_dir().glob("*.yaml"))
    assert {"folder", "hmdb51", "jester", "kinetics400", "sthv1", "sthv2", "ucf101"} <= set(names)
    for name in names:
        manifest = load_manifest(name)
        assert manifest.name == name and manifest.path == datasets_dir() / f"{name}.yaml"
        if manifest.labels is not None:
            assert len(manifest.classes()) == manifest.num_classes


def test_an_unknown_dataset_names_the_closest_one():
    with pytest.raises(UsageError) as caught:
        load_manifest("ucf100")
    assert str(caught.value) == "unknown dataset 'ucf100'; did you mean 'ucf101'?"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda text: text, None),
        (lambda text: text + "flips: []\n", "unknown key 'flips'; did you mean 'flip'?"),
        (lambda text: text.replace("flip_pairs: []\n", ""), "missing key 'flip_pairs'"),
        (
            lambda text: text.replace('flip: "on"', "flip: on"),
            'flip must be "on" or "off" (quoted), got True',
        ),
        (
            lambda text: text.replace("test_protocol: kinetics", "test_protocol: {clips: 2}"),
            "test_protocol names a preset of tsm eval --protocol (e.g. single), got {'clips': 2}",
        ),
        (
            lambda text: text.replace("flip_pairs: []", "flip_pairs: [[1]]"),
            "malformed flip_pairs or annotations",
        ),
    ],
)
def test_a_manifest_is_read_strictly_and_its_faults_name_the_file(
    tmp_path, monkeypatch, edit, message
):
    monkeypatch.setattr(manifest_module, "datasets_dir", lambda: tmp_path)
    path = tmp_path / "mine.yaml"
    path.write_text(edit(_GOOD))
    if message is None:
        manifest = load_manifest("mine")
        assert manifest.test_protocol == "kinetics"
        assert (manifest.adapter, manifest.flip, manifest.flip_pairs) == ("folder", "on", ())
        return
    with pytest.raises(DataError) as caught:
        load_manifest("mine")
    assert str(caught.value).startswith(f"{path}: {message}")
