"""The list checks train, eval and online eval share: one line naming the file and line."""

from __future__ import annotations

import pytest

from tsmcli.data.lists import ListEntry, ListFile, read_list_file
from tsmcli.data.manifest import load_manifest
from tsmcli.engine.checks import (
    check_present,
    classes_beside,
    eval_class_names,
    resolve_classes,
)
from tsmcli.errors import CheckpointError, DataError, RecipeError


def test_label_range_names_the_line_counting_blank_ones(tmp_path):
    listed = tmp_path / "val.txt"
    listed.write_text("a 8 0\n\nb 8 1\nc 8 3\n")
    entries = read_list_file(listed)
    entries.check_labels(4, owner="the model", hint="fix it")
    with pytest.raises(CheckpointError) as info:
        entries.check_labels(3, owner="best.pt", hint="fix it", error=CheckpointError)
    assert str(info.value) == f"{listed}:4: label 3 is outside 0..2 (best.pt has 3 classes); fix it"
    with pytest.raises(DataError) as info:
        entries.first(3).check_labels(3, owner="best.pt", hint="fix it")  # line 4 is the 3rd
    assert str(info.value).startswith(f"{listed}:4: label 3 is outside 0..2")
    entries.first(2).check_labels(2, owner="best.pt", hint="fix it")


def test_a_list_without_blank_lines_keeps_no_line_numbers_and_names_the_lines_alike(tmp_path):
    listed = tmp_path / "val.txt"
    listed.write_text("a 8 0\nb 8 1\nc 8 3\n")
    entries = read_list_file(listed)
    assert entries.lines == () and [entries.line(i) for i in range(3)] == [1, 2, 3]
    with pytest.raises(DataError, match=rf"{listed}:3: label 3 is outside 0\.\.2"):
        entries.check_labels(3, owner="the model", hint="fix it")


def test_missing_data_names_the_first_entry_its_line_and_the_count(tmp_path):
    listed = tmp_path / "train.txt"
    (tmp_path / "here.mp4").write_bytes(b"video")
    listed.write_text(
        "".join(
            f"{name} 8 0\n"
            for name in ["here.mp4", "gone0.mp4", "gone1.mp4", "gone2.mp4", "gone3.mp4"]
        )
    )
    with pytest.raises(DataError) as info:
        check_present(
            read_list_file(listed),
            tmp_path,
            "videos",
            "img_{:05d}.jpg",
            options=("--root", "--source"),
        )
    assert str(info.value) == (
        f"{tmp_path / 'gone0.mp4'}: no such video, listed at {listed}:2; 4 of 5 entries are "
        "missing (first: gone0.mp4, gone1.mp4, gone2.mp4); check --root and --source, or "
        "rebuild the list with tsm build-list"
    )


def test_empty_list_and_classes_txt_count(tmp_path):
    listed = tmp_path / "val.txt"
    listed.write_text("\n")
    with pytest.raises(DataError) as info:
        read_list_file(listed)
    assert str(info.value) == f"{listed}: the list is empty; check tsm build-list's missing.txt"
    listed.write_text("a 8 0\n")
    assert classes_beside(read_list_file(listed), 2, owner="x", hint="y", error=DataError) is None
    (tmp_path / "classes.txt").write_text("a\nb\nc\n")
    with pytest.raises(RecipeError) as info:
        resolve_classes(read_list_file(listed), 2)
    assert str(info.value) == (
        f"model.num_classes has 2 classes but {tmp_path / 'classes.txt'} "
        "lists 3; set model.num_classes to 0 (from classes.txt)"
    )
    assert resolve_classes(read_list_file(listed), 0) == (["a", "b", "c"], 3)
    assert read_list_file(listed, classes=False).classes is None


@pytest.mark.parametrize(
    ("dataset", "order", "hint"),
    [
        # Kinetics' class list is sorted already, and build-list offers it in one order only
        ("kinetics400", "official", "tsm build-list --dataset kinetics400 --label-order official"),
        ("sthv1", "sorted", "tsm build-list --dataset sthv1 --label-order sorted"),
        ("jester", "official", "tsm build-list --dataset jester --label-order official"),
        (None, None, "the order it was trained with"),
    ],
)
def test_classes_in_another_order_say_how_to_list_them_in_the_checkpoints(
    tmp_path, dataset, order, hint
):
    stored = load_manifest(dataset).classes(order) if dataset else ["wave", "clap", "jump"]
    listed = ListFile(tmp_path / "val.txt", (ListEntry("v", 8, 0),), classes=list(reversed(stored)))
    with pytest.raises(CheckpointError) as info:
        eval_class_names(listed, len(stored), stored, "best.pt")
    assert str(info.value) == (
        f"{tmp_path / 'classes.txt'}: lists the classes of best.pt in another order, so each "
        "label would be scored against another class's output; rebuild the list in the "
        f"checkpoint's order ({hint})"
    )
